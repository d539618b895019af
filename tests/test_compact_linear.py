"""`star-jax embed --dims D --reduce linear`: a D x dim map learned from the train pairs.

- on a planted toy whose pair signal lives in a known low-variance subspace (the other dimensions
  carry more variance and no signal), the linear map ranks held-out pairs far better than PCA at
  the same D (scikit-learn's PCA and AUC as oracles);
- the fit is deterministic given its seed, recorded in the manifest, and kept on refresh;
- the CLI reads the pairs from `--data`'s positive train labels (pandas as the oracle).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_fixtures import write_tiny_data
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from star_jax.cli import main as cli_main
from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, text_hash
from star_jax.store.compact import LinearFit, write_compact

N, SIGNAL, NOISE, DIMS = 600, 4, 20, 4  # pairs; signal dims (std 1); noise dims (std 3); kept dims
TRAIN = 400  # pairs 0..399 fit the map, 400..599 are held out
CFG = StoreConfig(dtype="float32", shard_rows=128)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_parent(root, vectors: dict[str, np.ndarray], version: str = "full", salt: str = "") -> None:
    """Write (or refresh) `version`; the job rows' text hashes change with `salt`."""
    spec = EmbeddingSpec(model="test/toy", adapter=None, tokenizer="none", max_len=0, pooling="test",
                         dim=next(iter(vectors.values())).shape[1])
    inputs = {t: (np.arange(len(v), dtype=np.int64),
                  text_hash(f"{t}{i}{salt * (t == 'job')}" for i in range(len(v))))
              for t, v in vectors.items()}
    writer = EmbeddingWriter.open(root, version, spec, inputs, CFG)
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][block.positions])
    writer.publish()


def planted(seed: int = 0) -> dict[str, np.ndarray]:
    """Member i and job i are a pair: they share a SIGNAL-d vector (plus a little noise); the other
    NOISE dims are independent and 3x larger, so PCA keeps them and drops the signal."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(N, SIGNAL))
    out = {}
    for t in ("member", "job"):
        signal = shared + 0.3 * rng.normal(size=(N, SIGNAL))
        x = np.concatenate([signal, 3.0 * rng.normal(size=(N, NOISE))], axis=1)
        rotation = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(SIGNAL + NOISE,) * 2))[0]
        out[t] = (x @ rotation + 0.5).astype(np.float32)  # a shared rotation and offset: not axis-aligned
    return out


def held_out_auc(member: np.ndarray, job: np.ndarray) -> float:
    """AUC of the cosine of held-out pairs (i, i) against (i, a random other held-out job)."""
    rng = np.random.default_rng(7)
    rows = np.arange(TRAIN, N)
    other = rows[(np.arange(len(rows)) + rng.integers(1, len(rows), len(rows))) % len(rows)]
    m, j = _unit(member), _unit(job)
    pos, neg = np.sum(m[rows] * j[rows], 1), np.sum(m[rows] * j[other], 1)
    return roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear") / "store"
    vectors = planted()
    write_parent(root, vectors)
    pairs = (np.arange(TRAIN, dtype=np.int64), np.arange(TRAIN, dtype=np.int64))
    write_compact(root, "full", "lin4", DIMS, reduce="linear", config=CFG, pairs=pairs)
    write_compact(root, "full", "pca4", DIMS, reduce="pca", config=CFG)
    return {"root": root, "vectors": vectors, "pairs": pairs}


def stored(root, version: str) -> dict[str, np.ndarray]:
    store = EmbeddingStore.open(root, version)
    return {t: store.lookup(t, np.arange(N)) for t in ("member", "job")}


def test_linear_map_beats_pca_at_equal_dims_on_held_out_pairs(toy):
    v = toy["vectors"]
    both = np.concatenate([v["member"], v["job"]]).astype(np.float64)
    pca = PCA(n_components=DIMS, svd_solver="full").fit(both)
    want_pca = {t: _unit(pca.transform(v[t].astype(np.float64))) for t in v}
    got_pca = stored(toy["root"], "pca4")
    for t in v:  # the pca version is scikit-learn's transform (so the comparison below is fair)
        np.testing.assert_allclose(got_pca[t], want_pca[t], atol=2e-5)
    lin = stored(toy["root"], "lin4")
    auc = {"full": held_out_auc(v["member"], v["job"]),
           "pca": held_out_auc(want_pca["member"], want_pca["job"]),
           "linear": held_out_auc(lin["member"], lin["job"])}
    print({k: round(x, 4) for k, x in auc.items()})
    assert auc["pca"] < 0.65, auc  # PCA keeps the noise: near chance on the pairs
    assert auc["linear"] >= 0.9, auc
    assert auc["linear"] >= auc["pca"] + 0.25, auc
    assert auc["linear"] > auc["full"], auc  # dropping the noise dims helps past full width


def test_linear_fit_is_recorded_deterministic_and_kept_on_refresh(toy):
    root, pairs = toy["root"], toy["pairs"]
    record = EmbeddingStore.open(root, "lin4").manifest["compact"]
    assert {k: record[k] for k in ("parent", "parent_dim", "dims", "reduce")} == {
        "parent": "full", "parent_dim": SIGNAL + NOISE, "dims": DIMS, "reduce": "linear"}
    assert record["fit_pairs"] == TRAIN and record["seed"] == 0 and record["steps"] == LinearFit().steps
    assert record["loss_last"] < record["loss_first"]
    first = stored(root, "lin4")
    write_compact(root, "full", "lin4-again", DIMS, reduce="linear", config=CFG, pairs=pairs)
    write_compact(root, "full", "lin4-seed1", DIMS, reduce="linear", config=CFG, pairs=pairs,
                  linear=LinearFit(seed=1))
    again, other = stored(root, "lin4-again"), stored(root, "lin4-seed1")
    for t in first:
        np.testing.assert_array_equal(again[t], first[t])
        assert not np.allclose(other[t], first[t], atol=1e-3)
    assert EmbeddingStore.open(root, "lin4-seed1").manifest["compact"]["seed"] == 1
    # A refresh after new job texts rewrites only the jobs, with the version's own map (other pairs
    # given now are not fitted on).
    new = {**toy["vectors"], "job": toy["vectors"]["job"][::-1].copy()}
    write_parent(root, new, salt="x")
    report = write_compact(root, "full", "lin4-again", DIMS, reduce="linear", config=CFG,
                           pairs=(pairs[0][:10], pairs[1][:10]))
    assert report.embedded["job"] == N and report.embedded.get("member", 0) == 0
    refreshed = stored(root, "lin4-again")
    assert EmbeddingStore.open(root, "lin4-again").manifest["compact"]["fit_pairs"] == TRAIN
    np.testing.assert_array_equal(refreshed["member"], first["member"])
    np.testing.assert_allclose(refreshed["job"], first["job"][::-1], atol=1e-6)
    with pytest.raises(StarError, match="needs the train pairs"):
        write_compact(root, "full", "lin-nopairs", DIMS, reduce="linear", config=CFG)


def test_cli_fits_on_the_positive_train_labels(tmp_path, capsys):
    data = write_tiny_data(tmp_path / "data", members=40, jobs=30, seed=3)
    rng = np.random.default_rng(0)
    write_parent(tmp_path / "store", {"member": rng.normal(size=(40, 12)).astype(np.float32),
                                      "job": rng.normal(size=(30, 12)).astype(np.float32)})
    base = ["embed", "--store", str(tmp_path / "store"), "--parent", "full", "--dims", "3",
            "--reduce", "linear", "--set", "store.dtype=float32"]
    assert cli_main([*base, "--version", "lin3", "--data", str(data)]) == 0
    labels = pd.read_parquet(data / "labels" / "pairs.parquet")
    positives = labels[(labels.split == "train") & (labels.label > 0)]
    record = EmbeddingStore.open(tmp_path / "store", "lin3").manifest["compact"]
    assert record["reduce"] == "linear" and record["fit_pairs"] == len(positives)
    capsys.readouterr()
    assert cli_main([*base, "--version", "lin3b"]) == 2  # no --data and no data.dir
    assert "data.dir" in capsys.readouterr().err
