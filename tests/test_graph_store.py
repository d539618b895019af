"""The graph in TensorStore: what `build-graph --tensorstore` writes, a second process reads back,
the sampler draws the same batches from it as from the memory-mapped directory, `graph fetch`
rebuilds that directory, and a store without its manifest or with a truncated array is refused
in one line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import graph_fixtures as gf
import jax
import numpy as np
import pytest

from star_jax import cli
from star_jax.config import GraphConfig, SamplerConfig, load_config
from star_jax.errors import StarError
from star_jax.fileio import read_json
from star_jax.gnn.run import load_run
from star_jax.gnn.train import train_gnn
from star_jax.graph.hetero import GRAPH_FILE, HeteroGraph, array_keys
from star_jax.graph.sampler import NeighborSampler, batch_rng, make_dataset
from star_jax.graph.seeds import eval_seeds, train_seeds
from star_jax.graph.tstore import MANIFEST, fetch_graph, open_graph, open_graph_store, write_graph_store

# Bytes per stored object and per read chunk: every array of the fixture spans several objects of
# several read chunks (1 MiB and 16 KiB by default).
CHUNK, READ = 32, 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(data dir, graph dir, store URL) of the fixture graph, the store written through the CLI."""
    root = tmp_path_factory.mktemp("graph_store")
    data = gf.write_data_dir(root / "data")
    url = f"file://{root / 'store'}"
    argv = ["build-graph", "--data", str(data), "--out", str(root / "graph"), "--tensorstore", url,
            "--chunk-bytes", str(CHUNK), "--read-bytes", str(READ)]
    assert cli.main(argv) == 0
    return data, root / "graph", url


def npy_arrays(graph_dir: Path) -> dict[str, np.ndarray]:
    return {k: np.load(graph_dir / f"{k}.npy") for k in array_keys(read_json(graph_dir / GRAPH_FILE))}


def copy_store(url: str, dest: Path) -> str:
    import shutil

    shutil.copytree(url.removeprefix("file://"), dest)
    return f"file://{dest}"


def one_line(fn) -> str:
    with pytest.raises(StarError) as e:
        fn()
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_manifest_lists_every_array_with_its_size_and_checksum(built):
    _, graph_dir, url = built
    manifest = json.loads(Path(url.removeprefix("file://"), MANIFEST).read_text())
    arrays = npy_arrays(graph_dir)
    assert set(manifest["arrays"]) == set(arrays) and manifest["graph"] == read_json(graph_dir / GRAPH_FILE)
    multi = 0
    for key, a in arrays.items():
        info = manifest["arrays"][key]
        assert (info["dtype"], info["shape"], info["nbytes"]) == (a.dtype.name, list(a.shape), a.nbytes), key
        assert info["sha256"] == hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), key
        row = a.dtype.itemsize * int(np.prod(a.shape[1:]))
        outer, inner = info["chunk"][0], info["read_chunk"][0]
        assert outer % inner == 0 and inner * row <= max(READ, row) and outer * row <= max(CHUNK, row), key
        assert info["chunks"] == (-(-a.shape[0] // outer) if a.size else 0), key
        stored = Path(url.removeprefix("file://"), key, "c")
        assert len(list(stored.iterdir()) if stored.exists() else []) == info["chunks"], key
        multi += info["chunks"] > 1 and outer > inner
    assert multi >= len(arrays) // 3  # the reads below cross object and read-chunk boundaries


def test_a_second_process_reads_what_was_written(built, tmp_path):
    """The oracle: plain TensorStore in a fresh interpreter, none of star_jax's reading code."""
    _, graph_dir, url = built
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        import tensorstore as ts
        root, out = sys.argv[1], sys.argv[2]
        manifest = json.loads(ts.KvStore.open(root + "/").result().read("manifest.json").result().value)
        arrays = {}
        for key in manifest["arrays"]:
            spec = {"driver": "zarr3", "kvstore": root + "/" + key + "/", "fill_missing_data_reads": False}
            arrays[key] = ts.open(spec, read=True).result().read().result()
        np.savez(out, **{k.replace("/", "|"): v for k, v in arrays.items()})
    """)
    out = tmp_path / "read.npz"
    subprocess.run([sys.executable, "-c", code, url, str(out)], check=True, timeout=120)
    got = dict(np.load(out))
    want = npy_arrays(graph_dir)
    assert set(k.replace("|", "/") for k in got) == set(want)
    for key, a in want.items():
        b = got[key.replace("/", "|")]
        assert b.dtype == a.dtype and np.array_equal(a, b), key


@pytest.mark.parametrize("cache_bytes", [0, 64, 1 << 16])  # none, a few chunks, the whole graph
def test_tensorstore_arrays_index_like_the_memory_maps(built, cache_bytes):
    _, graph_dir, url = built
    mem, tsg = HeteroGraph.load(graph_dir), open_graph_store(url, cache_bytes=cache_bytes)
    cache = tsg.ids["member"].cache
    rng = np.random.default_rng(0)
    pairs = [(getattr(mem, f)[t], getattr(tsg, f)[t]) for f in ("ids", "id_sorted", "id_order", "cat")
             for t in mem.node_types]
    pairs += [(a, b) for name in mem.csr for a, b in zip(mem.csr[name], tsg.csr[name], strict=True)
              if a is not None]
    for a, b in pairs:
        n = a.shape[0]
        assert b.shape == a.shape and b.dtype == a.dtype
        assert np.array_equal(np.asarray(b), a)
        idx = rng.integers(-n, n, (3, 4))
        for key in (idx, idx[0], slice(1, None), slice(-3, None), slice(None, None, 2), n - 1, -1,
                    np.arange(n) % 2 == 0, np.zeros(0, np.int64)):
            assert np.array_equal(b[key], a[key]), key
        if a.ndim == 2 and a.shape[1]:
            assert np.array_equal(b[idx[0], -1], a[idx[0], -1]) and np.array_equal(b[:, 0], a[:, 0])
        assert cache.bytes <= cache_bytes
    blob = pickle.dumps(tsg)  # how grain workers receive it: re-opened, not copied
    assert b"open_graph_store" in blob and len(blob) < 4096
    again = pickle.loads(blob)
    assert np.array_equal(np.asarray(again.csr["member_skill"].indices), mem.csr["member_skill"].indices)


def batches_equal(x, y) -> None:
    leaves_x, leaves_y = jax.tree_util.tree_leaves_with_path(x), jax.tree_util.tree_leaves_with_path(y)
    assert len(leaves_x) == len(leaves_y)
    for (path, a), (_, b) in zip(leaves_x, leaves_y, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


@pytest.mark.parametrize("weighting", ["uniform", "degree", "weight"])
def test_the_sampler_draws_the_same_batches_from_either_copy(built, weighting):
    data, graph_dir, url = built
    cfg = SamplerConfig(batch_size=4, num_random_negatives=3, fanouts=[3, 2], relation_fanouts={},
                        neighbor_weighting=weighting)
    mem = HeteroGraph.load(graph_dir)
    tsg = open_graph(graph_dir, GraphConfig(store=url, source="tensorstore", cache_mb=1))
    for seeds_of in (lambda g: train_seeds(data, g, cfg, 12), lambda g: eval_seeds(data, g, cfg, "val")):
        a = list(make_dataset(NeighborSampler(mem, cfg), seeds_of(mem)))
        b = list(make_dataset(NeighborSampler(tsg, cfg), seeds_of(tsg)))
        assert len(a) == len(b) > 1
        for x, y in zip(a, b, strict=True):
            batches_equal(x, y)
    # The draws are not all empty: the comparison above compared sampled edges.
    batch = NeighborSampler(tsg, cfg).sample(train_seeds(data, tsg, cfg, 1)[0], batch_rng(0, 0))
    assert batch.graph.edges["mask"].sum() > 10


def test_grain_worker_processes_reopen_the_store_and_draw_the_same_batches(built):
    """A worker process receives the graph pickled as its store spec and re-opens it."""
    data, graph_dir, url = built
    cfg = SamplerConfig(batch_size=4, num_random_negatives=3, fanouts=[3, 2], relation_fanouts={})
    mem = HeteroGraph.load(graph_dir)
    tsg = open_graph_store(url, cache_bytes=1 << 12)
    want = list(make_dataset(NeighborSampler(mem, cfg), train_seeds(data, mem, cfg, 4), workers=0))
    got = list(make_dataset(NeighborSampler(tsg, cfg), train_seeds(data, tsg, cfg, 4), workers=1))
    assert len(got) == len(want) == 4
    for x, y in zip(want, got, strict=True):
        batches_equal(x, y)


def test_fetch_rebuilds_the_graph_directory(built, tmp_path, capsys):
    _, graph_dir, url = built
    out = tmp_path / "fetched"
    assert cli.main(["graph", "fetch", "--from", url, "--to", str(out)]) == 0
    assert read_json(out / GRAPH_FILE) == read_json(graph_dir / GRAPH_FILE)
    want, got = npy_arrays(graph_dir), npy_arrays(out)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
    assert fetch_graph(url, out)[1] is False  # up to date: nothing copied
    assert HeteroGraph.load(out).digest == HeteroGraph.load(graph_dir).digest


def test_rerunning_build_graph_leaves_an_up_to_date_store_alone(built):
    data, graph_dir, url = built
    path = Path(url.removeprefix("file://"), MANIFEST)
    before = path.read_text()
    assert cli.main(["build-graph", "--data", str(data), "--out", str(graph_dir), "--tensorstore", url]) == 0
    assert path.read_text() == before


def test_a_store_without_its_manifest_is_refused_in_one_line(built, tmp_path, capsys):
    _, _, url = built
    url = copy_store(url, tmp_path / "store")
    os.remove(url.removeprefix("file://") + "/" + MANIFEST)
    assert "no manifest.json" in one_line(lambda: open_graph_store(url))
    capsys.readouterr()
    assert cli.main(["graph", "fetch", "--from", url, "--to", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0], err
    assert not (tmp_path / "g").exists()


def test_an_array_missing_its_last_chunks_is_refused_in_one_line(built, tmp_path):
    _, _, url = built
    url = copy_store(url, tmp_path / "store")
    chunks = Path(url.removeprefix("file://"), "csr/member_skill/indices/c")
    last = max(chunks.iterdir(), key=lambda p: int(p.name))
    last.unlink()
    for fn in (lambda: open_graph_store(url), lambda: fetch_graph(url, tmp_path / "g")):
        msg = one_line(fn)
        assert "csr/member_skill/indices: truncated" in msg and "chunks stored" in msg, msg
    assert not (tmp_path / "g").exists()


def test_a_chunk_cut_short_is_refused_in_one_line(built, tmp_path):
    _, _, url = built
    url = copy_store(url, tmp_path / "store")
    chunk = Path(url.removeprefix("file://"), "csr/member_applied/indices/c/0")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    msg = one_line(lambda: fetch_graph(url, tmp_path / "g"))
    assert "csr/member_applied/indices: read failed" in msg, msg
    assert not (tmp_path / "g").exists()
    graph = open_graph_store(url)  # the listing is complete: the damage shows on the first read
    msg = one_line(lambda: graph.csr["member_applied"].indices[np.array([0])])
    assert "csr/member_applied/indices: read failed" in msg, msg


def test_fetch_refuses_an_array_whose_sha256_differs_from_the_manifest(built, tmp_path):
    _, _, url = built
    url = copy_store(url, tmp_path / "store")
    path = Path(url.removeprefix("file://"), MANIFEST)
    manifest = json.loads(path.read_text())
    manifest["arrays"]["nodes/job/ids"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    msg = one_line(lambda: fetch_graph(url, tmp_path / "g"))
    assert "nodes/job/ids: sha256 differs" in msg, msg
    assert not (tmp_path / "g").exists()


def test_writing_refuses_a_location_that_holds_something_else(built, tmp_path):
    _, graph_dir, _ = built
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    msg = one_line(lambda: write_graph_store(graph_dir, tmp_path / "mine"))
    assert "not a graph store" in msg and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_graph_config_checks_its_fields():
    with pytest.raises(StarError, match="graph.store: required"):
        GraphConfig(source="tensorstore")
    with pytest.raises(StarError, match="graph.source"):
        GraphConfig(source="nfs")
    with pytest.raises(StarError, match="graph.chunk_bytes"):
        GraphConfig(chunk_bytes=0)



def test_train_gnn_reads_the_store_in_place_to_the_same_model(built, tmp_path):
    """`graph.source: tensorstore` through `train-gnn`: the same val AUC history and parameters as
    the run on the memory-mapped directory (the sampler sees the same arrays either way)."""
    data, graph_dir, url = built
    sets = ["gnn.hidden_dim=8", "gnn.out_dim=8", "gnn.llm_block=4", "gnn.attribute_block=2",
    "gnn.heads=2", "gnn.layers=1",
            "gnn.id_buckets=32", "gnn.cat_dim=4", "gnn.cat_buckets=16", "sampler.batch_size=4",
            "sampler.num_random_negatives=3", "sampler.fanouts=[2,2]", "gnn_train.steps=4",
            "gnn_train.eval_every=2", "gnn_train.warmup_steps=1", "gnn_train.eval_batch_size=8",
            "gnn_train.eval_pairs=0", f"graph.store={url}"]
    runs = {}
    for source in ("local", "tensorstore"):
        cfg = load_config(None, [*sets, f"graph.source={source}"])
        result = train_gnn(cfg, data, graph_dir, tmp_path / source, "gnn_id_cat")
        runs[source] = (result, load_run(tmp_path / source, HeteroGraph.load(graph_dir), None).params)
    (local, p_local), (store, p_store) = runs["local"], runs["tensorstore"]
    assert [h["auc"] for h in store["val_history"]] == [h["auc"] for h in local["val_history"]]
    jax.tree.map(np.testing.assert_array_equal, p_store, p_local)
