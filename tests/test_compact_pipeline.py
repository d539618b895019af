"""The pipeline's compact stage: with `llm_train.matryoshka_dims`, a compact version per D, gnn_id_cat_llm
trained on each, and the report's compact block reading what those stages wrote.

Checked against independent oracles: numpy prefixes of the parent's stored rows, the files on disk
(bytes), scikit-learn's AUC of the GNN embeddings each stage stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from star_jax.config import Config, fingerprint
from star_jax.data.tables import read_labels
from star_jax.eval.compact_report import COMPACT_STAGE, compact_gnn_name, compact_version
from star_jax.fileio import read_json
from star_jax.pipeline import Pipeline, plan, read_run, run_pipeline
from star_jax.store import EmbeddingStore

DIMS = [4, 8]  # below the 16-d towers of the micro base
MICRO = {  # a pipeline of every stage the compact block needs, each a few steps
    "llm.member_max_len": 48, "llm.job_max_len": 48, "llm.buckets": [], "lora.rank": 2,
    "llm_train.steps": 4, "llm_train.batch_size": 8, "llm_train.warmup_steps": 1,
    "llm_train.eval_every": 0, "llm_train.eval_batch_size": 16, "llm_train.checkpoint_every": 4,
    "embed.batch_size": 16, "store.shard_rows": 16,
    "gnn.layers": 1, "gnn.hidden_dim": 16, "gnn.heads": 2, "gnn.out_dim": 8, "gnn.llm_block": 4,
    "gnn.attribute_block": 2,
    "gnn.id_buckets": 64, "gnn.cat_dim": 4, "gnn.cat_buckets": 16,
    "sampler.batch_size": 8, "sampler.num_random_negatives": 8,
    "gnn_train.steps": 4, "gnn_train.warmup_steps": 1, "gnn_train.eval_every": 0, "gnn_train.eval_pairs": 64,
    "gnn_train.eval_batch_size": 32, "gnn_train.checkpoint_every": 4, "gnn_train.log_every": 1,
    "gnn_train.llm_block_gains": [1.0], "eval.num_candidates": 20,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A data directory, a BPE tokenizer and a random 1-layer, 16-d HF Mistral directory."""
    from data_fixtures import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("compact_inputs"))


def micro_config(data, tok, base, dims: list[int]) -> Config:
    cfg = Config()
    cfg.data.dir, cfg.tokenizer.dir, cfg.llm.base_dir = str(data), str(tok), str(base)
    for key, value in MICRO.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.llm_train.matryoshka_dims = dims
    cfg.eval.variants = ["llm_finetuned", "gnn_id_cat_llm"]
    return cfg


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _files_bytes(store_dir: str, version: str, manifest: dict) -> int:
    """Bytes of the files of each node type's published generation, walked on disk."""
    total = 0
    for t, entry in manifest["node_types"].items():
        where = Path(store_dir) / "data" / version / f"g{entry['generation']:08d}" / t
        total += sum(os.path.getsize(Path(d) / f) for d, _, files in os.walk(where) for f in files)
    return total


@pytest.mark.slow  # three GNN trainings (full width and each D), each compiling: several minutes
def test_the_compact_stage_feeds_the_gnn_and_the_report_reads_what_the_stages_wrote(inputs, tmp_path):
    cfg, out = micro_config(*inputs, DIMS), tmp_path / "run"
    run_pipeline(cfg, out, log=lambda s: None)
    run = read_run(out)
    gnns = [f"{stage}-{compact_gnn_name(d)}" for d in DIMS for stage in ("train-gnn", "gnn-embed")]
    assert {COMPACT_STAGE, *gnns} <= set(run.stamps)
    assert list(run.stamps).index(COMPACT_STAGE) > list(run.stamps).index("embed-llm_finetuned")
    assert [name for name, _ in plan(cfg)] == list(run.stamps)  # `pipeline --plan` names them in order

    # The stage's versions are the renormalised prefixes of the towers' version (numpy's).
    store_dir, parent = run.store_version("llm_finetuned")
    towers = EmbeddingStore.open(store_dir, parent)
    stage = run.result(COMPACT_STAGE)
    assert stage["parent"] == parent
    assert [w["dims"] for w in stage["widths"]] == [*DIMS, towers.dim]
    assert [w["version"] for w in stage["widths"]] == [*(compact_version(parent, d) for d in DIMS), parent]
    for w in stage["widths"]:
        version = EmbeddingStore.open(store_dir, w["version"])
        assert w["bytes"] == _files_bytes(store_dir, w["version"], version.manifest) > 0
        assert w["lookup_rows_s"] > 0
        ids = towers.ids("job")
        np.testing.assert_allclose(version.lookup("job", ids),
                                   _unit(towers.lookup("job", ids)[:, : w["dims"]]), atol=1e-2)
    # Each compact GNN read its own width's features.
    for d in DIMS:
        fed = EmbeddingStore.open(store_dir, compact_version(parent, d))
        stamp = run.stamps[f"train-gnn-{compact_gnn_name(d)}"]
        assert stamp["inputs"]["features"] == fingerprint(fed.manifest)

    # The report: per D, gnn_id_cat_llm's test AUC recomputed from the GNN embeddings the stage
    # stored (dot product, scikit-learn), and the stage's bytes and rows/s.
    report = read_json(out / "report.json")
    block, md = report["compact"], (out / "report.md").read_text()
    test = read_labels(cfg.data.dir, "test", ["member_id", "job_id", "label"])
    assert [w["dims"] for w in block["widths"]] == [*DIMS, towers.dim]
    for w, measured in zip(block["widths"], stage["widths"]):
        d = w["dims"]
        if d < towers.dim:
            where = run.result(f"gnn-embed-{compact_gnn_name(d)}")
        else:
            where = dict(zip(("store", "version"), run.store_version("gnn_id_cat_llm")))
        gnn = EmbeddingStore.open(where["store"], where["version"])
        m, j = gnn.lookup("member", test.member_id.to_numpy()), gnn.lookup("job", test.job_id.to_numpy())
        score = np.sum(m * j, 1)
        assert w["gnn_version"] == where["version"]
        assert w["gnn_auc"] == pytest.approx(roc_auc_score(test.label, score), abs=1e-6)
        assert (w["version"], w["store_bytes"], w["lookup_rows_s"]) == (
            measured["version"], measured["bytes"], measured["lookup_rows_s"])
        assert f"| {w['gnn_auc']:.4f}" in md and f"| {w['store_bytes']:,} | {w['lookup_rows_s']:,.0f} |" in md
    full = block["widths"][-1]
    assert full["gnn_auc"] == pytest.approx(report["variants"]["gnn_id_cat_llm"]["auc"], abs=1e-6)
    assert (out / "plots" / "compact.png").stat().st_size > 0

    # A rerun skips every stage, the compact ones included.
    pipeline = Pipeline(cfg, out, log=lambda s: None)
    pipeline()
    assert [r.name for r in pipeline.run.records if not r.skipped] == []


def test_stored_bytes_are_the_files_of_the_published_generation(tmp_path):
    """On disk: the files of each node type's current generation (an older generation is not
    counted); on a memory:// store of the same rows: the same bytes, read through the kvstore."""
    from star_jax.config import StoreConfig
    from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash
    from star_jax.store.compact import stored_bytes

    rng = np.random.default_rng(0)
    ids = {"member": np.arange(50), "job": np.arange(30)}
    spec = EmbeddingSpec(model="test/llm", adapter=None, tokenizer="none", max_len=0, pooling="test", dim=8)

    def write(root, texts: str) -> None:
        inputs = {t: (i, text_hash(f"{texts}{t}{k}" for k in i)) for t, i in ids.items()}
        writer = EmbeddingWriter.open(root, "v", spec, inputs, StoreConfig(dtype="float32", shard_rows=16))
        for t in writer.node_types:
            for block in writer.pending_blocks(t):
                writer.write(t, block.rows, rng.normal(size=(len(block.rows), 8)).astype(np.float32))
        writer.publish()

    write(tmp_path / "store", "a")
    write(tmp_path / "store", "b")  # every text changed: a second generation
    store = EmbeddingStore.open(tmp_path / "store", "v")
    assert {e["generation"] for e in store.manifest["node_types"].values()} == {2}
    assert stored_bytes(store) == _files_bytes(str(tmp_path / "store"), "v", store.manifest) > 8 * 80
    every = sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(tmp_path / "store" / "data") for f in fs)
    assert stored_bytes(store) < every  # the first generation's files are still there, not counted

    rng = np.random.default_rng(0)  # the same rows again, into memory
    write("memory://bytes_test", "a")
    write("memory://bytes_test", "b")
    assert stored_bytes(EmbeddingStore.open("memory://bytes_test", "v")) == stored_bytes(store)
