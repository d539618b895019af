"""Version migration: fit a linear map from a new embedding version onto an older one.

Two fits, both with a bias, on the ids the two versions share: `ridge` (least squares with an L2
penalty relative to the mean feature variance) and `procrustes` (W orthogonal, from the SVD of the
centred cross-covariance). One map per version pair, fitted jointly on every shared node type.
Fidelity is the mean cosine between mapped new and old vectors, on a deterministic held-out
tenth of the shared rows and overall. The fit streams d x d float64 moments block by block.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from star_jax.errors import StarError
from star_jax.store.layout import FORMAT_VERSION
from star_jax.store.manifest import utc_now
from star_jax.store.maps import VersionMap, save_version_map
from star_jax.store.reader import EmbeddingStore
from star_jax.tracking import progress as progress_bar

METHODS = ("ridge", "procrustes")
_BLOCK = 4096  # rows read per step


class Moments(NamedTuple):
    """Sufficient statistics of paired rows for a linear least-squares fit (float64)."""

    n: int
    sum_new: np.ndarray  # [dim_new]
    sum_old: np.ndarray  # [dim_old]
    new_new: np.ndarray  # [dim_new, dim_new] sum of x_new^T x_new
    new_old: np.ndarray  # [dim_new, dim_old] sum of x_new^T x_old

    @classmethod
    def zeros(cls, dim_new: int, dim_old: int) -> Moments:
        z = np.zeros
        return cls(0, z(dim_new), z(dim_old), z((dim_new, dim_new)), z((dim_new, dim_old)))

    def add(self, x_new: np.ndarray, x_old: np.ndarray) -> Moments:
        a, b = x_new.astype(np.float64), x_old.astype(np.float64)
        return Moments(self.n + len(a), self.sum_new + a.sum(0), self.sum_old + b.sum(0),
                       self.new_new + a.T @ a, self.new_old + a.T @ b)


def solve_map(
    m: Moments, method: str = "procrustes", ridge: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, float]:
    """(weight [dim_new, dim_old], bias [dim_old], ridge alpha used) from accumulated moments."""
    _check_method(method, ridge)
    if m.n < 2:
        raise StarError(f"cannot fit a version map on {m.n} shared rows")
    mu_new, mu_old = m.sum_new / m.n, m.sum_old / m.n
    cov_nn = m.new_new - m.n * np.outer(mu_new, mu_new)
    cov_no = m.new_old - m.n * np.outer(mu_new, mu_old)
    alpha = 0.0
    if method == "ridge":
        # alpha scales with trace(cov)/dim, so `ridge` means the same at any scale (sklearn's
        # Ridge(alpha) solves the same problem).
        alpha = float(ridge * np.trace(cov_nn) / len(mu_new))
        weight = np.linalg.lstsq(cov_nn + alpha * np.eye(len(mu_new)), cov_no, rcond=None)[0]
    else:
        # W^T W = I (W W^T = I when dim_new < dim_old): it cannot shrink, stretch or overfit,
        # which suits versions that differ mostly by a rotation.
        u, _, vt = np.linalg.svd(cov_no, full_matrices=False)
        weight = u @ vt
    bias = mu_old - mu_new @ weight
    return weight, bias, alpha


def _check_method(method: str, ridge: float) -> None:
    if method not in METHODS:
        raise StarError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if ridge < 0:
        raise StarError(f"--ridge {ridge}: must be >= 0")


def holdout_mask(node_type: str, ids: np.ndarray, fraction: float) -> np.ndarray:
    """bool [n]: a deterministic `fraction` of ids (splitmix64 of the id, salted by the type)."""
    salt = np.uint64(int.from_bytes(node_type.encode()[:8].ljust(8, b"\0"), "little"))
    x = np.asarray(ids).astype(np.uint64) ^ salt
    x = (x + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)  # wraps mod 2^64 by design
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(29))
    return (x % np.uint64(1 << 20)).astype(np.float64) < fraction * (1 << 20)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _means(acc: dict[str, list]) -> dict[str, float | None]:
    return {k: (float(s / n) if n else None) for k, (s, n) in acc.items()}


def _blocks(n: int) -> range:
    return range(0, n, _BLOCK)


def fit_version_map(
    root: str | os.PathLike | Mapping,
    old: str,
    new: str,
    *,
    method: str = "procrustes",
    ridge: float = 1e-3,
    node_types: Sequence[str] | None = None,
    holdout: float = 0.1,
    kvstore: str = "file",
) -> dict:
    """Fit, store and return the map from version `new` onto version `old` (its JSON record)."""
    _check_method(method, ridge)
    if old == new:
        raise StarError(f"--from and --to name the same version {old!r}")
    if not 0.0 <= holdout < 1.0:
        raise StarError(f"--holdout {holdout}: expected a fraction in [0, 1)")
    src = EmbeddingStore.open(root, new, kvstore=kvstore)
    dst = EmbeddingStore.open(root, old, kvstore=kvstore)
    shared_types = [t for t in src.node_types if t in dst.node_types]
    for t in node_types or []:
        if t not in shared_types:
            raise StarError(f"--node-types {t}: not stored in both {old} and {new} "
                            f"(shared: {', '.join(shared_types) or 'none'})")
    # One joint map, not one per type: members are scored against jobs by comparing vectors, and a
    # single map keeps those cross-type comparisons consistent.
    types = list(node_types or shared_types)
    shared = {t: np.intersect1d(src.ids(t), dst.ids(t)) for t in types}
    if sum(len(s) for s in shared.values()) < 2:
        raise StarError(f"store {src.root}: versions {old} and {new} share fewer than 2 ids; nothing to fit")
    held = {t: holdout_mask(t, shared[t], holdout) for t in types}

    total = sum(len(s) for s in shared.values())
    bar = progress_bar(total=2 * total, desc=f"store migrate {new} -> {old} ({method})", unit="row",
                       unit_scale=True)
    moments = Moments.zeros(src.dim, dst.dim)
    for t in types:  # pass 1: moments of the training rows
        ids = shared[t][~held[t]]
        for i in _blocks(len(ids)):
            moments = moments.add(src.lookup(t, ids[i : i + _BLOCK]), dst.lookup(t, ids[i : i + _BLOCK]))
        bar.update(len(shared[t]))
    weight, bias, alpha = solve_map(moments, method, ridge)
    vmap = VersionMap(weight.astype(np.float32), bias.astype(np.float32), {})

    per_type = {}
    sums = {"holdout": [0.0, 0], "overall": [0.0, 0], "unmapped": [0.0, 0]}
    for t in types:  # pass 2: fidelity
        acc = {k: [0.0, 0] for k in sums}
        for i in _blocks(len(shared[t])):
            ids, h = shared[t][i : i + _BLOCK], held[t][i : i + _BLOCK]
            x_new, x_old = src.lookup(t, ids), dst.lookup(t, ids)
            cos = _cosine(vmap.apply(x_new), x_old)
            acc["overall"][0] += cos.sum()
            acc["overall"][1] += len(cos)
            acc["holdout"][0] += cos[h].sum()
            acc["holdout"][1] += int(h.sum())
            if src.dim == dst.dim:
                raw = _cosine(x_new, x_old)
                acc["unmapped"][0] += raw.sum()
                acc["unmapped"][1] += len(raw)
            bar.update(len(ids))
        for k, (s, n) in acc.items():
            sums[k][0] += s
            sums[k][1] += n
        per_type[t] = _means(acc) | {"rows": len(shared[t])}
    bar.close()

    record = {
        "format": FORMAT_VERSION,
        "source": new,
        "target": old,
        "method": method,
        "ridge": ridge if method == "ridge" else None,
        "ridge_alpha": alpha if method == "ridge" else None,
        "node_types": types,
        "dim_source": src.dim,
        "dim_target": dst.dim,
        "rows_fit": int(moments.n),
        "rows_holdout": int(sum(h.sum() for h in held.values())),
        "fidelity": _means(sums) | {"per_type": per_type},
        "generations": {"source": src.manifest["generation"], "target": dst.manifest["generation"]},
        "created": utc_now(),
    }
    return save_version_map(src.store_root, new, old, vmap, record)
