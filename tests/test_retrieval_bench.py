"""benchmarks/retrieval.py: its exact search and recall (what every recall@10 in docs/retrieval.md
rests on) against numpy, and the merge that keeps earlier sizes' rows and provenance."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package
from benchmarks.retrieval import docs_text, exact_top_k, merge, mixture, recall  # noqa: E402


def test_exact_top_k_and_recall_match_numpy():
    x = mixture(2_050, per_component=200, seed=3)
    queries, jobs = x[:50], x[50:]
    search, _ = exact_top_k(jobs, 10, chunk=16)  # chunks of 16 queries: the last one is short
    scores, rows = search(queries)
    want = np.argsort(-(queries.astype(np.float64) @ jobs.T.astype(np.float64)), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ jobs.T, want, 1), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    assert recall(want, want) == 1.0
    half = want.copy()
    half[:, 5:] = -1  # 5 of 10 found
    half[0] = -1  # none found for the first query
    assert recall(half, want) == (0.5 * 49) / 50


def row(size, method, qps, jobs=10):
    return {"size": size, "jobs": jobs, "method": method, "params": "p", "recall": 1.0, "single_qps": qps,
            "batched_qps": qps, "build_s": 0.0, "index_mib": 1.0, "build_rss_mib": 0.0}


def test_merge_replaces_the_sizes_measured_and_keeps_the_rest():
    machine = {"cpu": "cpu", "cores": 2, "ram_gib": 1.0, "load_avg_1m": 0.5, "python": "3"}
    old = {"rows": [row("tiny", "exact (jax.lax.top_k)", 1), row("1m", "exact (jax.lax.top_k)", 2),
                    row("1m", "ivf", 20)],
           "sources": {"tiny": "old tiny", "1m": "old 1m"}, "seconds": {"tiny": 1, "1m": 2},
           "runs": {"tiny": {"when": "then", "machine": machine}, "1m": {"when": "then", "machine": machine}}}
    new = {"rows": [row("tiny", "exact (jax.lax.top_k)", 5), row("tiny", "flat", 10)],
           "sources": {"tiny": "new tiny"}, "seconds": {"tiny": 3},
           "runs": {"tiny": {"when": "now", "machine": machine}}}
    got = merge(old, new)
    assert [(r["size"], r["method"], r["single_qps"]) for r in got["rows"]] == [
        ("tiny", "exact (jax.lax.top_k)", 5), ("tiny", "flat", 10), ("1m", "exact (jax.lax.top_k)", 2),
        ("1m", "ivf", 20)]
    assert got["sources"] == {"tiny": "new tiny", "1m": "old 1m"}
    assert got["runs"]["tiny"]["when"] == "now" and got["runs"]["1m"]["when"] == "then"
    text = docs_text(got)
    assert "| tiny | 10 | flat | p | 1.000 | 10 | 2.0 |" in text  # the ratio to its own size's exact row
    assert "| 1m | 10 | ivf | p | 1.000 | 20 | 10.0 |" in text
    assert "tiny: now" in text and "1m: then" in text
