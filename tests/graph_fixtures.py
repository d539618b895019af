"""A small hand-made data directory for the graph and sampler tests.

Ids are unsorted and non-contiguous; member 777 and job 2002 have no edges at all; member 3 is
cold-start (skills, no applies); some applies are repeated (the sampler must exclude every copy
of a training pair's edge); member_skill carries weights; categorical columns have nulls and
empty strings.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from star_jax.config import StoreConfig
from star_jax.data.schema import Schema, default_schema, write_schema
from star_jax.graph.hetero import build_graph
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

MEMBERS = [501, 17, 230, 42, 99, 8, 777, 3]
JOBS = [2005, 2001, 2003, 2000, 2004, 2002]
COMPANIES = [12, 10, 11]
SKILLS = [104, 100, 102, 101, 105, 103]
TITLES = [201, 200, 202]

# member_applied: (member, job, timestamp); repeats on purpose.
APPLIES = [
    (501, 2005, 10), (501, 2005, 11), (501, 2005, 12), (501, 2001, 13),
    (17, 2001, 14), (17, 2001, 15), (17, 2003, 16),
    (230, 2005, 17), (230, 2000, 18),
    (42, 2003, 19), (42, 2005, 20),
    (99, 2004, 21), (8, 2005, 22), (8, 2000, 23),
]
MEMBER_SKILL = [  # (member, skill, weight); skill 100 is a hub
    (501, 100, 1.0), (501, 101, 2.0), (501, 102, 7.0),
    (17, 100, 0.5), (17, 103, 1.5),
    (230, 100, 3.0), (230, 104, 1.0),
    (42, 100, 1.0), (99, 100, 2.0), (99, 105, 1.0), (8, 101, 1.0),
    (3, 100, 1.0), (3, 102, 4.0),
]
MEMBER_TITLE = [(501, 200), (17, 201), (230, 200), (42, 202), (99, 200), (8, 201), (3, 202)]
MEMBER_COMPANY = [(501, 10), (17, 11), (230, 10), (42, 12), (99, 10), (8, 11), (3, 12)]
JOB_SKILL = [(2005, 100), (2005, 101), (2001, 103), (2003, 100), (2003, 102), (2000, 104), (2004, 105),
             (2004, 100)]
JOB_TITLE = [(2005, 200), (2001, 201), (2003, 202), (2000, 200), (2004, 201)]
JOB_COMPANY = [(2005, 10), (2001, 10), (2003, 11), (2000, 12), (2004, 12)]

EDGES = {
    "member_skill": MEMBER_SKILL,
    "member_title": MEMBER_TITLE,
    "member_company": MEMBER_COMPANY,
    "job_skill": JOB_SKILL,
    "job_title": JOB_TITLE,
    "job_company": JOB_COMPANY,
    "member_applied": APPLIES,
}

TRAIN_PAIRS = sorted({(m, j) for m, j, _ in APPLIES})
VAL_PAIRS = [(501, 2003, 1), (3, 2005, 1), (777, 2001, 0), (17, 2002, 0), (230, 2004, 1)]
TEST_PAIRS = [(42, 2000, 1), (8, 2004, 0)]


def schema() -> Schema:
    s = default_schema()
    rels = dict(s.relations)
    rels["member_skill"] = dataclasses.replace(rels["member_skill"], weight=True)
    return dataclasses.replace(s, relations=rels)


def _write(path: str, columns: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_data_dir(root: str | os.PathLike, *, applies: list | None = None) -> str:
    """Write the fixture tables under `root`; returns the data directory."""
    root = os.fspath(root)
    sch = schema()
    write_schema(root, sch)
    n_m, n_j = len(MEMBERS), len(JOBS)
    seniority = ["senior", None, "junior", "", "senior", "mid", "junior", None]
    _write(os.path.join(root, sch.node_types["member"].table), {
        "id": pa.array(MEMBERS, pa.int64()),
        "text": [f"member {i}" for i in MEMBERS],
        "seniority": pa.array(seniority, pa.string()),
        "location": ["paris", "berlin", "paris", "rome", "berlin", "paris", "rome", "rome"],
        "industry": ["it"] * n_m,
    })
    _write(os.path.join(root, sch.node_types["job"].table), {
        "id": pa.array(JOBS, pa.int64()),
        "text": [f"job {i}" for i in JOBS],
        "seniority": ["mid", "senior", None, "junior", "mid", "senior"],
        "location": ["paris"] * n_j,
        "industry": ["it", "finance", "it", "it", "retail", "it"],
    })
    _write(os.path.join(root, sch.node_types["company"].table), {
        "id": pa.array(COMPANIES, pa.int64()), "industry": ["it", "finance", "it"], "size": ["s", "m", None],
    })
    _write(os.path.join(root, sch.node_types["skill"].table), {"id": pa.array(SKILLS, pa.int64())})
    _write(os.path.join(root, sch.node_types["title"].table), {
        "id": pa.array(TITLES, pa.int64()), "seniority": ["senior", "junior", "mid"],
    })
    edges = dict(EDGES, member_applied=APPLIES if applies is None else applies)
    for name, rows in edges.items():
        spec = sch.relations[name]
        cols = {"src": pa.array([r[0] for r in rows], pa.int64()),
                "dst": pa.array([r[1] for r in rows], pa.int64())}
        if spec.weight:
            cols["weight"] = pa.array([r[2] for r in rows], pa.float32())
        if spec.timestamp:
            cols["timestamp"] = pa.array([r[2] for r in rows], pa.int64())
        _write(os.path.join(root, spec.table), cols)
    pairs = ([(m, j, 1, "train") for m, j in TRAIN_PAIRS] + [(m, j, y, "val") for m, j, y in VAL_PAIRS]
             + [(m, j, y, "test") for m, j, y in TEST_PAIRS])
    _write(os.path.join(root, sch.labels), {
        "member_id": pa.array([p[0] for p in pairs], pa.int64()),
        "job_id": pa.array([p[1] for p in pairs], pa.int64()),
        "label": pa.array([p[2] for p in pairs], pa.int8()),
        "timestamp": pa.array(np.arange(len(pairs)), pa.int64()),
        "split": [p[3] for p in pairs],
    })
    return root


def edge_set(relation: str) -> list[tuple]:
    """(src id, dst id[, weight]) of a relation, reverses swapped, as stored in the tables."""
    base = relation.removesuffix("_rev")
    rows = EDGES[base]
    weighted = base == "member_skill"
    out = [(r[0], r[1], r[2]) if weighted else (r[0], r[1]) for r in rows]
    if relation.endswith("_rev"):
        out = [(r[1], r[0], *r[2:]) for r in out]
    return out


class FakeFeatures:
    """A feature source whose embedding of id i is [i, -i, 0.5]; records every lookup."""

    dim = 3

    def __init__(self):
        self.calls: list[tuple[str, np.ndarray]] = []

    def lookup(self, node_type: str, ids: np.ndarray) -> np.ndarray:
        assert node_type in ("member", "job"), node_type
        self.calls.append((node_type, np.array(ids)))
        ids = np.asarray(ids, np.float32)
        return np.stack([ids, -ids, np.full_like(ids, 0.5)], axis=1)


def write_random_features(root: str, graph, dim: int) -> None:
    """A random LLM-feature version `v1` for every member and job of `graph`, through the writer API."""
    spec = EmbeddingSpec(model="random", adapter=None, tokenizer="none", max_len=0, pooling="none", dim=dim)
    vectors = {t: np.random.default_rng(i).normal(size=(graph.num_nodes(t), dim)).astype(np.float32)
               for i, t in enumerate(("member", "job"))}
    inputs = {t: (graph.ids[t], text_hash(f"{t} {i}" for i in graph.ids[t])) for t in vectors}
    writer = EmbeddingWriter.open(root, "v1", spec, inputs, StoreConfig(dtype="float32"))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][block.positions])
    writer.publish()


@dataclasses.dataclass
class GraphEnv:
    """A data directory, its graph and a random LLM-feature store under one root."""

    root: Path
    data: str
    graph_dir: str
    features: str  # the store root; version `v1`
    graph: object  # HeteroGraph


def graph_env(root: Path, llm_dim: int) -> GraphEnv:
    """`write_data_dir` under root/data, its graph in root/graph, `v1` features in root/features."""
    data = write_data_dir(root / "data")
    graph = build_graph(data, root / "graph")
    write_random_features(str(root / "features"), graph, llm_dim)
    return GraphEnv(root, str(data), str(root / "graph"), str(root / "features"), graph)
