"""The attribute block's member and job tables fitted on labelled pairs (`gnn.attribute_block`).

A member's or job's attributes are one bag over a column space both sides share: its skill, title
and company neighbours (hashed ids, as the GNN's block reads them from a batch), the codes of the
categorical columns both types have, and a constant. A logistic regression on the bilinear form
`x_m^T W x_j + b` of two bags is fitted by L-BFGS on the labelled train pairs (applies against the
jobs the member was shown and passed over), its L2 penalty picked on the val pairs' AUC; W's top k
singular pairs become the block's fixed member and job tables (docs/architecture.md decision 27).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.gnn.block_fit import factor, lbfgs
from star_jax.gnn.model import LLM_TYPES, attribute_columns, attribute_table_rows, attribute_table_size
from star_jax.graph.hetero import HeteroGraph
from star_jax.metrics import auc

log = logging.getLogger(__name__)

MAX_FIT_COLUMNS = 4096  # W has at most this squared weights: the most frequent attributes above it


class Bags(NamedTuple):
    """The attribute bags of one side's nodes, as (node, column) entries of a sparse 0/1 matrix."""

    node: np.ndarray  # i32[E] the node's row in the side's table
    column: np.ndarray  # i32[E] the attribute column (`AttributeSpace` offsets)
    num_nodes: int


class AttributeSpace(NamedTuple):
    """The shared column space: one range of rows per table of the block, in `names` order."""

    names: tuple[str, ...]  # the block's table names (`attribute_columns`)
    sizes: tuple[int, ...]  # rows of each table

    def offset(self, name: str) -> int:
        i = self.names.index(name)
        return int(sum(self.sizes[:i]))

    @property
    def width(self) -> int:
        return int(sum(self.sizes))


def attribute_space(graph: HeteroGraph, buckets: int, cat_buckets: int, use_cat: bool) -> AttributeSpace:
    names = attribute_columns(*_sources(graph, use_cat))
    return AttributeSpace(names, tuple(attribute_table_size(n, buckets, cat_buckets) for n in names))


def _sources(graph: HeteroGraph, use_cat: bool) -> tuple[list[str], list[str]]:
    """(attribute node types a member or job links to, categorical columns both have: none
    without `use_cat`, as the model reads them only then)."""
    types = sorted({dst for src, dst in graph.relations.values()
                    if src in LLM_TYPES and dst not in LLM_TYPES})
    cats = [set(graph.schema.node_types[t].categorical) for t in LLM_TYPES]
    return types, sorted(cats[0] & cats[1]) if use_cat else []


def bags(graph: HeteroGraph, side: str, space: AttributeSpace, buckets: int, cat_buckets: int,
         use_cat: bool) -> Bags:
    """Every `side` node's bag: its whole neighbourhood of each attribute type, not a sample."""
    types, cats = _sources(graph, use_cat)
    n = graph.num_nodes(side)
    nodes, columns = [np.arange(n)], [np.full(n, space.offset("bias"))]
    for name, (src, dst) in sorted(graph.relations.items()):
        if src != side or dst not in types:
            continue
        csr = graph.csr[name]
        nodes.append(np.repeat(np.arange(n), np.diff(csr.indptr)))
        ids = np.asarray(graph.ids[dst])[np.asarray(csr.indices)]
        columns.append(space.offset(dst) + np.asarray(attribute_table_rows(dst, jnp.asarray(ids), buckets,
                                                                           cat_buckets)))
    names = list(graph.schema.node_types[side].categorical)
    for c in cats:
        codes = graph.cat[side][:, names.index(c)]
        has = codes > 0  # code 0: missing, no entry
        nodes.append(np.flatnonzero(has))
        rows = attribute_table_rows(f"cat_{c}", jnp.asarray(codes[has]), buckets, cat_buckets)
        columns.append(space.offset(f"cat_{c}") + np.asarray(rows))
    return Bags(np.concatenate(nodes).astype(np.int32), np.concatenate(columns).astype(np.int32), n)


class Crosses(NamedTuple):
    """The (member column, job column) entries of labelled pairs' outer products."""

    pair: np.ndarray  # i32[E] the pair
    member: np.ndarray  # i32[E] a column of the pair's member's bag
    job: np.ndarray  # i32[E] a column of the pair's job's bag
    num_pairs: int


def _by_node(b: Bags) -> tuple[np.ndarray, np.ndarray]:
    """(indptr i64[num_nodes + 1], columns in node order) of a bag."""
    order = np.argsort(b.node, kind="stable")
    return np.searchsorted(b.node[order], np.arange(b.num_nodes + 1)), b.column[order]


def _ranges(indptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner i64[E], position i64[E]): entry e belongs to nodes[owner[e]] and sits at position[e]."""
    sizes = indptr[nodes + 1] - indptr[nodes]
    owner = np.repeat(np.arange(len(nodes)), sizes)
    return owner, indptr[nodes][owner] + np.arange(owner.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def crosses(member: Bags, job: Bags, m: np.ndarray, j: np.ndarray) -> Crosses:
    """Every pair (m[p], j[p])'s outer-product entries: its member's columns times its job's."""
    (m_ptr, m_col), (j_ptr, j_col) = _by_node(member), _by_node(job)
    pair, at = _ranges(m_ptr, np.asarray(m))  # the member's entries of each pair
    owner, j_at = _ranges(j_ptr, np.asarray(j)[pair])  # times the pair's job's entries
    return Crosses(pair[owner].astype(np.int32), m_col[at][owner].astype(np.int32),
                   j_col[j_at].astype(np.int32), len(m))


def form_scores(weight: jax.Array, c: Crosses) -> jax.Array:
    """f32[num_pairs]: x_m^T W x_j of each pair, from its outer-product entries."""
    return jax.ops.segment_sum(weight[c.member, c.job], c.pair, c.num_pairs)


def _objective(params: tuple[jax.Array, jax.Array], *, pair: jax.Array, member: jax.Array, job: jax.Array,
               y: jax.Array, l2: jax.Array) -> jax.Array:
    w, b = params
    logits = form_scores(w, Crosses(pair, member, job, y.shape[0])) + b
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y)) + l2 * jnp.sum(w * w)


def fit(c: Crosses, labels: np.ndarray, width: int, l2_grid: list[float],
        iterations: int = 300) -> list[tuple[np.ndarray, float]]:
    """(W f32[width, width], b) for each penalty l2 of `l2_grid`: argmin of mean BCE(x_m^T W x_j + b,
    label) + l2 * |W|^2 over the pairs of `c` (`crosses`), by L-BFGS: scikit-learn's
    `LogisticRegression(C)` on the flattened outer products of the bags, with l2 = 1 / (2 C P)."""
    # The entries are arguments, not constants a closure would bake into the program (a copy of every
    # entry per compile), and one function serves every penalty: one compile.
    data = {"pair": jnp.asarray(c.pair), "member": jnp.asarray(c.member), "job": jnp.asarray(c.job),
            "y": jnp.asarray(labels, jnp.float32)}
    out = []
    for l2 in l2_grid:
        params = (jnp.zeros((width, width), jnp.float32), jnp.zeros((), jnp.float32))
        w, b = lbfgs(_objective, params, {**data, "l2": jnp.asarray(l2, jnp.float32)}, iterations)
        out.append((np.asarray(w), float(b)))
    return out


def _compact(member: Bags, job: Bags) -> tuple[np.ndarray, Bags, Bags]:
    """(used i64[V]: the columns some bag holds, at most MAX_FIT_COLUMNS of the most frequent; the
    two bags renumbered into them, entries of dropped columns removed)."""
    counts = np.bincount(np.concatenate([member.column, job.column]))
    used = np.flatnonzero(counts)
    if used.size > MAX_FIT_COLUMNS:
        log.warning(f"train-gnn: attribute block: {used.size:,} attributes; the form is fitted over the "
                    f"{MAX_FIT_COLUMNS:,} most frequent")
        used = np.sort(used[np.argsort(-counts[used], kind="stable")[:MAX_FIT_COLUMNS]])
    new = np.full(counts.size, -1, np.int64)
    new[used] = np.arange(used.size)

    def renumber(b: Bags) -> Bags:
        keep = new[b.column] >= 0
        return Bags(b.node[keep], new[b.column[keep]].astype(np.int32), b.num_nodes)

    return used, renumber(member), renumber(job)


def fitted_tables(graph: HeteroGraph, train: tuple, val: tuple, k: int, buckets: int, cat_buckets: int,
                  use_cat: bool, l2_grid: list[float]) -> dict[str, np.ndarray]:
    """{table name: f32[2, rows, k]} (member's then job's): the block's tables, W's top k singular
    pairs split evenly (`block_fit.factor`), for the form fitted on `train` and picked on `val`,
    each (member rows, job rows, labels) of labelled pairs."""
    space = attribute_space(graph, buckets, cat_buckets, use_cat)
    used, member, job = _compact(*(bags(graph, t, space, buckets, cat_buckets, use_cat) for t in LLM_TYPES))
    train_crosses, val_crosses = crosses(member, job, *train[:2]), crosses(member, job, *val[:2])
    best = None
    l2_grid = sorted(l2_grid)
    for l2, (w, _) in zip(l2_grid, fit(train_crosses, train[2], used.size, l2_grid)):
        val_auc = auc(np.asarray(val[2]), np.asarray(form_scores(jnp.asarray(w), val_crosses)))
        log.info(f"train-gnn: attribute block fit, l2 {l2:g}: val AUC {val_auc:.4f}")
        if best is None or val_auc > best[0]:
            best = (val_auc, l2, w)
    val_auc, l2, w = best
    log.info(f"train-gnn: attribute block fitted on {len(train[0]):,} labelled train pairs over "
             f"{used.size:,} attributes: l2 {l2:g}, val AUC {val_auc:.4f}")
    factors = np.zeros((2, space.width, k), np.float32)
    factors[0, used], factors[1, used] = factor(w, k)
    return {name: factors[:, space.offset(name): space.offset(name) + size]
            for name, size in zip(space.names, space.sizes)}
