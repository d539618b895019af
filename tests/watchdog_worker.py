"""A tiny `TrainLoop` run in a separate process, for tests/test_watchdog.py.

    python tests/watchdog_worker.py OUT --watchdog S --steps N [--sleep S] [--block-at STEP]
        [--kill-at STEP] [--process-id I --num-processes N --port PORT]

Fits a least-squares toy under the stage name `toy-stage`, its batches split over the devices of
every process (so each step all-reduces the gradient), with `mesh.watchdog_s = S`, a checkpoint
every step. `--sleep S`: each batch takes S seconds to arrive; `--block-at K`: the batch iterator
blocks forever when asked for this session's K-th batch; `--kill-at K`: this process SIGKILLs
itself just before step K runs, leaving its peers inside the step's collective.
`--num-processes N` joins N processes through jax.distributed with the coordinator on localhost:PORT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

STAGE = "toy-stage"


class Batches:
    """A grain iterator's batches, each `sleep` seconds late, blocking forever at the `block_at`-th;
    checkpointable like the iterator it wraps."""

    def __init__(self, inner, sleep: float, block_at: int | None):
        self.inner, self.sleep, self.block_at, self.served = inner, sleep, block_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.served += 1
        if self.served == self.block_at:
            threading.Event().wait()  # a stalled input pipeline: never returns
        time.sleep(self.sleep)
        return next(self.inner)

    # grain's checkpoint handler keeps an iterator that is not its own as bytes
    def get_state(self) -> bytes:
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.inner.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--watchdog", type=float, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--block-at", type=int, default=None)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args()

    from star_jax.tracking import MetricsLogger, log_to_stderr

    log_to_stderr()  # before the imports below, one of which would configure the root logger
    import grain
    import jax
    import jax.numpy as jnp
    import numpy as np

    from star_jax.checkpoint import Checkpointer
    from star_jax.config import MeshConfig
    from star_jax.parallel import initialize_distributed, make_mesh, replicated
    from star_jax.train_loop import (
        init_state,
        make_optimizer,
        make_train_step,
        process_shard,
        put_batch,
        train,
    )

    joined = {}
    if args.num_processes > 1:
        joined = {"coordinator_address": f"localhost:{args.port}", "num_processes": args.num_processes,
                  "process_id": args.process_id}
    cfg = MeshConfig(watchdog_s=args.watchdog, **joined)
    initialize_distributed(cfg)
    mesh = make_mesh(cfg)
    batch_size = 2 * len(jax.devices())
    shard = process_shard(mesh, batch_size)
    rows = batch_size // shard[1]
    inner = iter(grain.MapDataset.range(10_000).map(
        lambda i: {"x": np.arange(4, dtype=np.float32) * (i % 7)}).batch(rows).to_iter_dataset())

    tx, schedule = make_optimizer(lr=0.1, warmup_steps=1, steps=args.steps, weight_decay=0.0, clip_norm=10.0)
    params = jax.jit(lambda: {"w": jnp.zeros(4)}, out_shardings=replicated(mesh))()
    state = init_state(params, tx, seed=0, mesh=mesh)

    def loss(params, frozen, batch, rng):
        return jnp.mean((params["w"] - batch["x"]) ** 2), {}

    step_fn = make_train_step(loss, tx, schedule, mesh=mesh, state=state)

    def on_batch(step: int, batch) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    out = Path(args.out)
    with (Checkpointer(out / "checkpoints", fingerprint="toy") as ckpt,
          MetricsLogger(out, tensorboard=False) as logger):
        train(state, step_fn, None, Batches(inner, args.sleep, args.block_at),
              put=lambda b: put_batch(b, mesh, shard), ckpt=ckpt, logger=logger, steps=args.steps,
              log_every=1, checkpoint_every=1, desc=STAGE, on_batch=on_batch, watchdog_s=cfg.watchdog_s)
    print(f"{STAGE}: finished {args.steps} steps")


if __name__ == "__main__":
    main()
