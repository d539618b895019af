"""The EmbeddingStore: versioned LLM embeddings on TensorStore zarr3, and version migration."""

from star_jax.store.migrate import VersionMap, fit_version_map, load_version_map
from star_jax.store.store import (
    EmbeddingSpec,
    EmbeddingStore,
    EmbeddingWriter,
    Pending,
    RefreshReport,
    list_versions,
    resolve_root,
    text_hash,
)

__all__ = [
    "EmbeddingSpec",
    "EmbeddingStore",
    "EmbeddingWriter",
    "Pending",
    "RefreshReport",
    "VersionMap",
    "fit_version_map",
    "list_versions",
    "load_version_map",
    "resolve_root",
    "text_hash",
]
