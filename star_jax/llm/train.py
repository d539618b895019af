"""`star-jax train-llm`: LoRA fine-tuning of the member/job bi-encoder (STAR's LLM stage).

    star-jax train-llm --data DATA_DIR --tokenizer TOK_DIR --base BASE_HF_DIR --out OUT [--config --set]

The base Mistral (an HF directory: E5-Mistral for real runs, `star-jax pretrain`'s `OUT/model` for
the demo) is loaded frozen and FSDP-sharded by the mesh rules; only the LoRA adapter(s) and the
BCE scale and bias train (star_jax/llm/biencoder.py), through the shared loop of
star_jax/llm/loop.py, on the train split's labelled pairs (`pair_dataset`). Runtime numerics come
from `llm.arch` (`dtype: bfloat16` computes in bf16 while adapters stay fp32; `remat`).

OUT holds:
    checkpoints/           orbax: adapters + head, optimizer state, step, RNG, data-iterator state
    metrics.jsonl, tb/     train loss terms per `log_every`; val AUC at step 0 (frozen base:
                           adapters at zero), every `eval_every` and at the end
    examples.jsonl         with `llm_train.log_examples`: the member/job ids of every step's batch
    adapters/shared/       PEFT export (or adapters/member/ and adapters/job/ when lora.shared=false)
    result.json            written last: val and test AUC of the fine-tuned and the frozen towers
                           (overall, and cold-start members when the data flags them), truncation
                           counts, train seconds, and the fingerprint of inputs + config

A rerun whose result.json carries the same fingerprint is skipped. A killed run resumes from its
last checkpoint; resuming under a different fingerprint is refused in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, LLMConfig, LLMTrainConfig, MistralConfig, fingerprint
from star_jax.data.loader import NodeTexts, pair_dataset, tower
from star_jax.data.schema import read_schema
from star_jax.data.tables import open_table, read_labels
from star_jax.data.tokenizer import encode_e5, load_tokenizer
from star_jax.data.validate import check_data
from star_jax.errors import StarError
from star_jax.eval.metrics import auc
from star_jax.fileio import atomic_write_json, content_digest, finished_result
from star_jax.llm import loop
from star_jax.llm.biencoder import (
    JOB,
    MEMBER,
    TOWERS,
    adapter_names,
    biencoder_losses,
    encode_towers,
    id_keys,
    init_head,
)
from star_jax.llm.hf_io import load_mistral, read_config
from star_jax.llm.lora import export_peft, init_lora
from star_jax.llm.mistral import MistralModel
from star_jax.metrics import MetricsLogger, progress
from star_jax.parallel import initialize_distributed, logical_rules, make_mesh, replicated

RESULT = "result.json"
EXAMPLES = "examples.jsonl"
# llm_train fields that change how a run is watched, not what it computes.
_NOT_FINGERPRINTED = (
    "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "workers", "log_examples",
    "eval_batch_size",
)


def runtime_arch(base: MistralConfig, run: MistralConfig) -> MistralConfig:
    """The base checkpoint's architecture with the run's numerics (dtypes, remat, attention)."""
    return dataclasses.replace(
        base, dtype=run.dtype, param_dtype=run.param_dtype, remat=run.remat, attention=run.attention
    )


def check_vocab(tokenizer: Any, tokenizer_dir: str | os.PathLike, arch: MistralConfig, base_dir: str) -> None:
    if len(tokenizer) > arch.vocab_size:
        raise StarError(
            f"--tokenizer {tokenizer_dir}: its {len(tokenizer)} token ids exceed vocab_size="
            f"{arch.vocab_size} of {os.path.join(base_dir, 'config.json')}; use the base model's tokenizer"
        )


def run_fingerprint(cfg: Config, data_dir: str, tokenizer_dir: str, base_dir: str) -> str:
    train = {k: v for k, v in dataclasses.asdict(cfg.llm_train).items() if k not in _NOT_FINGERPRINTED}
    llm = {k: v for k, v in dataclasses.asdict(cfg.llm).items() if k != "base_dir"}
    inputs = {p: content_digest([d]) for p, d in (("data", data_dir), ("tokenizer", tokenizer_dir))}
    inputs["base"] = content_digest([base_dir])
    return fingerprint(llm, cfg.lora, train, inputs)


def count_truncated(data_dir: str, tokenizer: Any, llm: LLMConfig) -> dict[str, dict[str, int]]:
    """How many member and job texts exceed their tower's max length (they are cut, E5-style)."""
    out = {}
    for node_type in TOWERS:
        texts = NodeTexts(data_dir, node_type)
        ids = texts.ids()
        max_len, instruction = tower(llm, node_type)
        cut = 0
        with progress(total=len(ids), desc=f"lengths ({node_type})", unit="text") as bar:
            for start in range(0, len(ids), 1024):
                chunk = ids[start : start + 1024]
                cut += encode_e5(tokenizer, texts.lookup(chunk), max_len, [], instruction).truncated
                bar.update(len(chunk))
        out[node_type] = {"truncated": cut, "texts": len(ids), "max_len": max_len}
    return out


def device_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the loss needs; int64 ids become exact int32 keys (JAX runs without x64)."""
    keep = ("member_ids", "member_len", "job_ids", "job_len", "label", "valid")
    return {
        **{k: batch[k] for k in keep},
        "member_key": id_keys(batch["member_id"]),
        "job_key": id_keys(batch["job_id"]),
    }


def make_loss(model: MistralModel, cfg: Config) -> loop.LossFn:
    dropout = cfg.lora.dropout > 0

    def loss_fn(params: dict, base: dict, batch: dict, rng: jax.Array):
        member, job = encode_towers(
            model, base, params["adapters"], batch, pooling=cfg.llm.pooling, rng=rng if dropout else None
        )
        terms = biencoder_losses(member, job, params["head"], batch, cfg.llm_train)
        aux = {k: v for k, v in terms.items() if k != "loss"}
        aux["logit_scale"] = jnp.exp(params["head"]["log_scale"])
        aux["logit_bias"] = params["head"]["bias"]
        return terms["loss"], aux

    return loss_fn


class Evaluator:
    """AUC of cosine scores on labelled pairs; each distinct member and job text is embedded once per
    call, however many splits (and extra pairs) the call scores.

    Texts go through `star-jax embed`'s towers (`star_jax.llm.embed`): sorted by length and padded
    per batch to their `llm.buckets` length, `llm_train.eval_batch_size` texts per batch.
    """

    def __init__(
        self, data_dir: str, tokenizer: Any, cfg: Config, model: MistralModel, base: dict, mesh: Mesh
    ):
        from star_jax.llm.embed import _Towers  # embed.py imports this module: import on use

        loop.check_batch(cfg.llm_train.eval_batch_size, 1, mesh, "llm_train.eval")
        embed_cfg = dataclasses.replace(cfg.embed, batch_size=cfg.llm_train.eval_batch_size)
        self.towers = lambda adapters: _Towers(
            model, base, adapters, tokenizer, dataclasses.replace(cfg, embed=embed_cfg), mesh
        )
        self.texts = {t: NodeTexts(data_dir, t) for t in TOWERS}
        self.pairs = {
            s: read_labels(data_dir, s, ["member_id", "job_id", "label"]) for s in ("val", "test")
        }
        spec = read_schema(data_dir).node_types["member"]
        members = open_table(data_dir, spec.table)
        self.cold: np.ndarray | None = None
        if "cold_start" in members.schema.names:
            t = members.to_table(columns=["id", "cold_start"])
            self.cold = t["id"].to_numpy()[t["cold_start"].to_numpy(zero_copy_only=False)]

    def embed(self, adapters: dict, node_type: str, ids: np.ndarray) -> np.ndarray:
        """Unit vectors `[len(ids), H]` of `node_type`'s texts, in the order of `ids`."""
        towers, texts, out = self.towers(adapters), self.texts[node_type], []
        with progress(total=len(ids), desc=f"embed {node_type}s", unit="text") as bar:
            for lo in range(0, len(ids), 1024):  # 1024 texts sorted by length at a time
                chunk = ids[lo : lo + 1024]
                batches, _ = towers.dispatch(node_type, chunk, texts.lookup(chunk), f"{texts.table}: text")
                out.append(towers.collect(len(chunk), batches))
                bar.update(len(chunk))
        return np.concatenate(out)

    def cosines(self, adapters: dict, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """cos(member tower, job tower) `[P]` for each (member_id, job_id) array pair of `pairs`."""
        members = np.unique(np.concatenate([m for m, _ in pairs]))
        jobs = np.unique(np.concatenate([j for _, j in pairs]))
        m, j = self.embed(adapters, MEMBER, members), self.embed(adapters, JOB, jobs)
        pick = lambda x, ids, at: x[np.searchsorted(ids, at)]
        return [np.sum(pick(m, members, mi) * pick(j, jobs, ji), axis=-1) for mi, ji in pairs]

    def __call__(
        self, adapters: dict, splits: tuple[str, ...] = ("val",), extra: tuple = ()
    ) -> tuple[dict[str, dict[str, float]], list[np.ndarray]]:
        """({split: {'auc', 'auc_cold_start'}}, cosines of the `extra` (member_id, job_id) pairs)."""
        frames = [self.pairs[s] for s in splits]
        ids = [(df["member_id"].to_numpy(), df["job_id"].to_numpy()) for df in frames]
        scores = self.cosines(adapters, ids + list(extra))
        out = {}
        for split, df, (member_id, _), score in zip(splits, frames, ids, scores):
            label = df["label"].to_numpy()
            values = {"auc": auc(label, score)}
            if self.cold is not None:
                cold = np.isin(member_id, self.cold)
                if cold.any():
                    values["auc_cold_start"] = auc(label[cold], score[cold])
            out[split] = {k: v for k, v in values.items() if not np.isnan(v)}
        return out, scores[len(splits) :]


def init_trainable(cfg: Config, arch: MistralConfig, mesh: Mesh, rules: Any) -> dict:
    """`{'adapters': {name: LoRA tree}, 'head': {'log_scale', 'bias'}}`: fresh adapters (B = 0, so
    step 0 is the frozen base) sharded by the logical rules, the head replicated."""
    names = adapter_names(cfg.lora)
    keys = jax.random.split(jax.random.key(cfg.llm_train.seed), len(names))
    return {
        "adapters": {n: init_lora(k, arch, cfg.lora, mesh=mesh, rules=rules) for n, k in zip(names, keys)},
        "head": jax.jit(lambda: init_head(cfg.llm_train), out_shardings=replicated(mesh))(),
    }


def fit_head(cosines: np.ndarray, labels: np.ndarray, cfg: LLMTrainConfig) -> dict[str, float]:
    """The BCE head fitted to the frozen towers: logistic regression of the label on the cosine.

    A frozen last-token embedding is highly anisotropic (on the tiny demo base every cosine is
    0.98 +- 0.01), so the configured scale and bias put every pair at p ~ 1; BCE's first gradients
    then only push all cosines apart, which distorts the features the towers start from. Fitting
    the head first (the linear probe of LP-FT, Kumar et al. 2022) makes BCE's gradients rank
    pairs from the first step. A non-positive slope keeps `init_logit_scale` and fits the bias.
    """
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return {"log_scale": math.log(cfg.init_logit_scale), "bias": cfg.init_logit_bias}
    x = cosines.astype(np.float64)[:, None]
    fit = LogisticRegression(C=1e4).fit(x, labels)
    scale = float(fit.coef_[0, 0])
    if scale > 0:
        return {"log_scale": math.log(scale), "bias": float(fit.intercept_[0])}
    rate, scale = float(labels.mean()), cfg.init_logit_scale
    return {"log_scale": math.log(scale), "bias": math.log(rate / (1 - rate)) - scale * float(x.mean())}


def evaluate_frozen(
    evaluator: Evaluator, adapters: dict, cfg: Config, data_dir: str, *, calibrate: bool
) -> tuple[dict[str, dict[str, float]], dict[str, float] | None]:
    """The frozen towers (adapters at zero) on val and test, and with `calibrate` the BCE head fitted
    (`fit_head`) on up to `calibration_pairs` train pairs, embedded in the same pass."""
    tcfg, extra = cfg.llm_train, ()
    if calibrate:
        pairs = read_labels(data_dir, "train", ["member_id", "job_id", "label"])
        pairs = pairs.sample(min(tcfg.calibration_pairs, len(pairs)), random_state=tcfg.seed)
        extra = ((pairs["member_id"].to_numpy(), pairs["job_id"].to_numpy()),)
    frozen, cosines = evaluator(_zeros(adapters), ("val", "test"), extra)
    if not calibrate:
        return frozen, None
    head = fit_head(cosines[0], pairs["label"].to_numpy(), tcfg)
    print(
        f"train-llm: BCE head fitted to the frozen towers on {len(pairs):,} train pairs: "
        f"scale {math.exp(head['log_scale']):.1f}, bias {head['bias']:.1f}"
    )
    return frozen, head


def _zeros(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def _example_logger(out: Path, enabled: bool) -> Callable[[int, dict], None]:
    def log(step: int, batch: dict) -> None:
        if jax.process_index() != 0:
            return
        valid = batch["valid"]
        record = {
            "step": step,
            "member_id": batch["member_id"][valid].tolist(),
            "job_id": batch["job_id"][valid].tolist(),
        }
        with open(out / EXAMPLES, "a") as f:
            f.write(json.dumps(record) + "\n")

    return log if enabled else (lambda step, batch: None)


def train_llm(
    cfg: Config,
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    devices: list[jax.Device] | None = None,
    on_batch: Callable[[int, dict], None] | None = None,
) -> dict:
    """Fine-tune (or resume, or skip when done) and return the contents of OUT/result.json.

    `devices` restricts the mesh (default: every device of every process); `on_batch(step,
    batch)` sees each host batch before its step.
    """
    initialize_distributed(cfg.mesh)
    data_dir, tokenizer_dir, base_dir = map(os.fspath, (data_dir, tokenizer_dir, base_dir))
    out, tcfg = Path(out_dir), cfg.llm_train
    check_data(data_dir)  # empty texts, dangling ids, ... are refused before anything trains
    fp = run_fingerprint(cfg, data_dir, tokenizer_dir, base_dir)
    done = finished_result(Path(out) / RESULT, fp)
    if done is not None:
        print(f"train-llm: {out} already holds a finished run with these inputs and config; skipped")
        return done
    tokenizer = load_tokenizer(tokenizer_dir)
    arch = runtime_arch(read_config(base_dir), cfg.llm.arch)
    check_vocab(tokenizer, tokenizer_dir, arch, base_dir)
    mesh, rules = make_mesh(cfg.mesh, devices), logical_rules(cfg.mesh)
    loop.check_batch(tcfg.batch_size, tcfg.grad_accum, mesh, "llm_train")
    out.mkdir(parents=True, exist_ok=True)

    # Built outside the mesh context: the model's logical constraints apply only to traced steps.
    _, base = load_mistral(base_dir, arch.param_dtype, mesh=mesh, rules=rules)
    model = MistralModel(arch, cfg.lora)
    params = init_trainable(cfg, arch, mesh, rules)
    tx, schedule = loop.make_optimizer(
        lr=tcfg.lr, warmup_steps=tcfg.warmup_steps, steps=tcfg.steps,
        weight_decay=tcfg.weight_decay, clip_norm=tcfg.clip_norm,
    )
    state = loop.init_state(params, tx, tcfg.seed, mesh)
    step_fn = loop.make_train_step(make_loss(model, cfg), tx, schedule, tcfg.grad_accum, mesh, state)
    shard = loop.process_shard(mesh, tcfg.batch_size)
    batches = iter(
        pair_dataset(
            data_dir, tokenizer, cfg.llm, split="train", batch_size=tcfg.batch_size, seed=tcfg.seed,
            epochs=None, workers=tcfg.workers, shard=shard,
        )
    )
    lengths = count_truncated(data_dir, tokenizer, cfg.llm)
    for node_type, c in lengths.items():
        if c["truncated"]:
            print(
                f"train-llm: {c['truncated']:,} of {c['texts']:,} {node_type} texts exceed "
                f"{c['max_len']} tokens and are truncated"
            )
    evaluator = Evaluator(data_dir, tokenizer, cfg, model, base, mesh)
    log_examples = _example_logger(out, tcfg.log_examples)

    def seen(step: int, batch: dict) -> None:
        log_examples(step, batch)
        if on_batch is not None:
            on_batch(step, batch)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ckpt = Checkpointer(out / "checkpoints", fingerprint=fp, max_to_keep=tcfg.keep_checkpoints)
        # A resumed run has its fitted head in the checkpoint, but needs the frozen scores again.
        calibrate = ckpt.latest_step() is None and tcfg.calibration_pairs > 0 and tcfg.bce_weight > 0
        adapters = state.params["adapters"]
        frozen, head = evaluate_frozen(evaluator, adapters, cfg, data_dir, calibrate=calibrate)
        if head is not None:
            values = {k: jnp.asarray(v, jnp.float32) for k, v in head.items()}
            fitted = jax.jit(lambda: values, out_shardings=replicated(mesh))()
            state = state._replace(params={**state.params, "head": fitted})

        def evaluate(state: loop.TrainState) -> dict[str, float]:
            if int(state.step) == 0:  # adapters at zero: the frozen base
                return frozen["val"]
            return evaluator(state.params["adapters"])[0]["val"]

        with MetricsLogger(out) as logger:
            logger.log(0, "data", **{f"truncated_{t}": c["truncated"] for t, c in lengths.items()})
            state, seconds = loop.train(
                state, step_fn, base, batches,
                put=lambda b: loop.put_batch(device_batch(b), mesh, shard),
                ckpt=ckpt, logger=logger, steps=tcfg.steps, log_every=tcfg.log_every,
                checkpoint_every=tcfg.checkpoint_every,
                tokens=lambda b: int(b["member_len"].sum() + b["job_len"].sum()),
                desc="train-llm", eval_every=tcfg.eval_every,
                evaluate=evaluate, on_batch=seen,
            )
            adapters = loop.gather(state.params["adapters"], mesh)
            final, _ = evaluator(adapters, ("val", "test"))
            logger.log(tcfg.steps, "val", **final["val"])
            scores = {
                f"{split}_{metric}{suffix}": value
                for suffix, evaluations in (("", final), ("_frozen", frozen))
                for split, values in evaluations.items()
                for metric, value in values.items()
            }
            logger.log(tcfg.steps, "result", **scores)
        ckpt.close()
        head = {k: float(v) for k, v in jax.device_get(loop.gather(state.params["head"], mesh)).items()}

    result = {
        "fingerprint": fp,
        **scores,
        "steps": tcfg.steps,
        "train_seconds": seconds,
        "logit_scale": float(np.exp(head["log_scale"])),
        "logit_bias": head["bias"],
        "lengths": lengths,
        "adapters": {n: f"adapters/{n}" for n in adapters},
        "base": base_dir,
        "tokenizer": tokenizer_dir,
    }
    if jax.process_index() == 0:
        for name, tree in adapters.items():
            export_peft(tree, cfg.lora, arch, out / "adapters" / name, base_model_name_or_path=base_dir)
        atomic_write_json(out / RESULT, result)
    print(
        f"train-llm: test AUC {scores.get('test_auc', float('nan')):.4f} "
        f"(frozen base {scores.get('test_auc_frozen', float('nan')):.4f}), "
        f"val AUC {scores.get('val_auc', float('nan')):.4f}; {seconds:.0f}s of training -> {out}"
    )
    return result


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.cli import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory (default: tokenizer.dir)")
    parser.add_argument("--base", default=None, help="HF Mistral directory (default: llm.base_dir)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, adapters, result.json)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.cli import config_from_args, flag_or_config

    cfg = config_from_args(args)
    train_llm(
        cfg,
        flag_or_config("--data", args.data, cfg.data.dir, "data.dir"),
        flag_or_config("--tokenizer", args.tokenizer, cfg.tokenizer.dir, "tokenizer.dir"),
        flag_or_config("--base", args.base, cfg.llm.base_dir, "llm.base_dir"),
        args.out,
    )
    return 0
