"""Replicas: uncompressed, memory-mapped zarr3 copies of a store version (star_jax/store/replica.py).

Rows are checked against tests/store_worker.py's deterministic vectors and against the store
itself; a second process reads the replica with TensorStore alone, as any zarr3 reader would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import store_worker as sw  # tests/ is on sys.path under pytest's default import mode

from star_jax import cli
from star_jax.errors import StarError
from star_jax.store import EmbeddingStore, text_hash
from star_jax.store.replica import build_replica, identity, replica_path


def expected(node_type: str, ids: np.ndarray, rev: int, every: int = 1) -> np.ndarray:
    """What the store holds for `ids` after `sw.write(root, rev, every)`."""
    return sw.stored(text_hash(sw.texts(node_type, ids, rev, every)))


def build_small_chunks(store: EmbeddingStore, directory, node_type: str, chunk_rows: int) -> Path:
    """The node type's replica in chunks of `chunk_rows` rows (the default is one chunk here)."""
    read = lambda r0, r1: store._read(node_type, "emb", np.arange(r0, r1))
    row_bytes = store.dim * 2
    return build_replica(directory, identity(store.manifest, node_type), read, "test", store.manifest["live"],
                         chunk_bytes=chunk_rows * row_bytes)


@pytest.fixture
def version(tmp_path) -> str:
    root = str(tmp_path / "store")
    sw.write(root, 0, 1, 0.0)
    return root


def test_replica_rows_equal_the_store_and_a_second_process_reads_them_with_tensorstore(version, tmp_path):
    rep_dir = tmp_path / "replica"
    plain = EmbeddingStore.open(version)
    member = build_small_chunks(plain, rep_dir, "member", chunk_rows=64)  # 10 chunks of 60 rows
    store = EmbeddingStore.open(version, replica=rep_dir)
    rng = np.random.default_rng(0)
    for t in sw.SIZES:
        ids = sw.node_ids(t)
        pick = ids[rng.integers(0, len(ids), 500)]  # any order, repeats
        got = store.lookup(t, pick)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected(t, pick, 0))
        np.testing.assert_array_equal(got, plain.lookup(t, pick))
        np.testing.assert_array_equal(store.lookup(t, ids), expected(t, ids, 0))
    assert store.replica("member").path == member and len(store.replica("member").maps) == 10
    assert len(store.replica("job").maps) == 1  # built by the lookup, with the default chunk size
    assert store.lookup("member", np.zeros(0, np.int64)).shape == (0, sw.DIM)

    # A plain zarr3 array: raw little-endian chunks with a crc32c, no compression, no sharding.
    meta = json.loads((member / "emb" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "crc32c"]
    rows = rng.integers(0, sw.SIZES["member"], 40)
    code = ("import sys, json, numpy as np, tensorstore as ts; "
            "a = ts.open({'driver': 'zarr3', 'kvstore': {'driver': 'file', 'path': sys.argv[1]}}).result(); "
            "print(json.dumps(np.asarray(a[ts.d[0][json.loads(sys.argv[2])]].read().result(), "
            "np.float32).tolist()))")
    other = subprocess.run([sys.executable, "-c", code, str(member / "emb"), json.dumps(rows.tolist())],
                           capture_output=True, text=True, check=True, timeout=120)
    read_there = np.array(json.loads(other.stdout), np.float32)
    np.testing.assert_array_equal(read_there, expected("member", sw.node_ids("member")[rows], 0))


def test_a_refresh_gets_a_new_replica_and_an_open_handle_keeps_its_generation(version, tmp_path):
    rep_dir = tmp_path / "replica"
    ids = sw.node_ids("member")
    old = EmbeddingStore.open(version, replica=rep_dir)
    np.testing.assert_array_equal(old.lookup("member", ids), expected("member", ids, 0))
    first = old.replica("member").path

    sw.write(version, 1, 2, 0.0)  # every other text changes: generation 2
    new = EmbeddingStore.open(version, replica=rep_dir)
    np.testing.assert_array_equal(new.lookup("member", ids), expected("member", ids, 1, 2))
    assert new.replica("member").path != first and first.is_dir()  # generation 1 is still live
    np.testing.assert_array_equal(old.lookup("member", ids), expected("member", ids, 0))

    sw.write(version, 2, 3, 0.0)  # generation 3: generation 1 is no longer live
    newest = EmbeddingStore.open(version, replica=rep_dir)
    np.testing.assert_array_equal(newest.lookup("member", ids), expected("member", ids, 2, 3))
    assert not first.exists()
    # The old handle mapped its files at open: it keeps serving its own immutable generation.
    np.testing.assert_array_equal(old.lookup("member", ids), expected("member", ids, 0))
    with pytest.raises(StarError, match="no replica of generation 3 .* store replicate"):
        EmbeddingStore.open(version, replica=tmp_path / "empty").replica("job", build=False)


def test_a_killed_build_publishes_nothing_and_the_next_open_rebuilds(version, tmp_path):
    rep_dir = tmp_path / "replica"
    code = ("import os, signal, sys, numpy as np; from star_jax.store import EmbeddingStore; "
            "from star_jax.store.replica import build_replica, identity; "
            "s = EmbeddingStore.open(sys.argv[1]); calls = []\n"
            "def read(r0, r1):\n"
            "    calls.append(r0)\n"
            "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return s._read('member', 'emb', np.arange(r0, r1))\n"
            "build_replica(sys.argv[2], identity(s.manifest, 'member'), read, 'test', s.manifest['live'], "
            "chunk_bytes=64 * 32)\n")
    proc = subprocess.run([sys.executable, "-c", code, version, str(rep_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    store = EmbeddingStore.open(version, replica=rep_dir)
    final = replica_path(rep_dir, identity(store.manifest, "member"))
    (leftover,) = final.parent.iterdir()  # the killed build's temporary folder, never the replica
    assert leftover.name.startswith(f".{final.name}.tmp-") and not final.exists()
    assert len(list(leftover.glob("emb/c/*/0"))) == 2  # two chunks were written before the kill

    ids = sw.node_ids("member")[::-1]
    np.testing.assert_array_equal(store.lookup("member", ids), expected("member", ids, 0))
    assert final.is_dir() and not leftover.exists()  # the rebuild removed the dead builder's folder


def test_a_damaged_replica_fails_in_one_line_never_with_other_numbers(version, tmp_path):
    rep_dir = tmp_path / "replica"
    plain = EmbeddingStore.open(version)
    path = build_small_chunks(plain, rep_dir, "member", chunk_rows=64)
    ids = sw.node_ids("member")
    assert np.array_equal(EmbeddingStore.open(version, replica=rep_dir).lookup("member", ids),
                          expected("member", ids, 0))  # every chunk checked once in this process

    chunk = path / "emb" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[5 * sw.DIM * 2 + 3] ^= 0x10  # a bit of row 60 + 5
    chunk.write_bytes(bytes(data))
    store = EmbeddingStore.open(version, replica=rep_dir)
    np.testing.assert_array_equal(store.lookup("member", ids[:60]), expected("member", ids[:60], 0))
    with pytest.raises(StarError) as e:
        store.lookup("member", ids[55:70])
    msg = str(e.value)
    assert "\n" not in msg and "replica" in msg
    assert "chunk emb/c/1/0 (rows 60-119) is corrupt (crc32c mismatch)" in msg

    os.truncate(chunk, 100)
    with pytest.raises(StarError, match=r"emb/c/1/0 has 100 bytes, expected 1924; delete .* to rebuild"):
        EmbeddingStore.open(version, replica=rep_dir).lookup("member", ids[:1])
    chunk.unlink()
    with pytest.raises(StarError, match=r"chunk file emb/c/1/0 is missing"):
        EmbeddingStore.open(version, replica=rep_dir).lookup("member", ids[:1])

    record = path / "replica.json"
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "digest": "0" * 32}))
    with pytest.raises(StarError, match=r"replica.json: digest is '0{32}', but the store has '[0-9a-f]{32}'"):
        EmbeddingStore.open(version, replica=rep_dir).lookup("member", ids[:1])


def test_replicate_cli(version, tmp_path, capsys):
    rep_dir = tmp_path / "replica"
    assert cli.main(["store", "replicate", "--store", version, "--out", str(rep_dir)]) == 0
    out = capsys.readouterr().out
    assert "member: 600 rows of generation 1 in" in out and "job: 300 rows" in out
    store = EmbeddingStore.open(version, replica=rep_dir)
    for t in sw.SIZES:
        assert str(store.replica(t, build=False).path) in out
        np.testing.assert_array_equal(store.lookup(t, sw.node_ids(t)), expected(t, sw.node_ids(t), 0))

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["store", "replicate", "--store", version, "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"star-jax: error: --out {afile}: not a directory"
    with pytest.raises(StarError, match=f"cannot create replica folder {afile}/v1/member"):
        EmbeddingStore.open(version, replica=afile).lookup("member", [3])
    assert cli.main(["store", "replicate", "--store", version, "--out", str(rep_dir), "--node-types",
                     "nope"]) == 2
    assert "unknown node type 'nope'" in capsys.readouterr().err
