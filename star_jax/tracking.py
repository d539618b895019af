"""Progress bars, metric logs and log set-up shared by every long stage.

Each stage writes scalars to `metrics.jsonl` (one JSON object per line: step, split, values) and
to TensorBoard event files under `tb/`, and shows a tqdm bar, which carries a rate and an ETA.
Only process 0 of a multi-host run writes. The library logs with `logging`; entry points call
`log_to_stderr` once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from star_jax import watchdog


def is_lead() -> bool:
    """Process 0 of a multi-host run, or the only process (JAX is not imported for this)."""
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record (tests swap it; tqdm shares it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show the package's log records on stderr as bare lines (idempotent)."""
    logger = logging.getLogger("star_jax")
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    root = logging.getLogger()
    if not root.handlers:
        # A dependency's module-level `logging.info` would otherwise configure the root logger
        # (basicConfig) on first use and print every star_jax line twice. Other libraries'
        # warnings still show.
        others = _CurrentStderr()
        others.setLevel(logging.WARNING)
        others.addFilter(lambda record: not record.name.startswith("star_jax"))
        root.addHandler(others)


class MetricsLogger:
    """Append scalars to `OUT/metrics.jsonl` and TensorBoard event files in `OUT/tb`."""

    def __init__(self, out_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.enabled = is_lead()
        self.path = os.path.join(os.fspath(out_dir), "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(out_dir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(os.fspath(out_dir), "tb"))

    def log(self, step: int, split: str = "train", **scalars: float) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a `metrics.jsonl`, in order (missing file: empty list)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class _Bar(tqdm):
    """A tqdm bar whose updates and items beat the running watchdog: a long but live evaluation or
    embedding pass is progress (star_jax.watchdog)."""

    def update(self, n: float | None = 1) -> bool | None:
        watchdog.beat()
        return super().update(n)

    def __iter__(self):
        for item in super().__iter__():  # tqdm counts items without calling update()
            watchdog.beat()
            yield item


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    initial: int = 0,
    unit_scale: bool = False,
) -> tqdm:
    """A tqdm bar (rate and ETA included), silent on non-lead processes; each update beats the
    running watchdog (on every process)."""
    return _Bar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        unit_scale=unit_scale,
        dynamic_ncols=True,
        disable=not is_lead(),
        mininterval=0.5,
    )
