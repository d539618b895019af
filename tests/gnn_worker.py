"""`star-jax train-gnn` in a separate process, held before one step for the test to SIGKILL it.

    python tests/gnn_worker.py --hold-at STEP --after-checkpoint STEP --ready FILE -- train-gnn ARGS...

Runs the CLI with ARGS. Just before train step `--hold-at` runs, once the checkpoint of step
`--after-checkpoint` is committed (orbax renames its temporary directory to the step number last),
it writes FILE and waits to be killed, the way a preempted job is caught mid-run; tests/test_gnn_train.py
then sends SIGKILL, so no `finally` and no exit hook runs. Exit status 3: not killed within 300 s;
4: the checkpoint was not committed within 120 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hold-at", type=int, required=True)
    p.add_argument("--after-checkpoint", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    out = argv[argv.index("--out") + 1]

    from star_jax import cli
    from star_jax.gnn import train as train_module

    make_train_step = train_module.make_train_step
    calls = []

    def holding(*a, **kw):
        step = make_train_step(*a, **kw)

        def hold_before_step(*sa):
            calls.append(1)
            if len(calls) == args.hold_at:
                committed = os.path.join(out, "checkpoints", str(args.after_checkpoint))
                deadline = time.monotonic() + 120
                while not os.path.isdir(committed):  # a poll with a deadline: the async save is writing
                    if time.monotonic() > deadline:
                        os._exit(4)
                    time.sleep(0.05)
                with open(args.ready, "w") as f:
                    f.write(str(os.getpid()))
                threading.Event().wait(300)  # the test kills this process here
                os._exit(3)
            return step(*sa)

        return hold_before_step

    train_module.make_train_step = holding
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    main()
