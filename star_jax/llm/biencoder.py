"""The STAR bi-encoder: a member tower and a job tower over one frozen Mistral, and their losses.

Follows STAR's LLM embedding component (arXiv 2507.09797): a request tower embeds member
profiles and a document tower job postings, both fine-tuned from E5-Mistral with LoRA on one
frozen base, trained with BCE plus a triplet loss with semi-hard negative mining. The paper does
not say whether the towers share the adapter; both are offered.
The style is big_vision's `two_towers.py`: pure functions, L2-normalised fp32 outputs, a learnable
scale and bias on the cosine.

- Towers. `LoraConfig.shared` picks one adapter for both towers (`{"shared": lora}`) or one per
  tower (`{"member": lora, "job": lora}`). Otherwise the towers differ only in their input: the E5
  instruction prefix (`llm.instruction`) is on the member (query) side, added by the loader
  (`star_jax.data.loader.tower`), never on the job side (E5-Mistral, arXiv 2401.00368).
- Pooling (`llm.pooling`). `last_token`, E5's: the hidden state of the last real token, found
  from the lengths (E5's `last_token_pool` for right padding), never from token ids (E5's pad id
  is its EOS id). `mean`: the average over the real tokens (sentence-transformers' mean pooling),
  our choice for a small base pretrained from scratch. A 7B causal LM has learned to summarise a
  text in its last state; the demo's 4-layer, 128-d base after 200 pretraining steps has not, and
  its last states sit in a narrow cone (a frozen-tower BCE fit needs a cosine scale of about 70,
  against 8 for mean pooling). On the tiny data (seed 3) the fine-tuned towers reach test AUC
  0.73 with mean pooling and 0.63 with the last token, same steps (docs/architecture.md, decision 12).
- Losses (weights from `LLMTrainConfig`):
  * BCE on `exp(log_scale) * cos(member, job) + bias` for every labelled pair (SigLIP's scaled
    cosine, as big_vision's `t` and `b`; the scale is learned as its log).
  * Semi-hard triplet (FaceNet, Schroff et al. 2015, section 3.2) with d = squared L2 distance
    on the unit sphere: for each positive pair (anchor = member, positive = job), the negative is
    the closest in-batch job with d(a,p) < d(a,n) < d(a,p) + margin; when there is none, the
    hardest (closest) negative. In-batch jobs that are the positive job itself or another
    positive of the same member in the batch are not negatives. FaceNet leaves the choice among
    semi-hard negatives open; we take the closest, as TF-Addons' `triplet_semihard_loss` does,
    but where none exists we take the hardest negative (TF-Addons takes the farthest).
  * InfoNCE (E5's loss) over the same in-batch negatives, optional (`infonce_weight`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.config import LLMTrainConfig, LoraConfig
from star_jax.errors import StarError
from star_jax.llm.lora import import_peft
from star_jax.llm.mistral import MistralModel

MEMBER, JOB = "member", "job"
TOWERS = (MEMBER, JOB)
SHARED = "shared"


def adapter_names(lora: LoraConfig) -> tuple[str, ...]:
    """Keys of the adapters dict: `("shared",)` or `("member", "job")`."""
    return (SHARED,) if lora.shared else TOWERS


def tower_adapters(adapters: dict | None, tower: str) -> dict | None:
    """The LoRA tree `tower` runs with: its own, the shared one, or `adapters` itself when it is
    already a single LoRA tree (e.g. from `lora.import_peft`). None: the frozen base alone."""
    if adapters is None or "layers" in adapters:
        return adapters
    return adapters[tower] if tower in adapters else adapters[SHARED]


def last_token(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    """`hidden[b, lengths[b] - 1]`: `[B, T, H]` -> `[B, H]` (a zero length picks position 0)."""
    index = jnp.clip(lengths - 1, 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def mean_pool(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    """The mean of `hidden[b, :lengths[b]]`: `[B, T, H]` -> `[B, H]` in fp32 (a zero length gives 0)."""
    real = (jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    total = jnp.einsum("bt,bth->bh", real, hidden.astype(jnp.float32))
    return total / jnp.maximum(real.sum(1), 1.0)[:, None]


# `llm.pooling` -> `[B, T, H], lengths -> [B, H]`; the config checks the name (config.POOLINGS).
POOL_FNS = {"last_token": last_token, "mean": mean_pool}


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit rows in fp32 (torch's `F.normalize`: x / max(||x||, eps))."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def encode(
    model: MistralModel,
    base: dict,
    adapters: dict | None,
    tower: str,
    ids: jax.Array,
    lengths: jax.Array,
    *,
    pooling: str,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Embed right-padded token ids `[B, T]` with `tower`'s adapter: unit-norm fp32 `[B, H]`.

    `model` is `MistralModel(arch, lora_config)` (`lora_config` None with `adapters` None for
    the frozen base). `pooling` is `llm.pooling` (a key of `POOL_FNS`). `rng` turns on LoRA
    dropout (training); None is inference.
    """
    lora = tower_adapters(adapters, tower)
    variables = {"params": base} if lora is None else {"params": base, "lora": lora}
    mask = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    hidden = model.apply(
        variables,
        ids,
        mask,
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )
    return l2_normalize(POOL_FNS[pooling](hidden, lengths))


def encode_towers(
    model: MistralModel,
    base: dict,
    adapters: dict,
    batch: dict[str, jax.Array],
    *,
    pooling: str,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Member and job embeddings `[B, H]` of a batch (`member_ids`/`member_len`, `job_ids`/`job_len`).

    With one adapter for both towers and equal padded lengths, one pass over the base embeds both
    towers: bigger matmuls, and a training step that traces (and compiles) the model once. Rows
    are interleaved (member i, job i), so a batch split over devices stays where it is.
    """
    m_ids, m_len, j_ids, j_len = (batch[k] for k in ("member_ids", "member_len", "job_ids", "job_len"))
    if tower_adapters(adapters, MEMBER) is tower_adapters(adapters, JOB) and m_ids.shape == j_ids.shape:
        b, t = m_ids.shape
        ids = jnp.stack([m_ids, j_ids], axis=1).reshape(2 * b, t)
        lengths = jnp.stack([m_len, j_len], axis=1).reshape(2 * b)
        both = encode(model, base, adapters, MEMBER, ids, lengths, pooling=pooling, rng=rng).reshape(b, 2, -1)
        return both[:, 0], both[:, 1]
    rm, rj = (None, None) if rng is None else jax.random.split(rng)
    return (
        encode(model, base, adapters, MEMBER, m_ids, m_len, pooling=pooling, rng=rm),
        encode(model, base, adapters, JOB, j_ids, j_len, pooling=pooling, rng=rj),
    )


def init_head(cfg: LLMTrainConfig) -> dict[str, jax.Array]:
    """The learnable scale (as its log) and bias of the BCE logit."""
    return {
        "log_scale": jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32),
        "bias": jnp.asarray(cfg.init_logit_bias, jnp.float32),
    }


def pair_logits(member: jax.Array, job: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
    """`exp(log_scale) * cos(member_i, job_i) + bias`, `[B]` (unit-norm inputs)."""
    return jnp.exp(head["log_scale"]) * jnp.sum(member * job, axis=-1) + head["bias"]


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def bce_loss(
    member: jax.Array, job: jax.Array, label: jax.Array, valid: jax.Array, head: dict[str, jax.Array]
) -> jax.Array:
    """Mean sigmoid cross-entropy of the scaled cosine over the valid labelled pairs."""
    logits = pair_logits(member, job, head)
    return _masked_mean(optax.sigmoid_binary_cross_entropy(logits, label.astype(jnp.float32)), valid)


def _same(key: jax.Array) -> jax.Array:
    """`[B, B]`: rows i, k carry the same id. Keys are int64 ids viewed as int32 `[B, 2]` (no x64)."""
    return jnp.all(key[:, None, :] == key[None, :, :], axis=-1)


def negative_mask(
    member_key: jax.Array, job_key: jax.Array, label: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(anchors `[B]`, negatives `[B, B]`): anchors are valid positive pairs; job k is a negative for
    anchor i unless it is a job that member i applied to somewhere in the batch (its own positive
    included) or a fill row."""
    positive = (label > 0) & valid
    # applied[i, k']: row k' is a positive of member i; a job k is excluded when it equals such a job.
    applied = _same(member_key) & positive[None, :]
    # A 0/1 matmul counts such jobs; HIGHEST keeps it exact where matmuls default to TF32/bf16.
    excluded = jnp.einsum(
        "ik,kj->ij", applied.astype(jnp.float32), _same(job_key).astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    ) > 0
    return positive, valid[None, :] & ~excluded


def semihard_triplet_loss(
    member: jax.Array,
    job: jax.Array,
    member_key: jax.Array,
    job_key: jax.Array,
    label: jax.Array,
    valid: jax.Array,
    margin: float,
) -> jax.Array:
    """FaceNet's triplet loss with semi-hard in-batch negatives, averaged over anchors that have one."""
    anchors, negatives = negative_mask(member_key, job_key, label, valid)
    d = 2.0 - 2.0 * member @ job.T  # squared L2 distance between unit vectors
    d_ap = jnp.diagonal(d)
    inf = jnp.asarray(jnp.inf, d.dtype)
    sel = jax.lax.stop_gradient(d)
    semihard = negatives & (sel > d_ap[:, None]) & (sel < d_ap[:, None] + margin)
    hardest_semihard = jnp.argmin(jnp.where(semihard, sel, inf), axis=1)
    hardest = jnp.argmin(jnp.where(negatives, sel, inf), axis=1)
    choice = jnp.where(semihard.any(axis=1), hardest_semihard, hardest)
    d_an = jnp.take_along_axis(d, choice[:, None], axis=1)[:, 0]
    per_anchor = jax.nn.relu(d_ap - d_an + margin)
    return _masked_mean(per_anchor, anchors & negatives.any(axis=1))


def infonce_loss(
    member: jax.Array,
    job: jax.Array,
    member_key: jax.Array,
    job_key: jax.Array,
    label: jax.Array,
    valid: jax.Array,
    temperature: float,
) -> jax.Array:
    """E5's InfoNCE: softmax over the anchor's positive and its in-batch negatives of cos / temperature."""
    anchors, negatives = negative_mask(member_key, job_key, label, valid)
    logits = (member @ job.T) / temperature
    allowed = negatives | jnp.eye(logits.shape[0], dtype=bool)
    logits = jnp.where(allowed, logits, -jnp.inf)
    per_anchor = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    return _masked_mean(per_anchor, anchors)


def biencoder_losses(
    member: jax.Array, job: jax.Array, head: dict[str, jax.Array], batch: dict[str, Any], cfg: LLMTrainConfig
) -> dict[str, jax.Array]:
    """Every loss term and their weighted sum `loss`, from the two towers' embeddings of a batch.

    `batch`: label int32 [B], valid bool [B], member_key / job_key int32 [B, 2] (ids for the
    in-batch exclusions).
    """
    label, valid = batch["label"], batch["valid"]
    keys = (batch["member_key"], batch["job_key"], label, valid)
    out = {"bce": bce_loss(member, job, label, valid, head)}
    if cfg.triplet_weight:
        out["triplet"] = semihard_triplet_loss(member, job, *keys, cfg.triplet_margin)
    if cfg.infonce_weight:
        out["infonce"] = infonce_loss(member, job, *keys, cfg.infonce_temperature)
    weights = {"bce": cfg.bce_weight, "triplet": cfg.triplet_weight, "infonce": cfg.infonce_weight}
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out


def id_keys(ids: np.ndarray) -> np.ndarray:
    """int64 ids `[B]` as int32 `[B, 2]` (both halves), so ids compare exactly on device without x64."""
    ids = np.ascontiguousarray(ids, np.int64)
    return ids.view(np.int32).reshape(len(ids), 2)


def load_adapters(run_dir: str | os.PathLike) -> tuple[dict, LoraConfig]:
    """The adapters a `train-llm` run exported (`RUN/adapters/shared`, or `member` and `job`) as
    `encode` takes them, with their LoraConfig."""
    root = Path(run_dir) / "adapters"
    names = [n for n in (SHARED, *TOWERS) if (root / n).is_dir()]
    if names not in ([SHARED], list(TOWERS)):
        raise StarError(f"{root}: no adapters/shared nor adapters/member + adapters/job (a train-llm output)")
    loaded = {n: import_peft(root / n) for n in names}
    lora = dataclasses.replace(loaded[names[0]][1], shared=names == [SHARED])
    return {n: adapters for n, (adapters, _) in loaded.items()}, lora
