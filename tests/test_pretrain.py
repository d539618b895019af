"""`star-jax pretrain`: the tiny base learns, and what it publishes is a transformers checkpoint."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import transformers
from data_fixtures import write_tiny_data

from star_jax import cli
from star_jax.config import Config, MistralConfig, PretrainConfig, TokenizerConfig, to_yaml
from star_jax.data.loader import token_stream
from star_jax.data.tokenizer import load_tokenizer, train_tokenizer
from star_jax.llm import MistralModel, lm_logits, load_lm_head, load_mistral
from star_jax.llm.pretrain import pretrain
from star_jax.tracking import read_metrics


def tiny_config() -> Config:
    cfg = Config()
    cfg.llm.arch = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)
    cfg.pretrain = PretrainConfig(
        steps=30, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5, log_every=1, checkpoint_every=10
    )
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    data = write_tiny_data(root / "data")
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    cfg = tiny_config()
    result = pretrain(cfg, data, tok, root / "out")
    return {"root": root, "data": data, "tok": tok, "out": root / "out", "cfg": cfg, "result": result}


def test_learns_and_publishes_a_transformers_checkpoint(run):
    tok = load_tokenizer(run["tok"])
    losses = [r["loss"] for r in read_metrics(run["out"] / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 30 and losses[0] > np.log(len(tok)) - 0.5  # starts near uniform
    assert losses[-1] < losses[0] - 1.5 and run["result"]["final_loss"] == losses[-1]

    model_dir = run["out"] / "model"
    cfg, params = load_mistral(model_dir)
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id
    head = load_lm_head(model_dir)
    # The oracle: transformers' own causal-LM loss of the published checkpoint on corpus windows.
    windows = token_stream(run["data"], tok)[: 4 * 33].reshape(4, 33)
    hf = transformers.MistralForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.from_numpy(windows).long()
    with torch.no_grad():
        expected = hf(input_ids=ids, labels=ids).loss
    logits = np.asarray(lm_logits(MistralModel(cfg).apply({"params": params}, windows), params, head))
    shifted = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ours = -np.take_along_axis(logp, windows[:, 1:, None], axis=-1).mean()
    np.testing.assert_allclose(ours, float(expected), rtol=1e-4)
    assert float(expected) < losses[0] - 1.0  # the published weights are the trained ones


def test_rerun_is_skipped(run, capsys, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="star_jax")
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(run["cfg"]))
    args = ["pretrain", "--data", str(run["data"]), "--tokenizer", str(run["tok"]), "--out", str(run["out"])]
    capsys.readouterr()
    assert cli.main([*args, "--config", str(config)]) == 0
    assert "skipped" in caplog.text
    assert cli.main([*args, "--config", str(config), "--set", "pretrain.batch_size=3"]) == 2
    assert "pretrain.batch_size" in capsys.readouterr().err.strip().splitlines()[-1]
