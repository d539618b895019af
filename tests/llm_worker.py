"""`train_llm` in a separate process, for tests/test_train_llm.py.

    python tests/llm_worker.py CONFIG.yaml DATA TOKENIZER BASE OUT [--kill-at STEP --after-checkpoint STEP]
        [--process-id I --num-processes N --port PORT]

`--kill-at S` SIGKILLs this process just before step S runs, once the checkpoint of step
`--after-checkpoint` is committed (orbax renames its temporary directory to the step number last),
the way a preempted job dies (exit status 1 instead if that checkpoint is not committed in 120 s).
`--num-processes N` joins N processes through `jax.distributed.initialize` with the coordinator on
localhost:PORT.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("config", "data", "tokenizer", "base", "out"):
        p.add_argument(name)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--after-checkpoint", type=int, default=None)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args()

    from star_jax.config import load_config
    from star_jax.llm.train import train_llm

    overrides = []
    if args.num_processes > 1:
        overrides = [
            f"mesh.coordinator_address=localhost:{args.port}",
            f"mesh.num_processes={args.num_processes}",
            f"mesh.process_id={args.process_id}",
        ]
    cfg = load_config(args.config, overrides)

    def die(step: int, batch: dict) -> None:
        if step == args.kill_at:
            committed = Path(args.out) / "checkpoints" / str(args.after_checkpoint)
            deadline = time.monotonic() + 120
            while not committed.is_dir():  # a poll with a deadline: the async save is still writing
                if time.monotonic() > deadline:
                    raise SystemExit(f"llm_worker: {committed} not committed after 120 s")
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

    train_llm(cfg, args.data, args.tokenizer, args.base, args.out, on_batch=die if args.kill_at else None)


if __name__ == "__main__":
    main()
