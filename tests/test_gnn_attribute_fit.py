"""The attribute block's tables fitted on labelled pairs (`gnn.attribute_block`): the bags read from
the graph against the fixture's own edge lists, and the fitted form against scikit-learn's logistic
regression on the flattened outer products of the same bags, and the tables' shapes by name."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from graph_fixtures import EDGES, graph_env
from sklearn.linear_model import LogisticRegression

from star_jax.gnn.attribute_fit import Bags, attribute_space, bags, crosses, fit, fitted_tables, form_scores
from star_jax.gnn.model import cat_rows, hash_ids

BUCKETS, CAT_BUCKETS = 64, 16


def test_a_bag_is_the_whole_neighbourhood_and_the_shared_codes(tmp_path):
    env = graph_env(tmp_path, llm_dim=4)
    g = env.graph
    space = attribute_space(g, BUCKETS, CAT_BUCKETS, use_cat=True)
    assert space.names == ("company", "skill", "title", "cat_industry", "cat_location", "cat_seniority",
                           "bias")
    for side in ("member", "job"):
        got = bags(g, side, space, BUCKETS, CAT_BUCKETS, use_cat=True)
        columns = [set() for _ in range(g.num_nodes(side))]
        for node, column in zip(got.node, got.column):
            columns[node].add(int(column))
        cats = list(g.schema.node_types[side].categorical)
        for row, node_id in enumerate(np.asarray(g.ids[side])):
            want = {space.offset("bias")}
            for attr in ("skill", "title", "company"):  # from the fixture's tables, not the CSR
                ids = [e[1] for e in EDGES[f"{side}_{attr}"] if e[0] == node_id]
                want |= {space.offset(attr) + int(hash_ids(jnp.asarray([i]), BUCKETS)[0]) for i in ids}
            for c in ("industry", "location", "seniority"):
                code = int(g.cat[side][row, cats.index(c)])
                if code > 0:
                    want.add(space.offset(f"cat_{c}") + int(cat_rows(jnp.asarray(code), CAT_BUCKETS)))
            assert columns[row] == want, (side, node_id)
    without = attribute_space(g, BUCKETS, CAT_BUCKETS, use_cat=False)
    assert without.names == ("company", "skill", "title", "bias")


def planted(seed: int, n_m: int = 300, n_j: int = 200, width: int = 24, per_node: int = 4):
    """Random bags and a planted bilinear form over them; pairs labelled by it."""
    rng = np.random.default_rng(seed)

    def side(n: int) -> tuple[Bags, np.ndarray]:
        # Bags of 1..per_node columns: with equal sizes the outer products would sum to a constant.
        cols = [rng.choice(width, rng.integers(1, per_node + 1), replace=False) for _ in range(n)]
        dense = np.zeros((n, width), np.float32)
        for row, c in enumerate(cols):
            dense[row, c] = 1.0
        nodes = np.repeat(np.arange(n), [len(c) for c in cols]).astype(np.int32)
        return Bags(nodes, np.concatenate(cols).astype(np.int32), n), dense

    (member, xm), (job, xj) = side(n_m), side(n_j)
    w = rng.normal(size=(width, width)) * 0.7

    def pairs(n: int):
        m, j = rng.integers(0, n_m, n), rng.integers(0, n_j, n)
        logits = np.einsum("pi,ij,pj->p", xm[m], w, xj[j])
        y = (rng.random(n) < 1 / (1 + np.exp(-(logits - np.median(logits))))).astype(np.int8)
        return m, j, y

    return member, job, xm, xj, pairs


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_the_fit_is_scikit_learns_logistic_regression_on_the_outer_products(c):
    member, job, xm, xj, pairs = planted(seed=0, width=8, per_node=3)
    m, j, y = pairs(2000)
    outer = np.einsum("pi,pj->pij", xm[m], xj[j]).reshape(len(m), -1)
    want = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(outer, y)
    # scikit-learn minimises |w|^2 / 2 + C * (the sum of the losses)
    [(w, b)] = fit(crosses(member, job, m, j), y, width=8, l2_grid=[1 / (2 * c * len(m))])
    l2 = 1 / (2 * c * len(m))

    def objective(weight: np.ndarray, bias: float) -> float:  # in float64, whatever fit computes in
        logits = outer @ weight.ravel().astype(np.float64) + bias
        penalty = l2 * np.sum(weight.astype(np.float64) ** 2)
        return float(np.mean(np.logaddexp(0, logits) - y * logits) + penalty)

    # As low as scikit-learn's optimum to float32's resolution; at C = 1 the objective is flat enough
    # that the weights agree only to about 1e-3.
    assert objective(w, b) <= objective(want.coef_.reshape(8, 8), want.intercept_[0]) + 1e-6
    np.testing.assert_allclose(w, want.coef_.reshape(8, 8), atol=1e-3 * np.abs(want.coef_).max())
    assert b == pytest.approx(want.intercept_[0], abs=1e-2)
    scores = np.asarray(form_scores(jnp.asarray(w), crosses(member, job, m, j)))
    np.testing.assert_allclose(scores, np.einsum("pi,ij,pj->p", xm[m], w, xj[j]), rtol=1e-4, atol=1e-4)


def test_the_fitted_tables_are_the_members_and_jobs_maps_by_name(tmp_path):
    env = graph_env(tmp_path, llm_dim=4)
    g = env.graph
    rows = {t: {int(i): r for r, i in enumerate(np.asarray(g.ids[t]))} for t in ("member", "job")}
    pairs = [(m, jb, 1) for m, jb in {(m, jb) for m, jb, _ in EDGES["member_applied"]}]
    pairs += [(501, 2000, 0), (17, 2005, 0), (230, 2003, 0), (42, 2004, 0), (99, 2001, 0), (8, 2003, 0)]
    m, j, y = (np.array([rows["member"][p[0]] for p in pairs]), np.array([rows["job"][p[1]] for p in pairs]),
               np.array([p[2] for p in pairs], np.int8))
    tables = fitted_tables(g, (m, j, y), (m, j, y), k=3, buckets=BUCKETS, cat_buckets=CAT_BUCKETS,
                           use_cat=True, l2_grid=[1e-3])
    space = attribute_space(g, BUCKETS, CAT_BUCKETS, use_cat=True)
    assert list(tables) == list(space.names)
    for name, size in zip(space.names, space.sizes):
        assert tables[name].shape == (2, size, 3)
