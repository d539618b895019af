"""Kvstore access for a store root: root specs, small JSON files, key listing and zarr3 arrays.

Every file, JSON included, goes through TensorStore's kvstore API, so the same code runs on local
disk and on object stores (`file://`, `gs://`, `s3://`, `memory://`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from star_jax.errors import StarError
from star_jax.fileio import is_no_space  # noqa: F401 (the store's writer reads it from here)

# One process-wide context: `memory://` stores are per-context, and sharing it lets every handle
# in this process see the same in-memory store (tests, notebooks).
_CONTEXT = ts.Context()


def resolve_root(root: str | os.PathLike | Mapping, kvstore: str = "file") -> dict:
    """A TensorStore kvstore spec (JSON) for a store root.

    `root` is a kvstore spec, a URL (`file:///data/store`, `gs://bucket/store`, `s3://...`,
    `memory://store`) or a bare path, read with the `kvstore` driver (`StoreConfig.kvstore`): a
    local directory for `file`, `bucket/prefix` for `gcs` and `s3`.
    """
    if isinstance(root, Mapping):
        spec = dict(root)
    else:
        root = os.fspath(root)
        if "://" in root:
            try:
                spec = ts.KvStore.Spec(root.rstrip("/") + "/").to_json()
            except ValueError as e:
                raise StarError(f"store root {root!r}: not a TensorStore kvstore URL ({e})") from None
        elif kvstore == "file":
            spec = {"driver": "file", "path": os.path.abspath(root)}
        elif kvstore == "memory":
            spec = {"driver": "memory", "path": root}
        elif kvstore in ("gcs", "s3"):
            bucket, _, prefix = root.strip("/").partition("/")
            spec = {"driver": kvstore, "bucket": bucket, "path": prefix}
        else:
            raise StarError(f"store.kvstore {kvstore!r}: expected file, gcs, s3 or memory")
    path = spec.get("path", "")
    spec["path"] = path if not path or path.endswith("/") else path + "/"
    return spec


def _describe(spec: Mapping) -> str:
    if spec.get("driver") == "file":
        return spec["path"].rstrip("/")
    try:
        return ts.KvStore.Spec(dict(spec)).url
    except Exception:  # a description only: fall back to the JSON spec
        return json.dumps(dict(spec), sort_keys=True)


def error_code(e: BaseException) -> str:
    """The status code a TensorStore error starts with ('DATA_LOSS', 'NOT_FOUND', ...), else ''."""
    m = re.match(r"([A-Z][A-Z_]+): ", str(e))
    return m.group(1) if m else ""


def error_reason(e: BaseException) -> str:
    """The innermost cause of a TensorStore error on one line, without the spec and file names."""
    # 'DATA_LOSS: Error reading shard entry {0, 0}/{4, 1} in local file "<path>": Digest mismatch, ...'
    first = (str(e).splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    code = error_code(e)
    return first.rsplit('": ', 1)[-1] if '": ' in first else first[len(code) + 2 if code else 0 :]


def _check_directory(path: str) -> None:
    """A local root, or the nearest part of it that exists, must be a directory (TensorStore would
    fail on its first read or write with an error and a traceback)."""
    p = path
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
    if not os.path.isdir(p):
        where = "is a file" if p == path else f"is under {p}, a file"
        raise StarError(f"store root {path}: {where}, not a directory")


def _end(prefix: str) -> str:
    """The first key past every key that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class StoreRoot:
    """A store root: its kvstore, and specs for the arrays under it."""

    def __init__(self, root: str | os.PathLike | Mapping, kvstore: str = "file"):
        self.spec = resolve_root(root, kvstore)
        self.name = _describe(self.spec)
        if self.spec.get("driver") == "file":
            _check_directory(self.name)
        self.kv = ts.KvStore.open(self.spec, context=_CONTEXT).result()

    def read_json(self, key: str) -> dict | None:
        res = self.kv.read(key).result()
        if res.state != "value":
            return None
        try:
            return json.loads(res.value)
        except json.JSONDecodeError as e:
            raise StarError(f"{self.name}/{key}: not valid JSON ({e})") from None

    def write_json(self, key: str, obj: Any) -> None:
        # A kvstore write replaces one object atomically (rename on local disk, a single PUT on
        # object stores): readers see the old or the new JSON, never a mix.
        self.kv.write(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()).result()

    def delete(self, key: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def delete_prefix(self, prefix: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(prefix, _end(prefix))).result()

    def delete_range(self, start: str, stop: str) -> None:
        """Delete every key k with start <= k < stop."""
        self.kv.delete_range(ts.KvStore.KeyRange(start, stop)).result()

    def list(self, prefix: str) -> list[str]:
        keys = self.kv.list(ts.KvStore.KeyRange(prefix, _end(prefix)), strip_prefix_length=len(prefix))
        return sorted(k.decode() for k in keys.result())

    def write_rows(self, array: ts.TensorStore, start: int, block: np.ndarray) -> ts.WriteFutures:
        """Start writing `block` into rows start.. of `array`: the one path shard data takes to disk."""
        return array[start : start + len(block)].write(block)

    def kvstore(self, key_prefix: str) -> dict:
        return {**self.spec, "path": self.spec["path"] + key_prefix.rstrip("/") + "/"}

    def open_array(self, key_prefix: str) -> ts.TensorStore:
        """Open an existing array read-only; a missing chunk raises instead of reading as zeros."""
        spec = {"driver": "zarr3", "kvstore": self.kvstore(key_prefix), "fill_missing_data_reads": False}
        try:
            return ts.open(spec, read=True, context=_CONTEXT).result()
        except ValueError as e:
            reason = str(e).splitlines()[0].split(" [tensorstore_spec=")[0]
            raise StarError(f"{self.name}/{key_prefix}: cannot open ({reason})") from None

    def open_writable(self, key_prefix: str) -> ts.TensorStore:
        """Open an existing array for reading and writing, with the metadata it was created with."""
        spec = {"driver": "zarr3", "kvstore": self.kvstore(key_prefix)}
        return ts.open(spec, read=True, write=True, context=_CONTEXT).result()

    def create_array(self, key_prefix: str, metadata: dict) -> ts.TensorStore:
        spec = {
            "driver": "zarr3",
            "kvstore": self.kvstore(key_prefix),
            "metadata": metadata,
            # A shard equal to the fill value must still exist: an existing shard object is how
            # a resumed writer knows the shard is done.
            "store_data_equal_to_fill_value": True,
        }
        return ts.open(spec, create=True, delete_existing=True, context=_CONTEXT).result()
