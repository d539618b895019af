"""GNN training steps with LLM features read from the EmbeddingStore vs the same features in memory.

    python -m benchmarks.bench_gnn_store [--scale small] [--steps 8] [--dim 256]

The graph of `star-jax synth --scale SCALE` (`benchmarks.graph_data`), random bf16 vectors of
`dim` (the small config's bi-encoder width) for every member and job, and the model, sampler and
optimizer of configs/SCALE.yaml. The variants: features in memory (a float32 table), and the store
read plainly (default layout, no cache), with the config's `store.cache_mb` row cache, and from a
replica. Every variant samples each batch (features included), the batches must agree to the
bit, and one train step on it stands for all: a variant's step is its sampling plus that step.
train-gnn prefetches batches in a thread instead, hiding some lookup time: an upper bound.
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

from benchmarks.common import machine_info, machine_line

PACKAGES = ("numpy", "jax", "tensorstore")
MEMORY = "in memory (float32 arrays)"
_ROOT = Path(__file__).resolve().parent.parent


class InMemory:
    """The same vectors as the store, held as float32 arrays indexed by node id (ids are rows)."""

    def __init__(self, tables: dict[str, np.ndarray]):
        self.tables = {t: x.astype(np.float32) for t, x in tables.items()}

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        return self.tables[node_type][ids]


def _write_store(root: str, tables: dict[str, np.ndarray], dim: int) -> None:
    from star_jax.config import StoreConfig
    from star_jax.store import EmbeddingSpec, EmbeddingWriter

    spec = EmbeddingSpec("bench", None, "bench", 512, "mean", dim)
    inputs = {t: (np.arange(len(x)), np.arange(len(x), dtype=np.uint64)) for t, x in tables.items()}
    w = EmbeddingWriter.open(root, "v1", spec, inputs, StoreConfig())
    for t, x in tables.items():
        for block in w.pending_blocks(t, 8192):
            w.write(t, block.rows, x[block.positions])
    w.publish()


def run(scale: str = "small", steps: int = 8, dim: int = 256, seed: int = 0) -> dict:
    """Time `steps` training steps per variant; returns the numbers and a markdown table."""
    import jax

    from benchmarks.graph_data import marketplace_graph
    from star_jax.config import load_config
    from star_jax.gnn.features import StandardizedFeatures
    from star_jax.gnn.model import LLM_TYPES, build_gnn
    from star_jax.gnn.run import make_gnn_optimizer
    from star_jax.gnn.train import gnn_loss
    from star_jax.graph.sampler import NeighborSampler, batch_rng
    from star_jax.graph.seeds import PairSeeds
    from star_jax.store import EmbeddingStore
    from star_jax.train_loop import Static, init_state, make_train_step

    cfg = load_config(_ROOT / "configs" / f"{scale}.yaml")
    data = marketplace_graph(scale, seed)
    graph = data.graph
    rng = np.random.default_rng(seed)
    tables = {t: rng.standard_normal((graph.num_nodes(t), dim), dtype=np.float32).astype(ml_dtypes.bfloat16)
              for t in LLM_TYPES}
    tmp = tempfile.mkdtemp(prefix="bench_gnn_store_")
    try:
        root = os.path.join(tmp, "store")
        t0 = time.perf_counter()
        _write_store(root, tables, dim)
        write_s = time.perf_counter() - t0
        cache_mb = cfg.store.cache_mb
        sources = {MEMORY: InMemory(tables), "store, default layout, no cache": EmbeddingStore.open(root)}
        if cache_mb:
            name = f"store, `cache_mb` {cache_mb} row cache (as configs/{scale}.yaml)"
            sources[name] = EmbeddingStore.open(root, cache_bytes=cache_mb << 20)
        sources["store, replica"] = EmbeddingStore.open(root, replica=os.path.join(tmp, "replica"))
        ids = {t: np.asarray(graph.ids[t]) for t in LLM_TYPES}
        t0 = time.perf_counter()
        feats = {name: StandardizedFeatures.fit(src, ids) for name, src in sources.items()}
        fit_s = time.perf_counter() - t0  # the replica is built here, on its first lookup
        samplers = {name: NeighborSampler(graph, cfg.sampler, features=f) for name, f in feats.items()}
        layout = next(iter(samplers.values())).layout
        assert all(s.layout == layout for s in samplers.values())
        m, j = data.train_pairs
        seeds = PairSeeds(m, j, np.ones(len(m), np.float32), cfg.sampler.batch_size, shuffle=True, seed=1,
                          num_batches=steps + 1)

        gnn = build_gnn(cfg.gnn)
        opt, schedule = make_gnn_optimizer(cfg.gnn_train)
        step = make_train_step(gnn_loss(gnn), opt, schedule, fold_in_step=True)
        first = samplers[next(iter(samplers))].sample(seeds[0], batch_rng(1, 0))
        state = init_state(gnn.init(jax.random.key(0), first, layout), opt, 1)
        t0 = time.perf_counter()
        state, metrics = step(state, Static(layout), first)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0

        names = list(samplers)
        sample_s: dict[str, list[float]] = {name: [] for name in names}
        sample_cpu: dict[str, list[float]] = {name: [] for name in names}
        train_s, train_cpu = [], []
        for b in range(1, steps + 1):
            batches = {}
            for k in range(len(names)):  # each batch is sampled first by the next variant
                name = names[(b + k) % len(names)]
                c0, t0 = time.process_time(), time.perf_counter()
                batches[name] = samplers[name].sample(seeds[b], batch_rng(1, b))
                sample_s[name].append(time.perf_counter() - t0)
                sample_cpu[name].append(time.process_time() - c0)
            ref = batches[MEMORY]
            for name, batch in batches.items():
                if any(not np.array_equal(ref.llm[t], batch.llm[t]) for t in ref.llm):
                    raise RuntimeError(f"batch {b}: {name} sampled other features than {MEMORY}")
            # The batches are identical, so one train step stands for every variant's.
            c0, t0 = time.process_time(), time.perf_counter()
            state, metrics = step(state, Static(layout), ref)
            float(metrics["loss"])
            train_s.append(time.perf_counter() - t0)
            train_cpu.append(time.process_time() - c0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    train = np.array(train_s)
    step_s = {k: float(np.median(np.array(v) + train)) for k, v in sample_s.items()}
    # Paired: each variant's step over the in-memory step on the same batch.
    ratio = {k: float(np.median((np.array(v) + train) / (np.array(sample_s[MEMORY]) + train)))
             for k, v in sample_s.items()}
    m_info = machine_info(PACKAGES)
    rows = [f"| {name} | {np.median(sample_s[name]) * 1e3:,.1f} | {np.median(sample_cpu[name]) * 1e3:,.1f} | "
            f"{step_s[name] * 1e3:,.0f} | {ratio[name]:.3f}x |" for name in names]
    nodes = {t: graph.num_nodes(t) for t in LLM_TYPES}
    table = "\n".join([
        f"`python -m benchmarks.bench_gnn_store --scale {scale}`: the {scale} marketplace graph "
        f"({', '.join(f'{n:,} {t}s' for t, n in nodes.items())}), {dim}-d bfloat16 features per member "
        f"and job, model, sampler and optimizer of configs/{scale}.yaml (batch {cfg.sampler.batch_size} "
        f"pairs). {steps} batches; each is sampled by every variant in turn (a different one first each "
        "time), features included, and the sampled batches must agree to the bit; then one train step "
        f"runs on it (median {np.median(train) * 1e3:,.0f} ms, {np.median(train_cpu):.1f} CPU s). A "
        "variant's step is its sampling time plus that train step; \"vs in memory\": the median over "
        "batches of the variant's step over the in-memory step. Batches are sampled in the timed loop, "
        "not prefetched in a thread as train-gnn does, so every lookup shows in full. Setup: graph built "
        f"in {data.seconds:.0f} s, store written in {write_s:.1f} s, standardisation fitted on every "
        f"variant in {fit_s:.1f} s (the replica built during it), compile {compile_s:.0f} s.",
        "",
        machine_line(m_info, PACKAGES),
        "",
        "| features | sampling ms | sampling CPU ms | step ms | step time vs in memory |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    return {"scale": scale, "dim": dim, "steps": steps, "step_s": step_s, "train_s": train_s,
            "train_cpu_s": train_cpu, "sample_s": sample_s, "sample_cpu_s": sample_cpu, "vs_memory": ratio,
            "graph_s": data.seconds, "write_s": write_s, "fit_s": fit_s, "compile_s": compile_s,
            "machine": m_info, "table": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small", choices=["tiny", "small"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    args = p.parse_args()
    print(run(args.scale, args.steps, args.dim)["table"])


if __name__ == "__main__":
    main()
