"""The one training loop of the LLM stages (`star-jax pretrain` and `star-jax train-llm`).

A stage supplies a loss `loss_fn(params, frozen, batch, rng) -> (loss, {name: scalar})`, the
trainable params, the frozen pytree (the base model, or None) and a grain iterator; this module
does the rest, after MaxText's `train.py` and Levanter's trainer:

- optax AdamW with linear warm-up and cosine decay to zero, global-norm clipping first;
- gradient accumulation by an explicit `lax.scan` over `grad_accum` micro-batches inside the
  jitted step (not `optax.MultiSteps`): one optimizer step is one loader batch, one RNG split and
  one checkpointable unit. Micro-batch k holds the rows r with r % grad_accum == k, which keeps
  every micro-batch spread over all devices. In-batch negatives come from the micro-batch only
  (as in any memory-bound accumulation);
- every array lives on the `('data', 'fsdp', 'tensor')` mesh: params and optimizer moments in
  the params' shardings, scalars replicated, batches split over `data` x `fsdp`; each process
  feeds only its own rows (`process_shard` gives the loader's `shard` argument);
- orbax checkpoints (`star_jax.checkpoint.Checkpointer`) of the whole `TrainState` (params,
  optimizer state, step, RNG) and the grain iterator, so a run killed at any point resumes from
  its last checkpoint and continues bit-exactly; the config fingerprint guards the resume;
- a tqdm bar over steps (ETA) showing tokens/s, and scalars to metrics.jsonl + TensorBoard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from star_jax.checkpoint import Checkpointer
from star_jax.errors import StarError
from star_jax.metrics import MetricsLogger, progress
from star_jax.parallel import batch_sharding, replicated

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(NamedTuple):
    step: jax.Array  # int32 []: optimizer steps taken
    params: Any  # the trainable pytree (fp32)
    opt_state: Any  # optax state, moments sharded like params
    rng: jax.Array  # uint32 [2]: raw PRNG key data (orbax stores plain arrays)


def make_optimizer(
    *, lr: float, warmup_steps: int, steps: int, weight_decay: float, clip_norm: float
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip by global norm, then AdamW under warm-up + cosine decay; decay only matrices (ndim >= 2).

    The warm-up climbs linearly from lr / warmup_steps (not 0: no step is wasted) to lr at step
    `warmup_steps`, then the cosine takes it to 0 at `steps`.
    """
    warmup = min(warmup_steps, max(steps - 1, 0))
    start = lr / warmup if warmup else lr
    schedule = optax.warmup_cosine_decay_schedule(start, lr, warmup, max(steps, warmup + 1))
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )
    return tx, schedule


def init_state(params: Any, optimizer: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
    """A step-0 state on `mesh`: optimizer moments in their params' shardings, the rest replicated."""
    rep = replicated(mesh)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, s: s,
        jax.eval_shape(optimizer.init, params),
        param_shardings,
        transform_non_params=lambda _: rep,
    )
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    step, rng = jax.jit(
        lambda: (jnp.zeros((), jnp.int32), jax.random.key_data(jax.random.key(seed))), out_shardings=rep
    )()
    return TrainState(step, params, opt_state, rng)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum: int,
    mesh: Mesh,
    state: TrainState,
) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """`step(state, frozen, batch) -> (state, metrics)`, jitted, the state donated and kept in place.

    `batch` arrays have the optimizer batch as their leading dimension; metrics are the loss,
    the loss terms, the gradient norm and the learning rate, averaged over micro-batches.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
        key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, frozen, batch, sub)
        else:
            # [B, ...] -> [accum, B / accum, ...]: micro-batch k gets rows r with r % accum == k.
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1),
                batch,
            )
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(grad_fn, state.params, frozen, first, sub)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def accumulate(carry, xs):
                mb, rng = xs
                out, g = grad_fn(state.params, frozen, mb, rng)
                return jax.tree.map(jnp.add, carry, (out, g)), None

            total, _ = jax.lax.scan(accumulate, zeros, (micro, jax.random.split(sub, grad_accum)))
            (loss, aux), grads = jax.tree.map(lambda x: x / grad_accum, total)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**aux, "loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        return TrainState(state.step + 1, params, opt_state, jax.random.key_data(key)), metrics

    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, replicated(mesh)))


# -- batches on the mesh -------------------------------------------------------------------------


def process_shard(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """`(index, count)` for the loaders' `shard` argument: this process's contiguous block of rows.

    Read from the batch sharding itself, so it holds whatever order the mesh gives the devices.
    """
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((batch_size,))
    spans = sorted({sl[0].indices(batch_size)[:2] for sl in index_map.values()})
    lo, hi = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != hi - lo or batch_size % (hi - lo):
        raise StarError(f"mesh: this process's devices hold no contiguous block of the batch ({spans})")
    return lo // (hi - lo), batch_size // (hi - lo)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, shard: tuple[int, int]) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays split over (data, fsdp) on their leading dimension."""
    count = shard[1]

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(
            batch_sharding(mesh, max(x.ndim, 1)), x, (x.shape[0] * count, *x.shape[1:])
        )

    return {k: put(v) for k, v in batch.items()}


def gather(tree: Any, mesh: Mesh) -> Any:
    """Every leaf fully replicated, so each process can read it whole (exports, evaluation)."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def check_batch(batch_size: int, grad_accum: int, mesh: Mesh, where: str) -> None:
    """The batch must split into `grad_accum` micro-batches that split over the data x fsdp devices."""
    if grad_accum < 1 or batch_size % grad_accum:
        raise StarError(f"{where}.batch_size: {batch_size} is not divisible by grad_accum={grad_accum}")
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if (batch_size // grad_accum) % ways:
        raise StarError(
            f"{where}.batch_size: micro-batches of {batch_size // grad_accum} rows do not split over "
            f"mesh data x fsdp = {ways} devices"
        )


def peak_bytes(compiled: Any) -> int:
    """Device memory a compiled step needs at once, from its `memory_analysis()`: arguments, outputs
    and temporaries, less the donated buffers reused for outputs. (XLA:CPU leaves
    `peak_memory_in_bytes` unset, so the sum is the estimate on every backend.)"""
    m = compiled.memory_analysis()
    live = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(live - m.alias_size_in_bytes)


# -- the loop ------------------------------------------------------------------------------------


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: the target orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def train(
    state: TrainState,
    step_fn: Callable[[TrainState, Any, dict], tuple[TrainState, dict]],
    frozen: Any,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    put: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
    ckpt: Checkpointer,
    logger: MetricsLogger,
    steps: int,
    log_every: int,
    checkpoint_every: int,
    tokens: Callable[[dict[str, np.ndarray]], int],
    desc: str,
    eval_every: int = 0,
    evaluate: Callable[[TrainState], dict[str, float]] | None = None,
    on_batch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> tuple[TrainState, float]:
    """Run (or resume) to `steps`; returns the final state and the training seconds of all sessions.

    Resumes from the latest checkpoint in `ckpt` (state and `batches`, a grain iterator, restored
    in place), else starts fresh and logs `evaluate(state)` at step 0. Checkpoints every
    `checkpoint_every` steps and at the end. `on_batch(step, host_batch)` sees every batch
    before its step runs (e.g. to log example ids).
    """
    start, seconds_before = 0, 0.0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract_like(state), data_iter=batches)
        start, seconds_before = int(meta["step"]), float(meta.get("train_seconds", 0.0))
        print(f"{desc}: resumed from the step-{start} checkpoint in {ckpt.directory}")
    elif evaluate is not None:
        logger.log(0, "val", **evaluate(state))
    t0 = tick = time.perf_counter()
    seen_tokens = 0
    with progress(total=steps, initial=start, desc=desc, unit="step") as bar:
        for step in range(start + 1, steps + 1):
            batch = next(batches)
            if on_batch is not None:
                on_batch(step, batch)
            seen_tokens += tokens(batch) * jax.process_count()
            state, metrics = step_fn(state, frozen, put(batch))
            if step % log_every == 0 or step == steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                values["tokens_per_s"] = seen_tokens / max(now - tick, 1e-9)
                tick, seen_tokens = now, 0
                logger.log(step, "train", **values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_s']:,.0f}")
            if evaluate is not None and eval_every and step % eval_every == 0 and step < steps:
                logger.log(step, "val", **evaluate(state))
            if step % checkpoint_every == 0 or step == steps:
                elapsed = seconds_before + time.perf_counter() - t0
                ckpt.save(step, state, data_iter=batches, meta={"train_seconds": elapsed})
            bar.update()
    ckpt.wait()
    return state, seconds_before + time.perf_counter() - t0
