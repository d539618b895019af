"""`star-jax train-llm`: LoRA fine-tuning of the member/job bi-encoder (STAR's LLM stage).

    star-jax train-llm --data DATA_DIR --tokenizer TOK_DIR --base BASE_HF_DIR --out OUT [--config --set]

The base Mistral (E5-Mistral, or `star-jax pretrain`'s `OUT/model`) is loaded frozen and
FSDP-sharded; the `BiEncoder`'s trainable params train through star_jax/train_loop.py on the train
split's labelled pairs. OUT holds `checkpoints/` (resumable), `metrics.jsonl` and `tb/` (train
losses, val AUC), `examples.jsonl` (with `llm_train.log_examples`), `adapters/` (the bi-encoder's
export: PEFT adapters) and `result.json`, written last: val and test AUC of the fine-tuned and
frozen towers, truncation counts, and the fingerprint. A rerun with the same fingerprint is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from star_jax import train_loop as loop
from star_jax.checkpoint import Checkpointer
from star_jax.config import Config, LLMConfig, LLMTrainConfig, fingerprint
from star_jax.data.loader import NodeTexts, pair_dataset, tower
from star_jax.data.schema import read_schema
from star_jax.data.tables import open_table, read_labels
from star_jax.data.tokenizer import encode_e5, load_tokenizer
from star_jax.data.validate import check_data
from star_jax.fileio import atomic_write_json, content_digest, finished_result
from star_jax.llm.biencoder import EXPORT_DIR, JOB, MEMBER, TOWERS, BiEncoder, Params, build_biencoder
from star_jax.llm.hf_io import check_vocab, load_mistral, read_config, runtime_arch
from star_jax.llm.losses import check_matryoshka, id_keys
from star_jax.llm.towers import TextTowers
from star_jax.metrics import auc
from star_jax.parallel import initialize_distributed, logical_rules, make_mesh
from star_jax.tracking import MetricsLogger, progress

log = logging.getLogger(__name__)

RESULT = "result.json"
EXAMPLES = "examples.jsonl"
# llm_train fields that change how a run is watched, not what it computes.
_NOT_FINGERPRINTED = (
    "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "workers", "log_examples",
    "eval_batch_size",
)


def train_llm_fingerprint(cfg: Config, data_dir: str, tokenizer_dir: str, base_dir: str) -> str:
    train = {k: v for k, v in dataclasses.asdict(cfg.llm_train).items() if k not in _NOT_FINGERPRINTED}
    llm = {k: v for k, v in dataclasses.asdict(cfg.llm).items() if k != "base_dir"}
    if llm.get("projection") == "none":  # no head: the fingerprint of runs from before the field
        del llm["projection"]
    if not train["matryoshka_dims"]:  # off: the fingerprint of runs from before the field
        del train["matryoshka_dims"]
    inputs = {p: content_digest([d]) for p, d in (("data", data_dir), ("tokenizer", tokenizer_dir))}
    inputs["base"] = content_digest([base_dir])
    return fingerprint(llm, cfg.lora, train, inputs)


def count_truncated(data_dir: str, tokenizer: Any, llm: LLMConfig) -> dict[str, dict[str, int]]:
    """How many member and job texts exceed their tower's max length (they are cut, E5-style), and
    how many pool their `llm.member_pool` / `llm.job_pool` section."""
    out = {}
    for node_type in TOWERS:
        texts = NodeTexts(data_dir, node_type)
        ids = texts.ids()
        max_len, instruction, section = tower(llm, node_type)
        cut = pooled = 0
        with progress(total=len(ids), desc=f"lengths ({node_type})", unit="text") as bar:
            for start in range(0, len(ids), 1024):
                chunk = ids[start : start + 1024]
                enc = encode_e5(tokenizer, texts.lookup(chunk), max_len, [], instruction, section=section)
                cut, pooled = cut + enc.truncated, pooled + enc.sections
                bar.update(len(chunk))
        out[node_type] = {"truncated": cut, "texts": len(ids), "max_len": max_len,
                          "sections": pooled if section else None}
    return out


def device_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the loss needs; int64 ids become exact int32 keys (JAX runs without x64)."""
    keep = ("member_ids", "member_len", "member_pool", "job_ids", "job_len", "job_pool", "label", "valid")
    return {
        **{k: batch[k] for k in keep},
        "member_key": id_keys(batch["member_id"]),
        "job_key": id_keys(batch["job_id"]),
    }


class TowerEvaluator:
    """AUC of cosine scores on labelled pairs; each distinct member and job text is embedded once per
    call, however many splits (and extra pairs) the call scores.

    Texts go through `star-jax embed`'s towers (`star_jax.llm.towers`): sorted by length and padded
    per batch to their `llm.buckets` length, `batch_size` texts per batch.
    """

    def __init__(
        self, data_dir: str, tokenizer: Any, bienc: BiEncoder, base: dict, batch_size: int, mesh: Mesh
    ):
        loop.check_batch(batch_size, 1, mesh, "llm_train.eval")
        self.towers = lambda params: TextTowers(bienc, base, params, tokenizer, batch_size, mesh)
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

    def embed(self, params: Params, node_type: str, ids: np.ndarray) -> np.ndarray:
        """Unit vectors `[len(ids), dim]` of `node_type`'s texts, in the order of `ids`."""
        towers, texts, out = self.towers(params), self.texts[node_type], []
        with progress(total=len(ids), desc=f"embed {node_type}s", unit="text") as bar:
            for lo in range(0, len(ids), 1024):  # 1024 texts sorted by length at a time
                chunk = ids[lo : lo + 1024]
                batches, _ = towers.dispatch(node_type, chunk, texts.lookup(chunk), f"{texts.table}: text")
                out.append(towers.collect(len(chunk), batches))
                bar.update(len(chunk))
        return np.concatenate(out)

    def cosines(self, params: Params, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """cos(member tower, job tower) `[P]` for each (member_id, job_id) array pair of `pairs`."""
        members = np.unique(np.concatenate([m for m, _ in pairs]))
        jobs = np.unique(np.concatenate([j for _, j in pairs]))
        m, j = self.embed(params, MEMBER, members), self.embed(params, JOB, jobs)
        pick = lambda x, ids, at: x[np.searchsorted(ids, at)]
        return [np.sum(pick(m, members, mi) * pick(j, jobs, ji), axis=-1) for mi, ji in pairs]

    def __call__(
        self, params: Params, splits: tuple[str, ...] = ("val",), extra: tuple = ()
    ) -> tuple[dict[str, dict[str, float]], list[np.ndarray]]:
        """({split: {'auc', 'auc_cold_start'}}, cosines of the `extra` (member_id, job_id) pairs)."""
        frames = [self.pairs[s] for s in splits]
        ids = [(df["member_id"].to_numpy(), df["job_id"].to_numpy()) for df in frames]
        scores = self.cosines(params, ids + list(extra))
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


def evaluate_frozen(
    evaluator: TowerEvaluator, frozen: Params, tcfg: LLMTrainConfig, data_dir: str, *, calibrate: bool
) -> tuple[dict[str, dict[str, float]], tuple[np.ndarray, np.ndarray] | None]:
    """The frozen towers (`BiEncoder.frozen`) on val and test, and with `calibrate` the (cosines,
    labels) of up to `calibration_pairs` train pairs, embedded in the same pass, to fit the BCE
    head on (`BiEncoder.calibrate`)."""
    extra = ()
    if calibrate:
        pairs = read_labels(data_dir, "train", ["member_id", "job_id", "label"])
        pairs = pairs.sample(min(tcfg.calibration_pairs, len(pairs)), random_state=tcfg.seed)
        extra = ((pairs["member_id"].to_numpy(), pairs["job_id"].to_numpy()),)
    scores, cosines = evaluator(frozen, ("val", "test"), extra)
    return scores, (cosines[0], pairs["label"].to_numpy()) if calibrate else None


def _example_logger(out: Path, enabled: bool) -> Callable[[int, dict], None]:
    def log_batch(step: int, batch: dict) -> None:
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

    return log_batch if enabled else (lambda step, batch: None)


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
    fp = train_llm_fingerprint(cfg, data_dir, tokenizer_dir, base_dir)
    done = finished_result(Path(out) / RESULT, fp)
    if done is not None:
        log.info(f"train-llm: {out} already holds a finished run with these inputs and config; skipped")
        return done
    tokenizer = load_tokenizer(tokenizer_dir)
    arch = runtime_arch(read_config(base_dir), cfg.llm.arch)
    check_vocab(tokenizer, tokenizer_dir, arch, base_dir)
    bienc = build_biencoder(cfg.llm, cfg.lora, tcfg, arch=arch)
    if cfg.llm.pooling == "mean_first_last" and "embed_tokens" not in cfg.lora.modules_to_save:
        log.warning("train-llm: llm.pooling mean_first_last pools the token embeddings, which LoRA "
                    "alone cannot adapt; add embed_tokens to lora.modules_to_save (docs/architecture.md, "
                    "decision 23)")
    check_matryoshka(tcfg.matryoshka_dims, bienc.dim)
    mesh, rules = make_mesh(cfg.mesh, devices), logical_rules(cfg.mesh)
    loop.check_batch(tcfg.batch_size, tcfg.grad_accum, mesh, "llm_train")
    out.mkdir(parents=True, exist_ok=True)

    # Built outside the mesh context: the model's logical constraints apply only to traced steps.
    _, base = load_mistral(base_dir, arch.param_dtype, mesh=mesh, rules=rules)
    params = bienc.init(jax.random.key(tcfg.seed), mesh, rules, base=base)
    tx, schedule = loop.make_optimizer(
        lr=tcfg.lr, warmup_steps=tcfg.warmup_steps, steps=tcfg.steps,
        weight_decay=tcfg.weight_decay, clip_norm=tcfg.clip_norm,
    )
    state = loop.init_state(params, tx, tcfg.seed, mesh)
    step_fn = loop.make_train_step(bienc.loss, tx, schedule, tcfg.grad_accum, mesh, state)
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
            log.info(
                f"train-llm: {c['truncated']:,} of {c['texts']:,} {node_type} texts exceed "
                f"{c['max_len']} tokens and are truncated"
            )
        if c["sections"] is not None:
            log.info(f"train-llm: {c['sections']:,} of {c['texts']:,} {node_type} texts pool their "
                     f"llm.{node_type}_pool section; the rest pool the whole text")
    evaluator = TowerEvaluator(data_dir, tokenizer, bienc, base, tcfg.eval_batch_size, mesh)
    log_examples = _example_logger(out, tcfg.log_examples)

    def seen(step: int, batch: dict) -> None:
        log_examples(step, batch)
        if on_batch is not None:
            on_batch(step, batch)

    with (jax.set_mesh(mesh), nn.logical_axis_rules(rules),
          Checkpointer(out / "checkpoints", fingerprint=fp, max_to_keep=tcfg.keep_checkpoints) as ckpt):
        # A resumed run has its fitted head in the checkpoint, but needs the frozen scores again.
        calibrate = ckpt.latest_step() is None and tcfg.calibration_pairs > 0 and tcfg.bce_weight > 0
        frozen, calibration = evaluate_frozen(
            evaluator, bienc.frozen(state.params), tcfg, data_dir, calibrate=calibrate
        )
        if calibration is not None:
            state = state._replace(params=bienc.calibrate(state.params, *calibration))
            fitted = bienc.logit(state.params)
            log.info(
                f"train-llm: BCE head fitted to the frozen towers on {len(calibration[1]):,} train pairs: "
                f"scale {fitted['logit_scale']:.1f}, bias {fitted['logit_bias']:.1f}"
            )

        def evaluate(state: loop.TrainState) -> dict[str, float]:
            if int(state.step) == 0:  # adapters at zero: the frozen towers
                return frozen["val"]
            return evaluator(state.params)[0]["val"]

        with MetricsLogger(out) as logger:
            logger.log(0, "data", **{f"truncated_{t}": c["truncated"] for t, c in lengths.items()})
            state, seconds = loop.train(
                state, step_fn, base, batches,
                put=lambda b: loop.put_batch(device_batch(b), mesh, shard),
                ckpt=ckpt, logger=logger, steps=tcfg.steps, log_every=tcfg.log_every,
                checkpoint_every=tcfg.checkpoint_every,
                tokens=lambda b: int(b["member_len"].sum() + b["job_len"].sum()),
                desc="train-llm", eval_every=tcfg.eval_every,
                evaluate=evaluate, on_batch=seen, watchdog_s=cfg.mesh.watchdog_s,
            )
            params = loop.gather(state.params, mesh)
            final, _ = evaluator(params, ("val", "test"))
            logger.log(tcfg.steps, "val", **final["val"])
            scores = {
                f"{split}_{metric}{suffix}": value
                for suffix, evaluations in (("", final), ("_frozen", frozen))
                for split, values in evaluations.items()
                for metric, value in values.items()
            }
            logger.log(tcfg.steps, "result", **scores)

    result = {
        "fingerprint": fp,
        **scores,
        "steps": tcfg.steps,
        "train_seconds": seconds,
        **bienc.logit(params),
        "lengths": lengths,
        "adapters": {n: f"{EXPORT_DIR}/{n}" for n in params["adapters"]},
        "base": base_dir,
        "tokenizer": tokenizer_dir,
    }
    if jax.process_index() == 0:
        bienc.export(params, out / EXPORT_DIR, base_model_name_or_path=base_dir)
        atomic_write_json(out / RESULT, result)
    log.info(
        f"train-llm: test AUC {scores.get('test_auc', float('nan')):.4f} "
        f"(frozen base {scores.get('test_auc_frozen', float('nan')):.4f}), "
        f"val AUC {scores.get('val_auc', float('nan')):.4f}; {seconds:.0f}s of training -> {out}"
    )
    return result


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory (default: tokenizer.dir)")
    parser.add_argument("--base", default=None, help="HF Mistral directory (default: llm.base_dir)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, adapters, result.json)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args, flag_or_config

    cfg = config_from_args(args)
    train_llm(
        cfg,
        flag_or_config("--data", args.data, cfg.data.dir, "data.dir"),
        flag_or_config("--tokenizer", args.tokenizer, cfg.tokenizer.dir, "tokenizer.dir"),
        flag_or_config("--base", args.base, cfg.llm.base_dir, "llm.base_dir"),
        args.out,
    )
    return 0
