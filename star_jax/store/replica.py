"""`Replica`: an uncompressed, memory-mapped local copy of one node type of a published version.

A replica is a plain zarr3 array (`bytes` + `crc32c` codecs, no compression, no sharding, chunks of
many rows) that TensorStore or any zarr3 reader opens as it is; lookups gather rows from numpy
memmaps of its chunk files. It is built in a temporary folder from crc32c-checked store reads, its
record (`replica.json`: the version, generation, digest and spec it holds) is written last, and the
folder is then renamed into place: a killed build leaves nothing a reader uses. Each chunk's crc32c
is checked through TensorStore before a handle first reads from it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorstore as ts

from star_jax.errors import StarError
from star_jax.fileio import atomic_write_json, is_no_space, process_alive, read_json
from star_jax.store.kv import StoreRoot, error_reason
from star_jax.store.layout import DTYPES, replica_metadata
from star_jax.store.manifest import EmbeddingSpec, utc_now
from star_jax.store.rows import read_checked
from star_jax.tracking import progress

log = logging.getLogger(__name__)

FORMAT = 1  # of replica.json and the folder layout
RECORD = "replica.json"
# Chunks of about 128 MiB (larger past 32 GiB: at most 256 per array): few files, so that a random-row
# gather touches few memmaps, and a build holds about two chunks in memory.
_CHUNK_BYTES = 1 << 27
_MAX_CHUNKS = 256
# Chunk files this process has checked: (st_dev, st_ino) -> (size, mtime_ns, ctime_ns) when checked.
# A later handle on an unchanged file skips the check; a write to the file changes its times.
_CHECKED: dict[tuple[int, int], tuple[int, int, int]] = {}
# File times tick coarsely (a few ms): a file changed this recently may change again without its
# times moving, so its check is not remembered (git's "racy clean" rule).
_SETTLED_NS = 2_000_000_000


def identity(manifest: dict, node_type: str) -> dict:
    """What a replica of `node_type` of the manifest's version must hold, as its record stores it."""
    entry = manifest["node_types"][node_type]
    return {"version": manifest["version"], "created": manifest["created"], "node_type": node_type,
            "generation": entry["generation"], "digest": entry["digest"], "rows": entry["rows"],
            "dim": manifest["dim"], "dtype": manifest["dtype"],
            "spec": EmbeddingSpec.from_json(manifest).to_json()}


def replica_path(directory: str | os.PathLike, ident: dict) -> Path:
    """DIR/<version>/<node type>/g<generation>-<key>: one folder per replicated generation."""
    key = hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=6).hexdigest()
    return Path(directory) / ident["version"] / ident["node_type"] / f"g{ident['generation']:08d}-{key}"


def _chunk_rows(ident: dict, chunk_bytes: int) -> int:
    """Rows per chunk: about `chunk_bytes`, split evenly (zarr pads the last chunk to full size)."""
    rows, row_bytes = ident["rows"], ident["dim"] * np.dtype(DTYPES[ident["dtype"]]).itemsize
    target = max(1, max(chunk_bytes, -(-rows * row_bytes // _MAX_CHUNKS)) // row_bytes)
    n_chunks = -(-rows // target)
    return max(1, -(-rows // n_chunks))


def _remove_leftovers(parent: Path, keep: Path, generation: int, live: list[int]) -> None:
    """Remove the temporary folders of dead builders, and replicas of generations older than
    `generation` that the store no longer keeps (`live`: those readers may still hold)."""
    for p in parent.iterdir():
        if p.name.startswith("."):  # .<name>.tmp-<pid>-<token>
            pid = p.name.rsplit(".tmp-", 1)[-1].split("-")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
        elif (p != keep and p.name[:1] == "g" and p.name[1:9].isdigit() and int(p.name[1:9]) not in live
              and int(p.name[1:9]) <= generation):
            # A handle that mapped it keeps its pages; only opening it again would fail.
            shutil.rmtree(p, ignore_errors=True)


def build_replica(directory: str | os.PathLike, ident: dict, read: Callable[[int, int], np.ndarray],
                  where: str, live: list[int], chunk_bytes: int | None = None) -> Path:
    """Write the replica of `ident` under `directory` from `read(r0, r1)` (stored rows r0..r1-1),
    in chunks of about `chunk_bytes` (default 128 MiB); returns its folder."""
    final = replica_path(directory, ident)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StarError(f"{where}: cannot create replica folder {parent} ({e.strerror})") from None
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    rows, chunk_rows = ident["rows"], _chunk_rows(ident, chunk_bytes or _CHUNK_BYTES)
    try:
        meta = replica_metadata(rows, ident["dim"], ident["dtype"], chunk_rows)
        arr = StoreRoot(tmp).create_array("emb", meta)
        starts = range(0, rows, chunk_rows)
        for r0 in progress(starts, desc=f"replica {ident['node_type']}", unit="chunk"):
            r1 = min(r0 + chunk_rows, rows)
            arr[r0:r1].write(read(r0, r1)).result()
        atomic_write_json(tmp / RECORD, {"format": FORMAT, **ident, "chunk_rows": chunk_rows,
                                         "source": where, "built": utc_now()})
        os.rename(tmp, final)  # the publish: a reader sees the whole folder or none
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise _build_error(where, final, e) from None
        # Another process published the same replica first: use it.
    except ValueError as e:  # a TensorStore write
        shutil.rmtree(tmp, ignore_errors=True)
        raise _build_error(where, final, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(parent, final, ident["generation"], live)
    log.info(f"{where}: built replica {final} ({rows:,} rows, chunks of {chunk_rows:,})")
    return final


def _build_error(where: str, path: Path, e: BaseException) -> StarError:
    if is_no_space(e):
        return StarError(f"{where}: no space left on device building replica {path}; nothing was published")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else error_reason(e)
    return StarError(f"{where}: building replica {path} failed ({reason}); nothing was published")


def open_replica(directory: str | os.PathLike, ident: dict, read: Callable[[int, int], np.ndarray],
                 where: str, live: list[int], *, build: bool = True) -> Replica:
    """The replica of `ident` under `directory`, built first when there is none (with `build`)."""
    path = replica_path(directory, ident)
    if not (path / RECORD).is_file():
        if not build:
            raise StarError(f"{where}: no replica of generation {ident['generation']} in {directory} "
                            "(run `star-jax store replicate`)")
        log.info(f"{where}: no replica of generation {ident['generation']} in {directory}; building one")
        path = build_replica(directory, ident, read, where, live)
    return Replica(path, ident, where)


class Replica:
    """Random-row reads from a replica's chunk files, all memory-mapped at open."""

    def __init__(self, path: Path, ident: dict, where: str):
        self.path = path
        self.where = f"{where}: replica {path}"
        try:
            record = read_json(path / RECORD)
        except (OSError, ValueError) as e:
            raise StarError(f"{self.where}/{RECORD}: unreadable ({e}); delete {path} to rebuild it") from None
        for key, want in {"format": FORMAT, **ident}.items():
            if record.get(key) != want:  # a folder of this name holds something else: never read it
                raise StarError(f"{self.where}/{RECORD}: {key} is {record.get(key)!r}, but the store has "
                                f"{want!r}; delete {path} to rebuild it")
        self.rows, self.dim, self.chunk_rows = record["rows"], record["dim"], record["chunk_rows"]
        self.dtype = np.dtype(DTYPES[record["dtype"]])
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "emb")},
                "fill_missing_data_reads": False}
        try:
            self.array = ts.open(spec, read=True).result()
        except ValueError as e:
            raise StarError(f"{self.where}: cannot open emb ({error_reason(e)}); delete {path} to rebuild "
                            "it") from None
        n_chunks = -(-self.rows // self.chunk_rows)
        chunk_bytes = self.chunk_rows * self.dim * self.dtype.itemsize
        self.maps: list[np.ndarray] = []
        self.stats: list[os.stat_result] = []
        for c in range(n_chunks):
            file = path / "emb" / "c" / str(c) / "0"
            try:
                st = os.stat(file)
            except FileNotFoundError:
                raise StarError(f"{self.where}: chunk file emb/c/{c}/0 is missing; delete {path} to rebuild "
                                "it") from None
            if st.st_size != chunk_bytes + 4:  # the raw rows, then their crc32c
                raise StarError(f"{self.where}: chunk file emb/c/{c}/0 has {st.st_size} bytes, expected "
                                f"{chunk_bytes + 4}; delete {path} to rebuild it")
            self.stats.append(st)
            self.maps.append(np.memmap(file, self.dtype, mode="r", shape=(self.chunk_rows, self.dim)))
        self.checked = np.zeros(n_chunks, bool)  # bool [chunks] crc32c checked for this handle

    def _check(self, chunks: np.ndarray) -> None:
        """Check the crc32c of each chunk not yet checked (through TensorStore, which verifies it)."""
        for c in chunks[~self.checked[chunks]].tolist():
            st = self.stats[c]
            sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if _CHECKED.get((st.st_dev, st.st_ino)) != sig:
                file = self.path / "emb" / "c" / str(c) / "0"
                now = os.stat(file) if file.exists() else None
                if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise StarError(f"{self.where}: chunk file emb/c/{c}/0 was replaced or removed after "
                                    "this handle opened it; reopen the store")
                r0, r1 = c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.rows)
                read_checked(self.array, np.arange(r0, r1), self.where, "emb")
                if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS:
                    _CHECKED[st.st_dev, st.st_ino] = sig
            self.checked[c] = True

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 [n, dim]: rows of the array (int64, in range, any order, repeats allowed)."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        if len(self.maps) == 1:
            self._check(np.zeros(1, np.int64))
            return self.maps[0][rows].astype(np.float32)
        chunk, row = np.divmod(rows, self.chunk_rows)
        order = np.argsort(chunk, kind="stable")
        ordered = chunk[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        starts = np.concatenate([[0], cuts]).astype(np.int64)
        self._check(ordered[starts])
        out = np.empty((len(rows), self.dim), np.float32)
        for lo, hi in zip(starts.tolist(), [*cuts.tolist(), len(rows)]):
            at = order[lo:hi]
            out[at] = self.maps[int(ordered[lo])][row[at]]  # gather and cast in one assignment
        return out
