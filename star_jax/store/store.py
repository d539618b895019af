"""The EmbeddingStore: versioned, text-hash keyed LLM embeddings on TensorStore zarr3.

Follows docs/architecture.md decision 8, STAR's version management (arXiv 2507.09797, abstract)
and JUDE's hash-based change detection: a row is re-embedded only
when the hash of its text changed.

Layout under ROOT, a local path or any TensorStore kvstore URL or spec (`file://`, `gs://`,
`s3://`, `memory://`). Every file, JSON included, goes through the kvstore API, so the same code
runs on local disk and on object stores::

    manifests/<version>.json              published state of a version: written last, replaced atomically
    staging/<version>.json                the generation a writer is building (its resume record)
    maps/<version>/<target>.json          a fitted linear map onto an older version (migrate.py)
    data/<version>/g<NNNNNNNN>/<type>/
        emb                               zarr3 [rows, dim] bfloat16|float32: shards of `shard_rows` rows
                                          (one object each), inner chunks of `chunk_rows` rows
        hash                              zarr3 uint64 [rows]: `text_hash` of each row's text
        ids                               zarr3 int64 [rows]: node ids, ascending; row r holds ids[r]
    data/<version>/maps/<target>/<fit>/   the map's weight and bias arrays

Who can read a store. TensorStore opens every version (this module reads through it). The arrays
are plain zarr v3, but `bfloat16` is not a zarr v3 core data type: zarr-python 3 refuses a bf16
`emb` array ("No Zarr data type found that matches 'bfloat16'"), so versions written with
`store.dtype=float32` are the ones other zarr readers can read (zarr-python 3.1 reads their `emb`,
`ids` and `hash` arrays); bf16 versions need TensorStore. A reader of its own must take the current
generation of each node type from `manifests/<version>.json`, never from the newest `g*` folder,
which may be an unfinished write.

Versions and generations. A *version* is one embedding function: an `EmbeddingSpec` (model,
adapter checkpoint, tokenizer, max length, pooling, dim) plus the storage dtype. Writing into an
existing version with a different spec or dtype is refused. The texts behind a version change
over time; each refresh writes a new immutable *generation* of the node types whose (ids, text
hashes) changed and then swaps the manifest, which names, per node type, the generation that
holds it. Readers resolve the manifest once, at open, and read only immutable data, so a reader
never sees a half-written refresh and never a torn row.

Incremental refresh (design choice): rows whose (id, text hash) pair is in the published state
are *copied* into the new generation, byte for byte, and only the rest are reported as pending.
A node type whose ids and hashes are all unchanged is not rewritten at all: the new manifest keeps
pointing at its old generation. Copying costs one sequential read and write of the unchanged rows
per refresh; in exchange every generation is a plain dense array, which keeps random-row reads at
one shard lookup (an overlay of deltas would make every read consult a chain of generations).

Crash safety. Every shard is written whole and exactly once: the writer buffers a shard's new
rows until all of them have arrived, merges the copied rows, and writes the shard in one call (a
single object, replaced atomically by the kvstore). A shard object that exists is therefore
complete, and a rerun after SIGKILL lists the shard objects of the staged generation and
continues with the rest; the result is byte-identical to an uninterrupted run. After a publish,
generations referenced by neither the new nor the previous manifest are deleted, so a reader
that opened before the swap can finish. Readers open arrays with `fill_missing_data_reads=False`:
data deleted under a reader raises instead of reading as zeros.

One writer per version at a time (the embed job is one process, or process 0 of a pod).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import tensorstore as ts

from star_jax.config import StoreConfig
from star_jax.errors import StarError

FORMAT_VERSION = 1
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_META_CHUNK = 1 << 16  # rows per chunk of the ids and hash arrays (read whole at open)
_CHUNK_BYTES = 8192  # target size of an inner chunk when store.chunk_rows is 0
_MAX_INFLIGHT = 4  # shard writes left to finish in the background while the caller embeds
# One process-wide context: `memory://` stores are per-context, and sharing it lets every handle
# in this process see the same in-memory store (tests, notebooks).
_CONTEXT = ts.Context()


# ----------------------------------------------------------------------------------- small things


def text_hash(texts: Iterable[str]) -> np.ndarray:
    """uint64 [n]: blake2b-64 of each text's UTF-8 bytes; stable across processes, runs and machines.

    Python's `hash()` is salted per process, so it cannot decide whether a stored row is current.
    """
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _digest(ids: np.ndarray, hashes: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(hashes, dtype="<u8").tobytes())
    return h.hexdigest()


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise StarError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (not starting with . _ -)")
    return name


def _now() -> str:
    # UTC with microseconds: the strings sort in time order, which orders versions.
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _gen_dir(version: str, generation: int) -> str:
    return f"data/{version}/g{generation:08d}"


@dataclass(frozen=True)
class EmbeddingSpec:
    """What makes two embedding runs comparable: the same spec gives the same vector for a text.

    Give stable names or content digests (`star_jax.fileio.content_digest`) rather than paths, so
    that moving a run directory does not read as a new model.
    """

    model: str  # base model name or digest (e.g. "e5-mistral-7b-instruct")
    adapter: str | None  # LoRA adapter checkpoint (name, step or digest); None: the frozen base
    tokenizer: str
    max_len: int | dict[str, int]  # tokens, or per node type (the member and job towers differ)
    pooling: str  # "last_token" (E5) | "mean"
    dim: int
    extra: dict[str, Any] = field(default_factory=dict)  # anything else that changes the vectors

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EmbeddingSpec:
        return cls(**{k: d[k] for k in ("model", "adapter", "tokenizer", "max_len", "pooling", "dim")},
                   extra=dict(d.get("extra", {})))


class Pending(NamedTuple):
    """Rows still to embed for one node type, ascending."""

    rows: np.ndarray  # int64 [n] row in the stored array (rows are in ascending id order)
    ids: np.ndarray  # int64 [n] node id of each row
    positions: np.ndarray  # int64 [n] index into the ids/hashes the caller passed to the writer


class RefreshReport(NamedTuple):
    version: str
    generation: int  # the generation this publish created (unchanged when nothing changed)
    embedded: dict[str, int]  # rows whose vectors came from the embedding model, per node type
    copied: dict[str, int]  # rows carried over byte for byte from the previous generation
    manifest: dict


# --------------------------------------------------------------------------------- kvstore access


def resolve_root(root: str | os.PathLike | Mapping, kvstore: str = "file") -> dict:
    """A TensorStore kvstore spec (JSON) for a store root.

    `root` is a kvstore spec, a URL (`file:///data/store`, `gs://bucket/store`, `s3://...`,
    `memory://store`) or a bare path, read with the `kvstore` driver (`StoreConfig.kvstore`): a
    local directory for `file`, `bucket/prefix` for `gcs` and `s3`.
    """
    if isinstance(root, Mapping):
        spec = dict(root)
    else:
        root = os.fspath(root)
        if "://" in root:
            try:
                spec = ts.KvStore.Spec(root.rstrip("/") + "/").to_json()
            except ValueError as e:
                raise StarError(f"store root {root!r}: not a TensorStore kvstore URL ({e})") from None
        elif kvstore == "file":
            spec = {"driver": "file", "path": os.path.abspath(root)}
        elif kvstore == "memory":
            spec = {"driver": "memory", "path": root}
        elif kvstore in ("gcs", "s3"):
            bucket, _, prefix = root.strip("/").partition("/")
            spec = {"driver": kvstore, "bucket": bucket, "path": prefix}
        else:
            raise StarError(f"store.kvstore {kvstore!r}: expected file, gcs, s3 or memory")
    path = spec.get("path", "")
    spec["path"] = path if not path or path.endswith("/") else path + "/"
    return spec


def _describe(spec: Mapping) -> str:
    if spec.get("driver") == "file":
        return spec["path"].rstrip("/")
    try:
        return ts.KvStore.Spec(dict(spec)).url
    except Exception:  # a description only: fall back to the JSON spec
        return json.dumps(dict(spec), sort_keys=True)


class _Root:
    """A store root: its kvstore, and specs for the arrays under it."""

    def __init__(self, root: str | os.PathLike | Mapping, kvstore: str = "file"):
        self.spec = resolve_root(root, kvstore)
        self.name = _describe(self.spec)
        self.kv = ts.KvStore.open(self.spec, context=_CONTEXT).result()

    def read_json(self, key: str) -> dict | None:
        res = self.kv.read(key).result()
        if res.state != "value":
            return None
        try:
            return json.loads(res.value)
        except json.JSONDecodeError as e:
            raise StarError(f"{self.name}/{key}: not valid JSON ({e})") from None

    def write_json(self, key: str, obj: Any) -> None:
        # A kvstore write replaces one object atomically (rename on local disk, a single PUT on
        # object stores): readers see the old or the new JSON, never a mix.
        self.kv.write(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()).result()

    def delete(self, key: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def delete_prefix(self, prefix: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()

    def list(self, prefix: str) -> list[str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        keys = self.kv.list(ts.KvStore.KeyRange(prefix, end), strip_prefix_length=len(prefix)).result()
        return sorted(k.decode() for k in keys)

    def kvstore(self, key_prefix: str) -> dict:
        return {**self.spec, "path": self.spec["path"] + key_prefix.rstrip("/") + "/"}

    def open_array(self, key_prefix: str, *, cache: ts.Context | None = None) -> ts.TensorStore:
        """Open an existing array read-only; a missing chunk raises instead of reading as zeros."""
        spec = {"driver": "zarr3", "kvstore": self.kvstore(key_prefix), "fill_missing_data_reads": False}
        try:
            return ts.open(spec, read=True, context=cache or _CONTEXT).result()
        except ValueError as e:
            reason = str(e).splitlines()[0].split(" [tensorstore_spec=")[0]
            raise StarError(f"{self.name}/{key_prefix}: cannot open ({reason})") from None

    def create_array(self, key_prefix: str, metadata: dict) -> ts.TensorStore:
        spec = {
            "driver": "zarr3",
            "kvstore": self.kvstore(key_prefix),
            "metadata": metadata,
            # A shard equal to the fill value must still exist: an existing shard object is how
            # a resumed writer knows the shard is done.
            "store_data_equal_to_fill_value": True,
        }
        return ts.open(spec, create=True, delete_existing=True, context=_CONTEXT).result()


def _compressor(cfg: StoreConfig, itemsize: int) -> list[dict]:
    if cfg.compression == "blosc":
        conf = {"cname": "zstd", "clevel": cfg.compression_level, "shuffle": "bitshuffle"}
        return [{"name": "blosc", "configuration": {**conf, "typesize": itemsize}}]
    if cfg.compression == "zstd":
        return [{"name": "zstd", "configuration": {"level": cfg.compression_level}}]
    if cfg.compression == "none":
        return []
    raise StarError(f"store.compression {cfg.compression!r}: expected blosc, zstd or none")


def inner_chunk_rows(cfg: StoreConfig, dim: int) -> int:
    """`store.chunk_rows`, or for 0 the largest power of two of rows within 8 KiB (at least 1).

    The sweet spot measured in docs/benchmarks.md: at 4096-d a 16-row chunk decodes 16x the bytes
    a random row needs, while at 512-d single-row chunks pay more per-chunk overhead than decode.
    """
    if cfg.chunk_rows:
        return cfg.chunk_rows
    fit = max(1, _CHUNK_BYTES // (dim * np.dtype(DTYPES[cfg.dtype]).itemsize))
    return math.gcd(min(1 << (fit.bit_length() - 1), cfg.shard_rows), cfg.shard_rows)


def _emb_metadata(rows: int, dim: int, cfg: StoreConfig) -> dict:
    # Sharded layout, per stack_check §6: one object per `shard_rows` rows keeps object counts low,
    # and small inner chunks make a random-row read decode `chunk_rows` rows, not a whole shard.
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    sharding = {
        "name": "sharding_indexed",
        "configuration": {
            "chunk_shape": [inner_chunk_rows(cfg, dim), dim],
            "codecs": [le, *_compressor(cfg, np.dtype(DTYPES[cfg.dtype]).itemsize)],
            "index_codecs": [le, {"name": "crc32c"}],
        },
    }
    return {
        "shape": [rows, dim],
        "data_type": cfg.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [cfg.shard_rows, dim]}},
        "codecs": [sharding],
        "fill_value": 0,
        "dimension_names": ["row", "dim"],
    }


def _meta_metadata(rows: int, dtype: str) -> dict:
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    return {
        "shape": [rows],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [_META_CHUNK]}},
        "codecs": [le, {"name": "zstd", "configuration": {"level": 3}}],
        "fill_value": 0,
        "dimension_names": ["row"],
    }


def _check_config(cfg: StoreConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise StarError(f"store.dtype {cfg.dtype!r}: expected one of {', '.join(DTYPES)}")
    if cfg.chunk_rows < 0 or cfg.shard_rows < 1 or (cfg.chunk_rows and cfg.shard_rows % cfg.chunk_rows):
        raise StarError(f"store.shard_rows={cfg.shard_rows}: must be a positive multiple of "
                        f"store.chunk_rows={cfg.chunk_rows} (0: automatic)")
    _compressor(cfg, 2)


def _read_rows(array: ts.TensorStore, rows: np.ndarray) -> np.ndarray:
    """array[rows] for any int64 rows (repeats and any order), reading each distinct row once."""
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), array.dtype.numpy_dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    if uniq[-1] - uniq[0] + 1 == len(uniq):  # a contiguous range: a plain slice reads sequentially
        out = array[int(uniq[0]) : int(uniq[-1]) + 1].read().result()
    else:
        out = array[ts.d[0][uniq]].read().result()
    return out if np.array_equal(uniq, rows) else out[inverse]


def _all_finite(x: np.ndarray) -> bool:
    if x.dtype == ml_dtypes.bfloat16:  # ml_dtypes' isfinite is slow: test the exponent bits instead
        return not ((np.ascontiguousarray(x).view(np.uint16) & 0x7F80) == 0x7F80).any()
    return bool(np.isfinite(x).all())


def _nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """bool [n]: the rows of x [n, d] that hold a NaN or an inf."""
    if x.dtype == ml_dtypes.bfloat16:
        return ((np.ascontiguousarray(x).view(np.uint16) & 0x7F80) == 0x7F80).any(axis=1)
    return ~np.isfinite(x).all(axis=1)


def _as_ids(what: str, values: Any) -> np.ndarray:
    """int64 [n]: `values` flattened; anything but integers in the int64 range is a `StarError`.

    Strict on purpose: casting would truncate id 99532.5 to 99532, read True as id 1 or wrap a
    uint64 past 2**63 to a negative id, and serve or store another node's row. Whole-valued floats
    (3.0) are refused too, since a float column usually means the ids went through a lossy path
    (NaN-filled joins, float32 above 2**24); cast them with `astype(np.int64)` when they are fine.
    """
    try:
        arr = np.asarray(values)
    except ValueError:
        raise StarError(f"{what} must be a flat sequence of integers; got a ragged "
                        f"{type(values).__name__}") from None
    flat = arr.reshape(-1)
    is_seq = isinstance(values, list | tuple)
    if flat.dtype.kind in "iu":
        if is_seq:  # numpy reads bools mixed into a list of ints as 0 and 1
            objs = np.array(values, dtype=object).reshape(-1)
            pos = next((i for i, x in enumerate(objs) if isinstance(x, bool | np.bool_)), None)
            if pos is not None:
                raise StarError(f"{what} must be integers; got {objs[pos]!r} (bool) at position {pos}")
        if flat.dtype == np.uint64 and len(flat) and flat.max() > np.iinfo(np.int64).max:
            pos = int(np.argmax(flat > np.iinfo(np.int64).max))
            raise StarError(f"{what} must fit in int64; got {int(flat[pos])} at position {pos}")
        return flat.astype(np.int64, copy=False)
    if flat.size == 0:  # `[]` reads as float64: no id at all is fine
        return np.zeros(0, np.int64)
    typed = hasattr(values, "dtype")  # numpy, JAX, pandas: name the array's dtype, else each value's type
    objs = np.array(arr if typed else values, dtype=object).reshape(-1)  # the values as given
    for pos, x in enumerate(objs):
        if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
            given = f"{arr.dtype} array" if typed else type(x).__name__
            raise StarError(f"{what} must be integers; got {x!r} ({given}) at position {pos}")
        if not np.iinfo(np.int64).min <= x <= np.iinfo(np.int64).max:
            raise StarError(f"{what} must fit in int64; got {int(x)} at position {pos}")
    return objs.astype(np.int64)


# ------------------------------------------------------------------------------------------ reader


def list_versions(root: str | os.PathLike | Mapping, kvstore: str = "file") -> list[str]:
    """Published versions, oldest first (by first publication time, then name)."""
    r = _Root(root, kvstore)
    return [m["version"] for m in _published(r)]


def _published(r: _Root) -> list[dict]:
    manifests = []
    for key in r.list("manifests/"):
        if key.endswith(".json") and "/" not in key:
            m = r.read_json("manifests/" + key)
            if m is not None:
                manifests.append(m)
    return sorted(manifests, key=lambda m: (m["created"], m["version"]))


def _read_manifest(r: _Root, version: str) -> dict:
    _check_name("version", version)
    m = r.read_json(f"manifests/{version}.json")
    if m is None:
        names = [p["version"] for p in _published(r)]
        if not names:
            raise StarError(f"store not found: {r.name} (no published version under manifests/)")
        raise StarError(f"store {r.name}: unknown version {version!r}; published: {', '.join(names)}")
    if m.get("format") != FORMAT_VERSION or m.get("version") != version:
        raise StarError(
            f"{r.name}/manifests/{version}.json: manifest is for version {m.get('version')!r}, "
            f"format {m.get('format')!r}; expected version {version!r}, format {FORMAT_VERSION}"
        )
    return m


class EmbeddingStore:
    """A reader of one published version (or of a newer version mapped onto it, `map_to`).

    The manifest is resolved once, at open: the handle keeps reading the same immutable state
    however often a writer refreshes the version afterwards (until the generation it reads is
    two publishes old and garbage-collected). Reopen to see new data.
    """

    def __init__(self, root: _Root, manifest: dict, cache: ts.Context | None, vmap: Any = None):
        self._root = root
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.spec = EmbeddingSpec.from_json(manifest)
        self.version_map = vmap  # migrate.VersionMap when opened with map_to, else None
        self._cache = cache
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
    ) -> EmbeddingStore:
        """Open `version` (None: the latest published) of the store at `root`.

        `map_to=OLD` returns vectors of `version` mapped into OLD's space with the map fitted by
        `star-jax store migrate`, so models trained on OLD keep working. `cache_bytes` sizes an
        in-memory cache of decoded chunks (worth it for repeated random reads, as in GNN training).
        """
        r = _Root(root, kvstore)
        if version is None:
            published = _published(r)
            if not published:
                raise StarError(f"store not found: {r.name} (no published version under manifests/)")
            manifest = published[-1]
        else:
            manifest = _read_manifest(r, version)
        cache = None
        if cache_bytes:
            cache = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}}, _CONTEXT)
        vmap = None
        if map_to is not None:
            from star_jax.store.migrate import load_version_map

            vmap = load_version_map(r, manifest["version"], map_to)
        return cls(r, manifest, cache, vmap)

    @property
    def root(self) -> str:
        return self._root.name

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

    def _array(self, node_type: str, name: str) -> ts.TensorStore:
        if (node_type, name) not in self._arrays:
            gen = self._type(node_type)["generation"]
            key = f"{_gen_dir(self.version, gen)}/{node_type}/{name}"
            try:
                self._arrays[node_type, name] = self._root.open_array(key, cache=self._cache)
            except StarError as e:
                raise self._gone(node_type, str(e)) from None
        return self._arrays[node_type, name]

    def _gone(self, node_type: str, error: str) -> StarError:
        """The error for data missing under this handle: superseded (reopen), or a damaged store."""
        gen = self._type(node_type)["generation"]
        now = (self._root.read_json(f"manifests/{self.version}.json") or {}).get("node_types", {})
        if now.get(node_type, {}).get("generation") != gen:
            return StarError(f"store {self.root} version {self.version}: generation {gen} of {node_type} was "
                             "removed by newer refreshes; reopen the store")
        first = error.splitlines()[0].split(" [tensorstore_spec=")[0]
        return StarError(first if first.startswith(self.root) else f"store {self.root}: {first}")

    def ids(self, node_type: str) -> np.ndarray:
        """int64 [rows]: the stored node ids, ascending (row r holds ids[r])."""
        if node_type not in self._ids:
            self._ids[node_type] = self._array(node_type, "ids").read().result()
        return self._ids[node_type]

    def text_hashes(self, node_type: str) -> np.ndarray:
        """uint64 [rows]: `text_hash` of the text each row was embedded from."""
        if node_type not in self._hashes:
            self._hashes[node_type] = self._array(node_type, "hash").read().result()
        return self._hashes[node_type]

    def rows(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        """int64 [n]: the row of each id; an id that is not stored is a `StarError`."""
        ids = _as_ids(f"store {self.root} version {self.version}: {node_type} ids", ids)
        stored = self.ids(node_type)
        rows = np.searchsorted(stored, ids).clip(max=max(len(stored) - 1, 0))
        missing = stored[rows] != ids if len(stored) else np.ones(len(ids), bool)
        if missing.any():
            raise StarError(
                f"store {self.root} version {self.version}: unknown {node_type} id {int(ids[missing][0])} "
                f"({int(missing.sum())} of {len(ids)} requested ids are not stored)"
            )
        return rows

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        """float32 [n, dim]: the vector of each id, in the order given (repeats allowed)."""
        rows = self.rows(node_type, ids)
        try:
            out = _read_rows(self._array(node_type, "emb"), rows).astype(np.float32)
        except ValueError as e:  # a chunk deleted under this handle: never read it as zeros
            if "NOT_FOUND" not in str(e):
                raise
            raise self._gone(node_type, str(e)) from None
        if self.version_map is not None:
            out = self.version_map.apply(out)
        return out


# ------------------------------------------------------------------------------------------ writer


@dataclass
class _TypeState:
    """Writer state for one node type that gets a new generation."""

    ids: np.ndarray  # int64 [rows] ascending
    hashes: np.ndarray  # uint64 [rows]
    positions: np.ndarray  # int64 [rows] index into the caller's arrays
    base_rows: np.ndarray  # int64 [rows] row to copy from the base generation, -1: embed
    digest: str
    emb: ts.TensorStore | None = None
    base_emb: ts.TensorStore | None = None
    done: np.ndarray | None = None  # bool [shards] shard object exists
    need: np.ndarray | None = None  # int64 [shards] rows to embed per shard
    buffered: np.ndarray | None = None  # bool [rows] received by `write`, shard not yet flushed
    buffer: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


class EmbeddingWriter:
    """Builds the next generation of a version: the API the `embed` stage writes through.

        writer = EmbeddingWriter.open(root, "v1", spec, {"member": (ids, text_hash(texts)), ...}, cfg)
        for block in writer.pending_blocks("member"):         # whole shards, ascending ids
            vectors = embed(texts[block.positions])            # group by length bucket inside a block
            writer.write("member", block.rows, vectors)
        report = writer.publish()                              # report.embedded["member"] rows embedded

    Opening again after a crash (same version, spec and inputs) resumes: `pending` leaves out
    the shards already stored. Different inputs start a fresh generation; a different spec or
    dtype than the version's is refused. Node types not passed keep their published rows.
    """

    def __init__(self, root: _Root, version: str, spec: EmbeddingSpec, cfg: StoreConfig, base: dict | None):
        self._root = root
        self.version = version
        self.spec = spec
        self.cfg = cfg
        self.base = base  # the published manifest this generation refreshes (None: first)
        self.generation = base["generation"] if base else 0
        self.types: dict[str, _TypeState] = {}  # node types written into the new generation
        self.reused: dict[str, dict] = {}  # node types whose published rows are all current
        self._inflight: list[ts.Future] = []
        self.resumed = False

    # -- opening

    @classmethod
    def open(
        cls,
        root: str | os.PathLike | Mapping | None,
        version: str,
        spec: EmbeddingSpec,
        inputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
        config: StoreConfig | None = None,
        *,
        restart: bool = False,
    ) -> EmbeddingWriter:
        """Open or resume the next generation of `version` for `inputs[type] = (ids, text hashes)`.

        `root` None: `config.root`. `restart=True` discards an unfinished generation even when its
        settings differ.
        """
        cfg = config or StoreConfig()
        _check_config(cfg)
        _check_name("version", version)
        root = cfg.root if root is None else root
        if root is None:
            raise StarError("store root: not given (pass a root or set store.root)")
        r = _Root(root, cfg.kvstore)
        base = r.read_json(f"manifests/{version}.json")
        if base is not None:
            base = _read_manifest(r, version)
            _check_compatible(f"store {r.name} version {version}", base, spec, cfg.dtype, "manifest")
        w = cls(r, version, spec, cfg, base)
        for node_type, (ids, hashes) in inputs.items():
            w._add_type(_check_name("node type", node_type), ids, hashes)
        staged = w._staged()
        if w.types:
            w._stage(staged, restart)
        elif staged is not None:  # the published state is current: an unfinished write is moot
            r.delete_prefix(_gen_dir(version, staged["generation"]) + "/")
            r.delete(f"staging/{version}.json")
        return w

    def _staged(self) -> dict | None:
        """The staging record of an unfinished generation, if any."""
        key = f"staging/{self.version}.json"
        staged = self._root.read_json(key)
        if staged is not None and staged["generation"] <= self.generation:
            # Killed after its manifest swap but before this clean-up: that generation is published.
            self._root.delete(key)
            return None
        return staged

    def _add_type(self, node_type: str, ids: Any, hashes: Any) -> None:
        where = f"store {self._root.name} version {self.version}: {node_type}"
        ids = _as_ids(f"{where} ids", ids)
        hashes = np.asarray(hashes).reshape(-1)
        if hashes.dtype != np.uint64:
            raise StarError(f"{where}: text hashes must be uint64 (from text_hash); got {hashes.dtype}")
        if len(ids) != len(hashes):
            raise StarError(f"{where}: {len(ids)} ids but {len(hashes)} text hashes")
        if len(ids) == 0:
            raise StarError(f"{where}: no ids to store")
        order = np.argsort(ids, kind="stable")
        ids, hashes = ids[order], hashes[order]
        dup = np.flatnonzero(ids[1:] == ids[:-1])
        if len(dup):
            raise StarError(f"{where}: duplicate id {int(ids[dup[0]])}")
        digest = _digest(ids, hashes)
        published = (self.base or {}).get("node_types", {}).get(node_type)
        if published is not None and published["digest"] == digest:
            self.reused[node_type] = published
            return
        base_rows = np.full(len(ids), -1, np.int64)
        state = _TypeState(ids, hashes, order.astype(np.int64), base_rows, digest)
        if published is not None:
            # Change detection (JUDE): a row is current when its id was stored with the same text hash.
            key = f"{_gen_dir(self.version, published['generation'])}/{node_type}"
            old_ids = self._root.open_array(f"{key}/ids").read().result()
            old_hashes = self._root.open_array(f"{key}/hash").read().result()
            pos = np.searchsorted(old_ids, ids).clip(max=len(old_ids) - 1)
            same = (old_ids[pos] == ids) & (old_hashes[pos] == hashes)
            base_rows[same] = pos[same]
            state.base_emb = self._root.open_array(f"{key}/emb")
        self.types[node_type] = state

    def _stage(self, staged: dict | None, restart: bool) -> None:
        """Resume the staged generation if it was building exactly this, else start a new one."""
        r, v = self._root, self.version
        record = {
            "format": FORMAT_VERSION,
            "version": v,
            **self.spec.to_json(),
            "dtype": self.cfg.dtype,
            "layout": {"shard_rows": self.cfg.shard_rows, "chunk_rows": self.cfg.chunk_rows,
                       "compression": self.cfg.compression, "compression_level": self.cfg.compression_level},
            "base_generation": self.base["generation"] if self.base else 0,
            "digests": {t: s.digest for t, s in self.types.items()},
        }
        if staged is not None and not restart:
            where = (f"store {r.name} version {v}: unfinished write (staging/{v}.json; rerun with the same "
                     "settings or restart it)")
            _check_compatible(where, staged, self.spec, self.cfg.dtype, "staging record")
        record = json.loads(json.dumps(record))  # compare as stored: tuples become lists, keys strings
        if staged is not None and not restart and all(staged.get(k) == val for k, val in record.items()):
            self.generation = staged["generation"]
            self.resumed = True
        else:
            if staged is not None:
                r.delete_prefix(_gen_dir(v, staged["generation"]) + "/")
            previous = max(self.base["generation"] if self.base else 0, staged["generation"] if staged else 0)
            self.generation = previous + 1
            gen = _gen_dir(v, self.generation)
            r.delete_prefix(gen + "/")  # leftovers of a run killed before it wrote its staging record
            for t, s in self.types.items():
                n = len(s.ids)
                r.create_array(f"{gen}/{t}/emb", _emb_metadata(n, self.spec.dim, self.cfg))
                r.create_array(f"{gen}/{t}/ids", _meta_metadata(n, "int64")).write(s.ids).result()
                r.create_array(f"{gen}/{t}/hash", _meta_metadata(n, "uint64")).write(s.hashes).result()
            r.write_json(f"staging/{v}.json", {**record, "generation": self.generation, "started": _now()})
        gen = _gen_dir(v, self.generation)
        for t, s in self.types.items():
            # Opened from its stored metadata, so a resumed run writes the layout it started with.
            s.emb = ts.open({"driver": "zarr3", "kvstore": r.kvstore(f"{gen}/{t}/emb")},
                            read=True, write=True, context=_CONTEXT).result()
            n_shards = -(-len(s.ids) // self.cfg.shard_rows)
            s.done = np.zeros(n_shards, bool)
            for key in r.list(f"{gen}/{t}/emb/c/"):
                s.done[int(key.split("/")[0])] = True
            s.need = np.bincount(np.flatnonzero(s.base_rows < 0) // self.cfg.shard_rows, minlength=n_shards)
            s.buffered = np.zeros(len(s.ids), bool)

    # -- what to embed

    @property
    def node_types(self) -> list[str]:
        return list(self.types)

    def pending(self, node_type: str) -> Pending:
        """Rows of `node_type` still to embed: changed or new texts in shards not yet stored."""
        s = self.types.get(node_type)
        if s is None:
            empty = np.zeros(0, np.int64)
            return Pending(empty, empty, empty)
        todo = (s.base_rows < 0) & ~s.buffered & ~np.repeat(s.done, self.cfg.shard_rows)[: len(s.ids)]
        rows = np.flatnonzero(todo).astype(np.int64)
        return Pending(rows, s.ids[rows], s.positions[rows])

    def pending_blocks(self, node_type: str, min_rows: int | None = None) -> Iterator[Pending]:
        """`pending(node_type)` cut at shard boundaries into blocks of at least `min_rows` rows.

        Writing block by block keeps the writer's buffer to about one block: a shard is stored as
        soon as its last row arrives. Default `min_rows`: `shard_rows`.
        """
        p = self.pending(node_type)
        min_rows = min_rows or self.cfg.shard_rows
        shard = p.rows // self.cfg.shard_rows
        cuts = np.flatnonzero(np.diff(shard)) + 1  # block boundaries may only fall between shards
        start = 0
        for end in [*cuts, len(p.rows)]:
            if end - start >= min_rows or end == len(p.rows):
                if end > start:
                    yield Pending(p.rows[start:end], p.ids[start:end], p.positions[start:end])
                start = end

    # -- writing

    def write(self, node_type: str, rows: np.ndarray, vectors: Any) -> None:
        """Store `vectors` (float [n, dim], numpy or JAX) for pending `rows` of `node_type`."""
        s = self.types.get(node_type)
        if s is None:
            raise StarError(f"store {self._root.name} version {self.version}: {node_type!r} has nothing to "
                            f"write (not passed to the writer, or unchanged); writing: "
                            f"{', '.join(self.types) or 'none'}")
        rows = _as_ids(f"write({node_type!r}) rows", rows)
        given, vectors = vectors, np.asarray(vectors)
        tensor = f"write({node_type!r}) vectors"
        if vectors.ndim != 2 or vectors.shape[0] != len(rows):
            raise StarError(f"{tensor}: shape {vectors.shape}, expected [{len(rows)}, {self.spec.dim}]")
        if vectors.shape[1] != self.spec.dim:
            raise StarError(f"{tensor}: dim {vectors.shape[1]}, but version {self.version} has "
                            f"dim {self.spec.dim}")
        if len(rows) == 0:
            return
        if rows.min() < 0 or rows.max() >= len(s.ids):
            raise ValueError(f"write({node_type!r}): rows outside [0, {len(s.ids)})")
        dtype = DTYPES[self.cfg.dtype]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, per row
            vectors = vectors.astype(dtype, copy=False)  # to bf16: round to nearest even
        # Checked after the cast: a finite float32 beyond the store dtype's range (3.4e38 in bf16)
        # would otherwise be stored, and served, as inf.
        if not _all_finite(vectors):
            bad = _nonfinite_rows(vectors)
            limit = float(ml_dtypes.finfo(dtype).max)
            raise StarError(f"{tensor}: {int(bad.sum())} of {len(rows)} rows are NaN or inf once cast to "
                            f"{self.cfg.dtype} (values beyond ±{limit:.4g} overflow); first id "
                            f"{int(s.ids[rows[bad.argmax()]])}")
        shard = rows // self.cfg.shard_rows
        bad = (s.base_rows[rows] >= 0) | s.buffered[rows] | s.done[shard]
        if bad.any():
            raise ValueError(f"write({node_type!r}): row {int(rows[bad.argmax()])} is not pending")
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"write({node_type!r}): a row appears twice")
        s.buffered[rows] = True
        if (np.diff(rows) < 0).any():
            order = np.argsort(rows, kind="stable")
            rows, vectors, shard = rows[order], vectors[order], shard[order]
        # Buffered pieces are views; copy those that outlive this call if they view the caller's array.
        borrowed = isinstance(given, np.ndarray) and np.may_share_memory(vectors, given)
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
            sh = int(shard[lo])
            pieces = s.buffer.setdefault(sh, [])
            pieces.append((rows[lo:hi], vectors[lo:hi]))
            if sum(len(r) for r, _ in pieces) == s.need[sh]:
                self._flush(node_type, sh)
            elif borrowed:
                pieces[-1] = (pieces[-1][0], pieces[-1][1].copy())

    def _flush(self, node_type: str, shard: int) -> None:
        """Write one whole shard: copied rows from the base generation plus the buffered new rows."""
        s = self.types[node_type]
        r0 = shard * self.cfg.shard_rows
        r1 = min(r0 + self.cfg.shard_rows, len(s.ids))
        pieces = s.buffer.pop(shard, [])
        copy = s.base_rows[r0:r1] >= 0
        if len(pieces) == 1 and len(pieces[0][0]) == r1 - r0:
            block = pieces[0][1]  # the whole shard arrived in one sorted piece: no assembly
        else:
            block = np.empty((r1 - r0, self.spec.dim), DTYPES[self.cfg.dtype])
            if copy.any():
                block[copy] = _read_rows(s.base_emb, s.base_rows[r0:r1][copy])
            for rows, vectors in pieces:
                block[rows - r0] = vectors
        future = s.emb[r0:r1].write(block)
        future.copy.result()  # `block` may view the caller's array: let go of it before returning
        self._inflight.append(future.commit)  # encoding and storing overlap the caller's next batch
        s.done[shard] = True
        s.buffered[r0:r1] = False
        while len(self._inflight) > _MAX_INFLIGHT:
            self._inflight.pop(0).result()

    # -- publishing

    def publish(self) -> RefreshReport:
        """Store the shards left (unchanged rows only), then swap the manifest and collect garbage."""
        from star_jax.metrics import progress as progress_bar

        r, v = self._root, self.version
        embedded = {t: 0 for t in self.reused}
        copied = {t: m["rows"] for t, m in self.reused.items()}
        if not self.types:  # nothing changed: the published state is current
            return RefreshReport(v, self.generation, embedded, copied, self.base)
        for t, s in self.types.items():
            missing = (s.base_rows < 0) & ~s.buffered & ~np.repeat(s.done, self.cfg.shard_rows)[: len(s.ids)]
            if missing.any():
                raise ValueError(f"publish: {int(missing.sum())} pending {t} rows were never written "
                                 f"(first id {int(s.ids[missing.argmax()])})")
        todo = [(t, int(sh)) for t, s in self.types.items() for sh in np.flatnonzero(~s.done)]
        if todo:
            for t, sh in progress_bar(todo, desc=f"store {v}: copy unchanged shards", unit="shard"):
                self._flush(t, sh)
        while self._inflight:
            self._inflight.pop(0).result()
        gen = _gen_dir(v, self.generation)
        for t, s in self.types.items():
            stored = len(r.list(f"{gen}/{t}/emb/c/"))
            if stored != len(s.done):
                raise RuntimeError(f"store {r.name}: {gen}/{t}/emb holds {stored} of {len(s.done)} shards")
        current = r.read_json(f"manifests/{v}.json")
        if (current or {}).get("generation") != (self.base or {}).get("generation"):
            raise StarError(f"store {r.name} version {v}: another writer published meanwhile; rerun")

        node_types = dict((self.base or {}).get("node_types", {}))
        for t, s in self.types.items():
            embedded[t] = int((s.base_rows < 0).sum())
            copied[t] = len(s.ids) - embedded[t]
            node_types[t] = {"generation": self.generation, "rows": len(s.ids), "digest": s.digest,
                             "embedded": embedded[t], "copied": copied[t],
                             "shard_rows": self.cfg.shard_rows,
                             "chunk_rows": inner_chunk_rows(self.cfg, self.spec.dim)}
        referenced = {m["generation"] for m in node_types.values()}
        previous = {m["generation"] for m in (self.base or {}).get("node_types", {}).values()}
        manifest = {
            "format": FORMAT_VERSION,
            "version": v,
            **self.spec.to_json(),
            "dtype": self.cfg.dtype,
            "created": self.base["created"] if self.base else _now(),
            "updated": _now(),
            "generation": self.generation,
            "node_types": node_types,
            # Generations readers may still hold: this manifest's and the previous one's.
            "live": sorted(referenced | previous),
        }
        r.write_json(f"manifests/{v}.json", manifest)  # the publish: one atomic object write
        r.delete(f"staging/{v}.json")
        self._collect_garbage(manifest["live"])
        return RefreshReport(v, self.generation, embedded, copied, manifest)

    def _collect_garbage(self, live: list[int]) -> None:
        """Delete every generation of this version that is not live (crashed leftovers included)."""
        prefix = f"data/{self.version}/"
        lo = prefix + "g"
        for g in sorted(live):
            self._root.kv.delete_range(ts.KvStore.KeyRange(lo, _gen_dir(self.version, g))).result()
            lo = _gen_dir(self.version, g) + "0"  # just past "gNNNNNNNN/"
        self._root.kv.delete_range(ts.KvStore.KeyRange(lo, prefix + "h")).result()


def _check_compatible(where: str, manifest: dict, spec: EmbeddingSpec, dtype: str, what: str) -> None:
    """A one-line `StarError` naming the first field where `spec`/`dtype` differ from `manifest`."""
    have = manifest
    want = {**spec.to_json(), "dtype": dtype}
    for key in ("dim", "dtype", "tokenizer", "model", "adapter", "max_len", "pooling", "extra"):
        if have.get(key) != want.get(key):
            flag = "store.dtype" if key == "dtype" else f"spec.{key}"
            raise StarError(f"{where}: {flag} is {want.get(key)!r}, but the {what} has {have.get(key)!r}")
