"""Who is a cold-start member: the one definition the report, the baselines and the evaluators share;
and the seeded subsample of labelled pairs that every fit on them reads.

A member's training-period applies are its labelled pairs with `label = 1` and `split = "train"`
(docs/data_format.md, "Labelled pairs"); a member with none is cold start. Only the labels table
is read, so the definition holds for real data as well as for the synthetic marketplace.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from star_jax.data.tables import read_labels


def subsample(arrays: tuple[np.ndarray, ...], limit: int, seed: Any) -> tuple[np.ndarray, ...]:
    """Equal-length `arrays` at `limit` seeded random rows (`np.random.default_rng(seed)`: a seed, or
    a generator to draw on), in their order; unchanged when they have no more rows than that."""
    n = len(arrays[0])
    if n <= limit:
        return arrays
    keep = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    return tuple(np.asarray(a)[keep] for a in arrays)


def train_applies(data_dir: str | os.PathLike, member_ids: np.ndarray) -> np.ndarray:
    """int64 [n]: each of `member_ids`' count of training-period applies (label 1, split train)."""
    labels = read_labels(data_dir, "train", ["member_id", "label"])
    counts = labels.loc[labels["label"] > 0, "member_id"].value_counts()
    return counts.reindex(np.asarray(member_ids, np.int64), fill_value=0).to_numpy(np.int64)


def cold_start(data_dir: str | os.PathLike, member_ids: np.ndarray) -> np.ndarray:
    """bool [n]: whether each of `member_ids` is cold start (no training-period apply)."""
    return train_applies(data_dir, member_ids) == 0
