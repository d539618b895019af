"""The seed sweep's summaries on fabricated per-seed report.json contents: `star_jax.pipeline.seeds`'
tables and `star_jax.pipeline.repro`'s pooling of each check over seeds."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy.stats import norm

from star_jax.eval.report import CHECKS
from star_jax.pipeline import repro

VARIANT_AUCS = {"llm_frozen": (0.60, 0.58), "llm_finetuned": (0.70, 0.65), "gnn_id_cat": (0.80, 0.60),
                "gnn_id_cat_llm": (0.82, 0.64)}


def fake_report(points: dict[str, float], ses: dict[str, float], words: dict[str, str] | None = None,
                missing: tuple[str, ...] = ()) -> dict:
    """A report.json with the given effect and bootstrap SE per check id (interval: point ± 2 SE)."""
    checks = []
    for cid, (title, a, b, threshold, subset) in CHECKS.items():
        row = {"id": cid, "check": title, "a": "gnn_id_cat_llm" if a == "best GNN" else a, "b": b,
               "threshold": threshold, "subset": subset, "point": None, "low": None, "high": None, "se": None,
               "share_positive": None, "verdict": "n/a", "reason": "gnn_id_cat: not in this run"}
        if cid not in missing:
            p, se = points[cid], ses[cid]
            row.update(point=p, se=se, low=p - 2 * se, high=p + 2 * se, reason=None,
                       verdict=(words or {}).get(cid, "holds"))
        checks.append(row)
    return {"variants": {n: {"auc": a, "auc_cold_start": c} for n, (a, c) in VARIANT_AUCS.items()},
            "baselines": {"tags": {"auc": 0.75, "auc_cold_start": 0.72}},
            "checks": checks,
            "stages": [{"stage": "synth", "seconds": 1.0}, {"stage": "pretrain", "seconds": 99.0}]}


def test_pool_is_the_mean_with_summed_variances():
    effects, ses = [0.012, -0.004, 0.020, 0.007], [0.010, 0.008, 0.012, 0.009]
    got = repro.pool(effects, ses)
    se = np.sqrt(np.sum(np.square(ses))) / 4
    assert got["mean"] == pytest.approx(np.mean(effects), abs=1e-15)
    assert got["se"] == pytest.approx(se, abs=1e-15)
    assert got["low"] == pytest.approx(np.mean(effects) - norm.ppf(0.975) * se, abs=1e-12)
    assert got["high"] == pytest.approx(np.mean(effects) + 1.959963984540054 * se, abs=1e-12)
    assert got["n"] == 4


def test_pooled_checks_and_their_verdicts():
    rng = np.random.default_rng(0)
    seeds = (100, 101, 102, 103)
    k = len(CHECKS)
    points = {s: dict(zip(CHECKS, rng.normal(0.01, 0.01, k).tolist())) for s in seeds}
    ses = {s: dict(zip(CHECKS, rng.uniform(0.005, 0.02, k).tolist())) for s in seeds}
    # Clear effects for three claims: fine-tuning wins by 0.10 (above the 0.05 target), the GNN loses to tags.
    for s in seeds:
        points[s].update(finetune=0.10, finetune_target=0.10, id_cat_vs_tags=-0.08)
    reports = {s: fake_report(points[s], ses[s], missing=("gnn_vs_llm",) if s == 101 else ()) for s in seeds}
    reports[102]["checks"] = [c for c in reports[102]["checks"] if c["id"] != "gnn_vs_llm"]
    got = repro.pooled_checks(reports)
    for cid, (_, _, _, threshold, _) in CHECKS.items():
        use = [s for s in seeds if cid != "gnn_vs_llm" or s not in (101, 102)]
        mean = np.mean([points[s][cid] for s in use])
        se = np.sqrt(sum(ses[s][cid] ** 2 for s in use)) / len(use)
        lo, hi = mean - 1.959963984540054 * se, mean + 1.959963984540054 * se
        assert got[cid]["n"] == len(use)
        pooled = (got[cid]["mean"], got[cid]["low"], got[cid]["high"])
        assert pooled == pytest.approx((mean, lo, hi), abs=1e-12)
        word = "holds" if lo > threshold else "fails" if hi < threshold else "unresolved"
        assert got[cid]["verdict"] == word, cid
    assert got["finetune"]["verdict"] == got["finetune_target"]["verdict"] == "holds"
    assert got["id_cat_vs_tags"]["verdict"] == "fails"
    none = repro.pooled_checks({1: fake_report({}, {}, missing=tuple(CHECKS))})
    assert all(p["verdict"] == "n/a" and p["n"] == 0 for p in none.values())


def test_repro_markdown_lists_every_seed_and_the_pooled_effect():
    points = dict.fromkeys(CHECKS, 0.03)
    ses = dict.fromkeys(CHECKS, 0.01)
    reports = {101: fake_report(points, ses), 100: fake_report(points, ses, missing=("cold_start_gain",))}
    md = repro.repro_markdown(reports, "python -m star_jax.pipeline.repro --seeds 100 101")
    title = CHECKS["llm_features"][0]
    p = repro.pool([0.03, 0.03], [0.01, 0.01])
    assert f"| {title} | +0.0300 | [{p['low']:+.4f}, {p['high']:+.4f}] | 2 | **holds** |" in md
    cold = CHECKS["cold_start_gain"][0]
    assert f"| {cold} | n/a (gnn_id_cat: not in this run) | +0.0300 [+0.0100, +0.0500] holds |" in md
    assert f"| {CHECKS['gnn_vs_llm'][0]} | +0.0300 [+0.0100, +0.0500] holds (gnn_id_cat_llm) |" in md
    assert "| seed | llm_frozen | llm_finetuned | gnn_id_cat | gnn_id_cat_llm | baseline tags |" in md
    assert "| 100 | 0.6000 | 0.7000 | 0.8000 | 0.8200 | 0.7500 |" in md  # seeds sorted, the paper's row order
    assert "| 101 | 100 |" in md  # pipeline wall seconds
    assert "SE = sqrt(sum of var_i) / n" in md


def test_repro_cli_writes_the_doc(tmp_path, monkeypatch):
    from star_jax.pipeline import seeds

    ran = []

    def fake_run_seeds(cfg, out, seed_list):
        ran.append((cfg.data.seed, str(out), list(seed_list)))
        return {s: fake_report(dict.fromkeys(CHECKS, 0.02), dict.fromkeys(CHECKS, 0.01)) for s in seed_list}

    monkeypatch.setattr(seeds, "run_seeds", fake_run_seeds)
    doc = tmp_path / "repro.md"
    assert repro.main(["--out", str(tmp_path / "runs"), "--seeds", "7", "8", "--doc", str(doc)]) == 0
    assert ran == [(0, str(tmp_path / "runs"), [7, 8])]
    assert "`data.seed` 7, 8" in doc.read_text()
    # The command it records names the paths relative to the working directory, never a machine's.
    monkeypatch.chdir(tmp_path)
    assert repro.main(["--out", str(tmp_path / "runs"), "--seeds", "7", f"--doc={doc}"]) == 0
    assert "python -m star_jax.pipeline.repro --out runs --seeds 7 --doc=repro.md" in doc.read_text()
    assert str(tmp_path) not in doc.read_text()
    assert repro.main(["--seeds", "7", "7", "--doc", str(doc)]) == 2


def test_seed_summary_tables_and_verdicts():
    from star_jax.pipeline.seeds import checks, seeds_markdown

    points, ses = dict.fromkeys(CHECKS, 0.02), dict.fromkeys(CHECKS, 0.005)
    good = fake_report(points, ses)
    bad = fake_report(points, ses, words={"finetune_target": "fails", "cold_start_gain": "unresolved"})
    bad["variants"]["llm_frozen"] = {"auc": 0.68, "auc_cold_start": 0.68}
    assert set(checks(good).values()) == {"holds"}
    assert checks(bad)["finetune_target"] == "fails" and checks(bad)["cold_start_gain"] == "unresolved"
    md = seeds_markdown({2: bad, 1: good}, "python -m star_jax.pipeline.seeds --out runs/seeds")
    assert "| 1 | 0.6000 | 0.7000 | 0.8000 | 0.8200 |" in md  # seeds sorted, the paper's row order
    assert "| 2 | +0.0200 | +0.0200 | +0.0400 | [+0.0100, +0.0300] | 100 |" in md
    assert f"| {CHECKS['finetune_target'][0]} | holds | **fails** |" in md
    assert f"| {CHECKS['cold_start_gain'][0]} | holds | unresolved |" in md
    assert md.rstrip().endswith(f"Failed: seed 2: {CHECKS['finetune_target'][0]}.")


@pytest.mark.parametrize("module", ["repro", "seeds"])
def test_the_sweeps_run_as_modules(module):
    # `make repro` runs `python -m star_jax.pipeline.repro`, where the module is `__main__`.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", f"star_jax.pipeline.{module}", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = importlib.import_module(f"star_jax.pipeline.{module}").__doc__.splitlines()[0]
    assert " ".join(doc.split()) in " ".join(done.stdout.split())
