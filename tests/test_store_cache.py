"""EmbeddingStore's decoded-row cache (`cache_bytes`) and id->row mapping, against numpy.

Every lookup is checked against the writer's input cast to bf16 the way the store casts it. The
cache is small on purpose (a few 32-row shards) so that lookups evict, refill and overflow it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, text_hash

DIM = 16
CFG = StoreConfig(shard_rows=32, chunk_rows=8)
SHARD_BYTES = 32 * DIM * 2  # one bf16 shard
SPEC = EmbeddingSpec(model="tiny", adapter=None, tokenizer="bpe-1", max_len=64, pooling="mean", dim=DIM)
MEMBER_IDS = np.arange(300, dtype=np.int64) * 5 + 11  # sparse ids: 10 shards, the last one short
JOB_IDS = np.arange(1000, 1070, dtype=np.int64)  # one contiguous range


def vectors(n: int, rev: int) -> np.ndarray:
    return np.random.default_rng(rev).standard_normal((n, DIM)).astype(np.float32)


def bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def publish(root: str, rev: int) -> dict[str, np.ndarray]:
    """Publish revision `rev` (every member text changes with it); returns what each row must hold."""
    data = {"member": vectors(len(MEMBER_IDS), rev), "job": vectors(len(JOB_IDS), 1000)}
    inputs = {"member": (MEMBER_IDS, text_hash([f"m{i} rev {rev}" for i in MEMBER_IDS])),
              "job": (JOB_IDS, text_hash([f"j{i}" for i in JOB_IDS]))}
    w = EmbeddingWriter.open(root, "v1", SPEC, inputs, CFG)
    for t in w.node_types:
        for block in w.pending_blocks(t):
            w.write(t, block.rows, data[t][block.positions])
    w.publish()
    return {t: bf16(x) for t, x in data.items()}


@pytest.fixture
def store_root(tmp_path):
    root = str(tmp_path / "s")
    return root, publish(root, 0)


@pytest.mark.parametrize("shards", [1, 3, 100])
def test_cached_lookups_equal_the_written_rows_while_the_cache_evicts(store_root, shards):
    root, want = store_root
    store = EmbeddingStore.open(root, cache_bytes=shards * SHARD_BYTES)
    rng = np.random.default_rng(shards)
    for i in range(60):
        # Lookups within one shard, within a few, across all of them; repeats and any order.
        if i % 3 == 0:
            rows = rng.integers(0, 32, 20) + 32 * rng.integers(0, 10)
        elif i % 3 == 1:
            rows = rng.choice(np.arange(len(MEMBER_IDS)).reshape(-1, 10)[rng.integers(0, 30, 2)].ravel(), 25)
        else:
            rows = rng.integers(0, len(MEMBER_IDS), 50)
        rows = rows[rows < len(MEMBER_IDS)]
        got = store.lookup("member", MEMBER_IDS[rows])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want["member"][rows])
        cache = store._row_caches["member"]
        assert cache.capacity == min(shards, 10)
        assert cache.nbytes <= cache.capacity * SHARD_BYTES
        held = cache.shard_in[cache.shard_in >= 0]
        assert len(np.unique(held)) == len(held) and (cache.slot_of[held] >= 0).all()
    np.testing.assert_array_equal(store.lookup("member", MEMBER_IDS[::-1]), want["member"][::-1])


def test_the_cache_budget_is_shared_by_node_types(store_root):
    root, want = store_root
    store = EmbeddingStore.open(root, cache_bytes=10 * SHARD_BYTES + 100)
    np.testing.assert_array_equal(store.lookup("member", MEMBER_IDS), want["member"])
    np.testing.assert_array_equal(store.lookup("job", JOB_IDS[::-1]), want["job"][::-1])
    assert store._row_caches["member"].capacity == 10  # all of member, nothing left for job
    assert store._row_caches["job"] is None
    store = EmbeddingStore.open(root, cache_bytes=SHARD_BYTES - 1)  # under one shard: no cache
    rows = [5, 5, 299]
    np.testing.assert_array_equal(store.lookup("member", MEMBER_IDS[rows]), want["member"][rows])
    assert store._row_caches["member"] is None


def test_a_handle_never_serves_cached_rows_of_a_generation_it_saw_removed(store_root):
    root, want0 = store_root
    old = EmbeddingStore.open(root, cache_bytes=1 << 20)
    first = MEMBER_IDS[:64]  # shards 0 and 1, now cached
    np.testing.assert_array_equal(old.lookup("member", first), want0["member"][:64])
    want1 = publish(root, 1)
    # One publish later the handle's generation still exists: it serves it, cached or read.
    np.testing.assert_array_equal(old.lookup("member", MEMBER_IDS), want0["member"])
    fresh = EmbeddingStore.open(root, cache_bytes=1 << 20)
    np.testing.assert_array_equal(fresh.lookup("member", MEMBER_IDS), want1["member"])
    publish(root, 2)  # generation 1 is garbage-collected
    old = EmbeddingStore.open(root, "v1", cache_bytes=1 << 20)
    gen = old.manifest["node_types"]["member"]["generation"]
    np.testing.assert_array_equal(old.lookup("member", first), bf16(vectors(len(MEMBER_IDS), 2))[:64])
    want3 = publish(root, 3)
    publish(root, 4)  # the handle's generation is gone; its first 64 rows are still in its cache
    with pytest.raises(StarError, match=f"generation {gen} of member was removed .* reopen the store"):
        old.lookup("member", MEMBER_IDS[100:110])  # not cached: read from disk, and found removed
    with pytest.raises(StarError, match="reopen the store"):
        old.lookup("member", first)  # cached, but the handle has seen its generation go
    reopened = EmbeddingStore.open(root, cache_bytes=1 << 20)
    np.testing.assert_array_equal(reopened.lookup("member", first), bf16(vectors(len(MEMBER_IDS), 4))[:64])
    assert not np.array_equal(want3["member"][:64], reopened.lookup("member", first))


@pytest.mark.parametrize("node_type", ["member", "job"])
def test_ids_map_to_rows_and_unknown_ids_fail(store_root, node_type):
    root, want = store_root
    store = EmbeddingStore.open(root)
    ids = {"member": MEMBER_IDS, "job": JOB_IDS}[node_type]
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(store.rows(node_type, ids[order]), order)
    np.testing.assert_array_equal(store.lookup(node_type, ids[order]), want[node_type][order])
    for bad in (ids[0] - 1, ids[-1] + 1, ids[-1] + 10**12, -(2**63)):
        with pytest.raises(StarError, match=f"unknown {node_type} id {bad} \\(1 of 3 requested"):
            store.lookup(node_type, np.array([ids[1], bad, ids[2]]))
    assert store.lookup(node_type, np.zeros(0, np.int64)).shape == (0, DIM)
