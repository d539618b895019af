"""Bad input to every `star-jax` command fails fast in one line; faults in the inputs are named.

The sweep runs each command of `cli.COMMANDS` in process with a required input missing, an input
of the wrong type and an empty data directory: each must exit non-zero with at most 3 lines on
stderr (a progress bar, redrawn in place, is one line), the last naming the flag, file or field,
and no traceback. Then the fault-matrix rows of the inputs: unreadable or mistyped Parquet tables,
broken tokenizers, pickle-only weights, paths where a name is expected, and two pipelines on one
run directory (RUN_DIR/.lock).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import edit_table, write_tiny_data

from star_jax import cli
from star_jax.config import Config, StoreConfig, TokenizerConfig, to_yaml
from star_jax.data.tokenizer import train_tokenizer

TINY_MISTRAL = {  # config.json of a tiny Mistral; the weights beside it vary per case
    "model_type": "mistral", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "sliding_window": None, "rms_norm_eps": 1e-5,
}


class Inputs(NamedTuple):
    root: Path
    data: Path  # a valid tiny data directory
    tok: Path  # a tokenizer trained on it
    empty: Path  # an empty directory
    file: Path  # a file, where directories are expected
    nope: Path  # nothing there
    run: Path  # a run directory with only config.yaml
    binbase: Path  # config.json and a pickle pytorch_model.bin that would create `marker` if unpickled
    marker: Path


class _Touch:
    """Unpickling this creates `path`: proof that a pickle file was (or was not) loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def tree(root: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    data = write_tiny_data(root / "data")
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=300))
    (root / "empty").mkdir()
    (root / "file").write_text("not a directory\n")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(Config()))
    binbase = root / "binbase"
    binbase.mkdir()
    (binbase / "config.json").write_text(json.dumps(TINY_MISTRAL))
    marker = root / "unpickled"
    (binbase / "pytorch_model.bin").write_bytes(pickle.dumps(_Touch(marker)))
    return Inputs(root, data, tok, root / "empty", root / "file", root / "nope", run, binbase, marker)


def fill(argv: list[str], inputs: Inputs, out: Path) -> list[str]:
    paths = {k: os.fspath(v) for k, v in inputs._asdict().items()} | {"out": os.fspath(out)}
    return [a.format(**paths) for a in argv]


def fails_in_one_line(capsys, argv: list[str]) -> tuple[str, str]:
    """Run `star-jax ARGV` in process; (last stderr line, stdout) of a clean failure."""
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().split("\n")
    assert code == 2, (argv, captured.err[-3000:])
    assert "Traceback" not in captured.err and len(lines) <= 3, captured.err[-3000:]
    assert lines[-1].startswith("star-jax: error: "), captured.err[-3000:]
    return lines[-1], captured.out


# -- the sweep -----------------------------------------------------------------------------------

MISSING, WRONG, EMPTY = "missing input", "wrong type", "empty data dir"
LLM = ["--data", "{data}", "--tokenizer", "{tok}"]
GNN = ["--graph", "{empty}", "--variant", "gnn_id_cat"]
EXPORT = ["--graph", "{empty}", "--version", "g"]
INDEX = ["--variant", "gnn_id_cat"]

# (category, argv, a phrase the error line must hold). `{name}` is a path of `Inputs`; `{out}` a
# fresh path under the test's tmp_path. Every case must fail before any stage starts its work.
CASES = [
    (MISSING, ["synth"], "required: --out"),
    (WRONG, ["synth", "--seed", "abc", "--out", "{out}"], "--seed: invalid int value: 'abc'"),
    (WRONG, ["synth", "--set", "data.seed=abc", "--out", "{out}"], "data.seed"),
    (WRONG, ["synth", "--out", "{file}"], "--out {file}: not a directory"),
    (WRONG, ["synth", "--out", "{file}/data"], "--out {file}/data: not a directory ({file} is a file)"),
    (WRONG, ["synth", "--out", "{data}/nodes"], "--out {data}/nodes: exists and is not a synthetic data"),
    (EMPTY, ["synth", "--config", "{empty}", "--out", "{out}"], "config file not found: {empty}"),

    (MISSING, ["validate"], "required: data_dir"),
    (MISSING, ["validate", "{nope}"], "data directory not found: {nope}"),
    (WRONG, ["validate", "{file}"], "data directory not found: {file}"),
    (WRONG, ["validate", "{data}", "--show", "abc"], "--show: invalid int value"),
    (EMPTY, ["validate", "{empty}"], "{empty}: 1 fault found"),

    (MISSING, ["tokenizer", "--out", "{out}"], "--data: required (or set data.dir"),
    (MISSING, ["tokenizer", "--data", "{nope}", "--out", "{out}"], "--data {nope}: no such directory"),
    (WRONG, ["tokenizer", "--data", "{file}", "--out", "{out}"], "--data {file}: not a directory"),
    (WRONG, ["tokenizer", "--data", "{data}", "--out", "{file}"], "--out {file}: not a directory"),
    (WRONG, ["tokenizer", "--data", "{data}", "--out", "{data}"],
     "--out {data}: exists and is not a tokenizer directory"),
    (WRONG, ["tokenizer", "--data", "{data}", "--out", "{out}", "--set", "tokenizer.vocab_size=abc"],
     "tokenizer.vocab_size"),
    (EMPTY, ["tokenizer", "--data", "{empty}", "--out", "{out}"], "{empty}: invalid data: schema.json"),

    (MISSING, ["inspect-model"], "required: dir"),
    (MISSING, ["inspect-model", "{nope}"], "{nope}: no such model directory"),
    (WRONG, ["inspect-model", "{file}"], "{file}: no such model directory"),
    (WRONG, ["inspect-model", "{binbase}", "--dtype", "int8"], "--dtype: invalid choice"),
    (EMPTY, ["inspect-model", "{empty}"], "{empty}/config.json: not found"),

    (MISSING, ["pretrain", "--data", "{data}", "--out", "{out}"], "--tokenizer: required"),
    (MISSING, ["pretrain", "--data", "{data}", "--tokenizer", "{nope}", "--out", "{out}"],
     "--tokenizer {nope}: no such directory"),
    (WRONG, ["pretrain", *LLM, "--out", "{file}"], "--out {file}: not a directory"),
    (WRONG, ["pretrain", *LLM, "--out", "{out}", "--set", "pretrain.steps=abc"], "pretrain.steps"),
    (EMPTY, ["pretrain", "--data", "{empty}", "--tokenizer", "{tok}", "--out", "{out}"],
     "{empty}: invalid data: schema.json"),

    (MISSING, ["train-llm", *LLM, "--out", "{out}"], "--base: required (or set llm.base_dir"),
    (MISSING, ["train-llm", *LLM, "--base", "{nope}", "--out", "{out}"], "--base {nope}: no such directory"),
    (WRONG, ["train-llm", *LLM, "--base", "{file}", "--out", "{out}"], "--base {file}: not a directory"),
    (WRONG, ["train-llm", *LLM, "--base", "{binbase}", "--out", "{file}"], "--out {file}: not a directory"),
    (WRONG, ["train-llm", *LLM, "--base", "{binbase}", "--out", "{out}", "--set", "lora.rank=abc"],
     "lora.rank"),
    (EMPTY, ["train-llm", "--data", "{empty}", "--tokenizer", "{tok}", "--base", "{binbase}", "--out",
             "{out}"], "{empty}: invalid data: schema.json"),

    (MISSING, ["embed", *LLM, "--base", "{binbase}", "--store", "{out}"], "required: --version"),
    (MISSING, ["embed", *LLM, "--base", "{binbase}", "--version", "v1"], "--store: required"),
    (MISSING, ["embed", *LLM, "--base", "{binbase}", "--store", "{out}", "--version", "v1", "--adapters",
               "{nope}"], "--adapters {nope}: neither a PEFT adapter directory"),
    (WRONG, ["embed", *LLM, "--base", "{binbase}", "--store", "{file}", "--version", "v1"],
     "--store {file}: not a directory"),
    (WRONG, ["embed", *LLM, "--base", "{binbase}", "--store", "{out}", "--version", "v1", "--log-dir",
             "{file}"], "--log-dir {file}: not a directory"),
    (WRONG, ["embed", *LLM, "--base", "{binbase}", "--store", "{out}", "--version", "v1", "--types",
             "../member"], "--types ../member: not a node type with text"),
    (EMPTY, ["embed", "--data", "{empty}", "--tokenizer", "{tok}", "--base", "{binbase}", "--store", "{out}",
             "--version", "v1"], "{empty}: invalid data: schema.json"),

    (MISSING, ["store"], "required: ACTION"),
    (MISSING, ["store", "info"], "--store: required (or set store.root)"),
    (MISSING, ["store", "info", "--store", "{nope}"], "store not found: {nope}"),
    (WRONG, ["store", "info", "--store", "{file}"], "--store {file}: not a directory"),
    (WRONG, ["store", "migrate", "--store", "{empty}", "--from", "a", "--to", "b", "--ridge", "abc"],
     "--ridge: invalid float value"),
    (EMPTY, ["store", "info", "--store", "{empty}"], "store not found: {empty}"),

    (MISSING, ["build-graph", "--out", "{out}"], "required: --data"),
    (MISSING, ["build-graph", "--data", "{nope}", "--out", "{out}"], "--data {nope}: no such directory"),
    (WRONG, ["build-graph", "--data", "{data}", "--out", "{file}"], "--out {file}: not a directory"),
    (EMPTY, ["build-graph", "--data", "{empty}", "--out", "{out}"], "{empty}/schema.json: missing"),

    (MISSING, ["graph"], "required: ACTION"),
    (MISSING, ["graph", "fetch", "--from", "{nope}", "--to", "{out}"],
     "graph store {nope}: no manifest.json"),
    (WRONG, ["graph", "fetch", "--from", "{data}", "--to", "{file}"], "--to {file}: not a directory"),
    (EMPTY, ["graph", "fetch", "--from", "{empty}", "--to", "{out}"],
     "graph store {empty}: no manifest.json"),

    (MISSING, ["train-gnn", "--graph", "{nope}", "--variant", "gnn_id_cat", "--out", "{out}"],
     "--graph {nope}: no such directory"),
    (MISSING, ["train-gnn", "--graph", "{empty}", "--out", "{out}"], "required: --variant"),
    (WRONG, ["train-gnn", "--graph", "{empty}", "--variant", "gnn_id", "--out", "{out}"],
     "--variant: invalid choice: 'gnn_id'"),
    (WRONG, ["train-gnn", "--data", "{data}", *GNN, "--out", "{out}", "--set", "gnn.heads=abc"], "gnn.heads"),
    (WRONG, ["train-gnn", "--data", "{data}", "--graph", "{file}", "--variant", "gnn_id_cat", "--out",
             "{out}"], "--graph {file}: not a directory"),
    (EMPTY, ["train-gnn", "--data", "{empty}", *GNN, "--out", "{out}"], "{empty}/graph.json: missing"),

    (MISSING, ["gnn-embed", *EXPORT, "--ckpt", "{nope}", "--out-store", "{out}"],
     "--ckpt {nope}: no such directory"),
    (WRONG, ["gnn-embed", *EXPORT, "--ckpt", "{empty}", "--out-store", "{file}"],
     "--out-store {file}: not a directory"),
    (EMPTY, ["gnn-embed", *EXPORT, "--ckpt", "{empty}", "--out-store", "{out}"],
     "{empty}/graph.json: missing"),

    (MISSING, ["evaluate"], "required: --run"),
    (MISSING, ["evaluate", "--run", "{nope}"], "--run {nope}: no such directory"),
    (WRONG, ["evaluate", "--run", "{file}"], "--run {file}: not a directory"),
    (WRONG, ["evaluate", "--run", "{run}", "--set", "eval.k=abc"], "eval.k"),
    (EMPTY, ["evaluate", "--run", "{empty}"], "--run {empty}: no config.yaml"),

    (MISSING, ["pipeline"], "required: --out"),
    (MISSING, ["pipeline", "--out", "{out}", "--config", "{nope}"], "config file not found: {nope}"),
    (WRONG, ["pipeline", "--out", "{out}", "--set", "gnn.heads=abc"], "gnn.heads"),
    (WRONG, ["pipeline", "--out", "{file}"], "--out {file}: not a directory"),
    (WRONG, ["pipeline", "--out", "{file}/run"], "--out {file}/run: not a directory ({file} is a file)"),
    (EMPTY, ["pipeline", "--out", "{out}", "--set", "data.dir={empty}"],
     "{empty}: invalid data: schema.json"),

    (MISSING, ["recommend", "--run", "{run}"], "required: --member"),
    (MISSING, ["recommend", "--run", "{nope}", "--member", "1"], "--run {nope}: no such directory"),
    (WRONG, ["recommend", "--run", "{run}", "--member", "1", "-k", "x"], "-k: invalid int value: 'x'"),
    (WRONG, ["recommend", "--run", "{run}", "--member", "abc"], "--member: invalid int value: 'abc'"),
    (WRONG, ["recommend", "--run", "{file}", "--member", "1"], "--run {file}: not a directory"),
    (EMPTY, ["recommend", "--run", "{empty}", "--member", "1"], "--run {empty}: no config.yaml"),
    (MISSING, ["recommend", "--run", "{run}", "--all"], "--out: required with --all"),
    (WRONG, ["recommend", "--run", "{run}", "--all", "--out", "{data}"], "--out {data}: is a directory"),

    (MISSING, ["index"], "required: ACTION"),
    (MISSING, ["index", "build", "--variant", "gnn_id_cat"], "required: --run"),
    (MISSING, ["index", "build", "--run", "{nope}", *INDEX], "--run {nope}: no such directory"),
    (MISSING, ["index", "build", "--run", "{run}", *INDEX], "--variant gnn_id_cat: {run} has no gnn_id_cat"),
    (WRONG, ["index", "build", "--run", "{file}", *INDEX], "--run {file}: not a directory"),
    (WRONG, ["index", "build", "--run", "{run}", *INDEX, "--ef-search", "x"], "--ef-search: invalid int"),
    (WRONG, ["index", "build", "--run", "{run}", *INDEX, "--type", "lsh"], "--type: invalid choice"),
    (WRONG, ["index", "build", "--run", "{run}", *INDEX, "--nprobe", "0"], "--nprobe: must be >= 1"),
    (EMPTY, ["index", "build", "--run", "{empty}", *INDEX], "--run {empty}: no config.yaml"),
]


def _case_id(case) -> str:
    category, argv, _ = case
    return f"{argv[0]}: {category}: {' '.join(argv[1:])}"


def test_the_sweep_covers_every_command_in_every_category():
    covered = {(argv[0], category) for category, argv, _ in CASES}
    assert covered == {(c, k) for c in cli.COMMANDS for k in (MISSING, WRONG, EMPTY)}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_fails_in_one_line(case, inputs, tmp_path, capsys):
    _, argv, phrase = case
    out = tmp_path / "out"
    before = tree(inputs.root)
    line, _ = fails_in_one_line(capsys, fill(argv, inputs, out))
    assert fill([phrase], inputs, out)[0] in line
    assert tree(inputs.root) == before  # nothing shared was written to, replaced or removed
    assert not inputs.marker.exists()


# -- fault matrix: data tables -------------------------------------------------------------------


@pytest.fixture
def data(inputs, tmp_path) -> Path:
    return Path(shutil.copytree(inputs.data, tmp_path / "data"))


def _validate_faults(capsys, data: Path) -> list[str]:
    line, out = fails_in_one_line(capsys, ["validate", os.fspath(data)])
    assert "fault" in line
    return out.strip().splitlines()


def test_a_truncated_table_is_named_by_validate_and_by_a_stage(data, tmp_path, capsys):
    path = data / "nodes/job.parquet"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    faults = _validate_faults(capsys, data)
    assert len(faults) == 1 and faults[0].startswith("nodes/job.parquet: not readable as Parquet"), faults
    # A stage reading the data refuses it the same way (check_data), before any work.
    argv = ["build-graph", "--data", os.fspath(data), "--out", str(tmp_path / "g")]
    line, _ = fails_in_one_line(capsys, argv)
    assert "nodes/job.parquet: not readable as Parquet" in line
    assert not (tmp_path / "g").exists()


def _corrupt_pages(path: Path, column: str) -> None:
    """Overwrite the first bytes of `column`'s pages; the footer (schema, row counts) still reads."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 16] = b"A" * 16
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("rel, column", [("nodes/job.parquet", "text"), ("labels/pairs.parquet", "label"),
                                         ("edges/member_applied.parquet", "timestamp")])
def test_corrupt_pages_are_named_with_table_and_column(data, capsys, rel, column):
    _corrupt_pages(data / rel, column)
    faults = _validate_faults(capsys, data)
    assert [f for f in faults if f.startswith(f"{rel}: {column}: not readable as Parquet")] == faults[:1]


def test_a_column_of_the_wrong_type_is_named_with_table_and_column(data, capsys):
    edit_table(data, "labels/pairs.parquet", lambda df: df.assign(timestamp=df["timestamp"].astype(str)))
    edit_table(data, "nodes/member.parquet", lambda df: pa.table(
        {**{c: pa.array(df[c]) for c in df.columns if c != "id"}, "id": pa.array(df["id"], pa.float64())}))
    faults = _validate_faults(capsys, data)
    assert any(f.startswith("labels/pairs.parquet: timestamp: wrong dtype large_string") for f in faults)
    assert any(f.startswith("nodes/member.parquet: id: wrong dtype double") for f in faults), faults


# -- fault matrix: tokenizer and model files -----------------------------------------------------


def _broken_tokenizer(inputs: Inputs, tmp_path: Path, what: str) -> Path:
    tok = Path(shutil.copytree(inputs.tok, tmp_path / what))
    if what == "missing":  # tokenizer_config.json alone: nothing to build the tokenizer from
        (tok / "tokenizer.json").unlink()
    elif what == "truncated":
        (tok / "tokenizer.json").write_bytes((inputs.tok / "tokenizer.json").read_bytes()[:200])
    elif what == "wrong-structure":
        (tok / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    elif what == "remote-code":  # transformers would import custom_tok.py, which writes the marker
        config = json.loads((tok / "tokenizer_config.json").read_text())
        config["auto_map"] = {"AutoTokenizer": ["custom_tok.CustomTokenizer", None]}
        (tok / "tokenizer_config.json").write_text(json.dumps(config))
        (tok / "custom_tok.py").write_text(f"open({os.fspath(inputs.marker)!r}, 'w').close()\n")
    return tok


TOKENIZER_FAULTS = {
    "missing": "cannot load tokenizer: Couldn't instantiate the backend tokenizer",
    "truncated": "cannot load tokenizer: ",
    "wrong-structure": "cannot load tokenizer: ",
    "remote-code": "tokenizer_config.json: auto_map names custom tokenizer code; star-jax never runs it",
}


@pytest.mark.parametrize("what", list(TOKENIZER_FAULTS))
@pytest.mark.parametrize("command", ["pretrain", "train-llm", "tokenizer"])
def test_a_missing_or_corrupt_tokenizer_is_refused_in_one_line(inputs, tmp_path, capsys, what, command):
    tok = os.fspath(_broken_tokenizer(inputs, tmp_path, what))
    out = str(tmp_path / "out")
    argv = {
        "pretrain": ["pretrain", "--data", os.fspath(inputs.data), "--tokenizer", tok, "--out", out],
        "train-llm": ["train-llm", "--data", os.fspath(inputs.data), "--tokenizer", tok, "--base",
                      os.fspath(inputs.binbase), "--out", out],
        "tokenizer": ["tokenizer", "--out", out, "--set", f"tokenizer.dir={tok}"],  # a configured one
    }[command]
    line, _ = fails_in_one_line(capsys, argv)
    assert tok in line and TOKENIZER_FAULTS[what] in line
    assert not inputs.marker.exists()


def test_pickle_only_weights_are_refused_and_never_unpickled(inputs, tmp_path, capsys):
    data, tok, base = map(os.fspath, (inputs.data, inputs.tok, inputs.binbase))
    why = f"{base}: only pickle weights (pytorch_model.bin), and star-jax loads safetensors only"
    llm = ["--data", data, "--tokenizer", tok, "--base", base]
    embed = ["embed", *llm, "--store", str(tmp_path / "s"), "--version", "v1"]
    for argv in (["inspect-model", base], ["train-llm", *llm, "--out", str(tmp_path / "t")], embed):
        line, _ = fails_in_one_line(capsys, argv)
        assert why in line, line
    # A PEFT adapter saved as a pickle is refused the same way.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Touch(inputs.marker)))
    line, _ = fails_in_one_line(capsys, [*embed, "--adapters", str(adapter)])
    assert "adapter_model.safetensors: not found, only the pickle adapter_model.bin" in line
    assert not inputs.marker.exists()


# -- fault matrix: names, not paths --------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

    root = tmp_path_factory.mktemp("store") / "s"
    ids = np.arange(8, dtype=np.int64)
    spec = EmbeddingSpec(model="m", adapter=None, tokenizer="t", max_len=8, pooling="mean", dim=4)
    w = EmbeddingWriter.open(os.fspath(root), "v1", spec, {"member": (ids, text_hash([str(i) for i in ids]))},
                             StoreConfig(shard_rows=8, chunk_rows=4))
    for block in w.pending_blocks("member"):
        w.write("member", block.rows, np.ones((len(block.rows), 4), np.float32))
    w.publish()
    return root


BAD_NAMES = ["../x", "/abs", "v1/../../x"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_path_where_a_version_name_is_expected_is_refused(inputs, store, tmp_path, capsys, name):
    s, empty = os.fspath(store), os.fspath(inputs.empty)
    out = tmp_path / "out"
    before = tree(store)
    llm = ["--data", os.fspath(inputs.data), "--tokenizer", os.fspath(inputs.tok), "--base",
           os.fspath(inputs.binbase)]
    cases = [
        (["store", "info", "--store", s, "--version", name], "version"),
        (["store", "migrate", "--store", s, "--from", name, "--to", "v1"], "version"),
        (["store", "migrate", "--store", s, "--from", "v1", "--to", name], "version"),
        (["embed", *llm, "--store", os.fspath(out), "--version", name], "version"),
        (["gnn-embed", "--graph", empty, "--ckpt", empty, "--out-store", os.fspath(out), "--version", name],
         "--version"),
        (["gnn-embed", "--graph", empty, "--ckpt", empty, "--out-store", os.fspath(out), "--version", "g",
          "--store", s, "--store-version", name], "--store-version"),
        (["train-gnn", "--data", os.fspath(inputs.data), "--graph", empty, "--variant", "gnn_id_llm", "--out",
          os.fspath(out), "--store", s, "--store-version", name], "--store-version"),
    ]
    for argv, what in cases:
        line, _ = fails_in_one_line(capsys, argv)
        assert f"{what} {name!r}: use letters, digits" in line, (argv, line)
    assert tree(store) == before and not out.exists()
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


# -- fault matrix: two pipelines on one run directory --------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from star_jax.pipeline.lock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_second_pipeline_stops_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
        inputs, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["pipeline", "--out", os.fspath(run), "--set", f"data.dir={inputs.empty}"]  # fails at validate
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, os.fspath(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = json.loads((run / ".lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        before = tree(run)
        line, _ = fails_in_one_line(capsys, argv)
        assert f"another pipeline (pid {holder.pid} on {socket.gethostname()}) is running" in line
        assert tree(run) == before  # stopped before writing anything (config.yaml, stamps)
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup: the lock stays behind, naming a dead pid
        holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid

    capsys.readouterr()
    assert cli.main(argv) == 2  # runs (to the empty data's one-line error) after taking the lock over
    err = capsys.readouterr().err
    host = socket.gethostname()
    assert f".lock: stale lock (pid {holder.pid} on {host}, no longer running); taking it over" in err
    assert "invalid data: schema.json" in err.strip().split("\n")[-1]
    assert (run / "config.yaml").is_file() and not (run / ".lock").exists()  # released on the way out


def test_a_lock_from_another_host_is_respected(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    argv = ["pipeline", "--out", os.fspath(run), "--set", f"data.dir={inputs.empty}"]
    line, _ = fails_in_one_line(capsys, argv)
    assert "another pipeline (pid 1 on elsewhere) is running" in line and f"delete {run / '.lock'}" in line
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
