"""GNN link-prediction train step: star_jax's HGT encoder vs the same model built from PyG's HGTConv.

    python -m benchmarks.bench_gnn [--scale medium] [--steps 10] [--no-docs]

Both sides train on the *same* sampled batches: `NeighborSampler` batches (SamplerConfig defaults:
64 apply pairs, 64 shared random negative jobs, fan-outs [4, 2]) from the medium marketplace graph
(`benchmarks.graph_data`), with random 128-d LLM features for members and jobs (the tiny demo's
embedding size). PyG receives each batch as PyG users hold one: only the real nodes and valid
edges, per type and relation (`x_dict` / `edge_index_dict`); star_jax runs on the fixed-shape
batch, padding slots included, as it trains.

The torch model mirrors `star_jax.gnn.model` at the `GNNConfig` defaults: per type the sum of a
LayerNorm + Linear of the LLM features, a hashed-ID embedding and projected categorical
embeddings; 2 x [PyG `HGTConv` (4 heads, 128 channels) -> LayerNorm]; a Linear to 200 and L2
normalisation; the scaled-dot link decoder with sigmoid BCE over the same [B, B + K] targets and
mask; global-norm clipping and AdamW. One warm-up step (star_jax: compile) and then `--steps`
timed steps, each on the next batch; the median step is reported.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from benchmarks.common import PeakRSS, machine_info, machine_line, ratio, write_section
from benchmarks.graph_data import GraphData, marketplace_graph
from star_jax.config import GNNConfig, GNNTrainConfig, SamplerConfig
from star_jax.graph.batch import HeteroBatch, Layout
from star_jax.graph.sampler import NeighborSampler, batch_rng
from star_jax.graph.seeds import PairSeeds

SECTION = "gnn"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "jraph", "torch", "torch-geometric", "torch-scatter")
LLM_DIM = 128


class RandomFeatures:
    """A fixed pseudo-random vector per (type, id): stands in for the EmbeddingStore."""

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        freq = np.arange(1, LLM_DIM + 1, dtype=np.float64) * (1.0 + 0.1 * len(node_type))
        return np.sin(np.asarray(ids, np.float64)[:, None] * 0.618 * freq).astype(np.float32)


def sample_batches(data: GraphData, n: int) -> tuple[list[HeteroBatch], Layout]:
    cfg = SamplerConfig()
    sampler = NeighborSampler(data.graph, cfg, features=RandomFeatures())
    m, j = data.train_pairs
    seeds = PairSeeds(m, j, np.ones(len(m), np.float32), cfg.batch_size, shuffle=True, seed=1, num_batches=n)
    return [sampler.sample(seeds[b], batch_rng(1, b)) for b in range(n)], sampler.layout


# -- star_jax ------------------------------------------------------------------------------------


def _ours(batches: list[HeteroBatch], layout: Layout, steps: int) -> dict:
    import jax

    from star_jax.gnn.model import build_gnn
    from star_jax.gnn.run import make_gnn_optimizer
    from star_jax.gnn.train import gnn_loss
    from star_jax.train_loop import Static, init_state, make_train_step

    gnn = build_gnn(GNNConfig())
    opt, schedule = make_gnn_optimizer(GNNTrainConfig())
    state = init_state(gnn.init(jax.random.key(0), batches[0], layout), opt, 1)
    step = make_train_step(gnn_loss(gnn), opt, schedule, fold_in_step=True)
    times = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        state, metrics = step(state, Static(layout), batches[0])
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        for i in range(steps):
            t0 = time.perf_counter()
            state, metrics = step(state, Static(layout), batches[1 + i % (len(batches) - 1)])
            loss = float(metrics["loss"])
            times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times)), "steps_s": times, "compile_s": compile_s, "loss": loss,
            "rss_delta": mem.delta}


# -- PyG -------------------------------------------------------------------------------------------


def to_pyg(batch: HeteroBatch, layout: Layout, cfg: GNNConfig) -> dict[str, Any]:
    """The batch's real nodes and valid edges as torch tensors, and the decoder's seeds, targets and mask."""
    import jax.numpy as jnp
    import torch

    from star_jax.gnn.model import cat_rows, hash_ids, link_targets

    node_mask = np.asarray(batch.graph.nodes["mask"])
    compact, x = {}, {}
    for t in layout.node_types:
        sl = layout.node_slice(t)
        real = node_mask[sl]
        local = np.full(real.shape[0], -1, np.int64)
        local[real] = np.arange(real.sum())
        compact[t] = (sl.start, local)
        as_torch = lambda a: torch.from_numpy(np.asarray(a, np.int64))
        x[t] = {"id": as_torch(hash_ids(jnp.asarray(batch.node_ids[t][real]), cfg.id_buckets)),
                "known": torch.from_numpy(np.asarray(batch.graph.nodes["known"])[sl][real])}
        if batch.cat[t].shape[1]:
            codes = batch.cat[t][real]
            x[t]["cat"] = as_torch(cat_rows(jnp.asarray(codes), cfg.cat_buckets))
        if t in batch.llm:
            x[t]["llm"] = torch.from_numpy(batch.llm[t][real])
    senders, receivers = np.asarray(batch.graph.senders), np.asarray(batch.graph.receivers)
    edge_mask = np.asarray(batch.graph.edges["mask"])
    edges = {}
    for name, src, dst in layout.relations:
        es = layout.edge_slice(name)
        ok = edge_mask[es]
        s = compact[src][1][senders[es][ok] - compact[src][0]]
        r = compact[dst][1][receivers[es][ok] - compact[dst][0]]
        edges[(src, name, dst)] = torch.from_numpy(np.stack([s, r]))
    targets, mask = link_targets(batch, layout)
    member = compact["member"][1][np.asarray(batch.member_seeds) - compact["member"][0]]
    jobs = compact["job"][1][np.concatenate([batch.job_seeds, batch.neg_jobs]) - compact["job"][0]]
    return {"x": x, "edges": edges, "member": torch.from_numpy(member), "jobs": torch.from_numpy(jobs),
            "targets": torch.from_numpy(np.array(targets)), "mask": torch.from_numpy(np.array(mask))}


def torch_model(layout: Layout, cats: dict[str, int], cfg: GNNConfig) -> Any:
    import torch
    from torch import nn
    from torch_geometric.nn import HGTConv

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            h = cfg.hidden_dim
            types = layout.node_types
            self.llm = nn.ModuleDict({t: nn.Sequential(nn.LayerNorm(LLM_DIM), nn.Linear(LLM_DIM, h))
                                      for t in ("member", "job")})
            self.ids = nn.ModuleDict({t: nn.Embedding(cfg.id_buckets, h) for t in types})
            table = lambda: nn.Embedding(cfg.cat_buckets, cfg.cat_dim, padding_idx=0)  # row 0: missing
            self.cat = nn.ModuleDict({t: nn.ModuleList(table() for _ in range(cats[t]))
                                      for t in types if cats[t]})
            self.cat_proj = nn.ModuleDict({t: nn.Linear(cats[t] * cfg.cat_dim, h) for t in types if cats[t]})
            metadata = (list(types), [(s, name, d) for name, s, d in layout.relations])
            self.convs = nn.ModuleList(HGTConv(h, h, metadata, cfg.heads) for _ in range(cfg.layers))
            self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(h) for t in types})
                                       for _ in range(cfg.layers))
            self.proj = nn.ModuleDict({t: nn.Linear(h, cfg.out_dim) for t in ("member", "job")})
            self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
            self.bias = nn.Parameter(torch.tensor(cfg.init_logit_bias))

        def forward(self, b: dict) -> torch.Tensor:
            h = {}
            for t, feats in b["x"].items():
                z = torch.where(feats["known"][:, None], self.ids[t](feats["id"]), 0.0)  # cold: no ID
                if "llm" in feats:
                    z = z + self.llm[t](feats["llm"])
                if "cat" in feats:
                    cols = [e(feats["cat"][:, c]) for c, e in enumerate(self.cat[t])]
                    z = z + self.cat_proj[t](torch.cat(cols, -1))
                h[t] = z
            for conv, norms in zip(self.convs, self.norms):
                out = conv(h, b["edges"])
                h = {t: norms[t](out[t] if out.get(t) is not None else h[t]) for t in h}
            member = nn.functional.normalize(self.proj["member"](h["member"][b["member"]]), dim=-1)
            jobs = nn.functional.normalize(self.proj["job"](h["job"][b["jobs"]]), dim=-1)
            logits = self.log_scale.exp() * member @ jobs.T + self.bias
            bce = nn.functional.binary_cross_entropy_with_logits(logits, b["targets"], reduction="none")
            return torch.where(b["mask"], bce, 0.0).sum() / b["mask"].sum().clamp(min=1)

    return Encoder()


def _pyg(batches: list[HeteroBatch], layout: Layout, steps: int) -> dict:
    import torch

    cfg, tcfg = GNNConfig(), GNNTrainConfig()
    torch.manual_seed(0)
    inputs = [to_pyg(b, layout, cfg) for b in batches]
    model = torch_model(layout, {t: batches[0].cat[t].shape[1] for t in layout.node_types}, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def step(b: dict) -> float:
        loss = model(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    with PeakRSS() as mem:
        step(inputs[0])
        for i in range(steps):
            t0 = time.perf_counter()
            loss = step(inputs[1 + i % (len(inputs) - 1)])
            times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    return {"step_s": float(np.median(times)), "steps_s": times, "loss": loss, "rss_delta": mem.delta,
            "params": n_params, "threads": torch.get_num_threads(),
            "real_nodes": float(np.mean([sum(len(v["id"]) for v in b["x"].values()) for b in inputs])),
            "real_edges": float(np.mean([sum(e.shape[1] for e in b["edges"].values()) for b in inputs]))}


def run(data: GraphData, steps: int = 5) -> dict:
    batches, layout = sample_batches(data, min(steps, 10) + 1)
    rows = {"star_jax": _ours(batches, layout, steps), "pyg": _pyg(batches, layout, steps)}
    return {"rows": rows, "layout": {"node_slots": layout.num_nodes, "edge_slots": layout.num_edges},
            "machine": machine_info(PACKAGES)}


def table(result: dict, scale: str) -> str:
    ours, pyg = result["rows"]["star_jax"], result["rows"]["pyg"]
    lay = result["layout"]
    cfg = GNNConfig()
    return "\n".join([
        "## GNN train step vs the same model on PyG's HGTConv",
        "",
        f"`python -m benchmarks.bench_gnn`: link-prediction train steps on identical sampled batches from "
        f"the {scale} marketplace graph (64 apply pairs + 64 shared negative jobs, fan-outs [4, 2]; "
        f"{pyg['real_nodes']:,.0f} real nodes and {pyg['real_edges']:,.0f} valid edges per batch on average, "
        f"in {lay['node_slots']:,} node and {lay['edge_slots']:,} edge slots of star_jax's fixed shapes). "
        f"Model at the `GNNConfig` defaults: hidden {cfg.hidden_dim}, {cfg.heads} heads, {cfg.layers} HGT "
        f"layers, output {cfg.out_dim}, hashed-ID + categorical + {LLM_DIM}-d LLM inputs ({pyg['params']:,} "
        "parameters in the torch model), sigmoid BCE over [64, 128] in-batch logits, global-norm clipping, "
        "AdamW; fp32. PyG gets only the real nodes and valid edges (`x_dict`, `edge_index_dict`); star_jax "
        "runs its padded fixed-shape batch as it trains. One warm-up step (star_jax: the compile), then "
        f"the median of {len(ours['steps_s'])} steps, each on the next batch. Memory: peak RSS over all "
        "steps minus RSS before the first (star_jax: the compile included).",
        "",
        machine_line(result["machine"], PACKAGES),
        "",
        "| model | step ms | steps/s | vs PyG | step memory MB | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| PyG HGTConv model (baseline, {pyg['threads']} threads) | {pyg['step_s'] * 1e3:,.1f} | "
        f"{1 / pyg['step_s']:,.1f} | 1.00x | {pyg['rss_delta'] / 1e6:,.0f} | — |",
        f"| star_jax `GNN` train step | {ours['step_s'] * 1e3:,.1f} | {1 / ours['step_s']:,.1f} | "
        f"**{ratio(pyg['step_s'], ours['step_s'])}** | {ours['rss_delta'] / 1e6:,.0f} | "
        f"{ours['compile_s']:.1f} |",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="medium")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args()
    text = table(run(marketplace_graph(args.scale), args.steps), args.scale)
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
