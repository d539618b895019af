"""`star-jax index build --run RUN_DIR --variant NAME`: an ANN index (faiss) over a variant's jobs.

The index lives in RUN_DIR/index/<variant>/ (index.faiss, job_ids.npy, index.json) and scores as
`recommend` does: inner product of the stored vectors, L2-normalised first for `llm_*` variants
(cosine). index.json records the store version and a digest of its job rows; `load_index`
refuses an index whose version has since changed; its `nprobe` overrides an IVF index's build-time
lists searched per query. Index types and their measured trade-offs: docs/retrieval.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from star_jax.config import fingerprint
from star_jax.errors import StarError
from star_jax.eval.report import uses_cosine, variant_embeddings
from star_jax.eval.runs import VARIANTS, Run, read_run
from star_jax.fileio import atomic_dir, atomic_write_json, read_json
from star_jax.store import EmbeddingStore

log = logging.getLogger(__name__)

INDEX_DIR = "index"
META_FILE = "index.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "job_ids.npy"
KINDS = ("auto", "flat", "hnsw", "ivf")
FORMAT = 1
# `auto`: exact (flat) up to this many jobs, IVF above. Up to 5k jobs a query is under 1M
# multiply-adds and an index saves nothing worth its recall loss; at 1M jobs IVF reaches recall@10
# 1.0 at 16 probes and builds in seconds where HNSW takes minutes (docs/retrieval.md).
FLAT_MAX_JOBS = 20_000


class IndexParams(NamedTuple):
    kind: str  # flat | hnsw | ivf
    m: int = 32  # HNSW links per node
    ef_construction: int = 40  # HNSW build beam (80 doubles the build for +0.01 recall@10)
    ef_search: int = 128  # HNSW search beam
    nlist: int = 0  # IVF lists (0: about sqrt(jobs))
    nprobe: int = 16  # IVF lists searched per query (recall@10 at 1M jobs: docs/retrieval.md)


class JobIndex(NamedTuple):
    index: object  # a faiss.Index over the job vectors (inner product)
    job_ids: np.ndarray  # int64[n]: the job id of each index row
    meta: dict  # index.json
    path: Path  # its directory


def index_dir(run: Run, variant: str) -> Path:
    return run.paths.root / INDEX_DIR / variant


def job_digest(manifest: dict) -> str:
    """A digest of what the job vectors of a store version depend on: its spec and job generation."""
    # Only the job rows: refreshing the members (new member texts) leaves a job index valid.
    keys = ("version", "model", "adapter", "tokenizer", "max_len", "pooling", "dim", "dtype", "extra")
    return fingerprint({k: manifest.get(k) for k in keys}, manifest["node_types"].get("job"))


def variant_store(run: Run, variant: str):
    """The EmbeddingStore of `variant`'s version in `run` (one line naming what is missing)."""
    if variant not in VARIANTS:
        raise StarError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    where = run.store_version(variant)
    if where is None:
        raise StarError(f"--variant {variant}: {run.paths.root} has no {variant} embeddings "
                        f"(built: {', '.join(v for v in VARIANTS if run.store_version(v)) or 'none'})")
    return EmbeddingStore.open(where[0], where[1], kvstore=run.cfg.store.kvstore)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def make_index(vectors: np.ndarray, params: IndexParams, *, seed: int = 0):
    """A faiss inner-product index of `params.kind` holding `vectors` (float32 [n, d]) in row order."""
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    n, d = x.shape
    if params.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    elif params.kind == "ivf":
        nlist = params.nlist or ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        # 40 points per list: faiss's k-means wants >= 39; more only slows the build.
        sample = x if n <= 40 * nlist else x[np.sort(rng.choice(n, 40 * nlist, replace=False))]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = min(params.nprobe, nlist)
    else:
        raise StarError(f"--type {params.kind!r}: expected one of {', '.join(KINDS)}")
    index.add(x)
    return index


def ivf_lists(n: int) -> int:
    return max(1, min(n // 39, int(np.sqrt(n))))  # faiss wants >= 39 training points per list


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [q, k] scores, int64 [q, k] index rows, -1 where fewer than k were found)."""
    k = min(k, index.ntotal)
    scores, rows = index.search(np.ascontiguousarray(queries, np.float32), k)
    return scores, rows


def build_index(run: Run, variant: str, params: IndexParams) -> Path:
    """Index the jobs of `variant`'s store version into RUN_DIR/index/<variant>/ (replaced whole)."""
    import faiss

    store = variant_store(run, variant)
    jobs = store.ids("job")
    if len(jobs) == 0:
        raise StarError(f"--variant {variant}: store version {store.version} holds no jobs")
    kind = params.kind
    if kind == "auto":
        kind = "flat" if len(jobs) <= FLAT_MAX_JOBS else "ivf"
    params = params._replace(kind=kind)
    if kind == "ivf":
        nlist = min(params.nlist or ivf_lists(len(jobs)), len(jobs))
        params = params._replace(nlist=nlist, nprobe=min(params.nprobe, nlist))
    cosine = uses_cosine(variant)
    vectors = variant_embeddings(store, "job", jobs, cosine)
    start = time.perf_counter()
    index = make_index(vectors, params)
    seconds = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "variant": variant,
        "store": store.root,
        "version": store.version,
        "generation": store.manifest["generation"],
        "job_generation": store.manifest["node_types"]["job"]["generation"],
        "job_digest": job_digest(store.manifest),
        "jobs": len(jobs),
        "dim": int(vectors.shape[1]),
        "metric": "cosine" if cosine else "inner_product",
        "params": params._asdict(),
        "build_seconds": round(seconds, 3),
    }
    out = index_dir(run, variant)
    with atomic_dir(out) as tmp:
        faiss.write_index(index, os.fspath(tmp / INDEX_FILE))
        np.save(tmp / IDS_FILE, jobs)
        atomic_write_json(tmp / META_FILE, meta)
    log.info("indexed %d %s jobs (%s) in %.1fs: %s", len(jobs), variant, kind, seconds, out)
    return out


def read_meta(run: Run, variant: str) -> dict | None:
    """index.json of `variant`'s index, None when the run has none."""
    path = index_dir(run, variant) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = read_json(path)
    except ValueError as e:
        raise StarError(f"index {path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StarError(f"index {path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                        f"expected {FORMAT}; rebuild it with `star-jax index build`")
    return meta


def check_fresh(meta: dict, where: Path, manifest: dict) -> None:
    """A one-line `StarError` when the index was built from another state of the store than `manifest`."""
    rebuild = f"rebuild it with `star-jax index build --variant {meta['variant']}` or pass --exact"
    if meta["version"] != manifest["version"]:
        raise StarError(f"index {where}: built from store version {meta['version']}, but the run's "
                        f"{meta['variant']} embeddings are now version {manifest['version']}; {rebuild}")
    if meta["job_digest"] != job_digest(manifest):
        now = manifest["node_types"].get("job", {}).get("generation")
        raise StarError(f"index {where}: store version {meta['version']} has changed since it was built "
                        f"(job generation {meta['job_generation']}, now {now}); {rebuild}")


def load_index(run: Run, variant: str, manifest: dict, *, nprobe: int | None = None) -> JobIndex | None:
    """`variant`'s index when the run has one; a stale or damaged index is a `StarError`.

    `nprobe` (IVF only): lists searched per query instead of the build's, capped at its nlist
    (nprobe = nlist scans every list: exact search).
    """
    import faiss

    meta = read_meta(run, variant)
    if meta is None:
        return None
    where = index_dir(run, variant)
    check_fresh(meta, where, manifest)
    try:
        index = faiss.read_index(os.fspath(where / INDEX_FILE))
        ids = np.load(where / IDS_FILE)
    except (RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StarError(f"index {where}: unreadable ({first}); rebuild it with `star-jax index build`"
                        ) from None
    if index.ntotal != len(ids) or index.ntotal != meta["jobs"]:
        raise StarError(f"index {where}: holds {index.ntotal} vectors and {len(ids)} ids, index.json says "
                        f"{meta['jobs']}; rebuild it with `star-jax index build`")
    params = meta["params"]
    if nprobe is not None and nprobe < 1:
        raise StarError(f"--nprobe: must be >= 1, got {nprobe}")
    if nprobe is not None and params["kind"] != "ivf":
        raise StarError(f"--nprobe {nprobe}: index {where} is {params['kind']}, and nprobe sets an ivf "
                        "index's search; rebuild it with --type ivf, or leave --nprobe out")
    if params["kind"] == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif params["kind"] == "ivf":
        index.nprobe = min(nprobe, params["nlist"]) if nprobe is not None else params["nprobe"]
    return JobIndex(index, ids.astype(np.int64), meta, where)


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="index a variant's job embeddings into RUN_DIR/index/VARIANT")
    add = build.add_argument
    add("--run", required=True, help="the --out directory of `star-jax pipeline`")
    add("--variant", required=True, choices=list(VARIANTS), help="whose job embeddings to index")
    add("--type", dest="kind", default="auto", choices=KINDS,
        help=f"flat (exact), hnsw or ivf; auto: flat up to {FLAT_MAX_JOBS} jobs, else ivf")
    defaults = IndexParams("auto")
    add("--m", type=int, default=defaults.m, help=f"HNSW links per node (default {defaults.m})")
    add("--ef-construction", type=int, default=defaults.ef_construction,
        help=f"HNSW build beam (default {defaults.ef_construction})")
    add("--ef-search", type=int, default=defaults.ef_search,
        help=f"HNSW search beam (default {defaults.ef_search})")
    add("--nlist", type=int, default=defaults.nlist, help="IVF lists (default: about sqrt(jobs))")
    add("--nprobe", type=int, default=defaults.nprobe, help=f"IVF lists searched (default {defaults.nprobe})")


def main(args: argparse.Namespace) -> int:
    for flag in ("m", "ef_construction", "ef_search", "nprobe"):
        if getattr(args, flag) < 1:
            raise StarError(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
    if args.nlist < 0:
        raise StarError(f"--nlist: must be >= 0, got {args.nlist}")
    run = read_run(args.run)
    params = IndexParams(args.kind, args.m, args.ef_construction, args.ef_search, args.nlist, args.nprobe)
    out = build_index(run, args.variant, params)
    meta = read_json(out / META_FILE)
    print(f"index {out}: {meta['params']['kind']} over {meta['jobs']} {args.variant} jobs "
          f"(store version {meta['version']}, {meta['metric']}), built in {meta['build_seconds']:.1f}s")
    return 0
