"""`star-jax evaluate` and `star-jax recommend` on a run directory with stand-in stage outputs.

The run's store holds vectors written by the test through the store's writer API, so every number
of the report can be recomputed here from those vectors with scikit-learn and plain loops.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from data_fixtures import edit_table, write_tiny_data
from sklearn.metrics import roc_auc_score

from star_jax import cli
from star_jax.config import Config, StoreConfig, to_yaml
from star_jax.data.baselines import Data, run_baselines
from star_jax.data.splits import cold_start
from star_jax.data.tables import read_edges, read_labels, read_nodes
from star_jax.errors import StarError
from star_jax.eval import report
from star_jax.eval.recommend import recommend
from star_jax.eval.runs import CONFIG_FILE, VARIANTS, read_run, stage_name
from star_jax.metrics import positive_ranks
from star_jax.pipeline import Runner
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

DIM = 8
COLD = [0, 1, 2, 3, 4, 5]  # members stripped of their training applies (edges and labelled): cold start


def write_vectors(root, version: str, vectors: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    spec = EmbeddingSpec(model=f"test/{version}", adapter=None, tokenizer="none", max_len=0, pooling="test",
                         dim=DIM)
    inputs = {t: (ids, text_hash(f"{t}{i}" for i in ids)) for t, (ids, _) in vectors.items()}
    writer = EmbeddingWriter.open(root, version, spec, inputs, StoreConfig(dtype="float32", shard_rows=16))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][1][block.positions])
    writer.publish()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pipeline run directory: config, data, stamps and one store version per variant."""
    root = tmp_path_factory.mktemp("report_run")
    data = write_tiny_data(root / "data", members=60, jobs=40)
    edit_table(data, "edges/member_applied.parquet", lambda df: df[~df.src.isin(COLD)])
    # Their labelled train applies go too; their train non-applies stay (cold start: no train apply).
    edit_table(data, "labels/pairs.parquet",
               lambda df: df[~(df.member_id.isin(COLD) & (df.split == "train") & (df.label == 1))])
    # Make sure cold-start members have both classes among the test pairs.
    labels = read_labels(data)
    extra = pd.DataFrame({"member_id": [0, 1, 2, 3], "job_id": [39, 38, 37, 36], "label": [1, 0, 1, 0],
                          "timestamp": labels.timestamp.max() + 1, "split": "test"})
    edit_table(data, "labels/pairs.parquet",
               lambda df: pd.concat([df, extra.astype(df.dtypes.to_dict())], ignore_index=True))
    cfg = Config()
    cfg.data.dir = str(data)
    cfg.eval.num_candidates, cfg.eval.k = 25, 5
    (root / CONFIG_FILE).write_text(to_yaml(cfg))
    members = read_nodes(data, "member", ["id"])["id"].to_numpy(np.int64)
    jobs = read_nodes(data, "job", ["id"])["id"].to_numpy(np.int64)
    rng = np.random.default_rng(0)
    vectors = {}
    runner = Runner(root, log=lambda s: None)
    for i, variant in enumerate(VARIANTS):
        v = {"member": (members, rng.normal(size=(len(members), DIM)).astype(np.float32)),
             "job": (jobs, rng.normal(size=(len(jobs), DIM)).astype(np.float32))}
        vectors[variant] = v
        version = f"{variant}-test"

        def fn(version=version, v=v) -> dict:
            write_vectors(root / "store", version, v)
            return {"store": str(root / "store"), "version": version}

        runner(stage_name(variant), fn, inputs={}, config=(i,))
        trained = {"dir": str(root / "x"), "train_seconds": 10.0 + i}
        runner(report.training_stage(variant), lambda trained=trained: trained, inputs={})
    return {"root": root, "data": data, "vectors": vectors, "cfg": cfg}


def oracle(run, variant: str) -> dict:
    """The report's metrics recomputed from the raw vectors: sklearn AUC, brute-force ranks."""
    data, cfg = run["data"], run["cfg"]
    (m_ids, m), (j_ids, j) = run["vectors"][variant]["member"], run["vectors"][variant]["job"]
    if variant.startswith("llm_"):  # cosine
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        j = j / np.linalg.norm(j, axis=1, keepdims=True)
    member = dict(zip(m_ids.tolist(), m))
    job = dict(zip(j_ids.tolist(), j))
    test = read_labels(data, "test")
    score = np.array([member[a] @ job[b] for a, b in zip(test.member_id, test.job_id)])
    edges = read_edges(data, "member_applied")
    labels = read_labels(data)
    cold = ~test.member_id.isin(warm_members_by_hand(labels)).to_numpy()
    known = set(zip(edges.src, edges.dst))
    known |= set(zip(labels.member_id[labels.label == 1], labels.job_id[labels.label == 1]))
    candidates = report.candidate_jobs(j_ids, cfg.eval.num_candidates, cfg.eval.seed)
    ranks = []
    for a, y, s in zip(test.member_id, test.label, score):
        if y:
            rivals = [c for c in candidates if (a, c) not in known]
            ranks.append(1 + sum(member[a] @ job[c] >= s for c in rivals))
    ranks = np.array(ranks)
    applies = labels[(labels.split == "train") & (labels.label == 1)].member_id.value_counts()
    buckets = activity_buckets(test.member_id.map(applies).fillna(0))
    by_activity = {name: roc_auc_score(test.label[rows], score[rows]) if test.label[rows].nunique() == 2
                   else None for name, rows in buckets.items()}
    return {"auc": roc_auc_score(test.label, score),
            "auc_cold_start": roc_auc_score(test.label[cold], score[cold]),
            "auc_by_activity": by_activity,
            "mrr": np.mean(1 / ranks), "recall": np.mean(ranks <= cfg.eval.k)}


def warm_members_by_hand(labels: pd.DataFrame) -> set[int]:
    """The complement, computed with pandas: members with a training-period apply."""
    return set(labels.member_id[(labels.split == "train") & (labels.label == 1)])


def activity_buckets(train_applies: np.ndarray) -> dict[str, np.ndarray]:
    """The report's activity buckets by each pair's member's count of training-period applies."""
    a = np.asarray(train_applies)
    return {"cold_start": a == 0, "1-2": (a >= 1) & (a <= 2), "3-5": (a >= 3) & (a <= 5), "6+": a >= 6}


@pytest.fixture(scope="module")
def written(run):
    path = report.write_report(read_run(run["root"]))
    return json.loads((path.parent / report.REPORT_JSON).read_text()), path.read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_match_an_independent_computation(run, written, variant):
    got, want = written[0]["variants"][variant], oracle(run, variant)
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-6)
    assert got["auc_cold_start"] == pytest.approx(want["auc_cold_start"], abs=1e-6)
    assert got["mrr"] == pytest.approx(want["mrr"], abs=1e-6)
    assert got["recall_at_5"] == pytest.approx(want["recall"], abs=1e-6)
    assert got["auc_by_activity"].keys() == want["auc_by_activity"].keys()
    for bucket, value in want["auc_by_activity"].items():
        want_auc = None if value is None else pytest.approx(value, abs=1e-6)
        assert got["auc_by_activity"][bucket] == want_auc, bucket
    assert sum(v is not None for v in want["auc_by_activity"].values()) >= 2


def test_gnn_pair_scores_are_the_export_scores(run):
    from star_jax.gnn.export import split_scores
    from star_jax.store import EmbeddingStore

    r = read_run(run["root"])
    store = EmbeddingStore.open(*r.store_version("gnn_id_cat"))
    pairs = report.test_pairs(run["data"])
    positive = pairs.labels > 0
    candidates = report.candidate_jobs(pairs.job_ids, 10, 0)
    mask = np.ones((positive.sum(), len(candidates)), bool)
    ours = report.score_variant(store, pairs, candidates, mask, cosine=False).pairs
    np.testing.assert_allclose(ours, split_scores(store, run["data"], "test").scores, rtol=1e-5, atol=1e-6)


def test_report_files_and_schema(run, written):
    data, md = written
    assert {"variants", "baselines", "checks", "config", "data", "stages"} <= set(data)
    assert set(data["variants"]) == set(VARIANTS)
    assert [s["stage"] for s in data["stages"]][:2] == ["embed-llm_frozen", "pretrain"]  # run order
    for name, v in data["variants"].items():
        assert {"auc", "auc_cold_start", "mrr", "recall_at_5", "train_seconds"} <= set(v)
        assert v["paper_auc"] == report.PAPER_AUC.get(name)
    # Stage times and train_seconds: the stamps the runner wrote, read here as plain JSON.
    stamps = {p.stem: json.loads(p.read_text()) for p in (run["root"] / "stamps").glob("*.json")}
    for name in VARIANTS:
        recorded = stamps[report.training_stage(name)]["result"]["train_seconds"]
        assert data["variants"][name]["train_seconds"] == recorded
    assert {s["stage"]: s["seconds"] for s in data["stages"]} == {
        k: v["seconds"] for k, v in stamps.items() if "seconds" in v and k != "evaluate"}
    # The config: the run's config.yaml, parsed here by PyYAML.
    assert data["config"] == yaml.safe_load((run["root"] / CONFIG_FILE).read_text())
    # The data block, counted here with pandas from the tables.
    labels = read_labels(run["data"])
    test = labels[labels.split == "test"]
    applies = labels[(labels.split == "train") & (labels.label == 1)].member_id.value_counts()
    activity = test.member_id.map(applies).fillna(0).to_numpy()
    assert activity.max() >= 3  # more than the cold-start and 1-2 buckets hold pairs
    jobs = read_nodes(run["data"], "job", ["id"])
    assert {k: v for k, v in data["data"].items() if k != "dir"} == {
        "test_pairs": len(test),
        "test_positives": int((test.label == 1).sum()),
        "test_pairs_cold_start": int((activity == 0).sum()),
        "test_members": test.member_id.nunique(),
        "jobs": len(jobs),
        "candidates": min(run["cfg"].eval.num_candidates, jobs.id.nunique()),
        "pairs_by_activity": {name: int(rows.sum()) for name, rows in activity_buckets(activity).items()},
    }
    for name in VARIANTS:
        assert f"| {name} | {data['variants'][name]['auc']:.4f} |" in md
    for png in ("loss_curves", "roc", "auc_by_activity"):
        assert (run["root"] / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_block_is_run_baselines_on_the_runs_data(run, written):
    data, md = written
    direct = {report.BASELINE_KEYS[r["baseline"]]: r
              for r in run_baselines(run["data"], names=("tags", "text", "both"))}
    assert set(data["baselines"]) == {"tags", "text", "tags_text"}  # no latent/: no oracle
    assert data["baselines_reason"] is None
    for key, r in direct.items():
        assert data["baselines"][key]["auc"] == pytest.approx(r["test_auc"], abs=1e-9)
        assert data["baselines"][key]["auc_cold_start"] == pytest.approx(r["cold_start_auc"], abs=1e-9)
        assert f"| {report.BASELINE_ROWS[key]} | {r['test_auc']:.4f} | {r['cold_start_auc']:.4f} |" in md
    assert next(iter(direct.values()))["cold_test"] == data["data"]["test_pairs_cold_start"]


def test_cold_start_is_one_definition(run):
    data = run["data"]
    labels = read_labels(data)
    test = labels[labels.split == "test"]
    by_hand = ~test.member_id.isin(warm_members_by_hand(labels)).to_numpy()
    assert 0 < by_hand.sum() < len(by_hand)
    cold_members = set(test.member_id[by_hand])
    assert set(COLD) & set(test.member_id) <= cold_members
    train = labels[labels.split == "train"]
    assert cold_members & set(train.member_id)  # cold although they have train pairs (non-applies)
    np.testing.assert_array_equal(report.test_pairs(data).cold, by_hand)
    d = Data(data)
    np.testing.assert_array_equal(d.pairs.cold[d.pairs.split == "test"], by_hand)
    members = np.arange(60)
    warm = list(warm_members_by_hand(labels))
    np.testing.assert_array_equal(cold_start(data, members), ~np.isin(members, warm))


def test_checks_of_the_run(run, written):
    data, md = written
    checks = {c["id"]: c for c in data["checks"]}
    assert list(checks) == list(report.CHECKS)
    v, b = data["variants"], data["baselines"]
    gnn = {n: v[n]["auc"] for n in ("gnn_id_cat", "gnn_id_cat_llm", "gnn_id_llm")}
    best = max(gnn, key=gnn.get)
    want = {
        "finetune": v["llm_finetuned"]["auc"] - v["llm_frozen"]["auc"],
        "finetune_target": v["llm_finetuned"]["auc"] - v["llm_frozen"]["auc"],
        "llm_features": v["gnn_id_cat_llm"]["auc"] - v["gnn_id_cat"]["auc"],
        "cold_start_gain": (v["gnn_id_cat_llm"]["auc_cold_start"] - v["gnn_id_cat"]["auc_cold_start"])
                           - (v["gnn_id_cat_llm"]["auc"] - v["gnn_id_cat"]["auc"]),
        "gnn_vs_tags_text": gnn[best] - b["tags_text"]["auc"],
        "gnn_vs_llm": gnn[best] - v["llm_finetuned"]["auc"],
        "id_cat_vs_tags": v["gnn_id_cat"]["auc"] - b["tags"]["auc"],
    }
    for cid, c in checks.items():
        assert c["point"] == pytest.approx(want[cid], abs=1e-6), cid
        assert c["low"] <= c["point"] <= c["high"] and c["se"] > 0, cid
        assert c["verdict"] in ("holds", "fails", "unresolved"), cid
        interval = f"[{c['low']:+.4f}, {c['high']:+.4f}]"
        assert f"| {c['check']} | {c['point']:+.4f} | {interval} | **{c['verdict']}** |" in md
    assert checks["gnn_vs_tags_text"]["a"] == best
    assert f"best GNN ({best})" in checks["gnn_vs_tags_text"]["check"]
    assert checks["finetune_target"]["threshold"] == report.FINETUNE_TARGET


def test_baselines_degrade_to_a_reason(tmp_path):
    """Member ids that are not 0..n-1: the baselines cannot run, the report says why."""
    data = write_tiny_data(tmp_path / "data", members=20, jobs=15)
    edit_table(data, "nodes/member.parquet", lambda df: df.assign(id=df.id + 1000))
    for rel in ("member_skill", "member_title", "member_company", "member_applied"):
        edit_table(data, f"edges/{rel}.parquet", lambda df: df.assign(src=df.src + 1000))
    edit_table(data, "labels/pairs.parquet", lambda df: df.assign(member_id=df.member_id + 1000))
    block, tables, reason = report.baselines(data, 0)
    assert block == {} and tables == {} and "0..n-1" in reason
    pairs = report.test_pairs(data)
    scores = {"gnn_id_cat": pairs.labels + np.random.default_rng(0).normal(size=len(pairs.labels))}
    got = report.checks(pairs, scores, {"gnn_id_cat": {"auc": 0.6}}, baseline_reason=reason, resamples=20)
    c = {c["id"]: c for c in got}
    assert c["id_cat_vs_tags"]["verdict"] == "n/a" and "0..n-1" in c["id_cat_vs_tags"]["reason"]
    md = report.checks_markdown(list(c.values()))
    assert "| gnn_id_cat - baseline tags > 0 | n/a | n/a | **n/a** (baseline tags: not computed (" in md


def constructed_pairs(n_members: int = 300, per: int = 8, seed: int = 0):
    """TestPairs of random labels; the first 40 members cold start, all their pairs negative."""
    rng = np.random.default_rng(seed)
    members = np.repeat(np.arange(n_members), per)
    labels = rng.integers(0, 2, members.size).astype(np.int8)
    cold = members < 40
    labels[cold] = 0
    bucket = np.where(cold, "cold_start", "1-2")
    pairs = report.TestPairs(members, np.arange(members.size), labels, bucket, cold)
    return pairs, rng


def test_checks_give_verdict_words_and_reasons():
    pairs, rng = constructed_pairs()
    y, n = pairs.labels.astype(float), pairs.labels.size
    noise = rng.normal(size=n)
    scores = {"llm_frozen": 0.2 * y + rng.normal(size=n), "llm_finetuned": 2.0 * y + rng.normal(size=n),
              "gnn_id_cat": 0.5 * y + noise, "gnn_id_cat_llm": 0.5 * y + noise + 1e-3 * rng.normal(size=n),
              "baseline:tags": 3.0 * y + rng.normal(size=n)}
    variants = {k: {"auc": roc_auc_score(y, s)} for k, s in scores.items() if not k.startswith("baseline")}
    got = {c["id"]: c for c in report.checks(pairs, scores, variants, resamples=200)}
    assert {k: c["verdict"] for k, c in got.items()} == {
        "finetune": "holds", "finetune_target": "holds", "llm_features": "unresolved",
        "cold_start_gain": "n/a", "gnn_vs_tags_text": "n/a", "gnn_vs_llm": "fails", "id_cat_vs_tags": "fails"}
    assert got["cold_start_gain"]["reason"] == "the cold-start test pairs have a single class"
    assert got["gnn_vs_tags_text"]["reason"] == "baseline tags_text: no score for some test pairs"
    for cid in ("finetune", "gnn_vs_llm", "id_cat_vs_tags"):
        a, b = got[cid]["a"], got[cid]["b"]
        assert got[cid]["point"] == pytest.approx(roc_auc_score(y, scores[a]) - roc_auc_score(y, scores[b]))
    assert got["gnn_vs_llm"]["a"] == max(("gnn_id_cat", "gnn_id_cat_llm"), key=lambda k: variants[k]["auc"])
    no_cold = pairs._replace(cold=np.zeros(n, bool))
    c = {c["id"]: c for c in report.checks(no_cold, scores, variants, resamples=20)}["cold_start_gain"]
    assert c["verdict"] == "n/a" and c["reason"] == "no test pairs of cold-start members"
    missing = {c["id"]: c for c in report.checks(pairs, {}, {}, resamples=20)}
    assert missing["finetune"]["reason"] == "llm_finetuned: not in this run; llm_frozen: not in this run"
    assert missing["gnn_vs_llm"]["reason"].startswith("no GNN variant in this run")


def test_candidates_are_fixed_and_capped():
    ids = np.arange(100, 200)
    a, b = report.candidate_jobs(ids, 30, 7), report.candidate_jobs(ids[::-1], 30, 7)
    assert len(a) == 30 and len(set(a)) == 30 and (a == b).all()
    assert (report.candidate_jobs(ids, 1000, 0) == ids).all()


@pytest.mark.parametrize("variant", ["gnn_id_cat_llm", "llm_finetuned"])
def test_recommend_ranks_every_job_except_the_applied(run, variant):
    (m_ids, m), (j_ids, j) = run["vectors"][variant]["member"], run["vectors"][variant]["job"]
    if variant.startswith("llm_"):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        j = j / np.linalg.norm(j, axis=1, keepdims=True)
    edges = read_edges(run["data"], "member_applied")
    texts = read_nodes(run["data"], "job", ["id", "text"]).set_index("id")["text"]
    for member in (COLD[0], int(edges.src.iloc[0])):
        applied = set(edges.dst[edges.src == member])
        scores = {int(b): float(m[m_ids == member][0] @ v) for b, v in zip(j_ids, j) if b not in applied}
        want = sorted(scores, key=lambda b: -scores[b])[:7]
        recs, applies = recommend(read_run(run["root"]), member, 7, variant)
        assert [r.job_id for r in recs] == want
        assert [r.score for r in recs] == pytest.approx([scores[b] for b in want], abs=1e-5)
        assert [r.title for r in recs] == [texts[b].splitlines()[0] for b in want]
        assert applies == len(edges[edges.src == member])


def test_recommend_cli_and_unknown_member(run, capsys):
    root = str(run["root"])
    assert cli.main(["recommend", "--run", root, "--member", str(COLD[0]), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "cold start" in out and len(out.strip().splitlines()) == 5
    assert cli.main(["recommend", "--run", root, "--member", "999999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--member 999999: unknown member id" in err[0]


# -- degenerate data: n/a and why, never a traceback ----------------------------------------------


def synthetic_scores(pairs, s: np.ndarray, rng) -> report.Scores:
    """Scores of the pairs `s` and the positives' ranks among 20 random candidates."""
    pos = pairs.labels > 0
    return report.Scores(s, positive_ranks(s[pos], rng.normal(size=(int(pos.sum()), 20))))


def minimal_report(pairs, variants: dict, checks_: list) -> dict:
    """What report_markdown reads, around `variants` and `checks_`."""
    buckets = {name: int((pairs.bucket == name).sum()) for name, _, _ in report.ACTIVITY_BUCKETS}
    return {"variants": variants, "baselines": {}, "baselines_reason": "not asked for", "checks": checks_,
            "stages": [], "config": {"eval": {"k": 5}, "gnn": {"out_dim": 8}},
            "data": {"dir": "d", "test_pairs": len(pairs.labels), "test_positives": int(pairs.labels.sum()),
                     "test_pairs_cold_start": int(pairs.cold.sum()),
                     "test_members": len(np.unique(pairs.member_ids)), "candidates": 20,
                     "pairs_by_activity": buckets}}


def scored(pairs, scores: dict[str, np.ndarray], rng) -> dict:
    return {name: {**report.variant_metrics(pairs, synthetic_scores(pairs, s, rng), 5), "train_seconds": None,
                   "paper_auc": None} for name, s in scores.items()}


def test_a_test_split_without_cold_start_members_reports_n_a_and_why():
    pairs, rng = constructed_pairs()
    pairs = pairs._replace(cold=np.zeros(len(pairs.labels), bool), bucket=np.full(len(pairs.labels), "1-2"))
    y = pairs.labels.astype(float)
    scores = {"gnn_id_cat": y + rng.normal(size=y.size), "gnn_id_cat_llm": y + rng.normal(size=y.size)}
    variants = scored(pairs, scores, rng)
    v = variants["gnn_id_cat"]
    assert v["auc"] == pytest.approx(roc_auc_score(y, scores["gnn_id_cat"]))
    assert v["auc_cold_start"] is None
    assert v["reasons"]["auc_cold_start"] == "no test pairs of cold-start members"
    assert v["auc_by_activity"]["cold_start"] is None and v["auc_by_activity"]["1-2"] == v["auc"]
    assert v["reasons"]["auc_by_activity.3-5"] == "no test pairs in the 3-5 bucket"
    checks_ = report.checks(pairs, scores, variants, resamples=20)
    md = report.report_markdown(minimal_report(pairs, variants, checks_))
    assert "| gnn_id_cat | " in md
    assert "- n/a, cold-start AUC of every variant: no test pairs of cold-start members" in md
    assert "- n/a, 6+ of every variant: no test pairs in the 6+ bucket" in md
    assert "**n/a** (no test pairs of cold-start members)" in md
    json.dumps(variants, allow_nan=False)  # no NaN reaches report.json


def test_a_slice_with_one_class_reports_n_a_and_why():
    pairs, rng = constructed_pairs()  # the cold-start members' pairs are all negative
    y = pairs.labels.astype(float)
    variants = scored(pairs, {"gnn_id_cat": y + rng.normal(size=y.size)}, rng)
    v = variants["gnn_id_cat"]
    assert v["auc_cold_start"] is None
    assert v["reasons"]["auc_cold_start"] == "the cold-start test pairs have a single class"
    assert v["reasons"]["auc_by_activity.cold_start"] == "the cold_start test pairs have a single class"
    md = report.table_markdown(minimal_report(pairs, variants, []))
    assert "- n/a, cold-start AUC of every variant: the cold-start test pairs have a single class" in md


def test_a_variant_with_constant_or_non_finite_scores_reports_n_a_and_why(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    pairs, rng = constructed_pairs()
    y, n = pairs.labels.astype(float), pairs.labels.size
    nan = y + rng.normal(size=n)
    nan[::50] = np.nan
    scores = {"llm_frozen": np.full(n, 0.25), "llm_finetuned": y + rng.normal(size=n), "gnn_id_cat": nan}
    variants = scored(pairs, scores, rng)
    flat, finetuned, broken = variants["llm_frozen"], variants["llm_finetuned"], variants["gnn_id_cat"]
    assert flat["auc"] is None and flat["reasons"]["auc"] == "the test pairs all have the same score"
    assert finetuned["auc"] == pytest.approx(roc_auc_score(y, scores["llm_finetuned"])) and "auc" not in \
        finetuned["reasons"]
    assert broken["auc"] is None and broken["mrr"] is None
    assert broken["reasons"]["auc"] == f"the test pairs have {len(nan[::50])} non-finite scores"
    json.dumps(variants, allow_nan=False)
    got = {c["id"]: c for c in report.checks(pairs, scores, variants, resamples=20)}
    assert got["finetune"]["verdict"] == "n/a" and got["finetune"]["low"] is None
    assert got["finetune"]["reason"] == "llm_frozen: the test pairs all have the same score"
    md = report.report_markdown(minimal_report(pairs, variants, list(got.values())))
    assert "| llm_frozen | n/a |" in md
    assert "- n/a, test AUC of llm_frozen: the test pairs all have the same score" in md
    report.plot_roc({"labels": pairs.labels, **scores}, {"variants": variants}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_with_one_test_member_has_effects_but_no_intervals():
    pairs, rng = constructed_pairs(n_members=1, per=30)
    pairs = pairs._replace(labels=(np.arange(30) % 3 == 0).astype(np.int8), cold=np.zeros(30, bool),
                           bucket=np.full(30, "1-2"))
    y = pairs.labels.astype(float)
    scores = {"llm_frozen": rng.normal(size=30), "llm_finetuned": y + rng.normal(size=30)}
    variants = scored(pairs, scores, rng)
    got = {c["id"]: c for c in report.checks(pairs, scores, variants, resamples=20)}["finetune"]
    gap = roc_auc_score(y, scores["llm_finetuned"]) - roc_auc_score(y, scores["llm_frozen"])
    assert got["point"] == pytest.approx(gap)
    assert (got["low"], got["high"], got["se"], got["verdict"]) == (None, None, None, "n/a")
    assert got["reason"] == "a single test member: no member-bootstrap interval"
    md = report.checks_markdown([got])
    assert f"| {_signed_text(got['point'])} | n/a | **n/a** (a single test member: no member-bootstrap " \
        "interval) |" in md


def _signed_text(x: float) -> str:
    return format(x, "+.4f")


def test_a_full_disk_while_writing_the_report_keeps_the_previous_one(run, written, monkeypatch):
    import errno
    import os

    import star_jax.fileio

    root = run["root"]
    before = {name: (root / name).read_bytes() for name in (report.REPORT_JSON, report.REPORT_MD)}
    real = os.fsync
    calls = []

    def full(fd):  # the second file of the pair does not fit
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(star_jax.fileio.os, "fsync", full)
    monkeypatch.setattr(report, "plot_losses", lambda *a: None)  # the plots' own writes are not counted
    monkeypatch.setattr(report, "plot_roc", lambda *a: None)
    monkeypatch.setattr(report, "plot_buckets", lambda *a: None)
    with pytest.raises(StarError) as e:
        report.write_report(read_run(root))
    assert str(e.value) == (f"{root / report.REPORT_MD}: no space left on device; it and the files written "
                            "with it were left as they were")
    assert {name: (root / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".report")) == []
    monkeypatch.setattr(star_jax.fileio.os, "fsync", real)  # space freed: a rerun writes it
    report.write_report(read_run(root))
    assert json.loads((root / report.REPORT_JSON).read_text())["variants"] == written[0]["variants"]
