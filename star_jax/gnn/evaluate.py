"""Validation during `train-gnn`: val AUC of the current parameters, overall and for cold-start members.

Val pairs are embedded through the sampler without negatives and scored by the dot product of the
two embeddings, exactly as exported embeddings are scored.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from star_jax.config import GNNTrainConfig, SamplerConfig
from star_jax.data.splits import subsample, train_applies
from star_jax.gnn.embed import export_sampler_config, make_embed_fn
from star_jax.gnn.model import GNN
from star_jax.graph.hetero import HeteroGraph
from star_jax.graph.sampler import FeatureSource, NeighborSampler, make_dataset
from star_jax.graph.seeds import PairSeeds, eval_seeds
from star_jax.metrics import activity_bucket, auc, auc_by_group
from star_jax.store.compact import renormalize


def val_pairs(data_dir: str | os.PathLike, graph: HeteroGraph, t: GNNTrainConfig,
              sampler: SamplerConfig, limit: int | None = None) -> PairSeeds:
    """The val pairs scored at each evaluation: `gnn_train.eval_pairs` of them, or `limit` (0: all),
    a fixed random subset when there are more."""
    pairs = eval_seeds(data_dir, graph, sampler, "val")
    size = t.eval_pairs if limit is None else limit
    m, j, y = subsample((pairs.member_rows, pairs.job_rows, pairs.labels), size or len(pairs.labels),
                        [t.seed, 2])
    return PairSeeds(m, j, y, t.eval_batch_size, shuffle=False)


class Evaluator:
    """Val AUC of the current parameters: pairs embedded through the sampler, scored by dot product."""

    def __init__(self, gnn: GNN, graph: HeteroGraph, sampler: SamplerConfig, batch_size: int,
                 features: FeatureSource | None, pairs: PairSeeds, data_dir: str | os.PathLike):
        self.gnn, self.graph, self.features, self.pairs = gnn, graph, features, pairs
        self.embed = make_embed_fn(gnn)
        self.sampler_cfg = export_sampler_config(sampler, batch_size)
        # The report's definition of a cold-start member (star_jax.data.splits), not the graph's degree.
        self.groups = activity_bucket(train_applies(data_dir, graph.ids["member"][pairs.member_rows]))
        self._samplers: dict[tuple[int, ...], NeighborSampler] = {}

    def embed_pairs(self, params: Any, hop_fanouts: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The member and job embeddings f32[N, D] of the N pairs, in order."""
        if hop_fanouts not in self._samplers:
            self._samplers[hop_fanouts] = NeighborSampler(self.graph, self.sampler_cfg,
                                                          features=self.features, hop_fanouts=hop_fanouts)
        sampler = self._samplers[hop_fanouts]
        members, jobs = [], []
        for batch in make_dataset(sampler, self.pairs, workers=0):
            member, job = self.embed(params, batch, sampler.layout)
            members.append(np.asarray(member)[batch.pair_mask])
            jobs.append(np.asarray(job)[batch.pair_mask])
        return np.concatenate(members), np.concatenate(jobs)

    def block_gains(self, params: Any, hop_fanouts: tuple[int, ...], widths: list[int],
                    grids: list[list[float]]) -> dict[tuple[float, ...], float]:
        """Val AUC of each combination of the output blocks' gains (`gnn.llm_block`, then
        `gnn.attribute_block`), from one pass of `params` with every gain at 1.

        An output is [graph part ; gain_1 x block_1 ; ...], each part unit-length, so its dot product
        ranks pairs as graph cosine + sum of gain_i^2 x block_i cosine, whatever the gains it was
        embedded with.
        """
        member, job = self.embed_pairs(params, hop_fanouts)
        ends = np.cumsum([member.shape[1] - sum(widths), *widths])
        cosines = [np.einsum("bd,bd->b", renormalize(member[:, lo:hi]), renormalize(job[:, lo:hi]))
                   for lo, hi in zip([0, *ends[:-1]], ends)]
        return {gains: auc(self.pairs.labels, cosines[0] + sum(g * g * c for g, c in zip(gains, cosines[1:])))
                for gains in itertools.product(*grids)}

    def __call__(self, params: Any, hop_fanouts: tuple[int, ...]) -> dict[str, float]:
        member, job = self.embed_pairs(params, hop_fanouts)
        return self.aucs(np.einsum("bd,bd->b", member, job))

    def aucs(self, scores: np.ndarray) -> dict[str, float]:
        """The val AUC of the pairs' scores f32[N], overall and for cold-start members (if any)."""
        out = {"auc": auc(self.pairs.labels, scores)}
        cold = auc_by_group(self.pairs.labels, scores, self.groups).get("cold_start")
        if cold is not None:
            out["auc_cold_start"] = cold
        return out
