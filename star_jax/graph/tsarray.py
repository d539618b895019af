"""A read-only array read through TensorStore, chunk by chunk, with a bounded cache of chunks.

`TsArray` indexes like the memory-mapped numpy arrays it stands in for (ints, slices, integer and
boolean arrays on the first axis), so the sampler runs unchanged on a graph read from a graph
store (star_jax.graph.tstore). Decoded chunks are kept in one `ChunkCache` per graph.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
import tensorstore as ts

from star_jax.errors import StarError
from star_jax.store.kv import error_reason


class ChunkCache:
    """Least-recently-used decoded chunks, at most `limit` bytes in all (0: keep none)."""

    def __init__(self, limit: int):
        self.limit, self.bytes = int(limit), 0
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # grain samples in a background thread

    def get_many(self, keys: list[tuple[int, int]]) -> list[np.ndarray | None]:
        with self._lock:
            out = [self._chunks.get(k) for k in keys]
            for k, chunk in zip(keys, out, strict=True):
                if chunk is not None:
                    self._chunks.move_to_end(k)
            return out

    def put(self, key: tuple[int, int], chunk: np.ndarray) -> None:
        if chunk.nbytes > self.limit:
            return
        with self._lock:
            if key in self._chunks:
                return
            self._chunks[key] = chunk
            self.bytes += chunk.nbytes
            while self.bytes > self.limit:
                _, old = self._chunks.popitem(last=False)
                self.bytes -= old.nbytes


class TsArray:
    """numpy-style reads of a TensorStore array: a gather reads only the chunks it touches, each
    once (from `cache` when there), and `np.asarray` reads the whole array."""

    def __init__(self, store: ts.TensorStore, name: str, cache: ChunkCache):
        self._ts, self.name, self.cache = store, name, cache
        self.shape: tuple[int, ...] = tuple(int(d) for d in store.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        self.ndim = len(self.shape)
        self._rows = int(store.chunk_layout.read_chunk.shape[0])  # rows per stored chunk
        self._id = id(self)  # the cache key's array part (one cache per graph, several arrays)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _result(self, future) -> np.ndarray:
        try:
            return future.result()
        except ValueError as e:  # a missing chunk, a checksum mismatch, an unreachable store
            raise StarError(f"{self.name}: read failed ({error_reason(e)})") from None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._result(self._ts.read())
        return out if dtype is None else out.astype(dtype, copy=False)

    def _chunks(self, numbers: np.ndarray) -> list[np.ndarray]:
        """The decoded chunks `numbers` (ascending, unique): cached ones from the cache, the others
        read concurrently (one batch, so reads of one object share its requests), then cached."""
        keys = [(self._id, c) for c in numbers.tolist()]
        out = self.cache.get_many(keys)
        missing = [i for i, chunk in enumerate(out) if chunk is None]
        if missing:
            with ts.Batch() as batch:
                futures = {}
                for i in missing:
                    lo = keys[i][1] * self._rows
                    futures[i] = self._ts[lo : min(lo + self._rows, self.shape[0])].read(batch=batch)
            for i, future in futures.items():
                out[i] = self._result(future)
                self.cache.put(keys[i], out[i])
        return out  # type: ignore[return-value]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (int64, in range) of the array."""
        chunk = rows // self._rows
        first, last = int(chunk.min()), int(chunk.max())
        if first == last:  # the common case (small arrays, one CSR row): no sort
            return self._chunks(np.array([first]))[0][rows - first * self._rows]
        span = last - first + 1
        if span <= 4 * rows.shape[0] + 1024:  # dense enough: a lookup table instead of a sort
            present = np.zeros(span, bool)
            present[chunk - first] = True
            numbers = np.flatnonzero(present) + first
            inverse = (np.cumsum(present) - 1)[chunk - first]
        else:
            numbers, inverse = np.unique(chunk, return_inverse=True)
        chunks = self._chunks(numbers)
        starts = np.zeros(len(chunks), np.int64)
        np.cumsum([len(c) for c in chunks[:-1]], out=starts[1:])
        return np.concatenate(chunks)[starts[inverse] + rows - chunk * self._rows]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            first = key[0] if key else slice(None)
            head = self[first]
            lead = 0 if isinstance(first, (int, np.integer)) else max(np.ndim(first), 1)
            return head[(slice(None),) * lead + tuple(key[1:])]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"{self.name}: index {int(key)} out of range for {n} rows")
            return self._gather(np.array([i], np.int64))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:  # TensorStore indexes its domain: no negative or past-the-end bounds
                return self._result(self._ts[start : max(start, stop)].read())
            key = np.arange(start, stop, step)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"{self.name}: unsupported index of dtype {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64, copy=False)
        if flat.size == 0:
            return np.zeros(idx.shape + self.shape[1:], self.dtype)
        if flat.min() < 0:
            flat = np.where(flat < 0, flat + n, flat)
        if flat.min() < 0 or flat.max() >= n:
            raise IndexError(f"{self.name}: index out of range for {n} rows")
        return self._gather(flat).reshape(idx.shape + self.shape[1:])
