"""`star-jax pretrain`: causal-LM pretraining of the tiny demo base model on the member+job corpus.

    star-jax pretrain --data DATA_DIR --tokenizer TOK_DIR --out OUT [--config --set]

There is no hub to download E5-Mistral from, so the demo pretrains its own small Mistral
(docs/architecture.md decision 11), giving the "frozen, pretrained" bi-encoder baseline a meaning:
`llm.arch` from a fresh init (vocab size = the tokenizer's), next-token prediction over
`corpus_dataset`'s packed windows, through star_jax/train_loop.py. OUT holds `checkpoints/`,
`metrics.jsonl`, `tb/`, then `model/` (an HF `MistralForCausalLM` directory) and `result.json`,
written last. A rerun with the same inputs and config is skipped; a killed run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from star_jax import train_loop as loop
from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, MistralConfig, fingerprint
from star_jax.data.loader import corpus_dataset
from star_jax.data.tokenizer import load_tokenizer
from star_jax.data.validate import check_data
from star_jax.fileio import atomic_write_json, content_digest, finished_result
from star_jax.llm.hf_io import save_mistral
from star_jax.llm.mistral import MistralModel, abstract_variables, lm_logits
from star_jax.parallel import initialize_distributed, logical_rules, logical_shardings, make_mesh
from star_jax.tracking import MetricsLogger, read_metrics

log = logging.getLogger(__name__)

RESULT = "result.json"
_NOT_FINGERPRINTED = ("log_every", "checkpoint_every", "keep_checkpoints", "workers")


def pretrain_arch(arch: MistralConfig, tokenizer: Any) -> MistralConfig:
    """`arch` (`llm.arch`) sized to the tokenizer, with its special ids (config.json records them)."""
    return dataclasses.replace(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_params(arch: MistralConfig, seed: int, mesh: Any, rules: Any) -> dict:
    """Fresh `{'model': base params, 'lm_head': [hidden, vocab]}` (no lm_head when tied), sharded."""
    boxed = abstract_variables(arch)["params"]
    model = MistralModel(arch)
    shardings = {"model": logical_shardings(boxed, mesh, rules)}
    if not arch.tie_word_embeddings:
        head_axes = jax.sharding.PartitionSpec("embed", "vocab")  # as hf_io.load_lm_head
        shardings["lm_head"] = nn.logical_to_mesh_sharding(head_axes, mesh, rules)

    def init(key: jax.Array) -> dict:
        k_model, k_head = jax.random.split(key)
        params = {"model": nn.unbox(model.init(k_model, jnp.zeros((1, 1), jnp.int32))["params"])}
        if not arch.tie_word_embeddings:
            shape = (arch.hidden_size, arch.vocab_size)
            params["lm_head"] = arch.initializer_range * jax.random.normal(k_head, shape, arch.param_dtype)
        return params

    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def make_lm_loss(model: MistralModel) -> loop.LossFn:
    def loss_fn(params: dict, _frozen: Any, batch: dict, _rng: jax.Array):
        ids = batch["input_ids"]  # [B, L + 1]: the model reads L tokens and predicts the next L
        hidden = model.apply({"params": params["model"]}, ids[:, :-1])
        logits = lm_logits(hidden, params["model"], params.get("lm_head"))
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean(), {}

    return loss_fn


def pretrain(
    cfg: Config,
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    devices: list[jax.Device] | None = None,
) -> dict:
    """Pretrain (or resume, or skip when done); returns OUT/result.json's contents."""
    initialize_distributed(cfg.mesh)
    data_dir, tokenizer_dir = os.fspath(data_dir), os.fspath(tokenizer_dir)
    out, pcfg = Path(out_dir), cfg.pretrain
    check_data(data_dir)
    train = {k: v for k, v in dataclasses.asdict(pcfg).items() if k not in _NOT_FINGERPRINTED}
    inputs = {"data": content_digest([data_dir]), "tokenizer": content_digest([tokenizer_dir])}
    fp = fingerprint(cfg.llm.arch, train, inputs)
    done = finished_result(Path(out) / RESULT, fp)
    if done is not None:
        log.info(f"pretrain: {out} already holds a finished run with these inputs and config; skipped")
        return done
    tokenizer = load_tokenizer(tokenizer_dir)
    arch = pretrain_arch(cfg.llm.arch, tokenizer)
    mesh, rules = make_mesh(cfg.mesh, devices), logical_rules(cfg.mesh)
    loop.check_batch(pcfg.batch_size, 1, mesh, "pretrain")
    out.mkdir(parents=True, exist_ok=True)

    # Built outside the mesh context: the model's logical constraints apply only to the traced step.
    params = init_params(arch, pcfg.seed, mesh, rules)
    tx, schedule = loop.make_optimizer(
        lr=pcfg.lr, warmup_steps=pcfg.warmup_steps, steps=pcfg.steps,
        weight_decay=pcfg.weight_decay, clip_norm=pcfg.clip_norm,
    )
    state = loop.init_state(params, tx, pcfg.seed, mesh)
    step_fn = loop.make_train_step(make_lm_loss(MistralModel(arch)), tx, schedule, 1, mesh, state)
    shard = loop.process_shard(mesh, pcfg.batch_size)
    batches = iter(
        corpus_dataset(
            data_dir, tokenizer, seq_len=pcfg.seq_len + 1, batch_size=pcfg.batch_size,
            seed=pcfg.seed, epochs=None, workers=pcfg.workers, shard=shard,
        )
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        with (Checkpointer(out / "checkpoints", fingerprint=fp, max_to_keep=pcfg.keep_checkpoints) as ckpt,
              MetricsLogger(out) as logger):
            state, seconds = loop.train(
                state, step_fn, None, batches,
                put=lambda b: loop.put_batch(b, mesh, shard), ckpt=ckpt, logger=logger,
                steps=pcfg.steps, log_every=pcfg.log_every, checkpoint_every=pcfg.checkpoint_every,
                tokens=lambda b: int(b["input_ids"][:, 1:].size), desc="pretrain",
                watchdog_s=cfg.mesh.watchdog_s,
            )
        final = loop.gather(state.params, mesh)

    # The last logged loss of the final step (a step redone after a resume is logged twice).
    records = read_metrics(out / "metrics.jsonl")
    logged = [r["loss"] for r in records if r["split"] == "train" and r["step"] == pcfg.steps]
    loss = logged[-1] if logged else float("nan")
    result = {
        "fingerprint": fp,
        "steps": pcfg.steps,
        "final_loss": loss,
        "final_perplexity": loss if math.isnan(loss) else math.exp(loss),
        "train_seconds": seconds,
        "model": "model",
        "vocab_size": arch.vocab_size,
    }
    if jax.process_index() == 0:
        save_mistral(out / "model", arch, final["model"], final.get("lm_head"))
        atomic_write_json(out / RESULT, result)
    log.info(f"pretrain: final loss {loss:.3f} after {pcfg.steps} steps ({seconds:.0f}s) -> {out / 'model'}")
    return result


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory (default: tokenizer.dir)")
    parser.add_argument("--out", required=True, help="run directory; the model lands in OUT/model")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args, flag_or_config

    cfg = config_from_args(args)
    data = flag_or_config("--data", args.data, cfg.data.dir, "data.dir")
    tok = flag_or_config("--tokenizer", args.tokenizer, cfg.tokenizer.dir, "tokenizer.dir")
    pretrain(cfg, data, tok, args.out)
    return 0
