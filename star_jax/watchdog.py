"""The training loop's watchdog: a process that stops making progress ends the job in one line.

`with Watchdog(timeout_s, name, process=(i, n)) as dog:` runs a daemon thread; `dog.stepped(step)`
after each training step and `beat()` from anywhere (every `star_jax.tracking.progress` update)
say the process is alive. When no beat comes for `timeout_s` seconds it logs one line naming the
stage, the process and the last step, and ends the process with exit status `STALLED`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

STALLED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; the same command resumes the run
# Before the first step of a session the allowance is this many timeouts: that step compiles (minutes
# at 7B shapes) after the restore and the first evaluation, none of which is a stall. A stall
# before the first step is still caught, later.
FIRST_STEP_FACTOR = 2

_active: Watchdog | None = None  # the watchdog `beat()` feeds: the innermost running one


def running() -> Watchdog | None:
    """The watchdog `beat()` feeds now, if any."""
    return _active


def beat() -> None:
    """Tell the running watchdog, if any, that this process made progress (cheap: one clock read)."""
    dog = _active
    if dog is not None:
        dog.beat()


def stop_process(line: str) -> None:
    """Log `line` (on stderr once, whatever the logging set-up) and end the process with `STALLED`."""
    # The progress bars are cleared first, so that the line is a line of its own; tqdm would redraw
    # them at the end of the block, which os._exit never reaches. No lock: the hung thread may hold it.
    with tqdm.external_write_mode(file=sys.stderr, nolock=True):
        record = log.makeRecord(log.name, logging.CRITICAL, __file__, 0, line, None, None)
        logged = log.isEnabledFor(logging.CRITICAL)
        if logged:
            log.handle(record)
        if not (logged and _reaches_stderr(record)):
            os.write(2, f"{line}\n".encode())
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: the exit matters more
                pass
        # os._exit, not an exception or sys.exit: the main thread is blocked inside a collective, a
        # device_get or a batch iterator, which nothing raised from this thread can interrupt. No
        # finally block or atexit handler runs; a checkpoint being written stays uncommitted (orbax
        # commits a step by renaming its directory), so the last committed one is what a rerun resumes.
        os._exit(STALLED)


# What a collective raises when its peer is gone: gloo's closed connection on CPU, NCCL's or the
# coordination service's errors elsewhere.
PEER_FAILURES = ("Connection closed", "Connection reset", "Gloo", "NCCL", "heartbeat", "UNAVAILABLE")


def peer_failure(e: BaseException, processes: int) -> bool:
    """Whether `e` is a collective that failed because a peer of a multi-process run died."""
    import jax

    return processes > 1 and isinstance(e, jax.errors.JaxRuntimeError) and any(
        marker in str(e) for marker in PEER_FAILURES)


def _reaches_stderr(record: logging.LogRecord) -> bool:
    """Whether handling `record` on this module's logger wrote it to stderr (as logging.Logger
    .callHandlers walks the handlers; with none anywhere, logging's last-resort handler did)."""
    logger: Any = log
    found = False
    while logger is not None:
        for h in logger.handlers:
            found = True
            stream = getattr(h, "stream", None)
            if (record.levelno >= h.level and stream in (sys.stderr, sys.__stderr__)
                    and h.filter(record)):
                return True
        logger = logger.parent if logger.propagate else None
    return not found and logging.lastResort is not None


class Watchdog:
    """Stops the process when no beat arrives for `timeout_s` seconds (`FIRST_STEP_FACTOR` times
    that before the first `stepped`); `timeout_s = 0` turns it off. `on_stall(line)` replaces
    `stop_process` (tests)."""

    def __init__(self, timeout_s: float, name: str, *, process: tuple[int, int] = (0, 1),
                 on_stall: Callable[[str], None] | None = None):
        self.timeout_s, self.name, self.process = float(timeout_s), name, process
        self.step: int | None = None  # the last step finished (or resumed from)
        self.first = True  # no step finished yet in this session
        self.error: str | None = None  # the exception the watched code is stopping with, if any
        self.on_stall = on_stall or stop_process
        self.last_beat = time.monotonic()  # time.monotonic() of the last beat
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._outer: Watchdog | None = None

    def beat(self, step: int | None = None) -> None:
        self.last_beat = time.monotonic()
        if step is not None:
            self.step = step

    def stepped(self, step: int) -> None:
        """A training step finished: beat, and from now on the plain timeout applies."""
        self.beat(step)
        self.first = False

    def line(self, idle: float) -> str:
        i, n = self.process
        last = "no step finished yet" if self.step is None else f"last at step {self.step}"
        after = f" (after {self.error})" if self.error else ""
        return (f"{self.name}: process {i} of {n} made no progress for {idle:.0f} s ({last}; "
                f"mesh.watchdog_s={self.timeout_s:g}): its input pipeline stalled or a peer process "
                f"died{after}; stopping with exit status {STALLED}, rerun the same command to resume")

    def failed_line(self) -> str:
        """The one line for a collective that failed outright (`error`: a peer's connection closed)."""
        i, n = self.process
        at = "before its first step" if self.step is None else f"after step {self.step}"
        return (f"{self.name}: process {i} of {n} stopped {at}: a collective failed ({self.error}): a peer "
                f"process died; stopping with exit status {STALLED}, rerun the same command to resume")

    def _watch(self) -> None:
        while True:
            limit = self.timeout_s * (FIRST_STEP_FACTOR if self.first else 1)
            idle = time.monotonic() - self.last_beat
            if idle >= limit:
                self.on_stall(self.line(idle))
                return
            # Sleep to the deadline, at most one timeout: the first step shortens the limit.
            if self._done.wait(min(limit - idle, self.timeout_s)):
                return

    def __enter__(self) -> Watchdog:
        global _active
        if self.timeout_s > 0:
            self.last_beat = time.monotonic()
            self._outer, _active = _active, self
            self._thread = threading.Thread(target=self._watch, name=f"watchdog {self.name}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self._thread = None
            _active = self._outer
