"""A small marketplace with a planted pairing, for the claim tests (tests/test_claims.py).

Every member and job belongs to one of `CLUSTERS` hidden clusters; a pair is positive exactly when
both are in the same cluster. The text of a member names its cluster with words from a member-only
vocabulary, a job with words from a job-only vocabulary (plus shared filler), so an untrained
bi-encoder has no reason to match them. Warm members apply to jobs of their cluster (the train
positives, balanced so every job has the same number of applicants); the val and test pairs are
with cold-start members (no applies), half of them positive. Categoricals and the skill, title and
company edges are random: nothing but the texts, and the stored features of `write_cluster_features`,
says which cluster a cold member is in. With `warm_eval` the val and test pairs are with warm members
instead, whose applies say their cluster too.

Every node has at most `MAX_DEGREE` neighbours per relation, so a one-hop sampler with that fan-out
(and `sampler.distinct`) takes whole neighbourhoods: a node's embedding does not depend on its batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from star_jax.config import StoreConfig
from star_jax.data.schema import default_schema, write_schema
from star_jax.store import EmbeddingSpec, EmbeddingWriter, text_hash

CLUSTERS = 4
MAX_DEGREE = 4  # applicants per job; applies, skills, titles, companies per node are fewer
FILLER = "team work role office remote city senior junior lead data cloud product".split()
# Made-up words, one set per (side, cluster): BPE keeps them apart, no word is shared.
SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "vo", "ze", "ba", "do", "fu", "gi", "ho", "ju"]
DAY = 86_400
T0 = 1_700_000_000


def cluster_words(side: int, cluster: int) -> list[str]:
    """Three words of `side` (0 member, 1 job) for `cluster`."""
    first = SYLLABLES[(4 * side + cluster) % 16]
    return [first + SYLLABLES[(3 * k + 7 * side + cluster) % 16] + "x" * (side + 1) for k in range(3)]


def _text(rng: np.random.Generator, side: int, cluster: int, filler: int) -> str:
    words = list(rng.choice(cluster_words(side, cluster), 2)) + list(rng.choice(FILLER, filler))
    rng.shuffle(words)
    return ("member: " if side == 0 else "job: ") + " ".join(words)


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_planted_data(root: str | os.PathLike, *, seed: int, warm: int = 64, cold: int = 32, jobs: int = 32,
                       pairs_per_cold: int = 4, filler: int = 4, warm_eval: bool = False,
                       group: int = 1) -> Path:
    """Write the data directory under `root`; returns its path. Member ids 0..warm-1 are warm, the
    next `cold` are cold (the first half in val pairs, the second half in test pairs). `warm_eval`:
    the val and test pairs are with warm members instead (the first half of them in val, the second
    in test): jobs of its cluster it did not apply to, and jobs of other clusters it was not shown
    in train; with `group` g > 1, of the other clusters of its group (clusters 0..g-1 form one
    group, g..2g-1 the next, ...; `write_cluster_features`'s `member_group`)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    schema = default_schema()
    n_members = warm + cold
    member_cluster = rng.permutation(np.arange(n_members) % CLUSTERS)
    member_cluster[:warm] = np.arange(warm) % CLUSTERS  # balanced among warm members
    job_cluster = rng.permutation(np.arange(jobs) % CLUSTERS)
    clusters = {"member": member_cluster, "job": job_cluster}
    sizes = {"member": n_members, "job": jobs, "company": 6, "skill": 12, "title": 5}
    cats = ["a", "b", "c"]
    for node_type, spec in schema.node_types.items():
        n = sizes[node_type]
        cols = {"id": pa.array(np.arange(n, dtype=np.int64))}
        if spec.text:
            side = 0 if node_type == "member" else 1
            cols["text"] = pa.array([_text(rng, side, int(c), filler) for c in clusters[node_type]])
        for c in spec.categorical:
            cols[c] = pa.array(rng.choice(cats, size=n).tolist())
        _write(root / spec.table, pa.table(cols))

    # Attribute edges: random, one title and company per node, two skills.
    for spec in schema.relations.values():
        if spec.kind == "interaction":
            continue
        n_src = sizes[spec.src]
        per = 2 if spec.dst == "skill" else 1
        src = np.repeat(np.arange(n_src), per)
        dst = np.concatenate([rng.choice(sizes[spec.dst], per, replace=False) for _ in range(n_src)])
        _write(root / spec.table, pa.table({"src": pa.array(src, pa.int64()),
                                            "dst": pa.array(dst, pa.int64())}))

    # Applies: warm member k of a cluster applies to jobs k and k + 1 (mod the cluster's jobs), so
    # each job has 2 * warm / jobs applicants (MAX_DEGREE at the defaults).
    applies = []
    for c in range(CLUSTERS):
        members_c = np.flatnonzero(member_cluster[:warm] == c)
        jobs_c = np.flatnonzero(job_cluster == c)
        for k, m in enumerate(members_c):
            applies += [(int(m), int(jobs_c[k % len(jobs_c)])), (int(m), int(jobs_c[(k + 1) % len(jobs_c)]))]
    times = T0 + np.arange(len(applies)) * 60
    _write(root / schema.relations["member_applied"].table, pa.table({
        "src": pa.array([m for m, _ in applies], pa.int64()),
        "dst": pa.array([j for _, j in applies], pa.int64()),
        "timestamp": pa.array(times, pa.int64())}))

    # Labels: the applies (train positives), one other-cluster job per warm member (train
    # negatives), then per cold member (per warm member with `warm_eval`) `pairs_per_cold` jobs,
    # half of its cluster.
    rows = [(m, j, 1, int(t), "train") for (m, j), t in zip(applies, times)]
    t_end = int(times[-1])
    shown = {}
    for m in range(warm):
        shown[m] = j = int(rng.choice(np.flatnonzero(job_cluster != member_cluster[m])))
        rows.append((m, j, 0, t_end, "train"))
    for k, m in enumerate(range(warm) if warm_eval else []):
        split, start = ("val", t_end + DAY) if k < warm // 2 else ("test", t_end + 2 * DAY)
        half, c = pairs_per_cold // 2, member_cluster[m]
        unapplied = [j for j in np.flatnonzero(job_cluster == c) if (m, j) not in applies]
        same = rng.choice(unapplied, half, replace=False)
        rivals = (job_cluster != c) & ((job_cluster // group == c // group) | (group == 1))
        other = rng.choice([j for j in np.flatnonzero(rivals) if j != shown[m]], half, replace=False)
        rows += [(m, int(j), int(y), start + k, split) for y, js in ((1, same), (0, other)) for j in js]
    for k, m in enumerate([] if warm_eval else range(warm, n_members)):
        split, start = ("val", t_end + DAY) if k < cold // 2 else ("test", t_end + 2 * DAY)
        half = pairs_per_cold // 2
        same = rng.choice(np.flatnonzero(job_cluster == member_cluster[m]), half, replace=False)
        other = rng.choice(np.flatnonzero(job_cluster != member_cluster[m]), half, replace=False)
        rows += [(m, int(j), int(y), start + k, split) for y, js in ((1, same), (0, other)) for j in js]
    m, j, y, t, s = zip(*rows)
    _write(root / schema.labels, pa.table({
        "member_id": pa.array(m, pa.int64()), "job_id": pa.array(j, pa.int64()),
        "label": pa.array(y, pa.int8()), "timestamp": pa.array(t, pa.int64()),
        "split": pa.array(s, pa.string())}))
    write_schema(root, schema)
    np.savez(root / "clusters.npz", member=member_cluster, job=job_cluster)  # not part of the format
    return root


def write_cluster_features(data_dir: str | os.PathLike, store_root: str | os.PathLike, version: str, *,
                           seed: int, dim: int = 8, noise: float = 0.3, member_group: int = 1) -> None:
    """Store `version`: each member's and job's vector is its cluster's centroid plus noise. With
    `member_group` g > 1 a member's centroid is the mean of its group's (clusters 0..g-1 form one
    group, g..2g-1 the next, ...): its vector says its group, not which cluster of the group."""
    clusters = np.load(Path(data_dir) / "clusters.npz")
    rng = np.random.default_rng([seed, 7])
    centroids = rng.normal(size=(CLUSTERS, dim)).astype(np.float32)
    groups = np.stack([centroids[k - k % member_group:][:member_group].mean(0) for k in range(CLUSTERS)])
    spec = EmbeddingSpec(model="planted", adapter=None, tokenizer="none", max_len=0, pooling="none", dim=dim)
    inputs, vectors = {}, {}
    for t in ("member", "job"):
        c = clusters[t]
        ids = np.arange(len(c), dtype=np.int64)
        inputs[t] = (ids, text_hash(f"{t} {i}" for i in ids))
        mean = groups if t == "member" else centroids
        vectors[t] = (mean[c] + noise * rng.normal(size=(len(c), dim))).astype(np.float32)
    writer = EmbeddingWriter.open(os.fspath(store_root), version, spec, inputs, StoreConfig(dtype="float32"))
    for t in writer.node_types:
        for block in writer.pending_blocks(t):
            writer.write(t, block.rows, vectors[t][block.positions])
    writer.publish()


def tiny_towers(root: str | os.PathLike, data: str | os.PathLike):
    """A BPE tokenizer and a random-init one-layer Mistral for the planted data under `root`
    (root/tok, root/base), and a Config whose towers read 16 tokens through rank-4 LoRA."""
    from hf_fixtures import build_checkpoint

    from star_jax.config import Config, LoraConfig, TokenizerConfig
    from star_jax.data.tokenizer import train_tokenizer

    root = Path(root)
    tok = train_tokenizer(data, root / "tok", TokenizerConfig(vocab_size=400))
    build_checkpoint(root / "base", vocab_size=512, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    cfg = Config()
    cfg.llm.instruction, cfg.llm.buckets = "Query: ", []
    cfg.llm.member_max_len = cfg.llm.job_max_len = 16
    cfg.lora = LoraConfig(rank=4)
    return tok, cfg
