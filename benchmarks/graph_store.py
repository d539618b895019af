"""The graph in TensorStore against the memory-mapped graph directory (not a test).

    python -m benchmarks.graph_store --graph GRAPH_DIR --data DATA_DIR --dir SCRATCH [--rounds 5]

Times, on one graph directory (`star-jax build-graph`): writing it as npy files (what build-graph
writes) vs as zarr3 arrays to a `file://` graph store (`write_graph_store`); reading every array
back from each (`np.load` vs `fetch_graph`, which also checks the sha256s); and drawing training
batches (default sampler config) from the memory maps vs straight from the store through a
cache twice the graph's size and one of a tenth of it, interleaved in rounds (the median round is
reported). Writes and full reads report the fastest of --repeats runs. One line per measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

from star_jax.config import SamplerConfig
from star_jax.fileio import read_json
from star_jax.graph.hetero import GRAPH_FILE, HeteroGraph, array_keys
from star_jax.graph.sampler import NeighborSampler, batch_rng
from star_jax.graph.seeds import train_seeds
from star_jax.graph.tstore import fetch_graph, open_graph_store, write_graph_store


def _drop_page_cache(path: str) -> None:
    """Best effort: ask the kernel to forget `path`'s pages (so reads hit the disk, not RAM)."""
    for d, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _best(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeats` runs of `fn`: the least disturbed by other
    processes. CPU time counts every thread of this process (TensorStore's included)."""
    runs = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t, time.process_time() - c))
    return min(runs)


def _rate(mb: float, wall_cpu: tuple[float, float]) -> str:
    wall, cpu = wall_cpu
    return f"{mb / wall:.0f} MB/s ({wall:.3f}s wall, {cpu:.3f}s CPU)"


def _write_npy(arrays: dict, graph: str, out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for k, a in arrays.items():
        os.makedirs(os.path.dirname(os.path.join(out, k)), exist_ok=True)
        np.save(os.path.join(out, f"{k}.npy"), a)
    shutil.copy(os.path.join(graph, GRAPH_FILE), out)
    os.sync()


def _read_npy(keys: list[str], d: str) -> None:
    _drop_page_cache(d)
    for k in keys:
        np.load(os.path.join(d, f"{k}.npy"))


def _fetch(url: str, store: str, out: str) -> None:
    _drop_page_cache(store)
    shutil.rmtree(out, ignore_errors=True)
    fetch_graph(url, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", required=True, help="graph directory (star-jax build-graph)")
    p.add_argument("--data", required=True, help="its data directory (for the training seeds)")
    p.add_argument("--dir", required=True, help="scratch directory (npy/, store/, fetched/ go inside)")
    p.add_argument("--batches", type=int, default=8, help="batches per graph per round")
    p.add_argument("--rounds", type=int, default=5, help="sampler rounds, the graphs interleaved")
    p.add_argument("--repeats", type=int, default=3, help="runs of each copy, the fastest reported")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20)
    p.add_argument("--read-bytes", type=int, default=1 << 16)
    args = p.parse_args(argv)
    meta = read_json(os.path.join(args.graph, GRAPH_FILE))
    arrays = {k: np.load(os.path.join(args.graph, f"{k}.npy")) for k in array_keys(meta)}
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    print(f"graph: {len(arrays)} arrays, {mb:.1f} MB, {sum(meta['edges'].values()):,} directed edges")

    npy, store, fetched = (os.path.join(args.dir, n) for n in ("npy", "store", "fetched"))
    url = f"file://{store}"

    def write_store() -> None:
        write_graph_store(args.graph, url, chunk_bytes=args.chunk_bytes, read_bytes=args.read_bytes,
                          force=True)
        os.sync()

    npy_w = _best(lambda: _write_npy(arrays, args.graph, npy), args.repeats)
    ts_w = _best(write_store, args.repeats)
    manifest = read_json(os.path.join(store, "manifest.json"))
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs) / 1e6
    chunks = sum(a["chunks"] for a in manifest["arrays"].values())
    print(f"write: npy {_rate(mb, npy_w)}; graph store {_rate(mb, ts_w)} ({chunks} chunks, "
          f"{stored:.1f} MB stored)")
    npy_r = _best(lambda: _read_npy(list(arrays), npy), args.repeats)
    ts_r = _best(lambda: _fetch(url, store, fetched), args.repeats)
    print(f"read all: npy {_rate(mb, npy_r)}; graph fetch {_rate(mb, ts_r)} (sha256 checked, npy written)")

    cfg = SamplerConfig()
    graphs = {"memmap": HeteroGraph.load(npy),
              "tensorstore, cache 2x graph": open_graph_store(url, cache_bytes=int(2 * mb * 1e6)),
              "tensorstore, cache graph/10": open_graph_store(url, cache_bytes=int(mb * 1e5))}
    samplers = {name: NeighborSampler(g, cfg) for name, g in graphs.items()}
    n = args.rounds * args.batches + 1
    seeds = train_seeds(args.data, graphs["memmap"], cfg, num_batches=n)
    for s in samplers.values():
        s.sample(seeds[0], batch_rng(0, 0))
    rates: dict[str, list[float]] = {name: [] for name in graphs}
    cpu: dict[str, float] = dict.fromkeys(graphs, 0.0)
    edges: dict[str, int] = dict.fromkeys(graphs, 0)
    for r in range(args.rounds):
        for name, s in samplers.items():
            t, c = time.perf_counter(), time.process_time()
            for b in range(1 + r * args.batches, 1 + (r + 1) * args.batches):
                edges[name] += int(s.sample(seeds[b], batch_rng(0, b)).graph.edges["mask"].sum())
            rates[name].append(args.batches / (time.perf_counter() - t))
            cpu[name] += time.process_time() - c
    total = args.rounds * args.batches
    for name, r in rates.items():
        assert edges[name] == edges["memmap"], name  # the same batches from every copy
        med = float(np.median(r))
        print(f"sampler [{name}]: {med:.1f} batches/s, {med * edges[name] / total:,.0f} sampled edges/s "
              f"(median of {args.rounds} rounds, {min(r):.1f}-{max(r):.1f}); "
              f"{1e3 * cpu[name] / total:.2f} ms CPU per batch")

if __name__ == "__main__":
    main()
