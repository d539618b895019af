"""Device mesh, logical-axis rules and multi-host start-up.

The mesh is always `('data', 'fsdp', 'tensor')` with `AxisType.Auto`: `jax.make_mesh` now
defaults to Explicit axes, under which ordinary matmuls with a sharded contracting dimension
raise. Model code names its dimensions logically (`embed`, `mlp`, `heads`, `activation_batch`,
...); the rules table in `MeshConfig.rules` maps those names onto mesh axes, after MaxText's
pure-FSDP table (../reference: llm_anchors.md, section 1.4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from star_jax.config import MeshConfig
from star_jax.errors import StarError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def _under_cluster_launcher() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize_distributed(cfg: MeshConfig) -> None:
    """Join the other processes of a multi-host run, once, before any other JAX call.

    With an explicit coordinator (or `num_processes > 1`) the addresses come from the config, as
    `launch/gpu_pod.sh` passes them; under SLURM or Open MPI `jax.distributed.initialize()`
    detects everything itself. A single process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if cfg.coordinator_address or cfg.num_processes > 1:
        if not cfg.coordinator_address:
            raise StarError("mesh.coordinator_address: required when mesh.num_processes > 1")
        if cfg.process_id is None:
            raise StarError("mesh.process_id: required when mesh.num_processes > 1")
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    elif _under_cluster_launcher():
        jax.distributed.initialize()


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolve the `-1` (fill) entry of the mesh config against the device count."""
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise StarError(f"mesh: at most one axis may be -1, got {', '.join('mesh.' + k for k in fill)}")
    for k, v in sizes.items():
        if v == 0 or v < -1:
            raise StarError(f"mesh.{k}: must be a positive size or -1, got {v}")
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    if fill:
        if num_devices % known:
            raise StarError(f"mesh: {num_devices} devices do not divide by the fixed axes' product {known}")
        sizes[fill[0]] = num_devices // known
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise StarError(
            f"mesh: data*fsdp*tensor = {sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} "
            f"does not match the {num_devices} available devices"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The `('data', 'fsdp', 'tensor')` mesh over all (or the given) devices, Auto axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_rules(cfg: MeshConfig) -> Rules:
    """The config's `{logical: [mesh axes]}` table in Flax's `(logical, axes)` form."""
    rules = []
    for name, axes in cfg.rules.items():
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise StarError(f"mesh.rules.{name}: unknown mesh axis {bad[0]!r}; expected one of {MESH_AXES}")
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else tuple(axes)))
    return tuple(rules)


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A tree of host (or one-device) arrays, equal on every process, as arrays replicated on `mesh`."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over `data` and `fsdp`, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a host batch (a tree of numpy arrays, global on every process) onto the mesh.

    Every process holds the same global batch here; each keeps only its addressable shards.
    """

    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, max(x.ndim, 1))
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, batch)


def broadcast_from_lead(arrays: Sequence[np.ndarray] | None, dtypes: Sequence[Any]) -> list[np.ndarray]:
    """Process 0's 1-d `arrays` (of any lengths), on every process; the others pass None.

    `dtypes` (one per array) must be the same on every process; with one process, `arrays` as given.
    """
    if jax.process_count() == 1:
        return [np.asarray(a, d) for a, d in zip(arrays, dtypes)]
    from jax.experimental import multihost_utils

    lead = jax.process_index() == 0
    sizes = np.array([len(a) for a in arrays] if lead else [0] * len(dtypes), np.int32)
    sizes = np.asarray(multihost_utils.broadcast_one_to_all(sizes))
    out = []
    for i, (n, d) in enumerate(zip(sizes.tolist(), dtypes)):
        if n == 0:
            out.append(np.zeros(0, d))
            continue
        # int64 does not survive the collective without x64: int32 rows, as store row counts allow
        wire = np.int32 if np.dtype(d) == np.int64 else d
        mine = np.asarray(arrays[i], wire) if lead else np.zeros(n, wire)
        out.append(np.asarray(multihost_utils.broadcast_one_to_all(mine)).astype(d))
    return out
