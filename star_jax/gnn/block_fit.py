"""The LLM block's member and job maps fitted on labelled pairs (`gnn.llm_block_fit: labelled`).

A logistic regression on the bilinear form `p_m^T W p_j + b` of the two stored vectors'
coordinates `p` on their top principal directions, fitted by L-BFGS on the labelled train pairs
(applies against the jobs the member was shown and passed over), its L2 penalty picked on the val
pairs' AUC. W's top singular pairs become the block's two maps, so the block's cosine ranks a pair
as the fitted form does, up to the two maps' norms (docs/architecture.md decision 26).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.gnn.features import StandardizedFeatures
from star_jax.gnn.model import LLM_TYPES
from star_jax.metrics import auc

log = logging.getLogger(__name__)

# The principal coordinates the form is fitted in: W has FIT_DIMS^2 weights, not D^2 (D = 4096 at 7B).
FIT_DIMS = 128
# Labelled pairs a block fit reads per split: a seeded subsample above this, as the signal baselines
# take (the medium scale has 11.7M train and millions of val pairs).
MAX_FIT_PAIRS = 200_000


class PairVectors(NamedTuple):
    """Labelled member-job pairs as the two sides' vectors."""

    member: np.ndarray  # f32[P, R] the member's vector
    job: np.ndarray  # f32[P, R] the job's vector
    labels: np.ndarray  # i8[P] 1 = applied


class Bilinear(NamedTuple):
    weight: np.ndarray  # f32[R, R] score = member @ weight @ job (+ a bias, which ranks nothing)
    l2: float  # the penalty it was fitted with
    val_auc: float


def _objective(params: tuple[jax.Array, jax.Array], *, m: jax.Array, j: jax.Array, y: jax.Array,
               l2: jax.Array) -> jax.Array:
    w, b = params
    logits = jnp.einsum("pi,ij,pj->p", m, w, j) + b
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y)) + l2 * jnp.sum(w * w)


_SOLVER = optax.lbfgs()


@functools.partial(jax.jit, static_argnames="objective")
def _lbfgs_step(objective: Callable, params, state, data: dict[str, jax.Array]):
    # Data (the penalty included) are arguments, not constants, so every penalty runs one compile.
    value, grad = optax.value_and_grad_from_state(objective)(params, state=state, **data)
    updates, state = _SOLVER.update(grad, state, params, value=value, grad=grad, value_fn=objective, **data)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad)


def lbfgs(objective: Callable, params: Any, data: dict[str, jax.Array], iterations: int = 300) -> Any:
    """`params` after L-BFGS on `objective(params, **data)`: `iterations` steps at most, fewer once
    the gradient's norm falls under 1e-6."""
    state = _SOLVER.init(params)
    for _ in range(iterations):
        params, state, grad_norm = _lbfgs_step(objective, params, state, data)
        if float(grad_norm) < 1e-6:
            break
    return params


def fit_bilinear(train: PairVectors, l2: float, iterations: int = 300) -> tuple[np.ndarray, float]:
    """(W f32[R, R], b): argmin of mean BCE(member @ W @ job + b, label) + l2 * |W|^2, by L-BFGS.

    The same objective as scikit-learn's `LogisticRegression(C)` on the flattened outer products,
    with l2 = 1 / (2 C P); the outer products are never materialised (R^2 features per pair)."""
    data = {"m": jnp.asarray(train.member, jnp.float32), "j": jnp.asarray(train.job, jnp.float32),
            "y": jnp.asarray(train.labels, jnp.float32), "l2": jnp.asarray(l2, jnp.float32)}
    r = data["m"].shape[1]
    params = lbfgs(_objective, (jnp.zeros((r, r), jnp.float32), jnp.zeros((), jnp.float32)), data, iterations)
    return np.asarray(params[0]), float(params[1])


def select_bilinear(train: PairVectors, val: PairVectors, l2_grid: list[float]) -> Bilinear:
    """The fit of `l2_grid` whose scores give the val pairs the best AUC."""
    best = None
    for l2 in sorted(l2_grid):
        w, _ = fit_bilinear(train, l2)
        val_auc = auc(val.labels, np.einsum("pi,ij,pj->p", val.member, w, val.job))
        log.info(f"train-gnn: LLM block fit, l2 {l2:g}: val AUC {val_auc:.4f}")
        if best is None or val_auc > best.val_auc:
            best = Bilinear(w, l2, val_auc)
    return best


def factor(weight: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), each f32[R, k]: W's top k singular pairs split evenly, A @ B.T = W's best rank-k
    approximation, so that (p_m A) . (p_j B) is the rank-k bilinear score (k > R: zero columns)."""
    u, s, vt = np.linalg.svd(np.asarray(weight, np.float64))
    root = np.sqrt(s[:k])
    pad = ((0, 0), (0, k - root.shape[0]))  # W narrower than k (a compact version): zero columns
    return (np.pad(u[:, :k] * root, pad).astype(np.float32), np.pad(vt[:k].T * root, pad).astype(np.float32))


def pair_vectors(features: StandardizedFeatures, member_ids: np.ndarray, job_ids: np.ndarray,
                 labels: np.ndarray, kernel: np.ndarray, shift: np.ndarray) -> PairVectors:
    """Pairs of stored ids as their rows through `x @ kernel + shift` (x: the standardised rows),
    each distinct id read once."""
    sides = []
    for t, ids in zip(LLM_TYPES, (member_ids, job_ids)):
        unique, inverse = np.unique(ids, return_inverse=True)
        sides.append((features.lookup(t, unique) @ kernel + shift)[inverse])
    return PairVectors(*sides, np.asarray(labels))


def labelled_maps(features: StandardizedFeatures, ids: dict[str, np.ndarray], train: tuple, val: tuple,
                  k: int, l2_grid: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(kernel f32[2, D, k], shift f32[2, k]): the member's and the job's block map (LLM_TYPES
    order) of the standardised rows, from the bilinear form fitted on `train` and picked on `val`,
    each (member ids, job ids, labels) of labelled pairs; `ids`: every member and job id, for the
    principal directions."""
    dim = features.mean[LLM_TYPES[0]].shape[0]
    kernel, shift = features.principal_map(ids, min(dim, max(k, FIT_DIMS)))
    fit = select_bilinear(pair_vectors(features, *train, kernel, shift),
                          pair_vectors(features, *val, kernel, shift), l2_grid)
    log.info(f"train-gnn: LLM block fitted on {len(train[0]):,} labelled train pairs: l2 {fit.l2:g}, "
             f"val AUC {fit.val_auc:.4f}")
    a, b = factor(fit.weight, k)
    return np.stack([kernel @ a, kernel @ b]), np.stack([shift @ a, shift @ b])
