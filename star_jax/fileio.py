"""Crash-safe file output: a stage's results appear whole or not at all.

Writers build into a hidden temporary sibling and `os.replace` it into place at the end, so a
killed process leaves either the previous output or nothing, never half a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from star_jax.errors import StarError


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def is_no_space(e: BaseException) -> bool:
    """Whether `e` (an OSError, or a TensorStore error from a kvstore write) means a full disk."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    return "os_error_code='28'" in text or "No space left on device" in text


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_files({path: data})


def atomic_write_files(files: dict[str | os.PathLike, bytes]) -> None:
    """Write every file to a temporary sibling, then move them all into place: a failure while
    writing (a full disk: a one-line StarError naming the file) leaves every earlier file as it was."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_sibling(path)
            done.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and is_no_space(e):
            raise StarError(f"{done[-1][1]}: no space left on device; it and the files written with it "
                            "were left as they were") from e
        raise
    for tmp, path in done:
        os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_bytes(obj: Any) -> bytes:
    """`obj` as the JSON every result file holds: indented, sorted keys."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def finished_result(path: str | os.PathLike, fingerprint: str) -> dict | None:
    """The JSON at `path` (a stage's result, written last) when it records `fingerprint`, else None.

    A training stage whose result carries the fingerprint of its current config and inputs has
    nothing left to do; an unreadable or foreign result means it has.
    """
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("fingerprint") == fingerprint else None


def content_digest(paths: list[str | os.PathLike], *, chunk: int = 1 << 22) -> str:
    """A short hash of the bytes of `paths` (files, or directories walked in sorted order).

    Stages record it with their outputs: an output whose recorded digest still matches its
    inputs is up to date and its stage is skipped.
    """
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    for f in files:
        h.update(str(f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
