"""The report's compact-vectors section, written when `llm_train.matryoshka_dims` is set.

For the fine-tuned towers' stored version and each D of `llm_train.matryoshka_dims` (and full
width): the test AUC of the renormalised D-prefix (what `star-jax embed --dims D` stores), of a PCA
to D fitted on the version's rows (`--reduce pca`) for comparison, and the vectors' bytes at D.
From the pipeline's `compact` stage and the GNN stages it feeds: gnn_id_cat_llm's test AUC on the
D-d features, the compact version's store bytes and `lookup` rows/s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from star_jax.eval.runs import Run
from star_jax.metrics import auc
from star_jax.store import EmbeddingStore
from star_jax.store.compact import fit_pca, renormalize

COMPACT_STAGE = "compact"  # the pipeline stage that writes the compact versions and measures them
COMPACT_GNN = "gnn_id_cat_llm"  # the GNN variant trained again on each D's features


def compact_version(parent: str, dims: int) -> str:
    """The store version the pipeline writes for the `dims`-prefix of `parent`."""
    return f"{parent}-d{dims}"


def compact_gnn_name(dims: int) -> str:
    """The name (stage suffix, RUN_DIR/gnn/ folder) of COMPACT_GNN trained on the `dims`-d features."""
    return f"{COMPACT_GNN}_d{dims}"


def compact_tradeoff(store: Any, member_ids: np.ndarray, job_ids: np.ndarray, labels: np.ndarray,
                     dims: list[int], *, costs: dict | None = None, gnn: dict[int, Any] | None = None,
                     gnn_reason: str | None = None, costs_reason: str | None = None) -> dict:
    """Per width D (`dims` below the stored width, then the full width): test AUC of the prefix and
    of PCA, and the stored vectors' bytes (rows x D x the store dtype's size).

    `costs`: the compact stage's result (per width: version, store bytes, lookup rows/s; None: say
    why in `costs_reason`). `gnn`: per width, the stored GNN embeddings of COMPACT_GNN fed that
    width (scored by dot product, as the report scores GNN rows); a width without them says why
    (`gnn_reason`, or not run).
    """
    full = store.dim
    widths = sorted({d for d in dims if d < full})
    members, m_index = np.unique(np.asarray(member_ids, np.int64), return_inverse=True)
    jobs, j_index = np.unique(np.asarray(job_ids, np.int64), return_inverse=True)
    m, j = store.lookup("member", members), store.lookup("job", jobs)
    # PCA axes are nested: one fit to the largest D serves every smaller one.
    components, mean, facts = fit_pca(store, ["member", "job"], max(widths)) if widths else (None, None, {})
    rows = sum(store.num_rows(t) for t in ("member", "job"))
    itemsize = 2 if store.dtype == "bfloat16" else np.dtype(store.dtype).itemsize
    measured = {w["dims"]: w for w in (costs or {}).get("widths", [])}
    gnn = gnn or {}

    def pair_auc(a: np.ndarray, b: np.ndarray) -> float:
        return auc(labels, np.sum(renormalize(a)[m_index] * renormalize(b)[j_index], axis=1))

    out = []
    for d in [*widths, full]:
        row = {"dims": d, "compression": round(full / d, 2), "prefix_auc": pair_auc(m[:, :d], j[:, :d]),
               "vector_bytes": rows * d * itemsize}
        if d < full:
            proj = components[:d].T
            row["pca_auc"] = pair_auc((m - mean) @ proj, (j - mean) @ proj)
        cost = measured.get(d)
        row.update({"version": None if cost is None else cost["version"],
                    "store_bytes": None if cost is None else cost["bytes"],
                    "lookup_rows_s": None if cost is None else cost["lookup_rows_s"]})
        if d in gnn:
            g = gnn[d]
            row["gnn_version"] = g.version
            score = np.sum(g.lookup("member", members)[m_index] * g.lookup("job", jobs)[j_index], axis=1)
            row["gnn_auc"] = auc(labels, score)
        else:
            row["gnn_auc"] = None
            row["gnn_reason"] = gnn_reason or f"{COMPACT_GNN} on the {d}-d features: not run"
        out.append(row)
    return {"version": store.version, "dim": full, "dtype": store.dtype, "rows": rows, "widths": out,
            "pca_fit_rows": facts.get("fit_rows"), "gnn_variant": COMPACT_GNN,
            "costs_reason": None if costs else costs_reason or "not measured"}


def compact_section(run: Run, member_ids: np.ndarray, job_ids: np.ndarray, labels: np.ndarray) -> dict | None:
    """The compact block of `run`'s report (None: matryoshka_dims unset or no fine-tuned towers)."""
    cfg = run.cfg
    towers = run.store_version("llm_finetuned") if cfg.llm_train.matryoshka_dims else None
    if towers is None:
        return None
    kv = cfg.store.kvstore
    store = EmbeddingStore.open(towers[0], towers[1], kvstore=kv)
    costs, costs_reason = run.result(COMPACT_STAGE), None
    if costs is None:
        costs_reason = f"no `{COMPACT_STAGE}` stage in this run (the pipeline runs it with the field set)"
    elif costs.get("parent") != towers[1]:
        costs, costs_reason = None, f"the `{COMPACT_STAGE}` stage measured another towers version"
    gnn, reason = {}, None
    if COMPACT_GNN not in cfg.eval.variants:
        reason = f"{COMPACT_GNN} is not in eval.variants"
    else:
        full = run.store_version(COMPACT_GNN)
        if full is not None:
            gnn[store.dim] = EmbeddingStore.open(*full, kvstore=kv)
        for d in cfg.llm_train.matryoshka_dims:
            where = run.result(f"gnn-embed-{compact_gnn_name(d)}")
            if where is not None:
                gnn[d] = EmbeddingStore.open(where["store"], where["version"], kvstore=kv)
    return compact_tradeoff(store, member_ids, job_ids, labels, cfg.llm_train.matryoshka_dims, costs=costs,
                            gnn=gnn, gnn_reason=reason, costs_reason=costs_reason)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def compact_markdown(result: dict) -> str:
    full = next(w for w in result["widths"] if w["dims"] == result["dim"])
    gnn = result.get("gnn_variant", COMPACT_GNN)
    lines = [f"Store version `{result['version']}` ({result['dim']}-d {result['dtype']}, {result['rows']:,} "
             "member and job rows). Test AUC of the renormalised first D components (Matryoshka, "
             "`star-jax embed --dims D`), of a PCA to D fitted on every stored row (`--reduce pca`) and of "
             f"{gnn} trained on the D-d prefix version (dot product of its embeddings); relative loss "
             "against full width in brackets. Store bytes: the version's stored rows (vectors, ids, text "
             "hashes); lookup rows/s: the median call of `EmbeddingStore.lookup` on random member rows, "
             "measured by the run's compact stage.", "",
             f"| D | compression | prefix test AUC | PCA test AUC | {gnn} test AUC | store bytes | "
             "lookup rows/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(x: float | None, ref: float | None) -> str:
        if x is None or not np.isfinite(x):
            return "n/a"
        if ref is None or not np.isfinite(ref):
            return f"{x:.4f}"
        return f"{x:.4f} ({(x - ref) / ref * 100:+.2f}%)"

    for w in result["widths"]:
        pca = cell(w.get("pca_auc"), full["prefix_auc"]) if "pca_auc" in w else "(full width)"
        lines.append(f"| {w['dims']} | {w['compression']:g}x | {cell(w['prefix_auc'], full['prefix_auc'])} | "
                     f"{pca} | {cell(w.get('gnn_auc'), full.get('gnn_auc'))} | "
                     f"{_fmt(w.get('store_bytes'), ',')} | {_fmt(w.get('lookup_rows_s'), ',.0f')} |")
    notes = sorted({w["gnn_reason"] for w in result["widths"] if w.get("gnn_reason")})
    if result.get("costs_reason"):
        notes.append(f"store bytes, lookup rows/s: {result['costs_reason']}")
    lines += [""] + [f"- n/a: {n}" for n in notes] if notes else []
    lines += ["", "Lookup rows/s are one run on the machine that ran the stage: the direction, not a ratio "
              "to quote (docs/compact.md)."]
    return "\n".join(lines)


def plot_compact(result: dict, path: Path, save) -> None:
    """Test AUC against D for the prefix, PCA and the GNN; store bytes and lookup rows/s against D
    (`save(fig, path)` writes the figure)."""
    import matplotlib.pyplot as plt

    widths = result["widths"]
    dims = [w["dims"] for w in widths]
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(10, 3.8))
    pca = [w for w in widths if "pca_auc" in w] + [widths[-1]]  # both meet at full width
    ax.plot(dims, [w["prefix_auc"] for w in widths], marker="o", label="LLM prefix (Matryoshka)")
    ax.plot([w["dims"] for w in pca], [w.get("pca_auc", w["prefix_auc"]) for w in pca], marker="s",
            label="LLM PCA")
    gnn = [w for w in widths if w.get("gnn_auc") is not None]
    if gnn:
        ax.plot([w["dims"] for w in gnn], [w["gnn_auc"] for w in gnn], marker="^",
                label=f"{result.get('gnn_variant', COMPACT_GNN)} on the prefix")
    ax.set(ylabel="test AUC", title=f"Compact vectors of {result['version']}")
    ax.legend(fontsize=8)
    measured = [w for w in widths if w.get("store_bytes") is not None]
    if measured:
        xs = [w["dims"] for w in measured]
        cost.plot(xs, [w["store_bytes"] / 1e3 for w in measured], marker="o", color="C0")
        cost.set_ylabel("store kB", color="C0")
        rate = cost.twinx()
        rate.plot(xs, [w["lookup_rows_s"] for w in measured], marker="s", color="C1")
        rate.set_ylabel("lookup rows/s", color="C1")
        cost.set_title("store bytes and lookup rows/s")
    else:
        cost.text(0.5, 0.5, "not measured (no compact stage)", ha="center", va="center",
                  transform=cost.transAxes)
    for a in (ax, cost):
        a.set_xscale("log", base=2)
        a.set_xticks(dims, [str(d) for d in dims])
        a.set_xlabel("D (components kept)")
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
