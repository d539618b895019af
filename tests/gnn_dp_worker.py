"""`train_gnn` (or `gnn_embed`) as one process of a data-parallel job, for tests/test_gnn_distributed.py.

    python tests/gnn_dp_worker.py SETS.json DATA GRAPH OUT VARIANT [--store ROOT]
        [--process-id I --num-processes N --port PORT] [--embed-into ROOT --embed-version V]
        [--kill-at STEP]

SETS.json holds the config's `--set` overrides. `--num-processes N` joins N processes through
`jax.distributed.initialize` with the coordinator on localhost:PORT. Training, every process writes
OUT/inputs-<I>.json: the training seeds and feature rows it sampled, and its batches' count.
`--embed-into`: export the trained run in OUT as version V of that store instead. `--kill-at K`:
before its K-th batch, once the step K - 1 checkpoint is committed, this process SIGKILLs itself
(exit status 4: that checkpoint was not committed within 120 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("sets", "data", "graph", "out", "variant"):
        p.add_argument(name)
    p.add_argument("--store", default=None)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--embed-into", default=None)
    p.add_argument("--embed-version", default=None)
    p.add_argument("--kill-at", type=int, default=None)
    args = p.parse_args()

    from star_jax.tracking import log_to_stderr

    log_to_stderr()
    import numpy as np

    from star_jax.config import load_config
    from star_jax.gnn import distributed
    from star_jax.gnn import train as train_module

    overrides = json.loads(Path(args.sets).read_text())
    if args.num_processes > 1:
        overrides += [f"mesh.coordinator_address=localhost:{args.port}",
                      f"mesh.num_processes={args.num_processes}", f"mesh.process_id={args.process_id}"]
    cfg = load_config(None, overrides)
    if args.embed_into:
        from star_jax.gnn.export import gnn_embed

        gnn_embed(cfg, args.graph, args.out, args.embed_into, args.embed_version, store_root=args.store,
                  store_version="v1" if args.store else None)
        return

    inputs = {"seeds": 0, "feature_rows": 0, "batches": 0}
    put = distributed.DataParallel.put

    def counting_put(self, batch):  # this process's parts of one training batch
        inputs["seeds"] += int(np.asarray(batch.pair_mask).sum())
        for t in batch.llm:  # each part looks up its distinct nodes once
            parts = np.asarray(batch.node_ids[t])
            inputs["feature_rows"] += sum(np.unique(ids[ids >= 0]).size for ids in parts)
        inputs["batches"] += 1
        if inputs["batches"] == args.kill_at:
            committed = Path(args.out, "checkpoints", str(args.kill_at - 1))  # orbax renames it last
            deadline = time.monotonic() + 120
            while not committed.is_dir():
                if time.monotonic() > deadline:
                    sys.exit(4)
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)
        return put(self, batch)

    distributed.DataParallel.put = counting_put
    train_module.train_gnn(cfg, args.data, args.graph, args.out, args.variant, store_root=args.store,
                           store_version="v1" if args.store else None)
    Path(args.out, f"inputs-{args.process_id}.json").write_text(json.dumps(inputs))


if __name__ == "__main__":
    main()
