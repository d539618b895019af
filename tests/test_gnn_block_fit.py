"""The LLM block fitted on labelled pairs (`gnn.llm_block_fit: labelled`): the bilinear logistic
regression against scikit-learn's on the flattened outer products, and the maps' scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from test_gnn_features import Rows, anisotropic_rows

from star_jax.gnn.block_fit import PairVectors, factor, fit_bilinear, labelled_maps, select_bilinear
from star_jax.gnn.features import StandardizedFeatures


def planted_pairs(p: int, r: int, seed: int,
                  weight: np.ndarray | None = None) -> tuple[PairVectors, np.ndarray]:
    """Pairs of random vectors labelled by a planted bilinear form (returned with them)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(r, r)) if weight is None else weight
    m, j = rng.normal(size=(p, r)).astype(np.float32), rng.normal(size=(p, r)).astype(np.float32)
    logits = np.einsum("pi,ij,pj->p", m, w, j) - 1.0
    labels = (rng.random(p) < 1 / (1 + np.exp(-logits))).astype(np.int8)
    return PairVectors(m, j, labels), w


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_the_bilinear_fit_is_scikit_learns_logistic_regression_on_the_outer_products(c):
    pairs, _ = planted_pairs(2000, 5, seed=0)
    p, r = pairs.member.shape
    outer = np.einsum("pi,pj->pij", pairs.member, pairs.job).reshape(p, r * r)
    want = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(outer, pairs.labels)
    w, b = fit_bilinear(pairs, l2=1 / (2 * c * p))  # sklearn: |w|^2 / 2 + C * sum of losses
    np.testing.assert_allclose(w, want.coef_.reshape(r, r), atol=2e-4 * np.abs(want.coef_).max())
    assert b == pytest.approx(want.intercept_[0], abs=1e-3)


def test_the_penalty_is_picked_on_val_and_the_factors_keep_the_form():
    train, w_true = planted_pairs(1500, 6, seed=1)
    val, _ = planted_pairs(1500, 6, seed=2, weight=w_true)
    fit = select_bilinear(train, val, [1e-4, 1.0])
    assert fit.l2 == 1e-4  # a penalty of 1 shrinks the form to nearly nothing
    assert fit.val_auc > 0.8
    a, b = factor(fit.weight, 6)  # full rank: (p_m A) . (p_j B) is the form itself
    np.testing.assert_allclose(a @ b.T, fit.weight, atol=1e-4)
    a2, b2 = factor(fit.weight, 2)
    u, s, vt = np.linalg.svd(fit.weight)
    np.testing.assert_allclose(a2 @ b2.T, (u[:, :2] * s[:2]) @ vt[:2], atol=1e-4)  # the best rank-2 one


def test_the_block_maps_rank_held_out_pairs_by_the_planted_form():
    """Stored tower-like vectors, labels from a bilinear form that is not their cosine: the two
    block maps' cosine ranks unseen pairs far better than the towers' own cosine does."""
    d = 10
    rows = {"member": anisotropic_rows(400, d, 4), "job": anisotropic_rows(300, d, 5)}
    ids = {t: np.arange(len(r)) for t, r in rows.items()}
    features = StandardizedFeatures.fit(Rows(rows), ids)
    rng = np.random.default_rng(6)
    w = rng.normal(size=(d, d)) * 20

    def split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, j = rng.integers(0, 400, n), rng.integers(0, 300, n)
        logits = np.einsum("pi,ij,pj->p", rows["member"][m], w, rows["job"][j])
        return m, j, (rng.random(n) < 1 / (1 + np.exp(-(logits - np.median(logits))))).astype(np.int8)

    train, val, test = split(4000), split(2000), split(2000)
    kernel, shift = labelled_maps(features, ids, train, val, k=d, l2_grid=[1e-5, 1e-3])
    assert kernel.shape == (2, d, d) and shift.shape == (2, d)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    m, j, y = test
    block = [unit(features.lookup(t, i) @ kernel[k] + shift[k])
             for k, (t, i) in enumerate((("member", m), ("job", j)))]
    towers = np.sum(rows["member"][m] * rows["job"][j], axis=1)
    planted = np.einsum("pi,ij,pj->p", rows["member"][m], w, rows["job"][j])
    block_auc = roc_auc_score(y, np.sum(block[0] * block[1], axis=1))
    assert block_auc > roc_auc_score(y, towers) + 0.1
    assert block_auc > roc_auc_score(y, planted) - 0.05  # close to the form that drew the labels


@pytest.mark.parametrize("fit", ["principal", "labelled"])
def test_vectors_narrower_than_the_block_get_zero_columns(fit):
    """A compact store version (D = 6) under a 10-wide block: the maps keep their [.., D, block]
    shape, the extra columns are zero, and the block's scores are those of the D-wide maps."""
    d, k = 6, 10
    rows = {"member": anisotropic_rows(300, d, 7), "job": anisotropic_rows(200, d, 8)}
    ids = {t: np.arange(len(r)) for t, r in rows.items()}
    features = StandardizedFeatures.fit(Rows(rows), ids)
    if fit == "principal":
        wide, narrow = features.principal_map(ids, k), features.principal_map(ids, d)
        assert wide[0].shape == (d, k) and wide[1].shape == (k,)
        np.testing.assert_array_equal(wide[0][:, d:], 0)
        np.testing.assert_allclose(wide[0][:, :d], narrow[0], atol=1e-6)
        return
    rng = np.random.default_rng(9)
    pairs = tuple((rng.integers(0, 300, 800), rng.integers(0, 200, 800),
                   rng.integers(0, 2, 800).astype(np.int8)) for _ in range(2))
    kernel, shift = labelled_maps(features, ids, *pairs, k=k, l2_grid=[1e-3])
    assert kernel.shape == (2, d, k) and shift.shape == (2, k)
    np.testing.assert_array_equal(kernel[:, :, d:], 0)
    np.testing.assert_array_equal(shift[:, d:], 0)
