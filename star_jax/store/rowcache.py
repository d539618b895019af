"""`RowCache`: decoded rows of one node type's `emb` array, held in memory by a reader.

Rows are kept as stored (bf16 by default) in slots of one shard each, filled one inner chunk at a
time as lookups touch them, and evicted a whole shard at a time, least recently used first. Every
row in the cache was read through TensorStore, so its crc32c was checked before it got there; a
cache belongs to one reader handle and so to one immutable generation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class RowCache:
    """Decoded rows of an array [rows, dim] in at most `capacity_bytes` (whole shards)."""

    def __init__(self, rows: int, dim: int, dtype: np.dtype, shard_rows: int, chunk_rows: int,
                 capacity_bytes: int):
        self.rows, self.shard_rows, self.chunk_rows = rows, shard_rows, chunk_rows
        n_shards = -(-rows // shard_rows)
        shard_bytes = shard_rows * dim * np.dtype(dtype).itemsize
        # A budget of the array's size holds all of it (its last shard may be short).
        fits = capacity_bytes >= rows * dim * np.dtype(dtype).itemsize
        slots = n_shards if fits else max(1, min(n_shards, capacity_bytes // shard_bytes))
        self.capacity = slots
        self.nbytes_reserved = min(slots * shard_bytes, rows * dim * np.dtype(dtype).itemsize)
        # np.empty maps pages lazily: memory grows with the rows actually read, not the capacity.
        self.data = np.empty((slots * shard_rows, dim), dtype)
        self.filled = np.zeros(slots * shard_rows // chunk_rows, bool)  # bool [slots * chunks per shard]
        self.slot_of = np.full(n_shards, -1, np.int64)  # int64 [shards] slot holding the shard, -1: none
        self.shard_in = np.full(slots, -1, np.int64)  # int64 [slots] shard held, -1: free
        self.used = np.zeros(slots, np.int64)  # int64 [slots] tick of the last lookup that touched it
        self.tick = 0

    @property
    def nbytes(self) -> int:
        """Bytes of decoded rows held (filled chunks)."""
        return int(self.filled.sum()) * self.chunk_rows * self.data.shape[1] * self.data.itemsize

    def get(self, rows: np.ndarray, read: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """array[rows] for int64 rows in range (any order, repeats allowed). `read(rows)` reads rows
        the cache does not hold; rows of more shards than fit are read without being kept."""
        self.tick += 1
        shard = rows // self.shard_rows
        slot = self.slot_of[shard]
        if (slot < 0).any():
            held = np.unique(shard[slot >= 0])
            new = np.unique(shard[slot < 0])[: self.capacity - len(held)]
            self._assign(new, held)
            slot = self.slot_of[shard]
        inside = slot >= 0
        if not inside.all():  # more shards than the cache holds: read the rest straight
            out = np.empty((len(rows), self.data.shape[1]), self.data.dtype)
            out[inside] = self.get(rows[inside], read)
            out[~inside] = read(rows[~inside])
            return out
        flat = slot * self.shard_rows + rows % self.shard_rows  # row within `data`
        chunk = flat // self.chunk_rows
        missing = ~self.filled[chunk]
        if missing.any():
            self._fill(np.unique(chunk[missing]), read)
        self.used[slot] = self.tick
        return self.data[flat]

    def _assign(self, new: np.ndarray, keep: np.ndarray) -> None:
        """Give each shard in `new` a slot: free ones first, then the least recently used ones that
        hold no shard in `keep` (held shards of the lookup in progress)."""
        held = self.shard_in >= 0
        busy = np.zeros(self.capacity, bool)
        busy[self.slot_of[keep]] = True
        order = np.lexsort((self.used, held))  # free slots, then oldest first
        order = order[~busy[order]][: len(new)]
        old = self.shard_in[order]
        self.slot_of[old[old >= 0]] = -1
        per = self.shard_rows // self.chunk_rows
        for s in order.tolist():
            self.filled[s * per : (s + 1) * per] = False
        self.shard_in[order] = new
        self.slot_of[new] = order

    def _fill(self, chunks: np.ndarray, read: Callable[[np.ndarray], np.ndarray]) -> None:
        """Read whole inner chunks (cache positions) into the cache: the decoder reads them whole anyway."""
        first = chunks * self.chunk_rows  # flat row of each chunk's first row
        slot = first // self.shard_rows
        src = self.shard_in[slot] * self.shard_rows + first % self.shard_rows  # array row of the same
        offs = np.arange(self.chunk_rows)
        src_rows = (src[:, None] + offs).reshape(-1)
        flat_rows = (first[:, None] + offs).reshape(-1)
        inside = src_rows < self.rows  # the last shard may be short
        self.data[flat_rows[inside]] = read(src_rows[inside])
        self.filled[chunks] = True
