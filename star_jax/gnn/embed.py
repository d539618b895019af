"""The GNN's seed embeddings as validation and `gnn-embed` compute them: one jitted function per
`GNNConfig`, and the sampler config both use (no random negatives)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from star_jax.config import SamplerConfig
from star_jax.gnn.model import GNN, Params
from star_jax.graph.batch import HeteroBatch, Layout

EmbedFn = Callable[[Params, HeteroBatch, Layout], tuple[jax.Array, jax.Array]]

_EMBED_FNS: dict[str, EmbedFn] = {}


def make_embed_fn(gnn: GNN) -> EmbedFn:
    """jit `(params, batch, layout) -> (member seeds [B, d], pair job seeds [B, d])`, once per Layout.

    Kept per `GNNConfig` (the encoder is a pure function of it), so a `gnn-embed` in the process
    that trained the run (the pipeline) reuses the evaluator's compiled program.
    """
    key = repr(gnn.config)
    if key not in _EMBED_FNS:
        _EMBED_FNS[key] = _jit_embed(gnn)
    return _EMBED_FNS[key]


def _jit_embed(gnn: GNN) -> EmbedFn:
    def embed(params: Params, batch: HeteroBatch, layout: Layout) -> tuple[jax.Array, jax.Array]:
        member, jobs = gnn.seed_embeddings(params, batch, layout)
        return member, jobs[: layout.num_pairs]

    return jax.jit(embed, static_argnames="layout")


def export_sampler_config(cfg: SamplerConfig, batch_size: int) -> SamplerConfig:
    """The training sampler's config for inference: `batch_size` seeds and no random negatives."""
    return dataclasses.replace(cfg, batch_size=batch_size, num_random_negatives=0)
