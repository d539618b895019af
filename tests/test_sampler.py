"""The fixed-shape neighbour sampler: static shapes, mask consistency, no leakage, draw
distributions, adaptive fan-outs, seeds, and the grain pipeline."""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import graph_fixtures as gf
import jax
import numpy as np
import pytest
from scipy.stats import chisquare

from star_jax.checkpoint import Checkpointer
from star_jax.config import SamplerConfig
from star_jax.errors import StarError
from star_jax.graph.hetero import build_graph
from star_jax.graph.sampler import (
    FanoutSchedule,
    NeighborSampler,
    batch_rng,
    make_dataset,
    make_layout,
    relation_fanouts,
    sample_neighbors,
)
from star_jax.graph.seeds import eval_seeds, node_seeds, train_seeds

CFG = SamplerConfig(batch_size=4, num_random_negatives=3, fanouts=[3, 2], relation_fanouts={})


@pytest.fixture(scope="module")
def graph_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    data = gf.write_data_dir(root / "data")
    return build_graph(data, root / "graph"), data


@pytest.fixture(scope="module")
def graph(graph_and_data):
    return graph_and_data[0]


def signature(batch) -> list:
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    return [(jax.tree_util.keystr(p), x.shape, x.dtype) for p, x in leaves]


def slot_ids(batch, layout, flat: np.ndarray, node_type: str) -> np.ndarray:
    return batch.node_ids[node_type][flat - layout.node_slice(node_type).start]


def check_batch(batch, layout, graph) -> None:
    """Masks and edges are consistent, and every valid edge is a real edge in message direction."""
    g = batch.graph
    node_mask, edge_mask = g.nodes["mask"], g.edges["mask"]
    assert node_mask.shape == (layout.num_nodes,) and edge_mask.shape == (layout.num_edges,)
    for t in layout.node_types:
        sl = layout.node_slice(t)
        valid = node_mask[sl]
        assert not valid[-1], "the last slot of a block is padding"
        assert ((batch.node_ids[t] >= 0) == valid).all()
        assert (batch.cat[t][~valid] == 0).all()
        if t in batch.llm:
            assert (batch.llm[t][~valid] == 0).all()
            np.testing.assert_array_equal(batch.llm[t][valid, 0], batch.node_ids[t][valid])
        rows = graph.rows(t, batch.node_ids[t][valid])
        np.testing.assert_array_equal(batch.cat[t][valid], graph.cat[t][rows])
    seeds = np.zeros(layout.num_nodes, bool)
    seeds[np.concatenate([batch.member_seeds, batch.job_seeds, batch.neg_jobs])] = True
    out_edges = np.zeros(layout.num_nodes, int)
    for name, sender_t, receiver_t in layout.relations:
        e = layout.edge_slice(name)
        s, r, ok, w = g.senders[e], g.receivers[e], edge_mask[e], g.edges["weight"][e]
        # Padded edges point pad -> pad; valid edges join valid, non-padding nodes of the right blocks.
        assert (s[~ok] == layout.pad_node(sender_t)).all() and (r[~ok] == layout.pad_node(receiver_t)).all()
        s_sl, r_sl = layout.node_slice(sender_t), layout.node_slice(receiver_t)
        assert ((s[ok] >= s_sl.start) & (s[ok] < s_sl.stop - 1)).all()
        assert ((r[ok] >= r_sl.start) & (r[ok] < r_sl.stop - 1)).all()
        assert node_mask[s[ok]].all() and node_mask[r[ok]].all()
        real = set(gf.edge_set(name))
        sender_ids = slot_ids(batch, layout, s[ok], sender_t)
        receiver_ids = slot_ids(batch, layout, r[ok], receiver_t)
        for a, b, weight in zip(sender_ids, receiver_ids, w[ok]):
            key = (int(a), int(b), float(weight)) if name.startswith("member_skill") else (int(a), int(b))
            assert key in real, (name, key)
        if not name.startswith("member_skill"):
            assert (w == 1.0).all()
        np.add.at(out_edges, s[ok], 1)
    # A tree: each sampled node sends exactly one message, to the node that drew it; seeds send none;
    # invalid slots take part in no valid edge.
    assert (out_edges[node_mask & ~seeds] == 1).all()
    assert (out_edges[seeds] == 0).all() and (out_edges[~node_mask] == 0).all()
    assert g.senders.dtype == np.int32 and g.receivers.dtype == np.int32


def root_slots(batch, layout) -> np.ndarray:
    """The seed slot whose tree each slot belongs to (itself for seeds and unconnected slots)."""
    g = batch.graph
    parent = np.full(layout.num_nodes, -1)
    ok = g.edges["mask"]
    parent[g.senders[ok]] = g.receivers[ok]
    cur = np.arange(layout.num_nodes)
    for _ in range(8):
        cur = np.where(parent[cur] >= 0, parent[cur], cur)
    return cur


def roots(batch, layout) -> np.ndarray:
    """Pair index whose tree each slot belongs to (-1: negatives' trees, padding)."""
    pair = np.full(layout.num_nodes, -1)
    pair[batch.member_seeds] = np.arange(layout.num_pairs)
    pair[batch.job_seeds] = np.arange(layout.num_pairs)
    return pair[root_slots(batch, layout)]


def target_edges_seen(batch, layout) -> int:
    """How many sampled edges are the target edge (or its reverse) of the pair whose tree holds them."""
    root = roots(batch, layout)
    m_ids = slot_ids(batch, layout, batch.member_seeds, "member")
    j_ids = slot_ids(batch, layout, batch.job_seeds, "job")
    seen = 0
    g = batch.graph
    for name, member_end in (("member_applied", "senders"), ("member_applied_rev", "receivers")):
        e = layout.edge_slice(name)
        ok = g.edges["mask"][e]
        m_slot = getattr(g, member_end)[e][ok]
        j_slot = (g.receivers if member_end == "senders" else g.senders)[e][ok]
        i = root[g.receivers[e][ok]]
        assert (i >= -1).all()
        hit = (i >= 0) & (slot_ids(batch, layout, m_slot, "member") == m_ids[np.maximum(i, 0)]) & (
            slot_ids(batch, layout, j_slot, "job") == j_ids[np.maximum(i, 0)])
        seen += int(hit.sum())
    return seen


def test_layout_capacities_come_from_the_config():
    cfg = SamplerConfig(batch_size=2, num_random_negatives=1, fanouts=[1, 1], relation_fanouts={})
    layout = make_layout(gf.schema(), cfg)
    # Seeds: 2 members, 3 jobs. Hop 1: each member draws 1 skill/title/company/job, each job 1
    # skill/title/company/member. Hop 2: members and jobs draw 4 each, skills/titles/companies 2 each.
    assert dict(zip(layout.node_types, layout.node_capacity)) == {
        "member": 2 + 3 + 17 + 1, "job": 3 + 2 + 18 + 1, "company": 11, "skill": 11, "title": 11}
    assert layout.edge_capacity == (5,) * 14
    assert layout.num_edges == layout.num_nodes - 5 - len(layout.node_types)  # a forest of 5 trees
    default = make_layout(gf.schema(), SamplerConfig())
    assert default.num_nodes <= 15_000 and default.num_pairs == 64


def test_every_batch_has_the_same_shapes_and_consistent_masks(graph_and_data):
    graph, data = graph_and_data
    sampler = NeighborSampler(graph, CFG, features=gf.FakeFeatures())
    batches = [sampler.sample(s, batch_rng(0, s.index)) for s in
               [*train_seeds(data, graph, CFG, num_batches=4),
                *eval_seeds(data, graph, CFG, "val"),  # cold-start member 3, isolated 777 and 2002, padding
                *node_seeds(graph, "member", CFG), *node_seeds(graph, "job", CFG)]]
    first = signature(batches[0])
    for b in batches:
        assert signature(b) == first
        check_batch(b, sampler.layout, graph)
    assert set(batches[0].llm) == {"member", "job"} and batches[0].llm["job"].shape[1] == gf.FakeFeatures.dim
    # The isolated member's tree is its seed alone; the cold-start member still reaches its skills.
    ev = batches[4]
    m_ids = slot_ids(ev, sampler.layout, ev.member_seeds, "member")
    assert list(m_ids[:4]) == [501, 3, 777, 17] and list(ev.labels) == [1, 1, 0, 0]
    assert list(batches[5].pair_mask) == [True, False, False, False]
    valid, root = ev.graph.nodes["mask"], root_slots(ev, sampler.layout)
    assert valid[root == ev.member_seeds[2]].sum() == 1  # member 777 alone
    cold, e = ev.member_seeds[1], sampler.layout.edge_slice("member_applied_rev")  # member 3: no applies
    assert not (ev.graph.edges["mask"][e] & (ev.graph.receivers[e] == cold)).any()
    assert valid[root == cold].sum() > 3  # but skills, a title, a company and their neighbours
    # `known`: a real member or job with a training apply; every real node of the other types.
    known = ev.graph.nodes["known"]
    assert not (known & ~valid).any()
    assert list(known[ev.member_seeds[:3]]) == [True, False, False]  # 501 applied; 3 and 777 never
    for t in ("member", "job"):
        sl = sampler.layout.node_slice(t)
        rows = graph.rows(t, np.asarray(ev.node_ids[t])[valid[sl]])
        applied = graph.csr["member_applied" if t == "member" else "member_applied_rev"].degrees() > 0
        np.testing.assert_array_equal(known[sl][valid[sl]], applied[rows])
    skills = sampler.layout.node_slice("skill")
    np.testing.assert_array_equal(known[skills], valid[skills])


def test_node_seeds_cover_every_node_once(graph):
    sampler = NeighborSampler(graph, CFG)
    for t, ids in (("member", gf.MEMBERS), ("job", gf.JOBS)):
        got = []
        for s in node_seeds(graph, t, CFG):
            b = sampler.sample(s, batch_rng(0, s.index))
            seeds = b.member_seeds if t == "member" else b.job_seeds
            got += list(slot_ids(b, sampler.layout, seeds[b.pair_mask], t))
            assert (b.neg_jobs.size == 0) or not b.graph.nodes["mask"][b.neg_jobs].any()
        assert got == ids


def test_no_leakage_of_target_edges(graph_and_data):
    graph, data = graph_and_data
    cfg = dataclasses.replace(CFG, fanouts=[3, 3, 2])  # 3 hops: m_i -> skill -> m_i -> j_i is possible
    sampler = NeighborSampler(graph, cfg)
    seeds = train_seeds(data, graph, cfg, num_batches=30)
    leaked = unprotected = 0
    for s in seeds:
        leaked += target_edges_seen(sampler.sample(s, batch_rng(1, s.index)), sampler.layout)
        off = sampler.sample(s._replace(exclude_targets=False), batch_rng(1, s.index))
        unprotected += target_edges_seen(off, sampler.layout)
    assert leaked == 0
    assert unprotected > 50  # the check has teeth: without exclusion the target edges are drawn


def draw(csr, row: int, n: int, **kw) -> np.ndarray:
    nbr, _ = sample_neighbors(csr, np.array([row]), n, np.random.default_rng(0), **kw)
    return nbr[0]


def frequencies(nbr: np.ndarray, support: list[int]) -> np.ndarray:
    c = collections.Counter(nbr.tolist())
    assert set(c) <= set(support), (c, support)
    return np.array([c[k] for k in support])


def test_weighted_and_degree_aware_draws_follow_their_distributions(graph):
    from star_jax.graph.sampler import edge_mass_cumsum

    n = 20_000
    c = graph.csr["member_skill"]  # a member's skills, weighted
    row = graph.rows("member", np.array([501]))[0]
    skills = graph.rows("skill", np.array([100, 101, 102])).tolist()  # weights 1, 2, 7
    cum = edge_mass_cumsum(graph, "member_skill", "weight")
    f = frequencies(draw(c, row, n, cum=cum), skills)
    assert chisquare(f, n * np.array([0.1, 0.2, 0.7])).pvalue > 1e-3
    assert chisquare(f, np.full(3, n / 3)).pvalue < 1e-9
    f = frequencies(draw(c, row, n, cum=cum, exclude=np.array([skills[2]])), skills[:2])
    assert chisquare(f, n * np.array([1 / 3, 2 / 3])).pvalue > 1e-3
    # degree: skill 100 has 6 members, 101 and 102 have 2: p ~ 1/sqrt(degree).
    p = 1 / np.sqrt([6, 2, 2])
    f = frequencies(draw(c, row, n, cum=edge_mass_cumsum(graph, "member_skill", "degree")), skills)
    assert chisquare(f, n * p / p.sum()).pvalue > 1e-3
    assert chisquare(f, np.full(3, n / 3)).pvalue < 1e-9
    # uniform over edges: member 501 applied to 2005 three times and to 2001 once.
    a = graph.csr["member_applied"]
    row, jobs = graph.rows("member", np.array([501]))[0], graph.rows("job", np.array([2005, 2001])).tolist()
    f = frequencies(draw(a, row, n), jobs)
    assert chisquare(f, n * np.array([0.75, 0.25])).pvalue > 1e-3
    only = draw(a, row, 500, exclude=np.array([jobs[0]]))
    assert (only == jobs[1]).all()
    both = graph.rows("member", np.array([17]))[0]  # 2001 twice, 2003 once; excluding 2003
    assert (draw(a, both, 500, exclude=graph.rows("job", np.array([2003]))) == jobs[1]).all()
    empty = draw(a, graph.rows("member", np.array([777]))[0], 5)
    assert (empty == -1).all()


@pytest.mark.parametrize("weighting", ["degree", "weight"])
def test_weighted_sampler_batches_are_consistent(graph_and_data, weighting):
    graph, data = graph_and_data
    cfg = dataclasses.replace(CFG, neighbor_weighting=weighting)
    sampler = NeighborSampler(graph, cfg)
    for s in train_seeds(data, graph, cfg, num_batches=5):
        b = sampler.sample(s, batch_rng(0, s.index))
        check_batch(b, sampler.layout, graph)
        assert target_edges_seen(b, sampler.layout) == 0


def test_features_are_looked_up_once_per_distinct_id(graph_and_data):
    graph, data = graph_and_data
    feats = gf.FakeFeatures()
    sampler = NeighborSampler(graph, CFG, features=feats)
    feats.calls.clear()
    b = sampler.sample(train_seeds(data, graph, CFG, num_batches=1)[0], batch_rng(0, 0))
    assert sorted(t for t, _ in feats.calls) == ["job", "member"]
    for t, ids in feats.calls:
        assert (np.diff(ids) > 0).all()  # unique, sorted
        valid = b.node_ids[t][b.node_ids[t] >= 0]
        np.testing.assert_array_equal(ids, np.unique(valid))
        assert valid.size > ids.size  # there were repeats to deduplicate
    assert b.llm["member"].dtype == np.float32


def test_adaptive_fanout_schedule():
    cfg = dataclasses.replace(CFG, adaptive=True, start_fanouts=[1, 1], fanouts=[3, 2], fanout_step=1,
                              plateau_tolerance=0.01, relation_fanouts={"member_applied_rev": [4, 1]})
    s = FanoutSchedule.from_config(cfg)
    assert s.fanouts == (1, 1) and s.final == (4, 2)
    seen = []
    for auc in [0.60, 0.70, 0.705, 0.80, 0.801, 0.85, 0.85, 0.85, 0.85]:
        s = s.observe(auc)
        seen.append(s.fanouts)
    assert seen == [(1, 1), (1, 1), (2, 2), (2, 2), (3, 2), (3, 2), (4, 2), (4, 2), (4, 2)]
    assert s.done
    assert FanoutSchedule(**json.loads(json.dumps(dataclasses.asdict(s)))) == s  # checkpointable
    small = make_layout(gf.schema(), cfg, hop_fanouts=(1, 1))
    big = make_layout(gf.schema(), cfg, hop_fanouts=s.fanouts)
    assert small.num_nodes < big.num_nodes
    # member_applied_rev keeps its own fan-outs [4, 1]; the others follow sampler.fanouts [3, 2]; the
    # schedule caps both per hop.
    full, mid = relation_fanouts(cfg, gf.schema()), relation_fanouts(cfg, gf.schema(), (2, 2))
    assert full["member_applied_rev"] == (4, 1) and full["member_skill_rev"] == (3, 2)
    assert mid["member_applied_rev"] == (2, 1) and mid["member_skill_rev"] == (2, 2)
    assert FanoutSchedule.from_config(dataclasses.replace(cfg, adaptive=False)).fanouts == (4, 2)


def test_config_errors_name_the_field(graph):
    cases = [
        (dict(relation_fanouts={"member_skil": [1, 1]}), "sampler.relation_fanouts.member_skil"),
        (dict(relation_fanouts={"member_skill": [1]}), "sampler.relation_fanouts.member_skill"),
        (dict(neighbor_weighting="pagerank"), "sampler.neighbor_weighting"),
        (dict(target_relation="member_skill"), "sampler.target_relation"),
        (dict(fanouts=[]), "sampler.fanouts"),
    ]
    for change, field in cases:
        with pytest.raises(StarError, match=field.replace(".", r"\.")):
            NeighborSampler(graph, dataclasses.replace(CFG, **change))


def all_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_grain_same_batches_for_any_worker_count_and_state_restores(graph_and_data, tmp_path):
    graph, data = graph_and_data
    sampler = NeighborSampler(graph, CFG, features=gf.FakeFeatures())
    seeds = train_seeds(data, graph, CFG, num_batches=6)
    inline = list(make_dataset(sampler, seeds, workers=0))
    assert len(inline) == 6 and not all_equal(inline[0], inline[1])
    for i, b in enumerate(inline):
        assert all_equal(b, sampler.sample(seeds[i], batch_rng(CFG.seed, i)))
    it = iter(make_dataset(sampler, seeds, workers=2))
    first = [next(it) for _ in range(3)]
    ckpt = Checkpointer(tmp_path / "ckpt", fingerprint="test")  # the iterator state goes with the model's
    ckpt.save(3, {"step": np.array(3)}, data_iter=it)
    ckpt.wait()
    rest = list(it)
    assert all(all_equal(a, b) for a, b in zip(first + rest, inline)) and len(rest) == 3
    resumed = iter(make_dataset(sampler, seeds, workers=2))
    ckpt.restore({"step": np.array(0)}, data_iter=resumed)
    ckpt.close()
    after = list(resumed)
    assert len(after) == 3 and all(all_equal(a, b) for a, b in zip(after, inline[3:]))
    it0 = iter(make_dataset(sampler, seeds, workers=0))
    next(it0)
    state0 = it0.get_state()
    again = iter(make_dataset(sampler, seeds, workers=0))
    again.set_state(state0)
    assert all_equal(next(again), inline[1])


def test_distinct_draws_take_a_small_neighbourhood_whole():
    from star_jax.graph.hetero import CSR

    # Row 0 has 3 neighbours, row 1 one, row 2 none, row 3 six (more than the fan-out of 4).
    csr = CSR(np.array([0, 3, 4, 4, 10]), np.array([5, 6, 7, 1, 0, 1, 2, 3, 4, 5]), None, None)
    rows = np.array([0, 1, 2, 3, -1, 0])
    exclude = np.array([-1, -1, -1, -1, -1, 6])  # row 5 is row 0 with neighbour 6 excluded
    nbr, pos = sample_neighbors(csr, rows, 4, np.random.default_rng(0), exclude=exclude, distinct=True)
    assert sorted(nbr[0][nbr[0] >= 0].tolist()) == [5, 6, 7] and (nbr[0] == -1).sum() == 1
    assert nbr[1].tolist() == [1, -1, -1, -1]
    assert (nbr[2] == -1).all() and (nbr[4] == -1).all()
    assert set(nbr[3].tolist()) <= {0, 1, 2, 3, 4, 5} and (nbr[3] >= 0).all()  # with replacement
    assert sorted(nbr[5][nbr[5] >= 0].tolist()) == [5, 7]
    ok = pos >= 0
    np.testing.assert_array_equal(csr.indices[pos[ok]], nbr[ok])  # positions point at the neighbours


def test_shown_negatives_are_the_members_own_train_non_applies_placed_first(tmp_path):
    import pandas as pd

    from star_jax.config import GNNTrainConfig
    from star_jax.data.schema import default_schema
    from star_jax.gnn.train import training_pairs

    data = gf.write_data_dir(tmp_path / "data")
    path = os.path.join(data, default_schema().labels)
    labels = pd.read_parquet(path)
    # Every train pair also gets a shown-but-not-applied job (one the member did not apply to).
    rng = np.random.default_rng(0)
    jobs = labels["job_id"].unique()
    extra = labels[labels["split"] == "train"].copy()
    extra["job_id"] = [rng.choice([j for j in jobs if j != own]) for own in extra["job_id"]]
    extra["label"] = 0
    extra = extra.merge(labels[labels.label == 1][["member_id", "job_id"]], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    labels = pd.concat([labels, extra.astype(labels.dtypes.to_dict())], ignore_index=True)
    labels.to_parquet(path, index=False)
    graph = build_graph(data, tmp_path / "graph")
    train = labels[labels["split"] == "train"]
    shown = {(m, j) for m, j in zip(train.member_id[train.label == 0], train.job_id[train.label == 0])}
    has_shown = set(train.member_id[train.label == 0])
    cfg = dataclasses.replace(CFG, num_random_negatives=8)
    seeds = training_pairs(data, graph, GNNTrainConfig(steps=40, shown_negatives=True), cfg)
    plain = training_pairs(data, graph, GNNTrainConfig(steps=40, shown_negatives=False), cfg)
    sampler = NeighborSampler(graph, cfg)
    L, placed = sampler.layout, 0
    for b in range(len(seeds)):
        s = seeds[b]
        assert plain[b].hard_jobs is None and np.array_equal(plain[b].member_rows, s.member_rows)
        members = graph.ids["member"][s.member_rows]
        for m, j in zip(members, s.hard_jobs):
            if m in has_shown:
                assert (m, graph.ids["job"][j]) in shown
            else:
                assert j == -1
        batch = sampler.sample(s, batch_rng(0, b))
        hard = graph.ids["job"][s.hard_jobs[s.hard_jobs >= 0]][: L.num_negatives]
        negs = slot_ids(batch, L, np.asarray(batch.neg_jobs), "job")
        assert np.array_equal(negs[: hard.shape[0]], hard)
        placed += hard.shape[0]
    assert placed > 20  # the fixture's members do have non-applies to place
