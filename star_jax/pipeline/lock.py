"""RUN_DIR/.lock: one `star-jax pipeline` per run directory at a time.

The lock file holds the owner's pid and host, is created with O_EXCL and removed when the run
ends, however it ends. A lock whose pid is not alive on this host (a killed pipeline) is stale and
taken over; a lock from another host cannot be checked and is respected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from star_jax.errors import StarError
from star_jax.fileio import process_alive

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# A lock file too new to hold its JSON yet: its owner is between O_EXCL and the write.
_BEING_WRITTEN_S = 10.0


def _holder(path: Path) -> tuple[bytes, dict | None] | None:
    """(raw bytes, parsed owner or None when unreadable); None when there is no lock file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(raw)
        ok = isinstance(owner, dict) and isinstance(owner.get("pid"), int) and owner["pid"] > 0
    except ValueError:
        ok = False
    return raw, owner if ok else None


def _stale(path: Path, owner: dict | None, host: str) -> bool:
    if owner is None:
        try:
            return time.time() - path.stat().st_mtime > _BEING_WRITTEN_S
        except FileNotFoundError:
            return False
    return owner.get("host") == host and not process_alive(owner["pid"])


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, *, log: Callable[[str], None] = logger.info) -> Iterator[Path]:
    """Hold RUN_DIR/.lock (creating RUN_DIR) for the block; a one-line `StarError` if another
    live pipeline holds it."""
    root = Path(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StarError(f"--out {root}: not a directory") from None
    path, host = root / LOCK_FILE, socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": datetime.now().isoformat(timespec="seconds")}
    mine = (json.dumps(me) + "\n").encode()
    for _ in range(5):  # each pass either takes the lock, refuses, or clears a stale one
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = _holder(path)
            if held is None:  # released meanwhile
                continue
            raw, owner = held
            if not _stale(path, owner, host):
                who = f"pid {owner['pid']} on {owner.get('host')}" if owner else "a process starting now"
                raise StarError(f"{root}: another pipeline ({who}) is running in this directory; wait for "
                                f"it to end (or, if it is gone, delete {path})") from None
            # Moved aside, not deleted: of two processes taking over the same stale lock, only one
            # moves it; the other finds it gone (or a fresh one) and looks again.
            aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            if aside.read_bytes() != raw:  # a fresh lock, taken a moment ago: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                aside.unlink()
                continue
            aside.unlink()
            who = f"pid {owner['pid']} on {host}, no longer running" if owner else "unreadable"
            log(f"pipeline: {path}: stale lock ({who}); taking it over")
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(mine)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise StarError(f"{path}: could not take the lock (other pipelines keep taking it); retry")
    try:
        yield path
    finally:
        held = _holder(path)
        if held is not None and held[0] == mine:
            path.unlink()
