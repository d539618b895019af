"""The GNN's LLM node features: the stored member and job embeddings, standardised per dimension."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.gnn.model import LLM_TYPES
from star_jax.graph.hetero import HeteroGraph
from star_jax.graph.sampler import FeatureSource
from star_jax.store import EmbeddingStore


class StandardizedFeatures(NamedTuple):
    """The stored embeddings with each dimension centred and scaled by its spread over the nodes.

    A language model's last-token embeddings are anisotropic (nearly one shared direction), so
    what tells two nodes apart is a small deviation from it. Removing the shared mean and scaling
    each dimension (the "all-but-the-top" / whitening remedy, diagonal only) lets the input
    projection see the deviations at unit scale (docs/architecture.md decision 6). The statistics
    are a function of the store version; gnn-embed from another version keeps the training one's.
    """

    store: FeatureSource
    mean: dict[str, np.ndarray]  # f32[D] per node type
    scale: dict[str, np.ndarray]  # f32[D] per node type: 1 / std

    # Enough rows to pin the mean and std of each dimension; at the paper's scale a spread sample.
    MAX_ROWS = 65_536

    @classmethod
    def sample_rows(cls, store: FeatureSource, ids: dict[str, np.ndarray]) -> np.ndarray:
        """f64[N, D]: up to MAX_ROWS stored rows of each node type, spread over its ids."""
        rows = []
        for t, all_ids in ids.items():
            spread = np.linspace(0, len(all_ids) - 1, min(len(all_ids), cls.MAX_ROWS)).astype(np.int64)
            rows.append(np.asarray(store.lookup(t, np.asarray(all_ids[spread], np.int64)), np.float64))
        return np.concatenate(rows)

    @classmethod
    def fit(cls, store: FeatureSource, ids: dict[str, np.ndarray]) -> StandardizedFeatures:
        # One set of statistics for members and jobs together: the towers share one space, and a
        # per-type shift would bend the member-job inner products the GNN's LLM skip relies on.
        x = cls.sample_rows(store, ids)
        mean = x.mean(axis=0).astype(np.float32)
        scale = (1.0 / np.maximum(x.std(axis=0), 1e-6)).astype(np.float32)
        return cls(store, dict.fromkeys(ids, mean), dict.fromkeys(ids, scale))

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        x = np.asarray(self.store.lookup(node_type, ids), np.float32)
        return (x - self.mean[node_type]) * self.scale[node_type]

    def principal_map(self, ids: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(f32[D, k], f32[k]): the stored vectors' top k principal directions, as a map of the
        standardised rows. `x @ kernel + shift` is the stored vector's projection on them, so the
        GNN's LLM block (gnn.llm_block) keeps the cosine the towers were trained on, not the
        standardised rows' (docs/architecture.md decision 17)."""
        x = self.sample_rows(self.store, ids)
        _, vectors = np.linalg.eigh(np.cov(x, rowvar=False))  # ascending eigenvalues
        top = vectors[:, ::-1][:, :k]
        sign = np.where(top[np.abs(top).argmax(0), np.arange(top.shape[1])] < 0, -1.0, 1.0)
        top = top * sign  # a fixed sign
        # Vectors narrower than the block (a compact store version): zero columns, no cosine change.
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])))
        t = next(iter(self.mean))  # one mean and scale for members and jobs (fit)
        kernel = top / self.scale[t].astype(np.float64)[:, None]  # stored = standardised / scale + mean
        return kernel.astype(np.float32), (self.mean[t].astype(np.float64) @ top).astype(np.float32)


def open_features(graph: HeteroGraph, root: str | os.PathLike, version: str | None,
                  cfg: StoreConfig) -> tuple[StandardizedFeatures, dict]:
    """The stored LLM embeddings for the graph's member and job nodes, and what identifies them.

    Every member and job id of the graph must be stored: a missing one is a one-line error here,
    not a failure in the middle of training.
    """
    store = EmbeddingStore.open(root, version, kvstore=cfg.kvstore, cache_bytes=cfg.cache_mb << 20)
    where = f"store {store.root} version {store.version}"
    for t in LLM_TYPES:
        if t not in store.node_types:
            raise StarError(f"{where}: no {t} embeddings (stored: {', '.join(store.node_types) or 'none'})")
        stored = store.ids(t)
        ids = np.asarray(graph.ids[t])
        missing = ~np.isin(ids, stored)
        if missing.any():
            raise StarError(f"{where}: {int(missing.sum())} {t} ids of the graph are not stored "
                            f"(e.g. {int(ids[missing][0])}); embed them into this version first")
    manifest = store.manifest
    standardized = StandardizedFeatures.fit(store, {t: np.asarray(graph.ids[t]) for t in LLM_TYPES})
    info = {
        "root": store.root,
        "version": store.version,
        "dim": store.dim,
        "model": manifest.get("model"),
        "adapter": manifest.get("adapter"),
        "generation": manifest.get("generation"),
        "digests": {t: manifest["node_types"][t]["digest"] for t in LLM_TYPES},
        "transform": "standardize-pooled",  # StandardizedFeatures: part of what the GNN was trained on
    }
    return standardized, info


def feature_source(graph: HeteroGraph, use_llm: bool, cfg: StoreConfig, variant: str, root: str | None,
                   version: str | None) -> tuple[StandardizedFeatures | None, dict | None]:
    """The feature store when the variant reads LLM features (`--store` is then required)."""
    if not use_llm:
        return None, None
    if root is None:
        raise StarError(f"--store: variant {variant} uses LLM features; "
                        "pass --store ROOT [--store-version V]")
    return open_features(graph, root, version, cfg)
