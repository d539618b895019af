"""Our Flax Mistral against transformers' PyTorch `MistralModel` (eager attention, fp32)."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import build_checkpoint, hf_hidden, random_params, right_padded_batch
from jax._src.ad_checkpoint import saved_residuals
from jax.sharding import NamedSharding, PartitionSpec

from star_jax.config import MeshConfig, MistralConfig
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


def test_bf16_close_to_fp32_reference(tmp_path):
    hf = build_checkpoint(tmp_path, **CASES["gqa2-v5rope"])
    cfg, params = load_mistral(tmp_path, jnp.bfloat16)
    assert cfg.dtype == cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ids, mask = right_padded_batch(LENGTHS, SEQ, cfg.vocab_size, seed=2)
    out = jax.jit(MistralModel(cfg).apply)({"params": params}, ids, mask)
    assert out.dtype == jnp.bfloat16
    real = mask.astype(bool)
    ours, ref = np.asarray(out, np.float32)[real], hf_hidden(hf, ids, mask)[real]
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert 0 < rel < 2e-2


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
