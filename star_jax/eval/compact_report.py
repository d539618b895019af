"""The report's compact-vectors section, written when `llm_train.matryoshka_dims` is set.

For the fine-tuned towers' stored version and each D of `llm_train.matryoshka_dims` (and full
width): the test AUC of the renormalised D-prefix (what `star-jax embed --dims D` stores), of a PCA
to D fitted on the version's rows (`--reduce pca`) for comparison, and the vectors' bytes at D. The
GNN fed D-d features and the lookup speed take runs of their own: benchmarks/compact.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from star_jax.metrics import auc
from star_jax.store.compact import fit_pca, renormalize


def compact_tradeoff(store: Any, member_ids: np.ndarray, job_ids: np.ndarray, labels: np.ndarray,
                     dims: list[int]) -> dict:
    """Per width D (`dims` below the stored width, then the full width): test AUC of the prefix and
    of PCA, and the stored vectors' bytes (rows x D x the store dtype's size)."""
    full = store.dim
    widths = sorted({d for d in dims if d < full})
    members, m_index = np.unique(np.asarray(member_ids, np.int64), return_inverse=True)
    jobs, j_index = np.unique(np.asarray(job_ids, np.int64), return_inverse=True)
    m, j = store.lookup("member", members), store.lookup("job", jobs)
    # PCA axes are nested: one fit to the largest D serves every smaller one.
    components, mean, facts = fit_pca(store, ["member", "job"], max(widths)) if widths else (None, None, {})
    rows = sum(store.num_rows(t) for t in ("member", "job"))
    itemsize = 2 if store.dtype == "bfloat16" else np.dtype(store.dtype).itemsize

    def pair_auc(a: np.ndarray, b: np.ndarray) -> float:
        return auc(labels, np.sum(renormalize(a)[m_index] * renormalize(b)[j_index], axis=1))

    out = []
    for d in [*widths, full]:
        row = {"dims": d, "compression": round(full / d, 2), "prefix_auc": pair_auc(m[:, :d], j[:, :d]),
               "vector_bytes": rows * d * itemsize}
        if d < full:
            proj = components[:d].T
            row["pca_auc"] = pair_auc((m - mean) @ proj, (j - mean) @ proj)
        out.append(row)
    return {"version": store.version, "dim": full, "dtype": store.dtype, "rows": rows, "widths": out,
            "pca_fit_rows": facts.get("fit_rows")}


def compact_markdown(result: dict) -> str:
    full = next(w for w in result["widths"] if w["dims"] == result["dim"])
    lines = [f"Store version `{result['version']}` ({result['dim']}-d {result['dtype']}, {result['rows']:,} "
             "member and job rows). Test AUC of the renormalised first D components (Matryoshka, "
             "`star-jax embed --dims D`) and of a PCA to D fitted on every stored row (`--reduce pca`); "
             "relative loss against full width in brackets.", "",
             "| D | compression | prefix test AUC | PCA test AUC | vector bytes |",
             "|---:|---:|---:|---:|---:|"]

    def cell(x: float | None) -> str:
        if x is None or not np.isfinite(x):
            return "n/a"
        return f"{x:.4f} ({(x - full['prefix_auc']) / full['prefix_auc'] * 100:+.2f}%)"

    for w in result["widths"]:
        pca = cell(w.get("pca_auc")) if "pca_auc" in w else "(full width)"
        lines.append(f"| {w['dims']} | {w['compression']:g}x | {cell(w['prefix_auc'])} | {pca} | "
                     f"{w['vector_bytes']:,} |")
    lines += ["", "The GNN fed D-d features and lookup rows/s need runs of their own (`star-jax embed "
              "--dims`, `train-gnn --store-version`): benchmarks/compact.py, docs/compact.md."]
    return "\n".join(lines)


def plot_compact(result: dict, path: Path, save) -> None:
    """Test AUC against D for the prefix and PCA (`save(fig, path)` writes the figure)."""
    import matplotlib.pyplot as plt

    widths = result["widths"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    pca = [w for w in widths if "pca_auc" in w] + [widths[-1]]  # both meet at full width
    ax.plot([w["dims"] for w in widths], [w["prefix_auc"] for w in widths], marker="o",
            label="prefix (Matryoshka)")
    ax.plot([w["dims"] for w in pca], [w.get("pca_auc", w["prefix_auc"]) for w in pca], marker="s",
            label="PCA")
    ax.set_xscale("log", base=2)
    ax.set_xticks([w["dims"] for w in widths], [str(w["dims"]) for w in widths])
    ax.set(xlabel="D (components kept)", ylabel="test AUC", title=f"Compact vectors of {result['version']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
    plt.close(fig)
