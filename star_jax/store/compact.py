"""Compact versions: a store version of D-d vectors derived from a stored full-width one.

`prefix` keeps the first D components of each row and renormalises them: the sizes a tower trained
with `llm_train.matryoshka_dims` serves. `pca` projects the centred rows onto the parent's top D
principal axes and renormalises: the post-hoc choice for towers trained without Matryoshka. The
manifest's `compact` field records the parent, D and the reduction (a PCA fit is stored with the
version and reused on refresh); rows are written through `EmbeddingWriter`, so a refresh after the
parent's texts changed writes only the changed rows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from star_jax.config import StoreConfig
from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot
from star_jax.store.layout import matrix_metadata
from star_jax.store.manifest import EmbeddingSpec, check_name
from star_jax.store.reader import EmbeddingStore
from star_jax.store.rows import read_checked
from star_jax.store.writer import EmbeddingWriter, RefreshReport
from star_jax.tracking import progress

log = logging.getLogger(__name__)

REDUCTIONS = ("prefix", "pca")
_BLOCK = 4096  # parent rows read per step while fitting


def renormalize(x: np.ndarray) -> np.ndarray:
    """Unit rows of `x` in float32 (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reduce_rows(x: np.ndarray, compact: dict, pca: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Parent rows `x` float32 [n, parent_dim] -> unit rows float32 [n, dims] (`pca`: components, mean)."""
    if compact["reduce"] == "prefix":
        return renormalize(x[:, : compact["dims"]])
    components, mean = pca
    return renormalize((np.asarray(x, np.float64) - mean) @ components.T)


def fit_pca(src: EmbeddingStore, node_types: Sequence[str], dims: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(components float64 [dims, dim], mean float64 [dim], facts) of every stored row of `node_types`.

    One joint fit, as `store migrate`'s maps: members are compared with jobs, so both go through
    the same projection. Streams d x d float64 moments; signs as scikit-learn's (`svd_flip`: the
    largest-magnitude loading of each component is positive).
    """
    d = src.dim
    n, total, gram = 0, np.zeros(d), np.zeros((d, d))
    rows = sum(src.num_rows(t) for t in node_types)
    with progress(total=rows, desc=f"fit pca {src.version}", unit="row") as bar:
        for t in node_types:
            ids = src.ids(t)
            for i in range(0, len(ids), _BLOCK):
                x = src.lookup(t, ids[i : i + _BLOCK]).astype(np.float64)
                n, total, gram = n + len(x), total + x.sum(0), gram + x.T @ x
                bar.update(len(x))
    if n <= dims:
        raise StarError(f"--dims {dims}: PCA needs more than {dims} stored rows; {src.version} has {n}")
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dims]
    components = vectors[:, order].T
    signs = np.sign(components[np.arange(dims), np.argmax(np.abs(components), axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    ratio = float(values[order].sum() / max(values.sum(), 1e-300))
    return components, mean, {"fit_rows": n, "explained_variance_ratio": ratio}


def _save_pca(r: StoreRoot, version: str, components: np.ndarray, mean: np.ndarray) -> str:
    # Under data/<version>/ but not a generation (g...): the writer's garbage collection keeps it.
    prefix = f"data/{version}/pca/fit-{time.time_ns()}"
    for name, a in (("components", components), ("mean", mean)):
        a = np.ascontiguousarray(a, np.float32)
        r.create_array(f"{prefix}/{name}", matrix_metadata(list(a.shape))).write(a).result()
    return prefix


def load_pca(r: StoreRoot, compact: dict) -> tuple[np.ndarray, np.ndarray]:
    """(components float32 [dims, parent_dim], mean float32 [parent_dim]) a PCA version was written with."""
    prefix = compact["arrays"]
    return tuple(read_checked(r.open_array(f"{prefix}/{name}"), None, f"store {r.name}: pca {name}",
                              f"{prefix}/{name}") for name in ("components", "mean"))


def _same_reduction(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("parent", "dims", "reduce"))


def write_compact(
    root: str | os.PathLike | Mapping,
    parent: str,
    version: str,
    dims: int,
    *,
    reduce: str = "prefix",
    config: StoreConfig | None = None,
    node_types: Sequence[str] | None = None,
) -> RefreshReport:
    """Write (or refresh) `version`: the `dims`-d reduction of every row of `parent`.

    `node_types` None: every type the parent stores. A PCA version keeps its first fit; refreshing
    `version` with another parent, width or reduction is refused before anything is written.
    """
    cfg = config or StoreConfig()
    check_name("--version", version)
    if reduce not in REDUCTIONS:
        raise StarError(f"--reduce {reduce!r}: expected one of {', '.join(REDUCTIONS)}")
    if version == parent:
        raise StarError(f"--version {version}: must differ from --parent (a compact version is a new one)")
    src = EmbeddingStore.open(root, parent, kvstore=cfg.kvstore)
    if src.spec.compact is not None:
        raise StarError(f"--parent {parent}: itself a compact version of {src.spec.compact['parent']}; "
                        "reduce that one")
    if not 1 <= dims < src.dim:
        raise StarError(f"--dims {dims}: must be at least 1 and below {parent}'s width {src.dim}")
    types = list(src.node_types if node_types is None else node_types)
    for t in types:
        if t not in src.node_types:
            raise StarError(f"--types {t}: not stored in {parent} (stored: {', '.join(src.node_types)})")

    r = src.store_root
    compact = {"parent": parent, "parent_dim": src.dim, "dims": dims, "reduce": reduce}
    existing = (r.read_json(f"manifests/{version}.json") or {}).get("compact")
    if existing is not None and not _same_reduction(existing, compact):
        raise StarError(f"--version {version}: already the {existing['reduce']} reduction of "
                        f"{existing['parent']} to {existing['dims']} dims; choose another name")
    pca = None
    if reduce == "pca" and existing is not None:
        compact = existing  # a refresh projects changed rows with the version's own fit
        pca = tuple(a.astype(np.float64) for a in load_pca(r, compact))
    elif reduce == "pca":
        components, mean, facts = fit_pca(src, types, dims)
        pca = (components, mean)
        compact = {**compact, **facts, "arrays": _save_pca(r, version, components, mean)}
        # Project with the float32 values that are stored, so a refresh computes the same rows.
        pca = tuple(a.astype(np.float32).astype(np.float64) for a in pca)

    spec = src.spec
    spec = EmbeddingSpec(model=spec.model, adapter=spec.adapter, tokenizer=spec.tokenizer,
                         max_len=spec.max_len, pooling=spec.pooling, dim=dims, extra=spec.extra,
                         compact=compact)
    inputs = {t: (src.ids(t), src.text_hashes(t)) for t in types}
    writer = EmbeddingWriter.open(root, version, spec, inputs, cfg)
    start = time.perf_counter()
    for t in writer.node_types:
        with progress(total=len(writer.pending(t).rows), desc=f"{reduce} {t} -> {dims}d", unit="row") as bar:
            for block in writer.pending_blocks(t):
                writer.write(t, block.rows, reduce_rows(src.lookup(t, block.ids), compact, pca))
                bar.update(len(block.rows))
    report = writer.publish()
    log.info(f"embed --dims {dims}: version {version} ({reduce} of {parent}, generation "
             f"{report.generation}): {sum(report.embedded.values()):,} rows written, "
             f"{sum(report.copied.values()):,} kept, in {time.perf_counter() - start:.1f}s")
    return report
