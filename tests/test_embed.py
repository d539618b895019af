"""`star-jax embed` and the version-migration experiment.

Stored vectors are checked against transformers + PEFT (E5-Mistral's tokenization, mean pooling,
L2 norm; fp32 storage to fp32 precision, bf16 storage to bf16 rounding), for the frozen base,
one shared adapter (from a train-llm output and from a PEFT directory) and per-tower adapters. A
refresh after 1% of the texts changed re-embeds exactly those rows; a SIGKILLed `star-jax embed`
(tests/embed_worker.py) resumes to the bytes of an uninterrupted run; bad inputs fail in one line.
The migration experiment is checked on a planted rotation and on two random adapters.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_fixtures import T0, edit_table, write_tiny_data
from flax import traverse_util
from hf_fixtures import build_checkpoint

from star_jax import cli
from star_jax.config import Config, LoraConfig, StoreConfig, TokenizerConfig, to_yaml
from star_jax.data.loader import NodeTexts
from star_jax.data.tokenizer import train_tokenizer
from star_jax.errors import StarError
from star_jax.eval.migration import migration_table, run_migration_experiment, write_migration_report
from star_jax.llm import embed
from star_jax.llm.biencoder import JOB, MEMBER
from star_jax.llm.embed import embed_store
from star_jax.llm.hf_io import read_config
from star_jax.llm.mistral import abstract_variables
from star_jax.llm.peft_io import export_peft
from star_jax.llm.towers import clear_tower_cache, tower_fns
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, list_versions, text_hash
from star_jax.store.kv import StoreRoot
from star_jax.tracking import read_metrics

WORKER = Path(__file__).with_name("embed_worker.py")
SIZES = {MEMBER: 200, JOB: 100}
# fp32 storage against transformers: |ours - oracle| measured <= 1.8e-7 on these unit vectors.
FP32 = dict(rtol=1e-5, atol=1e-6)
# bf16 storage: a stored value is our fp32 y' rounded to nearest, |s - y'| <= 2^-8 |y'| (8 significant
# bits), and |y' - y| <= FP32's bound, so |s - y| <= (2^-8 + 1e-5) |y| + 1e-6 (to first order).
BF16 = dict(rtol=2**-8 + 1e-5, atol=1e-6)
# Two bf16 stores of fp32 values FP32-close: equal, or one rounding apart (one ulp, <= 2^-7 |y|).
BF16_STORES = dict(rtol=2**-7, atol=1e-6)


def embed_config(**store) -> Config:
    cfg = Config()
    cfg.llm.instruction = "Query: "
    # One bucket below the max length: batches pad to 32 or 64 tokens, so two compiles per model.
    cfg.llm.member_max_len, cfg.llm.job_max_len, cfg.llm.buckets = 64, 64, [32]
    cfg.embed.batch_size, cfg.embed.block_rows = 16, 32  # 8 devices x 2 rows; blocks of two shards
    cfg.store = StoreConfig(shard_rows=16, **store)
    return cfg


class Env(NamedTuple):
    root: Path
    data: str
    tok: str
    base: str
    store: str


def random_adapters(arch, lora: LoraConfig, seed: int) -> dict:
    """Stand-ins for trained adapters: A as PEFT initialises it, B random (B = 0, as training starts,
    would leave the base as is) and small, so the deltas are about as large as the base weights."""
    flat = traverse_util.flatten_dict(nn.unbox(abstract_variables(arch, lora)["lora"]))
    rng = np.random.default_rng(seed)
    draw = lambda k, shape: (rng.normal(0, 0.02, shape) if k[-1] == "lora_B"
                             else rng.uniform(-1, 1, shape) / np.sqrt(shape[-2]))
    return traverse_util.unflatten_dict({k: draw(k, a.shape).astype(np.float32) for k, a in flat.items()})


@pytest.fixture(scope="module", autouse=True)
def fresh_tower_cache():
    """The jitted towers are process-wide: count only those this module's runs create."""
    clear_tower_cache()
    yield
    clear_tower_cache()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("embed")
    data = write_tiny_data(root / "data", members=SIZES[MEMBER], jobs=SIZES[JOB])
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    build_checkpoint(root / "base", vocab_size=512)
    arch, lora = read_config(root / "base"), LoraConfig(rank=4)
    export_peft(random_adapters(arch, lora, 1), lora, arch, root / "shared_run" / "adapters" / "shared")
    for seed, name in enumerate(("member", "job"), start=2):
        export_peft(random_adapters(arch, lora, seed), lora, arch, root / "tower_run" / "adapters" / name)
    return Env(root, str(data), str(tok), str(root / "base"), str(root / "store"))


VARIANTS = {  # version -> --adapters, relative to the env root
    "frozen": None,
    "shared": "shared_run",  # a train-llm output with one shared adapter
    "towers": "tower_run",  # a train-llm output with a member and a job adapter
    "peft": "shared_run/adapters/shared",  # a PEFT adapter directory
}


def adapters_dir(env: Env, variant: str) -> str | None:
    return None if VARIANTS[variant] is None else str(env.root / VARIANTS[variant])


@pytest.fixture(scope="module")
def stores(env):
    """Versions of env.store, one per variant, embedded on first use (8-device mesh)."""
    done = {}

    def get(variant: str) -> embed.EmbedResult:
        if variant not in done:
            done[variant] = embed_store(embed_config(), env.data, env.tok, env.base, env.store, variant,
                                        adapters=adapters_dir(env, variant))
        return done[variant]

    return get


def texts_of(data: str, node_type: str) -> tuple[np.ndarray, list[str]]:
    source = NodeTexts(data, node_type)
    return source.ids(), source.lookup(source.ids())


# The oracle's adapters, per variant and tower: PEFT adapter directories under the env root.
ORACLE_ADAPTERS = {
    "frozen": {MEMBER: None, JOB: None},
    "shared": {MEMBER: "shared_run/adapters/shared", JOB: "shared_run/adapters/shared"},
    "towers": {MEMBER: "tower_run/adapters/member", JOB: "tower_run/adapters/job"},
    "peft": {MEMBER: "shared_run/adapters/shared", JOB: "shared_run/adapters/shared"},
}


@functools.cache
def hf_model(base: str, adapter: str | None):
    """transformers' MistralModel from the base directory (fp32, exact attention), with PEFT's LoRA."""
    import transformers
    from peft import PeftModel

    model = transformers.MistralModel.from_pretrained(base, attn_implementation="eager", dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def hf_tower(env: Env, variant: str, node_type: str, texts: list[str]) -> np.ndarray:
    """The tower's unit vectors from transformers + PEFT, independent of star_jax's model and encoder.

    Tokenized as E5-Mistral's model card does (the instruction before member texts only, cut to
    max_len - 1 tokens including BOS, then EOS), right-padded, the final hidden states mean-pooled
    over the real tokens (`llm.pooling: mean`, sentence-transformers' masked mean), L2-normalised.
    """
    import transformers

    llm = embed_config().llm
    assert llm.pooling in ("mean", "mean_first_last")
    if node_type == MEMBER:
        max_len, texts = llm.member_max_len, [llm.instruction + t for t in texts]
    else:
        max_len = llm.job_max_len
    tok = transformers.AutoTokenizer.from_pretrained(env.tok)
    rows = tok(texts, max_length=max_len - 1, truncation=True, padding=False)["input_ids"]
    rows = [r + [tok.eos_token_id] for r in rows]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    adapter = ORACLE_ADAPTERS[variant][MEMBER if node_type == MEMBER else JOB]
    model = hf_model(env.base, None if adapter is None else str(env.root / adapter))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        unit = functools.partial(torch.nn.functional.normalize, p=2, dim=-1)
        pooled = (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        if llm.pooling == "mean_first_last":
            first = (out.hidden_states[0] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            pooled = unit(first) + unit(pooled)
        return unit(pooled).numpy()


def bits(store: EmbeddingStore, node_type: str, ids: np.ndarray) -> np.ndarray:
    """The stored bit pattern of each row (bf16 -> f32 is exact, so f32 bits identify it)."""
    return store.lookup(node_type, ids).view(np.uint32)


# -------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stored_vectors_equal_the_towers_direct_outputs(env, stores, variant):
    result = stores(variant)
    assert result.changed == result.embedded == SIZES and not result.resumed
    assert result.copied == {MEMBER: 0, JOB: 0}
    store = EmbeddingStore.open(env.store, variant)
    for node_type in SIZES:
        ids, texts = texts_of(env.data, node_type)
        assert np.array_equal(store.ids(node_type), ids)
        assert np.array_equal(store.text_hashes(node_type), text_hash(texts))
        want = hf_tower(env, variant, node_type, texts)
        np.testing.assert_allclose(store.lookup(node_type, ids), want, **BF16)
        if variant != "frozen":  # the adapters matter far beyond the tolerance
            assert np.abs(hf_tower(env, "frozen", node_type, texts) - want).max() > 0.1
    m = store.manifest
    assert m["pooling"] == embed_config().llm.pooling  # the config's, as `direct` pooled
    assert (m["max_len"], m["dim"], m["dtype"]) == ({MEMBER: 64, JOB: 64}, 32, "bfloat16")
    assert m["model"].startswith("base@") and m["tokenizer"].startswith("tok@")
    assert m["extra"]["instruction"] == "Query: "
    adapter = {"frozen": None, "shared": "shared_run@", "towers": "tower_run@", "peft": "shared@"}[variant]
    assert m["adapter"] is None if adapter is None else m["adapter"].startswith(adapter)


def test_fp32_storage_matches_to_fp32_precision_and_compiles_once_per_bucket(env, stores, tmp_path):
    stores("frozen")
    result = embed_store(embed_config(dtype="float32"), env.data, env.tok, env.base, tmp_path / "store", "v")
    store = EmbeddingStore.open(tmp_path / "store", "v")
    assert store.dtype == "float32"
    for node_type in SIZES:
        ids, texts = texts_of(env.data, node_type)
        # Bucketed, length-sorted, sharded over 8 devices versus transformers in one padded batch.
        want = hf_tower(env, "frozen", node_type, texts)
        np.testing.assert_allclose(store.lookup(node_type, ids), want, **FP32)
    assert result.truncated[MEMBER] > 0 and result.truncated[JOB] > 0  # max lengths do cut
    # One jitted function per model (frozen base, base + LoRA), one compile per padded width: both
    # towers, the bf16 and fp32 runs and every later run in this process reuse them.
    assert 1 <= len(tower_fns()) <= 2
    assert all(fn._cache_size() == 2 for fn in tower_fns())


def test_refresh_reembeds_exactly_the_changed_texts(env, stores, tmp_path, caplog):
    stores("frozen")
    data, root = shutil.copytree(env.data, tmp_path / "data"), shutil.copytree(env.store, tmp_path / "store")
    changed = {MEMBER: [5, 150], JOB: [42]}  # 1% of the texts
    for node_type, ids in changed.items():
        edit_table(data, f"nodes/{node_type}.parquet",
                   lambda df, ids=ids: df.assign(text=[t + " now fully remote" if i in ids else t
                                                       for i, t in zip(df["id"], df["text"])]))
    before = EmbeddingStore.open(root, "frozen")
    caplog.set_level(logging.INFO, logger="star_jax")
    caplog.clear()
    result = embed_store(embed_config(), data, env.tok, env.base, root, "frozen", log_dir=tmp_path / "log")
    assert result.changed == result.embedded == {MEMBER: 2, JOB: 1}
    assert result.copied == {MEMBER: 198, JOB: 99} and result.generation == before.manifest["generation"] + 1
    assert "member 2 new or changed, 198 unchanged" in caplog.text
    assert read_metrics(tmp_path / "log" / "metrics.jsonl")[-1]["member_changed"] == 2
    after = EmbeddingStore.open(root, "frozen")
    for node_type, ids in changed.items():
        all_ids, texts = texts_of(data, node_type)
        same = ~np.isin(all_ids, ids)
        assert np.array_equal(bits(after, node_type, all_ids[same]), bits(before, node_type, all_ids[same]))
        assert np.array_equal(after.text_hashes(node_type), text_hash(texts))
        new_texts = [texts[i] for i in ids]  # ids are 0..n-1
        want = hf_tower(env, "frozen", node_type, new_texts)
        np.testing.assert_allclose(after.lookup(node_type, ids), want, **BF16)
        assert (bits(after, node_type, ids) != bits(before, node_type, ids)).any(axis=1).all()
    # Nothing changed since: nothing is embedded, the generation stays.
    again = embed_store(embed_config(), data, env.tok, env.base, root, "frozen")
    assert again.embedded == {MEMBER: 0, JOB: 0} and again.generation == result.generation


def test_sigkilled_embed_resumes_to_the_bytes_of_an_uninterrupted_run(env, stores, tmp_path):
    stores("frozen")
    root = shutil.copytree(env.store, tmp_path / "store")
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(embed_config()))
    argv = ["embed", "--data", env.data, "--tokenizer", env.tok, "--base", env.base, "--store", str(root),
            "--version", "again", "--config", str(config)]
    proc = subprocess.run([sys.executable, str(WORKER), "--kill-after-writes", "4", "--", *argv],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # Killed mid-write: the staged generation exists, and readers see only the published versions.
    assert StoreRoot(root).read_json("staging/again.json") is not None
    assert "again" not in list_versions(root) and "frozen" in list_versions(root)
    with pytest.raises(StarError, match="unknown version 'again'"):
        EmbeddingStore.open(root, "again")

    result = embed_store(embed_config(), env.data, env.tok, env.base, root, "again")
    assert result.resumed and result.changed == SIZES
    assert 0 < result.embedded[MEMBER] < SIZES[MEMBER] and result.embedded[JOB] == SIZES[JOB]
    clean, resumed = EmbeddingStore.open(root, "frozen"), EmbeddingStore.open(root, "again")
    for node_type in SIZES:
        ids = clean.ids(node_type)
        assert np.array_equal(resumed.ids(node_type), ids)
        assert np.array_equal(resumed.text_hashes(node_type), clean.text_hashes(node_type))
        assert np.array_equal(bits(resumed, node_type, ids), bits(clean, node_type, ids))


# ---------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_in_one_line_and_write_nothing(env, stores, tmp_path, capsys):
    stores("frozen")
    tok2 = train_tokenizer(env.data, tmp_path / "tok2", TokenizerConfig(vocab_size=300))
    build_checkpoint(tmp_path / "base48", vocab_size=512, hidden_size=48)
    lora = LoraConfig(rank=4)
    arch48 = read_config(tmp_path / "base48")
    export_peft(random_adapters(arch48, lora, 0), lora, arch48, tmp_path / "adapters48")
    empty = shutil.copytree(env.data, tmp_path / "empty")
    edit_table(empty, "nodes/member.parquet", lambda df: df.assign(text=["" if i == 3 else t for i, t in
                                                                         zip(df["id"], df["text"])]))
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(embed_config()))
    args = {"--data": env.data, "--tokenizer": env.tok, "--base": env.base, "--store": env.store,
            "--version": "frozen", "--config": str(config)}
    cases = [
        ({"--tokenizer": str(tok2)}, "version frozen: spec.tokenizer is 'tok2@"),
        ({"--base": str(tmp_path / "base48")}, "version frozen: spec.dim is 48, but the manifest has 32"),
        ({"--version": "bad/name"}, "version 'bad/name': use letters"),
        ({"--data": str(empty)}, "nodes/member.parquet: text: 1 empty (or whitespace-only)"),
        ({"--types": "skill"}, "--types skill: not a node type with text"),
        ({"--version": "new", "--adapters": str(tmp_path / "adapters48")}, "the base model needs"),
        ({"--version": "new", "--adapters": str(tmp_path)}, "neither a PEFT adapter directory"),
        ({"--set": "embed.batch_size=12", "--version": "new"}, "embed.batch_size: micro-batches of 12 rows"),
    ]
    versions = list_versions(env.store)
    for override, message in cases:
        argv = ["embed", *[x for k, v in {**args, **override}.items() for x in (k, v)]]
        capsys.readouterr()
        code = cli.main(argv)
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert code == 2 and line.startswith("star-jax: error: ") and message in line, (override, err[-2000:])
        assert "Traceback" not in err
    assert list_versions(env.store) == versions and StoreRoot(env.store).list("staging/") == []


# ----------------------------------------------------------------------------------------- migration


def write_pairs(data: str | Path, pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Replace the labelled pairs of `data`: split -> (member ids, job ids, labels)."""
    frames = [pd.DataFrame({"member_id": m, "job_id": j, "label": y.astype(np.int8), "split": split})
              for split, (m, j, y) in pairs.items()]
    df = pd.concat(frames, ignore_index=True)
    table = pa.table({
        "member_id": pa.array(df["member_id"], pa.int64()), "job_id": pa.array(df["job_id"], pa.int64()),
        "label": pa.array(df["label"], pa.int8()), "timestamp": pa.array(T0 + np.arange(len(df)), pa.int64()),
        "split": pa.array(df["split"].tolist(), pa.string()),
    })
    pq.write_table(table, Path(data) / "labels" / "pairs.parquet")


def planted_pairs(v1: EmbeddingStore, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Random (member, job) pairs labelled by a weighted match of V1 coordinates, sum_k d_k m_k j_k
    with random d: a task tied to V1's coordinates, as a trained ranker's weights are. (With d = 1,
    the cosine, any shared rotation of both towers would leave it intact.)"""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    m = rng.choice(v1.ids(MEMBER), n)
    j = rng.choice(v1.ids(JOB), n)
    score = (v1.lookup(MEMBER, m) * v1.lookup(JOB, j)) @ rng.normal(size=v1.dim)
    y = (score > np.median(score)).astype(np.int64)
    return {"train": (m[:n_train], j[:n_train], y[:n_train]), "test": (m[n_train:], j[n_train:], y[n_train:])}


def write_vectors(root: Path, version: str, vectors: dict[str, np.ndarray]) -> None:
    """A version with `vectors[type]` [n, dim] for ids 0..n-1, written straight through the writer."""
    dim = next(iter(vectors.values())).shape[1]
    spec = EmbeddingSpec(model=version, adapter=None, tokenizer="none", max_len=0, pooling="none", dim=dim)
    inputs = {t: (np.arange(len(v)), text_hash(f"{t} {i}" for i in range(len(v))))
              for t, v in vectors.items()}
    writer = EmbeddingWriter.open(root, version, spec, inputs, StoreConfig(dtype="float32", shard_rows=64))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][block.positions])
    writer.publish()


def test_migration_recovers_a_planted_rotation(env, tmp_path):
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    dim = 16
    v1 = {t: unit(rng.normal(size=(n, dim))).astype(np.float32) for t, n in SIZES.items()}
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    v2 = {t: unit(x @ rotation + 0.05 * rng.normal(size=x.shape)).astype(np.float32) for t, x in v1.items()}
    root = tmp_path / "store"
    write_vectors(root, "v1", v1)
    write_vectors(root, "v2", v2)
    data = shutil.copytree(env.data, tmp_path / "data")
    write_pairs(data, planted_pairs(EmbeddingStore.open(root, "v1"), 1500, 500))

    result = run_migration_experiment(root, "v1", "v2", data)
    fid, auc = result["fidelity"], result["auc"]
    assert auc["v1"] > 0.9 and auc["v2_unmapped"] < 0.7  # the V1 ranker fails on rotated vectors
    for method in ("ridge", "procrustes"):
        assert fid[f"v2_{method}"] > 0.95 > 0.5 > fid["v2_unmapped"]  # noise caps it near 0.98
        assert auc[f"v2_{method}"] > auc["v1"] - 0.05
    # Refitting on V2 is no cure here: m * j features cannot express V1's weights in rotated axes.
    assert auc["v2_refit"] < auc["v2_ridge"] and result["pairs"] == {"train": 1500, "test": 500}
    # The map left stored with V2 is the better one, and reads V2 in V1's space.
    mapped = EmbeddingStore.open(root, "v2", map_to="v1")
    assert mapped.version_map.record["method"] == result["stored_map"]
    cos = (mapped.lookup(MEMBER, np.arange(200)) * v1[MEMBER]).sum(1) / np.linalg.norm(
        mapped.lookup(MEMBER, np.arange(200)), axis=1)
    assert cos.mean() > 0.95


def test_migration_between_two_adapters_mapped_beats_unmapped(env, stores, tmp_path):
    stores("shared")
    stores("towers")
    root = shutil.copytree(env.store, tmp_path / "store")
    data = shutil.copytree(env.data, tmp_path / "data")
    write_pairs(data, planted_pairs(EmbeddingStore.open(root, "shared"), 2000, 600))
    result = run_migration_experiment(root, "shared", "towers", data)
    fid, auc = result["fidelity"], result["auc"]
    for method in ("ridge", "procrustes"):
        assert fid[f"v2_{method}"] > fid["v2_unmapped"] + 0.1, result
        assert auc[f"v2_{method}"] > auc["v2_unmapped"] + 0.05, result
    write_migration_report(result, tmp_path / "migration.md")
    table = (tmp_path / "migration.md").read_text()
    assert table == migration_table(result)
    assert "| V2 mapped onto V1 (procrustes) | " in table and f"{auc['v2_ridge']:.4f}" in table


# ------------------------------------------------------------------------------------- multi-process


@pytest.mark.slow  # two more processes that import the stack and compile: about half a minute
def test_two_processes_embed_what_one_does(env, stores, tmp_path):
    stores("frozen")
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(embed_config()))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    one_device = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                  "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "star_jax.cli", "embed", "--data", env.data, "--tokenizer", env.tok,
            "--base", env.base, "--store", str(tmp_path / "store"), "--version", "two",
            "--config", str(config), "--set", f"mesh.coordinator_address=localhost:{port}",
            "--set", "mesh.num_processes=2"]
    procs = [subprocess.Popen([*argv, "--set", f"mesh.process_id={i}"], env=one_device,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("member 200 new or changed" in out for out in outputs)  # both report the publish
    two, one = EmbeddingStore.open(tmp_path / "store", "two"), EmbeddingStore.open(env.store, "frozen")
    for node_type in SIZES:
        ids = one.ids(node_type)
        assert np.array_equal(two.text_hashes(node_type), one.text_hashes(node_type))
        np.testing.assert_allclose(two.lookup(node_type, ids), one.lookup(node_type, ids), **BF16_STORES)
