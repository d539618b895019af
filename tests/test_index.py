"""`star-jax index build` and `star-jax recommend` through the index, `--exact`, `--nprobe` and `--all`.

Every ranking is checked against a numpy oracle over the vectors the test wrote with the store's
writer API, excluding the apply edges read here with pandas.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import write_tiny_data

from star_jax import cli
from star_jax.config import Config, StoreConfig, to_yaml
from star_jax.eval.index import INDEX_DIR, META_FILE
from star_jax.eval.recommend import recommend
from star_jax.eval.runs import CONFIG_FILE, read_run, stage_name
from star_jax.pipeline import Runner
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

DIM = 16
MEMBERS, JOBS = 80, 300
VARIANTS = ("gnn_id_cat_llm", "llm_finetuned")  # dot product, cosine


def write_vectors(root, version: str, vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                  salt: str = "") -> None:
    """Write (or refresh) `version`; rows whose text hash (from `salt`) changed are re-written."""
    spec = EmbeddingSpec(model=f"test/{version}", adapter=None, tokenizer="none", max_len=0, pooling="test",
                         dim=DIM)
    inputs = {t: (ids, text_hash(f"{t}{i}{salt if t == 'job' else ''}" for i in ids))
              for t, (ids, _) in vectors.items()}
    writer = EmbeddingWriter.open(root, version, spec, inputs, StoreConfig(dtype="float32", shard_rows=64))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][1][block.positions])
    writer.publish()


def make_run(root, seed: int = 0) -> dict:
    """A run directory with data, config, stamps and one store version per variant of VARIANTS."""
    data = write_tiny_data(root / "data", members=MEMBERS, jobs=JOBS, seed=seed)
    cfg = Config()
    cfg.data.dir = str(data)
    (root / CONFIG_FILE).write_text(to_yaml(cfg))
    rng = np.random.default_rng(seed)
    members, jobs = np.arange(MEMBERS, dtype=np.int64), np.arange(JOBS, dtype=np.int64)
    runner = Runner(root, log=lambda s: None)
    vectors = {}
    for i, variant in enumerate(VARIANTS):
        norms = rng.uniform(0.5, 2, (JOBS, 1))  # GNN vectors are not unit length
        v = {"member": (members, rng.normal(size=(MEMBERS, DIM)).astype(np.float32)),
             "job": (jobs, (rng.normal(size=(JOBS, DIM)) * norms).astype(np.float32))}
        vectors[variant] = v
        stamp(runner, root, variant, f"{variant}-v1", v, config=i)
    return {"root": root, "data": data, "vectors": vectors, "runner": runner}


def stamp(runner, root, variant: str, version: str, v: dict, config) -> None:
    def fn() -> dict:
        write_vectors(root / "store", version, v)
        return {"store": str(root / "store"), "version": version}

    runner(stage_name(variant), fn, inputs={}, config=(config,))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("index_run"))


def oracle(run: dict, variant: str, k: int, include_applied: bool = False) -> dict[int, tuple[list, list]]:
    """member -> (job ids, scores) of the top k, by brute force with numpy."""
    (m_ids, m), (j_ids, j) = run["vectors"][variant]["member"], run["vectors"][variant]["job"]
    if variant.startswith("llm_"):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        j = j / np.linalg.norm(j, axis=1, keepdims=True)
    edges = pd.read_parquet(run["data"] / "edges/member_applied.parquet")
    out = {}
    for a, vec in zip(m_ids, m):
        s = (j @ vec).astype(np.float64)
        if not include_applied:
            s[np.isin(j_ids, edges.dst[edges.src == a])] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        top = top[np.isfinite(s[top])]
        out[int(a)] = (j_ids[top].tolist(), s[top].tolist())
    return out


def build(run: dict, variant: str, *flags: str) -> dict:
    assert cli.main(["index", "build", "--run", str(run["root"]), "--variant", variant, *flags]) == 0
    return json.loads((run["root"] / INDEX_DIR / variant / META_FILE).read_text())


def read_all(path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


# Each index type with its search made exhaustive: the index must then return the exact top-k.
EXHAUSTIVE = {"flat": [], "hnsw": ["--ef-search", str(JOBS)], "ivf": ["--nlist", "8", "--nprobe", "8"]}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", EXHAUSTIVE)
def test_the_index_top_k_equals_exact_search_at_full_recall(run, variant, kind, tmp_path, capsys):
    meta = build(run, variant, "--type", kind, *EXHAUSTIVE[kind])
    assert meta["params"]["kind"] == kind and meta["version"] == f"{variant}-v1" and meta["jobs"] == JOBS
    assert meta["metric"] == ("cosine" if variant.startswith("llm_") else "inner_product")
    want = oracle(run, variant, 10)
    r = read_run(run["root"])
    for member in (0, 7, MEMBERS - 1):
        recs, _ = recommend(r, member, 10, variant)
        assert [x.job_id for x in recs] == want[member][0]
        assert [x.score for x in recs] == pytest.approx(want[member][1], rel=1e-4, abs=1e-4)
    out = tmp_path / "all.parquet"
    capsys.readouterr()
    argv = ["recommend", "--run", str(run["root"]), "--variant", variant, "--all", "--out", str(out)]
    assert cli.main(argv) == 0
    assert f"{kind} index" in capsys.readouterr().out
    got = read_all(out)
    for member, rows in got.groupby("member_id"):
        assert rows.job_id.tolist() == want[member][0]
    assert set(got.member_id) == set(want)


def test_recommend_all_writes_the_documented_schema_and_the_brute_force_top_k(run, tmp_path):
    variant = "gnn_id_cat_llm"
    out = tmp_path / "sub" / "all.parquet"
    argv = ["recommend", "--run", str(run["root"]), "--variant", variant, "--all", "--exact", "-k", "7"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    schema = pq.read_schema(out)
    assert [(f.name, f.type) for f in schema] == [
        ("member_id", pa.int64()), ("rank", pa.int32()), ("job_id", pa.int64()), ("score", pa.float32())]
    got = read_all(out)
    want = oracle(run, variant, 7)
    assert sorted(got.member_id.unique()) == sorted(want)
    for member, rows in got.groupby("member_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows.job_id.tolist() == want[member][0]
        assert rows.score.tolist() == pytest.approx(want[member][1], rel=1e-5, abs=1e-5)
    # --include-applied ranks every job; a second write replaces the file whole.
    assert cli.main([*argv, "--include-applied", "--out", str(out)]) == 0
    got, want = read_all(out), oracle(run, variant, 7, include_applied=True)
    assert len(got) == 7 * MEMBERS
    for member, rows in got.groupby("member_id"):
        assert rows.job_id.tolist() == want[member][0]
    assert [p.name for p in out.parent.iterdir()] == ["all.parquet"]  # no temporary left behind


def test_exact_ignores_the_index(run, capsys):
    variant = "llm_finetuned"
    # One list probed of 30: a low-recall index, so its answers differ from exact search.
    build(run, variant, "--type", "ivf", "--nlist", "30", "--nprobe", "1")
    want = oracle(run, variant, 10)
    r = read_run(run["root"])
    approx = {m: [x.job_id for x in recommend(r, m, 10, variant)[0]] for m in want}
    exact = {m: [x.job_id for x in recommend(r, m, 10, variant, exact=True)[0]] for m in want}
    assert exact == {m: w[0] for m, w in want.items()}
    assert approx != exact
    capsys.readouterr()
    argv = ["recommend", "--run", str(run["root"]), "--variant", variant, "--member", "3"]
    assert cli.main([*argv, "--exact"]) == 0
    out = capsys.readouterr().out
    assert "exact)" in out.splitlines()[0]
    assert [int(line.split()[1]) for line in out.splitlines()[2:]] == want[3][0]
    assert cli.main(argv) == 0
    assert "ivf index, 1 of 30 lists probed)" in capsys.readouterr().out.splitlines()[0]


def test_nprobe_overrides_the_build_and_at_nlist_is_exact(run, tmp_path, capsys):
    variant = "llm_finetuned"
    build(run, variant, "--type", "ivf", "--nlist", "30", "--nprobe", "1")  # low recall as built
    want = {m: w[0] for m, w in oracle(run, variant, 10).items()}
    r = read_run(run["root"])

    def ranked(**kw) -> dict:
        return {m: [x.job_id for x in recommend(r, m, 10, variant, **kw)[0]] for m in want}

    built = ranked()
    assert built != want and ranked(nprobe=1) == built
    assert ranked(nprobe=30) == want  # every list probed: the exact top-k
    assert ranked(nprobe=1000) == want  # capped at nlist
    out = tmp_path / "all.parquet"
    argv = ["recommend", "--run", str(run["root"]), "--variant", variant]
    capsys.readouterr()
    assert cli.main([*argv, "--all", "--out", str(out), "--nprobe", "30"]) == 0
    assert "ivf index, 30 of 30 lists probed" in capsys.readouterr().out
    got = read_all(out)
    assert {m: rows.job_id.tolist() for m, rows in got.groupby("member_id")} == want
    assert cli.main([*argv, "--member", "5"]) == 0
    assert "ivf index, 1 of 30 lists probed" in capsys.readouterr().out.splitlines()[0]

    def refused(*extra: str) -> str:
        capsys.readouterr()
        assert cli.main([*argv, "--member", "5", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "--nprobe: must be >= 1, got 0" in refused("--nprobe", "0")
    assert "--nprobe: sets the index's search; not with --exact" in refused("--nprobe", "4", "--exact")
    build(run, variant, "--type", "flat")
    assert "is flat, and nprobe sets an ivf index's search" in refused("--nprobe", "4")


def test_a_stale_index_is_refused(tmp_path, capsys):
    run = make_run(tmp_path, seed=1)
    root, variant = run["root"], "gnn_id_cat_llm"
    index = root / INDEX_DIR / variant
    build(run, variant, "--type", "flat")
    argv = ["recommend", "--run", str(root), "--variant", variant, "--member", "2"]

    def refused(*extra: str) -> str:
        capsys.readouterr()
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    # New member texts leave the job rows, and so the index, as they were.
    v = run["vectors"][variant]
    members, jobs = v["member"], v["job"]
    write_vectors(root / "store", f"{variant}-v1", {"member": members, "job": jobs})
    assert cli.main(argv) == 0
    # Rewrite the version's jobs (new texts for every job, new vectors): the index is stale.
    new_jobs = (jobs[0], jobs[1][::-1].copy())
    write_vectors(root / "store", f"{variant}-v1", {"member": members, "job": new_jobs}, salt="x")
    line = refused()
    assert f"index {index}: store version {variant}-v1 has changed since it was built" in line
    assert "(job generation 1, now 2)" in line
    all_argv = [*argv[:-2], "--all", "--out", str(tmp_path / "a.parquet")]
    capsys.readouterr()
    assert cli.main(all_argv) == 2
    assert capsys.readouterr().err.strip() == line
    # --exact ranks the rewritten vectors.
    run["vectors"][variant] = {"member": members, "job": new_jobs}
    assert cli.main([*argv, "--exact"]) == 0
    ranked = [int(x.split()[1]) for x in capsys.readouterr().out.splitlines()[2:]]
    assert ranked == oracle(run, variant, 10)[2][0]
    # The stage reran into another version: refused, naming both versions.
    stamp(run["runner"], root, variant, f"{variant}-v2", run["vectors"][variant], config="again")
    line = refused()
    assert (f"index {index}: built from store version {variant}-v1, but the run's {variant} embeddings are "
            f"now version {variant}-v2") in line
    # A rebuild is fresh again.
    meta = build(run, variant)
    assert meta["version"] == f"{variant}-v2" and meta["params"]["kind"] == "flat"  # auto, 300 jobs
    recs, _ = recommend(read_run(root), 2, 10, variant)
    assert [x.job_id for x in recs] == oracle(run, variant, 10)[2][0]
    assert not (tmp_path / "a.parquet").exists()


def test_auto_picks_ivf_above_the_flat_limit(run, monkeypatch):
    from star_jax.eval import index

    monkeypatch.setattr(index, "FLAT_MAX_JOBS", JOBS - 1)
    meta = build(run, "gnn_id_cat_llm", "--nprobe", "1000")
    assert meta["params"]["kind"] == "ivf" and meta["params"]["nprobe"] == meta["params"]["nlist"] == 7
    want = oracle(run, "gnn_id_cat_llm", 5)
    recs, _ = recommend(read_run(run["root"]), 11, 5, "gnn_id_cat_llm")
    assert [x.job_id for x in recs] == want[11][0]
