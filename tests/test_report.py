"""`star-jax evaluate` and `star-jax recommend` on a run directory with stand-in stage outputs.

The run's store holds vectors written by the test through the store's writer API, so every number
of the report can be recomputed here from those vectors with scikit-learn and plain loops.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from data_fixtures import edit_table, write_tiny_data
from sklearn.metrics import roc_auc_score

from star_jax import cli
from star_jax.config import Config, StoreConfig, to_yaml
from star_jax.data.tables import read_edges, read_labels, read_nodes
from star_jax.eval import report
from star_jax.eval.recommend import recommend
from star_jax.pipeline import CONFIG_FILE, VARIANTS, Runner, read_run, stage_name
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

DIM = 8
COLD = [0, 1, 2, 3, 4, 5]  # members stripped of their apply edges: cold start


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
    applies = edges.src.value_counts()
    cold = np.array([applies.get(a, 0) == 0 for a in test.member_id])
    known = set(zip(edges.src, edges.dst))
    labels = read_labels(data)
    known |= set(zip(labels.member_id[labels.label == 1], labels.job_id[labels.label == 1]))
    candidates = report.candidate_jobs(j_ids, cfg.eval.num_candidates, cfg.eval.seed)
    ranks = []
    for a, y, s in zip(test.member_id, test.label, score):
        if y:
            rivals = [c for c in candidates if (a, c) not in known]
            ranks.append(1 + sum(member[a] @ job[c] >= s for c in rivals))
    ranks = np.array(ranks)
    return {"auc": roc_auc_score(test.label, score),
            "auc_cold_start": roc_auc_score(test.label[cold], score[cold]),
            "mrr": np.mean(1 / ranks), "recall": np.mean(ranks <= cfg.eval.k)}


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
    assert got["auc_by_activity"]["cold_start"] == got["auc_cold_start"]


def test_gnn_pair_scores_are_the_export_scores(run):
    from star_jax.gnn.export import split_scores
    from star_jax.store import EmbeddingStore

    r = read_run(run["root"])
    store = EmbeddingStore.open(*r.store_version("gnn_id_cat"))
    pairs = report.test_pairs(run["data"], "member_applied")
    positive = pairs.labels > 0
    candidates = report.candidate_jobs(pairs.job_ids, 10, 0)
    mask = np.ones((positive.sum(), len(candidates)), bool)
    ours = report.score_variant(store, pairs, candidates, mask, cosine=False).pairs
    np.testing.assert_allclose(ours, split_scores(store, run["data"], "test").scores, rtol=1e-5, atol=1e-6)


def test_report_files_and_schema(run, written):
    data, md = written
    assert {"variants", "config", "data", "orderings", "stages"} <= set(data)
    assert set(data["variants"]) == set(VARIANTS)
    assert [s["stage"] for s in data["stages"]][:2] == ["embed-llm_frozen", "pretrain"]  # run order
    for name, v in data["variants"].items():
        assert {"auc", "auc_cold_start", "mrr", "recall_at_5", "train_seconds"} <= set(v)
        assert v["paper_auc"] == report.PAPER_AUC.get(name)
    assert data["variants"]["gnn_id_llm"]["train_seconds"] == 14.0
    assert data["config"]["eval"]["k"] == 5 and data["data"]["candidates"] == 25
    cold_check = data["orderings"][2]
    gap = {k: data["variants"]["gnn_id_cat_llm"][k] - data["variants"]["gnn_id_cat"][k]
           for k in ("auc", "auc_cold_start")}
    assert cold_check["interval"]["point"] == pytest.approx(gap["auc_cold_start"] - gap["auc"], abs=1e-9)
    assert cold_check["interval"]["low"] <= cold_check["interval"]["point"] <= cold_check["interval"]["high"]
    for name in VARIANTS:
        assert f"| {name} | {data['variants'][name]['auc']:.4f} |" in md
    for png in ("loss_curves", "roc", "auc_by_activity"):
        assert (run["root"] / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_candidates_are_fixed_and_capped():
    ids = np.arange(100, 200)
    a, b = report.candidate_jobs(ids, 30, 7), report.candidate_jobs(ids[::-1], 30, 7)
    assert len(a) == 30 and len(set(a)) == 30 and (a == b).all()
    assert (report.candidate_jobs(ids, 1000, 0) == ids).all()


def test_orderings_are_checked():
    v = {"llm_frozen": {"auc": 0.6, "auc_cold_start": 0.55},
         "llm_finetuned": {"auc": 0.7, "auc_cold_start": 0.6},
         "gnn_id_cat": {"auc": 0.8, "auc_cold_start": 0.6},
         "gnn_id_cat_llm": {"auc": 0.82, "auc_cold_start": 0.7}}
    assert [c["holds"] for c in report.orderings(v)] == [True, True, True, True]
    v["gnn_id_cat_llm"]["auc_cold_start"] = 0.61  # gap 0.01 on cold start < 0.02 overall
    v["llm_frozen"]["auc"] = 0.5  # not strictly above chance
    assert [c["holds"] for c in report.orderings(v)] == [True, True, False, False]
    assert [c["holds"] for c in report.orderings({"gnn_id_cat": v["gnn_id_cat"]})][:3] == [None, None, None]


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


def test_seed_summary_tables_and_checks():
    from star_jax.eval.seeds import checks, seeds_markdown

    def fake(frozen: float, cold_gain: float) -> dict:
        aucs = {"llm_frozen": (frozen, frozen), "llm_finetuned": (0.70, 0.65), "gnn_id_cat": (0.80, 0.60),
                "gnn_id_cat_llm": (0.82, 0.60 + cold_gain)}
        variants = {n: {"auc": a, "auc_cold_start": c} for n, (a, c) in aucs.items()}
        return {"variants": variants, "orderings": report.orderings(variants),
                "stages": [{"stage": "synth", "seconds": 1.0}, {"stage": "pretrain", "seconds": 99.0}]}

    good, bad = fake(0.60, 0.05), fake(0.68, 0.01)  # bad: fine-tuning gains 0.02, cold-start gap < overall
    assert all(checks(good).values())
    assert [c for c, h in checks(bad).items() if not h] == [
        "llm_finetuned > llm_frozen by >= 0.05", "LLM features gain more on cold-start members than overall"]
    md = seeds_markdown({2: bad, 1: good}, "python -m star_jax.eval.seeds --out runs/seeds")
    assert "| 1 | 0.6000 | 0.7000 | 0.8000 | 0.8200 |" in md  # seeds sorted, the paper's row order
    assert "| 2 | +0.0200 | +0.0200 | +0.0100 | n/a | 100 |" in md
    good["orderings"][2]["interval"] = {"point": 0.03, "low": -0.01, "high": 0.07, "share_positive": 0.9}
    assert "| 1 | +0.1000 | +0.0200 | +0.0500 | [-0.0100, +0.0700] | 100 |" in seeds_markdown({1: good}, "")
    assert "| llm_finetuned > llm_frozen by >= 0.05 | yes | **NO** |" in md
    assert md.rstrip().endswith("seed 2: LLM features gain more on cold-start members than overall.")
