"""grain pipelines: content against the tables, determinism with workers, orbax resume, sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from data_fixtures import write_tiny_data

from star_jax.checkpoint import Checkpointer
from star_jax.config import LLMConfig, TokenizerConfig
from star_jax.data.loader import corpus_dataset, pair_dataset, text_dataset, token_stream
from star_jax.data.tables import read_labels, read_nodes
from star_jax.data.tokenizer import bucket_length, load_tokenizer, train_tokenizer
from star_jax.errors import StarError

LLM = LLMConfig(instruction="Query: ", member_max_len=48, job_max_len=40, buckets=[16, 32])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    data = write_tiny_data(root / "data")
    tok = load_tokenizer(train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400)))
    return data, tok


def take(ds_or_it, n):
    it = iter(ds_or_it)
    out = [next(it) for _ in range(n)]
    return out, it


def same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_pair_batches_match_the_tables(setup):
    data, tok = setup
    labels = read_labels(data, "train")
    nodes = {t: read_nodes(data, t, ["id", "text"]) for t in ("member", "job")}
    texts = {t: dict(zip(df["id"].tolist(), df["text"].tolist())) for t, df in nodes.items()}
    batches = list(pair_dataset(data, tok, LLM, batch_size=16, seed=3, drop_remainder=False))
    seen = Counter()
    for b in batches:
        assert b["member_ids"].shape[1] == bucket_length(b["member_len"].max(), 48, LLM.buckets)
        assert b["job_ids"].shape[1] == bucket_length(b["job_len"].max(), 40, LLM.buckets)
        for i in np.flatnonzero(b["valid"]):
            m, j = int(b["member_id"][i]), int(b["job_id"][i])
            seen[(m, j, int(b["label"][i]))] += 1
            for side, text, max_len in (
                ("member", "Query: " + texts["member"][m], 48),
                ("job", texts["job"][j], 40),
            ):
                n = b[f"{side}_len"][i]
                expected = tok(text)["input_ids"][: max_len - 1] + [tok.eos_token_id]
                assert b[f"{side}_ids"][i, :n].tolist() == expected
                assert (b[f"{side}_ids"][i, n:] == tok.pad_token_id).all()
    # One epoch: every training pair exactly once, the short last batch filled and masked.
    assert seen == Counter(zip(labels.member_id.tolist(), labels.job_id.tolist(), labels.label.tolist()))
    assert len(batches) == -(-len(labels) // 16) and not batches[-1]["valid"].all()


def test_positives_only_and_epochs(setup):
    data, tok = setup
    n_pos = int((read_labels(data, "train")["label"] == 1).sum())
    batches = list(pair_dataset(data, tok, LLM, batch_size=8, positives_only=True, epochs=2))
    assert len(batches) == 2 * (n_pos // 8)
    assert all((b["label"] == 1).all() for b in batches)
    first, second = batches[: n_pos // 8], batches[n_pos // 8 :]
    assert not same(first, second)  # each epoch has its own permutation


def resume_check(make, tmp_path, before=3, after=4):
    """Batches `before` + `after` of one run, and the `after` batches of a fresh iterator restored
    through orbax from the state saved after `before`."""
    first, it = take(make(), before)
    ckpt = Checkpointer(tmp_path / "ckpt", fingerprint="f")
    ckpt.save(before, {"step": np.array(before)}, data_iter=it)
    ckpt.wait()
    expected, _ = take(it, after)
    fresh = iter(make())
    state, _ = ckpt.restore({"step": np.array(0)}, data_iter=fresh)
    restored, _ = take(fresh, after)
    ckpt.close()
    for i in (it, fresh):
        if hasattr(i, "close"):
            i.close()
    assert int(state["step"]) == before
    return first + expected, restored


def test_deterministic_for_a_seed_and_resumable_in_process(setup, tmp_path):
    data, tok = setup
    make = lambda seed=11: pair_dataset(data, tok, LLM, batch_size=8, seed=seed, epochs=None)  # noqa: E731
    run, restored = resume_check(make, tmp_path)
    assert same(run, take(make(), 7)[0])
    assert same(run[3:], restored)
    assert not same(run, take(make(seed=12), 7)[0])


def test_worker_processes_give_the_same_batches_and_resume(setup, tmp_path):
    data, tok = setup
    make = lambda workers: pair_dataset(
        data,
        tok,
        LLM,
        batch_size=8,
        seed=11,
        epochs=None,  # noqa: E731
        workers=workers,
    )
    run, restored = resume_check(lambda: make(2), tmp_path)
    assert same(run, take(make(0), 7)[0])
    assert same(run[3:], restored)


def test_two_shards_concatenate_to_the_global_batch(setup):
    data, tok = setup
    kw = dict(batch_size=8, seed=2, epochs=None)
    full, _ = take(pair_dataset(data, tok, LLM, **kw), 4)
    parts = [take(pair_dataset(data, tok, LLM, shard=(p, 2), **kw), 4)[0] for p in range(2)]
    for g, p0, p1 in zip(full, *parts):
        assert {k: np.concatenate([p0[k], p1[k]]).shape for k in g} == {k: v.shape for k, v in g.items()}
        assert all(np.array_equal(np.concatenate([p0[k], p1[k]]), g[k]) for k in g)
    with pytest.raises(StarError, match="batch_size"):
        pair_dataset(data, tok, LLM, batch_size=9, shard=(0, 2))


def test_text_dataset_in_id_order(setup):
    data, tok = setup
    ids = read_nodes(data, "job", ["id"])["id"].to_numpy()
    batches = list(text_dataset(data, tok, "job", max_len=40, buckets=[16, 32], batch_size=8))
    got = np.concatenate([b["node_id"][b["valid"]] for b in batches])
    assert np.array_equal(got, np.sort(ids))
    assert all(b["input_ids"].shape[0] == 8 for b in batches)
    some = np.array([5, 1, 9])
    b = next(iter(text_dataset(data, tok, "member", max_len=48, buckets=[16], batch_size=4, node_ids=some)))
    assert b["node_id"][:3].tolist() == [5, 1, 9] and b["valid"].tolist() == [True] * 3 + [False]
    with pytest.raises(StarError, match="node_ids"):
        text_dataset(data, tok, "member", max_len=48, buckets=[16], batch_size=4, node_ids=np.array([10**6]))


def test_corpus_windows_are_slices_of_the_packed_stream(setup):
    data, tok = setup
    stream = token_stream(data, tok)
    n_texts = sum(len(read_nodes(data, t, ["id"])) for t in ("member", "job"))
    assert (stream == tok.bos_token_id).sum() == n_texts == (stream == tok.eos_token_id).sum()
    batches, _ = take(corpus_dataset(data, tok, seq_len=16, batch_size=4, seed=1), 3)
    windows = stream[: len(stream) // 16 * 16].reshape(-1, 16)
    for b in batches:
        assert b["input_ids"].shape == (4, 16) and b["input_ids"].dtype == np.int32
        for row in b["input_ids"]:
            assert (windows == row).all(axis=1).any()
