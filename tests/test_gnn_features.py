"""The GNN's LLM features: the standardisation, and the LLM block's map from the stored vectors'
principal directions, against scikit-learn's PCA."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from star_jax.gnn.features import StandardizedFeatures


class Rows:
    """A FeatureSource over in-memory rows: row i of a node type is its id i."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self.rows = rows

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        return self.rows[node_type][ids]


def anisotropic_rows(n: int, d: int, seed: int) -> np.ndarray:
    """Tower-like vectors: a shared direction, uneven spreads per dimension, unit rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d) + 4.0 * rng.normal(size=d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_block_map_projects_the_stored_vectors_on_their_principal_directions():
    rows = {"member": anisotropic_rows(300, 12, 0), "job": anisotropic_rows(200, 12, 1)}
    ids = {t: np.arange(len(r)) for t, r in rows.items()}
    features = StandardizedFeatures.fit(Rows(rows), ids)
    kernel, shift = features.principal_map(ids, 5)
    assert kernel.shape == (12, 5) and shift.shape == (5,)

    stored = np.concatenate([rows["member"], rows["job"]]).astype(np.float64)
    components = PCA(n_components=5).fit(stored).components_  # [5, 12], centred on the same rows
    for t, r in rows.items():
        got = features.lookup(t, ids[t]).astype(np.float64) @ kernel + shift
        want = r.astype(np.float64) @ components.T  # the stored (not standardised) vectors projected
        signs = np.sign(np.sum(got * want, axis=0))  # each direction is defined up to its sign
        np.testing.assert_allclose(got, want * signs, rtol=1e-4, atol=1e-4)
    # The sign is fixed (the largest entry of each direction positive), so a refit gives the same map.
    again = StandardizedFeatures.fit(Rows(rows), ids).principal_map(ids, 5)
    np.testing.assert_array_equal(again[0], kernel)


def test_the_block_keeps_the_towers_cosine_where_the_standardised_rows_do_not():
    """All 12 directions: the block's cosine is the stored vectors' cosine exactly; the cosine of the
    standardised rows (what the block read before) is another one."""
    rows = {"member": anisotropic_rows(300, 12, 2), "job": anisotropic_rows(200, 12, 3)}
    ids = {t: np.arange(len(r)) for t, r in rows.items()}
    features = StandardizedFeatures.fit(Rows(rows), ids)
    kernel, shift = features.principal_map(ids, 12)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    m, j = (features.lookup(t, ids[t]).astype(np.float64) for t in ("member", "job"))
    block = unit(m @ kernel + shift) @ unit(j @ kernel + shift).T
    towers = unit(rows["member"].astype(np.float64)) @ unit(rows["job"].astype(np.float64)).T
    np.testing.assert_allclose(block, towers, atol=1e-4)
    assert np.abs(unit(m) @ unit(j).T - towers).max() > 0.1
