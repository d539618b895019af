"""`make repro`: the tiny demo on several data seeds, each check of the report pooled over them.

    python -m star_jax.pipeline.repro --config configs/tiny.yaml [--out runs/repro] [--seeds 100 101 102 103]
        [--doc docs/repro.md] [--set key=value ...]

Seed S runs in OUT/seed<S> through `star_jax.pipeline.seeds.run_seeds`: finished runs and stages are
skipped, so an interrupted command resumes. Runs are sequential (one at a time, no --jobs: a tiny
run keeps both cores busy). The doc gives, per check (`report.CHECKS`), each seed's effect with its
member-bootstrap interval and the pooled effect (`pool`), with one verdict word each.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

from star_jax.eval.report import BASELINE_KEYS, BEST_GNN, CHECKS
from star_jax.metrics import verdict
from star_jax.pipeline.seeds import auc_table, sweep_main

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
    bases = list(BASELINE_KEYS.values())
    out += ["", "## Test AUC per seed (variants, then the baselines)", "", *auc_table(reports, "auc", bases),
            "", "## Cold-start test AUC per seed (members with no training-period apply)", "",
            *auc_table(reports, "auc_cold_start", bases), "", "## Pipeline wall seconds per seed", "",
            "| seed | wall s |", "|---|---|"]
    out += [f"| {s} | {sum(st['seconds'] for st in reports[s]['stages']):.0f} |" for s in seeds]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return sweep_main(argv, name="repro", about=__doc__.splitlines()[0], default_out="runs/repro",
                      default_seeds=DEFAULT_SEEDS,
                      default_doc="docs/repro.md", markdown=repro_markdown)


if __name__ == "__main__":
    sys.exit(main())
