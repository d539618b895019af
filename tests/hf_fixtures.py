"""Tiny random transformers Mistral checkpoints, built offline with a fixed torch seed.

`build_checkpoint(dir, ...)` saves one with `save_pretrained` (optionally sharded, optionally as
`MistralForCausalLM`, with either RoPE spelling in config.json) and returns the PyTorch model that
wrote it, in eval mode with exact (eager) attention, as the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

TINY: dict[str, Any] = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    sliding_window=None,
)


def hf_config(**overrides: Any) -> transformers.MistralConfig:
    """A tiny `transformers.MistralConfig`; `rope_theta=` is accepted like any other field."""
    kwargs = {**TINY, **overrides}
    theta = kwargs.pop("rope_theta", 10000.0)
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    return transformers.MistralConfig(**kwargs, attn_implementation="eager")


def build_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    causal_lm: bool = False,
    max_shard_size: str | None = None,
    rope_spelling: str = "v5",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> torch.nn.Module:
    """Save a random tiny Mistral under `out_dir`; return the saved model (eval mode, eager attention).

    `rope_spelling='v4'` rewrites config.json to the old top-level `rope_theta` key;
    `max_shard_size` (e.g. '20KB') splits the weights into several files plus an index.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    cfg = hf_config(**overrides)
    model = (transformers.MistralForCausalLM if causal_lm else transformers.MistralModel)(cfg)
    with torch.no_grad():  # HF initialises norms to exactly 1; random weights test them too
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model = model.to(dtype).eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, **kwargs)
    if rope_spelling == "v4":
        path = out_dir / "config.json"
        raw = json.loads(path.read_text())
        raw["rope_theta"] = raw.pop("rope_parameters")["rope_theta"]
        path.write_text(json.dumps(raw, indent=2))
    elif rope_spelling != "v5":
        raise ValueError(rope_spelling)
    return model


def random_params(cfg, seed: int = 0) -> dict:
    """Random base params for our `MistralModel(cfg)` straight from numpy (no init to compile):
    kernels and embeddings ~ N(0, 0.1^2), norm scales ~ U(0.5, 1.5)."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from star_jax.llm.mistral import abstract_variables

    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(nn.unbox(abstract_variables(cfg)["params"]))
    leaves = {
        path: (rng.uniform(0.5, 1.5, a.shape) if path[-1] == "scale" else rng.normal(0, 0.1, a.shape)).astype(
            a.dtype
        )
        for path, a in flat.items()
    }
    return jax.tree.map(jax.numpy.asarray, traverse_util.unflatten_dict(leaves))


def right_padded_batch(lengths: list[int], seq_len: int, vocab_size: int, seed: int = 0):
    """int32 ids and 0/1 mask `[B, T]`, real tokens on the left; padded slots hold random ids too."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(len(lengths), seq_len)).astype(np.int32)
    mask = (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids, mask


def hf_hidden(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' `last_hidden_state` (of the bare `MistralModel` inside `model`) as float32 numpy."""
    with torch.no_grad():
        out = model.base_model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    return out.last_hidden_state.float().numpy()
