"""Compact versions: a store version of D-d vectors derived from a stored full-width one.

`prefix` keeps the first D components of each row and renormalises them: the sizes a tower trained
with `llm_train.matryoshka_dims` serves. `pca` projects the centred rows onto the parent's top D
principal axes; `linear` learns a D x dim map of the centred rows from the train pairs (in-batch
InfoNCE on renormalised outputs, started from PCA): the post-hoc choices for towers trained without
Matryoshka. The manifest's `compact` field records the parent, D and the reduction (a fitted map
is stored with the version and reused on refresh); rows go through `EmbeddingWriter`, so a refresh
after the parent's texts changed writes only the changed rows. `stored_bytes` and `lookup_rate`
measure what a version costs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.config import StoreConfig, fingerprint
from star_jax.data.tables import read_labels
from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot
from star_jax.store.layout import gen_dir, matrix_metadata
from star_jax.store.manifest import EmbeddingSpec, check_name
from star_jax.store.reader import EmbeddingStore
from star_jax.store.rows import read_checked
from star_jax.store.writer import EmbeddingWriter, RefreshReport
from star_jax.tracking import progress

log = logging.getLogger(__name__)

REDUCTIONS = ("prefix", "pca", "linear")
_BLOCK = 4096  # parent rows read per step while fitting
LOOKUP_BATCH, LOOKUP_BATCHES = 1000, 50  # `lookup_rate`: random rows per call, calls timed


class LinearFit(NamedTuple):
    """How `--reduce linear` fits its map (recorded in the manifest)."""

    seed: int = 0  # the batches and the start's perturbation
    steps: int = 300
    batch_size: int = 256  # pairs per step; the other pairs' jobs are the negatives
    lr: float = 1e-2  # Adam
    scale: float = 20.0  # logit scale of the cosines (temperature 0.05)
    max_pairs: int = 16_384  # pairs held in memory (at 4096-d float32 both sides: 512 MiB)


DEFAULT_LINEAR = LinearFit()


def renormalize(x: np.ndarray) -> np.ndarray:
    """Unit rows of `x` in float32 (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reduce_rows(x: np.ndarray, compact: dict, fit: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Parent rows `x` float32 [n, parent_dim] -> unit rows float32 [n, dims] (`fit`: the pca or
    linear map's (components [dims, parent_dim], mean [parent_dim]))."""
    if compact["reduce"] == "prefix":
        return renormalize(x[:, : compact["dims"]])
    components, mean = fit
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


def train_pairs(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(member ids, job ids) int64 [n]: the positive pairs of the labels' train split."""
    pairs = read_labels(data_dir, "train", ["member_id", "job_id", "label"])
    pairs = pairs[pairs["label"] > 0]
    return pairs["member_id"].to_numpy(np.int64), pairs["job_id"].to_numpy(np.int64)


def fit_linear(src: EmbeddingStore, node_types: Sequence[str], dims: int,
               pairs: tuple[np.ndarray, np.ndarray], fit: LinearFit = DEFAULT_LINEAR
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(components float64 [dims, dim], mean float64 [dim], facts): a map of the centred rows whose
    renormalised outputs score the positive `pairs` (member ids, job ids) above in-batch negatives.

    Starts from the PCA of `node_types`' rows (as `fit_pca`) plus a small seeded perturbation, then
    `fit.steps` Adam steps of symmetric in-batch InfoNCE; deterministic given `fit.seed`.
    """
    members, jobs = (np.asarray(a, np.int64) for a in pairs)
    known = np.isin(members, src.ids("member")) & np.isin(jobs, src.ids("job"))
    members, jobs = members[known], jobs[known]
    if len(members) < 2:
        raise StarError(f"--reduce linear: {len(members)} train pairs with both ids stored in {src.version}; "
                        "it needs the labels' positive train pairs (--data)")
    rng = np.random.default_rng(fit.seed)
    if len(members) > fit.max_pairs:
        keep = np.sort(rng.choice(len(members), fit.max_pairs, replace=False))
        members, jobs = members[keep], jobs[keep]
    start, mean, _ = fit_pca(src, node_types, dims)
    # The perturbation breaks PCA's symmetries: a direction PCA dropped gets a gradient at once.
    w0 = start + 0.01 * rng.standard_normal(start.shape) / np.sqrt(start.shape[1])
    m = jnp.asarray(src.lookup("member", members) - mean, jnp.float32)
    j = jnp.asarray(src.lookup("job", jobs) - mean, jnp.float32)

    def loss_fn(w, rows):
        zm, zj = m[rows] @ w.T, j[rows] @ w.T
        zm = zm / jnp.maximum(jnp.linalg.norm(zm, axis=1, keepdims=True), 1e-12)
        zj = zj / jnp.maximum(jnp.linalg.norm(zj, axis=1, keepdims=True), 1e-12)
        logits = fit.scale * zm @ zj.T
        target = jnp.arange(len(rows))
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, target).mean())

    opt = optax.adam(fit.lr)

    @jax.jit
    def step(w, state, rows):
        loss, grad = jax.value_and_grad(loss_fn)(w, rows)
        updates, state = opt.update(grad, state, w)
        return optax.apply_updates(w, updates), state, loss

    w = jnp.asarray(w0, jnp.float32)
    state, losses = opt.init(w), []
    batch = min(fit.batch_size, len(members))
    with progress(total=fit.steps, desc=f"fit linear {src.version} -> {dims}d", unit="step") as bar:
        for _ in range(fit.steps):
            w, state, loss = step(w, state, jnp.asarray(rng.choice(len(members), batch, replace=False)))
            losses.append(float(loss))
            bar.update(1)
    facts = {"fit_pairs": int(len(members)), "pairs_digest": fingerprint(members.tolist(), jobs.tolist()),
             **fit._asdict(), "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6)}
    return np.asarray(w, np.float64), mean, facts


def stored_bytes(store: EmbeddingStore) -> int:
    """Bytes of the published rows of `store`'s version: every object of each node type's current
    generation (vectors, ids and text hashes, as compressed on the store; not a fitted map)."""
    r, total = store.store_root, 0
    local = r.spec.get("driver") == "file"
    for t in store.node_types:
        prefix = f"{gen_dir(store.version, store.manifest['node_types'][t]['generation'])}/{t}/"
        for key in r.list(prefix):
            if local:  # a stat, not a read
                total += os.path.getsize(os.path.join(r.spec["path"], prefix, key))
            else:
                total += len(r.kv.read(prefix + key).result().value)
    return total


def lookup_rate(store: EmbeddingStore, node_type: str = "member", *, batch: int = LOOKUP_BATCH,
                batches: int = LOOKUP_BATCHES, seed: int = 0) -> float:
    """Rows per second of `store.lookup` on `batch` distinct random stored ids: the median of
    `batches` timed calls (seeded), after one untimed call that opens the arrays."""
    ids = store.ids(node_type)
    rng = np.random.default_rng(seed)
    queries = [rng.choice(ids, min(batch, len(ids)), replace=False) for _ in range(batches)]
    store.lookup(node_type, queries[0][:10])
    rates = []
    for q in queries:  # the median call: on shared cores a mean would carry other processes' bursts
        t0 = time.perf_counter()
        store.lookup(node_type, q)
        rates.append(len(q) / max(time.perf_counter() - t0, 1e-9))
    return float(np.median(rates))


def _save_map(r: StoreRoot, version: str, kind: str, components: np.ndarray, mean: np.ndarray) -> str:
    # Under data/<version>/ but not a generation (g...): the writer's garbage collection keeps it.
    prefix = f"data/{version}/{kind}/fit-{time.time_ns()}"
    for name, a in (("components", components), ("mean", mean)):
        a = np.ascontiguousarray(a, np.float32)
        r.create_array(f"{prefix}/{name}", matrix_metadata(list(a.shape))).write(a).result()
    return prefix


def load_map(r: StoreRoot, compact: dict) -> tuple[np.ndarray, np.ndarray]:
    """(components float32 [dims, parent_dim], mean float32 [parent_dim]) a pca or linear version was
    written with."""
    prefix, kind = compact["arrays"], compact["reduce"]
    return tuple(read_checked(r.open_array(f"{prefix}/{name}"), None, f"store {r.name}: {kind} {name}",
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
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    linear: LinearFit = DEFAULT_LINEAR,
) -> RefreshReport:
    """Write (or refresh) `version`: the `dims`-d reduction of every row of `parent`.

    `node_types` None: every type the parent stores. `pairs` (member ids, job ids; `train_pairs`)
    and `linear`: what `reduce="linear"` fits on. A pca or linear version keeps its first fit;
    refreshing `version` with another parent, width or reduction is refused before anything is written.
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
    fit = None
    if reduce != "prefix" and existing is not None:
        compact = existing  # a refresh projects changed rows with the version's own fit
        fit = tuple(a.astype(np.float64) for a in load_map(r, compact))
    elif reduce != "prefix":
        if reduce == "linear" and pairs is None:
            raise StarError("--reduce linear: needs the train pairs (--data, or data.dir)")
        components, mean, facts = (fit_pca(src, types, dims) if reduce == "pca"
                                   else fit_linear(src, types, dims, pairs, linear))
        compact = {**compact, **facts, "arrays": _save_map(r, version, reduce, components, mean)}
        # Project with the float32 values that are stored, so a refresh computes the same rows.
        fit = tuple(a.astype(np.float32).astype(np.float64) for a in (components, mean))

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
                writer.write(t, block.rows, reduce_rows(src.lookup(t, block.ids), compact, fit))
                bar.update(len(block.rows))
    report = writer.publish()
    log.info(f"embed --dims {dims}: version {version} ({reduce} of {parent}, generation "
             f"{report.generation}): {sum(report.embedded.values()):,} rows written, "
             f"{sum(report.copied.values()):,} kept, in {time.perf_counter() - start:.1f}s")
    return report
