"""Offline metrics of the paper's evaluation: AUC on labelled pairs, MRR and recall@k on a fixed
candidate set (ARCHITECTURE decision 6).

All functions are plain numpy and take scores, never models, so every variant of the ablation
table (LLM cosine, GNN dot product) is scored the same way. `tests/test_metrics.py` checks them
against scikit-learn.
"""

from __future__ import annotations

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


def subset_gap_interval(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, subset: np.ndarray,
    clusters: np.ndarray, *, resamples: int = 500, level: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """How sure is "model a gains more over b on `subset` than overall"? A cluster bootstrap.

    The statistic is `(AUC_a - AUC_b on subset) - (AUC_a - AUC_b on all pairs)`. Whole clusters
    (members: a member's pairs share its embedding, so they are not independent) are resampled
    with replacement `resamples` times; the interval is the percentile one at `level`.
    Returns {"point", "low", "high", "share_positive"} (the share of resamples above zero).
    """
    labels, subset = np.asarray(labels).astype(bool), np.asarray(subset).astype(bool)
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)

    def stat(idx: np.ndarray) -> float:
        y, a, b, s = labels[idx], scores_a[idx], scores_b[idx], subset[idx]
        return (auc(y[s], a[s]) - auc(y[s], b[s])) - (auc(y, a) - auc(y, b))

    _, members = np.unique(np.asarray(clusters), return_inverse=True)
    rows = np.split(np.argsort(members, kind="stable"), np.cumsum(np.bincount(members))[:-1])
    rng = np.random.default_rng(seed)
    boots = np.array([stat(np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))]))
                      for _ in range(resamples)])
    boots = boots[~np.isnan(boots)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail])
    return {"point": stat(np.arange(labels.size)), "low": float(low), "high": float(high),
            "share_positive": float(np.mean(boots > 0))}
