"""LoRA gradients (the hand-written backward of `lora.lora_linear`) against PEFT's torch autograd."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import build_checkpoint, right_padded_batch

from star_jax.config import LoraConfig
from star_jax.llm import MistralModel, export_peft, init_lora, load_mistral

TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
PROJECTIONS = [("self_attn", f"{t}_proj") for t in TARGETS[:4]] + [("mlp", f"{t}_proj") for t in TARGETS[4:]]


def torch_grads(peft_model, ids, mask, weights):
    """Gradients of sum(hidden[mask]^2) w.r.t. every LoRA weight and the q/gate base weights."""
    for p in peft_model.parameters():
        p.grad = None
    base = peft_model.base_model.model
    for layer in base.layers:
        layer.self_attn.q_proj.base_layer.weight.requires_grad_(True)
        layer.mlp.gate_proj.base_layer.weight.requires_grad_(True)
    ids, mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    out = peft_model.base_model(input_ids=ids, attention_mask=mask)
    keep = mask.bool()[..., None]
    (torch.where(keep, out.last_hidden_state, 0.0) ** 2).sum().backward()
    return {name: p.grad.numpy() for name, p in peft_model.named_parameters() if name in weights}


@pytest.mark.parametrize("remat", ["none", "full"])
def test_adapter_and_base_gradients_match_peft(remat, tmp_path):
    from peft import PeftModel

    hf = build_checkpoint(tmp_path / "base", num_key_value_heads=1, sliding_window=4)
    cfg, base = load_mistral(tmp_path / "base")
    cfg = dataclasses.replace(cfg, remat=remat)
    lora = LoraConfig(rank=4, alpha=12.0, targets=TARGETS)
    leaves, tree = jax.tree.flatten(init_lora(jax.random.key(0), cfg, lora))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    adapters = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    export_peft(adapters, lora, cfg, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter", is_trainable=True).train()
    ids, mask = right_padded_batch([10, 6, 1], 10, cfg.vocab_size, seed=4)

    def loss(adapters, base):
        out = MistralModel(cfg, lora).apply({"params": base, "lora": adapters}, ids, mask)
        return jnp.sum(jnp.where(mask[..., None] > 0, out, 0.0) ** 2)

    g_lora, g_base = jax.jit(jax.grad(loss, argnums=(0, 1)))(adapters, base)
    only_lora = jax.jit(jax.grad(loss))(adapters, base)
    jax.tree.map(np.testing.assert_array_equal, only_lora, g_lora)  # the frozen-kernel path is the same

    # Ours as PEFT names and layouts (PEFT's weights are ours transposed, one per layer).
    prefix = "base_model.model.layers.{i}.{module}.{proj}"
    ours = {}
    for i in range(cfg.num_hidden_layers):
        for module, proj in PROJECTIONS:
            stem = prefix.format(i=i, module=module, proj=proj)
            for ab in ("lora_A", "lora_B"):
                ours[f"{stem}.{ab}.default.weight"] = np.asarray(g_lora["layers"][module][proj][ab][i]).T
        for module, proj in [("self_attn", "q_proj"), ("mlp", "gate_proj")]:
            stem = prefix.format(i=i, module=module, proj=proj)
            ours[f"{stem}.base_layer.weight"] = np.asarray(g_base["layers"][module][proj]["kernel"][i]).T
    ref = torch_grads(peft_model, ids, mask, set(ours))
    assert set(ref) == set(ours)
    for name, g in ref.items():
        scale = np.abs(g).max()
        assert scale > 0, name
        np.testing.assert_allclose(ours[name], g, atol=2e-5 * scale, rtol=0, err_msg=name)
