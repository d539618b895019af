"""A writer and a reader of a small EmbeddingStore, run as separate processes by tests/test_store.py.

    python tests/store_worker.py write ROOT --revs 1,2 [--every 2] [--sync DIR] [--hold-after N --ready F]
    python tests/store_worker.py read ROOT --stop-file F --revs 0,1,2 [--every 2] [--seen DIR]

Texts and vectors are deterministic (a text changes at revision r only for ids divisible by
`every`; a vector is a fixed function of its text hash), so the reader checks every row of every
snapshot. Hand-offs are files: the reader touches DIR/seen-<generation> after each snapshot, a
`--sync` writer waits for the published generation's file before each revision, and
`--hold-after` touches F after N blocks and waits to be killed.
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

WAIT_S = 60.0  # longest wait for a hand-off file
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


def touch(path: str) -> None:
    open(path, "w").close()


def wait_for(path: str, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"store_worker: {path} did not appear within {WAIT_S:.0f} s ({what})")
        time.sleep(0.01)


def write(root: str, rev: int, every: int, sleep: float, hold_after: int = 0,
          ready: str | None = None) -> dict:
    inputs = {t: (node_ids(t), text_hash(texts(t, node_ids(t), rev, every))) for t in SIZES}
    writer = EmbeddingWriter.open(root, VERSION, SPEC, inputs, CONFIG)
    written = {t: 0 for t in SIZES}
    blocks = 0
    for t in writer.node_types:
        hashes = inputs[t][1]
        for i, block in enumerate(writer.pending_blocks(t, CONFIG.shard_rows)):
            writer.write(t, block.rows, vectors(hashes[block.positions]))
            written[t] += len(block.rows)
            blocks += 1
            print(f"block {t} {i}", flush=True)
            if blocks == hold_after:  # mid-write: tell the parent, then wait for its SIGKILL
                touch(ready)
                time.sleep(WAIT_S)
                raise SystemExit(f"store_worker: held after block {blocks} for {WAIT_S:.0f} s, never killed")
            time.sleep(sleep)
    report = writer.publish()
    return {"generation": report.generation, "embedded": report.embedded, "copied": report.copied,
            "written_this_run": written, "resumed": writer.resumed}


def read(root: str, stop_file: str, revs: list[int], every: int, seen: str | None = None) -> dict:
    """Open the latest state over and over; every row must match one published revision exactly."""
    expected = {(t, r): text_hash(texts(t, node_ids(t), r, every)) for t in SIZES for r in revs}
    snapshots, torn, states = 0, 0, set()
    while not os.path.exists(stop_file):
        store = EmbeddingStore.open(root)
        for t in SIZES:
            ids = store.ids(t)
            hashes = store.text_hashes(t)
            got = store.lookup(t, ids[::-1])[::-1]  # a reversed, random-access read path
            torn += int((got != stored(hashes)).any(axis=1).sum())
            rev = [r for r in revs if np.array_equal(hashes, expected[t, r])]
            torn += 0 if rev and np.array_equal(ids, node_ids(t)) else len(ids)
            states.add((store.manifest["generation"], rev[0] if rev else -1))
        snapshots += 1
        if seen:
            touch(os.path.join(seen, f"seen-{store.manifest['generation']}"))
    return {"snapshots": snapshots, "torn_rows": torn, "states": sorted(states)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["write", "read"])
    p.add_argument("root")
    p.add_argument("--revs", default="1")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--stop-file", default=None)
    p.add_argument("--seen", default=None, help="reader: touch DIR/seen-<generation> after each snapshot")
    p.add_argument("--sync", default=None, help="writer: wait for DIR/seen-<published generation> first")
    p.add_argument("--hold-after", type=int, default=0, help="writer: stop after N blocks, touch --ready")
    p.add_argument("--ready", default=None)
    args = p.parse_args()
    revs = [int(r) for r in args.revs.split(",")]
    if args.action == "read":
        out = read(args.root, args.stop_file, revs, args.every, args.seen)
        print(json.dumps(out), flush=True)
        return 1 if out["torn_rows"] else 0
    for rev in revs:
        if args.sync:
            generation = EmbeddingStore.open(args.root, VERSION).manifest["generation"]
            wait_for(os.path.join(args.sync, f"seen-{generation}"), "the reader's snapshot")
        report = write(args.root, rev, args.every, args.sleep, args.hold_after, args.ready)
        print("report " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
