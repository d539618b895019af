"""Data-parallel `train-gnn` (star_jax.gnn.distributed) against the one-device run.

The parts of a batch (`NeighborSampler(parts=P)`) give each seed the embedding the whole batch
gives it, under the model itself; `gnn_train.data_parallel` over this process's 8 simulated devices,
and 2 (and, slow, 4 with adaptive fan-outs) `jax.distributed` processes of one CPU device each
(tests/gnn_dp_worker.py) train to the one-device run's losses, parameters and val AUCs, each
process sampling 1/P of the seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import graph_fixtures as gf
import jax
import numpy as np
import pytest

from star_jax import watchdog
from star_jax.checkpoint import DIGESTS, file_digests
from star_jax.config import StoreConfig, load_config
from star_jax.errors import StarError
from star_jax.gnn.cold_start import ColdStartSampler
from star_jax.gnn.export import gnn_embed
from star_jax.gnn.features import open_features
from star_jax.gnn.model import build_gnn
from star_jax.gnn.run import load_run
from star_jax.gnn.train import train_gnn, training_pairs
from star_jax.graph.sampler import NeighborSampler, batch_rng
from star_jax.store import EmbeddingStore
from star_jax.tracking import read_metrics

WORKER = Path(__file__).with_name("gnn_dp_worker.py")
TIMEOUT = 900  # seconds the children of one test may take (compiling is most of it)
VARIANT = "gnn_id_cat_llm"
LLM_DIM = 8
SETS = [
    "gnn.hidden_dim=16", "gnn.out_dim=8", "gnn.llm_block=4", "gnn.attribute_block=2",
    "gnn.heads=2", "gnn.layers=1",
    "gnn.id_buckets=64", "gnn.cat_dim=4", "gnn.cat_buckets=16",
    "sampler.batch_size=8", "sampler.num_random_negatives=3", "sampler.fanouts=[2,2]",
    "gnn_train.steps=4", "gnn_train.eval_every=2", "gnn_train.checkpoint_every=2", "gnn_train.log_every=1",
    "gnn_train.warmup_steps=1", "gnn_train.lr=0.01", "gnn_train.eval_batch_size=2", "gnn_train.eval_pairs=0",
    "gnn_train.keep_best=false", "gnn_train.llm_block_gains=[1.0]",
]
# Two fan-out stages: (1, 1), then (2, 2) from the second evaluation on (a tolerance of 1 always plateaus).
ADAPTIVE = [*SETS, "sampler.adaptive=true", "sampler.start_fanouts=[1,1]", "sampler.plateau_tolerance=1.0",
            "gnn_train.steps=6"]


Env = gf.GraphEnv


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return gf.graph_env(tmp_path_factory.mktemp("gnn_dp"), LLM_DIM)


def run(env: Env, out: str, sets: list[str]) -> dict:
    return train_gnn(load_config(None, sets), env.data, env.graph_dir, env.root / out, VARIANT,
                     store_root=env.features, store_version="v1")


@pytest.fixture(scope="module")
def one_device(env) -> str:
    run(env, "one", SETS)
    return "one"


# -- the parts of a batch ----------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 4])
def test_the_parts_of_a_batch_give_every_seed_its_whole_batch_embedding(env, parts):
    cfg = load_config(None, SETS)
    features, _ = open_features(env.graph, env.features, "v1", cfg.store)
    seeds = training_pairs(env.data, env.graph, cfg.gnn_train, cfg.sampler)
    whole = ColdStartSampler(NeighborSampler(env.graph, cfg.sampler, features=features), 0.5)
    split = NeighborSampler(env.graph, cfg.sampler, features=features, parts=parts)
    gnn = build_gnn(cfg.gnn)
    embed = jax.jit(gnn.seed_embeddings, static_argnums=2)
    b, k = split.layout.num_pairs, split.layout.num_negatives
    assert b * parts == cfg.sampler.batch_size and split.global_layout == whole.layout
    for index in (0, 3):
        batch = whole.sample(seeds[index], batch_rng(0, index))
        params = gnn.init(jax.random.key(0), batch, whole.layout)
        members, jobs = map(np.asarray, embed(params, batch, whole.layout))
        for p in range(parts):
            part = ColdStartSampler(split.for_part(p), 0.5).sample(seeds[index], batch_rng(0, index))
            assert part.pair_mask.sum() == b  # training batches are full
            m, j = map(np.asarray, embed(params, part, split.layout))
            np.testing.assert_allclose(m, members[p * b: (p + 1) * b], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(j[:b], jobs[p * b: (p + 1) * b], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(j[b:], jobs[-k:], rtol=1e-5, atol=1e-6)  # the shared negatives


# -- training ----------------------------------------------------------------------------------------


def assert_same_run(env: Env, a: str, b: str) -> None:
    """Losses and parameters within 1e-5 relative, val AUCs within 1e-4, fan-outs at the same steps."""
    ra, rb = (json.loads((env.root / d / "result.json").read_text()) for d in (a, b))
    la, lb = ([r["loss"] for r in read_metrics(env.root / d / "metrics.jsonl") if r["split"] == "train"]
              for d in (a, b))
    assert len(la) == len(lb) == ra["steps"]
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    assert [h["step"] for h in ra["val_history"]] == [h["step"] for h in rb["val_history"]]
    assert [h["fanouts"] for h in ra["val_history"]] == [h["fanouts"] for h in rb["val_history"]]
    for ha, hb in zip(ra["val_history"], rb["val_history"]):
        assert hb["auc"] == pytest.approx(ha["auc"], abs=1e-4)
    assert rb["val_auc"] == pytest.approx(ra["val_auc"], abs=1e-4) and ra["fanouts"] == rb["fanouts"]
    features, _ = open_features(env.graph, env.features, "v1", StoreConfig())
    pa, pb = (load_run(env.root / d, env.graph, features).params for d in (a, b))

    def close(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(y - x) <= 1e-5 * max(np.linalg.norm(x), 1e-6)

    jax.tree.map(close, pa, pb)


def test_data_parallel_over_this_process_devices_trains_like_one_device(env, one_device):
    result = run(env, "dp8", [*SETS, "gnn_train.data_parallel=true"])
    assert jax.device_count() == 8 and result["train_step_compiles"] == result["layouts"] == 1
    assert_same_run(env, one_device, "dp8")


def killed_after(env: Env, src: str, out: str, step: int, states: list[str] | None = None) -> Path:
    """A copy of run `src` as a run killed just after its step-`step` checkpoint; `states`: that
    checkpoint's grain iterator files replaced by one per process of a `len(states)`-process run."""
    run_dir = env.root / out
    shutil.copytree(env.root / src, run_dir)
    (run_dir / "result.json").unlink()
    for d in (run_dir / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ckpt = run_dir / "checkpoints" / str(step)
    if states is not None:
        for f in (ckpt / "data").glob("process_*.json"):
            f.unlink()
        for i, state in enumerate(states):
            (ckpt / "data" / f"process_{i}-of-{len(states)}.json").write_text(state)
        (ckpt / DIGESTS).write_text(json.dumps(file_digests(ckpt)))  # sealed as that run would have
    return run_dir


def test_a_run_saved_by_two_processes_resumes_in_one(env, one_device):
    state = (env.root / one_device / "checkpoints" / "2" / "data" / "process_0-of-1.json").read_text()
    killed_after(env, one_device, "recount", 2, [state, state])
    run(env, "recount", SETS)
    assert_same_run(env, one_device, "recount")
    # Iterator states that differ between processes cannot be mapped onto another count.
    other = json.dumps({"next_index": 3})
    killed_after(env, one_device, "recount_bad", 2, [state, other])
    with pytest.raises(StarError, match=r"checkpoints/2/data: 2 different iterator states.*process count"):
        run(env, "recount_bad", SETS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_processes(env: Env, out: str, sets: list[str], n: int, *, embed: list[str] = (),
                  kill_at: int | None = None) -> list[dict]:
    """`n` workers joined by jax.distributed; each one's inputs-<i>.json (none with `embed`, the
    worker's `--embed-into ROOT --embed-version V`: they export run `out` instead). `kill_at`: the
    last process SIGKILLs itself before that step; returns [{"code": exit status, "log": text}]."""
    name = f"{out}-embed" if embed else f"{out}-killed" if kill_at else out
    (env.root / f"{name}.json").write_text(json.dumps(sets))
    port, procs, logs = str(free_port()), [], []
    for i in range(n):
        logs.append(env.root / f"{name}-{i}.log")
        with open(logs[-1], "w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(env.root / f"{name}.json"), env.data, env.graph_dir,
                 str(env.root / out), VARIANT, "--store", env.features, "--process-id", str(i),
                 "--num-processes", str(n), "--port", port, *embed,
                 *(["--kill-at", str(kill_at)] if kill_at and i == n - 1 else [])],
                env=child_env(), stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    try:
        codes = [p.wait(max(deadline - time.monotonic(), 0.1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if kill_at:
        return [{"code": c, "log": log.read_text()} for c, log in zip(codes, logs)]
    assert codes == [0] * n, "\n".join(log.read_text()[-3000:] for log in logs)
    if embed:
        return []
    return [json.loads((env.root / out / f"inputs-{i}.json").read_text()) for i in range(n)]


def assert_even_inputs(inputs: list[dict], batch_size: int, steps: int) -> None:
    n = len(inputs)
    assert [i["batches"] for i in inputs] == [steps] * n
    assert sum(i["seeds"] for i in inputs) == batch_size * steps
    for i in inputs:
        assert abs(i["seeds"] - batch_size * steps / n) <= 0.02 * batch_size * steps / n
        assert i["feature_rows"] > 0


@pytest.mark.slow  # two JAX processes compiling on two cores: about a minute
def test_two_processes_train_like_one_device(env, one_device):
    inputs = run_processes(env, "two", SETS, 2)
    assert_even_inputs(inputs, 8, 4)
    assert_same_run(env, one_device, "two")
    # Killed after its step-2 checkpoint, the 2-process run resumes in this one process.
    killed_after(env, "two", "two_then_one", 2)
    assert sorted(p.name for p in (env.root / "two_then_one/checkpoints/2/data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    run(env, "two_then_one", SETS)
    assert_same_run(env, one_device, "two_then_one")


@pytest.mark.slow
def test_four_processes_with_adaptive_fanouts_train_like_one_device(env):
    run(env, "one_adaptive", ADAPTIVE)
    inputs = run_processes(env, "four", ADAPTIVE, 4)
    assert_even_inputs(inputs, 8, 6)
    assert_same_run(env, "one_adaptive", "four")
    history = json.loads((env.root / "four" / "result.json").read_text())["val_history"]
    assert [h["fanouts"] for h in history] == [[1, 1], [1, 1], [2, 2]]  # grown at the second evaluation


@pytest.mark.slow  # two JAX processes compiling on two cores
def test_two_processes_export_what_one_does(env, one_device):
    """`gnn-embed` over 2 processes: each embeds every other batch, process 0 writes one version,
    equal to the one-process export row for row."""
    cfg, store = load_config(None, SETS), env.root / "gnn_store"
    gnn_embed(cfg, env.graph_dir, env.root / one_device, store, "one", store_root=env.features,
              store_version="v1")
    run_processes(env, one_device, SETS, 2, embed=["--embed-into", str(store), "--embed-version", "two"])
    one, two = (EmbeddingStore.open(store, v) for v in ("one", "two"))
    for t in ("member", "job"):
        ids = np.asarray(env.graph.ids[t])
        assert len(ids) > 2 * cfg.gnn_train.eval_batch_size  # batches for both processes
        np.testing.assert_allclose(two.lookup(t, ids), one.lookup(t, ids), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # two JAX processes, twice
def test_a_killed_process_stops_the_other_in_one_line_and_a_rerun_resumes(env, one_device):
    sets = [*SETS, "mesh.watchdog_s=45"]  # above the first step's compile; not in the run's fingerprint
    survivor, killed = run_processes(env, "killed", sets, 2, kill_at=3)
    assert killed["code"] == -9 and survivor["code"] == watchdog.STALLED, survivor["log"][-3000:]
    # Its next all-gather fails (gloo: connection closed), or, had it blocked, the watchdog fires.
    lines = [line for line in survivor["log"].splitlines() if "process 0 of 2" in line]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0], survivor["log"][-3000:]
    assert "stopped after step 2: a collective failed" in lines[0] or "last at step 2" in lines[0]
    assert "Traceback" not in survivor["log"] and "Check failure" not in survivor["log"]
    assert not (env.root / "killed" / "result.json").exists()
    run_processes(env, "killed", sets, 2)  # the same command again: resumes from step 2
    assert_same_run(env, one_device, "killed")
