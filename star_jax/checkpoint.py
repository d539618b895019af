"""Training checkpoints: one orbax `CheckpointManager` holding state, data-iterator state and meta.

A checkpoint step directory holds three items:
  - `state`: any pytree (params, optimizer state, RNG keys, step), restored into the shardings of
    an abstract target, so a resumed run continues bit-exactly on the same hardware;
  - `data`: the grain iterator state (optional), so a resumed run sees the same next batch;
  - `meta`: JSON, including a `fingerprint` of the config that shaped the state. Restoring under
    a different fingerprint is a user error, reported in one line, never a shape crash.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from star_jax.errors import StarError


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
        self._mngr = _Manager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, *, data_iter: Any = None, meta: dict | None = None) -> None:
        import grain

        items = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave({"fingerprint": self.fingerprint, "step": step, **(meta or {})}),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._mngr.save(step, args=ocp.args.Composite(**items))

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise StarError(f"{self.directory}: no checkpoint found")
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(
        self, abstract_state: Any, *, data_iter: Any = None, step: int | None = None
    ) -> tuple[Any, dict]:
        """Restore `state` (shaped and sharded like `abstract_state`) and, if given, `data_iter` in place."""
        import grain

        step = self.latest_step() if step is None else step
        if step is None:
            raise StarError(f"{self.directory}: no checkpoint found")
        meta = self.read_meta(step)
        if meta.get("fingerprint") != self.fingerprint:
            raise StarError(
                f"{self.directory}: checkpoint was written with a different config "
                f"(fingerprint {meta.get('fingerprint')} != {self.fingerprint}); "
                "use a new output directory or restore the original config"
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], meta

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:  # also when a stage stops early (a preemption, an error)
        self.close()
