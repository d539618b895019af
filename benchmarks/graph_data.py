"""The synthetic marketplace's graph alone, in memory: `HeteroGraph` + training pairs, no Parquet.

The sampler and GNN benchmarks need the graph of `star-jax synth --scale medium` (1M members), not
its texts or files. This runs the generator's own functions (`synth.make_world`,
`synth.world_tables`, `synth.member_chunk`, with the same seeds, so the edges are exactly those the
data directory would hold), keeps only the node categoricals and the edge tables, and builds the
CSR per relation with `hetero.csr_from_edges`, as `build-graph` does. Member chunks are generated
in parallel processes (one per core); node ids equal table rows, as in the generator.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from star_jax.data import synth
from star_jax.data.schema import default_schema
from star_jax.graph.hetero import CSR, REV, HeteroGraph, csr_from_edges, encode_categorical

_NODE_COLUMNS = {"member": ("seniority", "location", "industry")}


class GraphData(NamedTuple):
    graph: HeteroGraph
    train_pairs: tuple[np.ndarray, np.ndarray]  # member rows, job rows of the train-period applies
    seconds: float


def _edges(tables: dict[str, pa.Table]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    as32 = lambda col: col.to_numpy().astype(np.int32)
    return {name.split("/", 1)[1]: (as32(t["src"]), as32(t["dst"]))
            for name, t in tables.items() if name.startswith("edges/")}


_WORLD: list = []  # the generator's world, sent once to each worker process


def _set_world(world: synth.World) -> None:
    _WORLD[:] = [world]


def _member_part(args: tuple) -> tuple[dict, dict]:
    """Edges and categorical string columns of one member chunk."""
    scale, seed, index, lo, hi = args
    tables = synth.member_chunk(_WORLD[0], scale, seed, index, lo, hi)
    nodes = tables["nodes/member"]
    return _edges(tables), {c: nodes[c] for c in _NODE_COLUMNS["member"]}


def marketplace_graph(scale: str = "medium", seed: int = 0, workers: int | None = None) -> GraphData:
    """The graph of `synth.synthesize(scale, seed)`'s data directory, built in memory."""
    import time

    t0 = time.perf_counter()
    sc = synth.SCALES[scale]
    world = synth.make_world(sc, seed)
    world_tabs = synth.world_tables(world, seed)
    edges = {k: [v] for k, v in _edges(world_tabs).items()}
    member_cols: dict[str, list] = {c: [] for c in _NODE_COLUMNS["member"]}
    chunks = [(sc, seed, i, lo, min(lo + synth.CHUNK, sc.members))
              for i, lo in enumerate(range(0, sc.members, synth.CHUNK))]
    # spawn, not fork: the parent may have imported JAX, whose threads make fork unsafe.
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_world, initargs=(world,)) as pool:
        for part_edges, cols in pool.map(_member_part, chunks):
            for k, v in part_edges.items():
                edges.setdefault(k, []).append(v)
            for c, v in cols.items():
                member_cols[c].append(v)

    schema = default_schema()
    sizes = {"member": sc.members, **{t: world_tabs[f"nodes/{t}"].num_rows for t in schema.node_types
                                      if t != "member"}}
    cat, vocab = {}, {}
    for t, spec in schema.node_types.items():
        columns = {c: pa.chunked_array(member_cols[c]) for c in spec.categorical} if t == "member" else \
            {c: world_tabs[f"nodes/{t}"][c] for c in spec.categorical}
        coded = {c: encode_categorical(pa.chunked_array(col)) for c, col in columns.items()}
        cat[t] = np.stack([coded[c][0] for c in spec.categorical], 1) if coded else \
            np.zeros((sizes[t], 0), np.int32)
        vocab[t] = {c: coded[c][1] for c in spec.categorical}
    csr: dict[str, CSR] = {}
    for name, spec in schema.relations.items():
        src = np.concatenate([s for s, _ in edges[name]])
        dst = np.concatenate([d for _, d in edges[name]])
        csr[name] = csr_from_edges(src, dst, sizes[spec.src], sizes[spec.dst])
        csr[name + REV] = csr_from_edges(dst, src, sizes[spec.dst], sizes[spec.src])
    ids = {t: np.arange(n, dtype=np.int64) for t, n in sizes.items()}
    order = {t: np.arange(n, dtype=np.int32) for t, n in sizes.items()}
    graph = HeteroGraph(schema, ids, ids, order, csr, cat, vocab, digest=f"synth-{scale}-{seed}")
    applied = csr["member_applied"]
    pairs = (np.repeat(np.arange(sizes["member"]), applied.degrees()), applied.indices.astype(np.int64))
    return GraphData(graph, pairs, time.perf_counter() - t0)
