"""`star-jax train-gnn`: link-prediction training of STAR's heterogeneous attention GNN.

    star-jax train-gnn --data DATA_DIR --graph GRAPH_DIR [--store ROOT --store-version V] \
        --variant NAME --out OUT [--config --set]

The task is LinkSAGE's (arXiv 2402.13430), as STAR inherits it: predict the train
period's member -> job applies (`sampler.target_relation`, the `split == 'train'`, `label == 1`
pairs) from sampled neighbourhoods, with the pair's own edge and its reverse removed from them
(docs/architecture.md decision 7; star_jax/graph/sampler.py). Each step scores B pairs against the B
in-batch jobs and K shared random jobs with sigmoid BCE (star_jax/gnn/model.py), under AdamW with
global-norm clipping, a linear warm-up and a cosine decay.

Two additions to the paper's recipe, both in the config:
  - `gnn_train.cold_start_rate` (default 0.5; not in the paper): cold-start simulation
    (`ColdStartSampler`, after DropoutNet). Held-out pairs are mostly with nodes that have no
    training apply, while every training seed has some (below).
  - `gnn_train.labelled_negatives` (default off): also train on the train split's labelled
    non-applies, as LinkSAGE's (member, job, label) tuples (arXiv 2402.13430).

Why `cold_start_rate`: on the tiny data 72% of the test pairs' jobs and 46% of their members have
no training apply. Trained on warm neighbourhoods only, the encoder leans on apply edges the
held-out nodes lack (test AUC ~0.63-0.65 with or without LLM features, below the features' own
cosine); stripping half the seeds of their applies lifts gnn_id_cat to ~0.70. The LLM features'
effect on the demo, per data seed, is in docs/seeds.md; the measurements that led to the LLM
feature standardisation and skip are in docs/architecture.md (decision 6).

Variants (the paper's ablation, `VARIANTS` is the one place that maps them):
    gnn_id_cat       hashed ID embeddings + categorical features
    gnn_id_cat_llm   the same plus the stored LLM embeddings of members and jobs (STAR)
    gnn_id_llm       ID embeddings + LLM embeddings, categorical features removed

Static shapes: every batch of a fan-out stage has the same `Layout`, so the train step compiles
once per stage; `CompileCounter` counts XLA compilations from JAX's monitoring events and the run
logs and records the count. With `sampler.adaptive` (LiGNN's adaptive neighbour sampling,
arXiv 2402.11139) the fan-outs start at `sampler.start_fanouts` and grow whenever the validation
AUC plateaus, one new Layout (and one compilation) per growth.

Validation: every `eval_every` steps and at the end, `eval_pairs` val pairs (a fixed subset) are
embedded through the sampler without negatives, scored by the dot product of the two 200-d
embeddings (exactly how exported embeddings are scored) and summarised by `eval.metrics.auc`,
overall and for cold-start members (no training applies).

OUT holds:
    config.yaml, run.json   the resolved config and the run's inputs (read by `gnn-embed`)
    checkpoints/            orbax: params, optimizer state, step, RNG, the sampler's grain
                            iterator and the fan-out schedule, so a killed run resumes exactly
    metrics.jsonl, tb/      train loss terms every `log_every` steps, val AUC at each evaluation
    result.json             written last: val AUC of the exported parameters (with
                            gnn_train.keep_best, the best evaluation: `exported_step`), train
                            seconds, compilations, final fan-outs

A rerun whose result.json carries the same fingerprint (config, inputs, features) is skipped;
resuming a checkpoint written under another fingerprint is refused in one line.

Deviation: the GNN trains on one device. Its batch is one graph with flat edge indices, so data
parallelism would need per-device sub-batches; at the tiny and small scales one device is enough.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, GNNTrainConfig, StoreConfig, fingerprint, load_config, to_yaml
from star_jax.data.splits import train_applies
from star_jax.errors import StarError
from star_jax.eval.metrics import activity_bucket, auc, auc_by_group
from star_jax.fileio import atomic_write_json, atomic_write_text, content_digest, finished_result, read_json
from star_jax.gnn.export import export_sampler_config, make_embed_fn
from star_jax.gnn.model import (
    GNN,
    LLM_TYPES,
    TrainState,
    build_gnn,
    init_train_state,
    make_optimizer,
    make_train_step,
)
from star_jax.graph.batch import HeteroBatch
from star_jax.graph.hetero import HeteroGraph, reverse_name
from star_jax.graph.sampler import (
    FanoutSchedule,
    FeatureSource,
    NeighborSampler,
    PairSeeds,
    batch_rng,
    eval_seeds,
    make_dataset,
    node_seeds,
    read_pairs,
    train_seeds,
)
from star_jax.metrics import MetricsLogger, progress

VARIANTS: dict[str, dict[str, bool]] = {
    "gnn_id_cat": {"use_id": True, "use_cat": True, "use_llm": False},
    "gnn_id_cat_llm": {"use_id": True, "use_cat": True, "use_llm": True},
    "gnn_id_llm": {"use_id": True, "use_cat": False, "use_llm": True},
}
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
# The event JAX records once per XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Fields that change neither the trained parameters nor the batches: free to change on resume.
_NOT_FINGERPRINTED = {
    "gnn_train": ("log_every", "checkpoint_every", "keep_checkpoints"),
    "sampler": ("workers", "prefetch"),
}


def variant_config(cfg: Config, variant: str) -> Config:
    """`cfg` with `gnn.use_id/use_cat/use_llm` set by `variant` (`VARIANTS`)."""
    if variant not in VARIANTS:
        raise StarError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return dataclasses.replace(cfg, gnn=dataclasses.replace(cfg.gnn, **VARIANTS[variant]))


def check_train_config(t: GNNTrainConfig) -> None:
    for name in ("steps", "checkpoint_every", "log_every", "eval_batch_size", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise StarError(f"gnn_train.{name}: must be >= 1, got {getattr(t, name)}")
    for name in ("eval_every", "eval_pairs", "warmup_steps"):
        if getattr(t, name) < 0:
            raise StarError(f"gnn_train.{name}: must be >= 0, got {getattr(t, name)}")
    if not 0.0 <= t.cold_start_rate <= 1.0:
        raise StarError(f"gnn_train.cold_start_rate: expected a value in [0, 1], got {t.cold_start_rate}")
    if not 0.0 <= t.final_lr_ratio <= 1.0:
        raise StarError(f"gnn_train.final_lr_ratio: expected a value in [0, 1], got {t.final_lr_ratio}")


# -- inputs --------------------------------------------------------------------------------------


def open_features(graph: HeteroGraph, root: str | os.PathLike, version: str | None,
                  cfg: StoreConfig) -> tuple[FeatureSource, dict]:
    """The stored LLM embeddings for the graph's member and job nodes, and what identifies them.

    Every member and job id of the graph must be stored: a missing one is a one-line error here,
    not a failure in the middle of training.
    """
    from star_jax.store import EmbeddingStore

    store = EmbeddingStore.open(root, version, kvstore=cfg.kvstore, cache_bytes=cfg.cache_mb << 20)
    where = f"store {store.root} version {store.version}"
    for t in LLM_TYPES:
        if t not in store.node_types:
            raise StarError(f"{where}: no {t} embeddings (stored: {', '.join(store.node_types) or 'none'})")
        stored = store.ids(t)
        ids = np.asarray(graph.ids[t])
        missing = ~np.isin(ids, stored)
        if missing.any():
            raise StarError(f"{where}: {int(missing.sum())} {t} ids of the graph are not stored "
                            f"(e.g. {int(ids[missing][0])}); embed them into this version first")
    manifest = store.manifest
    standardized = StandardizedFeatures.fit(store, {t: np.asarray(graph.ids[t]) for t in LLM_TYPES})
    info = {
        "root": store.root,
        "version": store.version,
        "dim": store.dim,
        "model": manifest.get("model"),
        "adapter": manifest.get("adapter"),
        "generation": manifest.get("generation"),
        "digests": {t: manifest["node_types"][t]["digest"] for t in LLM_TYPES},
        "transform": "standardize-pooled",  # StandardizedFeatures: part of what the GNN was trained on
    }
    return standardized, info


class StandardizedFeatures(NamedTuple):
    """The stored embeddings with each dimension centred and scaled by its spread over the nodes.

    A language model's last-token embeddings are anisotropic: the tiny demo base's member vectors
    have a mean pairwise cosine of 0.995, so what tells two nodes apart is a 1% deviation from a
    shared direction, which the per-node LayerNorm in the GNN's input keeps. Removing the shared
    mean and scaling each dimension (the "all-but-the-top" / whitening remedy, diagonal only) lets
    the input projection see the deviations at unit scale. The statistics are a function of the
    store version; gnn-embed from another version (a migrated one) keeps the training version's.
    """

    store: FeatureSource
    mean: dict[str, np.ndarray]  # [D] per node type
    scale: dict[str, np.ndarray]  # [D] per node type: 1 / std

    # Enough rows to pin the mean and std of each dimension; at the paper's scale a spread sample.
    MAX_ROWS = 65_536

    @classmethod
    def fit(cls, store: FeatureSource, ids: dict[str, np.ndarray]) -> StandardizedFeatures:
        # One set of statistics for members and jobs together: the towers share one space, and a
        # per-type shift would bend the member-job inner products the GNN's LLM skip relies on.
        rows = []
        for t, all_ids in ids.items():
            spread = np.linspace(0, len(all_ids) - 1, min(len(all_ids), cls.MAX_ROWS)).astype(np.int64)
            rows.append(np.asarray(store.lookup(t, np.asarray(all_ids[spread], np.int64)), np.float64))
        x = np.concatenate(rows)
        mean = x.mean(axis=0).astype(np.float32)
        scale = (1.0 / np.maximum(x.std(axis=0), 1e-6)).astype(np.float32)
        return cls(store, dict.fromkeys(ids, mean), dict.fromkeys(ids, scale))

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        x = np.asarray(self.store.lookup(node_type, ids), np.float32)
        return (x - self.mean[node_type]) * self.scale[node_type]


def feature_source(graph: HeteroGraph, cfg: Config, variant: str, root: str | None,
                   version: str | None) -> tuple[FeatureSource | None, dict | None]:
    """The feature store when the variant reads LLM features (`--store` is then required)."""
    if not cfg.gnn.use_llm:
        return None, None
    if root is None:
        raise StarError(f"--store: variant {variant} uses LLM features; "
                        "pass --store ROOT [--store-version V]")
    return open_features(graph, root, version, cfg.store)


def run_fingerprint(cfg: Config, variant: str, data_dir: str | os.PathLike, graph: HeteroGraph,
                    features: dict | None) -> str:
    """Config sections that shape training, the input data and the identity of the features."""
    from star_jax.data.schema import read_schema

    train = {k: v for k, v in dataclasses.asdict(cfg.gnn_train).items()
             if k not in _NOT_FINGERPRINTED["gnn_train"]}
    sampler = {k: v for k, v in dataclasses.asdict(cfg.sampler).items()
               if k not in _NOT_FINGERPRINTED["sampler"]}
    labels = content_digest([os.path.join(os.fspath(data_dir), read_schema(data_dir).labels)])
    feats = None if features is None else {k: features.get(k) for k in ("version", "dim", "generation",
                                                                        "digests", "transform")}
    return fingerprint(cfg.gnn, train, sampler, {"variant": variant, "graph": graph.digest, "labels": labels,
                                                   "features": feats})


# -- compilations --------------------------------------------------------------------------------


class CompileCounter:
    """Counts XLA compilations that happen inside `with counter.track():` on the calling thread.

    It listens to the event JAX records for every backend compilation, so a call served from the
    jit cache counts 0 and a retrace (a new shape, dtype or static argument) counts 1, as does a
    read from a persistent compilation cache. Other threads (the sampler's prefetch) never touch
    JAX, and their events would not count anyway.
    """

    def __init__(self):
        self.count = 0
        self.names: list[str] = []
        self._thread: int | None = None
        self._callback = self._listen  # one bound method, to unregister the very object registered
        jax.monitoring.register_event_duration_secs_listener(self._callback)

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT and self._thread == threading.get_ident():
            self.count += 1
            self.names.append(str(kwargs.get("fun_name", "?")))

    def track(self) -> CompileCounter:
        return self

    def __enter__(self) -> CompileCounter:
        self._thread = threading.get_ident()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._thread = None

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._callback)


# -- evaluation ----------------------------------------------------------------------------------


def val_pairs(data_dir: str | os.PathLike, graph: HeteroGraph, cfg: Config) -> PairSeeds:
    """The val pairs scored at each evaluation: `eval_pairs` of them (a fixed random subset)."""
    t = cfg.gnn_train
    pairs = eval_seeds(data_dir, graph, cfg.sampler, "val")
    n = pairs.member_rows.shape[0]
    keep = np.arange(n)
    if t.eval_pairs and n > t.eval_pairs:
        keep = np.sort(np.random.default_rng([t.seed, 2]).choice(n, t.eval_pairs, replace=False))
    return PairSeeds(pairs.member_rows[keep], pairs.job_rows[keep], pairs.labels[keep], t.eval_batch_size,
                     shuffle=False)


class Evaluator:
    """Val AUC of the current parameters: pairs embedded through the sampler, scored by dot product."""

    def __init__(self, gnn: GNN, graph: HeteroGraph, cfg: Config, features: FeatureSource | None,
                 pairs: PairSeeds, data_dir: str | os.PathLike):
        self.gnn, self.graph, self.cfg, self.features, self.pairs = gnn, graph, cfg, features, pairs
        self.embed = make_embed_fn(gnn)
        self.sampler_cfg = export_sampler_config(cfg.sampler, cfg.gnn_train.eval_batch_size)
        # The report's definition of a cold-start member (star_jax.data.splits), not the graph's degree.
        self.groups = activity_bucket(train_applies(data_dir, graph.ids["member"][pairs.member_rows]))
        self._samplers: dict[tuple[int, ...], NeighborSampler] = {}

    def __call__(self, params: Any, hop_fanouts: tuple[int, ...]) -> dict[str, float]:
        if hop_fanouts not in self._samplers:
            self._samplers[hop_fanouts] = NeighborSampler(self.graph, self.sampler_cfg,
                                                          features=self.features, hop_fanouts=hop_fanouts)
        sampler = self._samplers[hop_fanouts]
        scores = []
        for batch in make_dataset(sampler, self.pairs, workers=0):
            member, job = self.embed(params, batch, sampler.layout)
            s = np.einsum("bd,bd->b", np.asarray(member), np.asarray(job))
            scores.append(s[batch.pair_mask])
        scores = np.concatenate(scores)
        out = {"auc": auc(self.pairs.labels, scores)}
        cold = auc_by_group(self.pairs.labels, scores, self.groups).get("cold_start")
        if cold is not None:
            out["auc_cold_start"] = cold
        return out


# -- training ------------------------------------------------------------------------------------


def training_pairs(data_dir: str | os.PathLike, graph: HeteroGraph, cfg: Config) -> PairSeeds:
    """The train split's applies, plus its labelled non-applies with `gnn_train.labelled_negatives`.

    LinkSAGE trains on labelled (member, job, label) tuples (arXiv 2402.13430): a shown-but-not-applied
    job is a negative of its member on the diagonal of the in-batch decoder, next to the in-batch
    and random negatives. These are the hard negatives: mostly the member's own occupation and city.
    """
    t = cfg.gnn_train
    if not t.labelled_negatives:
        return train_seeds(data_dir, graph, cfg.sampler, num_batches=t.steps)
    m, j, y = read_pairs(data_dir, graph, "train", positives_only=False)
    if not (y > 0).any():
        raise StarError(f"{graph.schema.labels}: no pairs with split == 'train' and label == 1")
    return PairSeeds(m, j, y, cfg.sampler.batch_size, shuffle=True, seed=cfg.sampler.seed,
                     num_batches=t.steps)



class _From:
    """Seed batches `start, start + 1, ...` of `seeds`: a fan-out stage's data from its first step.

    Batch indices stay global, so batch i is the same whatever stage draws it.
    """

    def __init__(self, seeds: PairSeeds, start: int):
        self.seeds, self.start = seeds, start

    def __len__(self) -> int:
        return len(self.seeds) - self.start

    def __getitem__(self, i: int):
        return self.seeds[self.start + int(i)]


class ColdStartSampler:
    """A `NeighborSampler` whose seeds lose their own interaction edges with probability `rate`.

    Cold-start simulation (DropoutNet, Volkovs et al., NeurIPS 2017): at evaluation time most
    jobs and many members have no training-period apply (on the tiny synthetic data, 72% of the
    test pairs' jobs and 46% of their members), while every training seed has some. Trained only on
    warm neighbourhoods, the encoder leans on the apply edges and embeds cold nodes poorly. Here
    each member and job seed of a batch turns cold with probability `rate`: the hop-1 edges of the
    target relation (and its reverse) into it are dropped, exactly the edges a cold node lacks, while
    its other neighbours, and their own applies, stay, and its ID embedding is withheld (`known`
    false, as for a real cold node: star_jax.gnn.model). Dropped edges become padding edges (masked,
    pointing at the padding nodes), as the sampler writes a missing draw. The extra draws come from
    the batch's own random stream, so batches stay a pure function of their index.
    """

    def __init__(self, sampler: NeighborSampler, rate: float):
        self.sampler, self.rate = sampler, float(rate)
        self.cfg, self.layout = sampler.cfg, sampler.layout
        L, target = sampler.layout, sampler.cfg.target_relation
        self._cuts = [  # (edge slice, receiver type, receiver block start, sender pad, receiver pad)
            (L.edge_slice(name), dst, L.node_slice(dst).start, L.pad_node(src), L.pad_node(dst))
            for name, src, dst in L.relations if name in (target, reverse_name(target))
        ]

    def sample(self, seeds: Any, rng: np.random.Generator) -> HeteroBatch:
        batch = self.sampler.sample(seeds, rng)
        L = self.layout
        cold = {"member": rng.random(L.num_pairs) < self.rate,
                "job": rng.random(L.num_pairs + L.num_negatives) < self.rate}
        g = batch.graph
        senders, receivers, mask = g.senders.copy(), g.receivers.copy(), g.edges["mask"].copy()
        for es, dst, start, pad_sender, pad_receiver in self._cuts:
            slot = receivers[es] - start
            n = cold[dst].shape[0]
            drop = (slot < n) & cold[dst][np.minimum(slot, n - 1)]
            idx = es.start + np.flatnonzero(drop)
            senders[idx], receivers[idx], mask[idx] = pad_sender, pad_receiver, False
        known = g.nodes["known"].copy()
        for t in ("member", "job"):  # a simulated cold seed loses its ID embedding too
            known[L.node_slice(t).start + np.flatnonzero(cold[t])] = False
        graph = g._replace(senders=senders, receivers=receivers, edges={**g.edges, "mask": mask},
                           nodes={**g.nodes, "known": known})
        return batch._replace(graph=graph)


class Stage(NamedTuple):
    """One fan-out stage: its sampler (hence Layout) and the grain iterator of its batches."""

    sampler: NeighborSampler
    batches: Iterator  # grain DatasetIterator: get_state/set_state, checkpointed with the model
    start: int  # the step count when the stage began


def lr_schedule(t: GNNTrainConfig) -> optax.Schedule:
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, t.lr, warmup, max(t.steps, warmup + 1),
                                              end_value=t.lr * t.final_lr_ratio)


def init_key(seed: int) -> jax.Array:
    # XLA's RngBitGenerator instead of threefry: compiling ~100 threefry initialisers is most of
    # init's compile time on CPU, and the values only have to be random, not split-safe.
    return jax.random.key(seed, impl="unsafe_rbg")


def abstract_state(gnn: GNN, optimizer: optax.GradientTransformation, batch: Any, layout: Any,
                   seed: int) -> dict:
    """Shapes, dtypes and placement (`state_sharding`) of the checkpointed state, traced without
    compiling anything."""
    shapes = jax.eval_shape(
        lambda: initial_state(gnn.init(init_key(seed), batch, layout), optimizer, seed)
    )
    sharding = state_sharding()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def initial_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> dict:
    """What a run checkpoints: the train state, the dropout key, and the parameters of the best
    evaluation so far (`gnn_train.keep_best`) with its val AUC (-1 before the first)."""
    return {"train": init_train_state(params, optimizer), "rng": jax.random.key_data(jax.random.key(seed)),
            "best": {"params": jax.tree.map(jnp.array, params), "auc": jnp.asarray(-1.0, jnp.float32),
                     "step": jnp.zeros((), jnp.int32)}}


def state_sharding() -> jax.sharding.Sharding:
    """Where the training state lives: the first local device, for fresh and restored runs alike,
    so the train step sees the same placement (and compiles once) either way."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


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
    cfg = variant_config(cfg, variant)
    check_train_config(cfg.gnn_train)
    data_dir, out = os.fspath(data_dir), Path(out_dir)
    graph = HeteroGraph.load(graph_dir)
    root = None if store_root is None else os.fspath(store_root)
    features, feat_info = feature_source(graph, cfg, variant, root, store_version)
    fp = run_fingerprint(cfg, variant, data_dir, graph, feat_info)
    done = finished_result(Path(out) / RESULT, fp)
    if done is not None:
        print(f"train-gnn: {out} already holds a finished {variant} run with these inputs and config; "
              "skipped")
        return done
    ckpt = Checkpointer(out / CHECKPOINTS, fingerprint=fp, max_to_keep=cfg.gnn_train.keep_checkpoints)
    try:
        meta = ckpt.read_meta() if ckpt.latest_step() is not None else None
        if meta is not None and meta.get("fingerprint") != fp:
            raise StarError(f"{ckpt.directory}: checkpoint was written with a different config or "
                            f"inputs (fingerprint {meta.get('fingerprint')} != {fp}); use a new --out or "
                            "restore them")
        atomic_write_text(out / CONFIG_FILE, to_yaml(cfg))
        atomic_write_json(out / RUN_FILE, {"variant": variant, "fingerprint": fp, "features": feat_info,
                                           "data": os.path.abspath(data_dir), "graph": graph.path,
                                           "graph_digest": graph.digest})
        session = _Session(cfg, variant, data_dir, graph, features, ckpt, meta)
        with MetricsLogger(out) as logger:
            session.run(logger)
    finally:
        ckpt.close()
    last = session.history[-1] if session.history else {}
    if cfg.gnn_train.keep_best and session.history:  # the evaluation whose parameters are exported
        last = max(session.history, key=lambda h: h["auc"])
    result = {
        "variant": variant,
        "fingerprint": fp,
        "steps": cfg.gnn_train.steps,
        "train_seconds": session.seconds["train_seconds"],
        "eval_seconds": session.seconds["eval_seconds"],
        "val_auc": last.get("auc"),
        "val_auc_cold_start": last.get("auc_cold_start"),
        "val_history": session.history,
        "exported_step": last.get("step", cfg.gnn_train.steps),
        "train_step_compiles": session.counts()["compiles"],
        "layouts": session.counts()["layouts"],
        "fanouts": list(session.schedule.fanouts),
        "features": feat_info,
    }
    atomic_write_json(out / RESULT, result)
    cold = result["val_auc_cold_start"]
    print(f"train-gnn: {variant}: val AUC {result['val_auc']:.4f}"
          + (f" (cold-start {cold:.4f})" if cold is not None else "")
          + f"; {result['train_seconds']:.0f}s, train step compiled {result['train_step_compiles']}x for "
            f"{result['layouts']} layout(s) -> {out}")
    return result


class _Session:
    """One process's share of a run: set up fresh or from the latest checkpoint, then `run`."""

    def __init__(self, cfg: Config, variant: str, data_dir: str, graph: HeteroGraph,
                 features: FeatureSource | None, ckpt: Checkpointer, meta: dict | None):
        t = cfg.gnn_train
        self.cfg, self.variant, self.graph, self.features, self.ckpt = cfg, variant, graph, features, ckpt
        self.gnn = build_gnn(cfg.gnn)
        self.lr = lr_schedule(t)
        optimizer = make_optimizer(t, self.lr)
        self.seeds = training_pairs(data_dir, graph, cfg)
        before = meta or {}
        if meta is None:
            self.schedule, self.history, self.start = FanoutSchedule.from_config(cfg.sampler), [], 0
            self.stage = self._stage(self.schedule.fanouts, 0)
        else:
            self.schedule, self.history = FanoutSchedule(**meta["schedule"]), meta["history"]
            self.start = int(meta["step"])
            self.stage = self._stage(self.schedule.fanouts, int(meta["stage_start"]))
        layout = self.stage.sampler.layout
        first = self.stage.sampler.sample(self.seeds[self.stage.start],
                                          batch_rng(cfg.sampler.seed, self.stage.start))
        if meta is None:
            params = self.gnn.init(init_key(t.seed), first, layout)
            self.state = jax.device_put(initial_state(params, optimizer, t.seed), state_sharding())
        else:
            target = abstract_state(self.gnn, optimizer, first, layout, t.seed)
            self.state, _ = ckpt.restore(target, data_iter=self.stage.batches)
            print(f"train-gnn: resumed {variant} from the step-{self.start} checkpoint in {ckpt.directory}")
        self.train_step = make_train_step(self.gnn, optimizer)
        self.evaluate = Evaluator(self.gnn, graph, cfg, features, val_pairs(data_dir, graph, cfg), data_dir)
        self.layouts = [layout]  # this session's
        self.totals = {k: int(before.get(k, 0)) for k in ("compiles", "layouts")}
        self.seconds = {k: float(before.get(k, 0.0)) for k in ("train_seconds", "eval_seconds")}
        self.compiles = 0

    def _stage(self, fanouts: tuple[int, ...], start: int) -> Stage:
        sampler = NeighborSampler(self.graph, self.cfg.sampler, features=self.features, hop_fanouts=fanouts)
        rate = self.cfg.gnn_train.cold_start_rate
        draw = ColdStartSampler(sampler, rate) if rate > 0 else sampler
        return Stage(sampler, iter(make_dataset(draw, _From(self.seeds, start))), start)

    def counts(self) -> dict[str, int]:
        """Train-step compilations and Layouts over every session so far."""
        return {"compiles": self.totals["compiles"] + self.compiles,
                "layouts": self.totals["layouts"] + len(self.layouts)}

    def run(self, logger: MetricsLogger) -> None:
        t = self.cfg.gnn_train
        rng = jax.random.wrap_key_data(self.state["rng"])
        counter = CompileCounter()
        t0, seconds_before = time.perf_counter(), self.seconds["train_seconds"]
        postfix: dict[str, str] = {}
        try:
            with progress(total=t.steps, initial=self.start, desc=f"train-gnn {self.variant}",
                          unit="step") as bar:
                for step in range(self.start + 1, t.steps + 1):
                    batch, layout = next(self.stage.batches), self.stage.sampler.layout
                    with counter.track():
                        self.state["train"], metrics = self.train_step(self.state["train"], batch, layout,
                                                                       rng)
                    if counter.count > self.compiles:
                        self.compiles = counter.count
                        print(f"train-gnn: step {step}: the train step compiled for layout "
                              f"{self.layouts.index(layout) + 1} ({layout.num_nodes:,} node slots, "
                              f"{layout.num_edges:,} edge slots); {self.compiles} compilation(s) this "
                              "session")
                    if step % t.log_every == 0 or step == t.steps:
                        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        logger.log(step, "train", **values, lr=float(self.lr(step - 1)), **self.counts())
                        postfix["loss"] = f"{values['loss']:.4f}"
                        bar.set_postfix(postfix, refresh=False)
                    new_stage = False
                    if step == t.steps or (t.eval_every and step % t.eval_every == 0):
                        val = self._evaluate(step, logger)
                        postfix["val_auc"] = f"{val['auc']:.4f}"
                        bar.set_postfix(postfix, refresh=False)
                        new_stage = self._adapt(step, val["auc"])
                    self.seconds["train_seconds"] = seconds_before + time.perf_counter() - t0
                    if step % t.checkpoint_every == 0 or step == t.steps or new_stage:
                        self.ckpt.save(step, self.state, data_iter=self.stage.batches, meta={
                            "schedule": dataclasses.asdict(self.schedule), "stage_start": self.stage.start,
                            "history": self.history, **self.seconds, **self.counts()})
                    bar.update()
            self.ckpt.wait()
        finally:
            counter.close()
        if self.counts()["compiles"] > self.counts()["layouts"]:
            print(f"train-gnn: warning: the train step compiled {self.counts()['compiles']} times for "
                  f"{self.counts()['layouts']} batch layouts ({', '.join(counter.names)})")

    def _evaluate(self, step: int, logger: MetricsLogger) -> dict[str, float]:
        e0 = time.perf_counter()
        val = self.evaluate(self.state["train"].params, self.schedule.fanouts)
        self.seconds["eval_seconds"] += time.perf_counter() - e0
        if val["auc"] > float(self.state["best"]["auc"]):  # a copy: the train step donates its state
            self.state["best"] = {"params": jax.tree.map(jnp.copy, self.state["train"].params),
                                  "auc": jnp.asarray(val["auc"], jnp.float32),
                                  "step": jnp.asarray(step, jnp.int32)}
        self.history.append({"step": step, **val, "fanouts": list(self.schedule.fanouts)})
        logger.log(step, "val", **val)
        return val

    def _adapt(self, step: int, val_auc: float) -> bool:
        """LiGNN's schedule: grow the fan-outs when the val AUC plateaued; True if they grew."""
        if not self.cfg.sampler.adaptive or step >= self.cfg.gnn_train.steps:
            return False
        grown = self.schedule.observe(val_auc)
        changed = grown.fanouts != self.schedule.fanouts
        if changed:
            print(f"train-gnn: val AUC plateaued at step {step}; fan-outs {self.schedule.fanouts} -> "
                  f"{grown.fanouts}")
            self.stage = self._stage(grown.fanouts, step)
            self.layouts.append(self.stage.sampler.layout)
        self.schedule = grown
        return changed


# -- loading a trained run (gnn-embed) -------------------------------------------------------------


class TrainedRun(NamedTuple):
    cfg: Config  # the run's resolved config (variant applied)
    variant: str
    fingerprint: str
    features: dict | None  # open_features' info of the training features
    fanouts: tuple[int, ...]  # the fan-outs of the last stage trained
    step: int  # the checkpoint step the params come from
    finished: bool  # result.json exists
    gnn: GNN
    params: Any


def load_run(out_dir: str | os.PathLike, graph: HeteroGraph, features: FeatureSource | None) -> TrainedRun:
    """The GNN and parameters of the latest checkpoint of the `train-gnn` run in `out_dir`."""
    out = Path(out_dir)
    for name in (CONFIG_FILE, RUN_FILE):
        if not (out / name).is_file():
            raise StarError(f"--ckpt {out}: no {name}; expected the --out directory of `star-jax train-gnn`")
    cfg = load_config(out / CONFIG_FILE)
    run = read_json(out / RUN_FILE)
    ckpt = Checkpointer(out / CHECKPOINTS, fingerprint=run["fingerprint"])
    try:
        if ckpt.latest_step() is None:
            raise StarError(f"--ckpt {out}: no checkpoint under {CHECKPOINTS}/ (has training started?)")
        meta = ckpt.read_meta()
        fanouts = tuple(FanoutSchedule(**meta["schedule"]).fanouts)
        gnn = build_gnn(cfg.gnn)
        sampler = NeighborSampler(graph, cfg.sampler, features=features, hop_fanouts=fanouts)
        batch = sampler.sample(node_seeds(graph, "member", cfg.sampler)[0], batch_rng(0, 0))  # shapes only
        optimizer = make_optimizer(cfg.gnn_train, lr_schedule(cfg.gnn_train))
        state, meta = ckpt.restore(abstract_state(gnn, optimizer, batch, sampler.layout, cfg.gnn_train.seed))
    finally:
        ckpt.close()
    train: TrainState = state["train"]
    # Early stopping (gnn_train.keep_best): the parameters of the evaluation with the best val AUC.
    best = state["best"]
    use_best = cfg.gnn_train.keep_best and float(best["auc"]) >= 0
    params, step = (best["params"], int(best["step"])) if use_best else (train.params, int(meta["step"]))
    return TrainedRun(cfg, run["variant"], run["fingerprint"], run.get("features"), fanouts,
                      step, (out / RESULT).is_file(), gnn, params)


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.cli import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--graph", required=True, help="graph directory (`star-jax build-graph`)")
    parser.add_argument("--store", default=None, help="EmbeddingStore root with the LLM features "
                        "(default: store.root; needed by the *_llm variants)")
    parser.add_argument("--store-version", default=None, help="feature version (default: the latest)")
    parser.add_argument("--variant", required=True, choices=list(VARIANTS), help="feature ablation variant")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, result.json)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.cli import config_from_args, flag_or_config

    cfg = config_from_args(args)
    data = flag_or_config("--data", args.data, cfg.data.dir, "data.dir")
    train_gnn(cfg, data, args.graph, args.out, args.variant, store_root=args.store or cfg.store.root,
              store_version=args.store_version)
    return 0
