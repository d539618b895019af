"""launch/gpu_pod.sh and launch/local.sh: who leads under SLURM or from the environment, what each
process runs, and two real local processes joined through jax.distributed."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
POD, LOCAL = REPO / "launch" / "gpu_pod.sh", REPO / "launch" / "local.sh"
VENV_STAR_JAX = str(Path(sys.executable).with_name("star-jax"))  # a pipeline dry run asks it for the plan
CLEAN = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "COORDINATOR_", "NUM_PROCESSES", "PROCESS_ID"))}


def sh(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env={**CLEAN, "STAR_JAX": "star-jax", **(env or {})},
                          capture_output=True, text=True, timeout=60)


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def test_slurm_dry_run_prints_every_host_with_the_first_host_as_coordinator(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[07-09]" ] && '
                                   'printf "gpu-07\\ngpu-08\\ngpu-09\\n"\n')
    (fake / "scontrol").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_PROCID": "2", "SLURM_NTASKS": "3",
           "SLURM_JOB_NODELIST": "gpu-[07-09]"}
    out = sh(POD, "--dry-run", "--port", "4321", "train-llm", "--config", "c.yaml", "--out", "r d", env=env)
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith("#")][1] == \
        "# process 1 of 3 on gpu-08 (coordinator gpu-07:4321)"
    cmds = commands(out.stdout)
    assert len(cmds) == 3
    for pid, cmd in enumerate(cmds):
        assert cmd == ["star-jax", "train-llm", "--config", "c.yaml", "--out", "r d",
                       "--set", "mesh.coordinator_address=gpu-07:4321", "--set", "mesh.num_processes=3",
                       "--set", f"mesh.process_id={pid}"]


def test_environment_dry_run_defaults_to_the_pipeline():
    env = {"COORDINATOR_ADDRESS": "10.0.0.1:555", "NUM_PROCESSES": "2", "STAR_JAX": VENV_STAR_JAX}
    out = sh(POD, "--dry-run", "--config", "configs/tiny.yaml", "--out", "runs/x", env=env)
    assert out.returncode == 0, out.stderr
    cmds = commands(out.stdout)
    assert [c[:2] for c in cmds] == [[VENV_STAR_JAX, "pipeline"]] * 2
    assert [c[-1] for c in cmds] == ["mesh.process_id=0", "mesh.process_id=1"]
    assert all("mesh.coordinator_address=10.0.0.1:555" in c for c in cmds)


def test_a_pipeline_dry_run_lists_the_stages_of_every_process():
    """The GNN stages run on every host; process 0 alone runs the others (`star-jax pipeline --plan`)."""
    env = {"COORDINATOR_ADDRESS": "10.0.0.1:555", "NUM_PROCESSES": "3", "STAR_JAX": VENV_STAR_JAX}
    out = sh(POD, "--dry-run", "pipeline", "--config", "configs/tiny.yaml", "--out", "runs/x",
             "--set", "eval.variants=[llm_finetuned,gnn_id_cat]", env=env)
    assert out.returncode == 0, out.stderr
    stages = {int(line.split()[2][:-1]): line.split(": ", 1)[1].split(", ")
              for line in out.stdout.splitlines() if line.startswith("#   process ")}
    collective = ["pretrain", "train-llm", "embed-llm_finetuned",
                  "train-gnn-gnn_id_cat", "gnn-embed-gnn_id_cat"]
    assert stages[0] == ["synth", "validate", "tokenizer", *collective[:3], "build-graph", *collective[3:],
                         "evaluate"]
    assert stages[1] == stages[2] == collective
    bad = sh(POD, "--dry-run", "pipeline", "--out", "runs/x", "--set", "eval.variants=[nope]", env=env)
    assert bad.returncode == 2 and "nope" in bad.stderr and "--plan failed" in bad.stderr


@pytest.mark.parametrize("env, needle", [
    ({}, "COORDINATOR_ADDRESS"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2"}, "PROCESS_ID"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "2"}, "not in [0, 2)"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "two", "PROCESS_ID": "0"}, "positive integer"),
])
def test_missing_or_bad_settings_fail_in_one_line(env, needle):
    out = sh(POD, "pipeline", "--out", "x", env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr


def test_local_dry_run_simulates_cpu_devices():
    out = sh(LOCAL, "--cpu-devices", "4", "--dry-run", "evaluate", "--run", "runs/demo")
    assert out.returncode == 0, out.stderr
    env_line, cmd = out.stdout.strip().splitlines()
    assert "JAX_PLATFORMS=cpu" in env_line and "--xla_force_host_platform_device_count=4" in env_line
    assert shlex.split(cmd) == ["star-jax", "evaluate", "--run", "runs/demo"]
    assert sh(LOCAL, "--cpu-devices", "0", "--dry-run").returncode == 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from data_fixtures import write_tiny_data
    from hf_fixtures import build_checkpoint

    from star_jax.config import TokenizerConfig
    from star_jax.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("launch")
    data = write_tiny_data(root / "data")
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    build_checkpoint(root / "base", vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
    return {"data": str(data), "tok": str(tok), "base": str(root / "base")}


MICRO = ["llm.member_max_len=48", "llm.job_max_len=48", "llm.buckets=[]", "lora.rank=2",
         "llm_train.steps=3", "llm_train.batch_size=8", "llm_train.warmup_steps=1", "llm_train.log_every=1",
         "llm_train.eval_every=0", "llm_train.eval_batch_size=16", "llm_train.checkpoint_every=3",
         "llm_train.calibration_pairs=0"]


@pytest.mark.slow  # two processes that each import the stack and compile: about a minute and a half
def test_two_local_processes_train_together(inputs, tmp_path):
    """`train-llm` through gpu_pod.sh as processes 0 and 1 of one job: one global mesh of their two
    CPU devices, the same batches and steps on both, so both finish with the same numbers, and those
    of the same config trained in this process on one device."""
    import jax

    from star_jax.config import load_config
    from star_jax.llm.train import train_llm
    from star_jax.tracking import read_metrics

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = ["train-llm", "--data", inputs["data"], "--tokenizer", inputs["tok"], "--base", inputs["base"],
            "--out", str(out), *[a for kv in MICRO for a in ("--set", kv)]]
    env = {**CLEAN, "COORDINATOR_ADDRESS": f"localhost:{port}", "NUM_PROCESSES": "2", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:  # files, not pipes: nothing can block on a full pipe
            procs.append(subprocess.Popen(["bash", str(POD), *args], env={**env, "PROCESS_ID": str(i)},
                                          stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 900
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    finals = [[line for line in t.splitlines() if line.startswith("train-llm: test AUC")] for t in texts]
    assert len(finals[0]) == 1 and finals[0] == finals[1]  # the same metrics, computed by both processes
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    one = tmp_path / "one"
    train_llm(load_config(None, MICRO), inputs["data"], inputs["tok"], inputs["base"], one,
              devices=jax.devices()[:1])
    expected = [r["loss"] for r in read_metrics(one / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == len(expected) == 3  # process 0 logged every step
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-4)
    assert (out / "adapters" / "shared").is_dir()
