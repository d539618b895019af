"""Data-parallel `train-gnn` over the devices of every process (`jax.distributed`).

Each batch's B pairs split into one contiguous part per device (`NeighborSampler(parts=...)`), and
each process samples the parts of its own devices, stacked on a leading device axis. The encoder
runs per part under `shard_map`; the in-batch decoder then scores every member seed against every
job seed (gathered from all parts) and the K shared negatives of the whole batch, so the loss, and
its gradient, are those of the one-device step. Validation splits the val batches over processes
and gathers the scores, so every process sees one val AUC.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from star_jax.config import MeshConfig
from star_jax.errors import StarError
from star_jax.gnn.evaluate import Evaluator
from star_jax.gnn.model import GNN, link_logits, link_loss, link_targets
from star_jax.graph.batch import HeteroBatch, Layout
from star_jax.graph.sampler import NeighborSampler
from star_jax.graph.seeds import BatchSubset
from star_jax.parallel import batch_sharding, make_mesh, replicate
from star_jax.train_loop import LossFn, StepFn, TrainState, make_train_step, process_shard

DEVICE_AXES = ("data", "fsdp")  # the batch's device axis; `tensor` replicates (the GNN is small)


class DataParallel:
    """The mesh of every device, this process's parts of each batch, and moving trees onto it."""

    def __init__(self, mesh_cfg: MeshConfig, batch_size: int):
        self.mesh: Mesh = make_mesh(mesh_cfg)
        self.ways = self.mesh.shape["data"] * self.mesh.shape["fsdp"]  # parts per batch
        if batch_size % self.ways:
            raise StarError(f"sampler.batch_size: {batch_size} pairs do not split over the {self.ways} "
                            "devices of mesh data x fsdp")
        index, count = process_shard(self.mesh, self.ways)
        per = self.ways // count
        self.parts = range(index * per, (index + 1) * per)  # this process's devices' parts, in order

    def samplers(self, sampler: NeighborSampler) -> list[NeighborSampler]:
        """`sampler` (built with `parts=self.ways`) for each of this process's parts."""
        return [sampler.for_part(p) for p in self.parts]

    def put(self, batch: HeteroBatch) -> HeteroBatch:
        """This process's stacked parts [parts here, ...] -> global arrays [ways, ...] on the mesh."""

        def put(x: np.ndarray) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(batch_sharding(self.mesh, x.ndim), x,
                                                          (self.ways, *x.shape[1:]))

        return jax.tree.map(put, batch)

    def replicate(self, tree: Any) -> Any:
        """A tree of host or one-device arrays, equal on every process, replicated on the mesh."""
        return replicate(tree, self.mesh)

    def local(self, tree: Any) -> Any:
        """This process's copy of a replicated tree, on one of its devices."""
        return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)

    def loss(self, gnn: GNN) -> LossFn:
        return data_parallel_loss(gnn, self.mesh)

    def train_step(self, gnn: GNN, optimizer: optax.GradientTransformation,
                   schedule: optax.Schedule) -> StepFn:
        """`make_train_step` of the data-parallel loss, built at the first call from the state's
        shardings (everything replicated, the batch split over the devices)."""
        built: list[StepFn] = []

        def step(state: TrainState, frozen: Any, batch: HeteroBatch) -> tuple[TrainState, dict]:
            if not built:
                built.append(make_train_step(self.loss(gnn), optimizer, schedule, mesh=self.mesh, state=state,
                                             fold_in_step=True))
            return built[0](state, frozen, batch)

        return step


# -- the loss ------------------------------------------------------------------------------------


def whole_batch(batch: HeteroBatch, layout: Layout) -> tuple[HeteroBatch, Layout]:
    """What `link_targets` reads of the whole batch, from its parts [ways, ...]: the member, job
    seed and negative ids, pair masks and labels, as a batch of a two-block Layout (jobs: the B
    seeds then the K negatives; members: the B seeds)."""
    ms, js = layout.node_slice("member").start, layout.node_slice("job").start
    members = jnp.take_along_axis(batch.node_ids["member"], batch.member_seeds - ms, 1).reshape(-1)
    jobs = jnp.take_along_axis(batch.node_ids["job"], batch.job_seeds - js, 1).reshape(-1)
    negatives = batch.node_ids["job"][0][batch.neg_jobs[0] - js]  # every part holds the same ones
    b, k = members.shape[0], layout.num_negatives
    node_mask = jnp.concatenate([jnp.ones(b, bool), batch.graph.nodes["mask"][0][batch.neg_jobs[0]],
                                 jnp.ones(b, bool)])
    whole = Layout(("job", "member"), (b + k, b), (), (), b, k)
    graph = jraph.GraphsTuple(nodes={"mask": node_mask}, edges=None, senders=None, receivers=None,
                              n_node=None, n_edge=None, globals=None)
    seeds = jnp.arange(b, dtype=jnp.int32)
    return HeteroBatch(graph, {"job": jnp.concatenate([jobs, negatives]), "member": members}, {}, {},
                       b + k + seeds, seeds, b + jnp.arange(k, dtype=jnp.int32),
                       batch.pair_mask.reshape(-1), batch.labels.reshape(-1)), whole


def data_parallel_loss(gnn: GNN, mesh: Mesh) -> LossFn:
    """`gnn.loss_fn` of the whole batch from its parts [ways, ...] (the frozen arg: a part's Layout).

    Each device encodes its part; the member seeds and job seeds of all parts, and the negatives of
    part 0 (every part has the same), form the [B, B + K] logits of the one-device step.
    """
    spec = PartitionSpec(DEVICE_AXES)

    def loss_fn(params: Any, frozen: Any, batch: HeteroBatch, rng: jax.Array) -> tuple[jax.Array, dict]:
        layout = frozen.value

        def encode(params: Any, part: HeteroBatch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
            part = jax.tree.map(lambda x: x[0], part)
            key = None
            if gnn.config.dropout > 0:  # each part its own masks
                key = jax.random.fold_in(rng, jax.lax.axis_index(DEVICE_AXES))
            member, jobs = gnn.seed_embeddings(params, part, layout, key)
            return member[None], jobs[None]

        member, jobs = jax.shard_map(encode, mesh=mesh, in_specs=(PartitionSpec(), spec, PartitionSpec()),
                                     out_specs=(spec, spec))(params, batch, rng)
        b = layout.num_pairs
        member = member.reshape(-1, member.shape[-1])
        jobs = jnp.concatenate([jobs[:, :b].reshape(-1, jobs.shape[-1]), jobs[0, b:]])
        logits = link_logits(member, jobs, params["decoder"])
        targets, mask = link_targets(*whole_batch(batch, layout))
        loss, metrics = link_loss(logits, targets, mask, gnn.config.negatives_weight)
        metrics["logit_scale"] = jnp.exp(params["decoder"]["log_scale"])
        return loss, metrics

    return loss_fn


# -- validation ----------------------------------------------------------------------------------


class ShardedEvaluator:
    """`Evaluator`'s val AUC with the val batches split over the processes: each embeds a contiguous
    block of them with its copy of the params, and every process gets all scores (so one AUC)."""

    def __init__(self, evaluator: Evaluator, dp: DataParallel):
        self.ev, self.dp = evaluator, dp

    def __call__(self, params: Any, hop_fanouts: tuple[int, ...]) -> dict[str, float]:
        pairs = self.ev.pairs
        n, size = len(pairs), pairs.batch_size
        per = math.ceil(n / jax.process_count())
        lo = min(jax.process_index() * per, n)
        hi = min(lo + per, n)
        scores = np.zeros(per * size, np.float32)
        count = np.zeros(1, np.int32)
        if hi > lo:
            mine = copy.copy(self.ev)  # its samplers and compiled embedding shared
            mine.pairs = BatchSubset(pairs, np.arange(lo, hi))
            member, job = mine.embed_pairs(self.dp.local(params), hop_fanouts)
            count[0] = member.shape[0]
            scores[: count[0]] = np.einsum("bd,bd->b", member, job)
        if jax.process_count() > 1:
            scores = np.asarray(multihost_utils.process_allgather(scores))  # [processes, per * size]
            count = np.asarray(multihost_utils.process_allgather(count))
        return self.ev.aucs(np.concatenate([s[:c] for s, c in zip(scores.reshape(-1, per * size),
                                                                   count.reshape(-1))]))
