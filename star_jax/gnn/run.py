"""A `train-gnn` run: its files, its fingerprint, the state its checkpoints hold, and loading the
trained GNN back (`gnn-embed`)."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, GNNTrainConfig, fingerprint, load_config
from star_jax.data.schema import read_schema
from star_jax.errors import StarError
from star_jax.fileio import content_digest, read_json
from star_jax.gnn.model import (
    GAIN_PARAMS,
    GNN,
    build_gnn,
    decay_mask,
    set_attribute_tables,
    set_block_gains,
    set_llm_block_map,
)
from star_jax.graph.batch import HeteroBatch, Layout
from star_jax.graph.hetero import HeteroGraph
from star_jax.graph.sampler import FanoutSchedule, FeatureSource, NeighborSampler, batch_rng
from star_jax.graph.seeds import node_seeds
from star_jax.parallel import replicate, replicated
from star_jax.train_loop import TrainState, first_device, init_state, optimizer_from_config

CONFIG_FILE = "config.yaml"  # the resolved config, variant applied
RUN_FILE = "run.json"  # variant, fingerprint, features and inputs
RESULT = "result.json"  # written last
CHECKPOINTS = "checkpoints"
# Fields that change neither the trained parameters nor the batches: free to change on resume.
_NOT_FINGERPRINTED = {
    "gnn_train": ("log_every", "checkpoint_every", "keep_checkpoints", "data_parallel"),
    "sampler": ("workers", "prefetch"),
}


def run_fingerprint(cfg: Config, variant: str, data_dir: str | os.PathLike, graph: HeteroGraph,
                    features: dict | None) -> str:
    """Config sections that shape training, the input data and the identity of the features."""
    train = {k: v for k, v in dataclasses.asdict(cfg.gnn_train).items()
             if k not in _NOT_FINGERPRINTED["gnn_train"]}
    sampler = {k: v for k, v in dataclasses.asdict(cfg.sampler).items()
               if k not in _NOT_FINGERPRINTED["sampler"]}
    labels = content_digest([os.path.join(os.fspath(data_dir), read_schema(data_dir).labels)])
    feats = None if features is None else {k: features.get(k) for k in ("version", "dim", "generation",
                                                                        "digests", "transform")}
    return fingerprint(cfg.gnn, train, sampler, {"variant": variant, "graph": graph.digest, "labels": labels,
                                                   "features": feats})


# -- the checkpointed state ----------------------------------------------------------------------


def make_gnn_optimizer(t: GNNTrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    # The warm-up starts at 0; hashed embedding rows a batch does not touch must not shrink (decay_mask).
    return optimizer_from_config(t, warmup_from=0.0, decay_mask=decay_mask)


def init_key(seed: int) -> jax.Array:
    # XLA's RngBitGenerator instead of threefry: compiling ~100 threefry initialisers is most of
    # init's compile time on CPU, and the values only have to be random, not split-safe.
    return jax.random.key(seed, impl="unsafe_rbg")


def initial_best(params: Any) -> dict:
    """The best evaluation so far (`gnn_train.keep_best`): its params, val AUC (-1: none yet), step."""
    return {"params": jax.tree.map(jnp.array, params), "auc": jnp.asarray(-1.0, jnp.float32),
            "step": jnp.zeros((), jnp.int32)}


def checkpoint_tree(state: TrainState, best: dict) -> dict:
    """What a run's checkpoints hold: {"train": {step, params, opt_state}, "rng", "best"}."""
    # An OrderedDict keeps the fields in the order the checkpoints' metadata has always listed them.
    train = OrderedDict(step=state.step, params=state.params, opt_state=state.opt_state)
    return {"train": train, "rng": state.rng, "best": best}


def from_checkpoint_tree(tree: dict) -> tuple[TrainState, dict]:
    train = tree["train"]
    return TrainState(train["step"], train["params"], train["opt_state"], tree["rng"]), tree["best"]


def fresh_state(gnn: GNN, optimizer: optax.GradientTransformation, batch: HeteroBatch, layout: Layout,
                seed: int, mesh: Mesh | None = None,
                llm_block_map: tuple[np.ndarray, np.ndarray] | None = None,
                attribute_tables: dict[str, np.ndarray] | None = None) -> tuple[TrainState, dict]:
    """Step 0 and the best evaluation, on `first_device()` (fresh and restored runs alike, so the
    train step sees one placement and compiles once), or replicated on `mesh` (data-parallel).
    `llm_block_map`, `attribute_tables`: the LLM and attribute blocks' fixed maps
    (`set_llm_block_map`, `set_attribute_tables`) instead of their init."""
    params = gnn.init(init_key(seed), batch, layout)
    if llm_block_map is not None:
        params = set_llm_block_map(params, *llm_block_map)
    if attribute_tables is not None:
        params = set_attribute_tables(params, attribute_tables)
    if mesh is not None:  # the same init on every process
        best = replicate(initial_best(params), mesh)
        return init_state(replicate(params, mesh), optimizer, seed, mesh), best
    best = jax.device_put(initial_best(params), first_device())
    return init_state(params, optimizer, seed), best


def abstract_state(gnn: GNN, optimizer: optax.GradientTransformation, batch: HeteroBatch, layout: Layout,
                   seed: int, mesh: Mesh | None = None) -> tuple[TrainState, dict]:
    """`fresh_state`'s shapes, dtypes and placement, traced without compiling anything."""

    def shapes() -> tuple[TrainState, dict]:
        params = gnn.init(init_key(seed), batch, layout)
        state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                           jax.random.key_data(jax.random.key(seed)))
        return state, initial_best(params)

    sharding = first_device() if mesh is None else replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        jax.eval_shape(shapes))


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
    params: Any  # GNN params (model.Params)


def uses_best(t: GNNTrainConfig, best: dict) -> bool:
    """Whether the exported parameters are those of the best evaluation (`gnn_train.keep_best`,
    once an evaluation has run) rather than the last step's."""
    return t.keep_best and float(best["auc"]) >= 0


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
        optimizer, _ = make_gnn_optimizer(cfg.gnn_train)
        target = checkpoint_tree(*abstract_state(gnn, optimizer, batch, sampler.layout, cfg.gnn_train.seed))
        tree, meta = ckpt.restore(target)
    finally:
        ckpt.close()
    train, best = from_checkpoint_tree(tree)
    # Early stopping (gnn_train.keep_best): the parameters of the evaluation with the best val AUC.
    params, step = ((best["params"], int(best["step"])) if uses_best(cfg.gnn_train, best)
                    else (train.params, int(meta["step"])))
    finished = (out / RESULT).is_file()
    result = read_json(out / RESULT) if finished else {}
    # The output blocks' gains, picked on val after training (gnn_train.*_block_gains).
    gains = {name: result[f"{name}_block_gain"] for name in GAIN_PARAMS
             if result.get(f"{name}_block_gain") is not None}
    params = set_block_gains(params, gains)
    return TrainedRun(cfg, run["variant"], run["fingerprint"], run.get("features"), fanouts,
                      step, finished, gnn, params)
