"""Our metrics against scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, roc_auc_score, top_k_accuracy_score

from star_jax import metrics


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(ties):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = labels * 0.7 + rng.normal(size=500)
    if ties:
        scores = np.round(scores, 1)  # many exact ties
    assert metrics.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5)))


def test_ranks_mrr_recall_match_sklearn():
    # One positive per query among C candidates: sklearn's LRAP is then exactly 1/rank, with ties
    # counted against the positive, and top-k accuracy is recall@k.
    rng = np.random.default_rng(1)
    q, c = 200, 50
    scores = np.round(rng.normal(size=(q, c)), 1)
    positive = rng.integers(0, c, q)
    scores[np.arange(q), positive] += 0.8
    y = np.zeros((q, c), dtype=int)
    y[np.arange(q), positive] = 1

    others = y == 0
    ranks = metrics.positive_ranks(scores[np.arange(q), positive], scores, candidate_mask=others)
    assert metrics.mrr(ranks) == pytest.approx(label_ranking_average_precision_score(y, scores), abs=1e-12)
    # sklearn breaks ties in favour of the lower index rather than against the positive, so
    # compare on tie-free scores.
    smooth = scores + rng.normal(scale=1e-6, size=scores.shape)
    ranks = metrics.positive_ranks(smooth[np.arange(q), positive], smooth, candidate_mask=others)
    for k in (1, 5, 10):
        expected = top_k_accuracy_score(positive, smooth, k=k, labels=np.arange(c))
        assert metrics.recall_at_k(ranks, k) == pytest.approx(expected, abs=1e-12)


def test_activity_buckets_and_grouped_auc():
    buckets = metrics.activity_bucket(np.array([0, 1, 2, 3, 6, 100]))
    assert buckets.tolist() == ["cold_start", "1-2", "1-2", "3-5", "6+", "6+"]
    labels = np.array([0, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.5, 0.4])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    got = metrics.auc_by_group(labels, scores, groups)
    assert got == {"a": 1.0, "b": 0.0}  # group c has a single class


@pytest.mark.parametrize("where", ["subset", "elsewhere"])
def test_subset_gap_interval_finds_where_a_model_gains(where):
    # b sees a weak signal everywhere; a adds a strong one only inside (or only outside) the subset.
    rng = np.random.default_rng(2)
    n = 3000
    members = rng.integers(0, 600, n)
    subset = members < 200
    labels = rng.integers(0, 2, n)
    b = 0.3 * labels + rng.normal(size=n)
    boost = subset if where == "subset" else ~subset
    a = b + np.where(boost, 1.5 * labels, 0.0)
    got = metrics.subset_gap_interval(labels, a, b, subset, members, resamples=200)

    def gap(m):
        return roc_auc_score(labels[m], a[m]) - roc_auc_score(labels[m], b[m])

    assert got["point"] == pytest.approx(gap(subset) - gap(np.ones(n, bool)), abs=1e-12)
    assert got["low"] < got["point"] < got["high"]
    if where == "subset":
        assert got["low"] > 0 and got["share_positive"] == 1.0
    else:
        assert got["high"] < 0 and got["share_positive"] == 0.0


@pytest.mark.parametrize("low, high, threshold, word", [
    (0.01, 0.03, 0.0, "holds"), (-0.03, -0.01, 0.0, "fails"), (-0.021, 0.020, 0.0, "unresolved"),
    (0.0, 0.02, 0.0, "unresolved"), (0.06, 0.09, 0.05, "holds"), (0.02, 0.09, 0.05, "unresolved"),
    (0.01, 0.04, 0.05, "fails"), (None, 0.1, 0.0, "n/a"), (float("nan"), 0.1, 0.0, "n/a"),
])
def test_verdict_words(low, high, threshold, word):
    assert metrics.verdict(low, high, threshold) == word


def test_subset_gap_interval_is_none_where_it_cannot_be_computed():
    rng = np.random.default_rng(0)
    n = 400
    members, labels = rng.integers(0, 80, n), rng.integers(0, 2, n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    one_class = (members < 20) & (labels == 1)  # the subset holds applies only
    assert metrics.subset_gap_interval(labels, a, b, one_class, members, resamples=50) is None
    assert metrics.subset_gap_interval(labels, a, b, np.zeros(n, bool), members, resamples=50) is None
    # A finite point whose every resample is NaN (the old IndexError): no interval either.
    everyone = np.arange(n)
    stat = lambda idx: 0.0 if len(np.unique(idx)) == n else float("nan")  # noqa: E731
    assert metrics.cluster_bootstrap(stat, everyone, resamples=20) is None


def test_auc_gap_interval_is_paired_and_its_se_matches_the_spread_of_the_data():
    rng = np.random.default_rng(1)
    members = np.repeat(np.arange(400), 5)
    labels = rng.integers(0, 2, members.size)
    b = 0.5 * labels + rng.normal(size=members.size)
    a = b + 0.5 * labels
    got = metrics.auc_gap_interval(labels, a, b, members, resamples=300)
    assert got["point"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b), abs=1e-12)
    assert 0 < got["low"] < got["point"] < got["high"] and got["share_positive"] == 1.0
    # The SE of a mean over clusters: the bootstrap's against the textbook sd / sqrt(clusters).
    values = rng.normal(size=members.size) + np.repeat(rng.normal(size=400), 5)
    boot = metrics.cluster_bootstrap(lambda idx: values[idx].mean(), members, resamples=2000)
    by_member = values.reshape(400, 5).mean(1)
    assert boot["se"] == pytest.approx(by_member.std(ddof=1) / np.sqrt(400), rel=0.1)
    assert boot["point"] == pytest.approx(values.mean())


def test_the_bootstrap_intervals_equal_resampling_the_rows_themselves():
    """The gaps' resamples weight each row by its repeats (one sort per score vector); the interval
    must be the one of recomputing every AUC on the repeated rows, ties included."""
    rng = np.random.default_rng(3)
    members = rng.integers(0, 150, 1200)
    labels = rng.integers(0, 2, members.size)
    a = np.round(0.4 * labels + rng.normal(size=members.size), 1)  # rounded: many ties
    b = np.round(0.2 * labels + rng.normal(size=members.size), 1)
    subset = members < 50

    def gap(idx, rows=slice(None)):
        y, s = labels[idx][rows], idx[rows]
        return metrics.auc(y, a[s]) - metrics.auc(y, b[s])

    want = metrics.cluster_bootstrap(gap, members, resamples=100, seed=4)
    got = metrics.auc_gap_interval(labels, a, b, members, resamples=100, seed=4)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    want = metrics.cluster_bootstrap(lambda idx: gap(idx, subset[idx]) - gap(idx), members,
                                     resamples=100, seed=4)
    got = metrics.subset_gap_interval(labels, a, b, subset, members, resamples=100, seed=4)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    w = rng.integers(0, 4, members.size)  # against scikit-learn's weighted AUC too
    tied = metrics.TiedScores(labels, a)
    assert tied.auc(w.astype(float)) == pytest.approx(roc_auc_score(labels, a, sample_weight=w), abs=1e-12)
