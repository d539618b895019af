"""A tiny, valid data directory written by hand (docs/data_format.md), and helpers to break it.

The default marketplace schema with a few dozen nodes: members and jobs with short texts built
from a small vocabulary, every relation, and labelled pairs in time order (train, then val, then
test) whose val/test pairs are never apply edges.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from star_jax.data.schema import default_schema, write_schema

WORDS = (
    "python java sql spark kubernetes design sales marketing finance nursing teaching logistics "
    "senior junior lead manager engineer analyst remote onsite london paris berlin tokyo "
    "data cloud mobile backend frontend research product support"
).split()
DAY = 86_400
T0 = 1_700_000_000  # first training timestamp (seconds)


def _text(rng: np.random.Generator, kind: str, i: int) -> str:
    body = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 40))))
    return f"{kind} {i}: {body}."


def write_tiny_data(root: str | os.PathLike, *, members: int = 40, jobs: int = 30, seed: int = 0) -> Path:
    """Write a valid data directory under `root` and return its path."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    schema = default_schema()
    cats = {
        "seniority": ["junior", "mid", "senior"],
        "location": ["london", "paris", "tokyo"],
        "industry": ["tech", "health", "retail"],
        "size": ["small", "large"],
    }
    sizes = {"member": members, "job": jobs, "company": 6, "skill": 12, "title": 8}
    for node_type, spec in schema.node_types.items():
        n = sizes[node_type]
        cols = {"id": pa.array(np.arange(n, dtype=np.int64))}
        if spec.text:
            cols["text"] = pa.array([_text(rng, node_type, i) for i in range(n)])
        for c in spec.categorical:
            cols[c] = pa.array(rng.choice(cats[c], size=n).tolist())
        _write(root / spec.table, pa.table(cols))

    applies = set()
    for spec in schema.relations.values():
        m = 3 * sizes[spec.src]
        src = rng.integers(0, sizes[spec.src], m)
        dst = rng.integers(0, sizes[spec.dst], m)
        cols = {"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())}
        if spec.timestamp:
            cols["timestamp"] = pa.array(T0 + rng.integers(0, 30 * DAY, m), pa.int64())
        if spec.kind == "interaction":
            applies |= set(zip(src.tolist(), dst.tolist()))
        _write(root / spec.table, pa.table(cols))

    # Labelled pairs: train positives are the apply edges; val/test pairs are fresh pairs, later in time.
    # The training period spans the apply edges' timestamps, so no edge is dated after it ends.
    train = sorted(applies)[: 3 * members] + _fresh(rng, members, jobs, 40, applies)
    times = np.linspace(T0, T0 + 30 * DAY, len(train)).astype(np.int64)
    rows = [(m, j, int(k < len(train) - 40), int(times[k]), "train") for k, (m, j) in enumerate(train)]
    used = applies | {(m, j) for m, j, *_ in rows}
    for split, start in (("val", T0 + 31 * DAY), ("test", T0 + 40 * DAY)):
        pairs = _fresh(rng, members, jobs, 30, used)
        used |= set(pairs)
        rows += [(m, j, int(k % 2 == 0), start + k * 60, split) for k, (m, j) in enumerate(pairs)]
    df = pd.DataFrame(rows, columns=["member_id", "job_id", "label", "timestamp", "split"])
    labels = pa.table(
        {
            "member_id": pa.array(df.member_id, pa.int64()),
            "job_id": pa.array(df.job_id, pa.int64()),
            "label": pa.array(df.label, pa.int8()),
            "timestamp": pa.array(df.timestamp, pa.int64()),
            "split": pa.array(df.split.tolist(), pa.string()),
        }
    )
    _write(root / schema.labels, labels)
    write_schema(root, schema)
    return root


def _fresh(rng: np.random.Generator, members: int, jobs: int, n: int, used: set) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while len(out) < n:
        pair = (int(rng.integers(members)), int(rng.integers(jobs)))
        if pair not in used and pair not in out:
            out.append(pair)
    return out


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def edit_table(
    root: str | os.PathLike, rel_path: str, fn: Callable[[pd.DataFrame], pd.DataFrame | pa.Table]
) -> None:
    """Rewrite one table of a data directory through `fn` (a DataFrame in, a DataFrame or Table out)."""
    path = Path(root) / rel_path
    out = fn(pq.read_table(path).to_pandas())
    _write(path, out if isinstance(out, pa.Table) else pa.Table.from_pandas(out, preserve_index=False))


def write_tiny_inputs(root: Path) -> tuple[str, str, Path]:
    """Under `root`: a tiny data directory, a BPE tokenizer trained on it and a random 1-layer,
    16-d Mistral saved in HF format by star_jax; returns (data, tokenizer, base) paths."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from star_jax.config import MistralConfig, TokenizerConfig
    from star_jax.data.tokenizer import train_tokenizer
    from star_jax.llm.hf_io import save_mistral
    from star_jax.llm.mistral import MistralModel

    data = write_tiny_data(root / "data")
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    arch = MistralConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    params = MistralModel(arch).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    save_mistral(root / "base", arch, nn.unbox(params))
    return data, tok, root / "base"
