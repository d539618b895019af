"""Our Flax Mistral against transformers' PyTorch `MistralModel` (eager attention, fp32) at short and real
lengths; bf16 against fp32 within a rounding bound derived from bf16's unit roundoff."""

import dataclasses
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import build_checkpoint, hf_hidden, random_params, right_padded_batch
from jax._src.ad_checkpoint import saved_residuals
from jax.sharding import NamedSharding, PartitionSpec

from star_jax.config import MeshConfig, MistralConfig, load_config
from star_jax.errors import StarError
from star_jax.llm import MistralModel, abstract_variables, load_mistral, mistral
from star_jax.parallel import logical_rules, make_mesh

LENGTHS = [12, 7, 1]  # right-padded rows of different lengths, one of a single token
SEQ = 12


def forward(cfg, params, ids, mask):
    return np.asarray(jax.jit(MistralModel(cfg).apply)({"params": params}, ids, mask))


def max_real_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


# Three checkpoints cover every case: 1, 2 and 4 query heads per kv head; head_dim != hidden/heads;
# a sliding window shorter than the sequence (twice, with different windows); weights split over
# several safetensors files with `model.` prefixes (saved from MistralForCausalLM); both RoPE theta
# spellings, each with a non-default theta so that a theta read from the wrong key fails.
CASES = {
    "mha-headdim16-window5-v4rope-sharded": dict(
        num_key_value_heads=4,
        head_dim=16,
        sliding_window=5,
        rope_spelling="v4",
        rope_theta=500.0,
        causal_lm=True,
        max_shard_size="20KB",
    ),
    "gqa2-v5rope": dict(num_key_value_heads=2, rope_theta=1234.0),
    "gqa4-window3": dict(num_key_value_heads=1, sliding_window=3),
}


# Every case runs the default attention (`chunked` on the CPU, one block at this length); `xla` keeps
# JAX's own path covered, and `chunked` with 5-query blocks has windowed key slices and a short last block.
PARITY = [(case, None) for case in CASES] + [
    ("gqa4-window3", "xla"),
    ("mha-headdim16-window5-v4rope-sharded", "chunked"),
]


@pytest.mark.parametrize("case, attention", PARITY, ids=[f"{c}-{a or 'auto'}" for c, a in PARITY])
def test_fp32_parity_with_transformers(case, attention, tmp_path, monkeypatch):
    kw = CASES[case]
    hf = build_checkpoint(tmp_path, seed=len(case), **kw)
    if kw.get("max_shard_size"):
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    cfg, params = load_mistral(tmp_path)
    cfg = dataclasses.replace(cfg, attention=attention)
    if attention == "chunked":
        monkeypatch.setattr(mistral, "ATTENTION_BLOCK", 5)
    assert cfg.rope_theta == kw.get("rope_theta", 10000.0)
    ids, mask = right_padded_batch(LENGTHS, SEQ, cfg.vocab_size, seed=1)
    ref = hf_hidden(hf, ids, mask)
    ours = forward(cfg, params, ids, mask)
    assert ours.shape == ref.shape == (len(LENGTHS), SEQ, cfg.hidden_size)
    assert max_real_diff(ours, ref, mask) < 1e-5
    if cfg.sliding_window:
        # The window is active here, and off by one it would not match.
        wider = forward(dataclasses.replace(cfg, sliding_window=cfg.sliding_window + 1), params, ids, mask)
        assert max_real_diff(wider, ref, mask) > 1e-3


# -- real lengths ---------------------------------------------------------------------------------

# The demo's towers pad to configs/tiny.yaml's buckets, up to its max lengths. One batch of LONG
# tokens holds a row at every bucket length, one just past each bucket below the largest, the full
# row and a single token, right-padded: at LONG the default `ATTENTION_BLOCK` splits the queries
# into several blocks (and a short last one), which the parity tests above (T = 12) never do.
TINY_LLM = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml").llm
LONG = 300
LONG_LENGTHS = sorted(
    {LONG, 1, TINY_LLM.member_max_len, TINY_LLM.job_max_len}
    | set(TINY_LLM.buckets)
    | {b + 1 for b in TINY_LLM.buckets if b < max(TINY_LLM.buckets)},
    reverse=True,
)
LONG_CASES = {
    "gqa2": dict(num_key_value_heads=2),
    # A window wider than a block: key slices start mid-sequence and cross block boundaries.
    "gqa4-window100": dict(num_key_value_heads=1, sliding_window=100),
}


@pytest.mark.parametrize("case", LONG_CASES)
def test_fp32_parity_with_transformers_at_real_lengths(case, tmp_path):
    assert LONG > max(TINY_LLM.buckets + [TINY_LLM.member_max_len, TINY_LLM.job_max_len])
    assert LONG > 2 * mistral.ATTENTION_BLOCK and LONG % mistral.ATTENTION_BLOCK  # blocks, a short last
    assert jax.default_backend() == "cpu"  # where attention=None is `chunked`
    kw = LONG_CASES[case]
    hf = build_checkpoint(tmp_path, seed=3, max_position_embeddings=2 * LONG, rope_theta=1234.0, **kw)
    cfg, params = load_mistral(tmp_path)
    assert cfg.attention is None
    ids, mask = right_padded_batch(LONG_LENGTHS, LONG, cfg.vocab_size, seed=4)
    ref, ours = hf_hidden(hf, ids, mask), forward(cfg, params, ids, mask)
    real = mask.astype(bool)
    # Measured max |ours - ref| about 1.2e-6 on hidden states of magnitude up to ~5.
    np.testing.assert_allclose(ours[real], ref[real], rtol=1e-5, atol=1e-5)
    if cfg.sliding_window:
        wider = forward(dataclasses.replace(cfg, sliding_window=cfg.sliding_window + 1), params, ids, mask)
        assert max_real_diff(wider, ref, mask) > 1e-3


# bf16 unit roundoff: bf16 keeps 8 significant bits, so round-to-nearest has |fl(x) - x| <= U |x|.
U = 2.0**-8


def test_bf16_error_is_within_the_rounding_bound(tmp_path):
    """Our bf16 forward against transformers' fp32 forward on the same (bf16) weights, at LONG tokens.

    The bound, norm-wise over every real position: e = ||ours - ref|| / ||ref||.
    - Weights: the reference runs on our bf16 weights (upcast), so the difference is the bf16 path's
      own rounding of intermediate results.
    - A rounding to bf16 gives x(1 + d), |d| <= U / m for mantissa m in [1, 2): rms(d) <= U/sqrt(3).
    - A K-term dot product of bf16 operands: XLA accumulates in fp32 (checked below), so its error is
      one rounding of the output plus the fp32 accumulation's <= K * 2^-24 * sum_k |x_k w_k| (K <=
      LONG here: < 0.005 U of it; left out). Accumulated in bf16 it would grow like sqrt(K) * U.
    - Roundings on the path, per layer (star_jax/llm/mistral.py): input RMSNorm 2 (the cast of the
      fp32-normalised x, the scale multiply); q, k, v projections 3; RoPE 8 (x*cos, rot*sin and
      their sum for q and for k, cos and sin cast); probs cast 1 (scores and softmax are fp32);
      probs @ v 1; o_proj 1; residual add 1; post-attention RMSNorm 2; gate, up 2; silu 2 (sigmoid,
      product); silu * up 1; down 1; residual add 1: 26. Two layers and the final RMSNorm (2): R = 54.
    - Each rounding's relative error reaches the output with gain <= 1 (RMSNorm divides out scale,
      the projections' random weights keep relative errors, softmax probabilities sum to 1) and
      the roundings are independent, so E[e^2] <= R U^2 / 3: e <= U sqrt(R / 3) = 4.24 U. Over the
      LONG-length batch (~42k values) e is concentrated near its rms.
    Weights are drawn at initializer_range hidden^-1/2 (unit-gain projections, attention scores of
    order 1), where every rounding matters; at HF's 0.02 the branches are tiny next to the residual
    (e = 1.05 U there, and a missing attention scale only 1.7 U).
    Measured: e = 3.46 U (checkpoint seeds 0-3: 3.3-3.5 U; single rows 1.7-3.9 U). By hand, on the
    bf16 path only: a missing 1/sqrt(head_dim) gives 233 U, RoPE angles computed in bf16 13.9 U,
    probs @ v accumulated in bf16 5.6 U: all fail (RMSNorm without its fp32 upcast, 3.9 U, passes).
    Lower bound: the final RMSNorm's two roundings reach the output with gain 1, rms >= U/2/sqrt(3)
    each (m < 2): e >= U/sqrt(6) = 0.41 U, which fails a path that silently computes in fp32 (e = 0).
    """
    # The premise: a bf16 dot accumulates in fp32 (1 + 4095 * 2^-9 = 8.998 -> bf16 9; bf16
    # accumulation would stop at 1, where adding 2^-9 rounds back to 1).
    ones = jnp.ones((1, 4096), jnp.bfloat16)
    small = jnp.full((4096, 1), 2.0**-9, jnp.bfloat16).at[0].set(1.0)
    assert float(jax.jit(jnp.dot)(ones, small)[0, 0]) == 9.0

    hidden = 32
    hf = build_checkpoint(tmp_path, num_key_value_heads=2, rope_theta=1234.0, hidden_size=hidden,
                          initializer_range=hidden**-0.5, max_position_embeddings=2 * LONG)
    with torch.no_grad():  # the parameters only: `hf.to(torch.bfloat16)` would also round RoPE's inv_freq
        for p in hf.parameters():
            p.copy_(p.bfloat16().float())
    cfg, params = load_mistral(tmp_path, jnp.bfloat16)  # rounds the same fp32 weights the same way (RNE)
    assert cfg.dtype == cfg.param_dtype == "bfloat16" and cfg.num_hidden_layers == 2
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ids, mask = right_padded_batch(LONG_LENGTHS, LONG, cfg.vocab_size, seed=2)
    out = jax.jit(MistralModel(cfg).apply)({"params": params}, ids, mask)
    assert out.dtype == jnp.bfloat16
    real = mask.astype(bool)
    ours, ref = np.asarray(out, np.float32)[real], hf_hidden(hf, ids, mask)[real]
    rounding_count = 2 * 26 + 2
    bound = U * np.sqrt(rounding_count / 3)
    e = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert U / np.sqrt(6) < e < bound, (e / U, bound / U)


def test_sharded_mesh_matches_one_device(tmp_path):
    build_checkpoint(tmp_path, **CASES["gqa2-v5rope"])
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    rules = logical_rules(MeshConfig())
    cfg, single = load_mistral(tmp_path)
    _, sharded = load_mistral(tmp_path, mesh=mesh, rules=rules)

    # Each device holds only its slice: q_proj [layers, embed->fsdp, heads->tensor].
    q = sharded["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding == NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor"))
    assert {s.data.shape for s in q.addressable_shards} == {(2, 32 // 4, 32 // 2)}
    np.testing.assert_array_equal(
        np.asarray(q), np.asarray(single["layers"]["self_attn"]["q_proj"]["kernel"])
    )

    ids, mask = right_padded_batch([12, 9, 4, 1], SEQ, cfg.vocab_size, seed=3)
    expected = forward(cfg, single, ids, mask)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(MistralModel(cfg).apply)({"params": sharded}, ids, mask)
    assert {s.data.shape[0] for s in out.addressable_shards} == {1}  # batch 4 split over fsdp=4
    assert max_real_diff(np.asarray(out), expected, mask) < 1e-5


@pytest.mark.parametrize(
    "heads, kv_heads, window, block, seq, lengths",
    [
        (4, 4, None, 4, 11, [11, 6, 1]),  # MHA, T not a multiple of the block
        (8, 2, 3, 4, 11, [11, 4, 0]),  # GQA 4:1, window < block, an all-padding row
        (4, 2, 6, 3, 13, [13, 9, 1]),  # window > block: key slices start mid-sequence
    ],
)
def test_chunked_attention_equals_xla(heads, kv_heads, window, block, seq, lengths):
    rng = np.random.default_rng(seq + heads)
    q = rng.standard_normal((len(lengths), seq, heads, 8), np.float32)
    k, v = rng.standard_normal((2, len(lengths), seq, kv_heads, 8), np.float32)
    weights = rng.standard_normal(q.shape, np.float32)
    lens = jnp.asarray(lengths, jnp.int32)
    local = None if window is None else (window - 1, 0)
    attend = {
        "chunked": lambda q, k, v: mistral.chunked_attention(q, k, v, lens, window, block),
        "xla": lambda q, k, v: jax.nn.dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            query_seq_lengths=lens,
            key_value_seq_lengths=lens,
            local_window_size=local,
            implementation="xla",
        ),
    }

    @jax.jit
    def outputs_and_grads(q, k, v):
        loss = {impl: lambda q, k, v, f=f: jnp.sum(f(q, k, v) * weights) for impl, f in attend.items()}
        return {impl: (f(q, k, v), jax.grad(loss[impl], (0, 1, 2))(q, k, v)) for impl, f in attend.items()}

    got = outputs_and_grads(q, k, v)
    # Padded query rows included: both paths zero them.
    np.testing.assert_allclose(got["chunked"][0], got["xla"][0], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got["xla"][0]).max()) > 0.1
    for a, b in zip(got["xla"][1], got["chunked"][1]):
        assert bool(jnp.isfinite(b).all())
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _base_cfg(**overrides):
    fields = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return MistralConfig(**{**fields, **overrides})


def test_remat_policies_give_identical_finite_gradients():
    # An all-padding row and a window shorter than the sequence leave attention rows fully masked.
    # Training differentiates through every position, padding included, so the loss covers all.
    cfg = _base_cfg(sliding_window=2)
    params = random_params(cfg)
    ids, mask = right_padded_batch([8, 3, 0], 8, cfg.vocab_size)
    weights = jax.random.normal(jax.random.key(1), (3, 8, cfg.hidden_size))
    grads, saved = {}, {}
    for policy in ("none", "full", "save_projections"):
        model = MistralModel(dataclasses.replace(cfg, remat=policy))

        def loss(params, model=model):
            return jnp.sum(model.apply({"params": params}, ids, mask) * weights)

        grads[policy] = jax.jit(jax.grad(loss))(params)
        assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads[policy])), policy
        saved[policy] = {a.shape for a, where in saved_residuals(loss, params) if "scan" in where}
    for policy in ("full", "save_projections"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[policy])):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
    # The policies differ in what they keep: the attention output `context` [L, B, T, heads, head_dim]
    # and the MLP projections [L, B, T, intermediate] are saved by save_projections only.
    context = (cfg.num_hidden_layers, 3, 8, cfg.num_attention_heads, cfg.resolved_head_dim)
    mlp = (cfg.num_hidden_layers, 3, 8, cfg.intermediate_size)
    assert {context, mlp} <= saved["save_projections"]
    assert not {context, mlp} & saved["full"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("remat", "some", "llm.arch.remat: expected one of none, full, save_projections, got 'some'"),
        ("attention", "flash", "llm.arch.attention: expected one of None, xla, cudnn, chunked, got 'flash'"),
        ("attention", "cudnn", "'cudnn' needs llm.arch.dtype bfloat16"),
        ("dtype", "float64", "llm.arch.dtype: expected one of float32, bfloat16, float16, got 'float64'"),
        ("num_key_value_heads", 3, "not a multiple of num_key_value_heads=3"),
    ],
)
def test_bad_runtime_settings_name_the_field(field, value, message):
    with pytest.raises(StarError, match=re.escape(message)):
        abstract_variables(_base_cfg(**{field: value}))
