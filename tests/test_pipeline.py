"""`star-jax pipeline`: stage skipping and resuming, the run directory, bad inputs in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from star_jax import cli
from star_jax.config import Config, fingerprint
from star_jax.pipeline import Runner, read_run


class Stages:
    """Two chained fake stages: `a` copies `src` into `a.txt`, `b` upper-cases it into `b.txt`."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []
        self.src = root / "src.txt"
        self.src.write_text("hello")
        self.fail_in: str | None = None

    def a(self) -> dict:
        self.calls.append("a")
        (self.root / "a.txt").write_text(self.src.read_text())
        return {"path": str(self.root / "a.txt")}

    def b(self) -> dict:
        self.calls.append("b")
        if self.fail_in == "b":
            raise KeyboardInterrupt  # a kill in the middle of the stage
        (self.root / "b.txt").write_text((self.root / "a.txt").read_text().upper())
        return {"path": str(self.root / "b.txt")}

    def run(self, setting: int = 0) -> list[str]:
        self.calls = []
        runner = Runner(self.root / "run", log=lambda s: None)
        exists = lambda r: os.path.isfile(r["path"])
        a = runner("a", self.a, inputs={"src": runner.digest(self.src)}, config=({"setting": setting},),
                   exists=exists)
        runner("b", self.b, inputs={"a": runner.digest(a["path"])}, exists=exists)
        return self.calls


def test_stages_run_once_then_skip_until_an_input_or_setting_changes(tmp_path):
    s = Stages(tmp_path)
    assert s.run() == ["a", "b"]
    assert s.run() == []
    os.utime(s.src, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes: same digest
    assert s.run() == []
    s.src.write_text("changed")  # a's input changed: a reruns, and so does b, whose input a rewrote
    assert s.run() == ["a", "b"] and (tmp_path / "b.txt").read_text() == "CHANGED"
    assert s.run(setting=1) == ["a"]  # a new setting, same bytes out: b stays up to date
    (tmp_path / "b.txt").unlink()  # a deleted output reruns its stage
    assert s.run(setting=1) == ["b"]


def test_a_killed_stage_reruns_and_finished_ones_stay_skipped(tmp_path):
    s = Stages(tmp_path)
    s.fail_in = "b"
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert (tmp_path / "run" / "stamps" / "a.json").is_file()
    assert not (tmp_path / "run" / "stamps" / "b.json").exists()  # no stamp for an unfinished stage
    s.fail_in = None
    assert s.run() == ["b"]
    assert s.run() == []


def test_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    from star_jax.pipeline import stamps as pipeline

    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    runner = Runner(tmp_path / "run", log=lambda s: None)
    first = runner.digest(f)
    runner.digest.save()
    hashed = []
    monkeypatch.setattr(pipeline, "content_digest", lambda paths: hashed.append(paths) or "stub")
    again = Runner(tmp_path / "run", log=lambda s: None)
    assert again.digest(f) == first and hashed == []  # a fresh process reads it from the cache
    f.write_bytes(b"y" * 1000)
    assert again.digest(f) == "stub" and len(hashed) == 1


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_bad_inputs_fail_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert "eval.nope" in one_line_error(capsys, ["pipeline", "--out", out, "--set", "eval.nope=1"])
    err = one_line_error(capsys, ["pipeline", "--out", out, "--set", f"data.dir={tmp_path / 'missing'}"])
    assert "data.dir" in err and "missing" in err
    err = one_line_error(capsys, ["pipeline", "--out", out, "--set", "eval.variants=[gnn_id_cat,gnn_nope]"])
    assert "eval.variants" in err and "gnn_nope" in err
    assert "llm.pooling" in one_line_error(capsys, ["pipeline", "--out", out, "--set", "llm.pooling=max"])
    assert "--run" in one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "nothing")])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_seed_sweep_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    from star_jax.pipeline import seeds

    for argv, needle in ([["--set", "data.dir=mine"], "data.dir"], [["--seeds", "x"], "--seeds"],
                         [["--set", "eval.nope=1"], "eval.nope"]):
        assert seeds.main(["--out", str(tmp_path / "s"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "s").exists()


def test_read_run_orders_stamps_as_they_ran(tmp_path):
    from star_jax.config import to_yaml

    cfg = Config()
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    runner = Runner(tmp_path, log=lambda s: None)
    for name in ("zeta", "alpha", "mid"):
        runner(name, lambda name=name: {"name": name}, inputs={"x": fingerprint(name)})
    run = read_run(tmp_path, ["eval.k=3"])
    assert list(run.stamps) == ["zeta", "alpha", "mid"] and run.result("alpha") == {"name": "alpha"}
    assert run.cfg.eval.k == 3 and run.store_version("gnn_id_cat") is None


def test_owned_checkpoints_are_resumed_with_the_same_settings_and_cleared_for_new_ones(tmp_path):
    owned, seen = tmp_path / "run" / "gnn", []

    def go(setting: int, kill: bool = False) -> None:
        def fn() -> dict:
            seen.append(sorted(p.name for p in owned.glob("*")))
            owned.mkdir(parents=True, exist_ok=True)
            (owned / f"checkpoint{len(seen)}").touch()
            if kill:
                raise KeyboardInterrupt
            return {}

        Runner(tmp_path / "run", log=lambda s: None)("train", fn, inputs={}, config=(setting,), owns=(owned,))

    with pytest.raises(KeyboardInterrupt):
        go(0, kill=True)
    go(0)  # the same settings: the stage finds its checkpoint to resume from
    assert seen == [[], ["checkpoint1"]]
    go(0)  # finished: skipped
    go(1)  # new settings: the finished run's checkpoints would be refused, so they are cleared
    assert seen == [[], ["checkpoint1"], []]
    with pytest.raises(KeyboardInterrupt):
        go(2, kill=True)
    go(3)  # killed under other settings than these: cleared too
    assert seen[-1] == []


# -- the real stages -----------------------------------------------------------------------------


def micro_config(data, tokenizer, base, **eval_) -> Config:
    """Your own data, tokenizer and base model, the frozen-LLM row only: validate, embed, evaluate."""
    cfg = Config()
    cfg.data.dir, cfg.tokenizer.dir, cfg.llm.base_dir = str(data), str(tokenizer), str(base)
    cfg.llm.member_max_len = cfg.llm.job_max_len = 48
    cfg.llm.buckets = []
    cfg.embed.batch_size = 16
    cfg.store.shard_rows = 16
    cfg.eval.variants, cfg.eval.num_candidates = ["llm_frozen"], 12
    for k, v in eval_.items():
        setattr(cfg.eval, k, v)
    return cfg


@pytest.fixture(scope="module")
def own_inputs(tmp_path_factory):
    """A data directory, a BPE tokenizer and a random 1-layer HF Mistral directory (saved by us)."""
    from data_fixtures import write_tiny_inputs

    return write_tiny_inputs(tmp_path_factory.mktemp("own"))


def test_pipeline_runs_skips_and_refreshes_only_what_changed(own_inputs, tmp_path, capsys, monkeypatch):
    from data_fixtures import edit_table

    from star_jax import sources
    from star_jax.fileio import read_json
    from star_jax.pipeline import Pipeline, plan, run_pipeline
    from star_jax.store import EmbeddingStore

    data, tok, base = own_inputs
    shutil.copytree(data, tmp_path / "data")  # edited below
    cfg, out = micro_config(tmp_path / "data", tok, base), tmp_path / "run"

    def ran(redo=()) -> list[str]:
        pipeline = Pipeline(cfg, out, log=lambda s: None, redo=redo)
        pipeline()
        return [r.name for r in pipeline.run.records if not r.skipped]

    run_pipeline(cfg, out)  # the public entry: writes config.yaml, runs every stage
    report = read_json(out / "report.json")
    assert set(report["variants"]) == {"llm_frozen"}
    # The report's AUC, recomputed from the stored vectors and the label file: cosine by numpy,
    # AUC by scikit-learn.
    from sklearn.metrics import roc_auc_score

    from star_jax.data.schema import read_schema

    labels = pd.read_parquet(tmp_path / "data" / read_schema(tmp_path / "data").labels)
    test = labels[labels["split"] == "test"]
    store = EmbeddingStore.open(*read_run(out).store_version("llm_frozen"))
    m = store.lookup("member", test["member_id"].to_numpy())
    j = store.lookup("job", test["job_id"].to_numpy())
    cos = (m * j).sum(1) / np.linalg.norm(m, axis=1) / np.linalg.norm(j, axis=1)
    want = roc_auc_score(test["label"], cos)
    assert report["variants"]["llm_frozen"]["auc"] == pytest.approx(want, abs=1e-6)
    assert read_run(out).cfg == cfg
    assert ran() == []  # every stage up to date

    edit_table(tmp_path / "data", "nodes/member.parquet",
               lambda df: df.assign(text=[t + " Also speaks Welsh." if i == 3 else t
                                          for i, t in zip(df.id, df.text)]))
    assert ran() == ["validate", "embed-llm_frozen", "evaluate"]
    version = read_run(out).store_version("llm_frozen")
    manifest = EmbeddingStore.open(*version).manifest
    assert version[1].startswith("llm_frozen-") and manifest["generation"] == 2  # the same version, refreshed
    assert manifest["node_types"]["member"]["embedded"] == 1  # only the edited text went through the tower
    argv = ["recommend", "--run", str(out), "--member", "3", "--variant", "llm_frozen", "-k", "2"]
    assert cli.main(argv) == 0
    assert "top 2 jobs by llm_frozen" in capsys.readouterr().out
    # Stage keys cover the source their stage runs, and `redo` forces a stage and its dependents
    # (the GNN branch: the slow test below).
    assert plan(cfg) == [("validate", False), ("embed-llm_frozen", True), ("evaluate", False)]
    original = sources.source
    edited = lambda m: original(m) + (b"# edited" if m == "star_jax.llm.towers" else b"")  # noqa: E731
    monkeypatch.setattr(sources, "source", edited)
    assert ran() == ["embed-llm_frozen", "evaluate"]
    assert ran() == []
    assert ran(redo=("embed",)) == ["embed-llm_frozen", "evaluate"]  # a family: every embed-<variant>


@pytest.mark.slow  # four GNN retrains; the fast test above checks the keys on the LLM branch
def test_an_edited_module_reruns_its_stage_and_those_downstream_and_redo_forces_them(own_inputs, tmp_path,
                                                                                     monkeypatch):
    """Stage keys cover the source their stage runs: an edit to gnn/model.py reruns the GNN stages
    and the report, nothing of the LLM branch; `redo` forces a stage and its dependents."""
    from star_jax import sources
    from star_jax.pipeline import Pipeline, plan, run_pipeline

    data, tok, base = own_inputs
    cfg = micro_config(data, tok, base)
    cfg.eval.variants = ["llm_frozen", "gnn_id_cat"]
    for key, value in MICRO.items():
        if key.split(".")[0] in ("gnn", "sampler", "gnn_train"):
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)

    def ran(redo=()) -> list[str]:
        pipeline = Pipeline(cfg, tmp_path / "run", log=lambda s: None, redo=redo)
        pipeline()
        return [r.name for r in pipeline.run.records if not r.skipped]

    gnn = ["train-gnn-gnn_id_cat", "gnn-embed-gnn_id_cat", "evaluate"]
    run_pipeline(cfg, tmp_path / "run", log=lambda s: None)
    assert list(read_run(tmp_path / "run").stamps) == ["validate", "embed-llm_frozen", "build-graph", *gnn]
    # `pipeline --plan` lists the stages the run went through, and who ran each.
    assert plan(cfg) == [("validate", False), ("embed-llm_frozen", True), ("build-graph", False),
                         ("train-gnn-gnn_id_cat", True), ("gnn-embed-gnn_id_cat", True), ("evaluate", False)]
    assert ran() == []
    assert ran(redo=("build-graph",)) == ["build-graph", *gnn]
    assert ran(redo=("train-gnn",)) == gnn  # a family: every train-gnn-<variant>
    assert ran() == []

    original = sources.source

    def edited(*names):
        return lambda m: original(m) + (b"\n# edited\n" if m in names else b"")

    monkeypatch.setattr(sources, "source", edited("star_jax.gnn.model"))
    assert ran() == gnn
    monkeypatch.setattr(sources, "source", edited("star_jax.gnn.model", "star_jax.llm.embed"))
    assert ran() == ["embed-llm_frozen", "evaluate"]  # the GNN reads no LLM embeddings in gnn_id_cat
    assert ran() == []


def test_variant_names_match_the_gnn_stage():
    from star_jax.gnn.train import VARIANTS as GNN
    from star_jax.pipeline import GNN_VARIANTS

    assert set(GNN_VARIANTS) == set(GNN)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    from star_jax.config import check_variants, load_config

    cfg = load_config(path)
    check_variants(cfg.eval.variants)
    assert cfg.llm.arch.hidden_size % cfg.llm.arch.num_attention_heads == 0
    assert cfg.gnn.hidden_dim % cfg.gnn.heads == 0


def test_the_7b_config_has_the_real_shapes():
    from star_jax.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "e5_mistral_7b.yaml")
    a = cfg.llm.arch
    assert (a.hidden_size, a.num_hidden_layers, a.num_attention_heads, a.num_key_value_heads,
            a.intermediate_size, a.vocab_size, a.rope_theta, a.rms_norm_eps, a.sliding_window) == \
        (4096, 32, 32, 8, 14336, 32000, 10000.0, 1e-5, 4096)
    assert (cfg.llm.member_max_len, cfg.llm.job_max_len) == (1024, 1800)
    assert cfg.lora.rank == 16 and set(cfg.lora.targets) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert (a.dtype, a.remat, a.attention) == ("bfloat16", "save_projections", "cudnn")
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (-1, 8, 1) and cfg.llm.base_dir


# -- slow: every variant, killed and resumed; the demo itself --------------------------------------

MICRO = {
    "tokenizer.vocab_size": 400, "llm.arch.hidden_size": 32, "llm.arch.intermediate_size": 64,
    "llm.arch.num_hidden_layers": 1, "llm.arch.num_attention_heads": 2, "llm.arch.num_key_value_heads": 1,
    "llm.member_max_len": 48, "llm.job_max_len": 48, "llm.buckets": "[]", "pretrain.steps": 6,
    "pretrain.batch_size": 8, "pretrain.seq_len": 32, "pretrain.warmup_steps": 1,
    "pretrain.checkpoint_every": 2, "lora.rank": 2, "llm_train.steps": 6, "llm_train.batch_size": 8,
    "llm_train.warmup_steps": 1,
    "llm_train.eval_every": 0, "llm_train.eval_batch_size": 16, "llm_train.checkpoint_every": 2,
    "embed.batch_size": 16, "gnn.hidden_dim": 16, "gnn.heads": 2, "gnn.out_dim": 8, "gnn.llm_block": 4,
    "gnn.attribute_block": 2,
    "gnn.id_buckets": 64,
    "gnn.cat_dim": 4, "gnn.cat_buckets": 16, "sampler.batch_size": 8, "sampler.num_random_negatives": 8,
    "gnn_train.steps": 6, "gnn_train.warmup_steps": 1, "gnn_train.eval_every": 0, "gnn_train.eval_pairs": 64,
    "gnn_train.eval_batch_size": 32, "gnn_train.checkpoint_every": 2, "gnn_train.log_every": 1,
    "eval.num_candidates": 20,
}


def star_jax(log: Path, *args: str) -> subprocess.Popen:
    """`star-jax ARGS` in a child process whose output goes to the file `log`, never to a pipe that
    nobody reads while the test waits."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "star_jax.cli", *args], env=env, text=True,
                                stdout=out, stderr=subprocess.STDOUT)


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


def kill_when(proc: subprocess.Popen, log: Path, path: Path, timeout: float = 900) -> None:
    """SIGKILL `proc` once `path` exists (an orbax step directory appears only when committed)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, tail(log)
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow  # three micro pipelines of every stage, each compiling its models: several minutes
def test_a_killed_pipeline_resumes_to_the_same_report(tmp_path):
    from data_fixtures import write_tiny_data

    from star_jax.fileio import read_json

    data = write_tiny_data(tmp_path / "data")
    args = ["--set", f"data.dir={data}", *[a for k, v in MICRO.items() for a in ("--set", f"{k}={v}")]]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    logs = [tmp_path / f"run{i}.log" for i in range(4)]
    proc = star_jax(logs[0], "pipeline", "--out", str(whole), *args)
    assert proc.wait(timeout=1800) == 0, tail(logs[0])
    kill_when(star_jax(logs[1], "pipeline", "--out", str(killed), *args), logs[1],
              killed / "llm" / "checkpoints" / "2")
    kill_when(star_jax(logs[2], "pipeline", "--out", str(killed), *args), logs[2],
              killed / "gnn" / "gnn_id_cat" / "checkpoints" / "2")
    assert (killed / "stamps" / "train-llm.json").is_file()  # the second run skipped to the GNN
    proc = star_jax(logs[3], "pipeline", "--out", str(killed), *args)
    assert proc.wait(timeout=1800) == 0, tail(logs[3])
    log = logs[3].read_text()
    assert "pipeline: train-llm: up to date" in log and "train-gnn gnn_id_cat: resumed from the step-" in log
    a, b = read_json(whole / "report.json")["variants"], read_json(killed / "report.json")["variants"]
    assert set(a) == set(b) == set(Config().eval.variants)
    for name in a:
        for key in ("auc", "auc_cold_start", "mrr", "recall_at_10"):
            assert a[name][key] == pytest.approx(b[name][key], abs=1e-6), (name, key)


@pytest.mark.slow  # the whole demo: about ten minutes on two quiet cores
def test_the_demo_shows_the_papers_orderings_and_a_rerun_skips_everything(tmp_path):
    from star_jax.fileio import read_json

    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    logs = [tmp_path / "first.log", tmp_path / "rerun.log"]
    for log in logs:
        proc = star_jax(log, "pipeline", "--config", config, "--out", str(tmp_path / "demo"))
        assert proc.wait(timeout=3600) == 0, tail(log)
    assert "pipeline: 0 stage(s) ran" in logs[1].read_text()  # the rerun did nothing
    report = read_json(tmp_path / "demo" / "report.json")
    print(json.dumps({k: [v["auc"], v["auc_cold_start"]] for k, v in report["variants"].items()}))
    verdicts = {c["id"]: c["verdict"] for c in report["checks"]}
    # Only what docs/repro.md settles: fine-tuning held on every seed there; the best GNN beat the
    # towers pooled (not on every seed), and the LLM-feature gains were unresolved, never reversed.
    assert [verdicts[c] for c in ("finetune", "finetune_target")] == ["holds"] * 2, verdicts
    for c in ("gnn_vs_llm", "llm_features", "cold_start_gain"):
        assert verdicts[c] != "fails", report["checks"]
    assert all(0.5 < v["auc"] < 1 for v in report["variants"].values())


def test_the_configs_name_lists_match_the_code_that_maps_them():
    from star_jax import config
    from star_jax.llm.lora import TARGET_MODULES
    from star_jax.llm.mistral import REMAT_POLICIES
    from star_jax.store.layout import DTYPES

    assert set(config.REMAT_NAMES) == set(REMAT_POLICIES)
    assert set(config.LORA_TARGETS) == set(TARGET_MODULES)
    assert set(config.STORE_DTYPES) == set(DTYPES)


@pytest.mark.parametrize("override, message", [
    ("gnn.cold_start_ids=dorp", "gnn.cold_start_ids: expected one of drop, keep, got 'dorp'"),
    ("gnn_train.cold_start_rate=2", "gnn_train.cold_start_rate: expected a value in [0, 1]"),
    ("sampler.relation_fanouts.member_skill_rev=[1]", "sampler.relation_fanouts.member_skill_rev: expected"),
    ("store.compression=lz4", "store.compression: expected one of"),
    ("lora.targets=[q,qq]", "lora.targets: unknown entry 'qq'"),
    ("lora.modules_to_save=[lm_head]", "lora.modules_to_save: unknown entry 'lm_head'"),
    ("llm.arch.num_key_value_heads=3", "llm.arch.num_attention_heads: 4 is not a multiple"),
    ("mesh.rules.embed=[fdsp]", "mesh.rules.embed: unknown mesh axis 'fdsp'"),
    ("eval.variants=[gnn_id_cat,llm]", "eval.variants: unknown variant 'llm'"),
    ("llm_train.grad_accum=3", "llm_train.batch_size: 16 does not split"),
])
def test_every_section_checks_itself_when_the_config_loads(tmp_path, capsys, override, message):
    """The pipeline fails on a bad value in one line before any stage runs (nothing is written)."""
    line = one_line_error(capsys, ["pipeline", "--out", str(tmp_path / "run"), "--set", override])
    assert message in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("redo", ["bogus", "../x", "train-gnn-../x"])
def test_redo_names_a_stage(tmp_path, capsys, redo):
    line = one_line_error(capsys, ["pipeline", "--out", str(tmp_path / "run"), "--redo", redo])
    assert f"--redo {redo}: not a stage" in line and not (tmp_path / "run").exists()


def test_build_graph_never_replaces_a_directory_that_is_not_a_graph(tmp_path, capsys):
    from data_fixtures import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = one_line_error(capsys, ["build-graph", "--data", str(data), "--out", str(tmp_path / "mine")])
    assert "not a graph" in line and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
