"""Compact vectors: Matryoshka towers (`llm_train.matryoshka_dims`) and `star-jax embed --dims`.

- the Matryoshka loss is the mean of the plain loss at full width and at each renormalised prefix;
- on the planted toy of tests/claims_fixtures.py, a Matryoshka run's small prefixes rank the test
  pairs better than the prefixes and random coordinates of a run trained without it;
- a `--dims` version records its parent and D and holds the renormalised prefix of the parent's
  rows (numpy); a `--reduce pca` version holds scikit-learn's PCA transform, renormalised;
- `store migrate` maps between a full and a compact version in both directions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from claims_fixtures import tiny_towers, write_planted_data
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from star_jax.cli import main as cli_main
from star_jax.config import LLMTrainConfig, StoreConfig, load_config
from star_jax.data.tables import read_labels
from star_jax.errors import StarError
from star_jax.llm.embed import embed_store
from star_jax.llm.losses import biencoder_losses, id_keys
from star_jax.llm.train import train_llm
from star_jax.store import EmbeddingStore, fit_version_map
from star_jax.store.compact import write_compact

DATA_SEED = 1  # the margins below come from data seed 0
SMALL = 2  # the prefix width compared (the toy's towers are 32-d, its pairing has 4 clusters)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_matryoshka_loss_is_the_mean_over_widths():
    rng = np.random.default_rng(0)
    b, d = 8, 16
    member, job = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    batch = {"label": jnp.asarray(rng.integers(0, 2, b), jnp.int32), "valid": jnp.ones(b, bool),
             "member_key": jnp.asarray(id_keys(np.arange(b) // 2)),
             "job_key": jnp.asarray(id_keys(np.arange(b)))}
    head = {"log_scale": jnp.asarray(2.0), "bias": jnp.asarray(-1.0)}
    plain = LLMTrainConfig(infonce_weight=0.5)
    cfg = dataclasses.replace(plain, matryoshka_dims=[4, 8])
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    got = biencoder_losses(f32(member), f32(job), head, batch, cfg)
    per_width = [biencoder_losses(f32(_unit(member[:, :w])), f32(_unit(job[:, :w])), head, batch, plain)
                 ["loss"] for w in (d, 4, 8)]
    np.testing.assert_allclose(float(got["loss"]), np.mean([float(x) for x in per_width]), rtol=1e-5)
    np.testing.assert_allclose(float(got["loss_d4"]), float(per_width[1]), rtol=1e-5)
    full = biencoder_losses(f32(member), f32(job), head, batch, plain)
    for k in ("bce", "triplet", "infonce"):  # the named terms stay the full-width ones
        assert float(got[k]) == float(full[k])
    assert float(got["loss_full"]) == float(full["loss"])


@pytest.mark.parametrize("dims", [[0], [8, 4], [4, 4]])
def test_matryoshka_dims_must_increase(dims):
    with pytest.raises(StarError, match="llm_train.matryoshka_dims"):
        load_config(None, [f"llm_train.matryoshka_dims={dims}"])


def _stored(store: EmbeddingStore, data, *splits: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = pd.concat([read_labels(data, split, ["member_id", "job_id", "label"]) for split in splits])
    return (store.lookup("member", df["member_id"].to_numpy()), store.lookup("job", df["job_id"].to_numpy()),
            df["label"].to_numpy())


def _auc(member: np.ndarray, job: np.ndarray, label: np.ndarray, cols) -> float:
    """scikit-learn's AUC of the cosine of the renormalised columns `cols` (numpy)."""
    return roc_auc_score(label, np.sum(_unit(member[:, cols]) * _unit(job[:, cols]), axis=1))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two fine-tunings of one random-init base on the planted toy, with and without Matryoshka
    prefixes, each embedded into the store (float32) as version `plain` / `mrl`."""
    tmp = tmp_path_factory.mktemp("toy")
    # 96 cold members with 8 pairs each: 768 val + test pairs to rank, so AUC gaps are not noise.
    data = write_planted_data(tmp / "data", seed=DATA_SEED, filler=1, cold=96, pairs_per_cold=8)
    tok, cfg = tiny_towers(tmp, data)
    cfg.store = StoreConfig(dtype="float32", shard_rows=32)
    # As tests/test_claims.py (InfoNCE alone from a random-init base), at half its learning rate for
    # twice the steps: at 1e-2 some Matryoshka runs of the toy diverged.
    cfg.llm_train = LLMTrainConfig(
        steps=60, batch_size=16, lr=5e-3, warmup_steps=3, log_every=10, eval_every=0, checkpoint_every=30,
        eval_batch_size=64, calibration_pairs=0, bce_weight=0.0, triplet_weight=0.0, infonce_weight=1.0,
    )
    runs = {"plain": cfg, "mrl": dataclasses.replace(
        cfg, llm_train=dataclasses.replace(cfg.llm_train, matryoshka_dims=[SMALL, 4]))}
    results = {}
    for name, c in runs.items():
        results[name] = train_llm(c, data, tok, tmp / "base", tmp / name, devices=jax.devices()[:1])
        embed_store(c, data, tok, tmp / "base", tmp / "store", name, adapters=tmp / name,
                    devices=jax.devices()[:1])
    return {"data": data, "store": tmp / "store", "results": results}


def test_matryoshka_prefixes_beat_truncation(toy):
    data = toy["data"]
    stores = {name: EmbeddingStore.open(toy["store"], name) for name in ("mrl", "plain")}
    for name, store in stores.items():  # the stored vectors score as training's own evaluation did
        assert _auc(*_stored(store, data, "test"), slice(None)) == pytest.approx(
            toy["results"][name]["test_auc"], abs=1e-4)
    mrl, plain = (_stored(stores[name], data, "val", "test") for name in ("mrl", "plain"))
    rng = np.random.default_rng(0)
    auc = {}
    for d in (SMALL, 4):
        subsets = [sorted(rng.choice(32, d, replace=False)) for _ in range(20)]
        auc[f"mrl_prefix{d}"] = _auc(*mrl, list(range(d)))
        auc[f"plain_prefix{d}"] = _auc(*plain, list(range(d)))
        auc[f"plain_random{d}"] = float(np.mean([_auc(*plain, c) for c in subsets]))
    print({k: round(v, 4) for k, v in auc.items()})
    # Data seed 0 measured at D=2: Matryoshka prefix 0.777, plain prefix 0.656, plain random
    # coordinates 0.644 (gaps +0.12, +0.13); at D=4 the gaps are +0.04, +0.05 (not asserted).
    assert auc[f"mrl_prefix{SMALL}"] >= auc[f"plain_prefix{SMALL}"] + 0.05, auc
    assert auc[f"mrl_prefix{SMALL}"] >= auc[f"plain_random{SMALL}"] + 0.05, auc


def test_dims_version_is_the_renormalised_prefix(toy, capsys):
    root = toy["store"]
    cli_main(["embed", "--store", str(root), "--parent", "mrl", "--dims", "4", "--version", "mrl-d4",
              "--set", "store.dtype=float32"])
    parent, compact = EmbeddingStore.open(root, "mrl"), EmbeddingStore.open(root, "mrl-d4")
    assert compact.manifest["compact"] == {"parent": "mrl", "parent_dim": 32, "dims": 4, "reduce": "prefix"}
    assert compact.dim == 4 and compact.manifest["adapter"] == parent.manifest["adapter"]
    assert "compact" not in parent.manifest  # full versions keep the manifest they had
    cli_main(["store", "info", "--store", str(root), "--version", "mrl-d4"])
    assert '"parent": "mrl"' in capsys.readouterr().out  # `store info` shows what it derives from
    for t in ("member", "job"):
        ids = parent.ids(t)
        np.testing.assert_array_equal(compact.ids(t), ids)
        np.testing.assert_array_equal(compact.text_hashes(t), parent.text_hashes(t))
        np.testing.assert_allclose(compact.lookup(t, ids), _unit(parent.lookup(t, ids)[:, :4]), rtol=1e-6,
                                   atol=1e-7)
    # Writing it again finds every row current; another reduction under the same name is refused.
    again = write_compact(root, "mrl", "mrl-d4", 4, config=StoreConfig(dtype="float32"))
    assert again.generation == compact.manifest["generation"] and not any(again.embedded.values())
    with pytest.raises(StarError, match="mrl-d4: already the prefix reduction"):
        write_compact(root, "mrl", "mrl-d4", 8, config=StoreConfig(dtype="float32"))
    with pytest.raises(StarError, match="--dims 32: must be at least 1 and below"):
        write_compact(root, "mrl", "mrl-d32", 32, config=StoreConfig(dtype="float32"))
    with pytest.raises(StarError, match="--parent mrl-d4: itself a compact version of mrl"):
        write_compact(root, "mrl-d4", "mrl-d2", 2, config=StoreConfig(dtype="float32"))


def test_pca_version_is_sklearns_transform(toy):
    root = toy["store"]
    write_compact(root, "plain", "plain-pca6", 6, reduce="pca", config=StoreConfig(dtype="float32"))
    parent, compact = EmbeddingStore.open(root, "plain"), EmbeddingStore.open(root, "plain-pca6")
    record = compact.manifest["compact"]
    assert (record["parent"], record["dims"], record["reduce"]) == ("plain", 6, "pca")
    rows = {t: parent.lookup(t, parent.ids(t)).astype(np.float64) for t in ("member", "job")}
    pca = PCA(n_components=6, svd_solver="full").fit(np.concatenate([rows["member"], rows["job"]]))
    assert record["fit_rows"] == pca.n_samples_
    assert record["explained_variance_ratio"] == pytest.approx(pca.explained_variance_ratio_.sum(), rel=1e-6)
    for t in ("member", "job"):
        want = _unit(pca.transform(rows[t]))
        np.testing.assert_allclose(compact.lookup(t, parent.ids(t)), want, atol=2e-5)


def test_migrate_between_full_and_compact_versions(toy, capsys):
    root = toy["store"]
    write_compact(root, "mrl", "mrl-d8", 8, config=StoreConfig(dtype="float32"))
    capsys.readouterr()  # `star-jax store migrate` fits the same map as the API below
    assert cli_main(["store", "migrate", "--store", str(root), "--from", "mrl-d8", "--to", "mrl",
                     "--method", "ridge"]) == 0
    printed = capsys.readouterr().out
    down = fit_version_map(root, "mrl-d8", "mrl", method="ridge")  # full -> compact
    assert f"holdout {down['fidelity']['holdout']:.4f}" in printed, printed
    up = fit_version_map(root, "mrl", "mrl-d8")  # compact -> full (procrustes)
    assert (down["dim_source"], down["dim_target"], up["dim_source"], up["dim_target"]) == (32, 8, 8, 32)
    full_as_compact = EmbeddingStore.open(root, "mrl", map_to="mrl-d8")
    compact_as_full = EmbeddingStore.open(root, "mrl-d8", map_to="mrl")
    ids = full_as_compact.ids("job")
    assert full_as_compact.lookup("job", ids).shape == (len(ids), 8)
    assert compact_as_full.lookup("job", ids).shape == (len(ids), 32)
    print("fidelity full->compact", down["fidelity"]["holdout"], "compact->full", up["fidelity"]["holdout"])
    # The compact rows are a renormalised linear function of the full ones: a linear map recovers
    # their direction almost exactly.
    assert down["fidelity"]["holdout"] >= 0.95, down["fidelity"]
    assert down["fidelity"]["unmapped"] is None and up["fidelity"]["overall"] > 0
