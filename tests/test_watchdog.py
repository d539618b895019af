"""The training loop's watchdog (star_jax.watchdog): a process whose batch iterator blocks, or whose
peer died, ends with exit status 75 and one line naming the stage, the process and the last step,
and a rerun resumes; a slow but live loop, or a long evaluation that updates its progress bar, runs
on. In process (the stop replaced by a recorder), and in child processes (tests/watchdog_worker.py),
one of them a two-process jax.distributed job whose peer is SIGKILLed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loop_fixtures import toy_problem

from star_jax import watchdog
from star_jax.checkpoint import Checkpointer
from star_jax.config import MeshConfig
from star_jax.errors import StarError
from star_jax.tracking import MetricsLogger, progress, read_metrics
from star_jax.train_loop import TrainLoop

WORKER = Path(__file__).resolve().parent / "watchdog_worker.py"
TIMEOUT = 120  # seconds a child may take before the test fails (they take seconds)


def stop_line(stage: str, process: str, last: str, timeout_s: str) -> str:
    """The pattern of the watchdog's line."""
    return (rf"{re.escape(stage)}: process {process} made no progress for \d+ s \({last}; "
            rf"mesh\.watchdog_s={timeout_s}\): its input pipeline stalled or a peer process died"
            r"( \(after [^\n]*\))?; stopping with exit status 75, rerun the same command to resume")


# -- the watchdog alone ----------------------------------------------------------------------------


class Stops:
    """Stands in for `watchdog.stop_process`: records the lines; `fired` is set at the first."""

    def __init__(self):
        self.lines: list[str] = []
        self.fired = threading.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.fired.set()


def test_without_beats_it_reports_the_stage_process_and_last_step_once():
    stops = Stops()
    with watchdog.Watchdog(0.2, "train-gnn gnn_id_cat", process=(1, 2), on_stall=stops) as dog:
        dog.stepped(41)
        assert stops.fired.wait(60)
    assert len(stops.lines) == 1
    assert re.fullmatch(stop_line("train-gnn gnn_id_cat", "1 of 2", "last at step 41", "0.2"), stops.lines[0])


def test_before_the_first_step_it_allows_twice_the_timeout():
    stops = Stops()
    with watchdog.Watchdog(1.0, "pretrain", on_stall=stops):
        assert stops.fired.wait(60)
    assert re.fullmatch(stop_line("pretrain", "0 of 1", "no step finished yet", "1"), stops.lines[0])
    idle = int(re.search(r"for (\d+) s", stops.lines[0]).group(1))
    assert idle >= watchdog.FIRST_STEP_FACTOR  # it fires only once the idle time reached the allowance


def test_off_at_zero_and_progress_bars_beat_only_the_running_watchdog():
    with watchdog.Watchdog(0, "x"):
        assert watchdog.running() is None
    stops = Stops()
    with watchdog.Watchdog(3600, "x", on_stall=stops) as dog:
        assert watchdog.running() is dog
        before = dog.last_beat
        for _ in progress(range(3)):  # iterated
            pass
        assert dog.last_beat > before
        before = dog.last_beat
        with progress(total=1) as bar:  # updated
            bar.update()
        assert dog.last_beat > before
    assert watchdog.running() is None and not stops.lines


def test_mesh_watchdog_s_is_checked():
    assert MeshConfig().watchdog_s == 1800.0 and MeshConfig(watchdog_s=0).watchdog_s == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(StarError, match=r"^mesh\.watchdog_s: must be a number of seconds >= 0"):
            MeshConfig(watchdog_s=bad)


# -- the training loop, in process -----------------------------------------------------------------


class NoStartEval(TrainLoop):
    eval_at_start = False


def toy_loop(out: Path, stops: Stops, *, steps: int, pause: float, eval_at: int, evaluate) -> TrainLoop:
    """A toy loop whose batches each arrive `pause` s late, evaluated at step `eval_at`, with
    `mesh.watchdog_s = 4` (the watchdog's stop replaced by `stops` through monkeypatch)."""
    toy = toy_problem(steps)
    # compiled first, so that the first step is as quick as the others
    toy.step(jax.tree.map(jnp.copy, toy.state), None, {"x": np.zeros((2, 4), np.float32)})
    ckpt = Checkpointer(out / "checkpoints", fingerprint="toy")
    try:
        with MetricsLogger(out, tensorboard=False) as logger:
            loop = NoStartEval(toy.step, None, toy.batches, put=lambda b: b, ckpt=ckpt, logger=logger,
                               steps=steps, log_every=1, checkpoint_every=100, desc="toy",
                               eval_every=eval_at, evaluate=evaluate,
                               on_batch=lambda step, batch: time.sleep(pause), watchdog_s=4)
            loop.run(toy.state)
    finally:
        ckpt.close()
    return loop


def test_a_slow_loop_and_a_long_evaluation_with_a_progress_bar_are_not_stopped(tmp_path, monkeypatch):
    stops = Stops()
    monkeypatch.setattr(watchdog, "stop_process", stops)

    def evaluate(state):  # 4.2 s, longer than the timeout, in 0.35 s steps of its bar
        with progress(total=12, desc="eval") as bar:
            for _ in range(12):
                time.sleep(0.35)
                bar.update()
        return {"auc": 0.5}

    # 12 batches 0.35 s apart: 4.2 s in all, longer than the timeout too
    loop = toy_loop(tmp_path, stops, steps=12, pause=0.35, eval_at=7, evaluate=evaluate)
    assert stops.lines == []
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in records if r["split"] == "val"] == [7]
    assert loop.watchdog.step == 12 and watchdog.running() is None


def test_an_evaluation_without_progress_is_caught(tmp_path, monkeypatch):
    """The control: an evaluation silent until the watchdog spoke (then the loop goes on)."""
    stops = Stops()
    monkeypatch.setattr(watchdog, "stop_process", stops)

    def evaluate(state):
        assert stops.fired.wait(60), "the watchdog never spoke"
        return {"auc": 0.5}

    toy_loop(tmp_path, stops, steps=2, pause=0.0, eval_at=1, evaluate=evaluate)
    assert len(stops.lines) == 1
    assert re.fullmatch(stop_line("toy", "0 of 1", "last at step 1", "4"), stops.lines[0])


# -- child processes -------------------------------------------------------------------------------


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def start(out: Path, name: str, *args: str) -> subprocess.Popen:
    """tests/watchdog_worker.py OUT ARGS, stdout and stderr in out.parent/NAME.out and NAME.err."""
    with open(out.parent / f"{name}.out", "w") as stdout, open(out.parent / f"{name}.err", "w") as stderr:
        return subprocess.Popen([sys.executable, str(WORKER), str(out), *args], env=child_env(),
                                stdout=stdout, stderr=stderr)


def finish(*procs: subprocess.Popen) -> list[int]:
    """The exit statuses; kills them all if one runs past TIMEOUT (a hang the watchdog missed)."""
    deadline = time.monotonic() + TIMEOUT
    try:
        return [p.wait(max(deadline - time.monotonic(), 0.1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def stop_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "made no progress" in line]  # splitlines: tqdm's \r too


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def test_a_blocked_batch_iterator_stops_the_process_in_one_line_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    code = finish(start(out, "stalled", "--watchdog", "5", "--steps", "4", "--block-at", "3"))
    err = (tmp_path / "stalled.err").read_text()
    assert code == [watchdog.STALLED], err[-3000:]
    lines = stop_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert re.fullmatch(stop_line("toy-stage", "0 of 1", "last at step 2", "5"), lines[0]), lines[0]
    assert "Traceback" not in err
    committed = checkpoint_steps(out)
    assert committed and max(committed) <= 2  # what the stopped run left: whole steps only

    assert finish(start(out, "rerun", "--watchdog", "60", "--steps", "4")) == [0]
    err = (tmp_path / "rerun.err").read_text()
    assert f"resumed from the step-{max(committed)} checkpoint" in err, err[-3000:]
    assert checkpoint_steps(out)[-1] == 4 and not stop_lines(err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_the_survivor_of_a_dead_peer_stops_in_one_line_instead_of_hanging(tmp_path):
    """Two jax.distributed processes; process 1 SIGKILLs itself before step 2. Process 0's step-2
    all-reduce fails (gloo: connection closed) and its step-1 checkpoint then waits for the dead
    peer at orbax's barrier, where JAX's coordination service would abort it only after its
    heartbeat timeout (about 100 s, with a C++ stack): the watchdog stops it first."""
    out, port = tmp_path / "two", str(free_port())
    join = ["--watchdog", "5", "--steps", "4", "--num-processes", "2", "--port", port]
    procs = [start(out, "survivor", *join, "--process-id", "0"),
             start(out, "killed", *join, "--process-id", "1", "--kill-at", "2")]
    codes = finish(*procs)
    err = (tmp_path / "survivor.err").read_text()
    assert codes == [watchdog.STALLED, -9], err[-3000:]
    lines = stop_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert re.fullmatch(stop_line("toy-stage", "0 of 2", "last at step 1", "5"), lines[0]), lines[0]
