"""The graph in TensorStore: every array of a graph directory as a zarr3 array under a kvstore.

`write_graph_store` copies a graph directory to any TensorStore kvstore (`file://`, `gs://`,
`s3://`), `manifest.json` last; `open_graph_store` reads it in place through a bounded chunk cache,
and `fetch_graph` (`star-jax graph fetch`) materialises the memory-mapped directory from it.
docs/scaling.md, "The graph in TensorStore", describes the layout.

    write_graph_store("runs/demo/graph", "file:///tmp/graph-ts")
    graph = open_graph_store("file:///tmp/graph-ts", cache_bytes=1 << 30)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import math
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorstore as ts

from star_jax.config import GraphConfig
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, atomic_write_json, read_json
from star_jax.graph.hetero import GRAPH_FILE, HeteroGraph, array_keys, is_up_to_date
from star_jax.graph.tsarray import ChunkCache, TsArray
from star_jax.store.kv import StoreRoot, error_reason
from star_jax.store.manifest import utc_now
from star_jax.tracking import progress

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = 1
KIND = "star_jax.graph"
_LE = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC = {"name": "crc32c"}
# zstd level 1: CSR indices and ids compress well and decode fast; crc32c after compression makes a
# flipped or cut-short chunk (or shard index) a read error instead of wrong neighbours.
_CODECS = [_LE, {"name": "zstd", "configuration": {"level": 1}}, _CRC]
_BLOCK_SHARDS = 8  # stored objects per write or read request while copying
_IN_FLIGHT = 2  # requests outstanding per array while copying (buffers: 8 arrays x 3 x 8 MiB)
# Arrays copied at once: a small graph's copy is latency-bound (creating an array, one request per
# object), and an object store's latency is higher still.
_ARRAYS_AT_ONCE = 8


def shard_shape(shape: tuple[int, ...], itemsize: int, chunk_bytes: int,
                read_bytes: int) -> tuple[list[int], list[int]]:
    """(stored object shape, read chunk shape) in whole rows: objects of about `chunk_bytes`, made of
    read chunks of about `read_bytes` (the unit a random read decodes), at most the array."""
    row = max(1, itemsize * math.prod(shape[1:]))
    inner = max(1, min(shape[0], read_bytes // row))
    outer = max(1, chunk_bytes // row) // inner * inner
    outer = max(inner, min(outer, -(-max(shape[0], 1) // inner) * inner))
    tail = [max(1, d) for d in shape[1:]]
    return [outer, *tail], [inner, *tail]


def _metadata(a: np.ndarray, chunk_bytes: int, read_bytes: int) -> dict:
    outer, inner = shard_shape(a.shape, a.dtype.itemsize, chunk_bytes, read_bytes)
    # Sharded: one object per `outer` rows keeps object counts low (a 12B-edge CSR is ~50K objects),
    # and small inner chunks make a random read decode `inner` rows, not a whole object.
    sharding = {"name": "sharding_indexed",
                "configuration": {"chunk_shape": inner, "codecs": _CODECS, "index_codecs": [_LE, _CRC]}}
    return {"shape": list(a.shape), "data_type": a.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": outer}}, "codecs": [sharding]}


def _num_chunks(shape: list[int], chunk: list[int]) -> int:
    return math.prod(-(-s // c) for s, c in zip(shape, chunk, strict=True))


def _blocks(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    step = shard_rows * _BLOCK_SHARDS  # whole objects: no two requests touch one object
    return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _describe(root: StoreRoot, key: str) -> str:
    return f"{root.name}/{key}"


# -- writing -----------------------------------------------------------------------------------


def store_is_up_to_date(root: StoreRoot, digest: str) -> bool:
    m = root.read_json(MANIFEST)
    return bool(m) and m.get("format") == STORE_FORMAT and m.get("digest") == digest


def write_graph_store(graph_dir: str | os.PathLike, location: str | os.PathLike | Mapping, *,
                      chunk_bytes: int = 1 << 20, read_bytes: int = 1 << 16, force: bool = False) -> dict:
    """Copy graph directory `graph_dir` to the kvstore `location` (URL, path or spec); returns the
    manifest. A store already holding this graph (same input digest) is left as it is."""
    graph_dir = Path(graph_dir)
    meta = read_json(graph_dir / GRAPH_FILE)
    root = StoreRoot(location)
    if not force and store_is_up_to_date(root, meta["digest"]):
        log.info(f"graph store {root.name}: up to date")
        return root.read_json(MANIFEST)
    keys = [k.decode() for k in root.kv.list().result()]
    if keys and MANIFEST not in keys and not any(k.startswith(("nodes/", "csr/")) for k in keys):
        # The write deletes what is under the root: never a root that holds something else.
        raise StarError(f"graph store {root.name}: not empty and not a graph store (no {MANIFEST}); "
                        "choose a new or empty location")
    # Unpublish first: from here until the new manifest lands, readers refuse the store.
    root.delete(MANIFEST)
    for prefix in ("nodes/", "csr/"):
        root.delete_prefix(prefix)
    sources = {k: np.load(graph_dir / f"{k}.npy", mmap_mode="r") for k in array_keys(meta)}
    with progress(total=sum(a.nbytes for a in sources.values()), desc="graph store", unit="B",
                  unit_scale=True) as bar:
        with ThreadPoolExecutor(_ARRAYS_AT_ONCE) as pool:
            futures = {k: pool.submit(_write_array, root, k, a, chunk_bytes, read_bytes, bar)
                       for k, a in sources.items()}
            arrays = {k: f.result() for k, f in futures.items()}
    manifest = {"format": STORE_FORMAT, "kind": KIND, "digest": meta["digest"], "created": utc_now(),
                "chunk_bytes": chunk_bytes, "read_bytes": read_bytes, "graph": meta, "arrays": arrays}
    root.write_json(MANIFEST, manifest)  # last: its presence publishes every array above
    return manifest


def _write_array(root: StoreRoot, key: str, src: np.ndarray, chunk_bytes: int, read_bytes: int,
                 bar) -> dict:
    md = _metadata(src, chunk_bytes, read_bytes)
    try:
        dst = root.create_array(key, md)
        digest = hashlib.sha256()
        pending: deque = deque()
        for lo, hi in _blocks(src.shape[0], md["chunk_grid"]["configuration"]["chunk_shape"][0]):
            block = np.ascontiguousarray(src[lo:hi])
            pending.append(root.write_rows(dst, lo, block))
            digest.update(block)
            bar.update(block.nbytes)
            while len(pending) > _IN_FLIGHT:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    except ValueError as e:  # a TensorStore error: unreachable bucket, full disk, no permission
        raise StarError(f"{_describe(root, key)}: write failed ({error_reason(e)})") from None
    chunk = md["chunk_grid"]["configuration"]["chunk_shape"]
    inner = md["codecs"][0]["configuration"]["chunk_shape"]
    return {"dtype": src.dtype.name, "shape": list(src.shape), "chunk": chunk, "read_chunk": inner,
            "chunks": _num_chunks(list(src.shape), chunk), "nbytes": int(src.nbytes),
            "sha256": digest.hexdigest()}


# -- reading -----------------------------------------------------------------------------------


def read_store_manifest(root: StoreRoot) -> dict:
    """The manifest, checked: a missing or foreign one is a one-line `StarError`."""
    m = root.read_json(MANIFEST)
    if m is None:
        raise StarError(f"graph store {root.name}: no {MANIFEST} (not a graph store, or a write that did "
                        "not finish; rerun `star-jax build-graph --tensorstore`)")
    if m.get("kind") != KIND or m.get("format") != STORE_FORMAT:
        raise StarError(f"{_describe(root, MANIFEST)}: kind {m.get('kind')!r}, format {m.get('format')!r}; "
                        f"expected {KIND!r}, format {STORE_FORMAT}")
    return m


def check_complete(root: StoreRoot, manifest: dict) -> None:
    """Every array the manifest lists has its metadata and all its chunk objects (a key listing,
    no data read); anything less is a one-line `StarError` naming the array."""
    for key, info in manifest["arrays"].items():
        z = root.read_json(f"{key}/zarr.json")
        if z is None:
            raise StarError(f"{_describe(root, key)}: missing (the graph store is partly written)")
        if z.get("shape") != info["shape"] or z.get("data_type") != info["dtype"]:
            raise StarError(f"{_describe(root, key)}: {z.get('data_type')} {z.get('shape')}, but {MANIFEST} "
                            f"says {info['dtype']} {info['shape']}")
        have = len(root.list(f"{key}/c/"))
        if have != info["chunks"]:
            raise StarError(f"{_describe(root, key)}: truncated, {have} of {info['chunks']} chunks stored")


def open_graph_store(location: str | os.PathLike | Mapping, *, cache_bytes: int = 1 << 30) -> HeteroGraph:
    """A `HeteroGraph` whose arrays are read from the graph store at `location` on demand, chunk by
    chunk, keeping at most `cache_bytes` of decoded chunks (one cache shared by its arrays)."""
    root = StoreRoot(location)
    manifest = read_store_manifest(root)
    check_complete(root, manifest)
    cache = ChunkCache(cache_bytes)
    context = ts.Context()  # TensorStore's own chunk cache stays off: `cache` holds the chunks

    def array(key: str) -> TsArray:
        spec = {"driver": "zarr3", "kvstore": root.kvstore(key), "fill_missing_data_reads": False,
                "recheck_cached_data": False, "recheck_cached_metadata": False}
        try:
            store = ts.open(spec, read=True, context=context).result()
        except ValueError as e:
            raise StarError(f"{_describe(root, key)}: cannot open ({error_reason(e)})") from None
        return TsArray(store, _describe(root, key), cache)

    reopen = (functools.partial(open_graph_store, cache_bytes=int(cache_bytes)), (root.spec,))
    return HeteroGraph.from_arrays(manifest["graph"], _describe(root, MANIFEST), array, root.name, reopen)


def open_graph(graph_dir: str | os.PathLike, cfg: GraphConfig) -> HeteroGraph:
    """The graph a stage reads, per `graph.source`: the directory memory-mapped, or `graph.store`."""
    if cfg.source == "tensorstore":
        return open_graph_store(cfg.store, cache_bytes=cfg.cache_mb << 20)
    return HeteroGraph.load(graph_dir)


# -- fetching ----------------------------------------------------------------------------------


def fetch_graph(location: str | os.PathLike | Mapping, out_dir: str | os.PathLike, *,
                force: bool = False) -> tuple[HeteroGraph, bool]:
    """Materialise the graph directory `out_dir` from the graph store at `location`, checking every
    array's sha256 against the manifest; returns (graph, whether it copied). A directory already
    holding this graph is reused; a failed fetch leaves `out_dir` as it was."""
    root = StoreRoot(location)
    manifest = read_store_manifest(root)
    out = Path(out_dir)
    if not force and is_up_to_date(out, manifest["digest"]):
        return HeteroGraph.load(out), False
    if out.is_dir() and any(out.iterdir()) and not (out / GRAPH_FILE).is_file():
        raise StarError(f"--to {out}: a non-empty directory that is not a graph (no {GRAPH_FILE}); "
                        "choose a new or empty directory")
    check_complete(root, manifest)
    with atomic_dir(out) as tmp, progress(total=sum(a["nbytes"] for a in manifest["arrays"].values()),
                                          desc="graph fetch", unit="B", unit_scale=True) as bar:
        with ThreadPoolExecutor(_ARRAYS_AT_ONCE) as pool:
            arrays = manifest["arrays"].items()
            for f in [pool.submit(_fetch_array, root, k, info, tmp, bar) for k, info in arrays]:
                f.result()
        atomic_write_json(tmp / GRAPH_FILE, manifest["graph"])  # last, as build_graph writes it
    return HeteroGraph.load(out), True


def _fetch_array(root: StoreRoot, key: str, info: dict, tmp: Path, bar) -> None:
    src = root.open_array(key)
    path = tmp / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    dst = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(info["dtype"]),
                                    shape=tuple(info["shape"]))
    digest = hashlib.sha256()
    pending: deque = deque()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            lo, hi, future = pending.popleft()
            block = future.result()
            dst[lo:hi] = block
            digest.update(np.ascontiguousarray(block))
            bar.update(block.nbytes)

    try:
        for lo, hi in _blocks(info["shape"][0], info["chunk"][0]):
            pending.append((lo, hi, src[lo:hi].read()))
            drain(_IN_FLIGHT)
        drain(0)
    except ValueError as e:  # a missing chunk, a crc32c mismatch, an unreadable object
        raise StarError(f"{_describe(root, key)}: read failed ({error_reason(e)})") from None
    dst.flush()
    if digest.hexdigest() != info["sha256"]:
        raise StarError(f"{_describe(root, key)}: sha256 differs from {MANIFEST}; the store is damaged, "
                        "rewrite it with `star-jax build-graph --tensorstore URL --force`")


# -- CLI ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    fetch = sub.add_parser("fetch", help="materialise the memory-mapped graph directory from a graph store")
    fetch.add_argument("--from", dest="source", required=True, metavar="URL",
                       help="graph store: kvstore URL (file://, gs://, s3://) or path")
    fetch.add_argument("--to", dest="to", required=True, metavar="DIR", help="graph directory to write")
    fetch.add_argument("--force", action="store_true", help="copy even if DIR holds the same graph")


def main(args: argparse.Namespace) -> int:
    to = os.path.abspath(args.to)
    existing = to
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        under = "" if existing == to else f" ({existing} is a file)"
        raise StarError(f"--to {args.to}: not a directory{under}")
    graph, copied = fetch_graph(args.source, args.to, force=args.force)
    counts = ", ".join(f"{t} {graph.num_nodes(t)}" for t in graph.node_types)
    log.info(f"{'fetched' if copied else 'up to date'}: {args.to} ({counts})")
    return 0
