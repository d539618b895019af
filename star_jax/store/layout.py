"""The on-disk layout of a store: its keys and the zarr3 metadata of its arrays.

    manifests/<version>.json              published state of a version (manifest.py)
    staging/<version>.json                the generation a writer is building (its resume record)
    maps/<version>/<target>.json          a fitted linear map onto an older version (maps.py)
    data/<version>/g<NNNNNNNN>/<type>/    emb (zarr3 [rows, dim]; shards of `shard_rows` rows, inner
                                          chunks of `chunk_rows`), hash (uint64 [rows] text_hash),
                                          ids (int64 [rows], ascending; row r holds ids[r]); from
                                          format 2 every chunk and shard index ends in a crc32c
    data/<version>/maps/<target>/<fit>/   a map's weight and bias arrays

A replica (replica.py) is a plain zarr3 copy of one generation's `emb`, outside the store root.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from star_jax.config import StoreConfig
from star_jax.errors import StarError

FORMAT_VERSION = 2  # what this code writes: 2 adds crc32c checksums to every chunk
# What readers accept. A manifest names generations written under older formats as they were: a
# refresh rewrites only the node types whose texts changed.
READ_FORMATS = (1, 2)
# bfloat16 is not a zarr v3 core data type: zarr-python 3 refuses a bf16 `emb` array, so only
# versions written with store.dtype float32 or float16 are readable by zarr readers other than
# TensorStore. Such a reader must take each node type's generation from the manifest, never the
# newest g* folder.
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}
_LE = {"name": "bytes", "configuration": {"endian": "little"}}
# Appended to each encoded chunk (after compression) and to each shard index: a flipped or lost
# byte anywhere in a shard fails the read (DATA_LOSS) instead of decoding to other numbers.
_CRC = {"name": "crc32c"}
_META_CHUNK = 1 << 16  # rows per chunk of the ids and hash arrays (read whole at open)
_CHUNK_BYTES = 8192  # target size of an inner chunk when store.chunk_rows is 0


def gen_dir(version: str, generation: int) -> str:
    """The key prefix of one generation of a version."""
    return f"data/{version}/g{generation:08d}"


def _compressor(cfg: StoreConfig, itemsize: int) -> list[dict]:
    if cfg.compression == "blosc":
        conf = {"cname": "zstd", "clevel": cfg.compression_level, "shuffle": "bitshuffle"}
        return [{"name": "blosc", "configuration": {**conf, "typesize": itemsize}}]
    if cfg.compression == "zstd":
        return [{"name": "zstd", "configuration": {"level": cfg.compression_level}}]
    if cfg.compression == "none":
        return []
    raise StarError(f"store.compression {cfg.compression!r}: expected blosc, zstd or none")


def inner_chunk_rows(cfg: StoreConfig, dim: int) -> int:
    """`store.chunk_rows`, or for 0 the largest power of two of rows within 8 KiB (at least 1).

    The sweet spot measured in docs/benchmarks.md: at 4096-d a 16-row chunk decodes 16x the bytes
    a random row needs, while at 512-d single-row chunks pay more per-chunk overhead than decode.
    """
    if cfg.chunk_rows:
        return cfg.chunk_rows
    fit = max(1, _CHUNK_BYTES // (dim * np.dtype(DTYPES[cfg.dtype]).itemsize))
    return math.gcd(min(1 << (fit.bit_length() - 1), cfg.shard_rows), cfg.shard_rows)


def emb_metadata(rows: int, dim: int, cfg: StoreConfig) -> dict:
    """zarr3 metadata of an `emb` array [rows, dim]."""
    # Sharded: one object per `shard_rows` rows keeps object counts low, and small inner chunks
    # make a random-row read decode `chunk_rows` rows, not a whole shard.
    sharding = {
        "name": "sharding_indexed",
        "configuration": {
            "chunk_shape": [inner_chunk_rows(cfg, dim), dim],
            "codecs": [_LE, *_compressor(cfg, np.dtype(DTYPES[cfg.dtype]).itemsize), _CRC],
            "index_codecs": [_LE, _CRC],
        },
    }
    return {
        "shape": [rows, dim],
        "data_type": cfg.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [cfg.shard_rows, dim]}},
        "codecs": [sharding],
        "fill_value": 0,
        "dimension_names": ["row", "dim"],
    }


def replica_metadata(rows: int, dim: int, dtype: str, chunk_rows: int) -> dict:
    """zarr3 metadata of a replica's `emb` array [rows, dim]: raw little-endian chunks of
    `chunk_rows` rows, each followed by its crc32c, so that a chunk file can be memory-mapped."""
    return {
        "shape": [rows, dim],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, dim]}},
        "codecs": [_LE, _CRC],
        "fill_value": 0,
        "dimension_names": ["row", "dim"],
    }


def meta_metadata(rows: int, dtype: str) -> dict:
    """zarr3 metadata of an `ids` (int64) or `hash` (uint64) array [rows]."""
    return {
        "shape": [rows],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [_META_CHUNK]}},
        "codecs": [_LE, {"name": "zstd", "configuration": {"level": 3}}, _CRC],
        "fill_value": 0,
        "dimension_names": ["row"],
    }


def matrix_metadata(shape: list[int]) -> dict:
    """zarr3 metadata of a version map's float32 weight or bias array."""
    chunk = [min(512, shape[0]), *shape[1:]]
    return {
        "shape": shape,
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
        "codecs": [_LE, _CRC],
        "fill_value": 0,
    }
