"""The GNN's feature-ablation variants (the paper's; `config.GNN_VARIANTS` maps each to its flags).

    gnn_id_cat       hashed ID embeddings + categorical features
    gnn_id_cat_llm   the same plus the stored LLM embeddings of members and jobs (STAR)
    gnn_id_llm       ID embeddings + LLM embeddings, categorical features removed
"""

from __future__ import annotations

import dataclasses

from star_jax.config import GNN_VARIANTS as VARIANTS
from star_jax.config import Config
from star_jax.errors import StarError

__all__ = ["VARIANTS", "variant_config"]


def variant_config(cfg: Config, variant: str) -> Config:
    """`cfg` with `gnn.use_id/use_cat/use_llm` set by `variant` (`VARIANTS`)."""
    if variant not in VARIANTS:
        raise StarError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return dataclasses.replace(cfg, gnn=dataclasses.replace(cfg.gnn, **VARIANTS[variant]))
