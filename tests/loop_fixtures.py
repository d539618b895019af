"""A six-step least-squares toy for the training loop's fault tests (preemption, damaged checkpoints)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np

from star_jax.train_loop import init_state, make_optimizer, make_train_step

STEPS = 6


class Toy(NamedTuple):
    batches: Any  # grain iterator of {"x": f32[2, 4]}, checkpointable
    state: Any  # TrainState of {"w": f32[4]}
    step: Any  # the jitted train step


def toy_problem(steps: int = STEPS) -> Toy:
    """A noisy least-squares fit of w to a grain stream of rows (the step's rng key matters too)."""
    batches = iter(grain.MapDataset.range(100).map(
        lambda i: {"x": np.arange(4, dtype=np.float32) * (i % 7)}).batch(2).to_iter_dataset())
    tx, schedule = make_optimizer(lr=0.1, warmup_steps=1, steps=steps, weight_decay=0.0, clip_norm=10.0)
    state = init_state({"w": jnp.zeros(4)}, tx, seed=0)

    def loss(params, frozen, batch, rng):
        noise = jax.random.normal(rng, params["w"].shape)
        return jnp.mean((params["w"] + 0.01 * noise - batch["x"]) ** 2), {}

    return Toy(batches, state, make_train_step(loss, tx, schedule))


@contextlib.contextmanager
def compilation_cache_at(path: str | os.PathLike, min_compile_secs: float = 0) -> Iterator[None]:
    """JAX's persistent compilation cache in `path` for every program that compiles in at least
    `min_compile_secs` (no size floor), and the previous settings back afterwards; child processes
    given the same settings share it."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(path), min_compile_secs, 0)):
        jax.config.update(k, v)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()
