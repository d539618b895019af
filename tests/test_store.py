"""EmbeddingStore: round trips, incremental refresh, crash safety, concurrent readers, migration, errors.

The multi-process tests run `tests/store_worker.py`, whose texts and vectors are deterministic, so
the parent and a reader process can each check every stored row against what it must hold.
Migration is checked against scikit-learn's Ridge and SciPy's orthogonal Procrustes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest
import scipy.linalg
import sklearn.linear_model
import store_worker as sw  # tests/ is on sys.path under pytest's default import mode
import tensorstore as ts

from star_jax import cli, config
from star_jax.config import StoreConfig, load_config
from star_jax.errors import StarError
from star_jax.store import (
    EmbeddingSpec,
    EmbeddingStore,
    EmbeddingWriter,
    StoreRoot,
    fit_version_map,
    list_versions,
    load_version_map,
    text_hash,
)
from star_jax.store.migrate import holdout_mask

WORKER = os.path.join(os.path.dirname(__file__), "store_worker.py")
SMALL = StoreConfig(shard_rows=32, chunk_rows=8)


def spec(dim: int = 16, **kw) -> EmbeddingSpec:
    fields = dict(model="tiny", adapter="step-1", tokenizer="bpe-1", max_len=64, pooling="last_token")
    return EmbeddingSpec(**{**fields, "dim": dim, **kw})


def write_version(root, version, data, cfg=SMALL, spec_=None, dim=None):
    """data[type] = (ids, texts, vectors float32 [n, dim]); embeds exactly what the writer asks for."""
    dim = dim or next(iter(data.values()))[2].shape[1]
    inputs = {t: (ids, text_hash(texts)) for t, (ids, texts, _) in data.items()}
    w = EmbeddingWriter.open(root, version, spec_ or spec(dim), inputs, cfg)
    for t in w.node_types:
        for block in w.pending_blocks(t):
            w.write(t, block.rows, data[t][2][block.positions])
    return w.publish()


def raw_rows(root, version, node_type) -> np.ndarray:
    """The stored bytes of every row (uint16/uint32 view), read straight from the zarr array."""
    m = StoreRoot(root).read_json(f"manifests/{version}.json")
    g = m["node_types"][node_type]["generation"]
    arr = StoreRoot(root).open_array(f"data/{version}/g{g:08d}/{node_type}/emb").read().result()
    return arr.view(np.uint16 if arr.dtype == ml_dtypes.bfloat16 else np.uint32)


def run_worker(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WORKER, *args], capture_output=True, text=True, timeout=120, **kw)


def wait_for(ready, proc: subprocess.Popen, log, timeout: float = 60.0) -> None:
    """Wait until `ready` (a path, or a function) is true while `proc` runs; its log on failure."""
    deadline = time.monotonic() + timeout
    while not (ready() if callable(ready) else os.path.exists(ready)):
        assert proc.poll() is None, f"{proc.args[2]} exited with {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{ready} not ready after {timeout} s: {log.read_text()[-3000:]}"
        time.sleep(0.02)


def reports(stdout: str) -> list[dict]:
    return [json.loads(line[len("report "):]) for line in stdout.splitlines() if line.startswith("report ")]


# ------------------------------------------------------------------------------------ round trips


def test_text_hash_is_stable_across_processes():
    texts = ["member 1 senior data engineer", "", "é → ünïcode", "member 1 senior data engineer "]
    code = ("import sys, json; from star_jax.store import text_hash; "
            "print(json.dumps(text_hash(sys.argv[1:]).tolist()))")
    other = subprocess.run([sys.executable, "-c", code, *texts], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    ours = text_hash(texts)
    assert ours.dtype == np.uint64 and json.loads(other.stdout) == ours.tolist()
    assert len(set(ours.tolist())) == len(texts)


@pytest.fixture
def float16_allowed(monkeypatch):
    """store.dtype float16, which layout.DTYPES supports, whether or not config.STORE_DTYPES lists it yet."""
    if "float16" not in config.STORE_DTYPES:
        monkeypatch.setattr(config, "STORE_DTYPES", (*config.STORE_DTYPES, "float16"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
@pytest.mark.parametrize("where", ["path", "file_url", "memory"])
def test_round_trip(tmp_path, dtype, where, float16_allowed):
    root = {"path": tmp_path / "s", "file_url": f"file://{tmp_path}/s", "memory": f"memory://rt-{dtype}"}[where]
    rng = np.random.default_rng(0)
    ids = rng.permutation(5000)[:300].astype(np.int64)  # unsorted, sparse
    x = rng.normal(size=(300, 24)).astype(np.float32) * 3
    job_ids = np.arange(70, dtype=np.int64)
    y = rng.normal(size=(70, 24)).astype(np.float32)
    cfg = StoreConfig(dtype=dtype, shard_rows=64)  # automatic inner chunks
    rep = write_version(root, "v1", {"member": (ids, [f"m{i}" for i in ids], x),
                                     "job": (job_ids, [f"j{i}" for i in job_ids], y)}, cfg)
    assert rep.embedded == {"member": 300, "job": 70} and rep.generation == 1

    s = EmbeddingStore.open(root)
    assert (s.version, s.dim, s.dtype, sorted(s.node_types)) == ("v1", 24, dtype, ["job", "member"])
    assert s.manifest["tokenizer"] == "bpe-1" and s.manifest["node_types"]["member"]["rows"] == 300
    np.testing.assert_array_equal(s.ids("member"), np.sort(ids))
    np.testing.assert_array_equal(s.text_hashes("member"), text_hash([f"m{i}" for i in np.sort(ids)]))
    order = np.r_[rng.permutation(300), [5, 5, 0]]  # any order, repeats allowed
    got = s.lookup("member", ids[order])
    assert got.dtype == np.float32 and got.shape == (len(order), 24)
    if dtype == "float32":
        np.testing.assert_array_equal(got, x[order])
    else:
        store_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
        np.testing.assert_array_equal(got, x[order].astype(store_dtype).astype(np.float32))
        np.testing.assert_allclose(got, x[order], rtol=2**-8, atol=1e-6 if dtype == "float16" else 0)
    np.testing.assert_array_equal(s.lookup("job", job_ids[10:20]), s.lookup("job", job_ids)[10:20])
    assert s.lookup("job", np.zeros(0, np.int64)).shape == (0, 24)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_versions_open_in_zarr_python(tmp_path, dtype, float16_allowed):
    # bfloat16 is no zarr v3 core data type: only TensorStore reads a bf16 version.
    zarr = pytest.importorskip("zarr", minversion="3", reason="zarr-python 3 is not installed here; this "
                               "checks that float32/float16 versions open in it")
    root = tmp_path / "s"
    rng = np.random.default_rng(6)
    ids = rng.permutation(1000)[:150].astype(np.int64)
    x = rng.normal(size=(150, 24)).astype(np.float32)
    texts = [f"m{i}" for i in ids]
    cfg = StoreConfig(dtype=dtype, shard_rows=64, chunk_rows=8)
    write_version(root, "v1", {"member": (ids, texts, x)}, cfg)
    gen = StoreRoot(root).read_json("manifests/v1.json")["node_types"]["member"]["generation"]
    arrays = root / "data" / "v1" / f"g{gen:08d}" / "member"  # the manifest's generation, not the newest
    order = np.argsort(ids)
    emb = zarr.open_array(str(arrays / "emb"), mode="r")
    assert emb.shape == (150, 24) and emb.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(emb[:], x[order].astype(dtype))
    np.testing.assert_array_equal(zarr.open_array(str(arrays / "ids"), mode="r")[:], ids[order])
    np.testing.assert_array_equal(zarr.open_array(str(arrays / "hash"), mode="r")[:],
                                  text_hash([texts[i] for i in order]))


def test_writer_accepts_any_row_order_and_does_not_keep_the_callers_buffer(tmp_path):
    ids = np.arange(100, dtype=np.int64)
    x = np.random.default_rng(4).normal(size=(100, 16)).astype(ml_dtypes.bfloat16)
    w = EmbeddingWriter.open(tmp_path / "s", "v1", spec(), {"member": (ids, text_hash(map(str, ids)))}, SMALL)
    buf = np.empty((25, 16), ml_dtypes.bfloat16)  # reused across calls, as a batched embed loop would
    for i, rows in enumerate(np.random.default_rng(5).permutation(100).reshape(4, 25)):
        rows = np.sort(rows) if i % 2 else rows  # sorted rows are buffered as views of `buf`
        buf[:] = x[rows]
        w.write("member", rows, buf)
        buf[:] = np.nan  # must not reach the store
    w.publish()
    got = EmbeddingStore.open(tmp_path / "s").lookup("member", ids)
    np.testing.assert_array_equal(got, x.astype(np.float32))


# ---------------------------------------------------------------------------- incremental refresh


def test_incremental_refresh_touches_only_changed_rows(tmp_path):
    root = tmp_path / "s"
    rng = np.random.default_rng(1)
    ids = np.arange(2000, dtype=np.int64) * 3
    texts = [f"member {i} profile" for i in ids]
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    job_ids = np.arange(100, dtype=np.int64)
    job = (job_ids, [f"job {i}" for i in job_ids], rng.normal(size=(100, 16)).astype(np.float32))
    write_version(root, "v1", {"member": (ids, texts, x), "job": job})
    before = raw_rows(root, "v1", "member")
    old_reader = EmbeddingStore.open(root, "v1")

    changed = np.sort(rng.choice(2000, 20, replace=False))  # 1% of the texts
    texts2 = list(texts)
    for i in changed:
        texts2[i] += " (updated)"
    x2 = x.copy()
    x2[changed] = rng.normal(size=(20, 16))
    inputs = {"member": (ids, text_hash(texts2)), "job": (job[0], text_hash(job[1]))}
    w = EmbeddingWriter.open(root, "v1", spec(), inputs, SMALL)
    assert w.node_types == ["member"]  # job is unchanged: not rewritten at all
    p = w.pending("member")
    np.testing.assert_array_equal(p.rows, changed)
    np.testing.assert_array_equal(p.ids, ids[changed])
    w.write("member", p.rows[:10], x2[p.positions[:10]])
    mid = EmbeddingStore.open(root)  # opened mid-refresh: the published state only
    np.testing.assert_array_equal(mid.text_hashes("member"), text_hash(texts))
    w.write("member", p.rows[10:], x2[p.positions[10:]])
    rep = w.publish()
    assert rep.embedded == {"member": 20, "job": 0} and rep.copied == {"member": 1980, "job": 100}

    after = raw_rows(root, "v1", "member")
    keep = np.setdiff1d(np.arange(2000), changed)
    np.testing.assert_array_equal(after[keep], before[keep])  # byte-identical
    assert (after[changed] != before[changed]).any(axis=1).all()
    new = EmbeddingStore.open(root)
    np.testing.assert_array_equal(new.lookup("member", ids[changed]),
                                  x2[changed].astype(ml_dtypes.bfloat16).astype(np.float32))
    assert new.manifest["node_types"]["job"]["generation"] == 1  # still the first generation's array
    assert new.manifest["node_types"]["member"] | {"digest": None} == {
        "generation": 2, "rows": 2000, "embedded": 20, "copied": 1980, "digest": None, "shard_rows": 32,
        "chunk_rows": 8}
    np.testing.assert_array_equal(old_reader.lookup("member", ids), mid.lookup("member", ids))

    # Unchanged inputs: nothing to write, nothing published, no new generation.
    w = EmbeddingWriter.open(root, "v1", spec(), inputs, SMALL)
    assert w.node_types == [] and len(w.pending("member").rows) == 0
    assert w.publish().generation == 2
    # New and removed ids: only the new ones are embedded; two more refreshes leave two generations.
    ids3 = np.r_[ids[100:], [9001, 9002]]
    texts3 = texts2[100:] + ["new a", "new b"]
    x3 = np.r_[x2[100:], rng.normal(size=(2, 16)).astype(np.float32)]
    rep = write_version(root, "v1", {"member": (ids3, texts3, x3)})
    assert rep.embedded == {"member": 2} and rep.generation == 3  # job was not passed: kept as is
    np.testing.assert_array_equal(raw_rows(root, "v1", "member")[:-2], after[100:])
    gens = {k.split("/")[0] for k in StoreRoot(root).list("data/v1/")}
    assert gens == {"g00000002", "g00000003", "g00000001"}  # job still lives in g1; g2 is the previous
    write_version(root, "v1", {"member": (ids3, [t + "!" for t in texts3], x3)})
    gens = {k.split("/")[0] for k in StoreRoot(root).list("data/v1/")}
    assert gens == {"g00000001", "g00000003", "g00000004"}


# --------------------------------------------------------------------------------- crash safety


def test_sigkilled_writer_resumes_to_the_uninterrupted_result(tmp_path):
    a, b = str(tmp_path / "killed"), str(tmp_path / "clean")
    for root in (a, b):
        assert run_worker("write", root, "--revs", "0").returncode == 0
    published = EmbeddingStore.open(a)

    ready, log = tmp_path / "held", tmp_path / "writer.log"
    args = ["write", a, "--revs", "1", "--every", "2", "--hold-after", "4", "--ready", str(ready)]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, WORKER, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(ready, proc, log)  # the writer stored 4 blocks and now waits to be killed
        # At least one shard of the staged generation is stored, so the rerun has less to write.
        wait_for(lambda: StoreRoot(a).list("data/v1/g00000002/member/emb/c/"), proc, log)
        # Mid-write, a new reader sees exactly the previously published state.
        mid = EmbeddingStore.open(a)
        assert mid.manifest == published.manifest
        for t in sw.SIZES:
            ids = sw.node_ids(t)
            np.testing.assert_array_equal(mid.text_hashes(t), text_hash(sw.texts(t, ids, 0)))
            np.testing.assert_array_equal(mid.lookup(t, ids), sw.stored(mid.text_hashes(t)))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert StoreRoot(a).read_json("staging/v1.json")["generation"] == 2

    resumed = run_worker("write", a, "--revs", "1", "--every", "2")
    clean = run_worker("write", b, "--revs", "1", "--every", "2")
    assert resumed.returncode == 0 and clean.returncode == 0, resumed.stderr + clean.stderr
    (r_rep,), (c_rep,) = reports(resumed.stdout), reports(clean.stdout)
    assert r_rep["resumed"] and not c_rep["resumed"]
    assert r_rep["embedded"] == c_rep["embedded"] == {"member": 300, "job": 150}
    assert 0 < sum(r_rep["written_this_run"].values()) < sum(c_rep["written_this_run"].values())

    ma, mb = (EmbeddingStore.open(r).manifest for r in (a, b))
    drop = ("created", "updated")
    assert {k: v for k, v in ma.items() if k not in drop} == {k: v for k, v in mb.items() if k not in drop}
    for t in sw.SIZES:
        for name in ("emb", "hash", "ids"):
            key = f"data/v1/g00000002/{t}/{name}"
            xa, xb = (StoreRoot(r).open_array(key).read().result() for r in (a, b))
            assert xa.tobytes() == xb.tobytes(), (t, name)
    assert StoreRoot(a).read_json("staging/v1.json") is None
    assert {k.split("/")[0] for k in StoreRoot(a).list("data/v1/")} == {"g00000001", "g00000002"}


def test_kill_between_manifest_swap_and_cleanup_keeps_the_published_generation(tmp_path):
    root = tmp_path / "s"
    ids = np.arange(100, dtype=np.int64)
    x = np.random.default_rng(2).normal(size=(100, 16)).astype(np.float32)
    data = lambda rev: {"member": (ids, [f"m{i} rev {rev}" for i in ids], x + rev)}  # noqa: E731
    write_version(root, "v1", data(0))
    oldest = EmbeddingStore.open(root)
    inputs = {"member": (ids, text_hash(data(1)["member"][1]))}
    w = EmbeddingWriter.open(root, "v1", spec(), inputs, SMALL)
    w.write("member", w.pending("member").rows, x + 1)
    staging = StoreRoot(root).read_json("staging/v1.json")
    w.publish()
    StoreRoot(root).write_json("staging/v1.json", staging)  # as if killed right after the manifest swap
    assert EmbeddingWriter.open(root, "v1", spec(), inputs, SMALL).node_types == []
    assert StoreRoot(root).read_json("staging/v1.json") is None
    expect = lambda rev: (x + rev).astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", ids), expect(1))
    StoreRoot(root).write_json("staging/v1.json", staging)
    write_version(root, "v1", data(2))  # a refresh on top of it
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", ids), expect(2))
    # A handle two publishes old has lost its generation: a clear error, never zeros.
    with pytest.raises(StarError, match="generation 1 of member was removed by newer refreshes; reopen"):
        oldest.lookup("member", ids)


def test_concurrent_reader_never_sees_a_torn_row(tmp_path):
    root, stop, seen = str(tmp_path / "s"), tmp_path / "stop", tmp_path / "seen"
    out, err = tmp_path / "reader.json", tmp_path / "reader.log"
    seen.mkdir()
    assert run_worker("write", root, "--revs", "0").returncode == 0
    # The reader snapshots the store over and over while the writer refreshes it three times. The
    # writer starts each refresh once the reader has read the published generation, so the reader
    # reads every state, and never one two publishes old (garbage-collected under it).
    with open(out, "w") as o, open(err, "w") as e:
        reader = subprocess.Popen([sys.executable, WORKER, "read", root, "--stop-file", str(stop), "--revs",
                                   "0,1,2,3", "--every", "3", "--seen", str(seen)], stdout=o, stderr=e)
    try:
        writer = run_worker("write", root, "--revs", "1,2,3", "--every", "3", "--sleep", "0.02",
                            "--sync", str(seen))
        assert writer.returncode == 0, writer.stdout + writer.stderr + err.read_text()
        wait_for(seen / "seen-4", reader, err)  # the reader has read the final state
    finally:
        stop.touch()
        try:
            reader.wait(timeout=60)
        finally:
            reader.kill()  # only if it hung
            reader.wait()
    assert reader.returncode == 0, out.read_text() + err.read_text()
    summary = json.loads(out.read_text())
    assert summary["torn_rows"] == 0 and summary["snapshots"] >= 4
    assert summary["states"] == [[1, 0], [2, 1], [3, 2], [4, 3]]  # (generation, revision) it read


# ---------------------------------------------------------------------------------- migration


def _two_versions(root, transform, dim_new, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    data1, data2 = {}, {}
    for t, n in (("member", 400), ("job", 300)):
        ids = np.arange(n, dtype=np.int64) + (0 if t == "member" else 10_000)
        x1 = rng.normal(size=(n, 16)).astype(np.float32)
        x2 = (transform(x1) + noise * rng.normal(size=(n, dim_new))).astype(np.float32)
        texts = [f"{t} {i}" for i in ids]
        data1[t] = (ids[:-20], texts[:-20], x1[:-20])  # the versions share all but a few ids
        data2[t] = (ids[20:], texts[20:], x2[20:])
    cfg = StoreConfig(dtype="float32", shard_rows=64, chunk_rows=16)
    write_version(root, "v1", data1, cfg, spec(16))
    write_version(root, "v2", data2, cfg, spec(dim_new, model="tiny-2"))
    return data1, data2


def _train_rows(data1, data2):
    """The shared rows the fit may use (held-out ones excluded), as (x_new, x_old)."""
    xs_new, xs_old = [], []
    for t in data1:
        shared, i1, i2 = np.intersect1d(data1[t][0], data2[t][0], return_indices=True)
        keep = ~holdout_mask(t, shared, 0.1)
        xs_new.append(data2[t][2][i2][keep])
        xs_old.append(data1[t][2][i1][keep])
    return np.concatenate(xs_new), np.concatenate(xs_old)


def test_migration_recovers_a_rotation_and_matches_scipy_and_sklearn(tmp_path):
    root = tmp_path / "s"
    q = np.linalg.qr(np.random.default_rng(7).normal(size=(16, 16)))[0]
    data1, data2 = _two_versions(root, lambda x: x @ q, 16)
    x_new, x_old = _train_rows(data1, data2)

    for method in ("procrustes", "ridge"):
        rec = fit_version_map(root, "v1", "v2", method=method, ridge=1e-3)
        f = rec["fidelity"]
        assert f["unmapped"] < 0.3 and f["holdout"] > 0.95 and f["overall"] > 0.95, f
        assert rec["rows_fit"] == len(x_new) and rec["rows_holdout"] > 20
        assert set(f["per_type"]) == {"member", "job"} and f["per_type"]["job"]["rows"] == 260
        vmap = load_version_map(root, "v2", "v1")  # the stored map reloads
        assert vmap.record["method"] == method and vmap.weight.shape == (16, 16)
        mu_new, mu_old = x_new.mean(0), x_old.mean(0)
        if method == "procrustes":
            oracle, _ = scipy.linalg.orthogonal_procrustes(x_new - mu_new, x_old - mu_old)
        else:
            oracle = sklearn.linear_model.Ridge(alpha=rec["ridge_alpha"]).fit(x_new, x_old).coef_.T
        np.testing.assert_allclose(vmap.weight, oracle, atol=1e-4)
        np.testing.assert_allclose(vmap.bias, mu_old - mu_new @ oracle, atol=1e-4)

    mapped = EmbeddingStore.open(root, "v2", map_to="v1")  # v2 read in v1's space
    ids = data2["job"][0][:50]
    got, old = mapped.lookup("job", ids), EmbeddingStore.open(root, "v1").lookup("job", ids)
    assert mapped.dim == 16
    np.testing.assert_allclose(got, vmap.apply(data2["job"][2][:50]), rtol=1e-5, atol=1e-5)
    cos = (got * old).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(old, axis=1)
    assert cos.mean() > 0.95


def test_migration_general_linear_map_and_cli(tmp_path, capsys):
    root = str(tmp_path / "s")
    a = np.random.default_rng(3).normal(size=(16, 24)) / 4
    _two_versions(root, lambda x: x @ a + 1.0, 24, noise=0.05)
    assert cli.main(["store", "migrate", "--store", root, "--from", "v1", "--to", "v2", "--method", "ridge",
                     "--ridge", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "fidelity" in out and "unmapped n/a" in out
    rec = load_version_map(root, "v2", "v1").record
    assert rec["fidelity"]["holdout"] > 0.95 and rec["dim_source"] == 24 and rec["dim_target"] == 16
    s = EmbeddingStore.open(root, "v2", map_to="v1")
    assert s.dim == 16 and s.lookup("member", [100, 101]).shape == (2, 16)

    assert cli.main(["store", "info", "--store", root]) == 0
    out = capsys.readouterr().out
    assert "version v1" in out and "version v2" in out and "map onto v1: ridge" in out
    assert cli.main(["store", "info", "--store", root, "--version", "v2", "--json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)
    assert m["model"] == "tiny-2" and m["maps"][0]["target"] == "v1"
    assert list_versions(root) == ["v1", "v2"] and EmbeddingStore.open(root).version == "v2"


# ---------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def one_version(tmp_path):
    root = str(tmp_path / "s")
    ids = np.arange(50, dtype=np.int64)
    write_version(root, "v1", {"member": (ids, [f"m{i}" for i in ids], np.ones((50, 16), np.float32))})
    return root, {"member": (ids, text_hash([f"m{i}!" for i in ids]))}


BAD_WRITES = {
    "dim": (dict(spec_=spec(32)), "spec.dim is 32, but the manifest has 16"),
    "dtype": (dict(cfg=StoreConfig(dtype="float32")),
              "store.dtype is 'float32'"),
    "tokenizer": (dict(spec_=spec(tokenizer="bpe-2")),
                  "spec.tokenizer is 'bpe-2', but the manifest has 'bpe-1'"),
    # A bad store config fails when it is built (config.StoreConfig.check), inside the same one line.
    "bad dtype name": (dict(cfg=lambda: StoreConfig(dtype="float64")), "store.dtype: expected one of"),
    "bad layout": (dict(cfg=lambda: StoreConfig(shard_rows=100, chunk_rows=16)), "store.shard_rows=100"),
    "bad version name": (dict(version="../v1"), "version '../v1'"),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_bad_writes_fail_in_one_line(one_version, case):
    root, inputs = one_version
    kw, message = BAD_WRITES[case]
    with pytest.raises(StarError) as e:
        version, cfg = kw.get("version", "v1"), kw.get("cfg", SMALL)
        EmbeddingWriter.open(root, version, kw.get("spec_", spec()), inputs, cfg() if callable(cfg) else cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_reads_and_vectors_fail_in_one_line(one_version, tmp_path, capsys):
    root, inputs = one_version
    cases = [
        (lambda: EmbeddingStore.open(root, "v9"), "unknown version 'v9'; published: v1"),
        (lambda: EmbeddingStore.open(tmp_path / "nowhere"), "store not found"),
        (lambda: EmbeddingStore.open(root).lookup("member", [3, 77, 78]), "unknown member id 77 (2 of 3"),
        (lambda: EmbeddingStore.open(root).lookup("company", [1]), "unknown node type 'company'; stored: "),
        (lambda: EmbeddingStore.open(root, "v1", map_to="v0"), "no map from version v1 onto v0"),
        (lambda: fit_version_map(root, "v1", "v1"), "name the same version"),
    ]
    w = EmbeddingWriter.open(root, "v1", spec(), inputs, SMALL)
    rows = w.pending("member").rows[:4]
    EmbeddingWriter.open(root, "v3", spec(), inputs, SMALL)
    cases += [
        (lambda: w.write("member", rows, np.ones((4, 8))), "dim 8, but version v1 has dim 16"),
        (lambda: w.write("member", rows, np.full((4, 16), np.nan)),
         "4 of 4 rows are NaN or inf once cast to bfloat16"),
        (lambda: w.write("job", rows, np.ones((4, 16))), "'job' has nothing to write"),
        # v3 has an unfinished first generation, staged with tokenizer bpe-1.
        (lambda: EmbeddingWriter.open(root, "v3", spec(tokenizer="x"), inputs, SMALL), "unfinished write"),
        (lambda: EmbeddingWriter.open(root, "v1", spec(), {"member": (np.r_[1, 1], np.zeros(2, np.uint64))},
                                      SMALL), "duplicate id 1"),
    ]
    r = StoreRoot(root)
    r.write_json("manifests/v7.json", r.read_json("manifests/v1.json"))  # copied by hand
    cases.append((lambda: EmbeddingStore.open(root, "v7"), "manifest is for version 'v1'"))
    for fn, message in cases:
        with pytest.raises(StarError) as e:
            fn()
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert cli.main(["store", "info", "--store", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("star-jax: error: store not found") and "\n" not in err
    assert cli.main(["store", "migrate", "--store", root, "--from", "v1", "--to", "v2", "--method", "x"]) == 2
    assert "invalid choice: 'x'" in capsys.readouterr().err
    # restart=True discards an unfinished generation staged under other settings.
    w3 = EmbeddingWriter.open(root, "v3", spec(tokenizer="x"), inputs, SMALL, restart=True)
    assert len(w3.pending("member").rows) == 50 and not w3.resumed and w3.generation == 2


def test_store_config_overrides():
    overrides = ["store.dtype=float32", "store.root=gs://bucket/star", "store.compression=zstd"]
    cfg = load_config(None, overrides).store
    assert (cfg.dtype, cfg.root, cfg.compression) == ("float32", "gs://bucket/star", "zstd")
    spec_ = ts.KvStore.Spec("gs://bucket/star/").to_json()
    from star_jax.store import resolve_root

    assert resolve_root(cfg.root) == spec_
    assert resolve_root("bucket/star", "gcs") == spec_
