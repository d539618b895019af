"""A stand-in for the LLM embeddings: TF-IDF + truncated SVD of the member and job texts.

It is written through the EmbeddingStore's writer API in the same layout as the `embed` stage's
output (one version, node types `member` and `job`, `dim` columns, text-hash keyed), so the GNN
stage can be exercised and its "LLM features help" ablation checked without a trained LLM.
One vectoriser and one SVD are fitted on both towers' texts together, so members and jobs share
a space, as the bi-encoder's embeddings do; the rows are L2-normalised like E5's.

    python tests/tfidf_features.py DATA_DIR STORE_ROOT [--version tfidf] [--dim 64]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from star_jax.config import StoreConfig
from star_jax.data.tables import read_nodes
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

TYPES = ("member", "job")


def tfidf_vectors(data_dir: str | os.PathLike, dim: int, seed: int = 0) -> dict[str, tuple]:
    """type -> (ids int64 [n], texts list[str], vectors float32 [n, dim], unit rows)."""
    nodes = {t: read_nodes(data_dir, t, ["id", "text"]) for t in TYPES}
    texts = [s for t in TYPES for s in nodes[t]["text"].tolist()]
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), max_features=50_000)
    x = tfidf.fit_transform(texts)
    z = TruncatedSVD(dim, random_state=seed).fit_transform(x).astype(np.float32)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    out, start = {}, 0
    for t in TYPES:
        n = len(nodes[t])
        out[t] = (nodes[t]["id"].to_numpy(np.int64), nodes[t]["text"].tolist(), z[start : start + n])
        start += n
    return out


def write_tfidf_store(data_dir: str | os.PathLike, root: str | os.PathLike, version: str = "tfidf",
                      dim: int = 64, config: StoreConfig | None = None) -> str:
    """Publish the stand-in embeddings of `data_dir` as `version` of the store at `root`."""
    data = tfidf_vectors(data_dir, dim)
    spec = EmbeddingSpec(model="tfidf-svd", adapter=None, tokenizer="sklearn-tfidf-1-2gram", max_len=0,
                         pooling="svd", dim=dim)
    inputs = {t: (ids, text_hash(texts)) for t, (ids, texts, _) in data.items()}
    writer = EmbeddingWriter.open(root, version, spec, inputs, config or StoreConfig(dtype="float32"))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, data[t][2][block.positions])
    writer.publish()
    return version


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("root")
    p.add_argument("--version", default="tfidf")
    p.add_argument("--dim", type=int, default=64)
    a = p.parse_args()
    print(write_tfidf_store(a.data, a.root, a.version, a.dim))
