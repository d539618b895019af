"""The bi-encoder: losses against NumPy references, E5 pooling against transformers, the towers,
the `BiEncoder` bundle against its parts, and a projection head added from outside the module."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import build_checkpoint

from star_jax.config import POOLINGS, LLMConfig, LLMTrainConfig, LoraConfig
from star_jax.errors import StarError
from star_jax.llm import MistralModel, init_lora, load_mistral
from star_jax.llm.biencoder import (
    JOB,
    MEMBER,
    POOL_FNS,
    PROJECTION_FILE,
    PROJECTIONS,
    TOWERS,
    Projection,
    adapter_names,
    build_biencoder,
    encode,
    encode_towers,
    tower_adapters,
)
from star_jax.llm.losses import (
    bce_loss,
    biencoder_losses,
    id_keys,
    infonce_loss,
    init_head,
    semihard_triplet_loss,
)

# -- NumPy references, written from the definitions (not from the JAX code) ----------------------


def np_bce(m, j, label, valid, scale, bias):
    z = scale * np.sum(m * j, axis=1) + bias
    p = 1 / (1 + np.exp(-z))
    ce = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    return ce[valid].mean()


def applied_jobs(i, member_id, job_id, label, valid):
    return {job_id[k] for k in range(len(label)) if valid[k] and label[k] and member_id[k] == member_id[i]}


def np_triplet(m, j, member_id, job_id, label, valid, margin):
    """FaceNet semi-hard triplets over in-batch jobs; returns (loss, #semi-hard picks, #fallbacks)."""
    d = np.sum((m[:, None, :] - j[None, :, :]) ** 2, axis=-1)  # squared Euclidean distance
    losses, semi_count, fallback = [], 0, 0
    for i in range(len(label)):
        if not (valid[i] and label[i]):
            continue
        mine = applied_jobs(i, member_id, job_id, label, valid)
        negs = [k for k in range(len(label)) if valid[k] and job_id[k] not in mine]
        if not negs:
            continue
        semi = [k for k in negs if d[i, i] < d[i, k] < d[i, i] + margin]
        k = min(semi or negs, key=lambda k: d[i, k])
        semi_count += bool(semi)
        fallback += not semi
        losses.append(max(d[i, i] - d[i, k] + margin, 0.0))
    return (np.mean(losses) if losses else 0.0), semi_count, fallback


def np_infonce(m, j, member_id, job_id, label, valid, tau):
    losses = []
    for i in range(len(label)):
        if not (valid[i] and label[i]):
            continue
        mine = applied_jobs(i, member_id, job_id, label, valid)
        cols = [i] + [k for k in range(len(label)) if valid[k] and job_id[k] not in mine]
        logits = np.array([m[i] @ j[k] for k in cols]) / tau
        losses.append(-(logits[0] - np.log(np.sum(np.exp(logits)))))
    return np.mean(losses)


triplet = jax.jit(semihard_triplet_loss, static_argnums=6)
infonce = jax.jit(infonce_loss, static_argnums=6)


def unit(rng, n, dim):
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batch_case(seed, n=12, dim=6):
    """Unit embeddings and ids with repeated members and jobs, both labels and a fill row."""
    rng = np.random.default_rng(seed)
    member_id = rng.integers(0, 5, n) * 1_000_000_007  # beyond int32: the keys must stay exact
    job_id = rng.integers(0, 6, n) + (2**40)
    label = (rng.random(n) < 0.5).astype(np.int32)
    valid = np.ones(n, bool)
    valid[-1] = False
    m, j = unit(rng, n, dim), unit(rng, n, dim)
    j = (0.6 * j + 0.4 * m) / np.linalg.norm(0.6 * j + 0.4 * m, axis=1, keepdims=True)  # some near misses
    return m, j.astype(np.float32), member_id, job_id, label, valid


def test_bce_matches_numpy():
    m, j, _, _, label, valid = batch_case(0)
    head = init_head(LLMTrainConfig(init_logit_scale=7.0, init_logit_bias=-2.0))
    got = bce_loss(jnp.asarray(m), jnp.asarray(j), jnp.asarray(label), jnp.asarray(valid), head)
    np.testing.assert_allclose(float(got), np_bce(m, j, label, valid, 7.0, -2.0), rtol=1e-5)


def test_semihard_triplet_and_infonce_match_numpy():
    picks = fallbacks = 0
    for seed in range(12):
        m, j, mid, jid, label, valid = batch_case(seed)
        for margin in (0.2, 1.0):
            expected, semi, fall = np_triplet(m, j, mid, jid, label, valid, margin)
            picks, fallbacks = picks + semi, fallbacks + fall
            got = triplet(m, j, id_keys(mid), id_keys(jid), label, valid, margin)
            np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)
        got = infonce(m, j, id_keys(mid), id_keys(jid), label, valid, 0.1)
        np.testing.assert_allclose(float(got), np_infonce(m, j, mid, jid, label, valid, 0.1), rtol=1e-5)
    assert picks > 10 and fallbacks > 10  # both branches of the negative choice were exercised


def test_triplet_excludes_same_job_and_other_positives():
    # Member 1 applied to jobs 10 and 11; job 12 is a real negative. Row 2 repeats job 10.
    m = unit(np.random.default_rng(0), 1, 4).repeat(4, axis=0)
    j = np.stack([m[0], m[0], m[0], -m[0]])  # the non-negatives sit on top of the anchor
    member_id, job_id = np.array([1, 1, 2, 3]), np.array([10, 11, 10, 12])
    label, valid = np.array([1, 1, 0, 0]), np.ones(4, bool)
    got = triplet(m, j, id_keys(member_id), id_keys(job_id), label, valid, 0.2)
    # Only job 12 (distance 4 from both anchors) is a negative: each anchor's loss is max(0 - 4 + 0.2, 0).
    assert float(got) == 0.0
    job_id[3] = 10  # now no negative remains for either anchor: no triplet, zero loss, no NaN
    got = triplet(m, j, id_keys(member_id), id_keys(job_id), label, valid, 0.2)
    assert float(got) == 0.0


def test_loss_weights_and_gradients():
    m, j, mid, jid, label, valid = batch_case(3)
    batch = {"label": label, "valid": valid, "member_key": id_keys(mid), "job_key": id_keys(jid)}
    cfg = LLMTrainConfig(bce_weight=0.5, triplet_weight=2.0, infonce_weight=0.25, triplet_margin=0.3,
                         init_logit_scale=7.0, init_logit_bias=-2.0, infonce_temperature=0.1)
    head = init_head(cfg)
    losses = jax.jit(lambda m, j, h, b: biencoder_losses(m, j, h, b, cfg))
    terms = losses(m, j, head, batch)
    # Each term and the weighted sum against the NumPy references above.
    want = {
        "bce": np_bce(m, j, label, valid, 7.0, -2.0),
        "triplet": np_triplet(m, j, mid, jid, label, valid, 0.3)[0],
        "infonce": np_infonce(m, j, mid, jid, label, valid, 0.1),
    }
    assert set(terms) == {*want, "loss"}
    for name, value in want.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(
        float(terms["loss"]), 0.5 * want["bce"] + 2.0 * want["triplet"] + 0.25 * want["infonce"], rtol=1e-5
    )
    # The scale and bias are learnable: only BCE reaches them. With z = s * cos + b and p = sigmoid(z),
    # d BCE / dz = p - y per valid row, so d/d log s = mean((p - y) s cos) and d/d b = mean(p - y).
    grads = jax.jit(jax.grad(lambda h: losses(m, j, h, batch)["loss"]))(head)
    cos = np.sum(m * j, axis=1)[valid].astype(np.float64)
    residual = 1 / (1 + np.exp(-(7.0 * cos - 2.0))) - label[valid]
    np.testing.assert_allclose(float(grads["log_scale"]), 0.5 * np.mean(residual * 7.0 * cos), rtol=1e-4)
    np.testing.assert_allclose(float(grads["bias"]), 0.5 * np.mean(residual), rtol=1e-4)
    # Fill rows (valid = False) change nothing.
    moved = j.copy()
    moved[-1] = -moved[-1]
    again = losses(m, moved, head, batch)
    np.testing.assert_allclose(float(again["loss"]), float(terms["loss"]), rtol=1e-6)


# -- towers and pooling ---------------------------------------------------------------------------

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
EOS = PAD = 2  # as in E5-Mistral: padding with the EOS id
POOL = "last_token"  # E5's pooling, for the tests that are not about pooling


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    torch_model = build_checkpoint(path, **TINY)
    cfg, params = load_mistral(path)
    return cfg, params, torch_model


def e5_batch():
    rng = np.random.default_rng(1)
    lengths = np.array([9, 5, 12, 1])
    ids = rng.integers(3, TINY["vocab_size"], (4, 12)).astype(np.int32)
    ids[0, 3] = EOS  # an EOS inside the text: pooling by token id would stop here
    for i, n in enumerate(lengths):
        ids[i, n - 1] = EOS
        ids[i, n:] = PAD
    return ids, lengths.astype(np.int32)


@pytest.mark.parametrize("pooling", ["mean", "mean_first_last"])
def test_a_pool_mask_means_over_its_tokens_only(tiny_base, pooling):
    cfg, params, torch_model = tiny_base
    ids, lengths = e5_batch()
    pool = np.zeros(ids.shape, np.float32)
    for i, n in enumerate(lengths):
        pool[i, n // 2 : n] = 1.0  # the second half of each row's real tokens
    model = MistralModel(cfg)
    got = np.asarray(jax.jit(lambda p, i, n, m: encode(model, p, None, MEMBER, i, n, m, pooling=pooling))(
        params, ids, lengths, pool))
    # transformers reads the whole row; only the mean's weights change.
    mask = torch.from_numpy((np.arange(12)[None] < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        out = torch_model(input_ids=torch.from_numpy(ids).long(), attention_mask=mask,
                          output_hidden_states=True)
    weight = torch.from_numpy(pool)[..., None]
    unit = functools.partial(torch.nn.functional.normalize, p=2, dim=-1)
    mean = lambda x: (x * weight).sum(1) / weight.sum(1)  # noqa: E731
    last = mean(out.last_hidden_state)
    pooled = last if pooling == "mean" else unit(mean(out.hidden_states[0])) + unit(last)
    np.testing.assert_allclose(got, unit(pooled).numpy(), atol=2e-5)
    whole = np.asarray(encode(model, params, None, MEMBER, ids, lengths, pooling=pooling))
    assert np.abs(got - whole).max() > 1e-2  # the mask matters


def test_every_configurable_pooling_has_a_function():
    assert set(POOL_FNS) == set(POOLINGS)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_encode_pools_like_e5_and_sentence_transformers(tiny_base, pooling):
    cfg, params, torch_model = tiny_base
    ids, lengths = e5_batch()
    model = MistralModel(cfg)
    fn = jax.jit(lambda p, i, n: encode(model, p, None, MEMBER, i, n, pooling=pooling))
    got = np.asarray(fn(params, ids, lengths))
    assert got.dtype == np.float32
    # On transformers' MistralModel: the E5-Mistral model card's `last_token_pool`, sentence-
    # transformers' masked mean, or the mean of the embedding layer's output (hidden_states[0])
    # and of the last layer's, each normalised; then F.normalize.
    mask = torch.from_numpy((np.arange(12)[None] < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        out = torch_model(input_ids=torch.from_numpy(ids).long(), attention_mask=mask,
                          output_hidden_states=True)
    hidden, first = out.last_hidden_state, out.hidden_states[0]

    def masked_mean(x):
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    if pooling == "last_token":
        pooled = hidden[torch.arange(4), mask.sum(1) - 1]
    elif pooling == "mean":
        pooled = masked_mean(hidden)
    else:
        assert pooling == "mean_first_last"
        unit = functools.partial(torch.nn.functional.normalize, p=2, dim=-1)
        pooled = unit(masked_mean(first)) + unit(masked_mean(hidden))
    expected = torch.nn.functional.normalize(pooled, p=2, dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def trained_adapters(cfg, lora):
    """Adapters with non-zero B, as after training."""
    names = adapter_names(lora)
    keys = jax.random.split(jax.random.key(0), len(names))
    return {
        n: jax.tree.map(lambda x, k=k: x + 0.3 * jax.random.normal(k, x.shape), init_lora(k, cfg, lora))
        for n, k in zip(names, keys)
    }


def test_shared_adapter_embeds_both_towers_in_one_pass(tiny_base):
    cfg, params, _ = tiny_base
    lora = LoraConfig(rank=4, shared=True, targets=["q", "v"])
    model = MistralModel(cfg, lora)
    adapters = trained_adapters(cfg, lora)
    assert set(adapters) == {"shared"}
    ids, lengths = e5_batch()
    batch = {"member_ids": ids, "member_len": lengths, "job_ids": ids[::-1], "job_len": lengths[::-1]}

    @jax.jit
    def run(adapters):
        alone = [encode(model, params, adapters, t, batch[f"{t}_ids"], batch[f"{t}_len"], pooling=POOL)
                 for t in TOWERS]
        return encode_towers(model, params, adapters, batch, pooling=POOL), alone

    (member, job), (member_alone, job_alone) = run(adapters)
    np.testing.assert_allclose(member, member_alone, atol=1e-5)
    np.testing.assert_allclose(job, job_alone, atol=1e-5)
    np.testing.assert_allclose(job, member[::-1], atol=1e-5)  # one adapter: same text, same vector
    frozen = jax.jit(lambda: encode(MistralModel(cfg), params, None, MEMBER, ids, lengths, pooling=POOL))()
    assert not np.allclose(member, frozen, atol=1e-3)


def test_separate_adapters_train_only_their_tower(tiny_base):
    cfg, params, _ = tiny_base
    lora = LoraConfig(rank=4, shared=False, targets=["q", "v"])
    model = MistralModel(cfg, lora)
    adapters = trained_adapters(cfg, lora)
    assert set(adapters) == {"member", "job"}
    ids, lengths = e5_batch()
    batch = {"member_ids": ids, "member_len": lengths, "job_ids": ids, "job_len": lengths}

    @jax.jit
    def run(adapters):
        job_loss = lambda a: jnp.sum(encode_towers(model, params, a, batch, pooling=POOL)[1][:, 0])  # noqa: E731
        return encode_towers(model, params, adapters, batch, pooling=POOL), jax.grad(job_loss)(adapters)

    (member, job), grads = run(adapters)
    assert not np.allclose(member, job, atol=1e-3)  # same text, different adapters
    touched = {n for n in adapters if any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[n]))}
    assert touched == {"job"}
    bare = adapters["member"]  # a single LoRA tree (e.g. from import_peft) serves any tower
    assert tower_adapters(bare, JOB) is bare and tower_adapters(None, JOB) is None


# -- the BiEncoder bundle -------------------------------------------------------------------------


def randomized(params, seed=1, scale=0.3):
    """Every adapter (and head) leaf moved off its init, as after training."""
    leaves, tree = jax.tree.flatten(params["adapters"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [x + scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return {**params, "adapters": jax.tree.unflatten(tree, moved)}


def pair_batch():
    ids, lengths = e5_batch()
    member_id, job_id = np.array([1, 1, 2, 3]), np.array([10, 11, 12, 13])
    return {"member_ids": ids, "member_len": lengths, "job_ids": ids[::-1], "job_len": lengths[::-1],
            "label": np.array([1, 0, 1, 1], np.int32), "valid": np.ones(4, bool),
            "member_key": id_keys(member_id), "job_key": id_keys(job_id)}


@pytest.mark.parametrize("shared", [True, False])
def test_biencoder_is_its_parts(tiny_base, shared):
    """init, encode and loss of the bundle are the free functions (same rngs, same numbers)."""
    cfg, base, _ = tiny_base
    lora = LoraConfig(rank=4, shared=shared, targets=["q", "v"])
    train = LLMTrainConfig(infonce_weight=0.5)
    bienc = build_biencoder(LLMConfig(pooling=POOL), lora, train, arch=cfg)
    assert bienc.dim == cfg.hidden_size and bienc.projection is None
    params = bienc.init(jax.random.key(7))
    assert set(params) == {"adapters", "head"}  # no projection entry: checkpoints keep their tree
    keys = jax.random.split(jax.random.key(7), len(adapter_names(lora)))
    for name, k in zip(adapter_names(lora), keys):
        want = init_lora(k, cfg, lora)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params["adapters"][name], want)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params["head"], init_head(train))

    params, batch, model = randomized(params), pair_batch(), MistralModel(cfg, lora)
    loss, aux = jax.jit(bienc.loss)(params, base, batch, jax.random.key(0))
    member, job = encode_towers(model, base, params["adapters"], batch, pooling=POOL)
    terms = biencoder_losses(member, job, params["head"], batch, train)
    np.testing.assert_allclose(float(loss), float(terms["loss"]), rtol=1e-6)
    assert set(aux) == {"bce", "triplet", "infonce", "logit_scale", "logit_bias"}
    ids, lengths = e5_batch()
    for tower in TOWERS:
        got = bienc.encode(params, base, tower, ids, lengths)
        np.testing.assert_allclose(got, encode(model, base, params["adapters"], tower, ids, lengths,
                                               pooling=POOL), atol=1e-6)
        # What one tower runs with encodes alike under any tower name (one jitted function serves both).
        one = bienc.tower_params(params, tower)
        np.testing.assert_allclose(bienc.encode(one, base, MEMBER, ids, lengths), got, atol=1e-6)
    zeros = bienc.frozen(params)  # adapters at zero: the base model's own embedding
    frozen = encode(MistralModel(cfg), base, None, JOB, ids, lengths, pooling=POOL)
    np.testing.assert_allclose(bienc.encode(zeros, base, JOB, ids, lengths), frozen, atol=1e-5)


def test_default_export_is_peft_adapters_and_reloads(tiny_base, tmp_path):
    cfg, base, _ = tiny_base
    lora = LoraConfig(rank=4, targets=["q", "v"])
    bienc = build_biencoder(LLMConfig(pooling=POOL), lora, LLMTrainConfig(), arch=cfg)
    params = randomized(bienc.init(jax.random.key(0)))
    bienc.export(params, tmp_path / "adapters")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["adapters/shared/adapter_config.json", "adapters/shared/adapter_model.safetensors"]
    loaded = bienc.load(tmp_path / "adapters")
    assert set(loaded) == {"adapters"}  # the BCE head belongs to the loss: result.json records it
    jax.tree.map(np.testing.assert_array_equal, loaded["adapters"], params["adapters"])
    other = build_biencoder(LLMConfig(pooling=POOL), LoraConfig(rank=2, targets=["q", "v"]),
                            LLMTrainConfig(), arch=cfg)
    with pytest.raises(StarError, match="adapters of"):
        other.load(tmp_path / "adapters")


# A projection head written outside star_jax: a linear map of the pooled vector to 8 dimensions.
def _toy_init(rng, hidden):
    return {"kernel": jax.random.normal(rng, (hidden, 8)) / np.sqrt(hidden), "bias": jnp.zeros(8)}


TOY = Projection("toy", _toy_init, lambda p, x: x @ p["kernel"] + p["bias"])


def test_a_projection_head_is_trained_exported_and_reloaded(tiny_base, tmp_path):
    cfg, base, _ = tiny_base
    lora = LoraConfig(rank=4, shared=False, targets=["q", "v"])
    bienc = build_biencoder(LLMConfig(pooling=POOL), lora, LLMTrainConfig(), arch=cfg, projection=TOY)
    assert bienc.dim == 8
    plain = build_biencoder(LLMConfig(pooling=POOL), lora, LLMTrainConfig(), arch=cfg)
    params = bienc.init(jax.random.key(3))
    # Initialised beside the adapters, which draw exactly as without a head.
    assert params["projection"]["kernel"].shape == (cfg.hidden_size, 8)
    jax.tree.map(np.testing.assert_array_equal, params["adapters"], plain.init(jax.random.key(3))["adapters"])
    params = randomized(params)

    # Used by encode: unit vectors of the head's width, the pooled vector mapped before the norm.
    ids, lengths = e5_batch()
    vectors = np.asarray(bienc.encode(params, base, MEMBER, ids, lengths))
    assert vectors.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    model = MistralModel(cfg, lora)
    head = lambda x: TOY.apply(params["projection"], x)
    np.testing.assert_allclose(vectors, encode(model, base, params["adapters"], MEMBER, ids, lengths,
                                               pooling=POOL, head=head), atol=1e-6)
    # ... and trained: the loss reaches it.
    grads = jax.grad(lambda p: bienc.loss(p, base, pair_batch(), jax.random.key(0))[0])(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["projection"]))

    # Exported in its own file beside the PEFT adapters, reloaded equal, encoding the same.
    bienc.export(params, tmp_path / "adapters")
    assert (tmp_path / "adapters" / PROJECTION_FILE).is_file()
    assert {p.name for p in (tmp_path / "adapters").iterdir()} == {"member", "job", PROJECTION_FILE}
    loaded = bienc.load(tmp_path / "adapters")
    jax.tree.map(np.testing.assert_array_equal, loaded["projection"], params["projection"])
    jax.tree.map(np.testing.assert_array_equal, loaded["adapters"], params["adapters"])
    for tower in TOWERS:
        np.testing.assert_array_equal(bienc.encode(loaded, base, tower, ids, lengths),
                                      bienc.encode(params, base, tower, ids, lengths))
    # An export and a bi-encoder that disagree about the head fail in one line.
    with pytest.raises(StarError, match="llm.projection is none"):
        plain.load(tmp_path / "adapters")
    plain.export(plain.init(jax.random.key(0)), tmp_path / "plain")
    with pytest.raises(StarError, match=f"{PROJECTION_FILE}: not found"):
        bienc.load(tmp_path / "plain")


def test_a_registered_projection_head_is_chosen_by_the_config(tiny_base, monkeypatch):
    cfg, _, _ = tiny_base
    monkeypatch.setitem(PROJECTIONS, "toy", TOY)
    llm = LLMConfig(pooling=POOL)
    llm.projection = "toy"  # the config field (`llm.projection`, default "none") names the head
    bienc = build_biencoder(llm, LoraConfig(rank=4), LLMTrainConfig(), arch=cfg)
    assert bienc.projection is TOY and bienc.dim == 8
    assert "projection" in bienc.init(jax.random.key(0))
    assert build_biencoder(llm, None, LLMTrainConfig(), arch=cfg).projection is None  # the frozen base
    llm.projection = "nope"
    with pytest.raises(StarError, match="llm.projection: unknown head 'nope'"):
        build_biencoder(llm, LoraConfig(rank=4), LLMTrainConfig(), arch=cfg)


def test_the_configs_head_names_are_the_registered_heads():
    from star_jax import config
    from star_jax.llm import biencoder

    assert set(config.PROJECTIONS) == {"none", *biencoder.PROJECTIONS}
    with pytest.raises(StarError, match="llm.projection: unknown head 'nope'"):
        config.load_config(None, ["llm.projection=nope"])


def test_a_pool_section_must_be_a_regex_with_a_group():
    from star_jax import config

    pattern = r"\nRequirements\n(.*)"  # a regex's own \n matches a newline
    assert config.load_config(None, [f"llm.job_pool={pattern}"]).llm.job_pool == pattern
    with pytest.raises(StarError, match="llm.member_pool: not a regex"):
        config.load_config(None, ["llm.member_pool=(skills"])
    with pytest.raises(StarError, match="llm.job_pool: 'skills' has no group"):
        config.load_config(None, ["llm.job_pool=skills"])


def test_a_trained_embedding_table_starts_as_the_base_learns_and_reloads(tiny_base, tmp_path):
    """`lora.modules_to_save: [embed_tokens]`: each adapter carries an fp32 copy of the base's table,
    so step 0 encodes as the base; the loss trains it; `frozen` drops it; export and load keep it."""
    cfg, base, _ = tiny_base
    lora = LoraConfig(rank=4, targets=["q", "v"], modules_to_save=["embed_tokens"])
    bienc = build_biencoder(LLMConfig(pooling="mean"), lora, LLMTrainConfig(), arch=cfg)
    with pytest.raises(ValueError, match="modules_to_save"):
        bienc.init(jax.random.key(0))
    params = bienc.init(jax.random.key(0), base=base)
    table = params["adapters"]["shared"]["embed_tokens"]["embedding"]
    assert table.dtype == jnp.float32
    np.testing.assert_array_equal(table, np.asarray(base["embed_tokens"]["embedding"], np.float32))
    ids, lengths = e5_batch()
    frozen = bienc.frozen(params)
    assert "embed_tokens" not in frozen["adapters"]["shared"]
    at_base = np.asarray(bienc.encode(frozen, base, MEMBER, ids, lengths))
    np.testing.assert_array_equal(bienc.encode(params, base, MEMBER, ids, lengths), at_base)

    grads = jax.grad(lambda p: bienc.loss(p, base, pair_batch(), jax.random.key(0))[0])(params)
    grad = np.asarray(grads["adapters"]["shared"]["embed_tokens"]["embedding"])
    # Only the rows of tokens in the batch get a gradient.
    used = np.zeros(cfg.vocab_size, bool)
    used[np.concatenate([ids[i, :n] for i, n in enumerate(lengths)])] = True
    assert np.abs(grad[used]).max() > 0 and not grad[~used].any()

    moved = {**params, "adapters": {"shared": {**params["adapters"]["shared"],
                                               "embed_tokens": {"embedding": table + 0.3}}}}
    assert np.abs(np.asarray(bienc.encode(moved, base, MEMBER, ids, lengths))
                  - np.asarray(bienc.encode(params, base, MEMBER, ids, lengths))).max() > 1e-3
    np.testing.assert_array_equal(bienc.encode(bienc.frozen(moved), base, MEMBER, ids, lengths), at_base)

    bienc.export(moved, tmp_path / "adapters")
    loaded = bienc.load(tmp_path / "adapters")
    jax.tree.map(np.testing.assert_array_equal, loaded["adapters"], moved["adapters"])
    plain = build_biencoder(LLMConfig(pooling="mean"), LoraConfig(rank=4, targets=["q", "v"]),
                            LLMTrainConfig(), arch=cfg)
    with pytest.raises(StarError, match="adapters of"):
        plain.load(tmp_path / "adapters")
