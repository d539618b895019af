"""Offline metrics of the paper's evaluation: AUC on labelled pairs, MRR and recall@k on a fixed
candidate set (ARCHITECTURE decision 6), and member-bootstrap intervals with their verdict words.

All functions are plain numpy and take scores, never models, so every variant of the ablation
table (LLM cosine, GNN dot product) is scored the same way. `tests/test_metrics.py` checks them
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

# Member-activity buckets by the number of training-period applies: cold start first.
ACTIVITY_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("cold_start", 0, 0),
    ("1-2", 1, 2),
    ("3-5", 3, 5),
    ("6+", 6, np.iinfo(np.int64).max),
)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic, ties counted half. NaN if one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks resolve ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def positive_ranks(positive_scores: np.ndarray, candidate_scores: np.ndarray,
                   candidate_mask: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each positive among its candidates, ties counted against the positive.

    positive_scores: [Q] score of each query's positive item.
    candidate_scores: [Q, C] scores of the fixed candidate set for each query.
    candidate_mask: [Q, C] bool, False for candidates to ignore (the positive itself, or other
      known positives of the query: "filtered" ranking).
    """
    pos = np.asarray(positive_scores, dtype=np.float64)[:, None]
    cand = np.asarray(candidate_scores, dtype=np.float64)
    beats = cand >= pos
    if candidate_mask is not None:
        beats &= np.asarray(candidate_mask, dtype=bool)
    return 1 + beats.sum(axis=1)


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / np.asarray(ranks, dtype=np.float64)))


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) <= k))


def activity_bucket(num_train_applies: np.ndarray) -> np.ndarray:
    """The `ACTIVITY_BUCKETS` name of each member, from its count of training-period applies."""
    counts = np.asarray(num_train_applies)
    out = np.empty(counts.shape, dtype=object)
    for name, lo, hi in ACTIVITY_BUCKETS:
        out[(counts >= lo) & (counts <= hi)] = name
    return out


def auc_by_group(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """AUC within each group (e.g. activity bucket), skipping groups with a single class."""
    out = {}
    for g in dict.fromkeys(np.asarray(groups).tolist()):
        sel = np.asarray(groups) == g
        value = auc(np.asarray(labels)[sel], np.asarray(scores)[sel])
        if not np.isnan(value):
            out[str(g)] = value
    return out


def verdict(low: float | None, high: float | None, threshold: float = 0.0) -> str:
    """The word for the claim "effect > `threshold`" given the effect's interval [low, high].

    holds: the interval lies above the threshold; fails: below it; unresolved: it contains the
    threshold; n/a: no interval (None or NaN).
    """
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return "n/a"
    if low > threshold:
        return "holds"
    if high < threshold:
        return "fails"
    return "unresolved"


def cluster_bootstrap(
    stat: Callable[[np.ndarray], float], clusters: np.ndarray, *, resamples: int = 500,
    level: float = 0.95, seed: int = 0,
) -> dict[str, float] | None:
    """A percentile interval for `stat(rows)` by resampling whole clusters with replacement.

    `clusters` [n] names each row's cluster (the test member: a member's pairs share its embedding,
    so they are not independent); `stat` takes the row indices of one resample (repeats included).
    Returns {"point", "low", "high", "se" (the resamples' standard deviation), "share_positive"
    (the share of resamples above zero), "resamples" (how many gave a number)}, or None when the
    point or every resample is NaN (e.g. a slice with one class).
    """
    clusters = np.asarray(clusters)
    point = stat(np.arange(clusters.size))
    if np.isnan(point):
        return None
    _, index = np.unique(clusters, return_inverse=True)
    order, sizes = np.argsort(index, kind="stable"), np.bincount(index)
    starts = np.cumsum(sizes) - sizes  # cluster c's rows: order[starts[c] : starts[c] + sizes[c]]
    rng = np.random.default_rng(seed)

    def resample() -> np.ndarray:
        pick = rng.integers(0, sizes.size, sizes.size)
        n = sizes[pick]
        return order[np.repeat(starts[pick] - (np.cumsum(n) - n), n) + np.arange(n.sum())]

    boots = np.array([stat(resample()) for _ in range(resamples)])
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail])
    return {"point": float(point), "low": float(low), "high": float(high),
            "se": float(np.std(boots, ddof=1)) if boots.size > 1 else 0.0,
            "share_positive": float(np.mean(boots > 0)), "resamples": int(boots.size)}


class TiedScores:
    """One score vector's tie groups, sorted once: AUCs of any row weights in O(n), no sort."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        values, self.group = np.unique(np.asarray(scores, np.float64), return_inverse=True)
        self.groups, self.labels = values.size, np.asarray(labels).astype(bool)

    def auc(self, weights: np.ndarray) -> float:
        """The AUC of `auc` over the rows repeated `weights` times (ties counted half)."""
        pos = np.bincount(self.group, np.where(self.labels, weights, 0.0), self.groups)
        neg = np.bincount(self.group, np.where(self.labels, 0.0, weights), self.groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        return float(pos @ (np.cumsum(neg) - 0.5 * neg) / (n_pos * n_neg))


def auc_gap_interval(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, clusters: np.ndarray,
    *, resamples: int = 500, level: float = 0.95, seed: int = 0,
) -> dict[str, float] | None:
    """`AUC_a - AUC_b` on the same pairs (paired), with a cluster-bootstrap interval (see
    `cluster_bootstrap`; None when it cannot be computed)."""
    a, b, n = TiedScores(labels, scores_a), TiedScores(labels, scores_b), len(labels)

    def stat(idx: np.ndarray) -> float:
        w = np.bincount(idx, minlength=n).astype(np.float64)  # a resample's repeats, as row weights
        return a.auc(w) - b.auc(w)

    return cluster_bootstrap(stat, clusters, resamples=resamples, level=level, seed=seed)


def subset_gap_interval(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, subset: np.ndarray,
    clusters: np.ndarray, *, resamples: int = 500, level: float = 0.95, seed: int = 0,
) -> dict[str, float] | None:
    """How sure is "model a gains more over b on `subset` than overall"? A cluster bootstrap.

    The statistic is `(AUC_a - AUC_b on subset) - (AUC_a - AUC_b on all pairs)`, its interval
    `cluster_bootstrap`'s; None when the subset is empty or has one class in every resample.
    """
    a, b, n = TiedScores(labels, scores_a), TiedScores(labels, scores_b), len(labels)
    subset = np.asarray(subset).astype(bool)

    def stat(idx: np.ndarray) -> float:
        w = np.bincount(idx, minlength=n).astype(np.float64)
        inside = np.where(subset, w, 0.0)
        return (a.auc(inside) - b.auc(inside)) - (a.auc(w) - b.auc(w))

    return cluster_bootstrap(stat, clusters, resamples=resamples, level=level, seed=seed)
