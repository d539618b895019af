"""A `star-jax` command in a separate process that holds at a step until SIGTERM, for
tests/test_preemption.py.

    python tests/preempt_worker.py [--hold-at STEP --ready FILE] -- COMMAND ARGS...

Runs `star-jax COMMAND ARGS...` (star_jax.cli.main) and exits with its status. With `--hold-at S`
the training loop, after step S, writes FILE and waits until this process has been told of a
preemption, then asks as usual whether to stop: one process waits for its own SIGTERM handler,
processes joined through jax.distributed wait for the preemption notice that JAX's coordination
service publishes when any of them receives SIGTERM. So the signal lands at a known step, whatever
the speed of the machine.
"""

from __future__ import annotations

import argparse
import os
import sys

TIMEOUT = 300  # seconds to wait for the signal


def hold(step: int, ready: str, wait) -> None:
    from star_jax.train_loop import TrainLoop

    preempted = TrainLoop.preempted

    def held(self, s: int) -> bool:
        if s == step:
            with open(ready + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(ready + ".tmp", ready)
            wait(self)
        return preempted(self, s)

    TrainLoop.preempted = held


def own_signal(loop) -> None:
    # Short waits: a SIGTERM the kernel hands to another thread wakes no long wait of the main
    # thread, whose Python handler then runs only when the wait ends.
    for _ in range(TIMEOUT * 10):
        if loop.preemption.requested.wait(0.1):
            return
    raise TimeoutError(f"no SIGTERM within {TIMEOUT}s")


def notice(loop) -> None:
    # The key XLA's preemption sync manager sets in the coordination service on a SIGTERM.
    from jax._src import distributed

    distributed.global_state.client.blocking_key_value_get("RECEIVED_PREEMPTION_NOTICE", TIMEOUT * 1000)


def wait_for_signal(loop) -> None:
    (notice if loop.preemption.collective else own_signal)(loop)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hold-at", type=int, default=None)
    p.add_argument("--ready", default=None)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.hold_at is not None:
        hold(args.hold_at, args.ready, wait_for_signal)

    from star_jax import cli

    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
