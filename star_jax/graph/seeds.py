"""The seed batches a GNN batch starts from: labelled (member, job) pairs for training and
evaluation, every node of one type for exporting embeddings, and subsets of either by batch index.

A batch is a `SeedBatch`; `PairSeeds` and `NodeSeeds` give random access to them by index, which
with the sampler seed fixes a batch's random draws (star_jax.graph.sampler).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from star_jax.config import SamplerConfig
from star_jax.data.tables import read_labels
from star_jax.errors import StarError
from star_jax.graph.hetero import HeteroGraph


class SeedBatch(NamedTuple):
    """What one batch starts from; rows are node-table rows, -1 for empty slots."""

    index: int  # batch index: with the sampler seed it fixes the batch's random draws
    member_rows: np.ndarray  # int64 [B]
    job_rows: np.ndarray  # int64 [B]
    labels: np.ndarray  # float32 [B]
    pair_mask: np.ndarray  # bool [B]: a real pair (node mode: a real seed of the exported type)
    exclude_targets: bool  # keep (m_i, j_i) and its reverse out of pair i's neighbourhoods
    negatives: bool  # draw the K shared random negative jobs
    # int64 [B]: a job each pair's member was shown and did not apply to (-1: none), placed first
    # among the K shared negatives; None: the K negatives are all random
    hard_jobs: np.ndarray | None = None


def _check_index(b: int, n: int) -> None:
    if not 0 <= b < n:
        raise IndexError(f"seed batch {b} out of range [0, {n})")


class PairSeeds:
    """Random-access batches of labelled (member, job) pairs.

    shuffle=True (training): batch b takes positions [bB, (b+1)B) of an endless stream of
    per-epoch permutations, so every batch is full; `num_batches` sets the length.
    shuffle=False (evaluation): pairs in order, the last batch padded.
    """

    def __init__(self, member_rows: np.ndarray, job_rows: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 shuffle: bool, seed: int = 0, num_batches: int | None = None, exclude_targets: bool = True,
                 shown: tuple[np.ndarray, np.ndarray] | None = None):
        # shown: (indptr int64[members + 1], job rows int64[n]) of each member's shown-not-applied
        # jobs; each batch then carries one of them per pair (`SeedBatch.hard_jobs`).
        self.shown = shown
        self.member_rows = np.asarray(member_rows, np.int64)
        self.job_rows = np.asarray(job_rows, np.int64)
        self.labels = np.asarray(labels, np.float32)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.exclude_targets = exclude_targets
        n = self.member_rows.shape[0]
        if n == 0:
            raise StarError("no labelled pairs to sample from")
        self.num_batches = num_batches if shuffle else math.ceil(n / batch_size)
        if self.num_batches is None:
            raise ValueError("num_batches is required with shuffle=True")
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._perm = (epoch, rng.permutation(self.member_rows.shape[0]))
        return self._perm[1]

    def __getitem__(self, b: int) -> SeedBatch:
        _check_index(b, len(self))
        n, B = self.member_rows.shape[0], self.batch_size
        p = int(b) * B + np.arange(B)
        if self.shuffle:
            mask = np.ones(B, bool)
            idx = np.empty(B, np.int64)
            epoch = p // n
            for e in np.unique(epoch):
                sel = epoch == e
                idx[sel] = self._epoch_order(int(e))[p[sel] % n]
        else:
            mask = p < n
            idx = np.where(mask, p, 0)
        return SeedBatch(
            int(b),
            np.where(mask, self.member_rows[idx], -1),
            np.where(mask, self.job_rows[idx], -1),
            np.where(mask, self.labels[idx], 0).astype(np.float32),
            mask,
            self.exclude_targets,
            True,
            None if self.shown is None else self._hard_jobs(b, np.where(mask, self.member_rows[idx], -1)),
        )

    def _hard_jobs(self, b: int, members: np.ndarray) -> np.ndarray:
        indptr, jobs = self.shown
        if jobs.shape[0] == 0:
            return np.full(members.shape, -1, np.int64)
        safe = np.maximum(members, 0)
        count = np.where(members >= 0, indptr[safe + 1] - indptr[safe], 0)
        pick = np.random.default_rng([self.seed, 3, b]).integers(0, np.maximum(count, 1))
        return np.where(count > 0, jobs[np.minimum(indptr[safe] + pick, jobs.shape[0] - 1)], -1)


class NodeSeeds:
    """Every node of `node_type` (member or job) once, in row order, for exporting embeddings.

    The seeds fill that type's pair slots; the other side's slots and the negatives stay empty,
    and nothing is excluded.
    """

    def __init__(self, node_type: str, num_rows: int, batch_size: int):
        if node_type not in ("member", "job"):
            raise StarError(f"node seeds: expected member or job, got {node_type!r}")
        self.node_type, self.num_rows, self.batch_size = node_type, num_rows, batch_size

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def __getitem__(self, b: int) -> SeedBatch:
        _check_index(b, len(self))
        p = int(b) * self.batch_size + np.arange(self.batch_size)
        mask = p < self.num_rows
        rows, empty = np.where(mask, p, -1).astype(np.int64), np.full(self.batch_size, -1, np.int64)
        m, j = (rows, empty) if self.node_type == "member" else (empty, rows)
        return SeedBatch(int(b), m, j, np.zeros(self.batch_size, np.float32), mask, False, False)


def read_pairs(data_dir: str | os.PathLike, graph: HeteroGraph, split: str, *,
               positives_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(member rows, job rows, labels) of the labelled pairs of `split`, in file order."""
    df = read_labels(data_dir, split, columns=["member_id", "job_id", "label"])
    if positives_only:
        df = df[df["label"] == 1]
    table = graph.schema.labels
    m = graph.rows("member", df["member_id"].to_numpy(np.int64), what=f"{table}: column 'member_id'")
    j = graph.rows("job", df["job_id"].to_numpy(np.int64), what=f"{table}: column 'job_id'")
    return m, j, df["label"].to_numpy(np.float32)


def train_seeds(
    data_dir: str | os.PathLike, graph: HeteroGraph, cfg: SamplerConfig, num_batches: int
) -> PairSeeds:
    """Training pairs: the train period's applies (labels `split == 'train'`, `label == 1`)."""
    m, j, y = read_pairs(data_dir, graph, "train", positives_only=True)
    if m.shape[0] == 0:
        raise StarError(f"{graph.schema.labels}: no pairs with split == 'train' and label == 1")
    return PairSeeds(m, j, y, cfg.batch_size, shuffle=True, seed=cfg.seed, num_batches=num_batches)


def eval_seeds(data_dir: str | os.PathLike, graph: HeteroGraph, cfg: SamplerConfig, split: str) -> PairSeeds:
    """Evaluation pairs: every labelled pair (1 and 0) of `split`, in file order. Each pair's own
    edge is excluded as in training, should the graph hold it."""
    m, j, y = read_pairs(data_dir, graph, split, positives_only=False)
    if m.shape[0] == 0:
        raise StarError(f"{graph.schema.labels}: no pairs with split == {split!r}")
    return PairSeeds(m, j, y, cfg.batch_size, shuffle=False)


def node_seeds(graph: HeteroGraph, node_type: str, cfg: SamplerConfig) -> NodeSeeds:
    return NodeSeeds(node_type, graph.num_nodes(node_type), cfg.batch_size)


class BatchSubset:
    """The batches `indices` of `seeds`, in that order, each keeping its own index (hence its
    random draws): a fan-out stage's batches from its first step, a process's share of the
    validation or export batches."""

    def __init__(self, seeds: PairSeeds | NodeSeeds | BatchSubset, indices: Sequence[int] | np.ndarray):
        self.seeds, self.indices = seeds, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> SeedBatch:
        return self.seeds[int(self.indices[int(i)])]
