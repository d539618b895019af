"""`make repro`: the tiny demo on several data seeds, each check of the report pooled over them.

    python -m star_jax.eval.repro --config configs/tiny.yaml [--out runs/repro] [--seeds 100 101 102 103]
        [--doc docs/repro.md] [--set key=value ...]

Seed S runs in OUT/seed<S> through `star_jax.eval.seeds.run_seeds`: finished runs and stages are
skipped, so an interrupted command resumes. Runs are sequential (one at a time, no --jobs: a tiny
run keeps both cores busy). The doc gives, per check (`report.CHECKS`), each seed's effect with its
member-bootstrap interval and the pooled effect (`pool`), with one verdict word each.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import norm

from star_jax.errors import StarError
from star_jax.eval.metrics import verdict
from star_jax.eval.report import BASELINE_KEYS, BEST_GNN, CHECKS
from star_jax.fileio import atomic_write_text
from star_jax.pipeline import VARIANTS

logger = logging.getLogger(__name__)

DEFAULT_SEEDS = (100, 101, 102, 103)  # used nowhere else; each is one ~10-minute tiny run on 2 cores
POOLING = (
    "Pooled effect: the mean of the per-seed effects; its standard error combines the per-seed "
    "bootstrap variances, SE = sqrt(sum of var_i) / n (the seeds are independent data sets), and the "
    "95% interval is the normal one, mean ± 1.96 SE. Per-seed intervals are the reports' 95% "
    "percentile intervals of a bootstrap over test members."
)


def pool(effects: Sequence[float], ses: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of independent per-seed effects and its normal interval: SE = sqrt(sum se_i^2) / n."""
    effects, ses = np.asarray(effects, np.float64), np.asarray(ses, np.float64)
    if effects.size == 0 or effects.size != ses.size:
        raise ValueError("pool: needs one standard error per effect, at least one effect")
    mean = float(effects.mean())
    se = float(np.sqrt(np.sum(ses**2)) / effects.size)
    z = float(norm.ppf(0.5 + level / 2))
    return {"mean": mean, "se": se, "low": mean - z * se, "high": mean + z * se, "n": int(effects.size)}


def pooled_checks(reports: dict[int, dict]) -> dict[str, dict]:
    """Per check id: the pooled effect over the seeds where it has an interval, and its verdict
    against the check's threshold ("n/a" with no such seed)."""
    out = {}
    for cid, (_, _, _, threshold, _) in CHECKS.items():
        rows = [c for s in sorted(reports) for c in reports[s]["checks"]
                if c["id"] == cid and c["point"] is not None and c["se"] is not None]
        if not rows:
            out[cid] = {"mean": None, "se": None, "low": None, "high": None, "n": 0, "verdict": "n/a"}
            continue
        p = pool([c["point"] for c in rows], [c["se"] for c in rows])
        out[cid] = {**p, "verdict": verdict(p["low"], p["high"], threshold)}
    return out


def _num(x: float | None, spec: str = "+.4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _seed_cell(c: dict | None) -> str:
    if c is None:
        return "n/a"
    if c["low"] is None:
        return f"n/a ({c['reason']})" if c.get("reason") else "n/a"
    who = f" ({c['a']})" if BEST_GNN in CHECKS[c["id"]][0] else ""
    return f"{c['point']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] {c['verdict']}{who}"


def _auc_table(reports: dict[int, dict], key: str) -> list[str]:
    seeds = sorted(reports)
    names = [n for n in VARIANTS if any(n in reports[s]["variants"] for s in seeds)]
    bases = [b for b in BASELINE_KEYS.values() if any(b in reports[s].get("baselines", {}) for s in seeds)]
    out = ["| seed | " + " | ".join(names + [f"baseline {b}" for b in bases]) + " |",
           "|---|" + "---|" * (len(names) + len(bases))]
    for s in seeds:
        v, b = reports[s]["variants"], reports[s].get("baselines", {})
        cells = [_num(v.get(n, {}).get(key), ".4f") for n in names]
        cells += [_num(b.get(x, {}).get(key), ".4f") for x in bases]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return out


def repro_markdown(reports: dict[int, dict], command: str) -> str:
    """docs/repro.md: per check, each seed's effect and interval and the pooled effect; AUC tables."""
    seeds = sorted(reports)
    pooled = pooled_checks(reports)
    out = ["# Reproducibility over data seeds", "",
           f"The tiny demo (`configs/tiny.yaml`) on {len(seeds)} synthetic data sets, `data.seed` "
           f"{', '.join(map(str, seeds))}; everything else as configured. Produced by (runs are sequential):",
           "", "```", command, "```", "",
           "Each check claims `effect > threshold` (0 unless stated), the effect a difference of test AUC "
           "on the same test pairs. Verdicts: **holds** when the 95% interval lies above the threshold, "
           "**fails** when below, **unresolved** when it contains it, n/a when it cannot be computed.", "",
           POOLING, "", "## Pooled over seeds", "",
           "| check | pooled effect | 95% interval | seeds | verdict |", "|---|---|---|---|---|"]
    for cid, (title, *_) in CHECKS.items():
        p = pooled[cid]
        interval = "n/a" if p["low"] is None else f"[{p['low']:+.4f}, {p['high']:+.4f}]"
        out.append(f"| {title} | {_num(p['mean'])} | {interval} | {p['n']} | **{p['verdict']}** |")
    out += ["", "## Each seed: effect [95% member-bootstrap interval] verdict", "",
            "| check | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for cid, (title, *_) in CHECKS.items():
        found = {s: next((c for c in reports[s]["checks"] if c["id"] == cid), None) for s in seeds}
        out.append(f"| {title} | " + " | ".join(_seed_cell(found[s]) for s in seeds) + " |")
    out += ["", "## Test AUC per seed (variants, then the baselines)", "", *_auc_table(reports, "auc"),
            "", "## Cold-start test AUC per seed (members with no training-period apply)", "",
            *_auc_table(reports, "auc_cold_start"), "", "## Pipeline wall seconds per seed", "",
            "| seed | wall s |", "|---|---|"]
    out += [f"| {s} | {sum(st['seconds'] for st in reports[s]['stages']):.0f} |" for s in seeds]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from star_jax.cli import add_config_args, config_from_args
    from star_jax.eval.seeds import run_seeds

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m star_jax.eval.repro",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/repro", help="parent of the runs OUT/seed<S> (runs/repro)")
    seeds = " ".join(map(str, DEFAULT_SEEDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help=f"data seeds, run one after another (default {seeds})")
    parser.add_argument("--doc", default="docs/repro.md", help="where to write the summary (docs/repro.md)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if len(set(args.seeds)) != len(args.seeds):
            raise StarError(f"--seeds: repeated seed in {' '.join(map(str, args.seeds))}")
        reports = run_seeds(config_from_args(args), args.out, args.seeds)
    except StarError as e:
        print(f"repro: error: {e}", file=sys.stderr)
        return e.exit_code
    command = shlex.join(["python", "-m", "star_jax.eval.repro", *argv])
    atomic_write_text(Path(args.doc), repro_markdown(reports, command))
    logger.info("repro: summary in %s", args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
