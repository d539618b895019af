"""HF checkpoint I/O: transformers reads what we write, lm_logits matches its LM head, and the
`inspect-model` CLI reports bad directories in one line."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import build_checkpoint, hf_hidden, right_padded_batch

from star_jax.cli import main as cli_main
from star_jax.llm import lm_logits, load_lm_head, load_mistral, save_mistral


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A MistralForCausalLM checkpoint (untied head, `model.` prefixes) and the model that wrote it."""
    path = tmp_path_factory.mktemp("causal")
    return path, build_checkpoint(
        path, causal_lm=True, num_key_value_heads=1, sliding_window=6, rope_theta=777.0
    )


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded")
    build_checkpoint(path, max_shard_size="20KB")
    return path


def _logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.logits.numpy()


def test_save_round_trips_through_transformers(causal_dir, tmp_path):
    src, hf = causal_dir
    cfg, params = load_mistral(src)
    head = load_lm_head(src)
    assert head.shape == (cfg.hidden_size, cfg.vocab_size)
    ids, mask = right_padded_batch([9, 5], 9, cfg.vocab_size)

    # Untied causal LM, split into several files: transformers reloads it and computes the same.
    save_mistral(tmp_path / "causal", cfg, params, lm_head=head, max_shard_bytes=16_000)
    assert len(list((tmp_path / "causal").glob("model-*-of-*.safetensors"))) > 1
    reloaded = transformers.MistralForCausalLM.from_pretrained(
        tmp_path / "causal", attn_implementation="eager"
    )
    np.testing.assert_allclose(_logits(reloaded.eval(), ids, mask), _logits(hf, ids, mask), atol=1e-6)

    # Bare MistralModel (E5's layout), bf16: transformers' AutoModel picks the class from config.json.
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    save_mistral(tmp_path / "bare", cfg, bf16)
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["architectures"] == ["MistralModel"]
    bare = transformers.AutoModel.from_pretrained(tmp_path / "bare", attn_implementation="eager")
    assert type(bare) is transformers.MistralModel and bare.dtype == torch.bfloat16
    assert bare.config.sliding_window == 6 and bare.config.rope_parameters["rope_theta"] == 777.0
    np.testing.assert_array_equal(
        bare.state_dict()["layers.0.mlp.down_proj.weight"].float().numpy(),
        np.asarray(params["layers"]["mlp"]["down_proj"]["kernel"][0].astype(jnp.bfloat16), np.float32).T,
    )
    cfg2, params2 = load_mistral(tmp_path / "bare", jnp.bfloat16)
    assert cfg2 == dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16")
    jax.tree.map(np.testing.assert_array_equal, params2, bf16)
    assert load_lm_head(tmp_path / "bare") is None


def test_lm_logits_match_hf_heads(causal_dir, tmp_path):
    # Fed transformers' own hidden states, our head must give transformers' logits.
    src, hf = causal_dir
    cfg, params = load_mistral(src)
    ids, mask = right_padded_batch([7, 3], 7, cfg.vocab_size)
    hidden = jnp.asarray(hf_hidden(hf, ids, mask))
    ours = lm_logits(hidden, params, load_lm_head(src))
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, _logits(hf, ids, mask), atol=1e-5)

    tied = build_checkpoint(tmp_path, causal_lm=True, tie_word_embeddings=True)
    cfg, params = load_mistral(tmp_path)
    assert cfg.tie_word_embeddings and load_lm_head(tmp_path) is None
    hidden = jnp.asarray(hf_hidden(tied, ids, mask))
    np.testing.assert_allclose(lm_logits(hidden, params), _logits(tied, ids, mask), atol=1e-5)


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what building the checkpoint printed
    code = cli_main(["inspect-model", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_model_summary(causal_dir, capsys):
    src, hf = causal_dir
    code, out, err = run_cli(capsys, src, "--dtype", "bfloat16")
    assert code == 0, err
    base_params = sum(p.numel() for p in hf.model.parameters())
    assert f"{base_params:,} parameters" in out and "bfloat16" in out
    assert "kv_heads 1" in out and "rope_theta 777" in out and "lm_head present" in out


def _broken(tmp_path, src, what):
    bad = tmp_path / what
    shutil.copytree(src, bad)
    config = bad / "config.json"
    raw = json.loads(config.read_text())
    if what == "no-weights":
        for f in bad.glob("*.safetensors*"):
            f.unlink()
    elif what == "llama":
        raw["model_type"] = "llama"
    elif what == "shape":
        raw["intermediate_size"] = 48
    elif what == "missing-shard":
        next(bad.glob("model-00002-*.safetensors")).unlink()
    config.write_text(json.dumps(raw))
    return bad


@pytest.mark.parametrize(
    "what, expected",
    [
        ("missing-dir", "no such model directory"),
        ("no-weights", "no model.safetensors or model.safetensors.index.json"),
        ("llama", "config.json: model_type 'llama' is not 'mistral'"),
        (
            "shape",
            "tensor layers.0.mlp.down_proj.weight has shape [32, 64], expected [32, 48] from config.json",
        ),
        ("missing-shard", "listed in model.safetensors.index.json but missing"),
        ("dtype", "argument --dtype: invalid choice: 'int8'"),
    ],
)
def test_inspect_model_errors_are_one_line(what, expected, sharded_dir, tmp_path, capsys):
    src = sharded_dir
    argv = {
        "missing-dir": [tmp_path / "nope"],
        "dtype": [src, "--dtype", "int8"],
    }.get(what) or [_broken(tmp_path, src, what)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("star-jax: error: ")
    assert expected in err
    if what == "shape":
        assert "model-0000" in err  # names the file holding the tensor
