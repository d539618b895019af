"""SIGTERM during training (star_jax.train_loop.Preemption): the loop finishes the step, checkpoints
it, and the stage exits with status 143 and one line on stderr; the same command then finishes the
run exactly as an uninterrupted one. In process on a toy loop, through `star-jax pretrain` in a
child process (tests/preempt_worker.py holds it at a step until the signal), and (slow) on two
processes joined through jax.distributed, which stop at the same step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from data_fixtures import write_tiny_data
from loop_fixtures import toy_problem

from star_jax.checkpoint import Checkpointer
from star_jax.config import TokenizerConfig
from star_jax.data.tokenizer import train_tokenizer
from star_jax.errors import Preempted
from star_jax.tracking import MetricsLogger, read_metrics
from star_jax.train_loop import Preemption, train

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "preempt_worker.py"
POD = TESTS.parent / "launch" / "gpu_pod.sh"
STEPS, HOLD_AT = 8, 5
# A pretrain small enough to compile in a few seconds; a checkpoint every 3 steps, so the one at
# HOLD_AT is the preemption's.
SETS = ["llm.arch.hidden_size=16", "llm.arch.intermediate_size=32", "llm.arch.num_hidden_layers=1",
        "llm.arch.num_attention_heads=2", "llm.arch.num_key_value_heads=1", f"pretrain.steps={STEPS}",
        "pretrain.batch_size=4", "pretrain.seq_len=16", "pretrain.lr=1e-2", "pretrain.warmup_steps=2",
        "pretrain.log_every=1", "pretrain.checkpoint_every=3"]
TIMEOUT = 600


# -- the handler -------------------------------------------------------------------------------


def test_the_handler_is_installed_only_while_the_loop_runs():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption(collective=False) as p:
        assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
        assert not p.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert p.requested.wait(10) and p.reached(2)
    assert signal.getsignal(signal.SIGTERM) == before


def test_outside_the_main_thread_nothing_is_installed():
    before, seen = signal.getsignal(signal.SIGTERM), []

    def run():
        with Preemption(collective=False) as p:
            seen.append((signal.getsignal(signal.SIGTERM), p.reached(1)))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert seen == [(before, False)]


# -- launch/gpu_pod.sh ------------------------------------------------------------------------

FAKE = """#!{python}
import os, signal, sys, threading
got = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: got.set())
with open(os.environ["FAKE_READY"], "w") as f:
    f.write(" ".join(sys.argv[1:]))
got.wait(60)
with open(os.environ["FAKE_DONE"], "w") as f:
    f.write("SIGTERM" if got.is_set() else "timeout")
sys.exit(143 if got.is_set() else 1)
"""


def test_gpu_pod_forwards_sigterm_and_exits_with_the_status_of_star_jax(tmp_path):
    fake = tmp_path / "star-jax"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    ready, done = tmp_path / "ready", tmp_path / "done"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "COORDINATOR_"))},
           "STAR_JAX": str(fake), "COORDINATOR_ADDRESS": "localhost:1", "NUM_PROCESSES": "1",
           "PROCESS_ID": "0", "FAKE_READY": str(ready), "FAKE_DONE": str(done)}
    with open(tmp_path / "pod.log", "w") as log:
        proc = subprocess.Popen(["bash", str(POD), "train-llm", "--out", "x"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    wait_for_files([ready], [proc], [tmp_path / "pod.log"])
    assert ready.read_text().startswith("train-llm --out x --set mesh.coordinator_address=localhost:1")
    proc.send_signal(signal.SIGTERM)  # to the script only: star-jax hears it through the script
    assert finish(proc) == [143], (tmp_path / "pod.log").read_text()
    assert done.read_text() == "SIGTERM"  # written before star-jax exited, so before the script did


# -- the loop, in process ----------------------------------------------------------------------


def toy_run(out: Path, *, signal_before: int | None = None) -> tuple[dict, list]:
    """Six steps of a least-squares fit to a grain stream of rows, checkpointed every 4 steps; with
    `signal_before` this process sends itself SIGTERM just before that step runs."""
    steps = 6
    toy = toy_problem(steps)

    def on_batch(step, batch):
        if step == signal_before:
            os.kill(os.getpid(), signal.SIGTERM)

    ckpt = Checkpointer(out / "checkpoints", fingerprint="toy")
    try:
        with MetricsLogger(out, tensorboard=False) as logger:
            state, _ = train(toy.state, toy.step, None, toy.batches, put=lambda b: b,
                             ckpt=ckpt, logger=logger, steps=steps, log_every=1, checkpoint_every=4,
                             desc="toy", on_batch=on_batch)
    finally:
        ckpt.close()
    return jax.device_get(state.params), train_records(out)


def train_records(out: Path) -> list:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == "train"]


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def test_the_loop_checkpoints_the_step_it_finished_and_resumes_exactly(tmp_path):
    reference = toy_run(tmp_path / "reference")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"^toy: stopped by SIGTERM after step 3 of 6, checkpointed in "):
        toy_run(tmp_path / "run", signal_before=3)
    assert signal.getsignal(signal.SIGTERM) == before
    assert checkpoint_steps(tmp_path / "run") == [3]
    params, records = toy_run(tmp_path / "run")
    assert [r[0] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records == reference[1]
    np.testing.assert_array_equal(params["w"], reference[0]["w"])


# -- `star-jax pretrain` in child processes ----------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("preemption")
    data = write_tiny_data(root / "data")
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    # The runs compile the same programs: the first one's compilations serve the others.
    return {"data": str(data), "tok": str(tok), "cache": str(root / "xla_cache")}


def child_env(inputs: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_COMPILATION_CACHE_DIR": inputs["cache"], "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "HF_HUB_OFFLINE": "1"}


def start(inputs: dict, out: Path, name: str, *, hold: bool = False,
          process: tuple[int, int, int] | None = None) -> subprocess.Popen:
    """`star-jax pretrain` into `out` as a child process, its stdout and stderr in out.parent/NAME.out
    and NAME.err; `hold`: held after step HOLD_AT until SIGTERM, with NAME.ready written there;
    `process`: (id, count, port) of a jax.distributed job on localhost."""
    sets = list(SETS)
    if process is not None:
        pid, count, port = process
        sets += [f"mesh.coordinator_address=localhost:{port}", f"mesh.num_processes={count}",
                 f"mesh.process_id={pid}"]
    held = ["--hold-at", str(HOLD_AT), "--ready", str(out.parent / f"{name}.ready")] if hold else []
    command = [sys.executable, str(WORKER), *held, "--", "pretrain", "--data", inputs["data"],
               "--tokenizer", inputs["tok"], "--out", str(out), *[a for kv in sets for a in ("--set", kv)]]
    with open(out.parent / f"{name}.out", "w") as stdout, open(out.parent / f"{name}.err", "w") as stderr:
        return subprocess.Popen(command, env=child_env(inputs), stdout=stdout, stderr=stderr)


def stderr_of(out: Path, name: str) -> str:
    return (out.parent / f"{name}.err").read_text()


def finish(*procs: subprocess.Popen) -> list[int]:
    """The exit statuses; kills them all if one runs past TIMEOUT."""
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(TIMEOUT))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    return codes


def wait_for_files(paths: list[Path], procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Until every path exists; fails at once if a process ends first, or after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not all(p.exists() for p in paths):
        ended = [(p.returncode, log) for p, log in zip(procs, logs) if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            tails = "\n".join(f"exit {code}: {log.read_text()[-3000:]}" for code, log in ended)
            pytest.fail(f"no {[str(p) for p in paths if not p.exists()]} in time\n{tails}")
        time.sleep(0.05)


def assert_preempted(err: str, out: Path, step: int) -> None:
    lines = [line for line in err.splitlines() if line.startswith("star-jax:")]
    assert lines == [f"star-jax: error: pretrain: stopped by SIGTERM after step {step} of {STEPS}, "
                     f"checkpointed in {out / 'checkpoints'}; rerun the same command to resume"], err[-3000:]
    assert err.rstrip().endswith(lines[0]) and "Traceback" not in err


def assert_same_run(out: Path, reference: Path) -> None:
    assert [r[0] for r in train_records(out)] == list(range(1, STEPS + 1))  # no step lost or repeated
    assert train_records(out) == train_records(reference)  # losses, gradient norms, lrs: exactly
    assert json.loads((out / "result.json").read_text())["final_loss"] == \
        json.loads((reference / "result.json").read_text())["final_loss"]
    weights = "model/model.safetensors"
    assert (out / weights).read_bytes() == (reference / weights).read_bytes()


def test_sigterm_stops_pretrain_with_143_and_a_rerun_finishes_like_an_uninterrupted_run(inputs, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert finish(start(inputs, reference, "reference")) == [0], \
        stderr_of(reference, "reference")[-3000:]

    proc = start(inputs, out, "held", hold=True)
    wait_for_files([tmp_path / "held.ready"], [proc], [tmp_path / "held.err"])
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == [143], stderr_of(out, "held")[-3000:]
    assert_preempted(stderr_of(out, "held"), out, HOLD_AT)
    assert checkpoint_steps(out) == [3, HOLD_AT] and not (out / "result.json").exists()
    assert [r[0] for r in train_records(out)] == list(range(1, HOLD_AT + 1))

    assert finish(start(inputs, out, "rerun")) == [0], stderr_of(out, "rerun")[-3000:]
    assert f"resumed from the step-{HOLD_AT} checkpoint" in stderr_of(out, "rerun")
    assert_same_run(out, reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(inputs: dict, out: Path, name: str, *, hold: bool = False) -> list[subprocess.Popen]:
    port = free_port()
    return [start(inputs, out, f"{name}{i}", hold=hold, process=(i, 2, port)) for i in range(2)]


@pytest.mark.slow  # three two-process jobs that each import the stack and compile: a minute or two
def test_two_processes_stop_at_the_same_step_and_resume_exactly(inputs, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    codes = finish(*two_processes(inputs, reference, "reference"))
    assert codes == [0, 0], "".join(stderr_of(reference, f"reference{i}")[-3000:] for i in range(2))

    procs = two_processes(inputs, out, "held", hold=True)
    wait_for_files([tmp_path / "held0.ready", tmp_path / "held1.ready"], procs,
                   [tmp_path / "held0.err", tmp_path / "held1.err"])
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = finish(*procs)
    errs = [stderr_of(out, f"held{i}") for i in range(2)]
    assert codes == [143, 143], errs[0][-3000:] + errs[1][-3000:]
    # JAX's sync point: the largest step a process had reported when the notice came, plus one.
    step = checkpoint_steps(out)[-1]
    assert step in (HOLD_AT, HOLD_AT + 1) and not (out / "result.json").exists()
    for err in errs:
        assert_preempted(err, out, step)
    assert [r[0] for r in train_records(out)] == list(range(1, step + 1))

    codes = finish(*two_processes(inputs, out, "rerun"))
    assert codes == [0, 0], "".join(stderr_of(out, f"rerun{i}")[-3000:] for i in range(2))
    assert_same_run(out, reference)
