"""Texts -> unit vectors through a `BiEncoder`'s towers, batched by length bucket on the mesh.

Used by `star-jax embed` and by train-llm's evaluation. A block of texts is tokenized, sorted by
length and cut into batches of `batch_size`; each batch is padded to the smallest `llm.buckets`
length that fits and split over the mesh's data x fsdp devices. The towers are jitted once per
bi-encoder and mesh in a process (`tower_fn`), with the tower's params an argument, so both towers
and later runs (the pipeline's frozen, fine-tuned and second-seed embeddings) share one compile
per bucket; `clear_tower_cache` drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from star_jax import train_loop as loop
from star_jax.data.loader import tower
from star_jax.data.tokenizer import bucket_length, encode_e5
from star_jax.llm.biencoder import JOB, MEMBER, BiEncoder, Params
from star_jax.parallel import replicated

_TOWER_FNS: dict[tuple[Any, Mesh], Callable] = {}


def tower_fn(bienc: BiEncoder, mesh: Mesh) -> Callable:
    """`(tower params, base, ids, lengths, pool) -> unit vectors [B, dim]`, jitted once per `bienc.key`
    and mesh."""
    key = (bienc.key, mesh)
    if key not in _TOWER_FNS:
        fn = lambda params, base, ids, lengths, pool: bienc.encode(params, base, MEMBER, ids, lengths, pool)
        _TOWER_FNS[key] = jax.jit(fn, out_shardings=replicated(mesh))
    return _TOWER_FNS[key]


def tower_fns() -> list[Callable]:
    """The jitted tower functions this process holds."""
    return list(_TOWER_FNS.values())


def clear_tower_cache() -> None:
    """Forget every jitted tower function (and with it their compiles)."""
    _TOWER_FNS.clear()


class TextTowers:
    """The jitted towers of `bienc` on the mesh: a block of texts -> unit vectors, batched by bucket."""

    def __init__(self, bienc: BiEncoder, base: dict, params: Params | None, tokenizer: Any, batch_size: int,
                 mesh: Mesh):
        self.bienc, self.base, self.params, self.tokenizer, self.mesh = bienc, base, params, tokenizer, mesh
        self.batch_size, self.dim = batch_size, bienc.dim
        self.shard = loop.process_shard(mesh, batch_size)
        per = batch_size // self.shard[1]
        self.local = slice(self.shard[0] * per, (self.shard[0] + 1) * per)
        self.fn = tower_fn(bienc, mesh)

    def dispatch(self, node_type: str, ids: np.ndarray, texts: list[str], where: str
                 ) -> tuple[list[tuple[np.ndarray, jax.Array]], int]:
        """Start every batch of a block on the device: ([(block positions, vectors [B, dim])], truncated)."""
        llm = self.bienc.llm
        max_len, instruction, section = tower(llm, node_type)
        buckets, bs = llm.buckets, self.batch_size
        enc = encode_e5(self.tokenizer, texts, max_len, buckets, instruction, where=where, ids=ids,
                        section=section)
        params = self.bienc.tower_params(self.params, MEMBER if node_type == MEMBER else JOB)
        order = np.argsort(enc.lengths, kind="stable")
        batches = []
        for lo in range(0, len(order), bs):
            take = order[lo : lo + bs]
            fill = np.concatenate([take, np.repeat(take[:1], bs - len(take))])  # a short batch: repeat a row
            # encode_e5 padded the block to its longest row; each batch needs only its own bucket.
            width = bucket_length(int(enc.lengths[take].max()), max_len, buckets)
            host = {"ids": enc.ids[fill, :width][self.local], "lengths": enc.lengths[fill][self.local],
                    "pool": enc.pool[fill, :width][self.local]}
            dev = loop.put_batch(host, self.mesh, self.shard)
            batches.append((take, self.fn(params, self.base, dev["ids"], dev["lengths"], dev["pool"])))
        return batches, enc.truncated

    def collect(self, n: int, batches: list[tuple[np.ndarray, jax.Array]]) -> np.ndarray:
        """float32 [n, dim]: the block's vectors back in block order (waits for the device)."""
        out = np.empty((n, self.dim), np.float32)
        for take, vectors in batches:
            out[take] = np.asarray(vectors)[: len(take)]
        return out
