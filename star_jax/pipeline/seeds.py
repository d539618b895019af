"""The demo over several synthetic-data seeds: do the paper's orderings hold, or did one seed get lucky?

    python -m star_jax.pipeline.seeds --config configs/tiny.yaml --out runs/seeds --seeds 0 1 2 3 \\
        [--doc docs/seeds.md] [--set key=value ...]

Each seed S is one pipeline run in `OUT/seed<S>` with `--set data.seed=S` (resumable, finished
seeds skipped). The summary tabulates each seed's AUCs and verdicts; `pipeline.repro` pools them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from star_jax.config import VARIANTS, Config
from star_jax.errors import StarError
from star_jax.fileio import atomic_write_text, read_json
from star_jax.pipeline.stages import run_pipeline
from star_jax.tracking import log_to_stderr

log = logging.getLogger(__name__)


def seed_config(cfg: Config, seed: int) -> Config:
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=seed))


def run_seeds(cfg: Config, out: str | Path, seeds: Sequence[int]) -> dict[int, dict]:
    """Run (or resume, or skip) the pipeline for each data seed; returns each seed's report.json."""
    from star_jax.eval.report import REPORT_JSON

    if cfg.data.dir:
        raise StarError("data.dir: set; the seed sweep varies the synthetic data, so leave data.dir null")
    reports = {}
    for seed in seeds:
        log.info(f"seeds: data.seed={seed}")
        result = run_pipeline(seed_config(cfg, seed), Path(out) / f"seed{seed}")
        reports[seed] = read_json(Path(result["report"]).parent / REPORT_JSON)
    return reports


def checks(report: dict) -> dict[str, str]:
    """Each check id of one report -> its verdict word (holds, fails, unresolved or n/a)."""
    return {c["id"]: c["verdict"] for c in report["checks"]}


def _auc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _mark(word: str | None) -> str:
    return "n/a" if word is None else "**fails**" if word == "fails" else word


def auc_table(reports: dict[int, dict], key: str, baselines: Sequence[str] = ()) -> list[str]:
    """Markdown rows: one per seed, the `key` AUC of every variant any seed has, then of each of
    `baselines` (report.json's baseline keys) that any seed has."""
    seeds = sorted(reports)
    names = [n for n in VARIANTS if any(n in reports[s]["variants"] for s in seeds)]
    bases = [b for b in baselines if any(b in reports[s].get("baselines", {}) for s in seeds)]
    out = ["| seed | " + " | ".join(names + [f"baseline {b}" for b in bases]) + " |",
           "|---|" + "---|" * (len(names) + len(bases))]
    for s in seeds:
        v, b = reports[s]["variants"], reports[s].get("baselines", {})
        cells = [_auc(v.get(n, {}).get(key)) for n in names] + [_auc(b.get(x, {}).get(key)) for x in bases]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return out


def seeds_markdown(reports: dict[int, dict], command: str) -> str:
    """docs/seeds.md: AUC tables over seeds and the checks' verdicts on each."""
    from star_jax.eval.report import CHECKS

    seeds = sorted(reports)
    out = ["# The demo over several data seeds", "",
           "Each row is one full run of the demo pipeline on synthetic data drawn with another "
           "`data.seed`; every other setting is `configs/tiny.yaml`'s. Produced by:", "",
           "```", command, "```", ""]
    for title, key in (("Test AUC", "auc"), ("Cold-start test AUC (members with no training applies)",
                                              "auc_cold_start")):
        out += [f"## {title}", "", *auc_table(reports, key), ""]

    def gap(s: int, key: str, a: str, b: str) -> str:
        v = reports[s]["variants"]
        x, y = v.get(a, {}).get(key), v.get(b, {}).get(key)
        return "n/a" if x is None or y is None else f"{x - y:+.4f}"

    def interval(s: int) -> str:
        found = [c for c in reports[s]["checks"] if c["id"] == "cold_start_gain" and c["low"] is not None]
        return "n/a" if not found else "[{low:+.4f}, {high:+.4f}]".format(**found[0])

    out += ["## Gaps", "",
            "Last column but one: the 95% bootstrap interval, over test members, of the cold-start gap "
            "minus the overall gap (`star_jax.metrics.subset_gap_interval`); an interval that "
            "spans zero means this test set cannot tell the two gaps apart.", "",
            "| seed | finetuned - frozen | id_cat_llm - id_cat | same, cold start | cold - overall, 95% "
            "interval | pipeline wall s |",
            "|---|---|---|---|---|---|"]
    for s in seeds:
        wall = sum(st["seconds"] for st in reports[s]["stages"])
        out.append(f"| {s} | {gap(s, 'auc', 'llm_finetuned', 'llm_frozen')} | "
                   f"{gap(s, 'auc', 'gnn_id_cat_llm', 'gnn_id_cat')} | "
                   f"{gap(s, 'auc_cold_start', 'gnn_id_cat_llm', 'gnn_id_cat')} | {interval(s)} | "
                   f"{wall:.0f} |")
    per_seed = {s: checks(reports[s]) for s in seeds}
    out += ["", "## Checks (verdicts on each seed's 95% member-bootstrap interval)", "",
            "| check | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for c, (title, *_) in CHECKS.items():
        out.append(f"| {title} | " + " | ".join(_mark(per_seed[s].get(c)) for s in seeds) + " |")
    failed = [(s, CHECKS[c][0]) for s in seeds for c, word in per_seed[s].items() if word == "fails"]
    out += ["", "No check fails on any seed." if not failed else
            "Failed: " + "; ".join(f"seed {s}: {c}" for s, c in failed) + ".", ""]
    return "\n".join(out)


def _relative(argv: list[str]) -> list[str]:
    """`argv` with absolute paths relative to the working directory: the summary names no machine's
    directories."""
    def rel(a: str) -> str:
        flag, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        return flag + eq + (os.path.relpath(value) if os.path.isabs(value) else value)

    return [rel(a) for a in argv]


def sweep_main(argv: Sequence[str] | None, *, name: str, about: str, default_out: str | None,
               default_seeds: Sequence[int], default_doc: str | None,
               markdown: Callable[[dict[int, dict], str], str]) -> int:
    """The command line of a seed sweep (`seeds`, `repro`): run the seeds, write `markdown` of them.

    `about` is the help's description (the module docstring's first line: under `python -m`, the
    module is `__main__`); `default_out` None makes --out required; `default_doc` None writes
    OUT/<name>.md.
    """
    from star_jax.config import add_config_args, config_from_args
    from star_jax.errors import OneLineParser

    argv = list(sys.argv[1:] if argv is None else argv)
    log_to_stderr()
    module = f"star_jax.pipeline.{name}"
    parser = OneLineParser(prog=f"python -m {module}", description=about)
    parser.add_argument("--out", required=default_out is None, default=default_out,
                        help="parent of the per-seed run directories OUT/seed<S>")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds),
                        help=f"data seeds, one after another (default {shlex.join(map(str, default_seeds))})")
    parser.add_argument("--doc", default=default_doc,
                        help=f"where to write the summary (default {default_doc or f'OUT/{name}.md'})")
    add_config_args(parser)
    try:
        args = parser.parse_args(argv)
        if len(set(args.seeds)) != len(args.seeds):
            raise StarError(f"--seeds: repeated seed in {' '.join(map(str, args.seeds))}")
        reports = run_seeds(config_from_args(args), args.out, args.seeds)
    except StarError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return e.exit_code
    doc = Path(args.doc) if args.doc else Path(args.out) / f"{name}.md"
    atomic_write_text(doc, markdown(reports, shlex.join(["python", "-m", module, *_relative(argv)])))
    log.info(f"{name}: summary in {doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return sweep_main(argv, name="seeds", about=__doc__.splitlines()[0], default_out=None,
                      default_seeds=(0, 1, 2, 3), default_doc=None,
                      markdown=seeds_markdown)


if __name__ == "__main__":
    sys.exit(main())
