"""Versions and their manifests: `EmbeddingSpec`, reading and listing `manifests/<version>.json`.

A *version* is one embedding function: an `EmbeddingSpec` plus the storage dtype. Each refresh of
a version writes a new immutable *generation* of the node types whose texts changed and publishes
it by replacing the version's manifest, which names, per node type, the generation that holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot
from star_jax.store.layout import READ_FORMATS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class EmbeddingSpec:
    """What makes two embedding runs comparable: the same spec gives the same vector for a text.

    Give stable names or content digests (`star_jax.fileio.content_digest`) rather than paths, so
    that moving a run directory does not read as a new model.
    """

    model: str  # base model name or digest (e.g. "e5-mistral-7b-instruct")
    adapter: str | None  # LoRA adapter checkpoint (name, step or digest); None: the frozen base
    tokenizer: str
    max_len: int | dict[str, int]  # tokens, or per node type (the member and job towers differ)
    pooling: str  # "last_token" (E5) | "mean"
    dim: int
    extra: dict[str, Any] = field(default_factory=dict)  # anything else that changes the vectors
    # A compact version derived from a stored one (`star-jax embed --dims`): {"parent": version,
    # "parent_dim", "dims", "reduce": "prefix" | "pca", ...}; None (and absent from the JSON): not one.
    compact: dict[str, Any] | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        if out["compact"] is None:  # manifests of full versions read as before the field
            del out["compact"]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EmbeddingSpec:
        return cls(**{k: d[k] for k in ("model", "adapter", "tokenizer", "max_len", "pooling", "dim")},
                   extra=dict(d.get("extra", {})), compact=d.get("compact"))


def check_name(what: str, name: str) -> str:
    """`name` if it is a valid version or node type name (it becomes a key), else a `StarError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StarError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (not starting with . _ -)")
    return name


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    # Microseconds: the strings sort in time order, which orders versions.
    return datetime.now(UTC).isoformat(timespec="microseconds")


def published_versions(r: StoreRoot) -> list[dict]:
    """The manifest of every published version, oldest first (by creation time, then name)."""
    manifests = []
    for key in r.list("manifests/"):
        if key.endswith(".json") and "/" not in key:
            m = r.read_json("manifests/" + key)
            if m is not None:
                manifests.append(m)
    return sorted(manifests, key=lambda m: (m["created"], m["version"]))


def list_versions(root: str | os.PathLike | Mapping, kvstore: str = "file") -> list[str]:
    """Published versions, oldest first (by first publication time, then name)."""
    return [m["version"] for m in published_versions(StoreRoot(root, kvstore))]


def read_manifest(r: StoreRoot, version: str) -> dict:
    """The published manifest of `version`; a `StarError` naming the published ones if there is none."""
    check_name("version", version)
    m = r.read_json(f"manifests/{version}.json")
    if m is None:
        names = [p["version"] for p in published_versions(r)]
        if not names:
            raise StarError(f"store not found: {r.name} (no published version under manifests/)")
        raise StarError(f"store {r.name}: unknown version {version!r}; published: {', '.join(names)}")
    return _checked(r, m, version)


def _checked(r: StoreRoot, m: dict, version: str) -> dict:
    """`m` if it is the manifest of `version` in a format this code reads, else a `StarError`."""
    if m.get("format") not in READ_FORMATS or m.get("version") != version:
        formats = " or ".join(map(str, READ_FORMATS))
        raise StarError(
            f"{r.name}/manifests/{version}.json: manifest is for version {m.get('version')!r}, "
            f"format {m.get('format')!r}; expected version {version!r}, format {formats}"
        )
    return m


def latest_manifest(r: StoreRoot) -> dict:
    """The manifest of the most recently created version."""
    published = published_versions(r)
    if not published:
        raise StarError(f"store not found: {r.name} (no published version under manifests/)")
    return _checked(r, published[-1], published[-1]["version"])


def check_compatible(where: str, manifest: dict, spec: EmbeddingSpec, dtype: str, what: str) -> None:
    """A one-line `StarError` naming the first field where `spec`/`dtype` differ from `manifest`."""
    have = manifest
    want = {**spec.to_json(), "dtype": dtype}
    for key in ("dim", "dtype", "tokenizer", "model", "adapter", "max_len", "pooling", "extra", "compact"):
        if have.get(key) != want.get(key):
            flag = "store.dtype" if key == "dtype" else f"spec.{key}"
            raise StarError(f"{where}: {flag} is {want.get(key)!r}, but the {what} has {have.get(key)!r}")
