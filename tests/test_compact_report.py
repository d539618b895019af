"""The report's compact section: written when `llm_train.matryoshka_dims` is set, absent otherwise.

Its numbers are recomputed from the vectors the test stored, with scikit-learn's AUC and PCA.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import write_tiny_data
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from star_jax import cli
from star_jax.config import Config, StoreConfig, to_yaml
from star_jax.data.tables import read_labels, read_nodes
from star_jax.eval import report
from star_jax.eval.runs import CONFIG_FILE, stage_name
from star_jax.pipeline import Runner
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

DIM = 8
DIMS = [2, 4]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory whose only variant is llm_finetuned, stored as float32 8-d vectors."""
    root = tmp_path_factory.mktemp("compact_run")
    data = write_tiny_data(root / "data", members=60, jobs=40, seed=2)
    cfg = Config()
    cfg.data.dir = str(data)
    cfg.eval.num_candidates, cfg.eval.variants = 25, ["llm_finetuned"]
    (root / CONFIG_FILE).write_text(to_yaml(cfg))
    rng = np.random.default_rng(0)
    vectors = {t: (read_nodes(data, t, ["id"])["id"].to_numpy(np.int64),) for t in ("member", "job")}
    vectors = {t: (ids, (rng.normal(size=(len(ids), DIM)) * np.linspace(2, 0.5, DIM)).astype(np.float32))
               for t, (ids,) in vectors.items()}

    def fn() -> dict:
        spec = EmbeddingSpec(model="test/llm", adapter=None, tokenizer="none", max_len=0, pooling="test",
                             dim=DIM)
        inputs = {t: (ids, text_hash(f"{t}{i}" for i in ids)) for t, (ids, _) in vectors.items()}
        writer = EmbeddingWriter.open(root / "store", "towers", spec, inputs, StoreConfig(dtype="float32"))
        for t in writer.node_types:
            for block in writer.pending_blocks(t):
                writer.write(t, block.rows, vectors[t][1][block.positions])
        writer.publish()
        return {"store": str(root / "store"), "version": "towers"}

    Runner(root, log=lambda s: None)(stage_name("llm_finetuned"), fn, inputs={}, config=(0,))
    return {"root": root, "data": data, "vectors": vectors}


def test_the_report_carries_the_compact_trade_off_only_when_matryoshka_is_set(run, capsys):
    root = run["root"]
    assert cli.main(["evaluate", "--run", str(root)]) == 0
    plain = json.loads((root / report.REPORT_JSON).read_text())
    assert "compact" not in plain and "## Compact vectors" not in (root / report.REPORT_MD).read_text()
    assert cli.main(["evaluate", "--run", str(root), "--set", f"llm_train.matryoshka_dims={DIMS}"]) == 0
    got = json.loads((root / report.REPORT_JSON).read_text())["compact"]
    md = (root / report.REPORT_MD).read_text()
    assert "## Compact vectors (llm_train.matryoshka_dims)" in md and "plots/compact.png" in md
    assert (root / report.PLOTS / "compact.png").stat().st_size > 0

    (m_ids, m), (j_ids, j) = run["vectors"]["member"], run["vectors"]["job"]
    test = read_labels(run["data"], "test")
    mi, ji = np.searchsorted(m_ids, test.member_id), np.searchsorted(j_ids, test.job_id)
    pca = PCA(n_components=max(DIMS), svd_solver="full").fit(np.concatenate([m, j]).astype(np.float64))
    pm, pj = pca.transform(m.astype(np.float64)), pca.transform(j.astype(np.float64))
    assert got["version"] == "towers" and got["dim"] == DIM and got["rows"] == len(m) + len(j)
    assert [w["dims"] for w in got["widths"]] == [*DIMS, DIM]
    for w in got["widths"]:
        d = w["dims"]
        want = roc_auc_score(test.label, np.sum(_unit(m[:, :d])[mi] * _unit(j[:, :d])[ji], 1))
        assert w["prefix_auc"] == pytest.approx(want, abs=1e-9)
        assert w["vector_bytes"] == (len(m) + len(j)) * d * 4
        if d < DIM:
            want = roc_auc_score(test.label, np.sum(_unit(pm[:, :d])[mi] * _unit(pj[:, :d])[ji], 1))
            assert w["pca_auc"] == pytest.approx(want, abs=1e-6)
            assert f"| {d} | {DIM / d:g}x | {w['prefix_auc']:.4f} (" in md
        else:
            assert "pca_auc" not in w
        # No compact stage and no gnn_id_cat_llm in this run: those cells are n/a, and say why.
        assert w["store_bytes"] is None and w["lookup_rows_s"] is None and w["gnn_auc"] is None
        assert w["gnn_reason"] == "gnn_id_cat_llm is not in eval.variants"
    assert "no `compact` stage in this run" in got["costs_reason"]
    assert "- n/a: gnn_id_cat_llm is not in eval.variants" in md
