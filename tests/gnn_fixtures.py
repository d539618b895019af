"""Hand-built `HeteroBatch`es that follow star_jax/graph/batch.py to the letter.

A `Piece` lists real nodes (by id, in slot order within each type block), edges by block-local
slots, and pairs/negatives by block-local job and member slots. `make_batch` lays one piece out
in a `Layout`, filling every remaining slot with padding: padding nodes have id -1, zero
features and mask False; padded edges run from the sender block's padding node to the receiver
block's padding node; padded pairs point at the padding member and job and have pair_mask False.
Features are a function of (type, node id), so a node looks the same in every batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import jraph
import numpy as np

from star_jax.graph.batch import HeteroBatch, Layout

LLM_DIM = 8
CAT_COLUMNS = {"member": 2, "job": 3, "company": 1}  # other types: no categorical columns

TYPES = ("member", "job", "company", "skill")
RELATIONS = (  # message direction: sender -> receiver
    ("applied", "member", "job"),
    ("applied_rev", "job", "member"),
    ("posted_by", "company", "job"),
    ("works_at", "member", "company"),
    ("member_skill_rev", "skill", "member"),
    ("job_skill_rev", "skill", "job"),
)  # nothing reaches skill: it only sends
PIECE_SIZE = {"member": 3, "job": 3, "company": 2, "skill": 3}  # real nodes per pair's subgraph
EDGES_PER_RELATION = 4  # per pair's subgraph


@dataclass
class Piece:
    nodes: dict[str, list[int]] = field(default_factory=dict)  # type -> node ids in slot order
    edges: dict[str, list[tuple[int, int, bool]]] = field(default_factory=dict)  # (send, recv, valid)
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (member slot, job slot, label)
    negatives: list[int] = field(default_factory=list)  # job slots


def merge(pieces: list[Piece], relations=RELATIONS) -> Piece:
    """Concatenate pieces block by block, shifting their local slots."""
    out = Piece()
    for p in pieces:
        offset = {t: len(out.nodes.get(t, [])) for t in set(out.nodes) | set(p.nodes)}
        for t, ids in p.nodes.items():
            out.nodes.setdefault(t, []).extend(ids)
        for name, src, dst in relations:
            out.edges.setdefault(name, []).extend(
                (s + offset.get(src, 0), r + offset.get(dst, 0), v) for s, r, v in p.edges.get(name, [])
            )
        out.pairs += [(m + offset.get("member", 0), j + offset.get("job", 0), y) for m, j, y in p.pairs]
        out.negatives += [j + offset.get("job", 0) for j in p.negatives]
    return out


def features(node_type: str, node_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(llm f32[LLM_DIM], cat int32[C]) of one real node, a pure function of its type and id."""
    rng = np.random.default_rng(zlib.crc32(f"{node_type}:{node_id}".encode()))
    llm = rng.normal(size=LLM_DIM).astype(np.float32)
    cat = rng.integers(0, 5, CAT_COLUMNS.get(node_type, 0)).astype(np.int32)  # 0 = missing
    return llm, cat


def make_batch(layout: Layout, piece: Piece) -> HeteroBatch:
    n, e = layout.num_nodes, layout.num_edges
    node_mask = np.zeros(n, bool)
    node_ids, llm, cat = {}, {}, {}
    for t, cap in zip(layout.node_types, layout.node_capacity):
        ids = piece.nodes.get(t, [])
        assert len(ids) < cap, f"{t}: {len(ids)} real nodes do not fit {cap} slots (one is padding)"
        node_ids[t] = np.full(cap, -1, np.int64)
        node_ids[t][: len(ids)] = ids
        node_mask[layout.node_slice(t).start + np.arange(len(ids))] = True
        cat[t] = np.zeros((cap, CAT_COLUMNS.get(t, 0)), np.int32)
        if t in ("member", "job"):
            llm[t] = np.zeros((cap, LLM_DIM), np.float32)
        for slot, node_id in enumerate(ids):
            f_llm, f_cat = features(t, node_id)
            cat[t][slot] = f_cat
            if t in llm:
                llm[t][slot] = f_llm

    senders = np.zeros(e, np.int32)
    receivers = np.zeros(e, np.int32)
    edge_mask = np.zeros(e, bool)
    for name, src, dst in layout.relations:
        es = layout.edge_slice(name)
        senders[es] = layout.pad_node(src)
        receivers[es] = layout.pad_node(dst)
        edges = piece.edges.get(name, [])
        assert len(edges) <= es.stop - es.start, f"{name}: too many edges"
        for k, (s, r, valid) in enumerate(edges):
            assert s < len(piece.nodes[src]) and r < len(piece.nodes[dst])
            senders[es.start + k] = layout.node_slice(src).start + s
            receivers[es.start + k] = layout.node_slice(dst).start + r
            edge_mask[es.start + k] = valid

    b, k = layout.num_pairs, layout.num_negatives
    m0, j0 = layout.node_slice("member").start, layout.node_slice("job").start
    member_seeds = np.full(b, layout.pad_node("member"), np.int32)
    job_seeds = np.full(b, layout.pad_node("job"), np.int32)
    pair_mask = np.zeros(b, bool)
    labels = np.zeros(b, np.float32)
    for i, (m, j, y) in enumerate(piece.pairs):
        member_seeds[i], job_seeds[i], pair_mask[i], labels[i] = m0 + m, j0 + j, True, y
    neg_jobs = np.full(k, layout.pad_node("job"), np.int32)
    neg_jobs[: len(piece.negatives)] = j0 + np.asarray(piece.negatives, np.int32)

    graph = jraph.GraphsTuple(
        nodes={"mask": node_mask, "known": node_mask.copy()},  # every fixture node warm
        edges={"mask": edge_mask, "weight": np.ones(e, np.float32)},
        senders=senders,
        receivers=receivers,
        globals=None,
        n_node=np.array([n], np.int32),
        n_edge=np.array([e], np.int32),
    )
    return HeteroBatch(graph, node_ids, llm, cat, member_seeds, job_seeds, neg_jobs, pair_mask, labels)


def pair_piece(rng: np.random.Generator, pair: int, relations=RELATIONS, p_valid: float = 0.8) -> Piece:
    """One positive pair's subgraph: its own nodes (ids unique to `pair`) and random typed edges."""
    nodes = {t: [1000 * pair + i for i in range(c)] for t, c in PIECE_SIZE.items()}
    edges = {
        name: [
            (
                int(rng.integers(PIECE_SIZE[src])),
                int(rng.integers(PIECE_SIZE[dst])),
                bool(rng.random() < p_valid),
            )
            for _ in range(EDGES_PER_RELATION)
        ]
        for name, src, dst in relations
    }
    return Piece(nodes, edges, pairs=[(0, 0, 1.0)])


def negatives_piece(num: int) -> Piece:
    """`num` shared negative jobs, each posted by one company of their own."""
    return Piece(
        nodes={"job": [50_000 + i for i in range(num)], "company": [50_000 + i for i in range(num)]},
        edges={"posted_by": [(i, i, True) for i in range(num)]},
        negatives=list(range(num)),
    )


def make_layout(num_pairs: int = 4, num_negatives: int = 3) -> Layout:
    """Capacities that hold `num_pairs` pair pieces plus the negatives piece, plus padding."""
    extra = {"job": num_negatives, "company": num_negatives}
    caps = tuple(num_pairs * PIECE_SIZE[t] + extra.get(t, 0) + 1 for t in TYPES)
    edge_caps = tuple(
        num_pairs * EDGES_PER_RELATION + (num_negatives if name == "posted_by" else 0) + 2
        for name, _, _ in RELATIONS
    )
    return Layout(TYPES, caps, RELATIONS, edge_caps, num_pairs, num_negatives)


def full_batch(layout: Layout, seed: int = 0) -> tuple[HeteroBatch, list[Piece]]:
    rng = np.random.default_rng(seed)
    pieces = [pair_piece(rng, p) for p in range(layout.num_pairs)]
    return make_batch(layout, merge([*pieces, negatives_piece(layout.num_negatives)])), pieces
