"""`star-jax pipeline`: every stage in order, each skipped while its inputs, config and code are
unchanged; rerun the same command to resume after a kill.

    star-jax pipeline --config configs/tiny.yaml --out RUN_DIR [--set k=v ...] [--redo STAGE ...] [--plan]

stages.py wires the stages, stamps.py decides which run, seeds.py and repro.py sweep data seeds.
"""

from __future__ import annotations

import argparse

from star_jax.config import add_config_args, config_from_args
from star_jax.eval.runs import (
    GNN_VARIANTS,
    LLM_VARIANTS,
    PAPER_AUC,
    VARIANTS,
    Run,
    RunPaths,
    read_run,
    run_paths,
)
from star_jax.pipeline.stages import Pipeline, plan, run_pipeline
from star_jax.pipeline.stamps import DigestCache, Runner, StageRecord
from star_jax.tracking import is_lead

__all__ = ["GNN_VARIANTS", "LLM_VARIANTS", "PAPER_AUC", "VARIANTS", "DigestCache", "Pipeline", "Run",
           "RunPaths", "Runner", "StageRecord", "add_arguments", "main", "plan", "read_run", "run_paths",
           "run_pipeline"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory (created; rerun it to resume or skip)")
    parser.add_argument("--redo", action="append", default=[], metavar="STAGE",
                        help="run STAGE and every stage downstream of it even if up to date; a stage name "
                             "from RUN_DIR/stamps (train-gnn-gnn_id_cat) or a family (train-gnn); repeatable")
    parser.add_argument("--plan", action="store_true",
                        help="print the stages this run would go through and who runs each; run nothing")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from star_jax.eval.report import REPORT_JSON, table_markdown
    from star_jax.fileio import read_json

    cfg = config_from_args(args)
    if args.plan:
        # One stage a line, `STAGE every` or `STAGE lead`: launch/gpu_pod.sh --dry-run reads it.
        print("\n".join(f"{name} {'every' if every else 'lead'}" for name, every in plan(cfg)))
        return 0
    result = run_pipeline(cfg, args.out, redo=tuple(args.redo))
    if is_lead():
        print()
        print(table_markdown(read_json(Path(result["report"]).parent / REPORT_JSON)))
    return 0
