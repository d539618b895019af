"""The version-migration experiment: does a linear map keep a V1-trained downstream model working on V2?

STAR keeps downstream consumers working across LLM embedding versions with a linear map from the
new version onto the old one (arXiv 2507.09797; docs/architecture.md, "Version management"). The
paper gives no numbers for it, so `run_migration_experiment` measures it on two versions V1 and V2
of one store: the fidelity of each map V2 -> V1 (`star_jax.store.fit_version_map`), and the test
AUC of a ranker fitted on V1 when fed V1, V2 unmapped, V2 mapped, or refitted on V2
(docs/pipeline.md, "The migration experiment").

    result = run_migration_experiment(store_root, v1, v2, data_dir)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from star_jax.data.tables import read_labels
from star_jax.errors import StarError
from star_jax.fileio import atomic_write_text
from star_jax.metrics import auc
from star_jax.store import EmbeddingStore, fit_version_map
from star_jax.store.migrate import METHODS

V1, UNMAPPED, REFIT = "v1", "v2_unmapped", "v2_refit"
ROW_NAMES = {V1: "V1 (the ranker's own version)", UNMAPPED: "V2 unmapped, in V1's place",
             REFIT: "V2, ranker refitted on V2"}


def _pairs(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = read_labels(data_dir, split, ["member_id", "job_id", "label"])
    labels = df["label"].to_numpy().astype(np.int64)
    if len(np.unique(labels)) < 2:
        found = sorted(set(labels.tolist()))
        raise StarError(f"{os.fspath(data_dir)}: the {split} pairs need both labels (0 and 1) for the "
                        f"migration experiment; found {len(labels)} pairs, labels {found}")
    return df["member_id"].to_numpy(), df["job_id"].to_numpy(), labels


def pair_features(store: EmbeddingStore, member_ids: np.ndarray, job_ids: np.ndarray) -> np.ndarray:
    """float32 [n, dim]: member ⊙ job of each pair, read from `store` (mapped when opened with map_to)."""
    return store.lookup("member", member_ids) * store.lookup("job", job_ids)


def fit_ranker(features: np.ndarray, labels: np.ndarray, *, C: float = 1.0, seed: int = 0) -> Any:
    """The downstream model: standardisation + L2 logistic regression (a scikit-learn Pipeline).

    It stands in for the rankers that consume STAR's embeddings.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    return model.fit(features, labels)


def run_migration_experiment(
    store_root: str | os.PathLike | Mapping,
    v1: str,
    v2: str,
    data_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = METHODS,
    ridge: float = 1e-3,
    holdout: float = 0.1,
    C: float = 1.0,
    kvstore: str = "file",
    seed: int = 0,
) -> dict:
    """Map `v2` onto `v1` with each of `methods`, and score a V1-fitted ranker on every variant.

    Returns plain JSON data: `fidelity` and `auc` keyed by `v1`, `v2_unmapped`, `v2_<method>`
    (and `v2_refit` for AUC), the map records' details under `maps`, the method left stored under
    `stored_map`, and the pair counts. A fidelity is a mean cosine to V1: held-out rows for mapped
    versions, all shared rows for the unmapped one (nothing was fitted on them).
    """
    methods = list(methods)
    if not methods or any(m not in METHODS for m in methods):
        raise StarError(f"methods {methods}: expected a non-empty subset of {', '.join(METHODS)}")
    train_m, train_j, train_y = _pairs(data_dir, "train")
    test_m, test_j, test_y = _pairs(data_dir, "test")
    old = EmbeddingStore.open(store_root, v1, kvstore=kvstore)
    new = EmbeddingStore.open(store_root, v2, kvstore=kvstore)

    ranker = fit_ranker(pair_features(old, train_m, train_j), train_y, C=C, seed=seed)
    score = lambda store: auc(test_y, ranker.decision_function(pair_features(store, test_m, test_j)))
    aucs: dict[str, float | None] = {V1: score(old)}
    fidelity: dict[str, float | None] = {V1: 1.0, UNMAPPED: None}
    aucs[UNMAPPED] = score(new) if new.dim == old.dim else None  # unmapped needs V1's width

    maps = {}
    # A map is fitted on node embeddings only, never on labels, so fitting it on every shared node
    # leaks no test label.
    for method in methods:
        record = fit_version_map(store_root, v1, v2, method=method, ridge=ridge, holdout=holdout,
                                 kvstore=kvstore)
        mapped = EmbeddingStore.open(store_root, v2, map_to=v1, kvstore=kvstore)
        name = f"v2_{method}"
        aucs[name] = score(mapped)
        fidelity[name] = record["fidelity"]["holdout"]
        fidelity[UNMAPPED] = record["fidelity"]["unmapped"]
        maps[method] = {k: record[k] for k in ("ridge_alpha", "rows_fit", "rows_holdout")}
        maps[method]["fidelity"] = {k: record["fidelity"][k] for k in ("holdout", "overall")}
    best = max(methods, key=lambda m: fidelity[f"v2_{m}"] if fidelity[f"v2_{m}"] is not None else -np.inf)
    # The map fitted last stays stored with V2 (`EmbeddingStore.open(root, V2, map_to=V1)` reads
    # through it): leave the best one there.
    if best != methods[-1]:
        fit_version_map(store_root, v1, v2, method=best, ridge=ridge, holdout=holdout, kvstore=kvstore)

    # What retraining the consumer would give; no upper bound: a ranker class that fits V1's axes
    # well may fit V2's worse.
    refit = fit_ranker(pair_features(new, train_m, train_j), train_y, C=C, seed=seed)
    aucs[REFIT] = auc(test_y, refit.decision_function(pair_features(new, test_m, test_j)))
    return {
        "v1": v1,
        "v2": v2,
        "store": old.root,
        "ranker": "logistic regression on standardised member*job features, fitted on V1's train pairs",
        "pairs": {"train": len(train_y), "test": len(test_y)},
        "dims": {"v1": old.dim, "v2": new.dim},
        "fidelity": fidelity,
        "auc": aucs,
        "maps": maps,
        "stored_map": best,
    }


def _cell(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def migration_table(result: dict) -> str:
    """The experiment as a markdown table: one row per embedding fed to the V1-fitted ranker."""
    names = [V1, UNMAPPED, *[k for k in result["auc"] if k.startswith("v2_") and k not in (UNMAPPED, REFIT)],
             REFIT]
    lines = [
        f"Version migration: V2 `{result['v2']}` mapped onto V1 `{result['v1']}` "
        f"({result['pairs']['train']:,} train / {result['pairs']['test']:,} test pairs; "
        f"map stored with V2: {result['stored_map']}).",
        "",
        "| embeddings fed to the ranker | fidelity (mean cosine to V1) | test AUC |",
        "| --- | ---: | ---: |",
    ]
    for name in names:
        label = ROW_NAMES.get(name) or f"V2 mapped onto V1 ({name.removeprefix('v2_')})"
        fid, auc_ = result["fidelity"].get(name), result["auc"].get(name)
        lines.append(f"| {label} | {_cell(fid)} | {_cell(auc_)} |")
    lines += [
        "",
        "The ranker is fitted once, on V1, except in the last row. Fidelity of a mapped version is "
        "measured on held-out rows; the unmapped one on every shared row.",
    ]
    return "\n".join(lines) + "\n"


def write_migration_report(result: dict, path: str | os.PathLike) -> None:
    """Write `migration_table(result)` to `path` (atomically)."""
    atomic_write_text(path, migration_table(result))
