"""EmbeddingStore input checks: ids must be integers, vectors must be finite in the store's dtype.

Each refusal is a one-line `StarError` naming what was given, and leaves the store as it was: the
tests compare every file under the root before and after. Expected vectors come from ml_dtypes'
own rounding of what the test wrote, not from the store.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from star_jax import config
from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, list_versions, text_hash

DIM = 16
IDS = 99500 + 4 * np.arange(40, dtype=np.int64)  # 99500 ... 99656: no id equals its row
CFG = StoreConfig(shard_rows=16, chunk_rows=4)  # bfloat16


def spec() -> EmbeddingSpec:
    return EmbeddingSpec(model="tiny", adapter=None, tokenizer="bpe-1", max_len=64, pooling="mean", dim=DIM)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def tree(root: str) -> dict[str, bytes]:
    """Every file under `root` with its bytes: the store's whole state, read without the store."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


def publish(root: str, dtype: str, vecs: np.ndarray) -> None:
    cfg = StoreConfig(dtype=dtype, shard_rows=16, chunk_rows=4)
    w = EmbeddingWriter.open(root, "v1", spec(), {"member": (IDS, text_hash([f"t{i}" for i in IDS]))}, cfg)
    for block in w.pending_blocks("member"):
        w.write("member", block.rows, vecs[block.positions])
    w.publish()


@pytest.fixture
def store(tmp_path):
    root = os.path.abspath(tmp_path / "s")
    vecs = vectors(len(IDS))
    publish(root, "bfloat16", vecs)
    return root, vecs


NON_INTEGER_IDS = {
    "python float": ([99532.5], "got 99532.5 (float) at position 0"),
    "float in a list of ints": ([99500, 99532.5], "got 99532.5 (float) at position 1"),
    "whole-valued float array": (np.array([99504.0]), "got 99504.0 (float64 array) at position 0"),
    "bool array": (np.array([True, False]), "got True (bool array) at position 0"),
    "bool in a list of ints": ([99500, True], "got True (bool) at position 1"),
    "string": (["99504"], "got '99504' (str) at position 0"),
}


@pytest.mark.parametrize("case", list(NON_INTEGER_IDS))
def test_lookup_refuses_ids_that_are_not_integers(store, case):
    root, vecs = store
    ids, given = NON_INTEGER_IDS[case]
    before = tree(root)
    reader = EmbeddingStore.open(root, "v1")
    with pytest.raises(StarError) as e:
        reader.lookup("member", ids)
    assert str(e.value) == f"store {root} version v1: member ids must be integers; {given}"
    with pytest.raises(StarError):
        reader.rows("member", ids)
    # Integer ids still read exactly the rows written, as bf16 rounds them (ml_dtypes, not the store).
    want = vecs[[8, 1, 8]].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(reader.lookup("member", [99532, 99504, np.int32(99532)]), want)
    assert tree(root) == before and list_versions(root) == ["v1"]


def test_writer_refuses_ids_that_are_not_integers_or_overflow_int64(store):
    root, _ = store
    before = tree(root)
    where = f"store {root} version v1: member ids"
    hashes = text_hash([f"u{i}" for i in IDS])
    cases = [
        (IDS.astype(np.float64), f"{where} must be integers; got 99500.0 (float64 array) at position 0"),
        (IDS.astype(bool), f"{where} must be integers; got True (bool array) at position 0"),
        # A uint64 past 2**63 used to wrap to a negative int64 id and be stored as such.
        (np.r_[IDS[:-1].astype(np.uint64), np.uint64(2**63)],
         f"{where} must fit in int64; got {2**63} at position {len(IDS) - 1}"),
    ]
    for ids, message in cases:
        with pytest.raises(StarError) as e:
            EmbeddingWriter.open(root, "v1", spec(), {"member": (ids, hashes)}, CFG)
        assert str(e.value) == message
        assert tree(root) == before  # refused at open: no staging record, no generation
    # Rows passed to `write` are held to the same rule (a float row used to be truncated).
    w = EmbeddingWriter.open(root, "v1", spec(), {"member": (IDS, hashes)}, CFG)
    staged = tree(root)
    rows = w.pending("member").rows[:16].astype(np.float64)
    with pytest.raises(StarError) as e:
        w.write("member", rows, vectors(16))
    assert str(e.value) == "write('member') rows must be integers; got 0.0 (float64 array) at position 0"
    assert tree(root) == staged and len(w.pending("member").rows) == len(IDS)
    assert {k: v for k, v in tree(root).items() if k.startswith("manifests/")} == \
           {k: v for k, v in before.items() if k.startswith("manifests/")}


@pytest.mark.parametrize("dtype, big", [("bfloat16", np.float32(3.4e38)), ("float32", np.float64(1e39)),
                                        ("float16", np.float32(7e4))])
def test_values_that_overflow_the_store_dtype_are_refused_before_anything_is_written(store, dtype, big,
                                                                                    monkeypatch):
    root, _ = store
    if "float16" not in config.STORE_DTYPES:  # layout.DTYPES has it; the config list may not yet
        monkeypatch.setattr(config, "STORE_DTYPES", (*config.STORE_DTYPES, "float16"))
    if dtype != "bfloat16":  # a version of its own: v1 is bf16
        root = f"{root}-{dtype}"
        publish(root, dtype, vectors(len(IDS)))
    store_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}[dtype]
    limit = float(ml_dtypes.finfo(store_dtype).max)
    # The precondition the old check missed: finite as given, inf in the store's dtype.
    assert np.isfinite(big) and big > limit
    with np.errstate(over="ignore"):
        assert np.isinf(np.asarray(big).astype(store_dtype).astype(np.float32))

    before = tree(root)
    cfg = StoreConfig(dtype=dtype, shard_rows=16, chunk_rows=4)
    w = EmbeddingWriter.open(root, "v1", spec(), {"member": (IDS, text_hash([f"new{i}" for i in IDS]))}, cfg)
    staged = tree(root)
    block = next(w.pending_blocks("member"))  # rows 0..15, ids 99500 ... 99560
    new = vectors(len(block.rows), seed=1).astype(big.dtype)
    new[[5, 9], 3] = big
    new[12, 0] = -big
    with pytest.raises(StarError) as e:
        w.write("member", block.rows, new)
    assert str(e.value) == (f"write('member') vectors: 3 of 16 rows are NaN or inf once cast to {dtype} "
                            f"(values beyond ±{limit:.4g} overflow); first id {IDS[5]}")
    assert "\n" not in str(e.value)
    # Nothing written, nothing published, and the rows are still pending.
    assert tree(root) == staged
    assert {k: v for k, v in staged.items() if k.startswith("manifests/")} == \
           {k: v for k, v in before.items() if k.startswith("manifests/")}
    np.testing.assert_array_equal(w.pending("member").rows, np.arange(len(IDS)))
    published = vectors(len(IDS)).astype(store_dtype).astype(np.float32)  # what `publish` stored
    np.testing.assert_array_equal(EmbeddingStore.open(root, "v1").lookup("member", IDS), published)

    # A NaN is counted the same way; finite values at the edge of the range are stored.
    nan = vectors(len(block.rows), seed=2)
    nan[7, 0] = np.nan
    with pytest.raises(StarError, match=rf"1 of 16 rows are NaN or inf .*; first id {IDS[7]}$"):
        w.write("member", block.rows, nan)
    edge = vectors(len(IDS), seed=3)
    edge[0, 0] = limit
    for b in w.pending_blocks("member"):
        w.write("member", b.rows, edge[b.positions])
    w.publish()
    got = EmbeddingStore.open(root, "v1").lookup("member", IDS)
    np.testing.assert_array_equal(got, edge.astype(store_dtype).astype(np.float32))
    assert got[0, 0] == limit
