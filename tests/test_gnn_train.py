"""`train-gnn` and `gnn-embed` end to end on the hand-made graph (tests/graph_fixtures.py).

The fixture graph has an isolated member and job, a cold-start member and repeated applies.
Compilations are counted twice, independently: by the run (JAX's compile events) and here (the
jit cache of the captured train step). A run SIGKILLed in a child process (tests/gnn_worker.py)
resumes to the uninterrupted run's numbers; a slow variant crashes one with an exception across a
change of Layout (adaptive fan-outs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import graph_fixtures as gf
import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from star_jax import cli
from star_jax.checkpoint import Checkpointer
from star_jax.config import load_config
from star_jax.data.splits import subsample
from star_jax.gnn import train as train_module
from star_jax.gnn.cold_start import ColdStartSampler
from star_jax.gnn.embed import export_sampler_config, make_embed_fn
from star_jax.gnn.evaluate import val_pairs
from star_jax.gnn.export import gnn_embed, params_digest, split_scores
from star_jax.gnn.features import open_features
from star_jax.gnn.run import load_run, make_gnn_optimizer
from star_jax.gnn.train import train_gnn
from star_jax.graph.hetero import build_graph
from star_jax.graph.sampler import NeighborSampler, batch_rng, make_dataset
from star_jax.graph.seeds import eval_seeds, node_seeds
from star_jax.metrics import auc
from star_jax.store import EmbeddingStore
from star_jax.tracking import read_metrics
from star_jax.train_loop import Static, first_device, init_state, make_train_step

GNN_WORKER = Path(__file__).with_name("gnn_worker.py")
VARIANT = "gnn_id_cat_llm"
LLM_DIM = 8
SETS = [
    "gnn.hidden_dim=16", "gnn.out_dim=8", "gnn.llm_block=4", "gnn.attribute_block=2",
    "gnn.heads=2", "gnn.layers=1",
    "gnn.id_buckets=64",
    "gnn.cat_dim=4", "gnn.cat_buckets=16",
    "sampler.batch_size=4", "sampler.num_random_negatives=3", "sampler.fanouts=[2,2]",
    "gnn_train.steps=6", "gnn_train.eval_every=3", "gnn_train.checkpoint_every=2", "gnn_train.log_every=2",
    "gnn_train.warmup_steps=2", "gnn_train.lr=0.01", "gnn_train.eval_batch_size=8", "gnn_train.eval_pairs=0",
]
CFG = load_config(None, SETS)
# Two fan-out stages: (1, 1) until the second evaluation, then (2, 2) (a tolerance of 1 always
# plateaus); the crash at step 5 loses steps 4 and 5 and the stage change at step 6.
ADAPTIVE = load_config(None, [*SETS, "sampler.adaptive=true", "sampler.start_fanouts=[1,1]",
                              "sampler.plateau_tolerance=1.0", "gnn_train.steps=8",
                              "gnn_train.checkpoint_every=3"])


class Crash(Exception):
    pass


Env = gf.GraphEnv


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return gf.graph_env(tmp_path_factory.mktemp("gnn_train"), LLM_DIM)


def run(env: Env, out: str, cfg=CFG) -> dict:
    return train_gnn(cfg, env.data, env.graph_dir, os.path.join(env.root, out), VARIANT,
                     store_root=env.features, store_version="v1")


def run_capturing_step(env: Env, out: str, cfg=CFG) -> tuple[dict, object]:
    """A run, and its jitted train step."""
    captured = []

    def capture(*args, **kwargs):
        captured.append(make_train_step(*args, **kwargs))
        return captured[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "make_train_step", capture)
        result = run(env, out, cfg)
    return result, captured[0]


@pytest.fixture(scope="module")
def uninterrupted(env):
    return run_capturing_step(env, "a")


def test_train_step_compiles_once(env, uninterrupted):
    result, step = uninterrupted
    assert result["layouts"] == 1 and result["train_step_compiles"] == 1  # counted from JAX's events
    assert step._cache_size() == 1  # counted from the jit cache

    # An epoch of varied batches in the last Layout: val pairs (a cold-start member, an isolated
    # member and job, unseen pairs), then every member and every job as pair seeds.
    features, _ = open_features(env.graph, env.features, "v1", CFG.store)
    sampler = NeighborSampler(env.graph, CFG.sampler, features=features, hop_fanouts=tuple(result["fanouts"]))
    seeds = list(eval_seeds(env.data, env.graph, CFG.sampler, "val"))
    seeds += [*node_seeds(env.graph, "member", CFG.sampler), *node_seeds(env.graph, "job", CFG.sampler)]
    batches = [sampler.sample(s, batch_rng(0, i)) for i, s in enumerate(seeds)]
    degrees = env.graph.csr["member_applied"].degrees()
    member_ids = np.concatenate([b.node_ids["member"][: CFG.sampler.batch_size] for b in batches])
    assert 777 in member_ids and 3 in member_ids and degrees[env.graph.rows("member", [777, 3])].sum() == 0
    optimizer, _ = make_gnn_optimizer(CFG.gnn_train)
    params = load_run(os.path.join(env.root, "a"), env.graph, features).params
    state = init_state(jax.device_put(params, first_device()), optimizer, 0)  # as the run places it
    compiled = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for b in batches:
            state, metrics = step(state, Static(sampler.layout), b)
            assert np.isfinite(float(metrics["loss"]))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []

    out = os.path.join(env.root, "a")
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 6]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6]
    assert os.listdir(os.path.join(out, "tb"))
    val = [r for r in records if r["split"] == "val"]
    best = max(val, key=lambda r: r["auc"])  # keep_best: the evaluation whose parameters are exported
    assert result["exported_step"] == best["step"]
    # Then the LLM and attribute blocks' gains are picked together on every val pair
    # (gnn_train.llm_block_gains, attribute_block_gains).
    gains = result["block_gain_val_auc"]
    t = CFG.gnn_train
    assert set(gains) == {f"{g:g} {a:g}" for g in t.llm_block_gains for a in t.attribute_block_gains}
    kept = f"{result['llm_block_gain']:g} {result['attribute_block_gain']:g}"
    assert result["val_auc"] == gains[kept] == max(gains.values())
    # The exported (best) params' val AUC, recomputed here: the val pairs sampled as the evaluator
    # samples them, scored with numpy and ranked by scikit-learn instead of star_jax.metrics.
    trained = load_run(out, env.graph, features)
    assert trained.step == result["exported_step"]
    eval_cfg = export_sampler_config(CFG.sampler, CFG.gnn_train.eval_batch_size)
    fanouts = tuple(result["fanouts"])
    eval_sampler = NeighborSampler(env.graph, eval_cfg, features=features, hop_fanouts=fanouts)
    pairs = val_pairs(env.data, env.graph, CFG.gnn_train, CFG.sampler)
    embed, scores = make_embed_fn(trained.gnn), []
    for b in make_dataset(eval_sampler, pairs, workers=0):
        member, job = embed(trained.params, b, eval_sampler.layout)
        scores.append(np.sum(np.asarray(member) * np.asarray(job), axis=1)[b.pair_mask])
    assert roc_auc_score(pairs.labels, np.concatenate(scores)) == pytest.approx(result["val_auc"], abs=1e-9)
    assert result["train_seconds"] > 0 and json.load(open(os.path.join(out, "result.json"))) == result


def test_above_their_caps_the_fits_and_the_gains_read_a_seeded_subset_in_file_order(env):
    """The block fits read at most `block_fit.MAX_FIT_PAIRS` labelled pairs of a split and the gains
    are picked on at most `train.MAX_GAIN_PAIRS` val pairs: a fixed subset, in the labels' order."""
    every = val_pairs(env.data, env.graph, CFG.gnn_train, CFG.sampler, limit=0)
    n = every.member_rows.shape[0]
    assert n >= 4 and n == eval_seeds(env.data, env.graph, CFG.sampler, "val").member_rows.shape[0]
    some = val_pairs(env.data, env.graph, CFG.gnn_train, CFG.sampler, limit=n - 2)
    again = val_pairs(env.data, env.graph, CFG.gnn_train, CFG.sampler, limit=n - 2)
    assert some.member_rows.shape[0] == n - 2 and np.array_equal(some.member_rows, again.member_rows)
    # A subsequence of every pair (member, job, label), in file order.
    rest = iter(zip(every.member_rows, every.job_rows, every.labels))
    assert all(pair in rest for pair in zip(some.member_rows, some.job_rows, some.labels))
    assert val_pairs(env.data, env.graph, CFG.gnn_train, CFG.sampler, limit=10 * n).member_rows.shape[0] == n

    arrays = (np.arange(1000), np.arange(1000) * 2, np.arange(1000) % 2)
    assert subsample(arrays, 1000, 0) is arrays
    a, b, y = subsample(arrays, 100, [0, 1])
    assert len(a) == 100 and np.all(np.diff(a) > 0) and np.array_equal(b, 2 * a) and np.array_equal(y, a % 2)
    assert np.array_equal(a, subsample(arrays, 100, [0, 1])[0])
    assert not np.array_equal(a, subsample(arrays, 100, 0)[0])


def crash_and_resume(env: Env, out: str, cfg, monkeypatch) -> dict:
    """Run `cfg` into OUT, crash at the 5th train step, check what survived, then resume."""
    calls = []

    def crashing(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def crash_at_step_5(*args):
            calls.append(1)
            if len(calls) == 5:
                raise Crash
            return step(*args)

        return crash_at_step_5

    monkeypatch.setattr(train_module, "make_train_step", crashing)
    with pytest.raises(Crash):
        run(env, out, cfg)
    monkeypatch.undo()
    ckpt = Checkpointer(os.path.join(env.root, out, "checkpoints"), fingerprint="")
    latest = ckpt.latest_step()
    ckpt.close()
    assert latest == 4 // cfg.gnn_train.checkpoint_every * cfg.gnn_train.checkpoint_every  # step 5 is lost
    assert not os.path.exists(os.path.join(env.root, out, "result.json"))
    return run(env, out, cfg)


def assert_same_params(env: Env, a: str, b: str) -> None:
    features, _ = open_features(env.graph, env.features, "v1", CFG.store)
    pa = load_run(os.path.join(env.root, a), env.graph, features).params
    pb = load_run(os.path.join(env.root, b), env.graph, features).params
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


def sigkill_at_step_5(env: Env, out: str, tmp_path) -> None:
    """`train-gnn` in a child process (tests/gnn_worker.py), SIGKILLed just before step 5 once the
    step-4 checkpoint is committed: no `finally` runs, whatever the child had in flight is lost."""
    ready, log = tmp_path / "ready", tmp_path / "worker.log"
    # The child inherits the test run's compilation cache (tests/conftest.py): its compilations become reads.
    command = [sys.executable, str(GNN_WORKER), "--hold-at", "5", "--after-checkpoint", "4",
               "--ready", str(ready), "--", *_train_args(env, out, "--variant", VARIANT)]
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
    tail = lambda: log.read_text()[-3000:]  # noqa: E731
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():  # the hand-off: the child writes `ready` only once step 4 is committed
            assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{tail()}"
            assert time.monotonic() < deadline, f"no hand-off within 300 s:\n{tail()}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_after_sigkill_continues_exactly(env, uninterrupted, tmp_path):
    sigkill_at_step_5(env, "killed", tmp_path)
    out = os.path.join(env.root, "killed")
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), fingerprint="")
    latest = ckpt.latest_step()
    ckpt.close()
    assert latest == 4 and not os.path.exists(os.path.join(out, "result.json"))  # step 5 never ran
    logged = [r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    assert logged == [2, 4]

    resumed = run(env, "killed")
    assert resumed["val_history"] == uninterrupted[0]["val_history"]
    assert resumed["layouts"] == 2 and resumed["train_step_compiles"] == 2  # once per session
    assert_same_params(env, "a", "killed")


@pytest.mark.slow
def test_adaptive_fanouts_resume_across_a_layout_change(env, monkeypatch):
    reference, step = run_capturing_step(env, "adaptive_a", ADAPTIVE)
    assert [h["fanouts"] for h in reference["val_history"]] == [[1, 1], [1, 1], [2, 2]]
    assert reference["layouts"] == 2 and reference["train_step_compiles"] == 2 and step._cache_size() == 2
    resumed = crash_and_resume(env, "adaptive_b", ADAPTIVE, monkeypatch)
    assert resumed["val_history"] == reference["val_history"]
    assert resumed["layouts"] == 3 and resumed["train_step_compiles"] == 3  # 1 before the crash, 2 after
    assert_same_params(env, "adaptive_a", "adaptive_b")


def test_cold_start_sampler_strips_only_the_seeds_own_applies(env):
    sampler = NeighborSampler(env.graph, CFG.sampler)
    L = sampler.layout
    seeds = eval_seeds(env.data, env.graph, CFG.sampler, "val")[0]
    warm = sampler.sample(seeds, batch_rng(0, 0))
    cold = ColdStartSampler(sampler, 1.0).sample(seeds, batch_rng(0, 0))
    same = ColdStartSampler(sampler, 0.0).sample(seeds, batch_rng(0, 0))
    jax.tree.map(np.testing.assert_array_equal, same, warm)
    jax.tree.map(np.testing.assert_array_equal, cold._replace(graph=None), warm._replace(graph=None))

    def into_seeds(batch, relation: str, node_type: str, n: int) -> np.ndarray:
        es = L.edge_slice(relation)
        slot = batch.graph.receivers[es] - L.node_slice(node_type).start
        return batch.graph.edges["mask"][es] & (slot < n)

    seed_edges = {("member_applied_rev", "member"): L.num_pairs,
                  ("member_applied", "job"): L.num_pairs + L.num_negatives}
    for (relation, node_type), n in seed_edges.items():
        assert into_seeds(warm, relation, node_type, n).any()
        assert not into_seeds(cold, relation, node_type, n).any()
    expected = warm.graph.edges["mask"].copy()
    senders, receivers = warm.graph.senders.copy(), warm.graph.receivers.copy()
    sender_type = {"member": "job", "job": "member"}
    for (relation, node_type), n in seed_edges.items():
        es = L.edge_slice(relation)
        drop = es.start + np.flatnonzero(into_seeds(warm, relation, node_type, n))
        expected[drop] = False
        senders[drop], receivers[drop] = L.pad_node(sender_type[node_type]), L.pad_node(node_type)
    # Nothing else moves (other relations, deeper apply edges); dropped edges become padding edges.
    np.testing.assert_array_equal(cold.graph.edges["mask"], expected)
    np.testing.assert_array_equal(cold.graph.senders, senders)
    np.testing.assert_array_equal(cold.graph.receivers, receivers)
    # A simulated cold seed also loses its ID embedding (`known`), like a real one; nothing else does.
    known = warm.graph.nodes["known"].copy()
    for t, n in (("member", L.num_pairs), ("job", L.num_pairs + L.num_negatives)):
        known[L.node_slice(t).start: L.node_slice(t).start + n] = False
    assert warm.graph.nodes["known"][L.node_slice("member").start]  # the first val member applied
    np.testing.assert_array_equal(cold.graph.nodes["known"], known)


def _train_args(env, out: str, *extra: str) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return ["train-gnn", "--data", env.data, "--graph", env.graph_dir, "--store", env.features,
            "--store-version", "v1", "--out", os.path.join(env.root, out), *sets, *extra]


def test_rerun_is_skipped_and_a_changed_config_is_refused(env, uninterrupted, capsys, caplog):
    caplog.set_level(logging.INFO, logger="star_jax")
    assert cli.main(_train_args(env, "a", "--variant", VARIANT)) == 0
    assert "skipped" in caplog.text
    capsys.readouterr()
    assert cli.main(_train_args(env, "a", "--variant", VARIANT, "--set", "gnn_train.lr=0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert "different config" in err and len(err.splitlines()) == 1
    args = _train_args(env, "c", "--variant", VARIANT)
    no_store = args[:5] + args[9:]
    assert cli.main(no_store) == 2 and "--store" in capsys.readouterr().err
    assert cli.main(_train_args(env, "c", "--variant", "gnn_everything")) == 2
    assert "--variant" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(env.root, "c"))


def test_gnn_embed_writes_every_node_equal_to_a_direct_encode(env, uninterrupted, capsys):
    out_store = os.path.join(env.root, "gnn_store")
    ckpt = os.path.join(env.root, "a")
    args = ["gnn-embed", "--graph", env.graph_dir, "--ckpt", ckpt, "--out-store", out_store,
            "--version", "gnn", "--set", "store.dtype=float32", "--set", "gnn_train.eval_batch_size=8"]
    assert cli.main(args) == 0
    store = EmbeddingStore.open(out_store, "gnn")
    exported = json.load(open(os.path.join(ckpt, "result.json")))["exported_step"]
    assert store.manifest["model"] == f"star-gnn/{VARIANT}"
    assert store.manifest["adapter"].split("#")[0].endswith(f"@{exported}")
    assert store.manifest["extra"]["variant"] == VARIANT and store.dim == CFG.gnn.out_dim

    features, _ = open_features(env.graph, env.features, "v1", CFG.store)
    trained = load_run(ckpt, env.graph, features)
    # The adapter names the exported parameters: other parameters under the same config re-embed all.
    assert store.manifest["adapter"].endswith(f"#{params_digest(trained.params)}")
    changed = jax.tree.map(lambda x: x, trained.params)
    changed["decoder"] = {**changed["decoder"], "bias": changed["decoder"]["bias"] + 1.0}
    assert params_digest(changed) != params_digest(trained.params)
    sampler_cfg = dataclasses.replace(CFG.sampler, batch_size=8, num_random_negatives=0)
    sampler = NeighborSampler(env.graph, sampler_cfg, features=features, hop_fanouts=trained.fanouts)
    encode = jax.jit(trained.gnn.encode, static_argnames="layout")
    direct = {}
    for t in ("member", "job"):
        np.testing.assert_array_equal(store.ids(t), np.sort(env.graph.ids[t]))  # every row, once
        for b, seeds in enumerate(node_seeds(env.graph, t, sampler_cfg)):
            batch = sampler.sample(seeds, batch_rng(CFG.sampler.seed, b))
            emb = np.asarray(encode(trained.params, batch, sampler.layout)[t])[:8][seeds.pair_mask]
            ids = batch.node_ids[t][:8][seeds.pair_mask]
            np.testing.assert_allclose(store.lookup(t, ids), emb, atol=1e-5)
            direct.update({(t, int(i)): e for i, e in zip(ids, emb)})
        assert len([k for k in direct if k[0] == t]) == env.graph.num_nodes(t)

    # Scoring for the evaluation stage: the dot product of the stored vectors.
    pairs = split_scores(store, env.data, "val")
    expected = [direct["member", m] @ direct["job", j] for m, j in zip(pairs.member_ids, pairs.job_ids)]
    np.testing.assert_allclose(pairs.scores, expected, rtol=1e-5, atol=1e-6)
    assert [(m, j, y) for m, j, y in zip(pairs.member_ids, pairs.job_ids, pairs.labels)] == gf.VAL_PAIRS
    # The evaluation stage's AUC of these scores against scikit-learn's, on the store's own vectors.
    m, j, y = (np.array([p[k] for p in gf.VAL_PAIRS]) for k in range(3))
    recomputed = np.sum(store.lookup("member", m) * store.lookup("job", j), axis=1)
    np.testing.assert_allclose(pairs.scores, recomputed, rtol=1e-6)
    assert auc(pairs.labels, pairs.scores) == pytest.approx(roc_auc_score(y, recomputed), abs=1e-12)
    # This test checks the export against the project's own encoder (each row is its node's vector);
    # tests/test_claims.py checks it independently: on a graph whose neighbourhoods are sampled whole,
    # the AUC of the stored vectors equals the val AUC the training run logged for those params.

    cfg = load_config(None, ["store.dtype=float32", "gnn_train.eval_batch_size=8"])
    report = gnn_embed(cfg, env.graph_dir, ckpt, out_store, "gnn")  # same checkpoint, same graph
    assert report.embedded == {"member": 0, "job": 0}


# ---------------------------------------------------------------------------------------------
# The paper's ablation on the tiny synthetic marketplace, with TF-IDF + SVD standing in for the
# LLM embeddings (tests/tfidf_features.py), at the tiny demo's default config.


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> dict[str, tuple[float, float]]:
    """Test AUC (overall, cold-start members) of gnn_id_cat and gnn_id_cat_llm, scored as the
    evaluation stage scores them: exported embeddings, dot product."""
    from tfidf_features import write_tfidf_store

    from star_jax.data.synth import synthesize
    from star_jax.metrics import activity_bucket, auc_by_group

    root = tmp_path_factory.mktemp("ablation")
    data = synthesize(root / "data", "tiny", 102)  # held out: the GNN's settings were chosen on seeds 0 and 5
    graph = build_graph(data, root / "graph")
    write_tfidf_store(data, root / "features", "tfidf", dim=64)
    cfg = load_config()
    applies = graph.csr[cfg.sampler.target_relation].degrees()
    test = {}
    for variant in ("gnn_id_cat", "gnn_id_cat_llm"):
        train_gnn(cfg, data, root / "graph", root / variant, variant, store_root=root / "features",
                  store_version="tfidf")
        gnn_embed(cfg, root / "graph", root / variant, root / "gnn", variant)
        pairs = split_scores(EmbeddingStore.open(root / "gnn", variant), data, "test")
        groups = activity_bucket(applies[graph.rows("member", pairs.member_ids)])
        test[variant] = (auc(pairs.labels, pairs.scores),
                         auc_by_group(pairs.labels, pairs.scores, groups)["cold_start"])
    print("test AUC (overall, cold-start members):", test)
    return test


@pytest.mark.slow
def test_llm_features_do_not_hurt(ablation):
    # docs/repro.md leaves the LLM-feature gain unresolved (+0.004 [-0.003, +0.010] pooled over four
    # seeds with the fine-tuned towers); what it does settle here is that the features never cost
    # more than noise. With these TF-IDF features the gain measured +0.004 overall, +0.008 cold.
    (base, base_cold), (llm, llm_cold) = ablation["gnn_id_cat"], ablation["gnn_id_cat_llm"]
    assert llm > base - 0.01 and llm_cold > base_cold - 0.01
