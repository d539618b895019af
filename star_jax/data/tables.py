"""Readers for the Parquet tables of a data directory (docs/data_format.md).

Every reader reads only the requested columns and returns a pandas DataFrame with the contract's
canonical types (docs/data_format.md, "Column types"; strings as pandas' Arrow-backed string dtype),
whatever compatible types the files hold; `arrow_table` gives the same data as a pyarrow Table. A
table is one Parquet file or a directory of them, read in sorted file order. The readers do not
validate: stages call `star_jax.data.validate.check_data` first.

    members = read_nodes("DATA_DIR", "member", ["id", "text"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from star_jax.data.schema import LABEL_COLUMNS, SPLITS, NodeTypeSpec, RelationSpec, read_schema
from star_jax.errors import StarError

# Canonical column types: int64 | int8 | float32 | string | timestamp (int64 seconds).
_ARROW = {
    "int64": pa.int64(),
    "int8": pa.int8(),
    "float32": pa.float32(),
    "string": pa.string(),
    "timestamp": pa.int64(),
}


def node_columns(spec: NodeTypeSpec) -> dict[str, str]:
    """Column -> canonical type of a node table."""
    cols = {"id": "int64"}
    if spec.text:
        cols["text"] = "string"
    cols.update({c: "string" for c in spec.categorical})
    return cols


def edge_columns(spec: RelationSpec) -> dict[str, str]:
    """Column -> canonical type of an edge table."""
    cols = {"src": "int64", "dst": "int64"}
    if spec.weight:
        cols["weight"] = "float32"
    if spec.timestamp:
        cols["timestamp"] = "timestamp"
    return cols


def label_columns() -> dict[str, str]:
    """Column -> canonical type of the labelled-pairs table."""
    return {c: ("timestamp" if c == "timestamp" else t) for c, t in LABEL_COLUMNS.items()}


def compatible(arrow_type: pa.DataType, kind: str) -> bool:
    """Whether a stored Arrow type converts losslessly enough to the canonical `kind`."""
    t = arrow_type
    if kind in ("int64", "int8"):
        ok = pa.types.is_integer(t) and t != pa.uint64()
        return ok or (kind == "int8" and pa.types.is_boolean(t))
    if kind == "timestamp":
        return (pa.types.is_integer(t) and t != pa.uint64()) or pa.types.is_timestamp(t)
    if kind == "float32":
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if kind == "string":
        if pa.types.is_dictionary(t):
            t = t.value_type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    raise ValueError(kind)


def type_name(kind: str) -> str:
    """How a canonical kind is spelled in messages and in docs/data_format.md."""
    return {"timestamp": "int64 (seconds) or timestamp", "string": "string"}.get(kind, kind)


def canonical(column: pa.ChunkedArray | pa.Array, kind: str) -> pa.ChunkedArray | pa.Array:
    """Cast one stored column to its canonical type (Arrow timestamps become int64 seconds)."""
    if kind == "timestamp" and pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("s", tz=column.type.tz), safe=False)
    return column.cast(_ARROW[kind])


class IdIndex:
    """Row positions of node ids: `find(x)` maps ids to their index in `sorted_ids`.

    Exported ids are usually compact (0..n-1 or close), so a direct lookup table answers in one
    gather; sparse ids (hashes, say) fall back to Arrow's hash lookup. Both are several times faster
    than a binary search over 30M edge endpoints.
    """

    def __init__(self, sorted_ids: np.ndarray):  # sorted, unique, int64
        self.ids = sorted_ids
        n = len(sorted_ids)
        self._lo = int(sorted_ids[0]) if n else 0
        span = int(sorted_ids[-1]) - self._lo + 1 if n else 0
        self._table: np.ndarray | None = None
        self._set: pa.Array | None = None
        if n and not (self._lo == 0 and span == n):
            if span <= 4 * n + (1 << 20):
                # int32 halves the table, so more of it stays in cache during the random gathers.
                self._table = np.full(span, -1, np.int32 if n < 2**31 else np.int64)
                self._table[sorted_ids - self._lo] = np.arange(n)
            else:
                self._set = pa.array(sorted_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, position in `sorted_ids`, 0 where not found) of each of `x`."""
        n = len(self.ids)
        if n == 0:
            return np.zeros(len(x), bool), np.zeros(len(x), np.int64)
        if self._set is not None:
            pos = pc.index_in(x, value_set=self._set)
            return pos.is_valid().to_numpy(zero_copy_only=False), pos.fill_null(0).to_numpy().astype(np.int64)
        hi = self._lo + n - 1 if self._table is None else self._lo + len(self._table) - 1
        inside = (x >= self._lo) & (x <= hi)
        offset = np.where(inside, x - self._lo, 0)
        if self._table is None:  # dense 0..n-1
            return inside, offset
        pos = self._table[offset]
        found = inside & (pos >= 0)
        return found, np.where(found, pos, 0).astype(np.int64)


def isin(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool mask of `x` members of `values` (a hash lookup: no sort of either array)."""
    return pc.is_in(x, value_set=pa.array(values)).to_numpy(zero_copy_only=False)


def table_path(data_dir: str | os.PathLike, rel_path: str) -> str:
    return os.path.join(os.fspath(data_dir), rel_path)


def open_table(data_dir: str | os.PathLike, rel_path: str) -> pads.Dataset:
    """The Parquet file or directory `rel_path` of `data_dir` as a lazy pyarrow dataset."""
    path = table_path(data_dir, rel_path)
    if not os.path.exists(path):
        raise StarError(f"{rel_path}: table missing from {os.fspath(data_dir)}")
    try:
        return pads.dataset(path, format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise StarError(f"{rel_path}: not readable as Parquet: {str(e).splitlines()[0]}") from None


def arrow_table(
    data_dir: str | os.PathLike, rel_path: str, expected: dict[str, str], columns: Sequence[str] | None = None
) -> pa.Table:
    """Read `columns` (default: all of `expected`) of one table, cast to their canonical types."""
    names = list(expected) if columns is None else list(columns)
    for c in names:
        if c not in expected:
            raise StarError(f"{rel_path}: unknown column {c!r}; the contract has {', '.join(expected)}")
    dataset = open_table(data_dir, rel_path)
    for c in names:
        if c not in dataset.schema.names:
            raise StarError(f"{rel_path}: column {c!r} missing")
        if not compatible(dataset.schema.field(c).type, expected[c]):
            raise StarError(
                f"{rel_path}: column {c!r} has type {dataset.schema.field(c).type}, "
                f"expected {type_name(expected[c])}"
            )
    table = dataset.to_table(columns=names)
    try:
        return pa.table({c: canonical(table[c], expected[c]) for c in names})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StarError(
            f"{rel_path}: cannot convert to the contract's types: {str(e).splitlines()[0]}"
        ) from None


def read_nodes(
    data_dir: str | os.PathLike, node_type: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Node table of `node_type`: `id`, `text` (members and jobs) and its categorical columns."""
    schema = read_schema(data_dir)
    if node_type not in schema.node_types:
        raise StarError(f"unknown node type {node_type!r}; schema.json has {', '.join(schema.node_types)}")
    spec = schema.node_types[node_type]
    return arrow_table(data_dir, spec.table, node_columns(spec), columns).to_pandas()


def read_edges(
    data_dir: str | os.PathLike, relation: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Edge table of `relation`: `src`, `dst` and, where the schema declares them, `weight`, `timestamp`."""
    schema = read_schema(data_dir)
    if relation not in schema.relations:
        raise StarError(f"unknown relation {relation!r}; schema.json has {', '.join(schema.relations)}")
    spec = schema.relations[relation]
    return arrow_table(data_dir, spec.table, edge_columns(spec), columns).to_pandas()


def read_labels(
    data_dir: str | os.PathLike, split: str | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Labelled (member, job) pairs, all or those of one split, in file order (index reset)."""
    schema = read_schema(data_dir)
    if split is not None and split not in SPLITS:
        raise StarError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    names = list(label_columns()) if columns is None else list(columns)
    table = arrow_table(data_dir, schema.labels, label_columns(), sorted(set(names) | {"split"}))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table.select(names).to_pandas()
