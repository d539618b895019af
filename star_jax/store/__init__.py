"""The EmbeddingStore: versioned, text-hash keyed LLM embeddings on TensorStore zarr3.

kv (kvstore access) <- layout (keys, zarr metadata) <- manifest (versions) <- maps (stored version
maps), replica (local memory-mapped copies) <- reader (`EmbeddingStore`), writer (`EmbeddingWriter`)
<- migrate (fitting maps) <- cli.
"""

from star_jax.store.kv import StoreRoot, resolve_root
from star_jax.store.manifest import EmbeddingSpec, list_versions
from star_jax.store.maps import VersionMap, load_version_map
from star_jax.store.migrate import fit_version_map
from star_jax.store.reader import EmbeddingStore
from star_jax.store.replica import Replica
from star_jax.store.rows import text_hash
from star_jax.store.writer import EmbeddingWriter, Pending, RefreshReport

__all__ = [
    "EmbeddingSpec",
    "EmbeddingStore",
    "EmbeddingWriter",
    "Pending",
    "RefreshReport",
    "Replica",
    "StoreRoot",
    "VersionMap",
    "fit_version_map",
    "list_versions",
    "load_version_map",
    "resolve_root",
    "text_hash",
]
