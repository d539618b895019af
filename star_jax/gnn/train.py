"""`star-jax train-gnn`: link-prediction training of STAR's heterogeneous attention GNN.

    star-jax train-gnn --data DATA_DIR --graph GRAPH_DIR [--store ROOT --store-version V] \
        --variant NAME --out OUT [--config --set]

Wires the model (star_jax.gnn.model), the sampler's batches and the shared loop
(star_jax.train_loop). The task is LinkSAGE's (arXiv 2402.13430): predict the train period's
member -> job applies from sampled neighbourhoods. OUT holds config.yaml and run.json (read by
gnn-embed), checkpoints/, metrics.jsonl and tb/, and result.json, written last (star_jax.gnn.run).
Several processes (`mesh.num_processes`) or `gnn_train.data_parallel` split each batch over every
device (star_jax.gnn.distributed), with the one-device run's loss and updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, GNNTrainConfig, SamplerConfig, to_yaml
from star_jax.data.splits import subsample
from star_jax.errors import StarError
from star_jax.fileio import atomic_write_json, atomic_write_text, finished_result
from star_jax.gnn.attribute_fit import fitted_tables
from star_jax.gnn.block_fit import MAX_FIT_PAIRS, labelled_maps
from star_jax.gnn.cold_start import ColdStartSampler
from star_jax.gnn.distributed import DataParallel, ShardedEvaluator
from star_jax.gnn.evaluate import Evaluator, val_pairs
from star_jax.gnn.features import StandardizedFeatures, feature_source
from star_jax.gnn.model import GNN, LLM_TYPES, build_gnn, set_block_gains
from star_jax.gnn.run import (
    CHECKPOINTS,
    CONFIG_FILE,
    RESULT,
    RUN_FILE,
    abstract_state,
    checkpoint_tree,
    fresh_state,
    from_checkpoint_tree,
    make_gnn_optimizer,
    run_fingerprint,
    uses_best,
)
from star_jax.gnn.variants import VARIANTS, variant_config
from star_jax.graph.hetero import HeteroGraph
from star_jax.graph.sampler import FanoutSchedule, FeatureSource, NeighborSampler, batch_rng, make_dataset
from star_jax.graph.seeds import BatchSubset, PairSeeds, read_pairs, train_seeds
from star_jax.graph.tstore import open_graph
from star_jax.parallel import initialize_distributed
from star_jax.store.manifest import check_name
from star_jax.tracking import MetricsLogger
from star_jax.train_loop import LossFn, Static, TrainLoop, TrainState, make_train_step

log = logging.getLogger(__name__)

# Val pairs the blocks' gains are picked on: every one up to this many, a seeded subset above it
# (embedding the medium scale's millions of val pairs would take longer than the training).
MAX_GAIN_PAIRS = 100_000


def gnn_loss(gnn: GNN) -> LossFn:
    """`gnn.loss_fn` as the loop calls a loss: the batch's `Layout` is the step's static `frozen`."""
    return lambda params, layout, batch, rng: gnn.loss_fn(params, batch, layout.value, rng)


# -- batches -------------------------------------------------------------------------------------


def training_pairs(data_dir: str | os.PathLike, graph: HeteroGraph, t: GNNTrainConfig,
                   sampler: SamplerConfig) -> PairSeeds:
    """The train split's applies, plus its labelled non-applies with `gnn_train.labelled_negatives`.

    LinkSAGE trains on labelled (member, job, label) tuples (arXiv 2402.13430): a shown-but-not-applied
    job is a negative of its member on the diagonal of the in-batch decoder, next to the in-batch
    and random negatives. These are the hard negatives: mostly the member's own occupation and city.
    """
    if not t.labelled_negatives and not t.shown_negatives:
        return train_seeds(data_dir, graph, sampler, num_batches=t.steps)
    m, j, y = read_pairs(data_dir, graph, "train", positives_only=False)  # read once for both uses
    if not (y > 0).any():
        raise StarError(f"{graph.schema.labels}: no pairs with split == 'train' and label == 1")
    if t.labelled_negatives:
        return PairSeeds(m, j, y, sampler.batch_size, shuffle=True, seed=sampler.seed, num_batches=t.steps)
    # The applies, as `train_seeds` reads them, each batch carrying a shown job per pair.
    shown = y == 0
    order = np.argsort(m[shown], kind="stable")  # each member's shown jobs, in file order
    indptr = np.searchsorted(m[shown][order], np.arange(graph.num_nodes("member") + 1))
    return PairSeeds(m[~shown], j[~shown], y[~shown], sampler.batch_size, shuffle=True, seed=sampler.seed,
                     num_batches=t.steps, shown=(indptr.astype(np.int64), j[shown][order].astype(np.int64)))


class Stage(NamedTuple):
    """One fan-out stage: its sampler (hence Layout) and the grain iterator of its batches."""

    sampler: NeighborSampler
    batches: Iterator  # grain DatasetIterator: get_state/set_state, checkpointed with the model
    start: int  # the step count when the stage began


# -- the loop ------------------------------------------------------------------------------------


class GNNLoop(TrainLoop):
    """The shared loop plus the GNN's own: the best evaluation's params (`gnn_train.keep_best`),
    the val history, and LiGNN's fan-out stages (arXiv 2402.11139): with `sampler.adaptive` the
    fan-outs grow when the val AUC plateaus, one new Layout (and one compilation) per growth.

    Every batch of a stage has the same Layout, so the train step compiles once per stage. One
    process trains on one device: its batch is one graph with flat edge indices. Data-parallel
    (`dp`), each device gets one part of the batch (a part's Layout) and every process the same
    gathered val AUC, so all grow their fan-outs at the same step.
    """

    eval_at_start = False
    eval_at_end = True
    shared_data_state = True  # every process iterates over the global seed batches (BatchSubset)

    def __init__(self, cfg: Config, variant: str, data_dir: str, graph: HeteroGraph,
                 features: FeatureSource | None, ckpt: Checkpointer, logger: MetricsLogger,
                 meta: dict | None):
        t = cfg.gnn_train
        self.cfg, self.graph, self.features = cfg, graph, features
        self.gnn = build_gnn(cfg.gnn)
        self.optimizer, self.lr = make_gnn_optimizer(t)
        self.dp = DataParallel(cfg.mesh, cfg.sampler.batch_size) if data_parallel(cfg) else None
        self.seeds = training_pairs(data_dir, graph, t, cfg.sampler)
        self.data_dir = data_dir
        before = meta or {}
        if meta is None:
            self.schedule, self.history = FanoutSchedule.from_config(cfg.sampler), []
            self.stage = self.make_stage(self.schedule.fanouts, 0)
        else:
            self.schedule, self.history = FanoutSchedule(**meta["schedule"]), meta["history"]
            self.stage = self.make_stage(self.schedule.fanouts, int(meta["stage_start"]))
        self.layouts = [self.stage.sampler.layout]  # this session's
        self.totals = {k: int(before.get(k, 0)) for k in ("compiles", "layouts")}  # earlier sessions'
        self.eval_seconds = float(before.get("eval_seconds", 0.0))
        self.evaluator = Evaluator(self.gnn, graph, cfg.sampler, t.eval_batch_size, features,
                                   val_pairs(data_dir, graph, t, cfg.sampler), data_dir)
        if self.dp is not None:
            self.evaluator = ShardedEvaluator(self.evaluator, self.dp)
        self.best: dict = {}  # initial_best's fields, set by initial_state and by restores
        if self.dp is None:
            step_fn = make_train_step(gnn_loss(self.gnn), self.optimizer, self.lr, fold_in_step=True)
        else:
            step_fn = self.dp.train_step(self.gnn, self.optimizer, self.lr)
        super().__init__(
            step_fn, Static(self.stage.sampler.layout), self.stage.batches,
            put=(lambda batch: batch) if self.dp is None else self.dp.put,
            ckpt=ckpt, logger=logger, steps=t.steps, log_every=t.log_every,
            checkpoint_every=t.checkpoint_every, desc=f"train-gnn {variant}", eval_every=t.eval_every,
            evaluate=self.validate, watchdog_s=cfg.mesh.watchdog_s,
        )

    def make_stage(self, fanouts: tuple[int, ...], start: int) -> Stage:
        sampler = NeighborSampler(self.graph, self.cfg.sampler, features=self.features, hop_fanouts=fanouts,
                                  parts=1 if self.dp is None else self.dp.ways)
        # Held-out pairs are mostly with nodes that have no training apply, while every training
        # seed has some: stripping seeds of their applies teaches the encoder to embed cold nodes.
        rate = self.cfg.gnn_train.cold_start_rate

        def draw(s: NeighborSampler) -> NeighborSampler | ColdStartSampler:
            return ColdStartSampler(s, rate) if rate > 0 else s

        # Batches start, start + 1, ...: indices stay global, so batch i is the same whatever stage draws it.
        seeds = BatchSubset(self.seeds, np.arange(start, len(self.seeds)))
        if self.dp is None:
            return Stage(sampler, iter(make_dataset(draw(sampler), seeds)), start)
        parts = self.dp.samplers(sampler)  # this process's parts of each batch
        return Stage(parts[0], iter(make_dataset([draw(s) for s in parts], seeds)), start)

    def initial_state(self, resume: bool) -> TrainState:
        """Step 0, or with `resume` only its shapes (the checkpoint fills them)."""
        stage, seed = self.stage, self.cfg.gnn_train.seed
        mesh = None if self.dp is None else self.dp.mesh
        first = stage.sampler.sample(self.seeds[stage.start], batch_rng(self.cfg.sampler.seed, stage.start))
        layout = stage.sampler.layout
        if resume:
            state, self.best = abstract_state(self.gnn, self.optimizer, first, layout, seed, mesh)
        else:
            state, self.best = fresh_state(self.gnn, self.optimizer, first, layout, seed, mesh,
                                           self.llm_block_map(), self.attribute_tables())
        return state

    def llm_block_map(self) -> tuple[np.ndarray, np.ndarray] | None:
        """With `gnn.llm_block`: the block's member and job maps (`gnn.llm_block_fit`); a resumed
        run has them in its checkpoint."""
        g = self.cfg.gnn
        if not (g.use_llm and g.llm_block and isinstance(self.features, StandardizedFeatures)):
            return None
        ids = {t: np.asarray(self.graph.ids[t]) for t in LLM_TYPES}
        if g.llm_block_fit == "principal":
            kernel, shift = self.features.principal_map(ids, g.llm_block)
            return np.stack([kernel] * len(LLM_TYPES)), np.stack([shift] * len(LLM_TYPES))

        def as_ids(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            m, j, y = self.labelled[split]
            return ids["member"][m], ids["job"][j], y

        t = self.cfg.gnn_train
        return labelled_maps(self.features, ids, as_ids("train"), as_ids("val"), g.llm_block, t.llm_block_l2)

    def attribute_tables(self) -> dict[str, np.ndarray] | None:
        """With `gnn.attribute_block`: its tables fitted on the labelled pairs; a resumed run has
        them in its checkpoint."""
        g = self.cfg.gnn
        if not g.attribute_block:
            return None
        t = self.cfg.gnn_train
        return fitted_tables(self.graph, self.labelled["train"], self.labelled["val"], g.attribute_block,
                             g.attribute_block_buckets, g.cat_buckets, g.use_cat, t.attribute_block_l2)

    @functools.cached_property
    def labelled(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The labelled train and val pairs as graph rows (member, job, label), read once for the
        LLM and attribute block fits: at most MAX_FIT_PAIRS of each split, a seeded subsample."""
        seed = self.cfg.gnn_train.seed
        return {split: subsample(read_pairs(self.data_dir, self.graph, split, positives_only=False),
                                 MAX_FIT_PAIRS, seed if split == "train" else [seed, 1])
                for split in ("train", "val")}

    def counts(self) -> dict[str, int]:
        """Train-step compilations and Layouts over every session so far."""
        return {"compiles": self.totals["compiles"] + self.compiles,
                "layouts": self.totals["layouts"] + len(self.layouts)}

    def validate(self, state: TrainState) -> dict[str, float]:
        e0 = time.perf_counter()
        val = self.evaluator(state.params, self.schedule.fanouts)
        self.eval_seconds += time.perf_counter() - e0
        return val

    # -- the loop's hooks

    def pack(self, state: TrainState) -> Any:
        return checkpoint_tree(state, self.best)

    def unpack(self, tree: Any) -> TrainState:
        state, self.best = from_checkpoint_tree(tree)
        return state

    def meta(self, train_seconds: float) -> dict:
        return {"schedule": dataclasses.asdict(self.schedule), "stage_start": self.stage.start,
                "history": self.history, "train_seconds": train_seconds, "eval_seconds": self.eval_seconds,
                **self.counts()}

    def train_scalars(self, step: int, values: dict[str, float]) -> dict[str, float]:
        values.pop("lr")  # evaluated on the host instead, as the GNN's logs always had it (last bits)
        return {**values, "lr": float(self.lr(step - 1)), **self.counts()}

    def on_compile(self, step: int) -> None:
        layout = self.frozen.value
        log.info(f"train-gnn: step {step}: the train step compiled for layout "
                 f"{self.layouts.index(layout) + 1} ({layout.num_nodes:,} node slots, "
                 f"{layout.num_edges:,} edge slots); {self.compiles} compilation(s) this session")

    def after_eval(self, step: int, state: TrainState, values: dict[str, float]) -> bool:
        if values["auc"] > float(self.best["auc"]):  # a copy: the train step donates its state
            self.best = {"params": jax.tree.map(jnp.copy, state.params),
                         "auc": jnp.asarray(values["auc"], jnp.float32), "step": jnp.asarray(step, jnp.int32)}
            if self.dp is not None:  # beside the params, on the mesh
                self.best.update(self.dp.replicate({k: self.best[k] for k in ("auc", "step")}))
        self.history.append({"step": step, **values, "fanouts": list(self.schedule.fanouts)})
        return self.adapt(step, values["auc"])

    def adapt(self, step: int, val_auc: float) -> bool:
        """LiGNN's schedule: grow the fan-outs when the val AUC plateaued; True if they grew."""
        if not self.cfg.sampler.adaptive or step >= self.steps:
            return False
        grown = self.schedule.observe(val_auc)
        changed = grown.fanouts != self.schedule.fanouts
        if changed:
            log.info(f"train-gnn: val AUC plateaued at step {step}; fan-outs {self.schedule.fanouts} -> "
                     f"{grown.fanouts}")
            self.stage = self.make_stage(grown.fanouts, step)
            self.layouts.append(self.stage.sampler.layout)
            self.batches, self.frozen = self.stage.batches, Static(self.stage.sampler.layout)
        self.schedule = grown
        return changed

    def blocks(self) -> list[tuple[str, int, list[float]]]:
        """The output blocks (name, width, gains to try), in output order."""
        g, t = self.cfg.gnn, self.cfg.gnn_train
        out = []
        if g.use_llm and g.llm_block:
            out.append(("llm", g.llm_block, sorted(set(t.llm_block_gains))))
        if g.attribute_block:
            out.append(("attribute", g.attribute_block, sorted(set(t.attribute_block_gains))))
        return out

    def pick_block_gains(self, state: TrainState) -> tuple[dict[str, float], dict[str, float]]:
        """The gains of the output blocks (`gnn.llm_block`, `gnn.attribute_block`) that give the
        exported parameters the best val AUC, and each combination's val AUC; ({}, {}) without blocks."""
        blocks = self.blocks()
        if not blocks:
            return {}, {}
        t = self.cfg.gnn_train
        params = self.best["params"] if uses_best(t, self.best) else state.params
        if self.dp is not None:  # every process scores every pair with its copy
            params = self.dp.local(params)
        # On every val pair up to MAX_GAIN_PAIRS, not the evaluations' subset: the gains' AUCs differ
        # by little.
        pairs = val_pairs(self.data_dir, self.graph, t, self.cfg.sampler, limit=MAX_GAIN_PAIRS)
        every = Evaluator(self.gnn, self.graph, self.cfg.sampler, t.eval_batch_size, self.features, pairs,
                          self.data_dir)
        e0 = time.perf_counter()
        at_one = set_block_gains(params, {name: 1.0 for name, _, _ in blocks})
        scores = every.block_gains(at_one, self.schedule.fanouts, [w for _, w, _ in blocks],
                                   [g for _, _, g in blocks])
        self.eval_seconds += time.perf_counter() - e0
        best = max(scores, key=scores.get)
        gains = {name: g for (name, _, _), g in zip(blocks, best)}
        key = lambda combo: " ".join(f"{g:g}" for g in combo)  # noqa: E731
        log.info(f"train-gnn: block gains ({', '.join(gains)}) on val: kept {key(best)} (val AUC "
                 f"{scores[best]:.4f})")
        return gains, {key(combo): a for combo, a in scores.items()}

    def run(self, state: TrainState) -> tuple[TrainState, float]:
        state, seconds = super().run(state)
        counts = self.counts()
        if counts["compiles"] > counts["layouts"]:
            log.warning(f"train-gnn: warning: the train step compiled {counts['compiles']} times for "
                        f"{counts['layouts']} batch layouts ({', '.join(self.compiled)})")
        return state, seconds


def data_parallel(cfg: Config) -> bool:
    """Whether `train-gnn` splits its batches over every device of every process."""
    return jax.process_count() > 1 or cfg.gnn_train.data_parallel


def train_gnn(
    cfg: Config,
    data_dir: str | os.PathLike,
    graph_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant: str,
    *,
    store_root: str | os.PathLike | None = None,
    store_version: str | None = None,
) -> dict:
    """Train (or resume, or skip when done) one variant; returns the contents of OUT/result.json."""
    if store_version is not None:  # a name, not a path: refused before anything is read
        check_name("--store-version", store_version)
    initialize_distributed(cfg.mesh)
    lead = jax.process_index() == 0  # writes the run's files; every process trains
    cfg = variant_config(cfg, variant)
    cfg.gnn_train.check()  # again: a config changed in code after it was built
    data_dir, out = os.fspath(data_dir), Path(out_dir)
    graph = open_graph(graph_dir, cfg.graph)
    root = None if store_root is None else os.fspath(store_root)
    features, feat_info = feature_source(graph, cfg.gnn.use_llm, cfg.store, variant, root, store_version)
    fp = run_fingerprint(cfg, variant, data_dir, graph, feat_info)
    done = finished_result(out / RESULT, fp)
    if done is not None:
        log.info(f"train-gnn: {out} already holds a finished {variant} run with these inputs and config; "
                 "skipped")
        return done
    ckpt = Checkpointer(out / CHECKPOINTS, fingerprint=fp, max_to_keep=cfg.gnn_train.keep_checkpoints)
    try:
        meta = ckpt.read_meta() if ckpt.latest_step() is not None else None
        if meta is not None and meta.get("fingerprint") != fp:
            raise StarError(f"{ckpt.directory}: checkpoint was written with a different config or "
                            f"inputs (fingerprint {meta.get('fingerprint')} != {fp}); use a new --out or "
                            "restore them")
        if lead:
            atomic_write_text(out / CONFIG_FILE, to_yaml(cfg))
            atomic_write_json(out / RUN_FILE, {"variant": variant, "fingerprint": fp, "features": feat_info,
                                               "data": os.path.abspath(data_dir), "graph": graph.path,
                                               "graph_digest": graph.digest})
        with MetricsLogger(out) as logger:
            loop = GNNLoop(cfg, variant, data_dir, graph, features, ckpt, logger, meta)
            state, seconds = loop.run(loop.initial_state(resume=meta is not None))
            gains, gain_aucs = loop.pick_block_gains(state)
    finally:
        ckpt.close()
    history, counts = loop.history, loop.counts()
    last = history[-1] if history else {}
    if cfg.gnn_train.keep_best and history:  # the evaluation whose parameters are exported
        last = max(history, key=lambda h: h["auc"])
    result = {
        "variant": variant,
        "fingerprint": fp,
        "steps": cfg.gnn_train.steps,
        "train_seconds": seconds,
        "eval_seconds": loop.eval_seconds,
        "val_auc": max(gain_aucs.values()) if gain_aucs else last.get("auc"),
        "val_auc_cold_start": last.get("auc_cold_start"),
        "val_history": history,
        "llm_block_gain": gains.get("llm"),
        "attribute_block_gain": gains.get("attribute"),
        "block_gain_val_auc": gain_aucs,  # "llm attribute" gains (those present) -> val AUC
        "exported_step": last.get("step", cfg.gnn_train.steps),
        "train_step_compiles": counts["compiles"],
        "layouts": counts["layouts"],
        "fanouts": list(loop.schedule.fanouts),
        "features": feat_info,
    }
    if lead:
        atomic_write_json(out / RESULT, result)
    cold = result["val_auc_cold_start"]
    log.info(f"train-gnn: {variant}: val AUC {result['val_auc']:.4f}"
             + (f" (cold-start {cold:.4f})" if cold is not None else "")
             + f"; {result['train_seconds']:.0f}s, train step compiled {result['train_step_compiles']}x for "
               f"{result['layouts']} layout(s) -> {out}")
    return result


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--graph", required=True, help="graph directory (`star-jax build-graph`)")
    parser.add_argument("--store", default=None, help="EmbeddingStore root with the LLM features "
                        "(default: store.root; needed by the *_llm variants)")
    parser.add_argument("--store-version", default=None, help="feature version (default: the latest)")
    parser.add_argument("--variant", required=True, choices=list(VARIANTS), help="feature ablation variant")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, result.json)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args, flag_or_config

    cfg = config_from_args(args)
    data = flag_or_config("--data", args.data, cfg.data.dir, "data.dir")
    train_gnn(cfg, data, args.graph, args.out, args.variant, store_root=args.store or cfg.store.root,
              store_version=args.store_version)
    return 0
