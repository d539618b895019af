"""`star-jax evaluate --run RUN_DIR`: the paper's ablation table, scored on the test split.

Each variant is read back from the EmbeddingStore version the pipeline wrote and scored on the
labelled test pairs (LLM rows by cosine, GNN rows by dot product): test AUC, the same on cold-start
members (`star_jax.data.splits.cold_start`), filtered MRR and recall@k against `eval.num_candidates`
fixed jobs, training seconds. Beside them, the signal baselines of `star_jax.data.baselines` on the
run's own data; below, each claim checked with a 95% member-bootstrap interval and one verdict word
(holds / fails / unresolved, or n/a with a reason). Writes RUN_DIR/report.md, report.json (schema
in docs/pipeline.md) and plots/{loss_curves,roc,auc_by_activity}.png.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from star_jax.config import to_dict
from star_jax.data.splits import cold_start, train_applies
from star_jax.errors import StarError
from star_jax.eval.compact_report import compact_markdown, compact_section, plot_compact
from star_jax.eval.runs import GNN_VARIANTS, LLM_VARIANTS, PAPER_AUC, VARIANTS, Run, read_run
from star_jax.fileio import atomic_write_bytes, atomic_write_files, json_bytes
from star_jax.metrics import (
    ACTIVITY_BUCKETS,
    activity_bucket,
    auc,
    auc_gap_interval,
    mrr,
    positive_ranks,
    recall_at_k,
    subset_gap_interval,
    verdict,
)

if TYPE_CHECKING:
    from star_jax.store import EmbeddingStore

log = logging.getLogger(__name__)

REPORT_FORMAT = 3  # bump when report.json's schema changes (the pipeline then rewrites reports)
REPORT_MD, REPORT_JSON, PLOTS = "report.md", "report.json", "plots"
FINETUNE_TARGET = 0.05  # the demo's fine-tuned towers must beat the frozen ones by this much test AUC
BOOTSTRAP_RESAMPLES = 500  # member resamples behind every interval (drawn with eval.seed)
# star_jax.data.baselines' names -> report.json's keys, and each baseline's row in report.md.
BASELINE_KEYS = {"tags": "tags", "text": "text", "both": "tags_text", "oracle": "oracle"}
BASELINE_ROWS = {
    "tags": "baseline: tags (logistic regression)",
    "text": "baseline: text (logistic regression, TF-IDF)",
    "tags_text": "baseline: tags + text (logistic regression)",
    "oracle": "baseline: oracle (the generator's latent factors)",
}


# -- inputs --------------------------------------------------------------------------------------


class TestPairs(NamedTuple):
    member_ids: np.ndarray  # int64 [n]
    job_ids: np.ndarray  # int64 [n]
    labels: np.ndarray  # int8 [n]
    bucket: np.ndarray  # object [n]: the member's activity bucket (ACTIVITY_BUCKETS names)
    cold: np.ndarray  # bool [n]: the member is cold start (star_jax.data.splits.cold_start)


def test_pairs(data_dir: str | os.PathLike) -> TestPairs:
    """The labelled test pairs, with each member's activity bucket and cold-start flag."""
    from star_jax.data.tables import read_labels

    df = read_labels(data_dir, "test", ["member_id", "job_id", "label"])
    if df.empty:
        raise StarError(f"{data_dir}: no labelled pairs with split == 'test' to evaluate on")
    m = df["member_id"].to_numpy(np.int64)
    return TestPairs(m, df["job_id"].to_numpy(np.int64), df["label"].to_numpy(np.int8),
                     activity_bucket(train_applies(data_dir, m)), cold_start(data_dir, m))


def candidate_jobs(job_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The fixed candidate set: `n` distinct jobs drawn with `seed` (every job when fewer), ascending."""
    job_ids = np.unique(np.asarray(job_ids, np.int64))
    if n >= len(job_ids):
        return job_ids
    return np.sort(np.random.default_rng(seed).choice(job_ids, n, replace=False))


def known_positives(data_dir: str | os.PathLike, relation: str) -> pd.DataFrame:
    """(member_id, job_id) of every labelled apply (any split) and every apply edge, deduplicated."""
    from star_jax.data.tables import read_edges, read_labels

    labels = read_labels(data_dir, None, ["member_id", "job_id", "label"])
    labels = labels.loc[labels["label"] > 0, ["member_id", "job_id"]]
    edges = read_edges(data_dir, relation, ["src", "dst"])
    edges = edges.rename(columns={"src": "member_id", "dst": "job_id"})
    return pd.concat([labels, edges], ignore_index=True).drop_duplicates()


def competitor_mask(members: np.ndarray, candidates: np.ndarray, known: pd.DataFrame) -> np.ndarray:
    """bool [Q, C]: False where candidate c is a known positive of query q's member (filtered ranking)."""
    mask = np.ones((len(members), len(candidates)), bool)
    q = pd.DataFrame({"member_id": members, "q": np.arange(len(members))})
    c = pd.DataFrame({"job_id": candidates, "c": np.arange(len(candidates))})
    hits = q.merge(known, on="member_id").merge(c, on="job_id")
    mask[hits["q"].to_numpy(), hits["c"].to_numpy()] = False
    return mask


# -- scoring -------------------------------------------------------------------------------------


def uses_cosine(variant: str) -> bool:
    """LLM rows score by cosine (bf16 storage leaves the unit vectors slightly off unit norm)."""
    return variant in LLM_VARIANTS


def variant_embeddings(store: EmbeddingStore, node_type: str, ids: np.ndarray, cosine: bool) -> np.ndarray:
    """float32 [n, d]: stored vectors of `ids`, L2-normalised when the variant scores by cosine."""
    x = store.lookup(node_type, ids)
    if cosine:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


class Scores(NamedTuple):
    pairs: np.ndarray  # float32 [n]: the score of every test pair
    ranks: np.ndarray  # int64 [Q]: 1-based filtered rank of each positive test pair


def score_variant(store: EmbeddingStore, pairs: TestPairs, candidates: np.ndarray, mask: np.ndarray,
                  cosine: bool, *, chunk: int = 4096) -> Scores:
    """Pair scores and the positives' filtered ranks among `candidates` for one stored variant."""
    members, m_index = np.unique(pairs.member_ids, return_inverse=True)
    jobs, j_index = np.unique(np.concatenate([pairs.job_ids, candidates]), return_inverse=True)
    m = variant_embeddings(store, "member", members, cosine)
    j = variant_embeddings(store, "job", jobs, cosine)
    n = len(pairs.job_ids)
    scores = np.einsum("nd,nd->n", m[m_index], j[j_index[:n]])
    cand = j[j_index[n:]]
    pos = np.flatnonzero(pairs.labels > 0)
    ranks = np.empty(len(pos), np.int64)
    for lo in range(0, len(pos), chunk):
        q = pos[lo : lo + chunk]
        ranks[lo : lo + chunk] = positive_ranks(scores[q], m[m_index[q]] @ cand.T, mask[lo : lo + chunk])
    return Scores(scores, ranks)


def _number(x: float | None) -> float | None:
    """A JSON-able metric: None for a missing or NaN value."""
    return None if x is None or np.isnan(x) else float(x)


def scores_reason(scores: np.ndarray, where: str = "the test pairs") -> str | None:
    """Why `scores` rank nothing (None: they do): a non-finite or a constant score."""
    if not np.isfinite(scores).all():
        return f"{where} have {int((~np.isfinite(scores)).sum()):,} non-finite scores"
    if scores.size and scores.min() == scores.max():
        return f"{where} all have the same score"
    return None


def slice_auc(labels: np.ndarray, scores: np.ndarray, where: str,
              empty: str) -> tuple[float | None, str | None]:
    """The AUC on a slice of the test pairs, or None and why not (`where` names the slice in the
    reason, `empty` is the reason when it holds no pair)."""
    if labels.size == 0:
        return None, empty
    if labels.min() == labels.max():
        return None, f"{where} have a single class"
    reason = scores_reason(scores, where)
    return (None, reason) if reason else (auc(labels, scores), None)


def variant_metrics(pairs: TestPairs, scores: Scores, k: int) -> dict[str, Any]:
    """A variant's row of report.json; a metric that cannot be computed is None, and `reasons`
    says why (keys: the metric, `auc_by_activity.<bucket>`)."""
    labels, s = pairs.labels, np.asarray(scores.pairs, np.float64)
    reasons: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, sel, where, empty in (("auc", slice(None), "the test pairs", "no test pairs"),
                                   ("auc_cold_start", pairs.cold, "the cold-start test pairs",
                                    "no test pairs of cold-start members")):
        out[key], why = slice_auc(labels[sel], s[sel], where, empty)
        if why:
            reasons[key] = why
    finite = np.isfinite(s)
    rank_reason = ("no applies among the test pairs" if scores.ranks.size == 0 else None if finite.all()
                   else f"the test pairs have {int((~finite).sum()):,} non-finite scores")
    for key, metric in (("mrr", mrr), (f"recall_at_{k}", lambda r: recall_at_k(r, k))):
        out[key] = None if rank_reason else metric(scores.ranks)
        if rank_reason:
            reasons[key] = rank_reason
    by_activity = {}
    for name, _, _ in ACTIVITY_BUCKETS:
        sel = pairs.bucket == name
        by_activity[name], why = slice_auc(labels[sel], s[sel], f"the {name} test pairs",
                                           f"no test pairs in the {name} bucket")
        if why:
            reasons[f"auc_by_activity.{name}"] = why
    return {**out, "auc_by_activity": by_activity, "reasons": reasons}


def training_stage(variant: str) -> str:
    """The pipeline stage whose training seconds a variant reports (the demo's pretraining for
    `llm_frozen`; none when `llm.base_dir` names an existing base)."""
    return {"llm_frozen": "pretrain", "llm_finetuned": "train-llm"}.get(variant, f"train-gnn-{variant}")


def train_seconds(run: Run, variant: str) -> float | None:
    return (run.result(training_stage(variant)) or {}).get("train_seconds")


# -- baselines -----------------------------------------------------------------------------------


def baselines(data_dir: str | os.PathLike,
              seed: int) -> tuple[dict[str, dict], dict[str, pd.DataFrame], str | None]:
    """report.json's `baselines` block, each baseline's test-pair scores, and why there are none.

    `star_jax.data.baselines` on the run's own data and split: tags, text and both, plus the
    oracle where the data has `latent/`. A StarError there (e.g. member ids not 0..n-1) leaves the
    block empty and returns its message as the reason.
    """
    from star_jax.data.baselines import run_baselines

    names = ("tags", "text", "both") + (("oracle",) if (Path(data_dir) / "latent").is_dir() else ())
    try:
        results = run_baselines(data_dir, seed=seed, names=names, scores=True)
    except StarError as e:
        log.warning(f"evaluate: no baselines: {e}")
        return {}, {}, str(e)
    block, tables = {}, {}
    for r in results:
        key = BASELINE_KEYS[r["baseline"]]
        block[key] = {"auc": r["test_auc"], "auc_cold_start": _number(r["cold_start_auc"]),
                      "val_auc": r["val_auc"], "C": r["C"]}
        tables[key] = r["test_scores"]
    return block, tables, None


def aligned_scores(pairs: TestPairs, table: pd.DataFrame) -> np.ndarray | None:
    """float64 [n]: the score `table` (member_id, job_id, score) gives each test pair; None if it
    misses one."""
    keys = pd.DataFrame({"member_id": pairs.member_ids, "job_id": pairs.job_ids})
    table = table.drop_duplicates(["member_id", "job_id"])
    got = keys.merge(table, on=["member_id", "job_id"], how="left")["score"].to_numpy(np.float64)
    return None if np.isnan(got).any() else got


# -- checks --------------------------------------------------------------------------------------

BEST_GNN = "best GNN"  # stands for the GNN variant with the highest test AUC
# id -> (title, a, b, threshold, subset): the claim "effect > threshold", where the effect is
# test AUC of a minus that of b on the same pairs or, with subset "cold_start", that gap on the
# cold-start members minus the gap overall. Baselines are named "baseline:<key>".
CHECKS: dict[str, tuple[str, str, str, float, str | None]] = {
    "finetune": ("llm_finetuned - llm_frozen > 0", "llm_finetuned", "llm_frozen", 0.0, None),
    "finetune_target": (f"llm_finetuned - llm_frozen > {FINETUNE_TARGET} (the demo's target)",
                        "llm_finetuned", "llm_frozen", FINETUNE_TARGET, None),
    "llm_features": ("gnn_id_cat_llm - gnn_id_cat > 0", "gnn_id_cat_llm", "gnn_id_cat", 0.0, None),
    "cold_start_gain": ("gnn_id_cat_llm - gnn_id_cat: cold-start gap - overall gap > 0",
                        "gnn_id_cat_llm", "gnn_id_cat", 0.0, "cold_start"),
    "gnn_vs_tags_text": ("best GNN - baseline tags + text > 0", BEST_GNN, "baseline:tags_text", 0.0, None),
    "gnn_vs_llm": ("best GNN - llm_finetuned > 0", BEST_GNN, "llm_finetuned", 0.0, None),
    "id_cat_vs_tags": ("gnn_id_cat - baseline tags > 0", "gnn_id_cat", "baseline:tags", 0.0, None),
}


def best_gnn(variants: dict[str, dict]) -> str | None:
    """The GNN variant with the highest test AUC (None: no GNN variant scored)."""
    scored = [(v["auc"], name) for name, v in variants.items()
              if name in GNN_VARIANTS and v.get("auc") is not None and not np.isnan(v["auc"])]
    return max(scored)[1] if scored else None


def checks(pairs: TestPairs, scores: dict[str, np.ndarray], variants: dict[str, dict], *,
           baseline_reason: str | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
           seed: int = 0) -> list[dict]:
    """Every claim of `CHECKS` on this run: effect, 95% member-bootstrap interval, verdict word.

    `scores`: each variant's and baseline's ("baseline:<key>") score of every test pair. A claim
    that cannot be computed gets verdict "n/a" and a `reason` (a missing variant or baseline, a
    slice with no pairs or one class, constant or non-finite scores; with a single test member the
    effect has no interval).
    """
    best = best_gnn(variants)
    cache: dict[tuple, dict | None] = {}
    out = []
    for cid, (title, a, b, threshold, subset) in CHECKS.items():
        if a == BEST_GNN and best is not None:
            a = best
            title = title.replace(BEST_GNN, f"best GNN ({best})")
        row: dict[str, Any] = {"id": cid, "check": title, "a": a, "b": b, "threshold": threshold,
                               "subset": subset, "point": None, "low": None, "high": None, "se": None,
                               "share_positive": None, "verdict": "n/a", "reason": None}
        out.append(row)
        missing = [x for x in (a, b) if x not in scores]
        if missing:
            row["reason"] = "; ".join(_missing_reason(x, baseline_reason) for x in missing)
            continue
        labels = pairs.labels
        if subset is not None:
            if not pairs.cold.any():
                row["reason"] = "no test pairs of cold-start members"
                continue
            if labels[pairs.cold].min() == labels[pairs.cold].max():
                row["reason"] = "the cold-start test pairs have a single class"
                continue
        if labels.min() == labels.max():
            row["reason"] = "the test pairs have a single class"
            continue
        flat = [f"{x}: {why}" for x in (a, b)
                if (why := scores_reason(np.asarray(scores[x], np.float64), "the test pairs"))]
        if flat:
            row["reason"] = "; ".join(flat)
            continue
        if np.unique(pairs.member_ids).size < 2:  # the bootstrap resamples members: one gives no spread
            if subset is None:
                row["point"] = auc(labels, scores[a]) - auc(labels, scores[b])
            else:
                c = pairs.cold
                row["point"] = ((auc(labels[c], scores[a][c]) - auc(labels[c], scores[b][c]))
                                - (auc(labels, scores[a]) - auc(labels, scores[b])))
            row["reason"] = "a single test member: no member-bootstrap interval"
            continue
        key = (a, b, subset)
        if key not in cache:
            if subset is None:
                cache[key] = auc_gap_interval(labels, scores[a], scores[b], pairs.member_ids,
                                              resamples=resamples, seed=seed)
            else:
                cache[key] = subset_gap_interval(labels, scores[a], scores[b], pairs.cold, pairs.member_ids,
                                                 resamples=resamples, seed=seed)
        interval = cache[key]
        if interval is None:
            row["reason"] = "no bootstrap resample has both classes"
            continue
        row.update({k: interval[k] for k in ("point", "low", "high", "se", "share_positive")})
        row["verdict"] = verdict(interval["low"], interval["high"], threshold)
    return out


def _missing_reason(name: str, baseline_reason: str | None) -> str:
    if name == BEST_GNN:
        return "no GNN variant in this run"
    if name.startswith("baseline:"):
        what = f"baseline {name.split(':', 1)[1]}"
        if baseline_reason:
            return f"{what}: not computed ({baseline_reason})"
        return f"{what}: no score for some test pairs"
    return f"{name}: not in this run"


# -- the report ----------------------------------------------------------------------------------


def evaluate(run: Run) -> tuple[dict, dict[str, np.ndarray]]:
    """report.json's contents and, per variant, the test pair scores (for the ROC plot)."""
    from star_jax.data.tables import read_nodes
    from star_jax.store import EmbeddingStore

    cfg = run.cfg
    data_dir = run.paths.data
    relation = cfg.sampler.target_relation
    pairs = test_pairs(data_dir)
    all_jobs = read_nodes(data_dir, "job", ["id"])["id"].to_numpy(np.int64)
    candidates = candidate_jobs(all_jobs, cfg.eval.num_candidates, cfg.eval.seed)
    positive = pairs.labels > 0
    mask = competitor_mask(pairs.member_ids[positive], candidates, known_positives(data_dir, relation))
    variants, pair_scores = {}, {}
    for variant in cfg.eval.variants:
        where = run.store_version(variant)
        if where is None:
            continue  # not built (yet): the table lists only what the run has
        store = EmbeddingStore.open(where[0], where[1], kvstore=cfg.store.kvstore)
        scores = score_variant(store, pairs, candidates, mask, uses_cosine(variant))
        pair_scores[variant] = scores.pairs
        variants[variant] = {**variant_metrics(pairs, scores, cfg.eval.k),
                             "train_seconds": train_seconds(run, variant),
                             "paper_auc": PAPER_AUC.get(variant),
                             "store_version": where[1]}
    if not variants:
        raise StarError(f"--run {run.paths.root}: no variant embeddings yet; run `star-jax pipeline` first")
    baseline_block, baseline_tables, baseline_reason = baselines(data_dir, cfg.eval.seed)
    compared = dict(pair_scores)
    for key, table in baseline_tables.items():
        s = aligned_scores(pairs, table)
        if s is not None:
            compared[f"baseline:{key}"] = s
    data = {
        "dir": os.fspath(data_dir),
        "test_pairs": int(len(pairs.labels)),
        "test_positives": int(positive.sum()),
        "test_pairs_cold_start": int(pairs.cold.sum()),
        "test_members": int(len(np.unique(pairs.member_ids))),
        "jobs": int(len(all_jobs)),
        "candidates": int(len(candidates)),
        "pairs_by_activity": {name: int((pairs.bucket == name).sum()) for name, _, _ in ACTIVITY_BUCKETS},
    }
    report = {
        "format": REPORT_FORMAT,
        "variants": variants,
        "baselines": baseline_block,
        "baselines_reason": baseline_reason,
        "checks": checks(pairs, compared, variants, baseline_reason=baseline_reason, seed=cfg.eval.seed),
        "stages": [{"stage": name, "seconds": stamp["seconds"], "cpu_seconds": stamp.get("cpu_seconds")}
                   for name, stamp in run.stamps.items() if name != "evaluate"],
        "data": data,
        "config": to_dict(cfg),
    }
    migration = run.result("migration")
    if migration is not None:
        report["migration"] = migration
    # the compact trade-off of the Matryoshka towers (docs/compact.md)
    compact = compact_section(run, pairs.member_ids, pairs.job_ids, pairs.labels)
    if compact is not None:
        report["compact"] = compact
    return report, {"labels": pairs.labels, **pair_scores}


def _ordered(variants: dict[str, dict]) -> list[tuple[str, dict]]:
    """The paper's row order (report.json's keys are sorted)."""
    return sorted(variants.items(), key=lambda kv: VARIANTS.index(kv[0]))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def table_markdown(report: dict) -> str:
    """The ablation table of a report.json, baselines below the variants (what `make demo` prints)."""
    k = report["config"]["eval"]["k"]
    lines = [f"| variant | test AUC | cold-start AUC | MRR | recall@{k} | train s | paper AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, v in _ordered(report["variants"]):
        lines.append(f"| {name} | {_fmt(v['auc'])} | {_fmt(v['auc_cold_start'])} | {_fmt(v['mrr'])} | "
                     f"{_fmt(v[f'recall_at_{k}'])} | {_fmt(v['train_seconds'], '.0f')} | "
                     f"{_fmt(v['paper_auc'])} |")
    for key, b in report.get("baselines", {}).items():
        lines.append(f"| {BASELINE_ROWS[key]} | {_fmt(b['auc'])} | {_fmt(b['auc_cold_start'])} | "
                     "n/a | n/a | n/a | n/a |")
    notes = na_notes(report)
    return "\n".join(lines + ([""] + notes if notes else []))


COLUMNS = {"auc": "test AUC", "auc_cold_start": "cold-start AUC", "mrr": "MRR"}


def na_notes(report: dict, activity: bool = False) -> list[str]:
    """One line per reason a cell of the variant table (or, with `activity`, of the AUC-by-activity
    table) says n/a: the cells, then why."""
    grouped: dict[tuple[str, str], list[str]] = {}
    names = [name for name, _ in _ordered(report["variants"])]
    for name in names:
        for key, why in report["variants"][name].get("reasons", {}).items():
            if key.startswith("auc_by_activity.") == activity:
                column = key.split(".", 1)[1] if activity else COLUMNS.get(key, key.replace("_at_", "@"))
                grouped.setdefault((column, why), []).append(name)
    lines = []
    for (column, why), who in grouped.items():
        rows = "every variant" if who == names else ", ".join(who)
        lines.append(f"- n/a, {column} of {rows}: {why}")
    return lines


def _signed(x: float | None) -> str:
    return _fmt(x, "+.4f")


def checks_markdown(checks_: list[dict]) -> str:
    """The checks table: effect, 95% interval and verdict word of each claim."""
    lines = ["| check | effect | 95% interval | verdict |", "|---|---|---|---|"]
    for c in checks_:
        interval = "n/a" if c["low"] is None else f"[{_signed(c['low'])}, {_signed(c['high'])}]"
        word = f"**{c['verdict']}**" + (f" ({c['reason']})" if c.get("reason") else "")
        lines.append(f"| {c['check']} | {_signed(c['point'])} | {interval} | {word} |")
    return "\n".join(lines)


VERDICTS_NOTE = (
    "Each effect is a difference of test AUC on the same test pairs (the cold-start check: the gap "
    "on cold-start members minus the gap overall). Intervals: 95% percentile intervals of a bootstrap "
    f"over test members ({BOOTSTRAP_RESAMPLES} resamples of whole members, paired). Verdicts: **holds** "
    "when the interval lies above the claimed threshold, **fails** when it lies below, **unresolved** "
    "when it contains it; **n/a** with the reason when it cannot be computed."
)


def report_markdown(report: dict) -> str:
    d, cfg = report["data"], report["config"]
    buckets = [name for name, _, _ in ACTIVITY_BUCKETS]
    out = [
        "# STAR ablation report",
        "",
        f"Test split of `{d['dir']}`: {d['test_pairs']:,} labelled pairs ({d['test_positives']:,} applies), "
        f"{d['test_members']:,} members, {d['test_pairs_cold_start']:,} pairs of cold-start members (no "
        f"training-period apply). LLM rows score by cosine of the tower embeddings, GNN rows by the dot "
        f"product of the {cfg['gnn']['out_dim']}-d GNN embeddings. MRR and recall@{cfg['eval']['k']} rank "
        f"each apply among {d['candidates']:,} fixed candidate jobs, the member's other applies filtered "
        "out.",
        "",
        table_markdown(report),
        "",
    ]
    if report.get("baselines"):
        out.append("Baseline rows: logistic regressions (`star_jax.data.baselines`) trained on this run's "
                   "train pairs and scored on the same test pairs, from the members' and jobs' inputs alone "
                   "(no interaction): how much of the signal each input holds. They rank no candidates.")
    else:
        out.append(f"Baselines: not computed ({report.get('baselines_reason') or 'unknown reason'}).")
    out += ["", "## Checks", "", VERDICTS_NOTE, "", checks_markdown(report["checks"])]
    out += ["", "## AUC by member activity (training-period applies)", "",
            "| variant | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for name, v in _ordered(report["variants"]):
        out.append(f"| {name} | " + " | ".join(_fmt(v["auc_by_activity"][b]) for b in buckets) + " |")
    out.append("| test pairs | " + " | ".join(f"{d['pairs_by_activity'][b]:,}" for b in buckets) + " |")
    if notes := na_notes(report, activity=True):
        out += [""] + notes
    if "migration" in report:
        out += ["", "## Version migration", "", migration_markdown(report["migration"])]
    if "compact" in report:
        out += ["", "## Compact vectors (llm_train.matryoshka_dims)", "", compact_markdown(report["compact"])]
    out += ["", "## Stage times (from the run that produced each stage)", "",
            "| stage | wall s | CPU s |", "|---|---|---|"]
    stages = report["stages"]
    out += [f"| {s['stage']} | {s['seconds']:.0f} | {_fmt(s['cpu_seconds'], '.0f')} |" for s in stages]
    wall, cpu = sum(s["seconds"] for s in stages), sum(s["cpu_seconds"] or 0 for s in stages)
    out.append(f"| total | {wall:.0f} | {cpu:.0f} |")
    compact = ", `plots/compact.png`" if "compact" in report else ""
    out += ["", f"Plots: `plots/loss_curves.png`, `plots/roc.png`, `plots/auc_by_activity.png`{compact}.", ""]
    return "\n".join(out)


def migration_markdown(result: dict) -> str:
    from star_jax.eval.migration import migration_table

    return migration_table(result)


# -- plots ---------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _loss_series(path: Path, key: str = "loss") -> tuple[list[int], list[float]]:
    from star_jax.tracking import read_metrics

    last: dict[int, float] = {}  # a step logged before a crash and after the resume keeps its last value
    for r in read_metrics(path):
        if r.get("split") == "train" and key in r:
            last[r["step"]] = r[key]
    steps = sorted(last)
    return steps, [last[s] for s in steps]


def plot_losses(run: Run, path: Path) -> None:
    import matplotlib.pyplot as plt

    panels = [("pretrain (causal LM)", {"pretrain": run.paths.pretrain}),
              ("train-llm (bi-encoder)", {"llm_finetuned": run.paths.llm}),
              ("train-gnn (link prediction)", {v: run.paths.gnn(v) for v in run.cfg.eval.variants
                                               if v.startswith("gnn_")})]
    migration = run.result("train-llm-seed" + str(run.cfg.eval.migration_seed))
    if migration is not None:
        panels[1][1]["second seed"] = Path(migration["dir"])
    panels = [(t, {k: p for k, p in s.items() if (p / "metrics.jsonl").is_file()}) for t, s in panels]
    panels = [(t, s) for t, s in panels if s]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, d in series.items():
            steps, loss = _loss_series(d / "metrics.jsonl")
            ax.plot(steps, loss, label=label, marker="." if len(steps) < 30 else None)
        ax.set(title=title, xlabel="step", ylabel="training loss")
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_roc(scores: dict[str, np.ndarray], report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    labels = scores["labels"]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        if name == "labels" or report["variants"][name]["auc"] is None:  # no curve (the report says why)
            continue
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {report['variants'][name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test pairs")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_buckets(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    buckets = [name for name, _, _ in ACTIVITY_BUCKETS]
    names = [name for name, _ in _ordered(report["variants"])]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(buckets))
    for i, name in enumerate(names):
        values = [report["variants"][name]["auc_by_activity"][b] for b in buckets]
        ax.bar(x + i * width, [np.nan if v is None else v for v in values], width, label=name)
    counts = report["data"]["pairs_by_activity"]
    ax.set_xticks(x + width * (len(names) - 1) / 2, [f"{b}\n({counts[b]:,} pairs)" for b in buckets])
    lowest = min([v for n in names for v in report["variants"][n]["auc_by_activity"].values() if v] + [0.5])
    ax.set(ylabel="test AUC", ylim=(min(0.4, lowest - 0.05), 1.0),
           title="AUC by member activity (training-period applies)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)
    plt.close(fig)


def write_report(run: Run) -> Path:
    """Score every variant of `run` and write report.md, report.json and the plots; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    report, scores = evaluate(run)
    root = run.paths.root
    plots = root / PLOTS
    plot_losses(run, plots / "loss_curves.png")
    plot_roc(scores, report, plots / "roc.png")
    plot_buckets(report, plots / "auc_by_activity.png")
    if "compact" in report:
        plot_compact(report["compact"], plots / "compact.png", _save)
    # Both or neither: a full disk leaves the previous report.json and report.md whole and matching.
    atomic_write_files({root / REPORT_JSON: json_bytes(report),
                        root / REPORT_MD: report_markdown(report).encode()})
    return root / REPORT_MD


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the --out directory of `star-jax pipeline`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the run's config.yaml, e.g. --set eval.k=20 (repeatable)")


def main(args: argparse.Namespace) -> int:
    from star_jax.fileio import read_json

    run = read_run(args.run, args.overrides)
    path = write_report(run)
    print(table_markdown(read_json(path.parent / REPORT_JSON)))
    log.info(f"report: {path} (+ {REPORT_JSON}, {PLOTS}/)")
    return 0
