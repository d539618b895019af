"""EmbeddingStore faults: damaged shards, older store formats, and a disk that fills up mid-write.

Damage is done to the files themselves (a flipped bit, a truncated or emptied shard); every one
must fail the read with a one-line `StarError` naming the store, version, node type and shard,
while untouched shards still read exactly. A full disk is simulated at the writer's kvstore write
(`StoreRoot.write_rows`, `StoreRoot.write_json`) with `OSError(ENOSPC)`, and with the error
TensorStore gives for one (its text, as seen on a full tmpfs).
"""

from __future__ import annotations

import errno
import json
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, StoreRoot, text_hash
from star_jax.store.layout import FORMAT_VERSION

DIM = 16
IDS = np.arange(100, dtype=np.int64) * 3 + 7  # rows 0..99; shards of 32 rows: 0-31, 32-63, 64-95, 96-99
JOB_IDS = np.arange(40, dtype=np.int64)
SPEC = EmbeddingSpec(model="tiny", adapter=None, tokenizer="bpe-1", max_len=64, pooling="mean", dim=DIM)


def cfg(compression: str = "zstd", **kw) -> StoreConfig:
    return StoreConfig(shard_rows=32, chunk_rows=8, compression=compression, **kw)


def vectors(n: int, rev: int = 0) -> np.ndarray:
    return np.random.default_rng(100 + rev).standard_normal((n, DIM)).astype(np.float32)


def bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def inputs(rev: int) -> dict:
    return {"member": (IDS, text_hash([f"m{i} rev {rev}" for i in IDS])),
            "job": (JOB_IDS, text_hash([f"j{i}" for i in JOB_IDS]))}


def write(root: str, rev: int, config: StoreConfig) -> EmbeddingWriter:
    """Open a writer for revision `rev` and write every pending block (not published)."""
    w = EmbeddingWriter.open(root, "v1", SPEC, inputs(rev), config)
    data = {"member": vectors(len(IDS), rev), "job": vectors(len(JOB_IDS), 99)}
    for t in w.node_types:
        for block in w.pending_blocks(t):
            w.write(t, block.rows, data[t][block.positions])
    return w


def shard_file(root: str, node_type: str = "member", shard: int = 1, name: str = "emb") -> tuple[str, Path]:
    """(key relative to the root, local path) of one stored chunk object of the published version."""
    gen = StoreRoot(root).read_json("manifests/v1.json")["node_types"][node_type]["generation"]
    key = f"data/v1/g{gen:08d}/{node_type}/{name}/c/{shard}" + ("/0" if name == "emb" else "")
    return key, Path(root, key)


def one_line_error(fn) -> str:
    with pytest.raises(StarError) as e:
        fn()
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture
def published(tmp_path, request):
    """A published bf16 version (member + job), in the layout named by the test's parameter."""
    root = str(tmp_path / "s")
    write(root, 0, cfg(request.param)).publish()
    return root


# ------------------------------------------------------------------------------ damaged data


@pytest.mark.parametrize("published", ["zstd", "none", "blosc"], indirect=True)
def test_every_flipped_byte_in_a_shard_raises_naming_the_shard(published):
    root = published
    key, path = shard_file(root)
    original = path.read_bytes()
    want = bf16(vectors(len(IDS)))
    # Offsets over the whole object: inner chunks (their bytes and their crc32c) and, in the last
    # 4 + 16 * 4 bytes, the shard index and its crc32c.
    offsets = sorted({0, 1, len(original) - 1, len(original) - 4, len(original) - 68,
                      *np.linspace(0, len(original) - 1, 29).astype(int).tolist()})
    expected = f"store {root} version v1: member emb shard {key} (rows 32-63) is corrupt ("
    others = np.r_[IDS[:32], IDS[64:]]
    for offset in offsets:
        damaged = bytearray(original)
        damaged[offset] ^= 1 << (offset % 8)
        path.write_bytes(damaged)
        store = EmbeddingStore.open(root)  # a fresh handle: nothing decoded is cached
        message = one_line_error(lambda: store.lookup("member", IDS))  # noqa: B023
        assert message.startswith(expected), (offset, message)
        # Rows in other shards, and the other node type, still read exactly.
        np.testing.assert_array_equal(store.lookup("member", others), want[np.r_[0:32, 64:100]])
        np.testing.assert_array_equal(store.lookup("job", JOB_IDS), bf16(vectors(len(JOB_IDS), 99)))
    path.write_bytes(original)
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", IDS), want)


@pytest.mark.parametrize("published", ["zstd", "none"], indirect=True)
def test_the_row_cache_holds_only_rows_that_passed_their_checksum(published):
    root = published
    key, path = shard_file(root)
    original = path.read_bytes()
    want = bf16(vectors(len(IDS)))
    warm = EmbeddingStore.open(root, cache_bytes=1 << 20)
    np.testing.assert_array_equal(warm.lookup("member", IDS[:64]), want[:64])  # shards 0 and 1
    damaged = bytearray(original)
    damaged[len(original) // 3] ^= 0x04
    path.write_bytes(damaged)
    # Rows decoded before the damage were checked then: the warm handle serves those, exactly.
    np.testing.assert_array_equal(warm.lookup("member", IDS[40:50]), want[40:50])
    cold = EmbeddingStore.open(root, cache_bytes=1 << 20)
    expected = f"store {root} version v1: member emb shard {key} (rows 32-63) is corrupt ("
    for _ in range(2):  # a failed read caches nothing: the second try fails the same way
        assert one_line_error(lambda: cold.lookup("member", IDS[30:70])).startswith(expected)  # noqa: B023
    np.testing.assert_array_equal(cold.lookup("member", IDS[np.r_[0:32, 64:100]]), want[np.r_[0:32, 64:100]])
    path.write_bytes(original)
    np.testing.assert_array_equal(cold.lookup("member", IDS), want)


@pytest.mark.parametrize("published", ["zstd"], indirect=True)
def test_truncated_and_empty_shards_and_damaged_id_arrays_fail_in_one_line(published):
    root = published
    key, path = shard_file(root, shard=2)
    original = path.read_bytes()
    for damaged in (original[:-30], original[: len(original) // 2], b""):
        path.write_bytes(damaged)
        message = one_line_error(lambda: EmbeddingStore.open(root).lookup("member", IDS[[1, 70]]))
        assert message.startswith(f"store {root} version v1: member emb shard {key} (rows 64-95) is corrupt")
    path.write_bytes(original)

    # The ids and text-hash arrays carry crc32c too: a flip there is no silently wrong row mapping.
    for name in ("ids", "hash"):
        key, path = shard_file(root, shard=0, name=name)
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(original) // 2] ^= 0x10
        path.write_bytes(damaged)
        store = EmbeddingStore.open(root)
        read = store.text_hashes if name == "hash" else lambda t: store.lookup(t, IDS[:3])  # noqa: B023
        message = one_line_error(lambda: read("member"))  # noqa: B023
        expected = f"store {root} version v1: member {name} chunk {key} (rows 0-99) is corrupt ("
        assert message.startswith(expected), message
        path.write_bytes(original)
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", IDS), bf16(vectors(len(IDS))))


@pytest.mark.parametrize("published", ["zstd"], indirect=True)
def test_a_refresh_that_copies_from_a_damaged_shard_fails_naming_it(published):
    root = published
    # A refresh of job alone: the version is at generation 2, member's rows stay in generation 1.
    job = {"job": (JOB_IDS, text_hash([f"j{i}!" for i in JOB_IDS]))}
    w = EmbeddingWriter.open(root, "v1", SPEC, job, cfg())
    w.write("job", w.pending("job").rows, vectors(len(JOB_IDS), 98))
    assert w.publish().manifest["node_types"]["member"]["generation"] == 1
    key, path = shard_file(root, shard=0)
    assert key.startswith("data/v1/g00000001/member/")
    data = bytearray(path.read_bytes())
    data[5] ^= 0x04
    path.write_bytes(data)
    # One text changes: its shard is rebuilt from the new row and 31 rows copied from the published one.
    changed = {"member": (IDS, inputs(0)["member"][1].copy())}
    changed["member"][1][3] += np.uint64(1)
    w = EmbeddingWriter.open(root, "v1", SPEC, changed, cfg())
    p = w.pending("member")
    message = one_line_error(lambda: w.write("member", p.rows, vectors(len(p.rows))))
    where = f"store {root} version v1: published member emb"
    assert message.startswith(f"{where} shard {key} (rows 0-31) is corrupt ("), message


# ------------------------------------------------------------------------------ store formats


def test_new_versions_carry_checksums_and_format_1_versions_still_read_and_refresh(tmp_path):
    root = str(tmp_path / "s")
    write(root, 0, cfg()).publish()
    r = StoreRoot(root)
    manifest = r.read_json("manifests/v1.json")
    assert manifest["format"] == FORMAT_VERSION == 2
    for t in ("member", "job"):
        gen = f"data/v1/g{manifest['node_types'][t]['generation']:08d}/{t}"
        sharding = r.read_json(f"{gen}/emb/zarr.json")["codecs"][0]["configuration"]
        assert sharding["codecs"][-1]["name"] == "crc32c" and sharding["index_codecs"][-1]["name"] == "crc32c"
        for name in ("ids", "hash"):
            assert r.read_json(f"{gen}/{name}/zarr.json")["codecs"][-1]["name"] == "crc32c"

    # Rewrite the version as format 1 wrote it: no crc32c on inner chunks, ids or hashes.
    for t in ("member", "job"):
        gen = f"data/v1/g{manifest['node_types'][t]['generation']:08d}/{t}"
        for name in ("emb", "ids", "hash"):
            old = r.open_array(f"{gen}/{name}").read().result()
            meta = r.read_json(f"{gen}/{name}/zarr.json")
            codecs = meta["codecs"][0]["configuration"]["codecs"] if name == "emb" else meta["codecs"]
            codecs.pop()
            meta = {k: meta[k] for k in ("shape", "data_type", "chunk_grid", "codecs", "fill_value")}
            spec = {"driver": "zarr3", "kvstore": r.kvstore(f"{gen}/{name}"), "metadata": meta}
            ts.open(spec, create=True, delete_existing=True).result().write(old).result()
    r.write_json("manifests/v1.json", {**manifest, "format": 1})
    inner = r.read_json(f"{gen}/emb/zarr.json")["codecs"][0]["configuration"]["codecs"]
    assert "crc32c" not in json.dumps(inner)

    s = EmbeddingStore.open(root, "v1")
    np.testing.assert_array_equal(s.lookup("member", IDS), bf16(vectors(len(IDS))))
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("job", JOB_IDS), bf16(vectors(40, 99)))
    # A refresh writes the changed node type in format 2 and keeps the unchanged one as it was.
    w = write(root, 1, cfg())
    assert w.node_types == ["member"]
    w.publish()
    refreshed = EmbeddingStore.open(root, "v1")
    assert refreshed.manifest["format"] == 2 and refreshed.manifest["node_types"]["job"]["generation"] == 1
    np.testing.assert_array_equal(refreshed.lookup("member", IDS), bf16(vectors(len(IDS), 1)))
    np.testing.assert_array_equal(refreshed.lookup("job", JOB_IDS), bf16(vectors(40, 99)))

    r.write_json("manifests/v1.json", {**refreshed.manifest, "format": 3})  # from a newer star_jax
    for open_ in (lambda: EmbeddingStore.open(root, "v1"), lambda: EmbeddingStore.open(root)):
        message = one_line_error(open_)
        assert message == (f"{root}/manifests/v1.json: manifest is for version 'v1', format 3; "
                           "expected version 'v1', format 1 or 2")


# ------------------------------------------------------------------------------ a full disk


def _no_space_after(n_ok: int, asynchronous: bool):
    """A `StoreRoot.write_rows` whose writes after the first `n_ok` fail as on a full disk."""
    real = StoreRoot.write_rows
    calls = []

    def write_rows(self, array, start, block):
        calls.append(start)
        if len(calls) <= n_ok:
            return real(self, array, start, block)
        if not asynchronous:
            raise OSError(errno.ENOSPC, "No space left on device")
        # What TensorStore reports once the shard is encoded and its file written (tmpfs, full).
        done, copied = ts.Promise.new()
        done.set_result(None)
        failed, commit = ts.Promise.new()
        failed.set_exception(ValueError(
            f'RESOURCE_EXHAUSTED: Error writing local file "/x/c/{start}/0": Failed writing: '
            f'"/x/c/{start}/0.__lock": Failed to write 2264 bytes to file 3: No space left on device '
            "[os_error_code='28']"))
        return types.SimpleNamespace(copy=copied, commit=commit)

    return write_rows


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_full_disk_fails_in_one_line_and_a_rerun_resumes(tmp_path, monkeypatch, asynchronous):
    root = str(tmp_path / "s")
    write(root, 0, cfg()).publish()
    before = EmbeddingStore.open(root)
    monkeypatch.setattr(StoreRoot, "write_rows", _no_space_after(2, asynchronous))
    message = one_line_error(lambda: write(root, 1, cfg()).publish())
    assert message.startswith(f"store {root} version v1: no space left on device writing data/v1/g00000002/"
                              "member/emb/c/"), message
    assert message.endswith("free space, then rerun to resume from the shards already stored; the published "
                            "version is unchanged")
    # The published version still reads, through the handle opened before and a new one.
    for store in (before, EmbeddingStore.open(root)):
        assert store.manifest["generation"] == 1
        np.testing.assert_array_equal(store.lookup("member", IDS), bf16(vectors(len(IDS))))
    assert StoreRoot(root).read_json("staging/v1.json")["generation"] == 2

    monkeypatch.undo()  # space is freed
    w = write(root, 1, cfg())
    assert w.resumed
    report = w.publish()
    assert report.generation == 2 and report.embedded == {"member": 100, "job": 0}
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", IDS), bf16(vectors(len(IDS), 1)))
    assert StoreRoot(root).read_json("staging/v1.json") is None


def test_a_full_disk_at_the_manifest_swap_keeps_the_old_manifest(tmp_path, monkeypatch):
    root = str(tmp_path / "s")
    write(root, 0, cfg()).publish()
    real = StoreRoot.write_json

    def write_json(self, key, obj):
        if key.startswith("manifests/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, obj)

    monkeypatch.setattr(StoreRoot, "write_json", write_json)
    w = write(root, 1, cfg())
    message = one_line_error(w.publish)
    assert message.startswith(f"store {root} version v1: no space left on device writing manifests/v1.json;")
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", IDS), bf16(vectors(len(IDS))))

    monkeypatch.undo()
    w = EmbeddingWriter.open(root, "v1", SPEC, inputs(1), cfg())  # every shard is stored: nothing to embed
    assert w.resumed and len(w.pending("member").rows) == 0
    assert w.publish().generation == 2
    np.testing.assert_array_equal(EmbeddingStore.open(root).lookup("member", IDS), bf16(vectors(len(IDS), 1)))


def test_other_storage_errors_name_the_key_and_bugs_keep_their_traceback(tmp_path, monkeypatch):
    root = str(tmp_path / "s")

    def denied(self, array, start, block):
        raise ValueError('PERMISSION_DENIED: Error writing local file "/x": Permission denied')

    monkeypatch.setattr(StoreRoot, "write_rows", denied)
    message = one_line_error(lambda: write(root, 0, cfg()))
    assert message == (f"store {root} version v1: writing data/v1/g00000001/member/emb/c/0/0 failed "
                       "(Permission denied); rerun to resume from the shards already stored; the published "
                       "version is unchanged")

    def bug(self, array, start, block):
        raise ValueError("a bug, not storage")

    monkeypatch.setattr(StoreRoot, "write_rows", bug)
    with pytest.raises(ValueError, match="a bug, not storage"):
        write(root, 0, cfg())


# --------------------------------------------------------------------------- a root that is a file


def test_a_root_that_is_a_file_fails_in_one_line_for_every_entry_point(tmp_path):
    from star_jax.store import fit_version_map, list_versions

    root = tmp_path / "store"
    root.write_text("not a store\n")
    inputs = {"member": (IDS, text_hash(f"m{i}" for i in IDS))}
    for where, tail in ((root, "is a file"), (root / "sub", f"is under {root}, a file")):
        calls = {
            "EmbeddingStore.open": lambda w=where: EmbeddingStore.open(w, "v1"),
            "EmbeddingWriter.open": lambda w=where: EmbeddingWriter.open(w, "v1", SPEC, inputs, cfg()),
            "list_versions": lambda w=where: list_versions(w),
            "fit_version_map": lambda w=where: fit_version_map(w, "v1", "v2"),
        }
        for name, call in calls.items():
            with pytest.raises(StarError) as e:
                call()
            assert str(e.value) == f"store root {where}: {tail}, not a directory", name
    assert root.read_text() == "not a store\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing created beside it
