"""`EmbeddingStore`: the reader of one published version of an embedding store.

A reader resolves the version's manifest once, at open, and then reads only immutable
generations, so it never sees a half-written refresh or a torn row. Arrays are opened with
`fill_missing_data_reads=False`: data deleted under a reader raises instead of reading as zeros.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorstore as ts

from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot, error_code
from star_jax.store.layout import gen_dir
from star_jax.store.manifest import EmbeddingSpec, latest_manifest, read_manifest
from star_jax.store.maps import VersionMap, load_version_map
from star_jax.store.replica import Replica, identity, open_replica
from star_jax.store.rowcache import RowCache
from star_jax.store.rows import as_ids, read_checked


class EmbeddingStore:
    """A reader of one published version (or of a newer version mapped onto it, `map_to`).

    The manifest is resolved once, at open: the handle keeps reading the same immutable state
    however often a writer refreshes the version afterwards (until the generation it reads is
    two publishes old and garbage-collected). Reopen to see new data. Once a read has found its
    generation garbage-collected, every later lookup of that node type fails, cached rows included.
    Opened with `replica=DIR`, lookups gather from a local memory-mapped copy of the generation
    instead, mapped whole when first used: the handle keeps serving that generation after it is
    garbage-collected.
    """

    def __init__(self, root: StoreRoot, manifest: dict, cache_bytes: int = 0,
                 vmap: VersionMap | None = None, replica: str | os.PathLike | None = None):
        self.store_root = root
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.spec = EmbeddingSpec.from_json(manifest)
        self.version_map = vmap  # set when opened with map_to
        self.cache_bytes = cache_bytes  # budget of each node type's `RowCache` (0: none)
        self.replica_dir = replica  # local folder of the version's replicas (None: read the store)
        self._replicas: dict[str, Replica] = {}
        self._row_caches: dict[str, RowCache | None] = {}
        self._superseded: set[str] = set()  # node types whose generation this handle saw removed
        self._dense: dict[str, bool] = {}  # node types whose stored ids are one contiguous range
        self._arrays: dict[tuple[str, str], ts.TensorStore] = {}
        self._ids: dict[str, np.ndarray] = {}
        self._hashes: dict[str, np.ndarray] = {}

    @classmethod
    def open(
        cls,
        root: str | os.PathLike | Mapping,
        version: str | None = None,
        *,
        map_to: str | None = None,
        kvstore: str = "file",
        cache_bytes: int = 0,
        replica: str | os.PathLike | None = None,
    ) -> EmbeddingStore:
        """Open `version` (None: the latest published) of the store at `root`.

        `map_to=OLD` returns vectors of `version` mapped into OLD's space with the map fitted by
        `star-jax store migrate`, so models trained on OLD keep working. `cache_bytes` sizes an
        in-memory cache of decoded rows per node type (`RowCache`): repeated random reads, as in
        GNN training, then cost a numpy gather instead of a chunk decode.

        `replica=DIR` (a local folder) reads rows from an uncompressed, memory-mapped zarr3 copy of
        each node type's generation under DIR (`star_jax.store.replica`), built from the store the
        first time a node type is looked up when DIR has none; `cache_bytes` is then not used.
        """
        r = StoreRoot(root, kvstore)
        manifest = latest_manifest(r) if version is None else read_manifest(r, version)
        vmap = None if map_to is None else load_version_map(r, manifest["version"], map_to)
        return cls(r, manifest, max(0, int(cache_bytes)), vmap, replica)

    @property
    def root(self) -> str:
        return self.store_root.name

    @property
    def node_types(self) -> list[str]:
        return list(self.manifest["node_types"])

    @property
    def dim(self) -> int:
        """Width of the vectors `lookup` returns (the target version's when mapped)."""
        return self.version_map.weight.shape[1] if self.version_map is not None else self.manifest["dim"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def num_rows(self, node_type: str) -> int:
        return self._type(node_type)["rows"]

    def _type(self, node_type: str) -> dict:
        types = self.manifest["node_types"]
        if node_type not in types:
            raise StarError(
                f"store {self.root} version {self.version}: unknown node type {node_type!r}; "
                f"stored: {', '.join(types)}"
            )
        return types[node_type]

    def _key(self, node_type: str, name: str) -> str:
        return f"{gen_dir(self.version, self._type(node_type)['generation'])}/{node_type}/{name}"

    def _array(self, node_type: str, name: str) -> ts.TensorStore:
        if (node_type, name) not in self._arrays:
            try:
                self._arrays[node_type, name] = self.store_root.open_array(self._key(node_type, name))
            except StarError as e:
                raise self._gone(node_type, str(e)) from None
        return self._arrays[node_type, name]

    def _read(self, node_type: str, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """array[rows] (None: all) of one of the node type's arrays; a damaged chunk is a StarError."""
        where = f"store {self.root} version {self.version}: {node_type} {name}"
        if node_type in self._superseded:
            raise self._gone(node_type, "")
        try:
            return read_checked(self._array(node_type, name), rows, where, self._key(node_type, name))
        except ValueError as e:  # a chunk deleted under this handle: never read it as zeros
            if error_code(e) != "NOT_FOUND":
                raise
            raise self._gone(node_type, str(e)) from None

    def _gone(self, node_type: str, error: str) -> StarError:
        """The error for data missing under this handle: superseded (reopen), or a damaged store."""
        gen = self._type(node_type)["generation"]
        now = (self.store_root.read_json(f"manifests/{self.version}.json") or {}).get("node_types", {})
        if now.get(node_type, {}).get("generation") != gen:
            # Observed: from now on no row of this generation is served, cached or not.
            self._superseded.add(node_type)
            self._row_caches.pop(node_type, None)
            return StarError(f"store {self.root} version {self.version}: generation {gen} of {node_type} was "
                             "removed by newer refreshes; reopen the store")
        first = error.splitlines()[0].split(" [tensorstore_spec=")[0]
        return StarError(first if first.startswith(self.root) else f"store {self.root}: {first}")

    def ids(self, node_type: str) -> np.ndarray:
        """int64 [rows]: the stored node ids, ascending (row r holds ids[r])."""
        if node_type not in self._ids:
            self._ids[node_type] = self._read(node_type, "ids")
        return self._ids[node_type]

    def text_hashes(self, node_type: str) -> np.ndarray:
        """uint64 [rows]: `text_hash` of the text each row was embedded from."""
        if node_type not in self._hashes:
            self._hashes[node_type] = self._read(node_type, "hash")
        return self._hashes[node_type]

    def rows(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        """int64 [n]: the row of each id; an id that is not stored is a `StarError`."""
        ids = as_ids(f"store {self.root} version {self.version}: {node_type} ids", ids)
        stored = self.ids(node_type)
        if node_type not in self._dense:  # ascending and unique: a range when last - first = n - 1
            self._dense[node_type] = bool(len(stored)) and int(stored[-1]) - int(stored[0]) == len(stored) - 1
        if self._dense[node_type]:  # ids 0..n-1 (or any range): the row is the offset, no search
            missing = (ids < stored[0]) | (ids > stored[-1])
            rows = np.where(missing, 0, ids - stored[0])
        else:
            rows = np.searchsorted(stored, ids).clip(max=max(len(stored) - 1, 0))
            missing = stored[rows] != ids if len(stored) else np.ones(len(ids), bool)
        if missing.any():
            raise StarError(
                f"store {self.root} version {self.version}: unknown {node_type} id {int(ids[missing][0])} "
                f"({int(missing.sum())} of {len(ids)} requested ids are not stored)"
            )
        return rows

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        """float32 [n, dim]: the vector of each id, in the order given (repeats allowed).

        A shard whose bytes changed since they were written (crc32c mismatch, from store format 2)
        is a one-line `StarError` naming the shard and its rows, never other numbers.
        """
        rows = self.rows(node_type, ids)
        if self.replica_dir is not None:
            out = self.replica(node_type).gather(rows)
        elif self.cache_bytes and len(rows) and (cache := self._cached(node_type)) is not None:
            out = cache.get(rows, lambda r: self._read(node_type, "emb", r))
        else:
            out = self._read(node_type, "emb", rows)
        out = out.astype(np.float32, copy=False)
        if self.version_map is not None:
            out = self.version_map.apply(out)
        return out

    def replica(self, node_type: str, *, build: bool = True) -> Replica:
        """The node type's replica under `replica_dir`, opened once per handle; with `build`, built
        first when the folder has none. Its record must match this handle's generation exactly."""
        if node_type not in self._replicas:
            if self.replica_dir is None:
                raise ValueError("replica: this handle was opened without replica=DIR")
            if node_type in self._superseded:
                raise self._gone(node_type, "")
            self._type(node_type)
            where = f"store {self.root} version {self.version}: {node_type}"
            read = lambda r0, r1: self._read(node_type, "emb", np.arange(r0, r1, dtype=np.int64))
            ident = identity(self.manifest, node_type)
            self._replicas[node_type] = open_replica(self.replica_dir, ident, read, where,
                                                     self.manifest.get("live", []), build=build)
        return self._replicas[node_type]

    def _cached(self, node_type: str) -> RowCache | None:
        """The node type's row cache; None when the others took all of `cache_bytes`."""
        if node_type not in self._row_caches:
            emb = self._array(node_type, "emb")
            layout = emb.chunk_layout
            shard_rows = layout.write_chunk.shape[0]
            shard_bytes = shard_rows * emb.shape[1] * emb.dtype.numpy_dtype.itemsize
            # One budget for the handle: node types take what they need in the order first looked up.
            left = self.cache_bytes - sum(c.nbytes_reserved for c in self._row_caches.values() if c)
            chunk_rows = layout.read_chunk.shape[0]
            self._row_caches[node_type] = None if left < shard_bytes else RowCache(
                emb.shape[0], emb.shape[1], emb.dtype.numpy_dtype, shard_rows, chunk_rows, left)
        return self._row_caches[node_type]
