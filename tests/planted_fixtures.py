"""A small marketplace with two planted signals, for tests/test_gnn_planted.py: skill-tag overlap
and a hidden taste cluster.

Every member and job belongs to one of `CLUSTERS` taste clusters that no attribute, tag or text
states; only who applied where reveals it. Apply odds rise with the number of skill tags a member
shares with a job and, more, when the two share a cluster. A regression on tags sees the overlap
but not the cluster; a GNN over the apply graph can learn both. Each member has 16 impressions,
one a day: the first 9 are train (their applies are the graph's apply edges), then 3 val, then
test, all of warm members. Titles, companies and categoricals are random.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from star_jax.data.schema import default_schema, write_schema

CLUSTERS = 4
SKILLS = 24
T0 = 1_700_000_000
DAY = 86_400


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _edges(root: Path, table: str, src: np.ndarray, dst: np.ndarray, ts: np.ndarray | None = None) -> None:
    cols = {"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())}
    if ts is not None:
        cols["timestamp"] = pa.array(ts, pa.int64())
    _write(root / table, pa.table(cols))


def write_planted_data(root: str | os.PathLike, *, members: int = 240, jobs: int = 80, seed: int = 0,
                       cluster_weight: float = 3.0, overlap_weight: float = 1.5) -> Path:
    """Write the data directory under `root` and return its path."""
    rng = np.random.default_rng(seed)
    root, schema = Path(root), default_schema()
    m_cluster, j_cluster = rng.integers(0, CLUSTERS, members), rng.integers(0, CLUSTERS, jobs)
    m_skills = np.stack([rng.choice(SKILLS, 3, replace=False) for _ in range(members)])
    j_skills = np.stack([rng.choice(SKILLS, 3, replace=False) for _ in range(jobs)])
    values = {"seniority": ["junior", "mid", "senior"], "location": ["london", "paris"],
              "industry": ["tech", "health"], "size": ["small", "large"]}
    sizes = {"member": members, "job": jobs, "company": 5, "skill": SKILLS, "title": 6}
    for t, spec in schema.node_types.items():
        cols = {"id": pa.array(np.arange(sizes[t], dtype=np.int64))}
        if spec.text:
            cols["text"] = pa.array([f"{t} {i}" for i in range(sizes[t])])
        for c in spec.categorical:
            cols[c] = pa.array(rng.choice(values[c], sizes[t]).tolist())
        _write(root / spec.table, pa.table(cols))
    _edges(root, "edges/member_skill.parquet", np.repeat(np.arange(members), 3), m_skills.ravel())
    _edges(root, "edges/job_skill.parquet", np.repeat(np.arange(jobs), 3), j_skills.ravel())
    for t, n in (("member", members), ("job", jobs)):
        _edges(root, f"edges/{t}_title.parquet", np.arange(n), rng.integers(0, sizes["title"], n))
        _edges(root, f"edges/{t}_company.parquet", np.arange(n), rng.integers(0, sizes["company"], n))

    # Impressions: 16 per member, half of them from the member's own cluster (a recommender's taste).
    per = 16
    m = np.repeat(np.arange(members), per)
    own = rng.random(m.size) < 0.5
    pools = [np.flatnonzero(j_cluster == c) for c in range(CLUSTERS)]
    j = np.where(own, [rng.choice(pools[c]) for c in m_cluster[m]], rng.integers(0, jobs, m.size))
    df = pd.DataFrame({"member_id": m, "job_id": j}).drop_duplicates(ignore_index=True)
    m, j = df.member_id.to_numpy(), df.job_id.to_numpy()
    overlap = (m_skills[m][:, :, None] == j_skills[j][:, None, :]).sum((1, 2))
    logit = -3.0 + cluster_weight * (m_cluster[m] == j_cluster[j]) + overlap_weight * overlap
    label = (rng.random(m.size) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    # A member's k-th impression is on day k: days 0-8 train, 9-11 val, the rest test.
    rank = df.groupby("member_id").cumcount().to_numpy()
    split = np.where(rank < 9, "train", np.where(rank < 12, "val", "test"))
    ts = T0 + rank * DAY + m
    labels = pa.table({"member_id": pa.array(m, pa.int64()), "job_id": pa.array(j, pa.int64()),
                       "label": pa.array(label, pa.int8()), "timestamp": pa.array(ts, pa.int64()),
                       "split": pa.array(split.tolist(), pa.string())})
    _write(root / schema.labels, labels)
    applied = (split == "train") & (label == 1)
    _edges(root, "edges/member_applied.parquet", m[applied], j[applied], ts[applied])
    write_schema(root, schema)
    return root
