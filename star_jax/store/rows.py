"""Row keys and row reads shared by the store's reader and writer: text hashes, ids, gathers.

`read_checked` turns a chunk that fails to read (a crc32c mismatch, a truncated or undecodable
shard) into a one-line `StarError` naming the chunk's key and rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorstore as ts

from star_jax.errors import StarError
from star_jax.store.kv import error_code, error_reason

# Codes TensorStore gives a chunk whose bytes are wrong (checksum, decode, size) rather than absent
# (NOT_FOUND) or unreachable (PERMISSION_DENIED, UNAVAILABLE, ...).
_DAMAGE = ("DATA_LOSS", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "OUT_OF_RANGE")


def text_hash(texts: Iterable[str]) -> np.ndarray:
    """uint64 [n]: blake2b-64 of each text's UTF-8 bytes; stable across processes, runs and machines.

    Python's `hash()` is salted per process, so it cannot decide whether a stored row is current.
    """
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def as_ids(what: str, values: Any) -> np.ndarray:
    """int64 [n]: `values` flattened; anything but integers in the int64 range is a `StarError`.

    Strict on purpose: casting would truncate id 99532.5 to 99532, read True as id 1 or wrap a
    uint64 past 2**63 to a negative id, and serve or store another node's row. Whole-valued floats
    (3.0) are refused too, since a float column usually means the ids went through a lossy path
    (NaN-filled joins, float32 above 2**24); cast them with `astype(np.int64)` when they are fine.
    """
    try:
        arr = np.asarray(values)
    except ValueError:
        raise StarError(f"{what} must be a flat sequence of integers; got a ragged "
                        f"{type(values).__name__}") from None
    flat = arr.reshape(-1)
    is_seq = isinstance(values, list | tuple)
    if flat.dtype.kind in "iu":
        if is_seq:  # numpy reads bools mixed into a list of ints as 0 and 1
            objs = np.array(values, dtype=object).reshape(-1)
            pos = next((i for i, x in enumerate(objs) if isinstance(x, bool | np.bool_)), None)
            if pos is not None:
                raise StarError(f"{what} must be integers; got {objs[pos]!r} (bool) at position {pos}")
        if flat.dtype == np.uint64 and len(flat) and flat.max() > np.iinfo(np.int64).max:
            pos = int(np.argmax(flat > np.iinfo(np.int64).max))
            raise StarError(f"{what} must fit in int64; got {int(flat[pos])} at position {pos}")
        return flat.astype(np.int64, copy=False)
    if flat.size == 0:  # `[]` reads as float64: no id at all is fine
        return np.zeros(0, np.int64)
    typed = hasattr(values, "dtype")  # numpy, JAX, pandas: name the array's dtype, else each value's type
    objs = np.array(arr if typed else values, dtype=object).reshape(-1)  # the values as given
    for pos, x in enumerate(objs):
        if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
            given = f"{arr.dtype} array" if typed else type(x).__name__
            raise StarError(f"{what} must be integers; got {x!r} ({given}) at position {pos}")
        if not np.iinfo(np.int64).min <= x <= np.iinfo(np.int64).max:
            raise StarError(f"{what} must fit in int64; got {int(x)} at position {pos}")
    return objs.astype(np.int64)


def read_rows(array: ts.TensorStore, rows: np.ndarray) -> np.ndarray:
    """array[rows] for any int64 rows (repeats and any order), reading each distinct row once."""
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), array.dtype.numpy_dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    if uniq[-1] - uniq[0] + 1 == len(uniq):  # a contiguous range: a plain slice reads sequentially
        out = array[int(uniq[0]) : int(uniq[-1]) + 1].read().result()
    else:
        out = array[ts.d[0][uniq]].read().result()
    return out if np.array_equal(uniq, rows) else out[inverse]


def read_checked(array: ts.TensorStore, rows: np.ndarray | None, where: str, key: str) -> np.ndarray:
    """array[rows] (`read_rows`; None: the whole array); a chunk that fails is a `StarError`.

    `where` starts the message ("store R version V: member emb"), `key` is the array's key prefix.
    A NOT_FOUND error is raised as is: the reader decides whether the data was superseded.
    """
    try:
        return array.read().result() if rows is None else read_rows(array, rows)
    except ValueError as e:
        if error_code(e) == "NOT_FOUND":
            raise
        raise _unreadable(array, rows, where, key, e) from None


def _unreadable(array: ts.TensorStore, rows: np.ndarray | None, where: str, key: str,
                error: ValueError) -> Exception:
    """The error for a failed read: reread chunk by chunk to name the first chunk that fails."""
    rows = np.arange(array.shape[0]) if rows is None else np.asarray(rows)
    per = array.chunk_layout.write_chunk.shape[0]  # rows per stored object: a shard, or a chunk
    kind = "shard" if array.chunk_layout.read_chunk.shape != array.chunk_layout.write_chunk.shape else "chunk"
    for c in np.unique(rows // per).tolist():
        r0, r1 = c * per, min((c + 1) * per, array.shape[0])
        try:
            read_rows(array, rows[(rows >= r0) & (rows < r1)])
        except ValueError as e:
            if error_code(e) == "NOT_FOUND":
                return e
            chunk = "/".join(["c", str(c), *["0"] * (array.rank - 1)])
            state = "is corrupt" if error_code(e) in _DAMAGE else "cannot be read"
            reason = error_reason(e).split("; at byte")[0]  # the decoder's position adds nothing
            if "Digest mismatch" in reason:
                reason = "crc32c mismatch" + (" in the shard index" if "shard index" in str(e) else "")
            return StarError(f"{where} {kind} {key}/{chunk} (rows {r0}-{r1 - 1}) {state} ({reason})")
    return StarError(f"{where}: {key} cannot be read ({error_reason(error)})")
