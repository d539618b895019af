"""Fixed-shape k-hop neighbour sampling for link prediction (docs/architecture.md, decisions 5, 7, 9).

A batch starts from B (member, job) pairs and K random jobs shared as negatives. Each seed grows a
tree: at every hop each frontier node draws a fixed fan-out of neighbours per relation, with
replacement, so the batch shapes follow from the config alone. A pair's own edge is never drawn in
its trees. Neighbours are drawn uniformly, by degree or by edge weight, and `FanoutSchedule` grows
the fan-outs when validation AUC plateaus (LiGNN); docs/pipeline.md, "The sampler", has the details.
A batch is a pure function of (graph, config, sampler seed, batch index). With `parts` a sampler
draws one contiguous part of each batch's seeds, exactly as the whole batch draws them (data-parallel
training: star_jax.gnn.distributed). The seed batches are star_jax.graph.seeds'.

    batches = make_dataset(NeighborSampler(graph, cfg.sampler), train_seeds(data_dir, graph, cfg.sampler, n))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

import jraph
import numpy as np

from star_jax.config import SamplerConfig
from star_jax.data.schema import Schema
from star_jax.errors import StarError
from star_jax.graph.batch import HeteroBatch, Layout
from star_jax.graph.hetero import CSR, HeteroGraph, relation_types, reverse_name
from star_jax.graph.seeds import BatchSubset, NodeSeeds, PairSeeds, SeedBatch

if TYPE_CHECKING:
    import grain



class FeatureSource(Protocol):
    """Stored LLM embeddings by node id (the EmbeddingStore has exactly this method)."""

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:  # int64 [n] -> float32 [n, D]
        ...


# -- fan-outs and the layout -------------------------------------------------------------------


def check_config(cfg: SamplerConfig, schema: Schema) -> None:
    """`cfg.check()` plus what needs the graph: one line naming the `sampler.*` relation that does
    not fit `schema`."""
    cfg.check()
    rels = relation_types(schema)
    for name in cfg.relation_fanouts:
        if name not in rels:
            raise StarError(f"sampler.relation_fanouts.{name}: no such relation; "
                            f"the graph has {', '.join(rels)}")
    if rels.get(cfg.target_relation) != ("member", "job"):
        raise StarError(f"sampler.target_relation: {cfg.target_relation!r} is not a member -> job relation "
                        f"of the schema")


def final_fanouts(cfg: SamplerConfig) -> tuple[int, ...]:
    """Per hop, the largest fan-out any relation reaches (the adaptive schedule's end point)."""
    per_rel = [cfg.fanouts, *cfg.relation_fanouts.values()]
    return tuple(max(int(v[h]) for v in per_rel) for h in range(len(cfg.fanouts)))


def relation_fanouts(
    cfg: SamplerConfig, schema: Schema, hop_fanouts: Sequence[int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Fan-out per hop of every relation (message direction): its override, or `sampler.fanouts`,
    capped per hop by `hop_fanouts` (the adaptive schedule's current value; None: no cap)."""
    if hop_fanouts is not None and len(hop_fanouts) != len(cfg.fanouts):
        raise ValueError(f"hop_fanouts {tuple(hop_fanouts)}: expected {len(cfg.fanouts)} hops")
    out = {}
    for name in relation_types(schema):
        f = cfg.relation_fanouts.get(name, cfg.fanouts)
        cap = hop_fanouts if hop_fanouts is not None else f
        out[name] = tuple(min(int(a), int(b)) for a, b in zip(f, cap))
    return out


class _Step(NamedTuple):
    hop: int
    relation: int  # index into Layout.relations
    fanout: int
    receivers: int  # frontier nodes of the receiver type at this hop


def _plan(
    schema: Schema, cfg: SamplerConfig, fanouts: dict[str, tuple[int, ...]]
) -> tuple[Layout, list[_Step]]:
    """The layout and the sampling steps in order; `sample` follows the same loop.

    A node-type block holds the hop-0 seeds (member block: the B pair members; job block: the B
    pair jobs, then the K negatives), then the nodes of hop 1 in relation order, then hop 2, ...,
    then the padding slot. Edges are blocked by relation, in message direction (sampled neighbour
    -> the node that drew it), hop by hop within a block.
    """
    types = tuple(schema.node_types)
    relations = tuple((name, s, d) for name, (s, d) in relation_types(schema).items())
    B, K = cfg.batch_size, cfg.num_random_negatives
    frontier = {t: 0 for t in types}
    frontier["member"], frontier["job"] = B, B + K
    nodes, edges, steps = dict(frontier), [0] * len(relations), []
    for hop in range(len(cfg.fanouts)):
        grown = {t: 0 for t in types}
        for i, (name, sender, receiver) in enumerate(relations):
            f, n = fanouts[name][hop], frontier[receiver]
            if f and n:
                steps.append(_Step(hop, i, f, n))
                grown[sender] += f * n
                edges[i] += f * n
        for t in types:
            nodes[t] += grown[t]
        frontier = grown
    layout = Layout(types, tuple(nodes[t] + 1 for t in types), relations, tuple(edges), B, K,
                    tuple(tuple(schema.node_types[t].categorical) for t in types))
    return layout, steps


def _child_starts(steps: list[_Step], layout: Layout) -> list[int]:
    """Per step, where the nodes it draws start in the next hop's frontier of their type."""
    out, filled = [], {}
    for s in steps:
        key = (s.hop, layout.relations[s.relation][1])
        out.append(filled.get(key, 0))
        filled[key] = out[-1] + s.receivers * s.fanout
    return out


def make_layout(schema: Schema, cfg: SamplerConfig, hop_fanouts: Sequence[int] | None = None) -> Layout:
    """The static batch shapes for `cfg` (and the schedule's current `hop_fanouts`), from config alone."""
    check_config(cfg, schema)
    return _plan(schema, cfg, relation_fanouts(cfg, schema, hop_fanouts))[0]


@dataclass(frozen=True)
class FanoutSchedule:
    """LiGNN's adaptive neighbour count: grow every hop's fan-out by `step` when AUC plateaus.

    LiGNN (arXiv 2402.11139, section 3.4) also decays the tolerance; we keep it fixed.

    Pure: `observe` returns a new schedule. Each change of `fanouts` means a new sampler and
    `Layout`, so one recompile of the train step per stage. `dataclasses.asdict` of it is the
    state to checkpoint; `FanoutSchedule(**state)` restores it.
    """

    fanouts: tuple[int, ...]  # current, per hop
    final: tuple[int, ...]
    step: int
    tolerance: float
    last_auc: float | None = None

    def __post_init__(self):  # JSON round trips turn tuples into lists
        object.__setattr__(self, "fanouts", tuple(int(f) for f in self.fanouts))
        object.__setattr__(self, "final", tuple(int(f) for f in self.final))

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> FanoutSchedule:
        final = final_fanouts(cfg)
        start = cfg.start_fanouts if cfg.adaptive else final
        return cls(tuple(min(int(s), f) for s, f in zip(start, final)), final, cfg.fanout_step,
                   cfg.plateau_tolerance)

    def observe(self, auc: float) -> FanoutSchedule:
        """The schedule after a validation AUC: grown if it is not `tolerance` above the last one."""
        plateau = self.last_auc is not None and auc <= self.last_auc + self.tolerance
        fanouts = tuple(min(f + self.step, top) for f, top in zip(self.fanouts, self.final)) if plateau \
            else self.fanouts
        return replace(self, fanouts=fanouts, last_auc=float(auc))

    @property
    def done(self) -> bool:
        return self.fanouts == self.final


# -- drawing neighbours ------------------------------------------------------------------------


def _segment_search(indices: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray,
                    side: str) -> np.ndarray:
    """Vectorised `searchsorted(indices[lo_i:hi_i], target_i, side) + lo_i` by bisection."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        val = indices[np.where(active, mid, 0)]
        right = (val <= target) if side == "right" else (val < target)
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


def sample_neighbors(
    csr: CSR,
    rows: np.ndarray,
    fanout: int,
    rng: np.random.Generator,
    *,
    cum: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    distinct: bool = False,
    u: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `fanout` neighbours of each row, with replacement (GraphSAGE's node-wise sampling,
    DeepGNN's `sample_neighbors` contract).

    distinct (uniform draws only): a row with at most `fanout` eligible neighbours takes each of
    them once instead, and its remaining slots stay empty.

    rows: int [n], -1 for an invalid parent. cum: float64 [edges + 1] prefix sum of edge masses
    (None: uniform). exclude: int [n], a neighbour row whose every copy row i must not draw (-1:
    none). u: float64 [n, fanout], the uniform draws to use instead of `rng`'s next ones. Returns
    (neighbour rows int64 [n, fanout], edge positions in `csr` int64 [n, fanout]), both -1 where
    nothing could be drawn.
    """
    n = rows.shape[0]
    none = np.full((n, fanout), -1, np.int64)
    if n == 0 or fanout == 0 or csr.indices.shape[0] == 0:
        return none, none.copy()
    ok_row = rows >= 0
    r = np.where(ok_row, rows, 0)
    start = np.asarray(csr.indptr[r])
    end = np.where(ok_row, np.asarray(csr.indptr[r + 1]), start)
    # The excluded copies: positions [ex_lo, ex_hi), one range because a CSR row is sorted by
    # neighbour. Uniform draws shift past it; weighted draws remove its mass.
    ex_lo, ex_hi = start.copy(), start.copy()
    if exclude is not None:
        m = (exclude >= 0) & (end > start)
        if m.any():
            t = exclude[m]
            ex_lo[m] = _segment_search(csr.indices, start[m], end[m], t, "left")
            ex_hi[m] = _segment_search(csr.indices, ex_lo[m], end[m], t, "right")
    copies = ex_hi - ex_lo
    left = end - start - copies  # edges still eligible
    if u is None:
        u = rng.random((n, fanout))
    if cum is None:
        # min(): u * left can round up to left when u is within an ulp of 1.
        offset = np.minimum(np.floor(u * left[:, None]).astype(np.int64), left[:, None] - 1)
        ok = (left > 0)[:, None]
        if distinct:  # every eligible neighbour once where they fit in the slots, the rest empty
            k, whole = np.arange(fanout)[None, :], (left <= fanout)[:, None]
            offset = np.where(whole, np.minimum(k, np.maximum(left - 1, 0)[:, None]), offset)
            ok = ok & (~whole | (k < left[:, None]))
        pos = start[:, None] + offset
        pos += np.where(pos >= ex_lo[:, None], copies[:, None], 0)
    else:
        base, ex_base = cum[start], cum[ex_lo]
        ex_mass = cum[ex_hi] - ex_base
        mass = cum[end] - base - ex_mass
        target = base[:, None] + u * mass[:, None]
        target += np.where(target >= ex_base[:, None], ex_mass[:, None], 0.0)
        pos = np.searchsorted(cum, target, side="right") - 1
        pos = np.clip(pos, start[:, None], np.maximum(end - 1, start)[:, None])
        # Float rounding at a range boundary must never hand back an excluded copy.
        inside = (pos >= ex_lo[:, None]) & (pos < ex_hi[:, None])
        pos = np.where(inside, np.where(ex_hi < end, ex_hi, ex_lo - 1)[:, None], pos)
        ok = ((left > 0) & (mass > 0))[:, None]
    ok = np.broadcast_to(ok, (n, fanout))
    pos = np.where(ok, pos, -1)
    return np.where(ok, csr.indices[np.maximum(pos, 0)], -1).astype(np.int64), pos


def edge_mass_cumsum(graph: HeteroGraph, relation: str, weighting: str) -> np.ndarray | None:
    """float64 [edges + 1]: prefix sum of the draw weight of each edge of CSR `relation`.

    Weighted draws pick by `searchsorted` in it; a sampler builds it once per process and relation
    (8 bytes per edge). `degree`: 1/sqrt(degree of the neighbour in that relation), which damps hub
    skills and titles; `weight`: the edge's `weight` column (1 where the table has none).
    """
    if weighting == "uniform":
        return None
    c = graph.csr[relation]
    if weighting == "degree":
        deg = np.diff(np.asarray(graph.csr[reverse_name(relation)].indptr))
        mass = 1.0 / np.sqrt(np.maximum(deg, 1))[np.asarray(c.indices)]
    elif c.weight is None:
        mass = np.ones(c.indices.shape[0])
    else:
        mass = np.asarray(c.weight, np.float64)
        if (mass < 0).any():
            name = relation if relation in graph.schema.relations else reverse_name(relation)
            raise StarError(f"{graph.schema.relations[name].table}: column 'weight': negative weights cannot "
                            "be sampled with sampler.neighbor_weighting=weight")
    out = np.zeros(mass.shape[0] + 1)
    np.cumsum(mass, out=out[1:])
    return out


# -- the sampler -------------------------------------------------------------------------------


class NeighborSampler:
    """Seeds -> fixed-shape `HeteroBatch` (graph/batch.py), by tree-shaped neighbour sampling.

    `features` supplies the LLM embeddings of the node types that have texts (member, job);
    None leaves `HeteroBatch.llm` empty. `hop_fanouts` caps every relation's fan-out per hop
    (`FanoutSchedule.fanouts`); None uses the config's.

    `parts` > 1 splits each batch's B pairs into contiguous parts of B / parts (one per device):
    `layout` is then a part's and `global_layout` the whole batch's, and `sample`, given the whole
    batch's seeds, draws part `part` (`for_part`). A part takes, row for row, the random numbers the
    whole batch gives those seeds, so the parts of a batch hold exactly its trees. Every part holds
    the K shared negatives and their trees.
    """

    def __init__(self, graph: HeteroGraph, cfg: SamplerConfig, *, features: FeatureSource | None = None,
                 hop_fanouts: Sequence[int] | None = None, parts: int = 1):
        check_config(cfg, graph.schema)
        self.graph, self.cfg, self.features = graph, cfg, features
        self.hop_fanouts = tuple(hop_fanouts) if hop_fanouts is not None else None
        self.fanouts = relation_fanouts(cfg, graph.schema, hop_fanouts)
        self.global_layout, self._global_steps = _plan(graph.schema, cfg, self.fanouts)
        if parts < 1 or cfg.batch_size % parts:
            raise StarError(f"sampler.batch_size: {cfg.batch_size} pairs do not split into {parts} equal "
                            "parts, one per device")
        self.parts, self.part = parts, 0
        self.layout, self._steps = self.global_layout, self._global_steps
        if parts > 1:
            self.layout, self._steps = _plan(graph.schema, replace(cfg, batch_size=cfg.batch_size // parts),
                                             self.fanouts)
            # B / parts >= 1 seeds per type reach exactly the types B do: the same steps, in order
            assert [s[:3] for s in self._steps] == [s[:3] for s in self._global_steps]
        self._child_start = _child_starts(self._global_steps, self.global_layout)
        if graph.num_nodes("job") == 0:
            raise StarError(f"{graph.schema.node_types['job'].table}: no jobs to sample negatives from")
        text_types = tuple(t for t, s in graph.schema.node_types.items() if s.text)
        self.llm_types = text_types if features is not None else ()
        self.llm_dim = {t: self._probe_dim(t) for t in self.llm_types}
        self._cum: dict[str, np.ndarray | None] = {}
        self._interacted: dict[str, np.ndarray] = {}

    def for_part(self, index: int) -> NeighborSampler:
        """This sampler drawing part `index` of each batch (sharing its prefix sums)."""
        if not 0 <= index < self.parts:
            raise ValueError(f"part {index} of {self.parts}")
        other = copy.copy(self)
        other.part = index
        return other

    def seed_positions(self, node_type: str) -> np.ndarray:
        """int64: where this part's hop-0 `node_type` nodes sit among the whole batch's (member: the
        pair members; job: the pair jobs, then the K negatives)."""
        b, whole = self.layout.num_pairs, self.global_layout.num_pairs
        own = self.part * b + np.arange(b)
        if node_type == "member":
            return own
        return np.concatenate([own, whole + np.arange(self.layout.num_negatives)])

    def __getstate__(self) -> dict:
        # Prefix sums and apply flags are rebuilt per process; the graph pickles as its directory path.
        return {**self.__dict__, "_cum": {}, "_interacted": {}}

    @property
    def interacted(self) -> dict[str, np.ndarray]:
        """Per member and job row: has the node an edge of the target relation (a training-period
        apply)? A node without one is cold-start, and the GNN gives it no ID embedding."""
        if not self._interacted:
            target = self.cfg.target_relation
            src, dst = relation_types(self.graph.schema)[target]
            self._interacted = {src: self.graph.csr[target].degrees() > 0,
                                dst: self.graph.csr[reverse_name(target)].degrees() > 0}
        return self._interacted

    def _probe_dim(self, t: str) -> int:
        if self.graph.num_nodes(t) == 0:
            raise StarError(f"{self.graph.schema.node_types[t].table}: no {t} nodes")
        probe = np.asarray(self.features.lookup(t, np.asarray(self.graph.ids[t][:1], np.int64)))
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise StarError(f"feature source: lookup({t!r}, 1 id) returned shape {probe.shape}, "
                            "expected [1, D]")
        return int(probe.shape[1])

    def _mass(self, csr_name: str) -> np.ndarray | None:
        if csr_name not in self._cum:
            self._cum[csr_name] = edge_mass_cumsum(self.graph, csr_name, self.cfg.neighbor_weighting)
        return self._cum[csr_name]

    def _exclusion(self, relation: str, rows: np.ndarray, root: np.ndarray, pair_m: np.ndarray,
                   pair_j: np.ndarray) -> np.ndarray | None:
        """Per frontier node, the neighbour row it must not draw through `relation` (-1: none): pair
        i's own edge and its reverse, anywhere in its two trees (DGL's `exclude='reverse_id'`,
        GraphStorm's `exclude_training_targets`)."""
        target = self.cfg.target_relation
        if relation == target:  # job receivers drawing members: pair i's job skips m_i
            own, other = pair_j, pair_m
        elif relation == reverse_name(target):  # member receivers drawing jobs: m_i skips j_i
            own, other = pair_m, pair_j
        else:
            return None
        r = np.maximum(root, 0)
        return np.where((root >= 0) & (rows == own[r]), other[r], -1)

    def sample(self, seeds: SeedBatch, rng: np.random.Generator) -> HeteroBatch:
        L, g = self.layout, self.graph
        B, K = L.num_pairs, L.num_negatives
        start = {t: L.node_slice(t).start for t in L.node_types}
        rows = {t: np.full(c, -1, np.int64) for t, c in zip(L.node_types, L.node_capacity)}
        m = np.asarray(seeds.member_rows, np.int64)
        j = np.asarray(seeds.job_rows, np.int64)
        whole = self.global_layout.num_pairs
        if m.shape != (whole,) or j.shape != (whole,):
            raise ValueError(f"seed batch of {m.shape[0]} pairs for a layout of {whole}")
        neg = rng.integers(0, g.num_nodes("job"), K) if seeds.negatives else np.full(K, -1, np.int64)
        if seeds.negatives and seeds.hard_jobs is not None:
            hard = np.asarray(seeds.hard_jobs, np.int64)
            hard = hard[hard >= 0][:K]
            neg[: hard.shape[0]] = hard
        mask, labels = np.asarray(seeds.pair_mask, bool), np.asarray(seeds.labels, np.float32)
        at = None  # a part: per frontier node, its position in the whole batch's frontier
        if self.parts > 1:
            own = slice(self.part * B, (self.part + 1) * B)
            m, j, mask, labels = m[own], j[own], mask[own], labels[own]
            at = {t: self.seed_positions(t) for t in ("member", "job")}
        root = np.where(seeds.exclude_targets & mask & (m >= 0) & (j >= 0), np.arange(B), -1)
        jobs0 = np.concatenate([j, neg])
        rows["member"][:B], rows["job"][: B + K] = m, jobs0
        filled = {t: 0 for t in L.node_types}
        filled["member"], filled["job"] = B, B + K
        frontier = {"member": (m, start["member"] + np.arange(B), root, at and at["member"]),
                    "job": (jobs0, start["job"] + np.arange(B + K), np.concatenate([root, np.full(K, -1)]),
                            at and at["job"])}
        grown: dict[str, list[tuple]] = {t: [] for t in L.node_types}

        E = L.num_edges
        senders, receivers = np.empty(E, np.int32), np.empty(E, np.int32)
        edge_mask, edge_weight = np.zeros(E, bool), np.ones(E, np.float32)
        edge_at = [L.edge_slice(name).start for name, _, _ in L.relations]
        hop = 0
        for i, step in enumerate(self._steps):
            if step.hop != hop:
                frontier = {t: tuple(None if a[0] is None else np.concatenate(a) for a in zip(*parts))
                            for t, parts in grown.items() if parts}
                grown, hop = {t: [] for t in L.node_types}, step.hop
            name, sender, receiver = L.relations[step.relation]
            v, v_slot, v_root, v_at = frontier[receiver]
            csr_name = reverse_name(name)  # receiver -> sender adjacency
            u = None
            if v_at is not None and g.csr[csr_name].indices.shape[0]:  # else nothing is drawn
                u = rng.random((self._global_steps[i].receivers, step.fanout))[v_at]  # the batch's rows
            nbr, pos = sample_neighbors(g.csr[csr_name], v, step.fanout, rng, cum=self._mass(csr_name),
                                        exclude=self._exclusion(name, v, v_root, m, j),
                                        distinct=self.cfg.distinct, u=u)
            nbr, pos = nbr.ravel(), pos.ravel()
            ok, n = nbr >= 0, nbr.shape[0]
            slot = start[sender] + filled[sender] + np.arange(n)
            rows[sender][filled[sender]: filled[sender] + n] = nbr
            filled[sender] += n
            e = slice(edge_at[step.relation], edge_at[step.relation] + n)
            edge_at[step.relation] += n
            senders[e] = np.where(ok, slot, L.pad_node(sender))
            receivers[e] = np.where(ok, np.repeat(v_slot, step.fanout), L.pad_node(receiver))
            edge_mask[e] = ok
            weight = g.csr[csr_name].weight
            if weight is not None and ok.any():
                edge_weight[e.start + np.flatnonzero(ok)] = weight[pos[ok]]
            child_at = None if v_at is None else (
                self._child_start[i] + v_at[:, None] * step.fanout + np.arange(step.fanout)).ravel()
            grown[sender].append((nbr, slot, np.repeat(v_root, step.fanout), child_at))

        node_ids, cat, llm, node_mask, known = {}, {}, {}, [], []
        for t in L.node_types:
            valid = rows[t] >= 0
            node_mask.append(valid)
            known.append(valid.copy())
            if t in self.interacted:
                known[-1][valid] = self.interacted[t][rows[t][valid]]
            node_ids[t] = np.full(rows[t].shape[0], -1, np.int64)
            node_ids[t][valid] = g.ids[t][rows[t][valid]]
            cat[t] = np.zeros((rows[t].shape[0], g.cat[t].shape[1]), np.int32)
            cat[t][valid] = g.cat[t][rows[t][valid]]
        for t in self.llm_types:
            llm[t] = self._lookup(t, node_ids[t])
        graph = jraph.GraphsTuple(
            nodes={"mask": np.concatenate(node_mask), "known": np.concatenate(known)},
            edges={"mask": edge_mask, "weight": edge_weight},
            senders=senders,
            receivers=receivers,
            n_node=np.array([L.num_nodes], np.int32),
            n_edge=np.array([E], np.int32),
            globals=None,
        )
        return HeteroBatch(
            graph=graph,
            node_ids=node_ids,
            llm=llm,
            cat=cat,
            member_seeds=(start["member"] + np.arange(B)).astype(np.int32),
            job_seeds=(start["job"] + np.arange(B)).astype(np.int32),
            neg_jobs=(start["job"] + B + np.arange(K)).astype(np.int32),
            pair_mask=mask,
            labels=labels,
        )

    def _lookup(self, t: str, ids: np.ndarray) -> np.ndarray:
        """f32 [cap, D] embeddings of `ids` (-1: zeros), each distinct id read once."""
        out = np.zeros((ids.shape[0], self.llm_dim[t]), np.float32)
        valid = ids >= 0
        if valid.any():
            uniq, inverse = np.unique(ids[valid], return_inverse=True)
            emb = np.asarray(self.features.lookup(t, uniq))
            if emb.shape != (uniq.shape[0], self.llm_dim[t]):
                raise StarError(f"feature source: lookup({t!r}, {uniq.shape[0]} ids) returned shape "
                                f"{emb.shape}, expected [{uniq.shape[0]}, {self.llm_dim[t]}]")
            out[valid] = emb[inverse]
        return out


# -- grain pipeline ----------------------------------------------------------------------------


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of batch `index`: independent of which worker draws it."""
    return np.random.default_rng([seed, 1, index])


class _Sample:
    """The grain map step (a picklable callable): seeds -> HeteroBatch."""

    def __init__(self, sampler: NeighborSampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def __call__(self, seeds: SeedBatch) -> HeteroBatch:
        return self.sampler.sample(seeds, batch_rng(self.seed, seeds.index))


class _SampleParts:
    """The grain map step of several parts of each batch: seeds -> their HeteroBatches stacked on a
    new leading axis, one row per sampler (each draws from its own copy of the batch's stream)."""

    def __init__(self, samplers: Sequence[NeighborSampler], seed: int):
        self.samplers, self.seed = tuple(samplers), seed

    def __call__(self, seeds: SeedBatch) -> HeteroBatch:
        import jax

        parts = [s.sample(seeds, batch_rng(self.seed, seeds.index)) for s in self.samplers]
        return jax.tree.map(lambda *xs: np.stack(xs), *parts)


def make_dataset(sampler: NeighborSampler | Sequence[NeighborSampler],
                 seeds: PairSeeds | NodeSeeds | BatchSubset, *, workers: int | None = None,
                 prefetch: int | None = None, seed: int | None = None) -> grain.IterDataset:
    """grain `MapDataset(seeds).map(sample)` as an `IterDataset`, prefetched in a thread or `workers`
    processes. `iter()` of it has `get_state`/`set_state` (orbax: `Checkpointer(data_iter=...)`).
    Defaults come from the sampler's config. A sequence of samplers (parts of one sampler: this
    process's devices) gives each batch as their parts stacked on a leading axis."""
    import grain

    several = isinstance(sampler, Sequence)
    cfg = sampler[0].cfg if several else sampler.cfg
    workers = cfg.workers if workers is None else workers
    prefetch = cfg.prefetch if prefetch is None else prefetch
    seed = cfg.seed if seed is None else seed
    sample = _SampleParts(sampler, seed) if several else _Sample(sampler, seed)
    ds = grain.MapDataset.source(seeds).map(sample)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if workers > 0:
        from star_jax.data import loader  # noqa: F401  (marks absl flags parsed, which grain workers need)

        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        it = it.mp_prefetch(options)
    return it
