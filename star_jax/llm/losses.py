"""The bi-encoder's losses on unit-norm member and job embeddings (weights from `LLMTrainConfig`).

- BCE on `exp(log_scale) * cos(member, job) + bias` for every labelled pair: SigLIP's scaled
  cosine (big_vision's `t` and `b`), the scale learned as its log; the "head" is {log_scale, bias}.
- Semi-hard triplet (FaceNet, Schroff et al. 2015, section 3.2) over in-batch negatives.
- InfoNCE (E5's loss) over the same in-batch negatives, optional (`infonce_weight`).
In-batch jobs that are the positive itself or another positive of the same member are no negatives.
With `matryoshka_dims`, every term is also taken on the renormalised prefixes (Matryoshka, Kusupati
et al. 2022) and the widths' losses are averaged.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.config import LLMTrainConfig
from star_jax.errors import StarError


def init_head(cfg: LLMTrainConfig) -> dict[str, jax.Array]:
    """The learnable scale (as its log) and bias of the BCE logit."""
    return {
        "log_scale": jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32),
        "bias": jnp.asarray(cfg.init_logit_bias, jnp.float32),
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
    """FaceNet's triplet loss with semi-hard in-batch negatives, averaged over anchors that have one.

    d is the squared L2 distance on the unit sphere. For each positive pair (anchor = member,
    positive = job) the negative is the closest in-batch job with d(a,p) < d(a,n) < d(a,p) + margin
    (as TF-Addons' `triplet_semihard_loss`); when there is none, the hardest (closest) negative
    (TF-Addons takes the farthest).
    """
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


def matryoshka_prefix(x: jax.Array, dims: int) -> jax.Array:
    """The first `dims` components of the rows of `x` `[B, D]`, L2-normalised again (fp32)."""
    head = x[..., :dims].astype(jnp.float32)
    return head / jnp.maximum(jnp.linalg.norm(head, axis=-1, keepdims=True), 1e-12)


def check_matryoshka(dims: list[int], width: int) -> None:
    """A one-line `StarError` when a Matryoshka width is not below the towers' embedding width."""
    wide = [d for d in dims if d >= width]
    if wide:
        raise StarError(f"llm_train.matryoshka_dims: {wide[0]} is not below the towers' embedding "
                        f"width {width}")


def biencoder_losses(
    member: jax.Array, job: jax.Array, head: dict[str, jax.Array], batch: dict[str, Any], cfg: LLMTrainConfig
) -> dict[str, jax.Array]:
    """Every loss term and their weighted sum `loss`, from the two towers' embeddings of a batch.

    `batch`: label int32 [B], valid bool [B], member_key / job_key int32 [B, 2] (ids for the
    in-batch exclusions). With `cfg.matryoshka_dims`, the terms keep their full-width values,
    `loss_full` and `loss_d<D>` are each width's weighted sum and `loss` is their mean.
    """
    out = _weighted_terms(member, job, head, batch, cfg)
    if not cfg.matryoshka_dims:
        return out
    widths = {"loss_full": out["loss"]}
    for d in cfg.matryoshka_dims:
        # One BCE head for every width: it only calibrates cosines, which share a range.
        terms = _weighted_terms(matryoshka_prefix(member, d), matryoshka_prefix(job, d), head, batch, cfg)
        widths[f"loss_d{d}"] = terms["loss"]
    return {**out, **widths, "loss": sum(widths.values()) / len(widths)}


def _weighted_terms(
    member: jax.Array, job: jax.Array, head: dict[str, jax.Array], batch: dict[str, Any], cfg: LLMTrainConfig
) -> dict[str, jax.Array]:
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
