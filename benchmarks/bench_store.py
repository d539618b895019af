"""EmbeddingStore throughput against a numpy memmap of the same rows, measured in the same run.

    python -m benchmarks.bench_store [--rows 100000] [--dim 4096] [--no-docs]

Writes `rows x dim` bfloat16 vectors through `EmbeddingWriter` (the path `star-jax embed` takes:
blocks of whole shards, then publish), refreshes 1% of the texts (the rest copied), and reads
batches of random rows with `EmbeddingStore.lookup` from a fresh handle. The baseline writes the
same rows into an uncompressed `np.memmap` and gathers the same random rows from it. Both sides
read through a warm OS page cache, so the lookup numbers measure decode and gather cost on this
CPU, not the disk. The markdown table goes into the `bench:store` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from benchmarks.common import DOCS, machine_info, write_section
from star_jax.config import StoreConfig
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter
from star_jax.store.layout import inner_chunk_rows

SECTION = "store"
_POOL_ROWS = 8192  # distinct random rows; blocks are permutations of them (generating 400M normals is slow)


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _block(pool: np.ndarray, start: int, n: int) -> np.ndarray:
    return pool[(np.arange(start, start + n) * 7919) % len(pool)]


def _write(root: str, cfg: StoreConfig, spec: EmbeddingSpec, hashes: np.ndarray, pool: np.ndarray) -> int:
    """Embed-like write through the writer API; returns the rows it had to embed."""
    w = EmbeddingWriter.open(root, "v1", spec, {"member": (np.arange(len(hashes)), hashes)}, cfg)
    for block in w.pending_blocks("member", 8192):
        w.write("member", block.rows, _block(pool, int(block.rows[0]) + int(hashes[0] > 0), len(block.rows)))
    return w.publish().embedded["member"]


def _timed_lookups(root: str, queries: list[np.ndarray], cache_bytes: int = 0) -> float:
    # One pass first: it warms the OS page cache and, with `cache_bytes`, fills the handle's row
    # cache (the repeated-reads case, GNN epochs); without, the timed pass uses a fresh handle.
    store = EmbeddingStore.open(root, cache_bytes=cache_bytes)
    for q in queries:
        store.lookup("member", q)
    if not cache_bytes:
        store = EmbeddingStore.open(root)
        store.lookup("member", queries[0][:10])  # open the arrays and load the id map once
    t0 = time.perf_counter()
    for q in queries:
        store.lookup("member", q)
    return time.perf_counter() - t0


def _memmap_lookups(path: str, shape: tuple[int, int], queries: list[np.ndarray]) -> float:
    mm = np.memmap(path, dtype=ml_dtypes.bfloat16, mode="r", shape=shape)
    for q in queries:  # warm the OS page cache, as the store's lookups do
        np.take(mm, q, axis=0)
    t0 = time.perf_counter()
    for q in queries:
        np.asarray(mm[q], dtype=np.float32)  # the same result type as lookup
    return time.perf_counter() - t0


def _layouts(dim: int) -> dict[str, StoreConfig]:
    """The default layout and two alternatives, named for the table."""
    auto = StoreConfig()
    rows = inner_chunk_rows(auto, dim)
    return {
        f"default: {auto.compression}, inner chunks of {rows} row{'s' if rows > 1 else ''}": auto,
        f"{auto.compression}, inner chunks of 16 rows": StoreConfig(chunk_rows=16),
        f"uncompressed, inner chunks of {rows}": StoreConfig(compression="none"),
    }


def run(rows: int = 100_000, dim: int = 4096, batch: int = 1000, batches: int = 20, seed: int = 0) -> dict:
    """Measure and return the numbers and a markdown table (`result["table"]`)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((_POOL_ROWS, dim), dtype=np.float32).astype(ml_dtypes.bfloat16)
    hashes = np.arange(rows, dtype=np.uint64)
    spec = EmbeddingSpec("bench", None, "bench", 512, "last_token", dim)
    layouts = _layouts(dim)
    default = next(iter(layouts))
    queries = [rng.choice(rows, batch, replace=False) for _ in range(batches)]
    big_n = min(10 * batch, rows)
    big = [rng.choice(rows, big_n, replace=False) for _ in range(max(1, batches // 10))]
    raw_mb = rows * dim * 2 / 1e6
    tmp = tempfile.mkdtemp(prefix="bench_store_")
    seconds: dict[str, float] = {}  # operation -> seconds
    sizes: dict[str, int] = {}
    try:
        baseline = os.path.join(tmp, "baseline.bin")
        t0 = time.perf_counter()
        mm = np.memmap(baseline, dtype=ml_dtypes.bfloat16, mode="w+", shape=(rows, dim))
        for start in range(0, rows, 8192):
            mm[start : start + 8192] = _block(pool, start, min(8192, rows - start))
        mm.flush()
        del mm
        seconds["write memmap"] = time.perf_counter() - t0
        seconds["lookup memmap"] = _memmap_lookups(baseline, (rows, dim), queries)
        seconds["lookup10 memmap"] = _memmap_lookups(baseline, (rows, dim), big)

        for i, (name, cfg) in enumerate(layouts.items()):
            root = os.path.join(tmp, f"store{i}")
            t0 = time.perf_counter()
            _write(root, cfg, spec, hashes, pool)
            seconds[f"write {name}"] = time.perf_counter() - t0
            sizes[name] = _du(root)
            seconds[f"lookup {name}"] = _timed_lookups(root, queries)
            if name == default:
                seconds["lookup10 default"] = _timed_lookups(root, big)
                seconds["lookup cached"] = _timed_lookups(root, queries, cache_bytes=rows * dim * 2)
                seconds["lookup10 cached"] = _timed_lookups(root, big, cache_bytes=rows * dim * 2)
                # The baseline again, next to the cached reads (the machine is shared): the ratios
                # use the faster of its two measurements.
                for key, q in (("lookup memmap", queries), ("lookup10 memmap", big)):
                    seconds[key] = min(seconds[key], _memmap_lookups(baseline, (rows, dim), q))
                changed = hashes.copy()
                changed[rng.choice(rows, rows // 100, replace=False)] += np.uint64(1 << 40)
                t0 = time.perf_counter()
                embedded = _write(root, cfg, spec, changed, pool)
                seconds["refresh"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    looked = batch * batches
    m = machine_info()

    def count(key: str) -> int:
        if key.startswith("lookup10"):
            return big_n * len(big)
        return looked if key.startswith("lookup") else rows

    def line(what: str, key: str, base: str) -> str:
        n = count(key)
        sec = seconds[key]
        return (f"| {what} | {n / sec:,.0f} | {n * dim * 2 / sec / 1e6:,.0f} | {sec:.2f} | "
                f"{seconds[base] / sec:.2f}x |")

    lines = [
        f"`python -m benchmarks.bench_store`: {rows:,} x {dim} bfloat16 rows ({raw_mb:,.0f} MB raw), shards "
        f"of {StoreConfig().shard_rows} rows. Writes go through `EmbeddingWriter` (blocks of whole shards, "
        f"publish included). Lookups: {batches} batches of {batch} distinct random rows, returned as float32 "
        "by `EmbeddingStore.lookup` from a fresh handle, after one untimed pass that warms the OS page cache "
        "on both sides: they "
        f"measure decode and gather cost, not the disk; {len(big)} batches of {big_n:,} rows the same "
        "way. \"Again\" rows: a handle opened with `cache_bytes` of the data's size, after one pass over the "
        "same batches (the GNN case: one version read epoch after epoch). The memmap baseline is read twice, "
        "before the store and after its cached reads; its rows and every ratio use the faster pass. "
        "Size on disk per generation: "
        + "; ".join(f"{name}: {sizes[name] / 1e6:,.0f} MB" for name in layouts) + ".",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, shared with other work (1-minute "
        f"load average {m['load_avg_1m']} at the end); Python {m['python']}, numpy {m['numpy']}, "
        f"tensorstore {m['tensorstore']}, ml_dtypes {m['ml_dtypes']}.",
        "",
        "| operation | rows/s | MB/s | seconds | vs memmap |",
        "| --- | ---: | ---: | ---: | ---: |",
        line("write, numpy memmap (baseline)", "write memmap", "write memmap"),
        *(line(f"write, store {name}", f"write {name}", "write memmap") for name in layouts),
        line(f"refresh, store {default.split(':')[0]}: {embedded:,} rows (1%) re-embedded, the rest copied",
             "refresh", "write memmap"),
        line("random-row lookup, numpy memmap (baseline)", "lookup memmap", "lookup memmap"),
        *(line(f"random-row lookup, store {name}", f"lookup {name}", "lookup memmap") for name in layouts),
        line("random-row lookup again, store default, warm `cache_bytes` row cache", "lookup cached",
             "lookup memmap"),
        line(f"random-row lookup of {big_n:,} rows, numpy memmap (baseline)", "lookup10 memmap",
             "lookup10 memmap"),
        line(f"random-row lookup of {big_n:,} rows, store default", "lookup10 default", "lookup10 memmap"),
        line(f"random-row lookup of {big_n:,} rows again, store default, warm row cache", "lookup10 cached",
             "lookup10 memmap"),
    ]
    return {"rows": rows, "dim": dim, "seconds": seconds, "bytes": sizes, "refresh_embedded": embedded,
            "rows_per_s": {k: count(k) / v for k, v in seconds.items()},
            "machine": m, "table": "\n".join(lines)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args()
    result = run(args.rows, args.dim)
    text = "## EmbeddingStore (TensorStore zarr3) vs numpy memmap\n\n" + result["table"]
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)
        print(f"\nwritten to {DOCS}")


if __name__ == "__main__":
    main()
