"""Compact LLM vectors (docs/compact.md): quality and cost of D-d store versions against full width.

    python -m benchmarks.compact --store RUN/store --data RUN/data [--gnn GNN_STORE] [--rows 8192]
        [--only "plain linear" ...]

Reads the versions `star-jax embed --dims` wrote into `--store`: `mrl` / `plain` (full width, towers
trained with and without `llm_train.matryoshka_dims`), `mrl-dD` and `plain-dD` (prefixes),
`plain-pcaD` and `plain-linD` (`--reduce linear`). `--only` measures those reductions and merges
them into the saved results (the others and the 7B rows keep their earlier run). Test AUC is
scikit-learn's on numpy cosines of the stored rows; bytes are the version's published rows
(`stored_bytes`); lookup rows/s the median of 50 batches of 1,000 random member rows
(`lookup_rate`). The 7B-shape rows write `--rows` random bf16 rows per width through
`EmbeddingWriter`. `--gnn STORE` adds the test AUC of the gnn_id_cat_llm embeddings
`star-jax gnn-embed` wrote as `gnn-<version>`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import RESULTS, machine_info
from star_jax.config import GNNConfig, StoreConfig
from star_jax.data.tables import read_labels
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter
from star_jax.store.compact import lookup_rate, stored_bytes

DIMS = (16, 32, 64, 128)
WIDE = (4096, 2048, 1024, 512)  # E5-Mistral's 4096 and its compact sizes


def _bytes(root: Path, version: str) -> int:
    return stored_bytes(EmbeddingStore.open(root, version))


def _lookup_rate(root: Path, version: str, node_type: str, seed: int = 0) -> float:
    # the same measurement as the pipeline's compact stage (batches of LOOKUP_BATCH random rows)
    return lookup_rate(EmbeddingStore.open(root, version), node_type, seed=seed)


def _auc(root: Path, version: str, pairs, cosine: bool = True) -> float:
    """AUC of the cosine (LLM vectors) or dot product (GNN embeddings, the GNN's score) of the pairs."""
    store = EmbeddingStore.open(root, version)
    m = store.lookup("member", pairs["member_id"].to_numpy())
    j = store.lookup("job", pairs["job_id"].to_numpy())
    score = np.sum(m * j, 1)
    if cosine:
        score /= np.maximum(np.linalg.norm(m, axis=1) * np.linalg.norm(j, axis=1), 1e-12)
    return float(roc_auc_score(pairs["label"].to_numpy(), score))


NAMES = {"matryoshka prefix": "mrl-d{}", "plain prefix": "plain-d{}", "plain PCA": "plain-pca{}",
         "plain linear": "plain-lin{}"}


def tiny(root: Path, data: Path, gnn: Path | None, only: list[str] | None = None) -> dict:
    """Per D: test AUC of each reduction, bytes and lookup rows/s of its version, GNN test AUC."""
    pairs = read_labels(data, "test", ["member_id", "job_id", "label"])
    names = {k: v for k, v in NAMES.items() if only is None or k in only}
    out = {}
    for d in DIMS:
        row = {}
        for label, pattern in names.items():
            version = pattern.format(d)
            if d == 128:  # full width: the parent itself (PCA to full width is a rotation of it)
                version = "mrl" if label.startswith("matryoshka") else "plain"
            if not (root / "manifests" / f"{version}.json").exists():
                continue
            row[label] = {"version": version, "test_auc": _auc(root, version, pairs),
                          "bytes": _bytes(root, version),
                          "lookup_rows_s": _lookup_rate(root, version, "member")}
            if gnn is not None and (gnn / "manifests" / f"gnn-{version}.json").exists():
                row[label]["gnn_test_auc"] = _auc(gnn, f"gnn-{version}", pairs, cosine=False)
        out[d] = row
    return out


def gnn_input_flops(gnn: GNNConfig, d: int) -> int:
    """The GNN's LLM input projections per member or job node (star_jax/gnn/model.py), 2 FLOPs per
    weight: the Dense to hidden_dim, and the LLM block's fixed map to llm_block dims (or, with
    llm_block 0, the LLM skip's Dense to out_dim)."""
    second = gnn.llm_block or (gnn.out_dim if gnn.llm_skip else 0)
    return 2 * d * (gnn.hidden_dim + second)


def wide(rows: int, seed: int = 0) -> dict:
    """Per 7B width: measured bytes and lookup rows/s of `rows` random bf16 rows, and the arithmetic."""
    gnn = GNNConfig()
    rng = np.random.default_rng(seed)
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_compact_"))
    try:
        for d in WIDE:
            x = rng.standard_normal((rows, d), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            spec = EmbeddingSpec("bench", None, "bench", 512, "last_token", d)
            measured = {}
            # The default layout (inner chunks of about 8 KiB: 1 row at 4096-d, 8 at 512-d) and
            # one-row chunks, where a random row decodes only its own bytes.
            for layout, cfg in (("default", StoreConfig()), ("chunk_rows=1", StoreConfig(chunk_rows=1))):
                where = tmp / f"d{d}-{layout}"
                w = EmbeddingWriter.open(where, "v", spec,
                                         {"member": (np.arange(rows), np.arange(rows, dtype=np.uint64))}, cfg)
                for block in w.pending_blocks("member", 8192):
                    w.write("member", block.rows, x[block.positions].astype(ml_dtypes.bfloat16))
                w.publish()
                measured[layout] = (_bytes(where, "v"), _lookup_rate(where, "v", "member", seed))
                shutil.rmtree(where)
            out[d] = {
                "raw_bytes": rows * d * 2,  # bf16
                "bytes": measured["default"][0],
                "lookup_rows_s": measured["default"][1],
                "bytes_chunk_rows_1": measured["chunk_rows=1"][0],
                "lookup_rows_s_chunk_rows_1": measured["chunk_rows=1"][1],
                "gnn_input_flops_per_node": gnn_input_flops(gnn, d),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tables(result: dict) -> str:
    """The two markdown tables of docs/compact.md."""
    lines = ["| D | reduction | store version | LLM test AUC | gnn_id_cat_llm test AUC | store bytes | "
             "lookup rows/s |", "|---:|---|---|---:|---:|---:|---:|"]
    for d, row in result["tiny"].items():
        for label, r in row.items():
            gnn = f"{r['gnn_test_auc']:.4f}" if "gnn_test_auc" in r else "not run"
            lines.append(f"| {d} | {label} | `{r['version']}` | {r['test_auc']:.4f} | {gnn} | "
                         f"{r['bytes']:,} | {r['lookup_rows_s']:,.0f} |")
    lines += ["", "| D | bf16 bytes, arithmetic | stored (zstd) | stored / arithmetic | lookup rows/s | "
              "lookup rows/s, chunk_rows=1 | GNN input FLOPs per node |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for d, r in result["wide"].items():
        lines.append(f"| {d} | {r['raw_bytes']:,} | {r['bytes']:,} | {r['bytes'] / r['raw_bytes']:.3f} | "
                     f"{r['lookup_rows_s']:,.0f} | {r['lookup_rows_s_chunk_rows_1']:,.0f} | "
                     f"{r['gnn_input_flops_per_node']:,} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """docs/compact.png: the towers' test AUC (gnn_id_cat_llm's too, where run) and the store bytes
    against D, one line per reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(result["tiny"], key=int)
    labels = sorted({label for d in dims for label in result["tiny"][d]})
    fig, (auc_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for label in labels:
        xs = [int(d) for d in dims if label in result["tiny"][d]]
        rows = [result["tiny"][str(x)][label] for x in xs]
        line, = auc_ax.plot(xs, [r["test_auc"] for r in rows], marker="o", label=label)
        bytes_ax.plot(xs, [r["bytes"] / 1e3 for r in rows], marker="o", label=label)
        gnn = [(x, r["gnn_test_auc"]) for x, r in zip(xs, rows) if "gnn_test_auc" in r]
        if gnn:
            auc_ax.plot(*zip(*gnn), marker="^", ls="--", color=line.get_color(),
                        label=f"{label}: gnn_id_cat_llm")
    for ax, name in ((auc_ax, "test AUC"), (bytes_ax, "store kB (members + jobs)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(d) for d in dims], [str(d) for d in dims])
        ax.set_xlabel("D (components kept)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    auc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="store root of the tiny run's full and compact versions")
    p.add_argument("--data", type=Path, help="the tiny run's data directory")
    p.add_argument("--gnn", type=Path, default=None, help="store root holding gnn-<version> GNN embeddings")
    p.add_argument("--rows", type=int, default=8192, help="random rows per width for the 7B-shape rows")
    p.add_argument("--out", type=Path, default=RESULTS / "compact.json")
    p.add_argument("--plot", type=Path, default=Path("docs") / "compact.png")
    p.add_argument("--replot", action="store_true", help="only redraw --plot from the results in --out")
    p.add_argument("--only", nargs="+", choices=list(NAMES), default=None,
                   help="measure only these reductions and merge them into the results in --out")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        return
    if args.store is None or args.data is None:
        p.error("--store and --data are required (unless --replot)")
    if args.only:
        result = json.loads(args.out.read_text())
        for d, row in tiny(args.store, args.data, args.gnn, args.only).items():
            result["tiny"].setdefault(str(d), {}).update(row)
        result.setdefault("machine_only", {})[", ".join(args.only)] = machine_info()
    else:
        result = {"tiny": tiny(args.store, args.data, args.gnn), "wide": wide(args.rows)}
        result["machine"] = machine_info()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    result = json.loads(args.out.read_text())  # string keys, as --replot reads them
    plot(result, args.plot)
    print(tables(result))
    print(f"machine: {result['machine']}")


if __name__ == "__main__":
    main()
