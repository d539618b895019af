"""The one training loop of every stage: `star-jax pretrain`, `train-llm` and `train-gnn`.

A stage supplies its loss `loss_fn(params, frozen, batch, rng) -> (loss, {name: scalar})`, its
params, the frozen argument of its step (the base model, the GNN's `Static` layout, or None), a
grain iterator of batches and its evaluation. This module owns the rest: the optax chain, the
`TrainState`, the jitted step (state donated), evaluation every `eval_every` steps, orbax
checkpoints of the state and the iterator (star_jax.checkpoint: a killed run resumes bit-exactly),
SIGTERM (`Preemption`: checkpoint the step, raise `Preempted`), a stalled process (star_jax.watchdog),
metrics.jsonl / TensorBoard / tqdm (star_jax.tracking) and the count of the step's compilations.
`TrainLoop` is the loop; a stage subclasses it for what it adds (the GNN: keep-best, fan-out stages).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from star_jax.checkpoint import Checkpointer
from star_jax.config import MeshConfig
from star_jax.errors import Preempted, StarError
from star_jax.parallel import batch_sharding, replicated
from star_jax.tracking import MetricsLogger, progress
from star_jax.watchdog import Watchdog, peer_failure, stop_process

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
# The event JAX records once per XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class TrainState(NamedTuple):
    step: jax.Array  # int32 []: optimizer steps taken
    params: Any  # the trainable pytree (fp32)
    opt_state: Any  # optax state, moments sharded like params
    rng: jax.Array  # uint32 [2]: raw PRNG key data (orbax stores plain arrays)


StepFn = Callable[[TrainState, Any, Any], tuple[TrainState, dict]]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """A hashable value passed to a jitted step inside the pytree structure: a compile-time
    constant, one compilation per distinct value (the GNN's batch `Layout`)."""

    value: Any


# -- optimizer, state, step ----------------------------------------------------------------------


def matrices(params: Any) -> Any:
    """The default weight-decay mask: matrices (ndim >= 2) decay, vectors and scalars do not."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    *,
    lr: float,
    warmup_steps: int,
    steps: int,
    weight_decay: float,
    clip_norm: float,
    final_lr_ratio: float = 0.0,
    warmup_from: float | None = None,
    decay_mask: Callable[[Any], Any] = matrices,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip by global norm, then AdamW under a linear warm-up and a cosine decay to `final_lr_ratio * lr`.

    The warm-up climbs from `warmup_from` (default lr / warmup_steps: no step is wasted) to lr at
    step `warmup_steps`; `decay_mask(params)` says which leaves decay.
    """
    warmup = min(warmup_steps, max(steps - 1, 0))
    if warmup_from is None:
        warmup_from = lr / warmup if warmup else lr
    schedule = optax.warmup_cosine_decay_schedule(
        warmup_from, lr, warmup, max(steps, warmup + 1), end_value=lr * final_lr_ratio
    )
    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )
    return tx, schedule


def optimizer_from_config(
    section: Any, **options: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`make_optimizer` from a config section's lr, warmup_steps, steps, weight_decay, clip_norm
    (and final_lr_ratio where it has one); `options` are make_optimizer's other arguments."""
    return make_optimizer(
        lr=section.lr, warmup_steps=section.warmup_steps, steps=section.steps,
        weight_decay=section.weight_decay, clip_norm=section.clip_norm,
        final_lr_ratio=getattr(section, "final_lr_ratio", 0.0), **options,
    )


def first_device() -> jax.sharding.Sharding:
    """Where an unsharded (one-device) stage keeps its state: the first local device."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def init_state(
    params: Any, optimizer: optax.GradientTransformation, seed: int, mesh: Mesh | None = None
) -> TrainState:
    """A step-0 state: optimizer moments in their params' shardings, the rest replicated on `mesh`
    (no mesh: everything, the params too, on `first_device()`)."""
    rep = first_device() if mesh is None else replicated(mesh)
    if mesh is None:  # committed, like the step's outputs: the second step then hits the jit cache
        params = jax.device_put(params, rep)
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
    grad_accum: int = 1,
    mesh: Mesh | None = None,
    state: TrainState | None = None,
    *,
    fold_in_step: bool = False,
) -> StepFn:
    """`step(state, frozen, batch) -> (state, metrics)`, jitted, the state donated and kept in place.

    `batch` arrays have the optimizer batch as their leading dimension; metrics are the loss, the
    loss terms, the gradient norm and the learning rate, averaged over micro-batches. The step's
    key is split from `state.rng`, or with `fold_in_step` folded from a constant `state.rng` with
    the step number. With a `mesh`, outputs keep `state`'s shardings and metrics are replicated.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen: Any, batch: Any) -> tuple[TrainState, dict]:
        key = jax.random.wrap_key_data(state.rng)
        if fold_in_step:
            sub = jax.random.fold_in(key, state.step)
        else:
            key, sub = jax.random.split(key)
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, frozen, batch, sub)
        else:
            # [B, ...] -> [accum, B / accum, ...]: micro-batch k gets rows r with r % accum == k,
            # so every micro-batch spreads over all devices. One optimizer step is one loader batch.
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

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
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


# -- compilations --------------------------------------------------------------------------------


class CompileCounter:
    """Counts XLA compilations that happen inside `with counter:` on the calling thread.

    It listens to the event JAX records for every backend compilation, so a call served from the
    jit cache counts 0 and a retrace (a new shape, dtype or static value) counts 1, as does a read
    from a persistent compilation cache. Other threads (a loader's prefetch) do not count.
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

    def __enter__(self) -> CompileCounter:
        self._thread = threading.get_ident()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._thread = None

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._callback)


# -- preemption ----------------------------------------------------------------------------------


def spans_processes(tree: Any) -> bool:
    """True when some leaf of `tree` (arrays or abstract arrays) has shards on other processes: every
    process runs the loop that trains it."""
    shardings = (getattr(leaf, "sharding", None) for leaf in jax.tree.leaves(tree))
    return any(s is not None and not s.is_fully_addressable for s in shardings)


class Preemption:
    """`with Preemption(collective) as p:` ... `p.reached(step)` after each step: True when a SIGTERM
    asks the loop to checkpoint `step` and stop.

    One process, or a loop that runs on this process alone (`collective=False`): a SIGTERM handler,
    installed in the main thread for the `with` block (the previous one restored after), sets
    `requested`. On a pod it replaces the notifier JAX installs (below) for the rest of the process.
    A loop every process runs (`collective=True`) asks JAX's preemption sync point instead:
    `jax.distributed.initialize` installs a SIGTERM notifier that tells every process, and the sync
    point is one step for all (the largest step any process had reported, plus one), so every
    process checkpoints the same step. It must be asked at every step, on every process, and only
    here (star_jax.checkpoint keeps orbax from asking it too).
    """

    def __init__(self, collective: bool):
        self.collective = collective
        self.requested = threading.Event()  # set by the SIGTERM handler (collective=False)
        self._previous: Any = None
        self._installed = self._disabled = False

    def __enter__(self) -> Preemption:
        if self.collective:
            return self
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        else:  # Python sets signal handlers in the main thread only
            log.debug("SIGTERM will not checkpoint: the training loop runs outside the main thread")
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()

    def __exit__(self, *exc: Any) -> None:
        if self._installed:  # None: the previous handler was not set from Python; restore the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def reached(self, step: int) -> bool:
        if not self.collective:
            return self.requested.is_set()
        if self._disabled:
            return False
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # jax_enable_preemption_service is off
            log.warning(f"SIGTERM will not checkpoint: {e}")
            self._disabled = True
            return False


# -- the loop ------------------------------------------------------------------------------------


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: the target orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class TrainLoop:
    """Run (or resume) a stage to `steps`.

    `run(state)` resumes from the latest checkpoint in `ckpt` (state and `batches`, a grain
    iterator, restored in place; `state` may then be abstract), else starts from `state`. It
    checkpoints every `checkpoint_every` steps and at the end, logs the step's metrics every
    `log_every` steps and `evaluate(state)` every `eval_every` steps; `on_batch(step, host_batch)`
    sees every batch before its step runs. After a SIGTERM (`Preemption`) it finishes the step
    (evaluation included), checkpoints it, waits for the checkpoint and raises `Preempted`. A
    process with no progress for `watchdog_s` seconds (`mesh.watchdog_s`; 0: off) ends in one line
    (star_jax.watchdog). The methods below the constructor are a stage's hooks.
    """

    eval_at_start = True  # a fresh run logs `evaluate(state)` at step 0
    eval_at_end = False  # evaluate after the last step too (else the stage evaluates its result itself)
    # Whether every process's data iterator has the same state (a global batch index): then a run
    # resumes on another process count too (Checkpointer.restore).
    shared_data_state = False

    def __init__(
        self,
        step_fn: StepFn,
        frozen: Any,
        batches: Iterator,
        *,
        put: Callable[[Any], Any],
        ckpt: Checkpointer,
        logger: MetricsLogger,
        steps: int,
        log_every: int,
        checkpoint_every: int,
        desc: str,
        tokens: Callable[[Any], int] | None = None,
        eval_every: int = 0,
        evaluate: Callable[[TrainState], dict[str, float]] | None = None,
        on_batch: Callable[[int, Any], None] | None = None,
        watchdog_s: float = MeshConfig.watchdog_s,
    ):
        self.step_fn, self.frozen, self.batches, self.put = step_fn, frozen, batches, put
        self.ckpt, self.logger, self.desc = ckpt, logger, desc
        self.steps, self.log_every, self.checkpoint_every, self.eval_every = (
            steps, log_every, checkpoint_every, eval_every)
        self.tokens, self.evaluate, self.on_batch = tokens, evaluate, on_batch
        self.compiles = 0  # the step's compilations in this session
        self.compiled: list[str] = []  # the names of the functions compiled
        self.preemption: Preemption | None = None  # the running session's
        self.watchdog_s = watchdog_s
        self.watchdog: Watchdog | None = None  # the running session's

    def pack(self, state: TrainState) -> Any:
        """The tree a checkpoint holds for `state` (also called on an abstract state)."""
        return state

    def unpack(self, tree: Any) -> TrainState:
        return tree

    def meta(self, train_seconds: float) -> dict:
        """The JSON a checkpoint carries besides its state and iterator."""
        return {"train_seconds": train_seconds}

    def train_scalars(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """What the `train` line of metrics.jsonl holds for the step's metrics."""
        return values

    def on_compile(self, step: int) -> None:
        """Called after a step that compiled the train step (`self.compiles` is the new count)."""

    def after_eval(self, step: int, state: TrainState, values: dict[str, float]) -> bool:
        """Called after each evaluation; True when the stage swapped `batches` and `frozen` (a new
        layout from step + 1 on), which checkpoints this step."""
        return False

    def eval_due(self, step: int) -> bool:
        if step == self.steps:
            return self.eval_at_end
        return bool(self.eval_every) and step % self.eval_every == 0

    def preempted(self, step: int) -> bool:
        """Called once after every step: True when SIGTERM asked to stop after this step."""
        return self.preemption.reached(step)

    def run(self, state: TrainState) -> tuple[TrainState, float]:
        """Returns the final state and the training seconds of all sessions."""
        self.preemption = Preemption(collective=jax.process_count() > 1 and spans_processes(state))
        process = (jax.process_index(), jax.process_count())
        self.watchdog = Watchdog(self.watchdog_s, self.desc, process=process)
        with self.preemption, self.watchdog:
            try:
                return self._run(state)
            except BaseException as e:
                # A failed collective (a peer died) leaves the checkpoint being written waiting for
                # that peer at orbax's barrier: wait for it here, watched, not in the stage's
                # Checkpointer.close, unwatched.
                self.watchdog.error = f"{type(e).__name__}: {str(e).strip()[:300]}".splitlines()[0]
                self.ckpt.wait()
                if peer_failure(e, process[1]):
                    # Raised, it would end in JAX's shutdown barrier, which aborts the process with
                    # a C++ stack once the dead peer misses its heartbeats: one line instead.
                    stop_process(self.watchdog.failed_line())
                raise

    def _run(self, state: TrainState) -> tuple[TrainState, float]:
        start, seconds_before = 0, 0.0
        resumed = self.ckpt.latest_step() is not None
        if resumed:
            tree, meta = self.ckpt.restore(abstract_like(self.pack(state)), data_iter=self.batches,
                                           shared_data=self.shared_data_state)
            state = self.unpack(tree)
            start, seconds_before = int(meta["step"]), float(meta.get("train_seconds", 0.0))
            self.watchdog.beat(start)
            log.info(f"{self.desc}: resumed from the step-{start} checkpoint in {self.ckpt.directory}")
        # A SIGTERM during the set-up or the restore stops the loop before its first step. Asked with
        # `start`, the sync point also learns where every process starts.
        if self.preempted(start):
            raise Preempted(f"{self.desc}: stopped by SIGTERM before step {start + 1} of {self.steps}; "
                            "rerun the same command to resume")
        if not resumed and self.evaluate is not None and self.eval_at_start:
            self.logger.log(0, "val", **self.evaluate(state))
        counter = CompileCounter()
        t0 = tick = time.perf_counter()
        seen_tokens = 0
        postfix: dict[str, str] = {}
        try:
            with progress(total=self.steps, initial=start, desc=self.desc, unit="step") as bar:
                for step in range(start + 1, self.steps + 1):
                    batch = next(self.batches)
                    if self.on_batch is not None:
                        self.on_batch(step, batch)
                    if self.tokens is not None:
                        seen_tokens += self.tokens(batch) * jax.process_count()
                    with counter:
                        state, metrics = self.step_fn(state, self.frozen, self.put(batch))
                    if counter.count > self.compiles:
                        self.compiles, self.compiled = counter.count, counter.names
                        self.on_compile(step)
                    if step % self.log_every == 0 or step == self.steps:
                        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        postfix["loss"] = f"{values['loss']:.4f}"
                        if self.tokens is not None:
                            now = time.perf_counter()
                            values["tokens_per_s"] = seen_tokens / max(now - tick, 1e-9)
                            tick, seen_tokens = now, 0
                            postfix["tok_s"] = f"{values['tokens_per_s']:,.0f}"
                        self.logger.log(step, "train", **self.train_scalars(step, values))
                        bar.set_postfix(postfix, refresh=False)
                    self.watchdog.stepped(step)  # compiled and dispatched (run, when it logged)
                    relayout = False
                    if self.evaluate is not None and self.eval_due(step):
                        values = self.evaluate(state)
                        self.logger.log(step, "val", **values)
                        if "auc" in values:
                            postfix["val_auc"] = f"{values['auc']:.4f}"
                            bar.set_postfix(postfix, refresh=False)
                        relayout = self.after_eval(step, state, values)
                    stop = self.preempted(step)
                    if step % self.checkpoint_every == 0 or step == self.steps or relayout or stop:
                        elapsed = seconds_before + time.perf_counter() - t0
                        self.ckpt.save(step, self.pack(state), data_iter=self.batches,
                                       meta=self.meta(elapsed))
                    bar.update()
                    if stop:
                        self.ckpt.wait()
                        raise Preempted(
                            f"{self.desc}: stopped by SIGTERM after step {step} of {self.steps}, "
                            f"checkpointed in {self.ckpt.directory}; rerun the same command to resume"
                        )
            self.ckpt.wait()
        finally:
            counter.close()
        return state, seconds_before + time.perf_counter() - t0


def train(
    state: TrainState,
    step_fn: StepFn,
    frozen: Any,
    batches: Iterator,
    **options: Any,
) -> tuple[TrainState, float]:
    """`TrainLoop(step_fn, frozen, batches, **options).run(state)`: a stage that adds nothing."""
    return TrainLoop(step_fn, frozen, batches, **options).run(state)
