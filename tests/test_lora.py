"""LoRA adapters: PEFT's init, scale and dropout placement, merging, and the PEFT file round trip."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from hf_fixtures import build_checkpoint, hf_hidden, random_params, right_padded_batch

from star_jax.config import LoraConfig, MeshConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.llm import MistralModel, export_peft, import_peft, init_lora, load_mistral, merge_lora
from star_jax.parallel import logical_rules, make_mesh

CFG = MistralConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def randomize(adapters, seed=0, scale=0.2):
    """Adapters with every A and B non-zero, as after some training."""
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_init_matches_peft_kaiming_uniform_and_zero_b():
    lora = LoraConfig(rank=16, alpha=32.0)
    adapters = init_lora(jax.random.key(0), CFG, lora)
    flat = traverse_util.flatten_dict(adapters)
    assert {p[2] for p in flat} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    # torch's own bound for kaiming_uniform_(a=sqrt(5)) on a [r, in] weight, PEFT's default A init.
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    for path, x in flat.items():
        x = np.asarray(x)
        assert x.dtype == np.float32
        if path[-1] == "lora_B":
            assert x.shape[1] == lora.rank and not x.any()
            continue
        fan_in = x.shape[1]
        bound = gain * math.sqrt(3.0 / fan_in)
        assert x.shape == (CFG.num_hidden_layers, fan_in, lora.rank)
        assert np.abs(x).max() <= bound
        # U(-b, b) has std b/sqrt(3); 1024+ draws per tensor put the estimate within a few percent.
        assert np.std(x) == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert np.abs(x).max() > 0.9 * bound
    # Different layers and targets draw different numbers.
    a = adapters["layers"]["self_attn"]["q_proj"]["lora_A"]
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(a, adapters["layers"]["self_attn"]["k_proj"]["lora_A"][..., :32, :])


def test_scale_dropout_and_merge():
    lora = LoraConfig(rank=4, alpha=12.0, dropout=0.5, targets=["q", "v", "down"])
    base = random_params(CFG)
    fresh = init_lora(jax.random.key(1), CFG, lora)
    ids, mask = right_padded_batch([9, 4], 9, CFG.vocab_size)
    apply = jax.jit(MistralModel(CFG, lora).apply, static_argnames="deterministic")
    apply_plain = jax.jit(MistralModel(CFG).apply)
    plain = apply_plain({"params": base}, ids, mask)

    # B = 0: the adapted model is the base model, also with dropout on (it acts on the adapter only).
    np.testing.assert_array_equal(apply({"params": base, "lora": fresh}, ids, mask), plain)
    train = apply(
        {"params": base, "lora": fresh}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    np.testing.assert_array_equal(train, plain)

    trained = randomize(fresh)
    eval_out = apply({"params": base, "lora": trained}, ids, mask)
    assert float(jnp.abs(eval_out - plain).max()) > 1e-2
    train = apply(
        {"params": base, "lora": trained}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    assert float(jnp.abs(train - eval_out).max()) > 1e-3

    # The scale is alpha / r: alpha 12 with B equals alpha 6 with 2B.
    doubled = jax.tree_util.tree_map_with_path(lambda p, x: 2 * x if p[-1].key == "lora_B" else x, trained)
    half = dataclasses.replace(lora, alpha=6.0)
    out_half = jax.jit(MistralModel(CFG, half).apply)({"params": base, "lora": doubled}, ids, mask)
    np.testing.assert_allclose(out_half, eval_out, atol=1e-5)

    merged = merge_lora(base, trained, lora)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    np.testing.assert_array_equal(
        merged["layers"]["self_attn"]["k_proj"]["kernel"], base["layers"]["self_attn"]["k_proj"]["kernel"]
    )
    out_merged = apply_plain({"params": merged}, ids, mask)
    np.testing.assert_allclose(out_merged, eval_out, atol=1e-5)


def test_adapter_gradients_are_finite_and_base_is_frozen():
    # The training step's shape: grad over the adapters only, the base passed alongside.
    lora = LoraConfig(rank=2, alpha=4.0, dropout=0.1)
    cfg = dataclasses.replace(CFG, sliding_window=3, remat="save_projections")
    base = random_params(cfg)
    adapters = init_lora(jax.random.key(0), cfg, lora)
    ids, mask = right_padded_batch([6, 2, 0], 6, cfg.vocab_size)

    def loss(adapters, base, batch):
        ids, mask = batch
        out = MistralModel(cfg, lora).apply(
            {"params": base, "lora": adapters},
            ids,
            mask,
            deterministic=False,
            rngs={"dropout": jax.random.key(3)},
        )
        return jnp.mean(out**2)

    grads = jax.jit(jax.grad(loss))(adapters, base, (ids, mask))
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    flat = traverse_util.flatten_dict(grads)
    # With B = 0 only B receives gradient (as in PEFT at step 0).
    assert all(float(jnp.abs(g).max()) > 0 for p, g in flat.items() if p[-1] == "lora_B")
    assert all(float(jnp.abs(g).max()) == 0 for p, g in flat.items() if p[-1] == "lora_A")


def test_sharded_init_follows_logical_rules():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    adapters = init_lora(
        jax.random.key(0), CFG, LoraConfig(rank=4), mesh=mesh, rules=logical_rules(MeshConfig())
    )
    a = adapters["layers"]["self_attn"]["q_proj"]["lora_A"]  # [layers, embed, lora_rank]
    b = adapters["layers"]["self_attn"]["q_proj"]["lora_B"]  # [layers, lora_rank, heads]
    assert tuple(a.sharding.spec) == (None, "fsdp", None)
    assert tuple(b.sharding.spec) == (None, None, "tensor")
    np.testing.assert_array_equal(
        a, init_lora(jax.random.key(0), CFG, LoraConfig(rank=4))["layers"]["self_attn"]["q_proj"]["lora_A"]
    )


def assert_reads_back(tmp_path, peft_model, adapters, lora):
    """Our export in `tmp_path/adapter`, and PEFT's own save of the loaded adapter, import as written."""
    peft_model.save_pretrained(tmp_path / "resaved")
    for directory in ("adapter", "resaved"):
        back, back_cfg = import_peft(tmp_path / directory)
        assert back_cfg == lora
        jax.tree.map(np.testing.assert_array_equal, back, adapters)


def test_peft_round_trip(tmp_path):
    from peft import PeftModel

    hf = build_checkpoint(tmp_path / "base", num_key_value_heads=1, sliding_window=4)
    cfg, base = load_mistral(tmp_path / "base")
    lora = LoraConfig(rank=4, alpha=12.0, dropout=0.05, targets=["q", "k", "o", "up", "down"])
    adapters = randomize(init_lora(jax.random.key(0), cfg, lora), seed=1)
    export_peft(adapters, lora, cfg, tmp_path / "adapter")

    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    lengths = [10, 6, 1]
    ids, mask = right_padded_batch(lengths, 10, cfg.vocab_size, seed=4)
    ref = hf_hidden(peft_model, ids, mask)
    ours = np.asarray(jax.jit(MistralModel(cfg, lora).apply)({"params": base, "lora": adapters}, ids, mask))
    last = np.asarray(lengths) - 1
    rows = np.arange(len(lengths))
    assert np.abs(ours[rows, last] - ref[rows, last]).max() < 1e-4
    assert np.abs(ours - ref)[mask.astype(bool)].max() < 1e-4
    with peft_model.disable_adapter():
        assert np.abs(ref - hf_hidden(peft_model, ids, mask))[mask.astype(bool)].max() > 1e-2

    assert_reads_back(tmp_path, peft_model, adapters, lora)


def test_import_rejects_bad_adapters(tmp_path):
    with pytest.raises(StarError, match="adapter_config.json: not found"):
        import_peft(tmp_path)
    lora = LoraConfig(rank=2, targets=["q", "v"])
    export_peft(init_lora(jax.random.key(0), CFG, lora), lora, CFG, tmp_path / "a")
    cfg_file = tmp_path / "a" / "adapter_config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"use_rslora": false', '"use_rslora": true'))
    with pytest.raises(StarError, match="use_rslora"):
        import_peft(tmp_path / "a")
    with pytest.raises(StarError, match="lora.targets: unknown entry 'qkv'"):
        init_lora(jax.random.key(0), CFG, LoraConfig(targets=["qkv"]))


def test_a_trained_embedding_table_round_trips_through_peft_modules_to_save(tmp_path):
    """`lora.modules_to_save: [embed_tokens]`: our export is what PEFT loads (transformers' outputs
    as the oracle), PEFT's own save reads back the same, and merging replaces the table."""
    from peft import PeftModel

    from star_jax.llm.lora import with_saved

    hf = build_checkpoint(tmp_path / "base", num_key_value_heads=1)
    cfg, base = load_mistral(tmp_path / "base")
    lora = LoraConfig(rank=4, targets=["q", "down"], modules_to_save=["embed_tokens"])
    adapters = randomize(init_lora(jax.random.key(0), cfg, lora), seed=1)
    table = np.asarray(base["embed_tokens"]["embedding"], np.float32)
    trained = table + 0.5 * np.random.default_rng(2).standard_normal(table.shape).astype(np.float32)
    adapters = {**adapters, "embed_tokens": {"embedding": jnp.asarray(trained)}}
    export_peft(adapters, lora, cfg, tmp_path / "adapter")

    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = right_padded_batch([9, 4], 9, cfg.vocab_size, seed=4)
    ref = hf_hidden(peft_model, ids, mask)
    params, rest = with_saved(base, adapters)
    ours = np.asarray(MistralModel(cfg, lora).apply({"params": params, "lora": rest}, ids, mask))
    assert np.abs(ours - ref)[mask.astype(bool)].max() < 1e-4
    # The table matters: the LoRA weights alone over the base's table give something else.
    alone = np.asarray(MistralModel(cfg, lora).apply({"params": base, "lora": rest}, ids, mask))
    assert np.abs(alone - ref)[mask.astype(bool)].max() > 1e-2
    merged = np.asarray(MistralModel(cfg).apply({"params": merge_lora(base, adapters, lora)}, ids, mask))
    assert np.abs(merged - ref)[mask.astype(bool)].max() < 1e-4

    assert_reads_back(tmp_path, peft_model, adapters, lora)

    # A table the config does not name, or a named one missing, is refused in one line.
    with pytest.raises(StarError, match="saved modules"):
        export_peft(rest, lora, cfg, tmp_path / "nope")
    with pytest.raises(StarError, match="saved modules"):
        export_peft(adapters, dataclasses.replace(lora, modules_to_save=[]), cfg, tmp_path / "nope")
