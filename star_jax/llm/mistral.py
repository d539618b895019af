"""Mistral decoder in Flax Linen, numerically equal to transformers v5 `MistralModel`.

Follows `transformers/models/mistral/modeling_mistral.py`: fp32 RMSNorm, rotate-half RoPE,
grouped-query attention with Mistral's sliding window, SwiGLU MLP, pre-norm blocks, a final norm.
Kernels are `[in, out]` (HF's weight transposed, HF's names), the layers one `nn.scan` (every layer
variable stacked `[num_hidden_layers, ...]`), and LoRA adapters (star_jax.llm.lora) a separate
`lora` collection: `MistralModel(cfg, lora).apply({'params': base, 'lora': adapters}, ids, mask)`.
Padding is on the right: the mask only supplies per-row lengths; hidden states at padded
positions are finite but meaningless (pool them away with the lengths). `init_lora` makes fresh
adapters for the model's LoRA targets.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh

from star_jax.config import ATTENTION_NAMES, LLM_DTYPES, LoraConfig, MeshConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.llm import lora as lora_lib
from star_jax.parallel import Rules, logical_rules, logical_shardings

__all__ = [
    "MistralConfig",
    "MistralModel",
    "abstract_variables",
    "attention_core",
    "chunked_attention",
    "init_lora",
    "lm_logits",
    "sequence_lengths",
    "REMAT_POLICIES",
    "SAVED_PROJECTIONS",
]

# Activation names tagged with `checkpoint_name`. `full` remat saves nothing inside a layer;
# `save_projections` saves every projection output and the attention output (MaxText's
# `minimal_with_context`), so the backward pass recomputes only norms, RoPE, the core, elementwise ops.
SAVED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "context")
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_projections": jax.checkpoint_policies.save_only_these_names(*SAVED_PROJECTIONS),
}
ATTENTION_IMPLEMENTATIONS = ATTENTION_NAMES
ATTENTION_BLOCK = 64  # queries per block of `chunked_attention`
DTYPES = LLM_DTYPES

# Logical names of the main activations (rules in star_jax/config.py::_default_rules).
RESIDUAL = ("activation_batch", "activation_length", "activation_embed")
Q_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KV_HEADS = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
MLP_HIDDEN = ("activation_batch", "activation_length", "activation_mlp")


def as_dtype(name: str, field: str) -> jnp.dtype:
    if name not in DTYPES:
        raise StarError(f"{field}: unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return jnp.dtype(name)


def sequence_lengths(attention_mask: jax.Array) -> jax.Array:
    """Per-row real lengths `[B]` (int32) of a right-padded `[B, T]` 0/1 attention mask."""
    return jnp.sum(attention_mask.astype(jnp.int32), axis=-1)


def _normal(config: MistralConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


class Linear(nn.Module):
    """Bias-free projection `x @ kernel` (`kernel` = HF weight transposed), plus a LoRA branch.

    Its output is tagged with the module's name for the remat policy.
    """

    features: int
    axes: tuple[str, str]  # logical names of the kernel's (in, out) dimensions
    config: MistralConfig
    lora: LoraConfig | None = None  # set only when this projection is a LoRA target
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.config.dtype)
        kernel = self.param(
            "kernel",
            _normal(self.config, self.axes),
            (x.shape[-1], self.features),
            jnp.dtype(self.config.param_dtype),
        )
        if self.lora is None:
            y = jnp.dot(x, kernel.astype(dtype))
        else:
            # The adapter's own backward pass: see lora.lora_linear.
            a, b = lora_lib.lora_weights(self, x, self.features, self.axes, self.lora)
            adapter_in = None
            if self.lora.dropout > 0.0:
                adapter_in = nn.Dropout(self.lora.dropout)(x, deterministic=self.deterministic)
            y = lora_lib.lora_linear(x, kernel.astype(dtype), a, b, lora_lib.scaling(self.lora), adapter_in)
        return checkpoint_name(y, self.name)


class RMSNorm(nn.Module):
    """HF `MistralRMSNorm`: normalise in fp32, cast back, times the weight."""

    eps: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin `[T, head_dim]` in fp32 for positions 0..T-1 (HF's default rope type)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on `[B, T, heads, head_dim]`; cos/sin `[T, head_dim]` in x's dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def chunked_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    lengths: jax.Array,
    window: int | None = None,
    block: int = ATTENTION_BLOCK,
) -> jax.Array:
    """Causal grouped-query attention over static query blocks; equal to the `xla` path.

    query `[B, T, heads, D]`, key/value `[B, T, kv_heads, D]`, lengths `[B]` (right padding; the
    model clamps them to >= 1, and a 0 row comes out as zeros, finite, as with `xla`), window W:
    query q sees keys q - W < k <= q (None: every earlier key). Returns `[B, T, heads, D]`.

    `jax.nn.dot_product_attention(implementation='xla')` builds the full fp32 `[B, heads, T, T]`
    scores and masks them afterwards; on the CPU that square, not the FLOPs, dominates a layer.
    Here query block i (`block` rows, the last one shorter) multiplies only the static slice of keys
    that the causal mask and the window let it reach, so the upper triangle is never computed and
    the blocks' scores together cover about half the square (`block x (block + W - 1)` per block
    with a window). Heads are laid out `[B, kv_heads, group, T, D]` so that each kv head serves
    its query group as one batched matmul with no repeat. Scores,
    scale, masks and softmax follow `jax.nn.dot_product_attention` step by step (fp32 scores, the
    same large negative for masked keys, padded query rows zeroed), so outputs agree to rounding.
    Plain jnp ops: differentiable, and fine inside `nn.scan` / `nn.remat`.
    """
    b, t, n, d = query.shape
    kv = key.shape[2]
    q = query.reshape(b, t, kv, n // kv, d).transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, D]
    k = key.transpose(0, 2, 1, 3)  # [B, KV, T, D]
    v = value.transpose(0, 2, 1, 3)
    scale = jnp.float32(1.0 / np.sqrt(d))
    masked = jnp.float32(-0.7 * np.finfo(np.float32).max)  # jax.nn's value: finite, so no NaN rows
    key_limit = lengths[:, None, None, None, None]
    blocks = []
    for q0 in range(0, t, block):
        q1 = min(q0 + block, t)
        k0 = 0 if window is None else max(0, q0 - window + 1)
        q_pos, k_pos = np.arange(q0, q1)[:, None], np.arange(k0, q1)[None, :]
        reach = k_pos <= q_pos if window is None else (k_pos <= q_pos) & (q_pos - k_pos < window)
        scores = jnp.einsum(
            "bkgqd,bkcd->bkgqc", q[:, :, :, q0:q1], k[:, :, k0:q1], preferred_element_type=jnp.float32
        )
        scores = jnp.where(reach & (k_pos < key_limit), scores * scale, masked)  # [B, KV, G, Q, C]
        probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
        blocks.append(jnp.einsum("bkgqc,bkcd->bkgqd", probs, v[:, :, k0:q1]))
    out = jnp.concatenate(blocks, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, n, d)
    real = jnp.arange(t)[None, :, None, None] < lengths[:, None, None, None]
    return jnp.where(real, out, jnp.zeros((), out.dtype))


def attention_core(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    lengths: jax.Array,
    window: int | None,
    implementation: str | None,
) -> jax.Array:
    """Causal GQA attention with right-padding lengths and Mistral's window W (None: no window).

    Query head h reads kv head h // (heads / kv_heads) (`jax.nn.dot_product_attention`'s grouping);
    query q sees keys q - W < k <= q, HF's `sliding_window_overlay`, i.e. `local_window_size=(W-1, 0)`.

    `implementation` is `config.attention`: None picks `chunked` on the CPU (several times faster
    there, see docs/benchmarks.md) and leaves the choice to `jax.nn.dot_product_attention` on other
    backends; `xla` and `cudnn` go to `jax.nn.dot_product_attention` as they are.
    """
    if implementation is None and jax.default_backend() == "cpu":
        implementation = "chunked"
    if implementation == "chunked":
        return chunked_attention(query, key, value, lengths, window, ATTENTION_BLOCK)
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation,
    )


class Attention(nn.Module):
    config: MistralConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, lengths: jax.Array) -> jax.Array:
        cfg = self.config
        b, t, _ = x.shape
        d = cfg.resolved_head_dim
        n, k = cfg.num_attention_heads, cfg.num_key_value_heads

        def proj(name: str, features: int, axes: tuple[str, str]) -> Linear:
            target = lora_lib.lora_for(self.lora, name)
            return Linear(features, axes, cfg, target, self.deterministic, name=name)

        q = proj("q_proj", n * d, ("embed", "heads"))(x).reshape(b, t, n, d)
        key = proj("k_proj", k * d, ("embed", "kv_heads"))(x).reshape(b, t, k, d)
        v = proj("v_proj", k * d, ("embed", "kv_heads"))(x).reshape(b, t, k, d)
        q = nn.with_logical_constraint(apply_rope(q, cos, sin), Q_HEADS)
        key = nn.with_logical_constraint(apply_rope(key, cos, sin), KV_HEADS)
        v = nn.with_logical_constraint(v, KV_HEADS)
        out = attention_core(q, key, v, lengths, cfg.sliding_window, cfg.attention)
        out = checkpoint_name(nn.with_logical_constraint(out, Q_HEADS), "context")
        return proj("o_proj", cfg.hidden_size, ("heads", "embed"))(out.reshape(b, t, n * d))


class MLP(nn.Module):
    config: MistralConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config

        def proj(name: str, features: int, axes: tuple[str, str]) -> Linear:
            return Linear(
                features, axes, cfg, lora_lib.lora_for(self.lora, name), self.deterministic, name=name
            )

        gate = proj("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        up = proj("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x)
        h = nn.with_logical_constraint(nn.silu(gate) * up, MLP_HIDDEN)
        return proj("down_proj", cfg.hidden_size, ("mlp", "embed"))(h)


class DecoderLayer(nn.Module):
    """One pre-norm block; its `(carry, None)` signature is what `nn.scan` stacks."""

    config: MistralConfig
    lora: LoraConfig | None = None
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, lengths: jax.Array):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="input_layernorm")(x)
        x = x + Attention(cfg, self.lora, self.deterministic, name="self_attn")(h, cos, sin, lengths)
        x = nn.with_logical_constraint(x, RESIDUAL)
        h = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, self.lora, self.deterministic, name="mlp")(h)
        return nn.with_logical_constraint(x, RESIDUAL), None


class MistralModel(nn.Module):
    """transformers' `MistralModel`: token ids -> final-norm hidden states `[B, T, hidden]`.

    `apply({'params': base, 'lora': adapters}, input_ids, attention_mask, deterministic=False,
    rngs={'dropout': key})` runs with LoRA adapters (and their dropout while training);
    `attention_mask` is right-padded 0/1 `[B, T]`, None meaning no padding.
    """

    config: MistralConfig
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, deterministic: bool = True
    ) -> jax.Array:
        cfg = self.config
        cfg.check()  # again: a config changed in code after it was built
        if self.lora is not None:
            self.lora.check()
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        b, t = input_ids.shape
        if attention_mask is None:
            lengths = jnp.full((b,), t, jnp.int32)
        else:
            # An all-padding row (a batch filled up to its fixed size) would leave every attention
            # row empty, which cuDNN turns into NaN; letting it see its first slot keeps it finite.
            lengths = jnp.maximum(sequence_lengths(attention_mask), 1)

        x = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=_normal(cfg, ("vocab", "embed")),
            name="embed_tokens",
        )(input_ids)
        x = nn.with_logical_constraint(x, RESIDUAL)
        cos, sin = rope_tables(t, cfg.resolved_head_dim, cfg.rope_theta)
        cos, sin = cos.astype(dtype), sin.astype(dtype)  # HF casts cos/sin to the activation dtype

        layer = DecoderLayer
        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            # Nothing to common-subexpression-eliminate across scan iterations, so no CSE barrier.
            layer = nn.remat(layer, policy=policy, prevent_cse=False)
        stack = nn.scan(
            layer,
            variable_axes={"params": 0, lora_lib.COLLECTION: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(cfg, self.lora, deterministic, name="layers")(x, cos, sin, lengths)
        return RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="norm")(x)


def abstract_variables(config: MistralConfig, lora: LoraConfig | None = None) -> dict:
    """Shapes, dtypes and logical axes of every variable (boxed `nn.LogicallyPartitioned`), no FLOPs.

    `star_jax.parallel.logical_shardings(abstract_variables(cfg)['params'], mesh, rules)` gives the
    shardings of the base params; `['lora']` those of the adapters.
    """
    model = MistralModel(config, lora)
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda rng: model.init({"params": rng}, ids), jax.random.key(0))


def init_lora(
    rng: jax.Array,
    model_cfg: MistralConfig,
    lora_cfg: LoraConfig,
    *,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> dict:
    """Fresh adapters (A random, B zero) for every target of every layer, as a plain fp32 pytree.

    Shapes and logical axes come from the model itself (`abstract_variables`), so nothing but the
    adapters is computed. With a mesh they are created in their logical sharding under `rules`
    (default: the config's default rules).
    """
    lora_cfg.check()
    abstract = abstract_variables(model_cfg, lora_cfg)[lora_lib.COLLECTION]
    flat = traverse_util.flatten_dict(nn.unbox(abstract))

    def init(key: jax.Array) -> dict:
        # One uniform draw for every A: a single RNG kernel compiles much faster than one per tensor.
        a_paths = sorted(p for p in flat if p[-1] == "lora_A")
        sizes = [math.prod(flat[p].shape) for p in a_paths]
        u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
        leaves = {p: jnp.zeros(a.shape, a.dtype) for p, a in flat.items() if p[-1] == "lora_B"}
        for p, chunk in zip(a_paths, jnp.split(u, np.cumsum(sizes)[:-1])):
            shape = flat[p].shape
            leaves[p] = chunk.reshape(shape) / math.sqrt(shape[-2])  # U(+-1/sqrt(fan_in)), lora.init_lora_a
        return traverse_util.unflatten_dict(leaves)

    if mesh is None:
        return jax.jit(init)(rng)
    rules = logical_rules(MeshConfig()) if rules is None else rules
    return jax.jit(init, out_shardings=logical_shardings(abstract, mesh, rules))(rng)


def lm_logits(hidden: jax.Array, params: dict, lm_head: jax.Array | None = None) -> jax.Array:
    """Causal-LM logits `[B, T, vocab]` in fp32 from final hidden states.

    `lm_head` is the `[hidden, vocab]` kernel (HF `lm_head.weight` transposed); None ties the head
    to the token embeddings (`tie_word_embeddings`).
    """
    if lm_head is None:
        table = params["embed_tokens"]["embedding"]
        return jnp.einsum(
            "bth,vh->btv", hidden, table.astype(hidden.dtype), preferred_element_type=jnp.float32
        )
    return jnp.einsum("bth,hv->btv", hidden, lm_head.astype(hidden.dtype), preferred_element_type=jnp.float32)
