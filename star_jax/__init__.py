"""star_jax: LinkedIn's STAR job-matching system (KDD 2025, arXiv 2507.09797) in JAX.

Stages meet only in on-disk formats (docs/architecture.md): Parquet tables, an HF tokenizer,
orbax checkpoints, PEFT adapters, a TensorStore EmbeddingStore and memory-mapped CSR graphs.
"""

__version__ = "0.1.0"
