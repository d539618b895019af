"""What every benchmark shares: machine details, the docs/benchmarks.md sections, timing and memory.

Benchmarks report ratios against a baseline measured in the same run on the same machine, never
absolute numbers alone: the CPU is shared, so absolute times move with the load (the tables record
the load average next to them).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed version of each package ('absent' when it is not installed)."""
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def machine_info(packages: Sequence[str] = ("numpy", "tensorstore", "ml_dtypes")) -> dict:
    """CPU model, cores, RAM, the current load and the versions of `packages`."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),  # other work sharing the cores
        "python": platform.python_version(),
        **versions(packages),
    }


def machine_line(m: dict, packages: Sequence[str]) -> str:
    """One markdown sentence: the machine, its load, and the library versions."""
    libs = ", ".join(f"{p} {m[p]}" for p in packages if p in m)
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, shared with other work "
            f"(1-minute load average {m['load_avg_1m']} at the end); Python {m['python']}, {libs}.")


def write_section(text: str, name: str, path: Path = DOCS) -> None:
    """Replace the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` in `path`
    (appended when the markers are missing); other sections are kept as they are."""
    from star_jax.fileio import atomic_write_text

    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, doc)


def write_json(result: Any, path: Path) -> None:
    from star_jax.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")


class PeakRSS:
    """Peak resident memory of this process while the `with` block runs, sampled every `interval`
    seconds, and the resident memory when it started: `peak - start` is the block's working set.

    Used on both sides of a comparison, so allocator differences count against whoever has them.
    """

    def __init__(self, interval: float = 0.005):
        self.interval, self.start, self.peak = interval, 0, 0
        self._proc = psutil.Process()
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.start


def time_steps(fn: Callable[[], Any], steps: int, warmup: int = 1) -> dict:
    """Run `fn` `warmup` times, then `steps` timed times (fn must block until its result is
    ready); the median step, every step, the RSS before the first call and the peak RSS over all
    calls (the warm-up included: allocators keep what the first step took)."""
    times = []
    with PeakRSS() as mem:
        for _ in range(warmup):
            fn()
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "steps_s": times, "rss_start": mem.start,
            "rss_peak": mem.peak}


def run_worker(module: str, args: Sequence[str], timeout: float = 900) -> dict:
    """`python -m module args...` in a fresh process; its last stdout line is a JSON object.

    One process per measurement: neither framework's thread pool or allocator sees the other's,
    and the process's memory is its own.
    """
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[1:])} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"
