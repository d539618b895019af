"""The on-disk data contract (docs/data_format.md): `schema.json` and the `Schema` it describes.

A data directory holds `schema.json` (node types, relations, where the labels are) and Parquet
tables of nodes, edges and labelled pairs. Relations are directed `src_type -> dst_type` as stored
(the graph builder adds each reverse as `<name>_rev`); `kind` separates attribute edges
(member -> skill) from interaction edges (member -> job applies), which only ever come from the
training period.

    write_schema("DATA_DIR", default_schema())
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from star_jax.errors import StarError

SCHEMA_FILE = "schema.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
LABEL_COLUMNS = {
    "member_id": "int64", "job_id": "int64", "label": "int8", "timestamp": "int64", "split": "string",
}


@dataclass(frozen=True)
class NodeTypeSpec:
    table: str  # path relative to the data directory
    text: bool = False  # has a `text` column (embedded by the LLM towers)
    categorical: tuple[str, ...] = ()  # string columns embedded as categorical features


@dataclass(frozen=True)
class RelationSpec:
    table: str
    src: str  # node type of `src`
    dst: str  # node type of `dst`
    kind: str = "attribute"  # attribute | interaction
    weight: bool = False  # has a float32 `weight` column
    timestamp: bool = False  # has an int64 `timestamp` column (seconds)


@dataclass(frozen=True)
class Schema:
    node_types: dict[str, NodeTypeSpec]
    relations: dict[str, RelationSpec]
    labels: str = "labels/pairs.parquet"
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # free-form provenance (generator, seed, scale, ...)

    def to_json(self) -> dict:
        return asdict(self)


def default_schema() -> Schema:
    """The job-marketplace schema the synthetic generator writes (LinkSAGE's, without positions)."""
    profile = ("seniority", "location", "industry")
    nodes = {
        "member": NodeTypeSpec("nodes/member.parquet", text=True, categorical=profile),
        "job": NodeTypeSpec("nodes/job.parquet", text=True, categorical=profile),
        "company": NodeTypeSpec("nodes/company.parquet", categorical=("industry", "size")),
        "skill": NodeTypeSpec("nodes/skill.parquet"),
        "title": NodeTypeSpec("nodes/title.parquet", categorical=("seniority",)),
    }
    rel = {
        "member_skill": RelationSpec("edges/member_skill.parquet", "member", "skill"),
        "member_title": RelationSpec("edges/member_title.parquet", "member", "title"),
        "member_company": RelationSpec("edges/member_company.parquet", "member", "company"),
        "job_skill": RelationSpec("edges/job_skill.parquet", "job", "skill"),
        "job_title": RelationSpec("edges/job_title.parquet", "job", "title"),
        "job_company": RelationSpec("edges/job_company.parquet", "job", "company"),
        "member_applied": RelationSpec(
            "edges/member_applied.parquet", "member", "job", kind="interaction", timestamp=True
        ),
    }
    return Schema(nodes, rel)


def read_schema(data_dir: str | os.PathLike) -> Schema:
    path = os.path.join(os.fspath(data_dir), SCHEMA_FILE)
    if not os.path.isdir(data_dir):
        raise StarError(f"data directory not found: {data_dir}")
    if not os.path.isfile(path):
        raise StarError(f"{path}: missing (every data directory needs one; see docs/data_format.md)")
    try:
        with open(path) as f:
            raw = json.load(f)
        nodes = {k: NodeTypeSpec(v["table"], bool(v.get("text", False)), tuple(v.get("categorical", ())))
                 for k, v in raw["node_types"].items()}
        rels = {k: RelationSpec(v["table"], v["src"], v["dst"], v.get("kind", "attribute"),
                                bool(v.get("weight", False)), bool(v.get("timestamp", False)))
                for k, v in raw["relations"].items()}
        schema = Schema(nodes, rels, raw.get("labels", "labels/pairs.parquet"),
                        int(raw.get("format_version", FORMAT_VERSION)), dict(raw.get("extra", {})))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise StarError(f"{path}: malformed schema ({type(e).__name__}: {e})") from None
    for name, r in schema.relations.items():
        for end in (r.src, r.dst):
            if end not in schema.node_types:
                raise StarError(f"{path}: relations.{name}: unknown node type {end!r}")
        if r.kind not in ("attribute", "interaction"):
            raise StarError(f"{path}: relations.{name}.kind: {r.kind!r} is not attribute or interaction")
    for required in ("member", "job"):
        if required not in schema.node_types or not schema.node_types[required].text:
            raise StarError(f"{path}: node_types.{required}: required, with text: true")
    return schema


def write_schema(data_dir: str | os.PathLike, schema: Schema) -> None:
    from star_jax.fileio import atomic_write_json

    atomic_write_json(os.path.join(os.fspath(data_dir), SCHEMA_FILE), schema.to_json())
