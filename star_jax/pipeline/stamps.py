"""Stage skipping for `star-jax pipeline`: a stage runs unless its stamp holds the same key.

A stage's key is the fingerprint of its name, the config sections it reads, the content digests of
its inputs and the digest of the star_jax source it runs (`star_jax.sources.code_digest`), so an
edited model file reruns its stage and, through their inputs, the stages downstream. `--redo`
forces a stage and every stage that names it upstream (docs/architecture.md, decision 15).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from star_jax.config import fingerprint
from star_jax.errors import StarError
from star_jax.eval.runs import DIGESTS, STAMPS
from star_jax.fileio import atomic_write_json, content_digest, read_json
from star_jax.sources import code_digest
from star_jax.tracking import is_lead

logger = logging.getLogger(__name__)


class DigestCache:
    """`content_digest` of files and directories, remembered by each file's (size, mtime)."""

    def __init__(self, path: Path):
        self.path = path
        self._cache: dict[str, dict] = read_json(path) if path.is_file() else {}

    @staticmethod
    def _signature(path: Path) -> str:
        files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        stats = [(os.fspath(q.relative_to(path)) if q != path else "", q.stat().st_size, q.stat().st_mtime_ns)
                 for q in files]
        return fingerprint(stats)

    def __call__(self, path: str | os.PathLike) -> str:
        path = Path(path).absolute()
        if not path.exists():
            raise StarError(f"{path}: missing (an input of the pipeline)")
        sig = self._signature(path)
        hit = self._cache.get(os.fspath(path))
        if hit is None or hit["signature"] != sig:
            hit = {"signature": sig, "digest": content_digest([path])}
            self._cache[os.fspath(path)] = hit
        return hit["digest"]

    def save(self) -> None:
        atomic_write_json(self.path, self._cache)


class StageRecord(NamedTuple):
    name: str
    skipped: bool
    seconds: float  # this invocation's wall time (skipped: the time of the run that made it)


def barrier(name: str) -> None:
    """Wait for every process of a multi-host run (a no-op in one process or before JAX loads)."""
    import sys

    if "jax" not in sys.modules:
        return
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"star-jax pipeline {name}")


class Runner:
    """Runs a stage unless its stamp says it already ran with the same key and its outputs exist.

    Stamp (`RUN_DIR/stamps/<stage>.json`): `{"key", "inputs": {name: digest}, "config": fingerprint,
    "result": what the stage returned, "seconds" (wall), "cpu_seconds" (this process, all threads),
    "finished"}`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, log: Callable[[str], None] = logger.info,
                 redo: tuple[str, ...] = ()):
        self.dir = Path(run_dir) / STAMPS
        self.digest = DigestCache(self.dir / DIGESTS)
        self.log = log
        self.redo = tuple(redo)  # stage names, or a family such as `train-gnn` for every train-gnn-<variant>
        self.records: list[StageRecord] = []

    def forced(self, name: str, after: tuple[str, ...]) -> bool:
        """Named by `redo`, or downstream of a stage that ran in this invocation."""
        ran = {r.name for r in self.records if not r.skipped}
        return any(name == r or name.startswith(r + "-") for r in self.redo) or any(a in ran for a in after)

    def stamp(self, name: str) -> dict | None:
        path = self.dir / f"{name}.json"
        try:
            return read_json(path) if path.is_file() else None
        except ValueError:  # unreadable: treat as absent (stamps are written atomically, so rare)
            return None

    def __call__(
        self,
        name: str,
        fn: Callable[[], dict],
        *,
        inputs: dict[str, str],
        config: tuple = (),
        collective: bool = False,
        exists: Callable[[dict], bool] | None = None,
        owns: tuple[str | os.PathLike, ...] = (),
        code: tuple[str, ...] = (),
        after: tuple[str, ...] = (),
    ) -> dict:
        """`fn()` (a JSON-able result) unless stamped with the same key; the result either way.

        `inputs` are digests (from `self.digest` or `fingerprint`); `config` the config sections
        and constants the stage reads; `exists(result)` says whether the stage's outputs are still
        there (a deleted output reruns its stage). `collective` stages run on every process.

        `owns`: directories only this stage writes, where it keeps checkpoints to resume from.
        `stamps/<stage>.running` records the key a started run had: a rerun with that key resumes
        in them; with another key (new settings or inputs) they are deleted first, since the stage
        would refuse to resume a checkpoint of other settings.

        `code`: the star_jax modules the stage runs; the source of everything they import is part
        of the key. `after`: the stages whose outputs this one reads; when one of them ran in this
        invocation (say, forced by `redo`), this one runs too.
        """
        config_fp = fingerprint(*config)
        code_fp = code_digest(*code)[:16] if code else None
        key = fingerprint(name, inputs, config_fp, *([code_fp] if code else []))
        stamp = self.stamp(name)
        up_to_date = (stamp is not None and stamp.get("key") == key
                      and (exists is None or exists(stamp["result"])))
        forced = up_to_date and self.forced(name, after)
        if up_to_date and not forced:
            self.log(f"pipeline: {name}: up to date (ran in {stamp['seconds']:.0f}s); skipped")
            self.records.append(StageRecord(name, True, float(stamp["seconds"])))
            return stamp["result"]
        self.log(f"pipeline: {name}: running" + (" (forced)" if forced else ""))
        running = self.dir / f"{name}.running"
        if is_lead():
            started = read_json(running).get("key") if running.is_file() else None
            for d in map(Path, owns):
                # Forced with no interrupted run to resume: the finished outputs there would only be
                # served again, so they go too.
                if (started != key or (forced and started is None)) and d.exists():
                    why = ("a finished run" if forced and started is None
                           else "a run of other inputs or settings")
                    self.log(f"pipeline: {name}: {d} holds {why}; starting over")
                    shutil.rmtree(d)
            atomic_write_json(running, {"key": key})
            (self.dir / f"{name}.json").unlink(missing_ok=True)  # a kill from here on leaves no stamp
        barrier(f"{name} start")
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = fn() if collective or is_lead() else None
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        barrier(f"{name} done")
        if is_lead():
            self.digest.save()
            atomic_write_json(self.dir / f"{name}.json", {
                "key": key, "inputs": inputs, "config": config_fp, "code": code_fp, "result": result,
                "seconds": seconds, "cpu_seconds": cpu,  # all threads: on a busy machine, the honest cost
                "finished": datetime.now().isoformat(timespec="microseconds"),
            })
            running.unlink()
        barrier(f"{name} stamped")
        if result is None:
            result = read_json(self.dir / f"{name}.json")["result"]
        self.records.append(StageRecord(name, False, seconds))
        self.log(f"pipeline: {name}: done in {seconds:.0f}s")
        return result
