"""EmbeddingStore throughput against a numpy memmap of the same rows, measured in the same run.

    python -m benchmarks.bench_store [--rows 100000] [--dim 4096] [--no-gnn] [--no-docs]

Writes `rows x dim` bfloat16 vectors through `EmbeddingWriter` (the path `star-jax embed` takes:
blocks of whole shards, then publish), builds a replica (`star_jax.store.replica`), refreshes 1% of
the texts (the rest copied), and reads batches of random rows with `EmbeddingStore.lookup`. The
baseline writes the same rows into an uncompressed `np.memmap` and gathers the same random rows
from it. Lookups run in rounds, every variant once per round, after one untimed pass that warms
the OS page cache: they measure decode and gather cost on this CPU, not the disk. Full-size runs
then time GNN training with store features vs in memory (`bench_gnn_store`, small scale). The
markdown table goes into the `bench:store` section of docs/benchmarks.md.
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
TITLE = "## EmbeddingStore (TensorStore zarr3) vs numpy memmap"
_POOL_ROWS = 8192  # distinct random rows; blocks are permutations of them (generating 400M normals is slow)


class Clock:
    """Wall and process CPU seconds (all threads: TensorStore decodes and encodes in its own)."""

    def __enter__(self) -> Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


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


def _write_memmap(path: str, shape: tuple[int, int], pool: np.ndarray) -> None:
    mm = np.memmap(path, dtype=ml_dtypes.bfloat16, mode="w+", shape=shape)
    for start in range(0, shape[0], 8192):
        mm[start : start + 8192] = _block(pool, start, min(8192, shape[0] - start))
    mm.flush()
    del mm


class _Memmap:
    """The baseline as a reader: a gather from the memmap, cast to lookup's float32."""

    def __init__(self, path: str, shape: tuple[int, int]):
        self.mm = np.memmap(path, dtype=ml_dtypes.bfloat16, mode="r", shape=shape)

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.mm[ids], dtype=np.float32)


def _lookup_rounds(readers: dict, queries: dict[str, list[np.ndarray]], rounds: int) -> dict[str, list]:
    """Seconds (wall, cpu) of each reader's pass over each query set, `rounds` times, alternated.

    `readers[name]()` gives the handle a pass reads through: a fresh store handle, except where it
    is the point (the warm row cache). One untimed pass per reader first warms the page cache.
    """
    for make in readers.values():
        r = make()
        for qs in queries.values():
            for q in qs:
                r.lookup("member", q)
    out: dict[str, list] = {}
    for i in range(rounds):
        names = list(readers)
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
            for size, qs in queries.items():
                r = readers[name]()
                r.lookup("member", qs[0][:10])  # open the arrays and load the id map, untimed
                with Clock() as c:
                    for q in qs:
                        r.lookup("member", q)
                out.setdefault(f"{name} {size}", []).append((c.wall, c.cpu))
    return out


def _layouts(dim: int) -> dict[str, StoreConfig]:
    """The default layout and the uncompressed one, named for the table."""
    auto = StoreConfig()
    rows = inner_chunk_rows(auto, dim)
    return {
        f"default: {auto.compression}, inner chunks of {rows} row{'s' if rows > 1 else ''}": auto,
        f"uncompressed, inner chunks of {rows}": StoreConfig(compression="none"),
    }


def run(rows: int = 100_000, dim: int = 4096, batch: int = 1000, batches: int = 20, rounds: int = 3,
        seed: int = 0, gnn: bool | None = None) -> dict:
    """Measure and return the numbers and a markdown table (`result["table"]`).

    `gnn` None: time GNN training with store features (`bench_gnn_store`, small scale) only in
    full-size runs (rows >= 100,000), not in smoke runs.
    """
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((_POOL_ROWS, dim), dtype=np.float32).astype(ml_dtypes.bfloat16)
    hashes = np.arange(rows, dtype=np.uint64)
    spec = EmbeddingSpec("bench", None, "bench", 512, "last_token", dim)
    layouts = _layouts(dim)
    (default, default_cfg), (plain, plain_cfg) = layouts.items()
    big_n = min(10 * batch, rows)
    queries = {"1k": [rng.choice(rows, batch, replace=False) for _ in range(batches)],
               "10k": [rng.choice(rows, big_n, replace=False) for _ in range(max(1, batches // 10))]}
    raw_mb = rows * dim * 2 / 1e6
    tmp = tempfile.mkdtemp(prefix="bench_store_")
    clocks: dict[str, tuple[float, float]] = {}  # operation -> (wall, cpu) seconds
    sizes: dict[str, int] = {}
    try:
        baseline = os.path.join(tmp, "baseline.bin")
        root, root_plain, replica = (os.path.join(tmp, n) for n in ("store0", "store1", "replica"))
        # Writes alternate with the baseline's; the replica is built early so that its files have
        # settled (replica.py remembers checked chunks only then) before the timed reads.
        memmap_writes = []
        for name, path, cfg in ((default, root, default_cfg), (plain, root_plain, plain_cfg)):
            with Clock() as c:
                _write_memmap(baseline, (rows, dim), pool)
            memmap_writes.append((c.wall, c.cpu))
            with Clock() as c:
                _write(path, cfg, spec, hashes, pool)
            clocks[f"write {name}"] = (c.wall, c.cpu)
            sizes[name] = _du(path)
            if path == root:
                with Clock() as c:
                    EmbeddingStore.open(root, replica=replica).replica("member")
                clocks["replica build"] = (c.wall, c.cpu)
                sizes["replica"] = _du(replica)
        clocks["write memmap"] = min(memmap_writes)  # the faster baseline: the ratios err low

        warm = EmbeddingStore.open(root, cache_bytes=rows * dim * 2)  # one handle, kept warm
        readers = {
            "memmap": lambda: _Memmap(baseline, (rows, dim)),
            "default": lambda: EmbeddingStore.open(root),
            "uncompressed": lambda: EmbeddingStore.open(root_plain),
            "replica": lambda: EmbeddingStore.open(root, replica=replica),
            "cached": lambda: warm,
        }
        passes = _lookup_rounds(readers, queries, rounds)
        for key, runs in passes.items():
            clocks[f"lookup {key}"] = tuple(float(np.median([r[i] for r in runs])) for i in range(2))

        changed = hashes.copy()
        changed[rng.choice(rows, rows // 100, replace=False)] += np.uint64(1 << 40)
        with Clock() as c:
            embedded = _write(root, default_cfg, spec, changed, pool)
        clocks["refresh"] = (c.wall, c.cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    counts = {"1k": batch * batches, "10k": big_n * len(queries["10k"])}

    def count(key: str) -> int:
        return counts[key.split()[-1]] if key.startswith("lookup") else rows

    def ratio(key: str, base: str) -> float:
        return clocks[base][0] / clocks[key][0]

    def line(what: str, key: str, base: str) -> str:
        n, (sec, cpu) = count(key), clocks[key]
        return (f"| {what} | {n / sec:,.0f} | {n * dim * 2 / sec / 1e6:,.0f} | {sec:.2f} | {cpu:.2f} | "
                f"{ratio(key, base):.2f}x |")

    m = machine_info()
    lookups = [
        (size, f"of {n:,} rows" if size == "10k" else f"({batches} batches of {batch:,})")
        for size, n in (("1k", batch), ("10k", big_n))
    ]
    lines = [
        f"`python -m benchmarks.bench_store`: {rows:,} x {dim} bfloat16 rows ({raw_mb:,.0f} MB raw), shards "
        f"of {StoreConfig().shard_rows} rows. Writes go through `EmbeddingWriter` (blocks of whole shards, "
        "publish included), each after a memmap write of the same rows; the faster memmap write is the "
        "baseline. The replica (`EmbeddingStore.open(..., replica=DIR)`, star_jax/store/replica.py) is "
        "an uncompressed zarr3 copy in chunks of at most 128 MiB, read through numpy memmaps; its build "
        f"reads the default-layout store. Lookups: {batches} batches of {batch:,} distinct random rows and "
        f"{len(queries['10k'])} of {big_n:,}, returned as float32 by `EmbeddingStore.lookup` from a fresh "
        "handle (the memmap: a gather and a cast), after one untimed pass per reader that warms the OS "
        f"page cache; {rounds} rounds, every reader once per round, medians shown. \"Warm row cache\": "
        "one handle opened with `cache_bytes` of the data's size, kept across rounds (the GNN case: one "
        "version read epoch after epoch). CPU s: process CPU time, all threads. Size on disk: "
        + "; ".join(f"{name}: {size / 1e6:,.0f} MB" for name, size in sizes.items()) + ".",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, shared with other work (1-minute "
        f"load average {m['load_avg_1m']} at the end); Python {m['python']}, numpy {m['numpy']}, "
        f"tensorstore {m['tensorstore']}, ml_dtypes {m['ml_dtypes']}.",
        "",
        "| operation | rows/s | MB/s | seconds | CPU s | vs memmap |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        line("write, numpy memmap (baseline)", "write memmap", "write memmap"),
        *(line(f"write, store {name}", f"write {name}", "write memmap") for name in layouts),
        line(f"refresh, store default: {embedded:,} rows (1%) re-embedded, the rest copied", "refresh",
             "write memmap"),
        line("replica build from the default store", "replica build", "write memmap"),
    ]
    for size, what in lookups:
        lines += [
            line(f"random-row lookup {what}, numpy memmap (baseline)", f"lookup memmap {size}",
                 f"lookup memmap {size}"),
            line(f"random-row lookup {what}, store {default}", f"lookup default {size}",
                 f"lookup memmap {size}"),
            line(f"random-row lookup {what}, store {plain}", f"lookup uncompressed {size}",
                 f"lookup memmap {size}"),
            line(f"random-row lookup {what}, store default with a replica", f"lookup replica {size}",
                 f"lookup memmap {size}"),
            line(f"random-row lookup {what}, store default, warm row cache", f"lookup cached {size}",
                 f"lookup memmap {size}"),
        ]
    ratios = {
        "write default": ratio(f"write {default}", "write memmap"),
        **{f"lookup {v} {size}": ratio(f"lookup {v} {size}", f"lookup memmap {size}")
           for v in ("default", "uncompressed", "replica", "cached") for size in ("1k", "10k")},
    }
    result = {"rows": rows, "dim": dim, "seconds": {k: v[0] for k, v in clocks.items()},
              "cpu_seconds": {k: v[1] for k, v in clocks.items()}, "bytes": sizes,
              "refresh_embedded": embedded,
              "rows_per_s": {k: count(k) / v[0] for k, v in clocks.items()}, "ratios": ratios,
              "lookup_passes": passes, "machine": m, "table": "\n".join(lines)}
    if gnn or (gnn is None and rows >= 100_000):
        from benchmarks import bench_gnn_store

        result["gnn"] = bench_gnn_store.run("small", steps=4)
        result["table"] += "\n\n### GNN training with features from the store\n\n" + result["gnn"]["table"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--no-gnn", action="store_true", help="skip the GNN training comparison")
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args()
    result = run(args.rows, args.dim, gnn=False if args.no_gnn else None)
    text = f"{TITLE}\n\n{result['table']}"
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)
        print(f"\nwritten to {DOCS}")


if __name__ == "__main__":
    main()
