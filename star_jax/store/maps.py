"""Stored version maps: a linear map from a newer version onto an older one, kept with the newer.

The arrays live under `data/<new>/maps/<old>/<fit>/` and the record `maps/<new>/<old>.json`, written
last, says which fit is current. `migrate.py` fits maps; `EmbeddingStore.open(root, NEW,
map_to=OLD)` reads through one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot
from star_jax.store.layout import matrix_metadata
from star_jax.store.rows import read_checked


class VersionMap(NamedTuple):
    """x_new @ weight + bias approximates x_old."""

    weight: np.ndarray  # float32 [dim_new, dim_old]
    bias: np.ndarray  # float32 [dim_old]
    record: dict  # method, fidelity, ... as stored in maps/<new>/<old>.json

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) @ self.weight + self.bias).astype(np.float32)


def save_version_map(r: StoreRoot, new: str, old: str, vmap: VersionMap, record: dict) -> dict:
    """Store `vmap` as the map from `new` onto `old`; returns `record` with the arrays' key prefix."""
    prefix = f"data/{new}/maps/{old}/fit-{time.time_ns()}"
    r.create_array(f"{prefix}/weight", matrix_metadata(list(vmap.weight.shape))).write(vmap.weight).result()
    r.create_array(f"{prefix}/bias", matrix_metadata(list(vmap.bias.shape))).write(vmap.bias).result()
    record = {**record, "arrays": prefix}
    previous = r.read_json(f"maps/{new}/{old}.json")
    r.write_json(f"maps/{new}/{old}.json", record)  # the publish: readers switch to the new arrays here
    if previous is not None and previous.get("arrays") != prefix:
        r.delete_prefix(previous["arrays"] + "/")
    return record


def load_version_map(root: StoreRoot | str | os.PathLike | Mapping, new: str, old: str,
                     kvstore: str = "file") -> VersionMap:
    """The stored map from `new` onto `old`."""
    r = root if isinstance(root, StoreRoot) else StoreRoot(root, kvstore)
    record = r.read_json(f"maps/{new}/{old}.json")
    if record is None:
        raise StarError(f"store {r.name}: no map from version {new} onto {old}; fit one with "
                        f"`star-jax store migrate --store {r.name} --from {old} --to {new}`")
    weight, bias = (read_checked(r.open_array(f"{record['arrays']}/{name}"), None,
                                 f"store {r.name}: map {new} -> {old} {name}", f"{record['arrays']}/{name}")
                    for name in ("weight", "bias"))
    return VersionMap(weight, bias, record)


def list_maps(r: StoreRoot, new: str) -> list[dict]:
    """Records of every map stored with version `new`."""
    return [m for key in r.list(f"maps/{new}/") if (m := r.read_json(f"maps/{new}/{key}")) is not None]
