"""Graph build and sampler throughput on a random marketplace graph (not a test).

    python -m benchmarks.graph_build --members 1000000 --dir /tmp/graph-bench

writes a data directory with skewed (Zipf) skill, title, company and job popularity, times
`star-jax build-graph` on it in a child process (wall time, peak memory), then draws training
batches with the default sampler config and reports batches/s, seed nodes/s and sampled edges/s
for each neighbour weighting. Features are left out: their cost is the EmbeddingStore's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from star_jax.config import SamplerConfig
from star_jax.data.schema import default_schema, write_schema


def _zipf(rng: np.random.Generator, n: int, size: int, a: float = 1.2) -> np.ndarray:
    """Rows in [0, n) with Zipf-like popularity (a few hubs, a long tail)."""
    p = 1.0 / np.arange(1, n + 1) ** a
    return rng.choice(n, size=size, p=p / p.sum())


def make_data(root: str, members: int, seed: int = 0) -> int:
    """Write a random data directory; returns the number of edges."""
    rng = np.random.default_rng(seed)
    sizes = {"member": members, "job": max(members // 5, 10), "company": max(members // 100, 5),
             "skill": max(members // 200, 20), "title": max(members // 500, 10)}
    per = {"member_skill": 20, "member_applied": 6, "job_skill": 8}
    schema = default_schema()
    write_schema(root, schema)
    ids = {t: rng.permutation(n).astype(np.int64) * 7 + 3 for t, n in sizes.items()}
    levels = np.array(["junior", "mid", "senior"])
    for t, spec in schema.node_types.items():
        cols = {"id": ids[t]}
        if spec.text:
            cols["text"] = pa.array(np.char.add(f"{t} ", ids[t].astype(str)))
        for c in spec.categorical:
            cols[c] = pa.array(levels[rng.integers(0, 3, sizes[t])])
        _write(os.path.join(root, spec.table), cols)
    total = 0
    for name, spec in schema.relations.items():
        n_src = sizes[spec.src]
        k = per.get(name, 1)
        src = np.repeat(np.arange(n_src), k)
        dst = _zipf(rng, sizes[spec.dst], src.shape[0]) if k > 1 else rng.integers(0, sizes[spec.dst], n_src)
        cols = {"src": ids[spec.src][src], "dst": ids[spec.dst][dst]}
        if spec.timestamp:
            cols["timestamp"] = rng.integers(1_600_000_000, 1_700_000_000, src.shape[0])
        _write(os.path.join(root, spec.table), cols)
        total += src.shape[0]
        if name == "member_applied":
            train = rng.random(src.shape[0]) < 0.5
            n = int(train.sum())
            _write(os.path.join(root, schema.labels), {
                "member_id": cols["src"][train], "job_id": cols["dst"][train],
                "label": np.ones(n, np.int8), "timestamp": cols["timestamp"][train],
                "split": pa.array(np.full(n, "train")),
            })
    return total


def _write(path: str, cols: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(cols), path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=1_000_000)
    p.add_argument("--dir", required=True, help="scratch directory (data/ and graph/ go inside)")
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args(argv)
    data, out = os.path.join(args.dir, "data"), os.path.join(args.dir, "graph")
    if not os.path.exists(os.path.join(data, "schema.json")):
        t = time.perf_counter()
        edges = make_data(data, args.members)
        print(f"data: {edges:,} edges written in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "star_jax.cli", "build-graph", "--data", data, "--out", out, "--force"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"build-graph: {time.perf_counter() - t:.1f}s wall, peak RSS {peak:.2f} GiB")

    from star_jax.graph.hetero import HeteroGraph
    from star_jax.graph.sampler import NeighborSampler, batch_rng
    from star_jax.graph.seeds import train_seeds

    graph = HeteroGraph.load(out)
    for weighting in ("uniform", "degree", "weight"):
        cfg = dataclasses.replace(SamplerConfig(), neighbor_weighting=weighting)
        t = time.perf_counter()
        sampler = NeighborSampler(graph, cfg)
        seeds = train_seeds(data, graph, cfg, num_batches=args.batches + 1)
        sampler.sample(seeds[0], batch_rng(0, 0))  # builds the prefix sums of the weighted modes
        setup = time.perf_counter() - t
        t, edges = time.perf_counter(), 0
        for b in range(1, args.batches + 1):
            edges += int(sampler.sample(seeds[b], batch_rng(0, b)).graph.edges["mask"].sum())
        dt = time.perf_counter() - t
        L = sampler.layout
        seed_nodes = args.batches * (2 * L.num_pairs + L.num_negatives)
        valid = edges / args.batches / L.num_edges
        rate = f"{args.batches / dt:.1f} batches/s, {seed_nodes / dt:,.0f} seed nodes/s"
        print(f"sampler[{weighting}]: {rate}, {edges / dt:,.0f} sampled edges/s "
              f"({valid:.0%} of {L.num_edges} edge slots valid); setup {setup:.1f}s")


if __name__ == "__main__":
    main()
