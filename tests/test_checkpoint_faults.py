"""Damaged and unwritable checkpoints (star_jax.checkpoint): a resume checks the latest step against
the size and SHA-256 of every file sealed in when it was written, sets a damaged step aside with one
warning and resumes from the newest intact one; with none intact it stops in one line. A full disk
while a checkpoint is written stops the run in one line, the earlier checkpoints intact, and the
same command then finishes the run. On a small pytree and on a toy training loop."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from loop_fixtures import STEPS, toy_problem

from star_jax import checkpoint
from star_jax.checkpoint import Checkpointer
from star_jax.errors import StarError
from star_jax.tracking import MetricsLogger, read_metrics
from star_jax.train_loop import abstract_like, train

# -- a small pytree ------------------------------------------------------------------------------


def tree(step: int) -> dict:
    rng = np.random.default_rng(step)  # 256 KiB of float32: orbax writes it to its own data file
    return {"w": jnp.asarray(rng.normal(size=(256, 256)).astype(np.float32)),
            "b": jnp.arange(100, dtype=jnp.int32) * step}


def save_two(directory: Path) -> None:
    with Checkpointer(directory, fingerprint="fp") as ckpt:
        for step in (1, 2):
            ckpt.save(step, tree(step), meta={"note": f"step {step}"})


def largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "a flipped byte in the array data": lambda d: flip_byte(largest_file(d)),
    "truncated array data": lambda d: largest_file(d).write_bytes(largest_file(d).read_bytes()[:-10]),
    "a truncated tree metadata": lambda d: (d / "state" / "_METADATA").write_text('{"tree_meta'),
    "the tree metadata deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "the meta item deleted": lambda d: shutil.rmtree(d / "meta"),
    "the digests deleted": lambda d: (d / checkpoint.DIGESTS).unlink(),
    "every file emptied": lambda d: [p.write_bytes(b"") for p in d.rglob("*") if p.is_file()],
}


def restore(directory: Path, **kwargs) -> tuple[dict, dict]:
    with Checkpointer(directory, fingerprint="fp") as ckpt:
        state, meta = ckpt.restore(abstract_like(tree(0)), **kwargs)
        return jax.tree.map(np.asarray, state), meta


def ours(caplog) -> list[str]:
    """The warnings of star_jax (orbax logs its own complaints about a damaged step besides)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("star_jax")]


def assert_equal_trees(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_plain_orbax_serves_a_flipped_data_byte_as_wrong_numbers(tmp_path):
    """Why the digests: orbax's array data carries no checksum, so without them the damage is silent."""
    save_two(tmp_path)
    flip_byte(largest_file(tmp_path / "2" / "state"))
    mngr = ocp.CheckpointManager(tmp_path)
    try:
        got = mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(tree(0)))))
    finally:
        mngr.close()
    assert not np.array_equal(np.asarray(got["state"]["w"]), np.asarray(tree(2)["w"]))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_step_is_set_aside_and_the_previous_one_restored(tmp_path, caplog, damage):
    save_two(tmp_path)
    assert_equal_trees(restore(tmp_path)[0], tree(2))  # intact: the latest
    DAMAGE[damage](tmp_path / "2")
    with caplog.at_level(logging.WARNING, logger="star_jax.checkpoint"):
        with Checkpointer(tmp_path, fingerprint="fp") as ckpt:
            assert ckpt.latest_step() == 2
            assert ckpt.read_meta()["note"] == "step 1"  # what a stage reads before restoring
            state, meta = ckpt.restore(abstract_like(tree(0)))
            assert ckpt.latest_step() == 1
            ckpt.save(2, tree(2))  # the step can be written again
    assert_equal_trees(jax.tree.map(np.asarray, state), tree(1))
    assert meta["step"] == 1 and meta["note"] == "step 1"
    warnings = ours(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{tmp_path / '2'}: damaged checkpoint (")
    assert warnings[0].endswith("moved to 2.unreadable, resuming from step 1")
    assert (tmp_path / "2.unreadable").is_dir()  # kept for inspection
    assert_equal_trees(restore(tmp_path)[0], tree(2))  # the new step 2


def test_with_no_intact_step_the_resume_stops_in_one_line_and_moves_nothing(tmp_path):
    save_two(tmp_path)
    flip_byte(largest_file(tmp_path / "2"))
    (tmp_path / "1" / "meta" / "metadata").unlink()
    with pytest.raises(StarError) as e:
        restore(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: no intact checkpoint to resume from (step 2: ")
    assert msg.endswith("; step 1: meta/metadata is missing); move the directory away to start over")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_a_checkpoint_without_digests_that_fails_to_restore_falls_back_too(tmp_path, caplog):
    """Checkpoints written before the digests existed: a failing restore is the sign of damage."""
    mngr = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    for step in (1, 2):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree(step)),
            meta=ocp.args.JsonSave({"fingerprint": "fp", "step": step})))
    mngr.wait_until_finished()
    mngr.close()
    (tmp_path / "2" / "state" / "manifest.ocdbt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="star_jax.checkpoint"):
        state, meta = restore(tmp_path)
    assert_equal_trees(state, tree(1)) and meta["step"] == 1
    [warning] = ours(caplog)
    assert warning.startswith(f"{tmp_path / '2'}: damaged checkpoint (") and "resuming from step 1" in warning


def test_a_different_fingerprint_is_still_a_config_error_not_damage(tmp_path):
    save_two(tmp_path)
    with Checkpointer(tmp_path, fingerprint="other") as ckpt:
        with pytest.raises(StarError, match="different config"):
            ckpt.restore(abstract_like(tree(0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


# -- the training loop ---------------------------------------------------------------------------



def toy_run(out: Path) -> dict:
    """Six steps of a noisy least-squares fit to a grain stream, checkpointed at steps 4 and 6 (two
    kept); returns the final parameters."""
    toy = toy_problem(STEPS)
    with Checkpointer(out / "checkpoints", fingerprint="toy", max_to_keep=2) as ckpt, \
            MetricsLogger(out, tensorboard=False) as logger:
        state, _ = train(toy.state, toy.step, None, toy.batches, put=lambda b: b,
                         ckpt=ckpt, logger=logger, steps=STEPS, log_every=1, checkpoint_every=4, desc="toy")
    return jax.device_get(state.params)


def losses(out: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs the steps it redoes again)."""
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"}


def test_a_run_whose_last_checkpoint_is_damaged_resumes_from_the_one_before_to_the_same_result(
        tmp_path, caplog):
    reference = toy_run(tmp_path / "reference")
    out = tmp_path / "run"
    toy_run(out)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["4", "6"]
    (ckpts / "6" / "state" / "manifest.ocdbt").write_bytes(b"")  # truncated
    with caplog.at_level(logging.INFO):
        params = toy_run(out)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{ckpts / '6'}: damaged checkpoint (state/manifest.ocdbt has 0 bytes")
               and m.endswith("resuming from step 4") for m in messages), messages
    assert f"toy: resumed from the step-4 checkpoint in {ckpts}" in messages
    np.testing.assert_array_equal(params["w"], reference["w"])
    assert losses(out) == losses(tmp_path / "reference")
    assert sorted(p.name for p in ckpts.iterdir()) == ["4", "6", "6.unreadable"]


def test_a_full_disk_while_checkpointing_stops_in_one_line_and_a_rerun_finishes(tmp_path, monkeypatch):
    reference = toy_run(tmp_path / "reference")
    out = tmp_path / "run"
    sealed = checkpoint.atomic_write_json

    def full_at_step_6(path, obj):  # the last write of a checkpoint, before orbax commits it
        if Path(path).parent.name.startswith("6."):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        sealed(path, obj)

    monkeypatch.setattr(checkpoint, "atomic_write_json", full_at_step_6)
    with pytest.raises(StarError) as e:
        toy_run(out)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"{out / 'checkpoints'}: no space left on device while writing the step-6 checkpoint "
                   "(the earlier checkpoints are intact); free space and rerun the same command to resume")
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()] == ["4"]
    monkeypatch.setattr(checkpoint, "atomic_write_json", sealed)  # space freed
    params = toy_run(out)
    np.testing.assert_array_equal(params["w"], reference["w"])
    assert losses(out) == losses(tmp_path / "reference")
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]
