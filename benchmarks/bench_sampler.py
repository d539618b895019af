"""Neighbour sampling on the medium marketplace graph: star_jax's sampler vs PyG's LinkNeighborLoader.

    python -m benchmarks.bench_sampler [--scale medium] [--batches 40] [--no-docs]

Both sides start every batch from the same 64 train-period (member, job) apply pairs and draw the
same fan-outs per relation and hop (`SamplerConfig` defaults: [4, 2], with the per-relation
overrides), on the same graph (`benchmarks.graph_data`: the edges of `star-jax synth --scale
medium`, 1M members). PyG's side is `LinkNeighborLoader` (NeighborLoader's link-seeded form; it
runs the same `NeighborSampler`, here on torch-sparse since pyg-lib is not on PyPI) with the
categorical codes as node attributes, so both batches carry node ids and categoricals.

The two samplers do different work per seed, and the table says so: star_jax grows a tree with
replacement (fixed shapes, every slot kept) and keeps each pair's own edge out of its
neighbourhood; PyG samples without replacement, merges repeated nodes into one subgraph and
excludes nothing. The ratio is batches per second on identical seeds; seeds/s and sampled edges/s
are given for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from benchmarks.common import machine_info, machine_line, ratio, write_section
from benchmarks.graph_data import GraphData, marketplace_graph
from star_jax.config import SamplerConfig
from star_jax.graph.sampler import NeighborSampler, batch_rng, relation_fanouts
from star_jax.graph.seeds import PairSeeds

SECTION = "sampler"
PACKAGES = ("numpy", "torch", "torch-geometric", "torch-sparse")


def _ours(data: GraphData, cfg: SamplerConfig, batches: int) -> dict:
    sampler = NeighborSampler(data.graph, cfg)
    m, j = data.train_pairs
    seeds = PairSeeds(m, j, np.ones(len(m), np.float32), cfg.batch_size, shuffle=True, seed=0,
                      num_batches=batches + 1)
    sampler.sample(seeds[0], batch_rng(0, 0))  # warm-up
    edges = nodes = 0
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        batch = sampler.sample(seeds[b], batch_rng(0, b))
        edges += int(batch.graph.edges["mask"].sum())
        nodes += int(batch.graph.nodes["mask"].sum())
    sec = time.perf_counter() - t0
    L = sampler.layout
    return {"seconds": sec, "batches": batches, "seeds": batches * (2 * L.num_pairs + L.num_negatives),
            "edges": edges, "nodes": nodes, "edge_slots": L.num_edges, "node_slots": L.num_nodes}


def hetero_data(data: GraphData):
    """The graph as a PyG `HeteroData`: one edge type per relation and reverse, in message direction."""
    import torch
    from torch_geometric.data import HeteroData

    g = data.graph
    out = HeteroData()
    for t in g.node_types:
        out[t].num_nodes = g.num_nodes(t)
        out[t].cat = torch.from_numpy(np.asarray(g.cat[t]))
    for name, (src, dst) in g.relations.items():
        c = g.csr[name]  # CSR over src rows: message direction src -> dst
        row = np.repeat(np.arange(g.num_nodes(src)), np.diff(c.indptr))
        out[src, name, dst].edge_index = torch.from_numpy(np.stack([row, np.asarray(c.indices, np.int64)]))
    return out


def _pyg(data: GraphData, cfg: SamplerConfig, batches: int) -> dict:
    import torch
    from torch_geometric.loader import LinkNeighborLoader

    g = data.graph
    hetero = hetero_data(data)
    fanouts = relation_fanouts(cfg, g.schema)
    num_neighbors = {(s, name, d): list(fanouts[name]) for name, (s, d) in g.relations.items()}
    m, j = data.train_pairs
    order = np.random.default_rng(0).permutation(len(m))[: (batches + 1) * cfg.batch_size]
    label_index = torch.from_numpy(np.stack([m[order], j[order]]))
    loader = LinkNeighborLoader(hetero, num_neighbors=num_neighbors, batch_size=cfg.batch_size,
                                edge_label_index=(("member", cfg.target_relation, "job"), label_index),
                                shuffle=False)
    it = iter(loader)
    next(it)  # warm-up
    edges = nodes = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        edges += sum(int(batch[et].edge_index.shape[1]) for et in batch.edge_types)
        nodes += sum(int(batch[t].num_nodes) for t in batch.node_types)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "batches": batches, "seeds": batches * 2 * cfg.batch_size, "edges": edges,
            "nodes": nodes}


def run(data: GraphData, batches: int = 40) -> dict:
    default = SamplerConfig()
    same_seeds = dataclasses.replace(default, num_random_negatives=0)
    rows = {
        "star_jax": _ours(data, same_seeds, batches),
        "star_jax_negatives": _ours(data, default, batches),
        "pyg": _pyg(data, same_seeds, batches),
    }
    for r in rows.values():
        r["batches_per_s"] = r["batches"] / r["seconds"]
    g = data.graph
    return {"rows": rows, "graph": {"nodes": {t: g.num_nodes(t) for t in g.node_types},
                                    "edges": sum(int(c.indices.shape[0]) for c in g.csr.values()),
                                    "train_pairs": int(len(data.train_pairs[0])), "build_s": data.seconds},
            "fanouts": relation_fanouts(default, g.schema), "machine": machine_info(PACKAGES)}


def table(result: dict, scale: str) -> str:
    rows, graph = result["rows"], result["graph"]
    ours, pyg = rows["star_jax"], rows["pyg"]
    fan = ", ".join(f"{k} {list(v)}" for k, v in result["fanouts"].items())

    def line(name: str, r: dict) -> str:
        return (f"| {name} | {r['batches_per_s']:,.1f} | {r['seeds'] / r['seconds']:,.0f} | "
                f"{r['edges'] / r['seconds']:,.0f} | {r['edges'] / r['batches']:,.0f} | "
                f"{r['nodes'] / r['batches']:,.0f} | {ratio(r['batches_per_s'], pyg['batches_per_s'])} |")

    return "\n".join([
        "## Neighbour sampler vs PyG LinkNeighborLoader",
        "",
        f"`python -m benchmarks.bench_sampler`: the {scale} synthetic marketplace graph "
        f"({', '.join(f'{n:,} {t}' for t, n in graph['nodes'].items())}; {graph['edges']:,} directed edges "
        f"with reverses; generated and built in memory in {graph['build_s']:.0f} s), batches of 64 "
        f"train-period apply pairs, {ours['batches']} timed batches after one warm-up, one process, "
        f"no prefetch workers. Fan-outs per hop (message direction): [4, 2] for every relation except {fan}. "
        "star_jax draws with replacement into a fixed-shape tree (every slot kept, invalid ones masked) "
        "and excludes each pair's own apply edge from its neighbourhood; PyG (`LinkNeighborLoader`, "
        "torch-sparse backend) draws without replacement, merges repeated nodes and excludes nothing. "
        "Both gather node ids and categorical codes. The ratio is batches/s against PyG on identical "
        "seeds; the last row adds star_jax's 64 shared random negative jobs (the training default).",
        "",
        machine_line(result["machine"], PACKAGES),
        "",
        "| sampler | batches/s | seed nodes/s | sampled edges/s | edges per batch | nodes per batch "
        "| vs PyG |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        line("PyG LinkNeighborLoader (baseline)", pyg),
        line("star_jax NeighborSampler", ours),
        line("star_jax NeighborSampler + 64 negatives", rows["star_jax_negatives"]),
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="medium")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args()
    text = table(run(marketplace_graph(args.scale), args.batches), args.scale)
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
