"""The GNN encoder, decoder and train step on hand-built batches (tests/gnn_fixtures.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gnn_fixtures import Piece, full_batch, make_batch, make_layout, merge

from star_jax.config import GNNConfig
from star_jax.errors import StarError
from star_jax.gnn.model import (
    build_gnn,
    decay_mask,
    hash_ids,
    link_logits,
    link_loss,
    link_targets,
    set_attribute_tables,
    set_block_gains,
)
from star_jax.gnn.train import gnn_loss
from star_jax.graph.batch import Layout
from star_jax.train_loop import Static, init_state, make_optimizer, make_train_step

CFG = GNNConfig(
    hidden_dim=16, out_dim=8, llm_block=4, attribute_block=0, heads=2, layers=2, dropout=0.1, id_buckets=64,
    cat_dim=4,
    cat_buckets=8,
)
LAYOUT = make_layout(num_pairs=4, num_negatives=3)


@pytest.fixture(scope="module")
def gnn():
    return build_gnn(CFG)


@pytest.fixture(scope="module")
def batches():
    full, pieces = full_batch(LAYOUT)
    sparse = make_batch(LAYOUT, merge([pieces[0]]))  # pair 0 only: everything else is padding
    return full, sparse, pieces


@pytest.fixture(scope="module")
def params(gnn, batches):
    return gnn.init(jax.random.key(0), batches[0], LAYOUT)


@pytest.fixture(scope="module")
def seeds(gnn):
    return jax.jit(gnn.seed_embeddings, static_argnames="layout")


def test_padding_changes_nothing(params, batches, seeds):
    full, sparse, pieces = batches
    m_full, j_full = seeds(params, full, LAYOUT)
    m_sparse, j_sparse = seeds(params, sparse, LAYOUT)
    np.testing.assert_allclose(m_sparse[0], m_full[0], atol=1e-6)
    np.testing.assert_allclose(j_sparse[0], j_full[0], atol=1e-6)
    assert np.isfinite(np.asarray(m_sparse)).all() and np.isfinite(np.asarray(j_sparse)).all()
    np.testing.assert_allclose(np.linalg.norm(m_full[:4], axis=-1), 1.0, rtol=1e-5)  # normalize=True

    # The neighbourhood matters: the same seeds with every edge of pair 0 invalidated differ.
    cut = dataclasses.replace(
        pieces[0], edges={k: [(s, r, False) for s, r, _ in v] for k, v in pieces[0].edges.items()}
    )
    m_cut, j_cut = seeds(params, make_batch(LAYOUT, merge([cut])), LAYOUT)
    assert np.abs(np.asarray(m_cut[0] - m_full[0])).max() > 1e-3
    assert np.abs(np.asarray(j_cut[0] - j_full[0])).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Decoder and loss against a hand computation.

# Four pairs and two negatives; member ids and job ids are chosen to hit every masking rule.
#   pair 0: member 1 -> job 10 (label 1)
#   pair 1: member 2 -> job 11 (label 1)
#   pair 2: member 2 -> job 12 (label 1)      same member as pair 1: each is a positive of the other
#   pair 3: member 3 -> job 11 (label 0)      an evaluation pair; its column (job 11) is a known
#                                             positive of member 2, so rows 1 and 2 drop it
#   pair 4: padding
#   negative 0: job 10 again (another slot)   the positive of pair 0: not a negative for row 0
#   negative 1: padding
LOSS_LAYOUT = Layout(
    ("member", "job"), (4, 6), (("applied", "member", "job"),), (1,), num_pairs=5, num_negatives=2
)
LOSS_PIECE = Piece(
    nodes={"member": [1, 2, 3], "job": [10, 11, 12, 11, 10]},
    edges={"applied": []},
    pairs=[(0, 0, 1.0), (1, 1, 1.0), (1, 2, 1.0), (2, 3, 0.0)],
    negatives=[4],
)
EXPECTED_MASK = np.array(  # rows: pairs; columns: 5 pair jobs, then 2 negatives
    [
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    bool,
)


def test_link_loss_matches_hand_computation():
    batch = make_batch(LOSS_LAYOUT, LOSS_PIECE)
    rng = np.random.default_rng(0)
    member = rng.normal(size=(5, 6)).astype(np.float32)
    jobs = rng.normal(size=(7, 6)).astype(np.float32)
    decoder = {"log_scale": np.float32(np.log(3.0)), "bias": np.float32(-1.5)}

    @jax.jit
    def decode(member, jobs, decoder, batch):
        logits = link_logits(member, jobs, decoder)
        targets, mask = link_targets(batch, LOSS_LAYOUT)
        return link_loss(logits, targets, mask), mask

    (loss, metrics), mask = decode(member, jobs, decoder, batch)

    np.testing.assert_array_equal(np.asarray(mask), EXPECTED_MASK)
    s = 3.0 * member.astype(np.float64) @ jobs.T.astype(np.float64) - 1.5
    y = np.zeros_like(s)
    y[[0, 1, 2], [0, 1, 2]] = 1.0  # pair 3's diagonal is a labelled negative
    bce = np.log1p(np.exp(-s)) * y + np.log1p(np.exp(s)) * (1 - y)  # -log sigmoid(s), -log(1 - sigmoid(s))
    np.testing.assert_allclose(float(loss), bce[EXPECTED_MASK].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pos_logit"]), s[[0, 1, 2], [0, 1, 2]].mean(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training.


@pytest.fixture(scope="module")
def train(gnn):
    # No warm-up and a cosine over many more steps than run here: lr stays ~1e-2.
    optimizer, schedule = make_optimizer(lr=1e-2, warmup_steps=0, steps=10_000, weight_decay=1e-4,
                                         clip_norm=1.0, decay_mask=decay_mask)
    return optimizer, make_train_step(gnn_loss(gnn), optimizer, schedule, fold_in_step=True)


def fresh_state(params, optimizer, seed: int):
    return init_state(jax.tree.map(jnp.copy, params), optimizer, seed)  # a copy: the step donates it


def test_train_steps_reduce_loss(gnn, params, batches, train):
    optimizer, step = train
    full = batches[0]
    state = fresh_state(params, optimizer, 1)
    losses = []
    for _ in range(25):
        state, metrics = step(state, Static(LAYOUT), full)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 25
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    # One compilation serves every batch of this Layout.
    other, _ = full_batch(LAYOUT, seed=1)
    state, _ = step(state, Static(LAYOUT), other)
    assert step._cache_size() == 1


def test_no_nan_gradients_with_empty_neighbourhoods(gnn, params, batches, train):
    optimizer, step = train
    piece = batches[2][0]
    edges = {
        name: [
            (s, r, v and not (dst == "member" and r == 0)) for s, r, v in piece.edges[name]
        ]  # seed member: no valid edge
        for name, _, dst in LAYOUT.relations
    }
    edges["job_skill_rev"] = [
        (s, r, False) for s, r, _ in edges["job_skill_rev"]
    ]  # a relation with no valid edge
    # One real pair; every other pair, node and edge slot is padding.
    batch = make_batch(LAYOUT, merge([dataclasses.replace(piece, edges=edges)]))
    state, metrics = step(fresh_state(params, optimizer, 3), Static(LAYOUT), batch)
    # The global gradient norm is finite iff every gradient entry is.
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["grad_norm"]) > 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        assert np.isfinite(np.asarray(leaf)).all(), jax.tree_util.keystr(path)


# ---------------------------------------------------------------------------------------------
# Inputs and contract checks (shapes only: nothing is compiled).


def _param_names(cfg, batch):
    shapes = jax.eval_shape(lambda k: build_gnn(cfg).init(k, batch, LAYOUT), jax.random.key(0))
    return set(shapes["encoder"])


@pytest.mark.parametrize(
    "switches, present, absent",
    [
        (
            {},
            {"llm_member", "llm_job", "llm_block_map", "llm_gain", "id_skill", "cat_member_1", "cat_job_2",
             "cat_proj_company"},
            {"type_skill", "llm_company", "cat_proj_skill", "llm_out"},
        ),
        (
            {"llm_block": 0},
            {"llm_member", "llm_out"},
            {"llm_block_map", "llm_gain"},
        ),
        (
            {"use_id": False, "use_cat": False},
            {"llm_member", "type_company", "type_skill"},
            {"id_member", "type_job"},
        ),
        (
            {"use_llm": False, "use_id": False, "use_cat": False},
            {f"type_{t}" for t in LAYOUT.node_types},
            {"id_job"},
        ),
    ],
)
def test_feature_switches(batches, switches, present, absent):
    names = _param_names(dataclasses.replace(CFG, **switches), batches[0])
    assert present <= names and not (absent & names)
    assert {"hgt_0", "hgt_1", "norm_1_job", "proj_member"} <= names


def test_batch_that_does_not_match_layout_is_a_star_error(gnn, params, batches):
    bad = batches[0]._replace(neg_jobs=batches[0].neg_jobs[:2])
    with pytest.raises(StarError, match=r"batch\.neg_jobs"):
        gnn.encode(params, bad, LAYOUT)
    no_llm = batches[0]._replace(llm={})
    with pytest.raises(StarError, match="use_llm"):
        gnn.encode(params, no_llm, LAYOUT)


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_cold_start_node_gets_no_id_embedding(batches, policy):
    """gnn.cold_start_ids: with `drop`, a member that is not `known` embeds the same whatever its
    id hashes to; a known member, or any member under `keep`, does not."""
    cfg = dataclasses.replace(CFG, cold_start_ids=policy, dropout=0.0)
    model = build_gnn(cfg)
    full = batches[0]
    params = model.init(jax.random.key(0), full, LAYOUT)
    slot = int(full.member_seeds[0]) - LAYOUT.node_slice("member").start

    def member0(known: bool, node_id: int) -> np.ndarray:
        ids = dict(full.node_ids, member=full.node_ids["member"].copy())
        ids["member"][slot] = node_id
        flags = full.graph.nodes["known"].copy()
        flags[full.member_seeds[0]] = known
        nodes = {**full.graph.nodes, "known": flags}
        batch = full._replace(node_ids=ids, graph=full.graph._replace(nodes=nodes))
        return np.asarray(model.seed_embeddings(params, batch, LAYOUT)[0][0])

    cold_same = np.allclose(member0(False, 123_457), member0(False, 987_651), atol=1e-6)
    assert cold_same == (policy == "drop")
    assert not np.allclose(member0(True, 123_457), member0(True, 987_651), atol=1e-6)


def test_unknown_cold_start_policy_is_a_star_error():
    with pytest.raises(StarError, match="gnn.cold_start_ids"):
        build_gnn(dataclasses.replace(CFG, cold_start_ids="zero"))


def test_attribute_bags_are_the_mean_of_each_nodes_attribute_neighbours(batches):
    from star_jax.gnn.model import LLM_TYPES, attribute_bags

    batch = batches[0]
    rng = np.random.default_rng(0)
    caps = zip(LAYOUT.node_types, LAYOUT.node_capacity)
    h = {t: rng.normal(size=(cap, 5)).astype(np.float32) for t, cap in caps}
    bags = attribute_bags(h, batch, LAYOUT)
    flat = np.concatenate([h[t] for t in LAYOUT.node_types])
    g = batch.graph
    expected: dict = {}
    for name, src, dst in LAYOUT.relations:  # a loop over edges, as a reader would write it
        if dst not in LLM_TYPES or src in LLM_TYPES:
            continue
        block = LAYOUT.node_slice(dst)
        total, count = np.zeros((block.stop - block.start, 5)), np.zeros(block.stop - block.start)
        for e in range(LAYOUT.edge_slice(name).start, LAYOUT.edge_slice(name).stop):
            if g.edges["mask"][e]:
                total[g.receivers[e] - block.start] += flat[g.senders[e]]
                count[g.receivers[e] - block.start] += 1
        mean = total / np.maximum(count, 1)[:, None]
        expected.setdefault(dst, {})[src] = expected.get(dst, {}).get(src, 0) + mean
    assert expected and {t: set(v) for t, v in bags.items()} == {t: set(v) for t, v in expected.items()}
    assert any(np.abs(v).sum() > 0 for per in expected.values() for v in per.values())  # not all empty
    for t, per in expected.items():
        for s, want in per.items():
            np.testing.assert_allclose(np.asarray(bags[t][s]), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gain", [0.0, 1.0, 3.0])
def test_llm_block_scores_are_the_weighted_sum_of_the_two_cosines(batches, gain):
    """With gnn.llm_block = D >= the LLM width, a member-job score is (graph cosine + g^2 x the
    cosine of the two stored LLM vectors) / (1 + g^2): the fixed map keeps inner products, and the
    gain picked on val after training (set_block_gains) sets g; at 0, while training, it is off."""
    batch = batches[0]
    width = batch.llm["member"].shape[-1]
    cfg = dataclasses.replace(CFG, out_dim=width + 6, llm_block=width)
    gnn = build_gnn(cfg)
    params = set_block_gains(gnn.init(jax.random.key(1), batch, LAYOUT), {"llm": gain})
    member, jobs = (np.asarray(x, np.float64) for x in gnn.seed_embeddings(params, batch, LAYOUT))
    graph_part = [x[:, :6] / np.linalg.norm(x[:, :6], axis=1, keepdims=True) for x in (member, jobs)]
    columns = np.concatenate([batch.job_seeds, batch.neg_jobs])
    m_llm = batch.llm["member"][batch.member_seeds - LAYOUT.node_slice("member").start]
    j_llm = batch.llm["job"][columns - LAYOUT.node_slice("job").start]
    m_llm, j_llm = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (m_llm, j_llm))
    expected = (graph_part[0] @ graph_part[1].T + gain**2 * (m_llm @ j_llm.T)) / (1 + gain**2)
    real = np.concatenate([batch.pair_mask, batch.graph.nodes["mask"][batch.neg_jobs]])
    np.testing.assert_allclose((member @ jobs.T)[batch.pair_mask][:, real],
                               expected[batch.pair_mask][:, real], rtol=1e-4, atol=1e-5)


def test_llm_block_wider_than_the_output_is_a_star_error():
    with pytest.raises(StarError, match="gnn.llm_block"):
        dataclasses.replace(CFG, llm_block=CFG.out_dim).check()


def test_the_attribute_block_sums_its_tables_over_each_nodes_attribute_neighbours(batches):
    """gnn.attribute_block = K: a member's or job's output ends in the unit-length sum of fixed table
    rows over its attribute neighbours (here skills and, for jobs, companies) plus a constant,
    recomputed here edge by edge from the batch; at gain 0 (while training) the block is off."""
    batch, k, buckets = batches[0], 3, 16
    cfg = dataclasses.replace(CFG, llm_block=0, attribute_block=k, attribute_block_buckets=buckets)
    gnn = build_gnn(cfg)
    params = gnn.init(jax.random.key(2), batch, LAYOUT)
    rng = np.random.default_rng(0)
    tables = {name: rng.normal(size=(2, 1 if name == "bias" else buckets, k)).astype(np.float32)
              for name in ("bias", "company", "skill")}
    params = set_attribute_tables(params, tables)
    with pytest.raises(StarError, match="gnn.attribute_block: table skill"):
        set_attribute_tables(params, {"skill": tables["skill"][:, :4]})

    def expected(t: str, slots: np.ndarray) -> np.ndarray:
        side = ("member", "job").index(t)
        out = np.repeat(tables["bias"][side], len(slots), axis=0).astype(np.float64)
        for name, src, dst in LAYOUT.relations:
            if dst != t or src not in ("skill", "company"):
                continue
            es = LAYOUT.edge_slice(name)
            senders = np.asarray(batch.graph.senders[es]) - LAYOUT.node_slice(src).start
            receivers = np.asarray(batch.graph.receivers[es]) - LAYOUT.node_slice(t).start
            for s, r, valid in zip(senders, receivers, np.asarray(batch.graph.edges["mask"][es])):
                node = int(batch.node_ids[src][s])
                if valid and node >= 0 and r in slots:
                    bucket = int(hash_ids(jnp.asarray([node]), buckets)[0])
                    out[np.flatnonzero(slots == r)] += tables[src][side][bucket]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    columns = np.concatenate([batch.job_seeds, batch.neg_jobs]) - LAYOUT.node_slice("job").start
    seeds = {"member": batch.member_seeds - LAYOUT.node_slice("member").start, "job": columns}
    on = set_block_gains(params, {"attribute": 1.0})
    for t, x in zip(("member", "job"), gnn.seed_embeddings(on, batch, LAYOUT)):
        x = np.asarray(x, np.float64)  # [unit(graph part) ; unit(block)] / sqrt(2)
        np.testing.assert_allclose(x[:, -k:] * np.sqrt(2), expected(t, np.asarray(seeds[t])), atol=1e-5)
    for x in gnn.seed_embeddings(params, batch, LAYOUT):  # gain 0 at init
        np.testing.assert_array_equal(np.asarray(x)[:, -k:], 0.0)
    mask = decay_mask(params)["encoder"]
    assert not any(mask[f"attribute_block_{name}"] for name in tables)
