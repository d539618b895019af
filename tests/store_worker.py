"""A writer and a reader of a small EmbeddingStore, run as separate processes by tests/test_store.py.

    python tests/store_worker.py write ROOT --revs 1 [--every 2] [--sleep 0.05]
    python tests/store_worker.py read ROOT --stop-file PATH --revs 0,1,2 [--every 2]

Texts and vectors are deterministic, so any process can say what a row must hold: the text of
(node type, id) at revision r changes only for ids divisible by `every`, and a row's vector is a
fixed function of its text hash. The writer prints one line per block written and a final JSON
report; the reader checks every row of every snapshot it opens and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_dtypes
import numpy as np

from star_jax.config import StoreConfig
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, text_hash

VERSION = "v1"
DIM = 16
SIZES = {"member": 600, "job": 300}
CONFIG = StoreConfig(shard_rows=32, chunk_rows=8)
SPEC = EmbeddingSpec(model="tiny", adapter="step-1", tokenizer="bpe-1", max_len=64, pooling="last_token",
                     dim=DIM)


def node_ids(node_type: str) -> np.ndarray:
    return np.arange(SIZES[node_type], dtype=np.int64) * 7 + 3  # sparse, not row numbers


def texts(node_type: str, ids: np.ndarray, rev: int, every: int = 1) -> list[str]:
    return [f"{node_type} {i} rev {rev if i % every == 0 else 0}" for i in ids]


def vectors(hashes: np.ndarray, dim: int = DIM) -> np.ndarray:
    """float32 [n, dim] in [-1, 1): splitmix64 of (hash, column)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    x = hashes.astype(np.uint64)[:, None] + np.arange(1, dim + 1, dtype=np.uint64) * golden
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(40)).astype(np.float64) / (1 << 23) - 1.0).astype(np.float32)


def stored(hashes: np.ndarray) -> np.ndarray:
    """What a bf16 store returns for rows with these text hashes."""
    return vectors(hashes).astype(ml_dtypes.bfloat16).astype(np.float32)


def write(root: str, rev: int, every: int, sleep: float) -> dict:
    inputs = {t: (node_ids(t), text_hash(texts(t, node_ids(t), rev, every))) for t in SIZES}
    writer = EmbeddingWriter.open(root, VERSION, SPEC, inputs, CONFIG)
    written = {t: 0 for t in SIZES}
    for t in writer.node_types:
        hashes = inputs[t][1]
        for i, block in enumerate(writer.pending_blocks(t, CONFIG.shard_rows)):
            writer.write(t, block.rows, vectors(hashes[block.positions]))
            written[t] += len(block.rows)
            print(f"block {t} {i}", flush=True)
            time.sleep(sleep)
    report = writer.publish()
    return {"generation": report.generation, "embedded": report.embedded, "copied": report.copied,
            "written_this_run": written, "resumed": writer.resumed}


def read(root: str, stop_file: str, revs: list[int], every: int) -> dict:
    """Open the latest state over and over; every row must match one published revision exactly."""
    expected = {(t, r): text_hash(texts(t, node_ids(t), r, every)) for t in SIZES for r in revs}
    snapshots, torn, seen = 0, 0, set()
    while not os.path.exists(stop_file):
        store = EmbeddingStore.open(root)
        for t in SIZES:
            ids = store.ids(t)
            hashes = store.text_hashes(t)
            got = store.lookup(t, ids[::-1])[::-1]  # a reversed, random-access read path
            torn += int((got != stored(hashes)).any(axis=1).sum())
            rev = [r for r in revs if np.array_equal(hashes, expected[t, r])]
            torn += 0 if rev and np.array_equal(ids, node_ids(t)) else len(ids)
            seen.add((store.manifest["generation"], rev[0] if rev else -1))
        snapshots += 1
    return {"snapshots": snapshots, "torn_rows": torn, "states": sorted(seen)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["write", "read"])
    p.add_argument("root")
    p.add_argument("--revs", default="1")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--stop-file", default=None)
    args = p.parse_args()
    revs = [int(r) for r in args.revs.split(",")]
    if args.action == "read":
        out = read(args.root, args.stop_file, revs, args.every)
        print(json.dumps(out), flush=True)
        return 1 if out["torn_rows"] else 0
    for rev in revs:
        print("report " + json.dumps(write(args.root, rev, args.every, args.sleep)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
