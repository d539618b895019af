"""HGTConv against PyG's HGTConv with the same weights, plus masking and gradient safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gnn_fixtures import Piece, make_batch

from star_jax.gnn.hgt import HGTConv
from star_jax.graph.batch import Layout

DIM, HEADS = 8, 2
IN_DIM = {"member": DIM, "job": DIM, "company": 5, "skill": 6}  # company: no skip (dims differ)
TYPES = ("member", "job", "company", "skill")
RELATIONS = (
    ("applied", "member", "job"),
    ("applied_rev", "job", "member"),
    ("posted_by", "company", "job"),  # a second relation into job
    ("similar", "job", "job"),  # a third; every one of its edges is invalid
    ("works_at", "member", "company"),
    ("has_skill", "skill", "member"),  # nothing reaches skill: it passes through
)
LAYOUT = Layout(TYPES, (6, 7, 4, 3), RELATIONS, (8, 6, 5, 3, 5, 4), num_pairs=1, num_negatives=1)
PIECE = Piece(
    nodes={
        "member": [10, 11, 12, 13],
        "job": [20, 21, 22, 23, 24],
        "company": [30, 31, 32],
        "skill": [40, 41],
    },
    edges={
        # job 4 receives nothing; member 3's only incoming edges are invalid.
        "applied": [(0, 0, True), (1, 0, True), (2, 1, True), (0, 2, True), (3, 3, True), (1, 1, False)],
        "applied_rev": [(0, 0, True), (1, 2, True), (2, 1, True), (3, 3, False), (2, 0, True)],
        "posted_by": [(0, 0, True), (1, 1, True), (2, 3, True), (0, 1, False)],
        "similar": [(0, 1, False), (2, 3, False)],
        "works_at": [(0, 0, True), (1, 0, True), (2, 2, True), (3, 1, True)],
        "has_skill": [(0, 0, True), (1, 2, True), (0, 3, False)],
    },
    pairs=[(0, 0, 1.0)],
)


def _random_params(layer, seed, x, graph):
    """Random values in the layer's own parameter tree (tracing only: no init to compile)."""
    shapes = jax.eval_shape(lambda k: layer.init(k, x, graph, LAYOUT), jax.random.key(0))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.4 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    # Padding rows are random too: nothing may leak from them into real nodes.
    return {
        t: rng.normal(size=(cap, IN_DIM[t])).astype(np.float32) for t, cap in zip(TYPES, LAYOUT.node_capacity)
    }


def _pyg_conv():
    torch = pytest.importorskip("torch")
    from torch_geometric.nn import HGTConv as PyGHGTConv

    torch.manual_seed(0)
    metadata = (list(TYPES), [(s, name, d) for name, s, d in RELATIONS])
    conv = PyGHGTConv(IN_DIM, DIM, metadata, heads=HEADS)
    with torch.no_grad():  # priors and skips start at 1; randomise everything so each one matters
        for p in conv.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return conv.eval()


def _params_from_pyg(conv):
    """The same weights in our parameter tree (torch Linear weights are [out, in])."""
    t = lambda x: np.asarray(x.detach().numpy(), np.float32)
    n_rel, d = len(RELATIONS), DIM // HEADS
    params = {}
    for typ in TYPES:
        params[f"kqv_{typ}"] = {
            "kernel": t(conv.kqv_lin.lins[typ].weight).T,
            "bias": t(conv.kqv_lin.lins[typ].bias),
        }
    for r, (name, src, dst) in enumerate(RELATIONS):
        # HeteroLinear type index = head * num_edge_types + edge_type (HGTConv._construct_src_node_feat)
        params[f"att_{name}"] = t(conv.k_rel.weight)[[h * n_rel + r for h in range(HEADS)]].reshape(
            HEADS, d, d
        )
        params[f"msg_{name}"] = t(conv.v_rel.weight)[[h * n_rel + r for h in range(HEADS)]].reshape(
            HEADS, d, d
        )
        params[f"prior_{name}"] = t(conv.p_rel[f"{src}__{name}__{dst}"])[0]
    for typ in {dst for _, _, dst in RELATIONS}:
        params[f"out_{typ}"] = {
            "kernel": t(conv.out_lin.lins[typ].weight).T,
            "bias": t(conv.out_lin.lins[typ].bias),
        }
        if IN_DIM[typ] == DIM:
            params[f"skip_{typ}"] = t(conv.skip[typ])[0]
    return params


def test_matches_pyg_hgtconv():
    import torch

    batch = make_batch(LAYOUT, PIECE)
    x = _inputs()
    layer = HGTConv(DIM, HEADS)
    ours = jax.eval_shape(lambda k: layer.init(k, x, batch.graph, LAYOUT), jax.random.key(0))["params"]
    conv = _pyg_conv()
    params = _params_from_pyg(conv)
    # Same parameter names and shapes as our own init: the weight copy cannot silently skip one.
    assert jax.tree.map(np.shape, ours) == jax.tree.map(np.shape, params)

    out = jax.jit(lambda p, x, g: layer.apply({"params": p}, x, g, LAYOUT))(params, x, batch.graph)

    n_real = {t: len(ids) for t, ids in PIECE.nodes.items()}
    x_dict = {t: torch.from_numpy(x[t][: n_real[t]]) for t in TYPES}
    edge_index = {}
    for name, src, dst in RELATIONS:
        valid = [(s, r) for s, r, ok in PIECE.edges[name] if ok]
        edge_index[(src, name, dst)] = torch.tensor(valid, dtype=torch.long).reshape(-1, 2).T.contiguous()
    with torch.no_grad():
        ref = conv(x_dict, edge_index)

    assert set(ref) == {"member", "job", "company"}
    for t, want in ref.items():
        np.testing.assert_allclose(np.asarray(out[t][: n_real[t]]), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["skill"]), x["skill"])  # no relation reaches skill
    for t in TYPES:
        assert np.isfinite(np.asarray(out[t])).all()  # padding slots included


def _layer_loss(layer, params, x, graph):
    out = layer.apply({"params": params}, x, graph, LAYOUT)
    return sum(jnp.sum(jnp.tanh(v)) for v in out.values())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_finite_with_empty_neighbourhoods(dtype):
    # member 3: all incoming edges invalid; `similar`: no valid edge; job 4: no edge at all;
    # every padding node receives only padded edges.
    batch = make_batch(LAYOUT, PIECE)
    x = _inputs(1)
    layer = HGTConv(DIM, HEADS, dtype=dtype)
    params = _random_params(layer, 1, x, batch.graph)
    grads = jax.jit(jax.grad(lambda p, x: _layer_loss(layer, p, x, batch.graph), argnums=(0, 1)))(params, x)
    for leaf in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(leaf, np.float32)).all()
    # The relation with no valid edge receives no gradient at all.
    assert not np.asarray(grads[0]["att_similar"]).any() and not np.asarray(grads[0]["msg_similar"]).any()


# bf16 unit roundoff: bf16 keeps 8 significant bits, so round-to-nearest has |fl(x) - x| <= U |x|.
U = 2.0**-8


def _to_bf16_grid(tree):
    """float32 values that bf16 represents exactly (round to nearest even)."""
    return jax.tree.map(lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32)), tree)


# One compile per dtype for every seed.
_apply_in = jax.jit(
    lambda p, x, g, dtype: HGTConv(DIM, HEADS, dtype=dtype).apply({"params": p}, x, g, LAYOUT),
    static_argnums=3,
)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_bfloat16_error_is_within_the_rounding_bound(seed):
    """bf16 compute against float32 compute on the same inputs and parameters (both on bf16's grid,
    so the casts are exact and the difference is the bf16 path's own rounding).

    Norm-wise over the real nodes of every receiving type: e = ||bf16 - f32|| / ||branch||, where
    branch = sigmoid(skip) * out[t] (the part of H'[t] computed in bf16; the skip's mix with the
    float32 input is float32) or out[t] itself without a skip.
    - A rounding to bf16 gives x(1 + d), |d| <= U / m for mantissa m in [1, 2): rms(d) <= U/sqrt(3).
    - A K-term dot product of bf16 operands accumulates in fp32 (XLA; tests/test_mistral.py checks
      it): one output rounding, plus <= K * 2^-24 relative from the accumulation (K <= 8 here:
      negligible); accumulated in bf16 it would grow like sqrt(K) * U.
    - Roundings on the path (star_jax/gnn/hgt.py): kqv Dense 2 (dot, bias add) for each of k, q, v;
      k @ W_att 1; v @ W_msg 1 (logits, softmax and aggregation are float32); GELU's cast 1; out
      Dense 2 (dot, bias add): R = 11. Each reaches the branch with gain <= 1 (softmax weights sum
      to 1, random linear maps keep relative errors) and they are independent:
      E[e^2] <= R U^2 / 3, so e <= U sqrt(11 / 3) = 1.91 U.
    Measured: e = 0.52-0.85 U (seeds 2-7). By hand, on the bf16 path only: a missing 1/sqrt(D) gives
    11.6 U and fails; logits, softmax and aggregation all in bf16 give 1.36 U and pass (each adds a
    few roundings of its own size). Lower bound: the out Dense's last rounding reaches the branch
    with gain 1 and rms >= U/2/sqrt(3) (m < 2), so e >= 0.29 U; computing in float32 (e = 0) or
    float16 (e = 0.09 U) fails it.
    """
    batch = make_batch(LAYOUT, PIECE)
    x = _to_bf16_grid(_inputs(seed))
    params = _to_bf16_grid(_random_params(HGTConv(DIM, HEADS), seed, x, batch.graph))
    f32 = _apply_in(params, x, batch.graph, jnp.float32)
    bf16 = _apply_in(params, x, batch.graph, jnp.bfloat16)
    assert bf16["company"].dtype == jnp.bfloat16  # no skip there: the Dense's output dtype
    errors, branches = [], []
    for t in ("member", "job", "company"):
        n = len(PIECE.nodes[t])
        want, got = np.asarray(f32[t][:n]), np.asarray(bf16[t][:n], np.float32)
        if IN_DIM[t] == DIM:
            gate = 1 / (1 + np.exp(-params[f"skip_{t}"]))
            want_branch = want - (1 - gate) * x[t][:n]
        else:
            want_branch = want
        errors.append((got - want).ravel())
        branches.append(want_branch.ravel())
    e = np.linalg.norm(np.concatenate(errors)) / np.linalg.norm(np.concatenate(branches))
    rounding_count = 11
    assert U / (2 * np.sqrt(3)) < e < U * np.sqrt(rounding_count / 3), e / U
