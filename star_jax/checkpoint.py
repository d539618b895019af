"""Training checkpoints: one orbax `CheckpointManager` holding state, data-iterator state and meta.

A checkpoint step directory holds three items:
  - `state`: any pytree (params, optimizer state, RNG keys, step), restored into the shardings of
    an abstract target, so a resumed run continues bit-exactly on the same hardware;
  - `data`: the grain iterator state (optional), so a resumed run sees the same next batch;
  - `meta`: JSON, including a `fingerprint` of the config that shaped the state. Restoring under
    a different fingerprint is a user error, reported in one line, never a shape crash;
and `DIGESTS`, the size and SHA-256 of every file, sealed in before orbax commits the step. A
resume checks the latest step against it and falls back to the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from star_jax.errors import StarError
from star_jax.fileio import atomic_write_json, is_no_space

log = logging.getLogger(__name__)

DIGESTS = "digests.json"
# Orbax's own bookkeeping, rewritten around the commit and not read by a restore.
UNSEALED = {"_CHECKPOINT_METADATA", "commit_success.txt", DIGESTS}
ASIDE = ".unreadable"  # a damaged step directory is renamed to STEP.unreadable (orbax ignores it)


def file_digests(directory: Path) -> dict[str, list]:
    """{relative path: [size, sha256 hex]} of every file under `directory` but orbax's bookkeeping."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in UNSEALED):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        out[path.relative_to(directory).as_posix()] = [path.stat().st_size, h.hexdigest()]
    return out


def _first_line(e: BaseException) -> str:
    text = (str(e).splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    return f"{type(e).__name__}: {text}"[:300]


def _caused_by_full_disk(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if is_no_space(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, less its own questions to JAX's preemption sync point. The training loop asks
    it once per step (star_jax.train_loop.Preemption) and decides when to save; orbax also asks from
    its finalize thread with the step of an older save, which would report a step this process has
    already passed, and the sync point could then fall behind it."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    """Save and resume `(state, data iterator, meta)` under `directory`, keeping the last few."""

    def __init__(self, directory: str | os.PathLike, *, fingerprint: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self.fingerprint = fingerprint
        self._saving: int | None = None  # the step of the save in flight (sealed by `_seal`)
        self._failed = False  # a save failed and was reported: closing does not report it again
        self._resume: int | None = None  # the step a resume reads, once checked
        self._mngr = _Manager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal)),
        )

    def latest_step(self) -> int | None:
        """The newest step on disk, intact or not (`restore` checks it)."""
        return self._mngr.latest_step()

    # -- saving

    def save(self, step: int, state: Any, *, data_iter: Any = None, meta: dict | None = None) -> None:
        import grain

        self._finish()  # the previous save is sealed before `_saving` names the next
        items = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave({"fingerprint": self.fingerprint, "step": step, **(meta or {}),
                                       "sealed": True}),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._saving = step
        try:
            self._mngr.save(step, args=ocp.args.Composite(**items))
        except Exception as e:
            self._full_disk(e)
            raise

    def _seal(self) -> None:
        """Orbax's finalize thread, after every item is written and before the step is committed
        (renamed into place): write the step's DIGESTS (process 0, which sees every process's files)."""
        import jax

        if jax.process_index() != 0:
            return
        step = self._saving
        tmp = [p for p in Path(self.directory).glob(f"{step}.orbax-checkpoint-tmp*") if p.is_dir()]
        where = tmp[0] if len(tmp) == 1 else Path(self.directory) / str(step)
        atomic_write_json(where / DIGESTS, file_digests(where))

    def _full_disk(self, e: BaseException) -> None:
        """Raise a full disk behind `e` as one line naming the checkpoint (else return)."""
        if not _caused_by_full_disk(e):
            return
        self._failed = True
        raise StarError(f"{self.directory}: no space left on device while writing the step-{self._saving} "
                         "checkpoint (the earlier checkpoints are intact); free space and rerun the same "
                         "command to resume") from e

    def _finish(self) -> None:
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            self._full_disk(e)
            raise

    def wait(self) -> None:
        self._finish()

    def close(self) -> None:
        reported = self._failed  # a full disk already raised from `save` or `wait` is not raised again
        try:
            self._finish()
        except Exception:
            if not reported:
                raise
        finally:
            self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:  # also when a stage stops early (a preemption, an error)
        self.close()

    # -- resuming

    def _damage(self, step: int) -> str | None:
        """What is wrong with the files of `step` (None: intact, as far as its DIGESTS tell)."""
        where = Path(self.directory) / str(step)
        digests = where / DIGESTS
        if digests.is_file():
            try:
                expected = json.loads(digests.read_text())
            except (OSError, ValueError) as e:
                return f"{DIGESTS} unreadable ({_first_line(e)})"
            got = file_digests(where)
            for rel, (size, sha) in sorted(expected.items()):
                if rel not in got:
                    return f"{rel} is missing"
                if got[rel][0] != size:
                    return f"{rel} has {got[rel][0]} bytes, {size} were written"
                if got[rel][1] != sha:
                    return f"{rel} does not match its digest"
        try:
            meta = self._read_meta(step)
        except Exception as e:  # whatever orbax raises on a damaged file
            return f"meta unreadable ({_first_line(e)})"
        if meta.get("step") != step:
            return f"meta names step {meta.get('step')}"
        if meta.get("sealed") and not digests.is_file():
            return f"{DIGESTS} is missing"
        return None

    def _set_aside(self, step: int, problem: str, then: int) -> None:
        """Rename a damaged step out of orbax's sight (kept for inspection), with one warning."""
        import jax

        src = Path(self.directory) / str(step)
        dst = src.with_name(f"{step}{ASIDE}")
        n = 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{step}{ASIDE}.{n}")
        if jax.process_index() == 0:
            os.replace(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"star_jax checkpoint {step} set aside")
        self._mngr.reload()
        log.warning(f"{src}: damaged checkpoint ({problem}); moved to {dst.name}, resuming from step {then}")

    def resume_step(self) -> int | None:
        """The newest intact step (None: no checkpoint); newer damaged ones are set aside, each with
        one warning. None intact: a one-line StarError, and nothing is moved."""
        if self._resume is not None:
            return self._resume
        steps = sorted(self._mngr.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            problem = self._damage(step)
            if problem is None:
                for bad, why in damaged:
                    self._set_aside(bad, why, step)
                self._resume = step
                return step
            damaged.append((step, problem))
        if not damaged:
            return None
        raise StarError(f"{self.directory}: no intact checkpoint to resume from (step "
                        + "; step ".join(f"{s}: {why}" for s, why in damaged)
                        + "); move the directory away to start over")

    def _read_meta(self, step: int) -> dict:
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def read_meta(self, step: int | None = None) -> dict:
        """The meta of `step`, by default of the step a resume reads (`resume_step`)."""
        step = self.resume_step() if step is None else step
        if step is None:
            raise StarError(f"{self.directory}: no checkpoint found")
        return self._read_meta(step)

    def restore(
        self, abstract_state: Any, *, data_iter: Any = None, step: int | None = None,
        shared_data: bool = False,
    ) -> tuple[Any, dict]:
        """Restore `state` (shaped and sharded like `abstract_state`) and, if given, `data_iter` in place.

        By default from `resume_step()`. A checkpoint written before DIGESTS existed that fails to
        restore is set aside like a damaged one, and the previous one is tried. `shared_data`: the
        iterator's state is the same on every process (say, a global batch index), so a checkpoint
        saved by another process count restores it too (`_shared_data_state`).
        """
        import grain

        while True:
            at = self.resume_step() if step is None else step
            if at is None:
                raise StarError(f"{self.directory}: no checkpoint found")
            meta = self._read_meta(at)
            if meta.get("fingerprint") != self.fingerprint:
                raise StarError(
                    f"{self.directory}: checkpoint was written with a different config "
                    f"(fingerprint {meta.get('fingerprint')} != {self.fingerprint}); "
                    "use a new output directory or restore the original config"
                )
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            data_state = None
            if data_iter is not None:
                data_state = self._shared_data_state(at) if shared_data else None
                if data_state is None:
                    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                out = self._mngr.restore(at, args=ocp.args.Composite(**items))
            except Exception as e:
                # A sealed step passed its digests: a failure is not damage, and keeps its traceback.
                if step is not None or meta.get("sealed"):
                    raise
                older = [s for s in self._mngr.all_steps() if s < at]
                if not older:
                    raise StarError(f"{self.directory}: no intact checkpoint to resume from (step {at}: "
                                    f"{_first_line(e)}); move the directory away to start over") from e
                self._set_aside(at, _first_line(e), max(older))
                self._resume = None
                continue
            if data_state is not None:
                data_iter.set_state(data_state)
                if hasattr(data_iter, "start_prefetch"):  # as grain's own restore does
                    data_iter.start_prefetch()
            return out["state"], meta

    def _shared_data_state(self, step: int) -> dict | None:
        """The data-iterator state of a step saved by another process count (None: this count's own
        file is there, for grain's handler). Every process's file must hold the same state."""
        import jax

        where = Path(self.directory) / str(step) / "data"
        count = jax.process_count()
        if (where / f"process_{jax.process_index()}-of-{count}.json").is_file():
            return None
        files = sorted(where.glob("process_*-of-*.json"))
        states = {f.read_text() for f in files}
        if len(states) != 1:
            why = "no iterator state" if not files else f"{len(states)} different iterator states"
            raise StarError(f"{where}: {why} in the step-{step} checkpoint for {count} process(es); "
                            "resume with the process count that wrote it")
        saved = files[0].name.split("-of-")[1].removesuffix(".json")
        log.info(f"{self.directory}: step {step} was saved by {saved} process(es); resuming on {count}")
        return json.loads(states.pop())
