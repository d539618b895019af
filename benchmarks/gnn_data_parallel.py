"""Data-parallel GNN training throughput: P `jax.distributed` processes against one.

    python -m benchmarks.gnn_data_parallel --data DATA --graph GRAPH [--processes 1 2] [--steps 20]

For each P, starts P processes on localhost (one CPU device each), which train the GNN
(`gnn_id_cat` inputs, config defaults otherwise) data-parallel on batches of `sampler.batch_size`
pairs split P ways (star_jax.gnn.distributed). Each process samples its parts of a batch, then runs
the train step, one after the other (no prefetch), for 2 warm-up steps (the compile) and `--steps`
timed ones. Prints, per P, each process's steps/s, sampled edges/s, its seconds per step spent
sampling and in the step (the step includes waiting for the slowest process at the all-reduce) and
its peak RSS. `--cores-per-process C` pins process i to cores [iC, (i+1)C), so P processes do not
share cores; `--batch-size` overrides `sampler.batch_size` (a 1-process run at
B / P pairs is a P-way run's share of the work without the collectives).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

WARMUP = 2


def worker(args: argparse.Namespace) -> None:
    import jax
    import numpy as np

    from star_jax.config import load_config
    from star_jax.gnn.distributed import DataParallel
    from star_jax.gnn.model import build_gnn
    from star_jax.gnn.run import fresh_state, make_gnn_optimizer
    from star_jax.gnn.train import training_pairs
    from star_jax.graph.sampler import NeighborSampler, batch_rng
    from star_jax.graph.tstore import open_graph
    from star_jax.parallel import initialize_distributed
    from star_jax.train_loop import Static

    sets = ["gnn.use_llm=false", f"gnn_train.steps={WARMUP + args.steps}"]
    if args.batch_size:
        sets.append(f"sampler.batch_size={args.batch_size}")
    if args.processes > 1:
        sets += [f"mesh.coordinator_address=localhost:{args.port}", f"mesh.num_processes={args.processes}",
                 f"mesh.process_id={args.process_id}"]
    cfg = load_config(None, sets)
    initialize_distributed(cfg.mesh)
    graph = open_graph(args.graph, cfg.graph)
    dp = DataParallel(cfg.mesh, cfg.sampler.batch_size)
    parts = dp.samplers(NeighborSampler(graph, cfg.sampler, parts=dp.ways))
    seeds = training_pairs(args.data, graph, cfg.gnn_train, cfg.sampler)
    gnn = build_gnn(cfg.gnn)
    optimizer, lr = make_gnn_optimizer(cfg.gnn_train)
    state, _ = fresh_state(gnn, optimizer, parts[0].sample(seeds[0], batch_rng(0, 0)), parts[0].layout, 0,
                           dp.mesh)
    step = dp.train_step(gnn, optimizer, lr)
    frozen = Static(parts[0].layout)
    sample_s = step_s = 0.0
    edges = 0
    for i in range(WARMUP + args.steps):
        t0 = time.perf_counter()
        batch = [s.sample(seeds[i], batch_rng(0, i)) for s in parts]
        batch = jax.tree.map(lambda *xs: np.stack(xs), *batch)
        t1 = time.perf_counter()
        state, metrics = step(state, frozen, dp.put(batch))
        jax.block_until_ready(metrics["loss"])
        t2 = time.perf_counter()
        if i >= WARMUP:
            sample_s, step_s = sample_s + t1 - t0, step_s + t2 - t1
            edges += int(np.asarray(batch.graph.edges["mask"]).sum())
    total = sample_s + step_s
    print(json.dumps({"process": args.process_id, "processes": args.processes,
                      "steps_per_s": args.steps / total, "edges_per_s": edges / total,
                      "sample_s": sample_s / args.steps, "step_s": step_s / args.steps,
                      "loss": float(metrics["loss"]),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--graph", required=True)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cores-per-process", type=int, default=0, help="pin each process to this many cores")
    p.add_argument("--batch-size", type=int, default=0, help="sampler.batch_size (default: the config's)")
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-processes", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.process_id is not None:
        args.processes = args.worker_processes
        worker(args)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for n in args.processes:
        port = str(free_port())
        me = [sys.executable, "-m", "benchmarks.gnn_data_parallel", "--data", args.data,
              "--graph", args.graph,
              "--steps", str(args.steps), "--port", port, "--worker-processes", str(n)]
        if args.batch_size:
            me += ["--batch-size", str(args.batch_size)]
        procs = []
        for i in range(n):
            c = args.cores_per_process
            cores = range(i * c, (i + 1) * c)
            pin = {"preexec_fn": lambda cores=cores: os.sched_setaffinity(0, cores)} if c else {}
            procs.append(subprocess.Popen([*me, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                                          text=True, **pin))
        rows = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
        for r in rows:
            print(f"{n} process(es), process {r['process']}: {r['steps_per_s']:.2f} steps/s, "
                  f"{r['edges_per_s']:,.0f} sampled edges/s, {r['sample_s'] * 1e3:.0f} ms sampling + "
                  f"{r['step_s'] * 1e3:.0f} ms train step per step, loss {r['loss']:.6f}, "
                  f"peak RSS {r['peak_rss_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
