"""`star-jax recommend --run RUN_DIR --member ID [-k 10] [--variant NAME]`: a member's top-k jobs.

Scores every stored job against the member, as the report scores a variant
(`report.variant_embeddings`): the dot product of the GNN embeddings for `gnn_*` variants, the
cosine of the tower embeddings for `llm_*`. The pipeline embeds every member, so a cold-start
member (no applies in the training period) gets recommendations like any other. Jobs the member
already applied to (the apply edges) are left out unless `--include-applied`. Each job is shown
by the first line of its text (the synthetic postings' "Title at Company").
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

from star_jax.errors import StarError
from star_jax.eval.runs import VARIANTS, Run, read_run

DEFAULT_VARIANT = "gnn_id_cat_llm"  # STAR: ID + categorical + LLM features


class Recommendation(NamedTuple):
    job_id: int
    score: float
    title: str


def first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


def recommend(run: Run, member_id: int, k: int = 10, variant: str = DEFAULT_VARIANT,
              *, include_applied: bool = False) -> tuple[list[Recommendation], int]:
    """The top-`k` jobs for `member_id` and the member's number of training-period applies."""
    from star_jax.data.loader import NodeTexts
    from star_jax.data.tables import read_edges
    from star_jax.eval.report import uses_cosine, variant_embeddings
    from star_jax.store import EmbeddingStore

    if variant not in VARIANTS:
        raise StarError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if k < 1:
        raise StarError(f"-k: must be >= 1, got {k}")
    where = run.store_version(variant)
    if where is None:
        raise StarError(f"--variant {variant}: {run.paths.root} has no {variant} embeddings "
                        f"(built: {', '.join(v for v in VARIANTS if run.store_version(v)) or 'none'})")
    store = EmbeddingStore.open(where[0], where[1], kvstore=run.cfg.store.kvstore)
    members = store.ids("member")
    if not np.isin(member_id, members):
        raise StarError(f"--member {member_id}: unknown member id (ids run from {int(members.min())} "
                        f"to {int(members.max())} in {run.paths.data})")
    cosine = uses_cosine(variant)
    jobs = store.ids("job")
    m = variant_embeddings(store, "member", np.array([member_id], np.int64), cosine)[0]
    scores = variant_embeddings(store, "job", jobs, cosine) @ m
    data, relation = run.paths.data, run.cfg.sampler.target_relation
    edges = read_edges(data, relation, ["src", "dst"])
    applied = edges.loc[edges["src"] == member_id, "dst"].to_numpy()
    applies = len(applied)
    if not include_applied and applies:
        scores[np.isin(jobs, applied)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    titles = NodeTexts(data, "job").lookup(jobs[top])
    recs = [Recommendation(int(jobs[i]), float(scores[i]), first_line(t)) for i, t in zip(top, titles)]
    return recs, applies


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the --out directory of `star-jax pipeline`")
    parser.add_argument("--member", required=True, type=int, help="member id")
    parser.add_argument("-k", type=int, default=10, help="how many jobs (default 10)")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=list(VARIANTS),
                        help=f"whose embeddings rank the jobs (default {DEFAULT_VARIANT})")
    parser.add_argument("--include-applied", action="store_true",
                        help="also rank jobs the member already applied to")


def main(args: argparse.Namespace) -> int:
    run = read_run(args.run)
    recs, applies = recommend(run, args.member, args.k, args.variant, include_applied=args.include_applied)
    how = "cosine of tower embeddings" if args.variant.startswith("llm_") else "dot product of GNN embeddings"
    status = "cold start: no training applies" if applies == 0 else f"{applies} training applies, not ranked"
    if args.include_applied and applies:
        status = f"{applies} training applies, ranked too"
    print(f"member {args.member} ({status}): top {len(recs)} jobs by {args.variant} ({how})")
    print(f"{'rank':>4}  {'job':>8}  {'score':>8}  title")
    for i, r in enumerate(recs, 1):
        print(f"{i:>4}  {r.job_id:>8}  {r.score:>8.4f}  {r.title}")
    return 0
