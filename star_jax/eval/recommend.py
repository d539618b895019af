"""`star-jax recommend --run RUN_DIR (--member ID | --all --out FILE) [-k 10] [--variant NAME]`.

Scores jobs for a member as the report scores a variant (`report.variant_embeddings`): the dot
product of the GNN embeddings for `gnn_*` variants, the cosine of the tower embeddings for `llm_*`.
With an index built by `star-jax index build` the top-k come from it (`--nprobe` overrides an IVF
index's lists searched), else (or with `--exact`) from every stored job. The pipeline embeds every
member, so a cold-start member gets recommendations like any other. Jobs the member already applied
to (the apply edges) are left out unless `--include-applied`. `--all` writes every member's top-k as
Parquet (ALL_SCHEMA).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from star_jax.data.loader import NodeTexts
from star_jax.data.tables import read_edges
from star_jax.errors import StarError
from star_jax.eval.index import load_index, read_meta, search, variant_store
from star_jax.eval.report import uses_cosine, variant_embeddings
from star_jax.eval.runs import VARIANTS, Run, read_run
from star_jax.tracking import progress

DEFAULT_VARIANT = "gnn_id_cat_llm"  # STAR: ID + categorical + LLM features
BATCH = 1024  # members scored per batch by --all


class Recommendation(NamedTuple):
    job_id: int
    score: float
    title: str


class Scorer(NamedTuple):
    """A variant's jobs, ready to rank: through its index, or by brute force over `jobs`."""

    store: object  # EmbeddingStore of the variant's version
    cosine: bool
    job_ids: np.ndarray  # int64 [n]: stored job ids, ascending
    jobs: np.ndarray | None  # float32 [n, d]: their vectors (None when an index ranks)
    index: object | None  # index.JobIndex, or None: exact


def first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


def open_scorer(run: Run, variant: str, *, exact: bool = False, nprobe: int | None = None) -> Scorer:
    store = variant_store(run, variant)
    cosine = uses_cosine(variant)
    jobs = store.ids("job")
    check_search(exact, nprobe)
    index = None if exact else load_index(run, variant, store.manifest, nprobe=nprobe)
    vectors = variant_embeddings(store, "job", jobs, cosine) if index is None else None
    return Scorer(store, cosine, jobs, vectors, index)


def check_search(exact: bool, nprobe: int | None) -> None:
    if nprobe is not None and nprobe < 1:
        raise StarError(f"--nprobe: must be >= 1, got {nprobe}")
    if nprobe is not None and exact:
        raise StarError("--nprobe: sets the index's search; not with --exact")


def top_k(scorer: Scorer, queries: np.ndarray, k: int,
          exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's best `k` jobs not in its `exclude` ids: (int64 [q, k] job ids, float32 [q, k]
    scores, int64 [q] how many of the k are real; rows past that are padding)."""
    q = len(queries)
    out_ids, out_scores = np.zeros((q, k), np.int64), np.zeros((q, k), np.float32)
    found = np.zeros(q, np.int64)
    if scorer.index is None:
        scores = queries @ scorer.jobs.T
        for i, ex in enumerate(exclude):
            pos = np.searchsorted(scorer.job_ids, ex)
            ok = pos < len(scorer.job_ids)
            ok[ok] = scorer.job_ids[pos[ok]] == ex[ok]
            scores[i, pos[ok]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < scores.shape[1] else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        for i in range(q):
            cand = part[i][np.isfinite(scores[i, part[i]])]
            cand = cand[np.lexsort((cand, -scores[i, cand]))]  # by score, then job row: stable ties
            n = len(cand)
            out_ids[i, :n], out_scores[i, :n], found[i] = scorer.job_ids[cand], scores[i, cand], n
        return out_ids, out_scores, found
    extra = max((len(ex) for ex in exclude), default=0)  # over-fetch what filtering may remove
    scores, rows = search(scorer.index.index, queries, k + extra)
    ids = np.where(rows >= 0, scorer.index.job_ids[rows.clip(min=0)], -1)
    for i, ex in enumerate(exclude):
        keep = (rows[i] >= 0) & ~np.isin(ids[i], ex)
        n = min(k, int(keep.sum()))
        out_ids[i, :n], out_scores[i, :n], found[i] = ids[i][keep][:n], scores[i][keep][:n], n
    return out_ids, out_scores, found


def applied_by(run: Run, members: np.ndarray) -> list[np.ndarray]:
    """The jobs each of `members` applied to (the run's target-relation edges)."""
    edges = read_edges(run.paths.data, run.cfg.sampler.target_relation, ["src", "dst"])
    src, dst = edges["src"].to_numpy(np.int64), edges["dst"].to_numpy(np.int64)
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    lo, hi = np.searchsorted(src, members, "left"), np.searchsorted(src, members, "right")
    return [dst[a:b] for a, b in zip(lo, hi)]


def _member_rows(scorer: Scorer, member_ids: np.ndarray) -> np.ndarray:
    return variant_embeddings(scorer.store, "member", member_ids, scorer.cosine)


def recommend(run: Run, member_id: int, k: int = 10, variant: str = DEFAULT_VARIANT,
              *, include_applied: bool = False, exact: bool = False,
              nprobe: int | None = None) -> tuple[list[Recommendation], int]:
    """The top-`k` jobs for `member_id` and the member's number of training-period applies
    (`nprobe`: an IVF index's lists searched, instead of the build's)."""
    if k < 1:
        raise StarError(f"-k: must be >= 1, got {k}")
    scorer = open_scorer(run, variant, exact=exact, nprobe=nprobe)
    members = scorer.store.ids("member")
    if not np.isin(member_id, members):
        raise StarError(f"--member {member_id}: unknown member id (ids run from {int(members.min())} "
                        f"to {int(members.max())} in {run.paths.data})")
    applied = applied_by(run, np.array([member_id], np.int64))[0]
    exclude = [applied if not include_applied else applied[:0]]
    ids, scores, found = top_k(scorer, _member_rows(scorer, np.array([member_id], np.int64)), k, exclude)
    ids, scores = ids[0, :found[0]], scores[0, :found[0]]
    titles = NodeTexts(run.paths.data, "job").lookup(ids)
    recs = [Recommendation(int(j), float(s), first_line(t)) for j, s, t in zip(ids, scores, titles)]
    return recs, len(applied)


ALL_SCHEMA = (("member_id", "int64"), ("rank", "int32"), ("job_id", "int64"), ("score", "float32"))


def recommend_all(run: Run, out: str | os.PathLike, k: int = 10, variant: str = DEFAULT_VARIANT, *,
                  include_applied: bool = False, exact: bool = False, nprobe: int | None = None,
                  batch: int = BATCH) -> tuple[int, int]:
    """Every member's top-`k` jobs as Parquet at `out` (ALL_SCHEMA; rank 1 is best), written whole
    or not at all; (members, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if k < 1:
        raise StarError(f"-k: must be >= 1, got {k}")
    out = Path(out)
    scorer = open_scorer(run, variant, exact=exact, nprobe=nprobe)
    members = scorer.store.ids("member")
    schema = pa.schema([(name, getattr(pa, t)()) for name, t in ALL_SCHEMA])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    applied = applied_by(run, members) if not include_applied else [members[:0]] * len(members)
    if scorer.index is None:  # a [batch, jobs] float32 score matrix: keep it under 128 MiB
        batch = max(1, min(batch, (1 << 25) // max(len(scorer.job_ids), 1)))
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer, \
                progress(total=len(members), desc=f"recommend {variant}", unit="member") as bar:
            for lo in range(0, len(members), batch):
                ids = members[lo:lo + batch]
                jobs, scores, found = top_k(scorer, _member_rows(scorer, ids), k, applied[lo:lo + batch])
                keep = np.arange(jobs.shape[1])[None, :] < found[:, None]
                ranks = np.broadcast_to(np.arange(1, jobs.shape[1] + 1, dtype=np.int32), jobs.shape)
                table = pa.table({"member_id": np.repeat(ids, found), "rank": ranks[keep],
                                  "job_id": jobs[keep], "score": scores[keep]}, schema=schema)
                writer.write_table(table)
                rows += table.num_rows
                bar.update(len(ids))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(members), rows


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the --out directory of `star-jax pipeline`")
    parser.add_argument("--member", type=int, default=None, help="member id")
    parser.add_argument("--all", action="store_true", help="every member's top-k, written to --out")
    parser.add_argument("--out", dest="parquet", metavar="FILE", default=None,
                        help="with --all: the Parquet file (member_id int64, rank int32, job_id int64, "
                             "score float32)")
    parser.add_argument("-k", type=int, default=10, help="how many jobs (default 10)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=list(VARIANTS),
                        help=f"whose embeddings rank the jobs (default {DEFAULT_VARIANT})")
    parser.add_argument("--include-applied", action="store_true",
                        help="also rank jobs the member already applied to")
    parser.add_argument("--exact", action="store_true",
                        help="score every job even when the run has an index (`star-jax index build`)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="IVF index: lists searched per query, instead of the build's --nprobe "
                             "(more: higher recall, slower; its nlist: exact)")


def _how(run: Run, variant: str, exact: bool, nprobe: int | None) -> str:
    how = "cosine of tower embeddings" if variant.startswith("llm_") else "dot product of GNN embeddings"
    meta = None if exact else read_meta(run, variant)
    if meta is None:
        return f"{how}, exact"
    params = meta["params"]
    if params["kind"] == "ivf":
        probes = params["nprobe"] if nprobe is None else min(nprobe, params["nlist"])
        return f"{how}, ivf index, {probes} of {params['nlist']} lists probed"
    return f"{how}, {params['kind']} index"


def main(args: argparse.Namespace) -> int:
    if args.all == (args.member is not None):
        raise StarError("star-jax recommend: the following arguments are required: --member (or --all), "
                        "not both")
    if args.all and args.parquet is None:
        raise StarError("--out: required with --all")
    if not args.all and args.parquet is not None:
        raise StarError("--out: only with --all")
    if args.parquet is not None and os.path.isdir(args.parquet):
        raise StarError(f"--out {args.parquet}: is a directory; expected a Parquet file path")
    run = read_run(args.run)
    if args.all:
        members, rows = recommend_all(run, args.parquet, args.k, args.variant,
                                      include_applied=args.include_applied, exact=args.exact,
                                      nprobe=args.nprobe)
        print(f"wrote {rows} recommendations for {members} members by {args.variant} "
              f"({_how(run, args.variant, args.exact, args.nprobe)}) to {args.parquet}")
        return 0
    recs, applies = recommend(run, args.member, args.k, args.variant, include_applied=args.include_applied,
                              exact=args.exact, nprobe=args.nprobe)
    status = "cold start: no training applies" if applies == 0 else f"{applies} training applies, not ranked"
    if args.include_applied and applies:
        status = f"{applies} training applies, ranked too"
    print(f"member {args.member} ({status}): top {len(recs)} jobs by {args.variant} "
          f"({_how(run, args.variant, args.exact, args.nprobe)})")
    print(f"{'rank':>4}  {'job':>8}  {'score':>8}  title")
    for i, r in enumerate(recs, 1):
        print(f"{i:>4}  {r.job_id:>8}  {r.score:>8.4f}  {r.title}")
    return 0
