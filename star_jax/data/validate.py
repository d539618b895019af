"""`star-jax validate DATA_DIR`: check a data directory against docs/data_format.md.

`validate(data_dir)` returns every `Fault` found, each naming the table, the column and the first
offending rows (row numbers count from 0 in file order) with their values. `check_data(data_dir)`
is what every stage that reads data calls first: it raises one `StarError` summarising the faults,
so no stage ever trains on a silently dropped or mismatched row. The checks are vectorised
(pyarrow compute and numpy on whole columns), read only the columns they need and stream the texts.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from star_jax.data.schema import SCHEMA_FILE, SPLITS, Schema, read_schema
from star_jax.data.tables import (
    IdIndex,
    canonical,
    compatible,
    edge_columns,
    isin,
    label_columns,
    node_columns,
    open_table,
    type_name,
)
from star_jax.errors import StarError
from star_jax.tracking import progress

SHOWN_ROWS = 5  # offending rows quoted per fault


@dataclass(frozen=True)
class Fault:
    """One thing wrong with a data directory, printed as one line."""

    table: str  # path relative to the data directory
    column: str | None  # None: the table as a whole
    problem: str  # what is wrong, with how many rows
    rows: tuple[int, ...] = ()  # the first offending row numbers (0-based, file order)
    values: tuple[Any, ...] = ()  # their values, aligned with `rows`

    def __str__(self) -> str:
        where = f"{self.table}: {self.column}" if self.column else self.table
        line = f"{where}: {self.problem}"
        if self.rows:
            shown = ", ".join(f"{r} ({_show(v)})" for r, v in zip(self.rows, self.values))
            line += f"; first rows: {shown}"
        return line


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return "null" if value is None else str(value)


@dataclass
class Summary:
    nodes: dict[str, int] = field(default_factory=dict)  # node type -> rows
    edges: dict[str, int] = field(default_factory=dict)  # relation -> rows
    pairs: dict[str, int] = field(default_factory=dict)  # split -> labelled pairs

    def __str__(self) -> str:
        nodes = ", ".join(f"{k} {v:,}" for k, v in self.nodes.items())
        pairs = ", ".join(f"{k} {v:,}" for k, v in self.pairs.items())
        return (
            f"{len(self.nodes)} node types ({nodes}); {len(self.edges)} relations "
            f"({sum(self.edges.values()):,} edges); labelled pairs: {pairs}"
        )


class _Unreadable(Exception):
    """A column whose Parquet pages cannot be decoded (a corrupt file whose footer still reads)."""

    def __init__(self, table: str, column: str, error: Exception):
        super().__init__(table, column)
        self.fault = Fault(table, column, f"not readable as Parquet: {' '.join(str(error).split())}")


def _batches(dataset: Any, rel: str, col: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from dataset.to_batches(columns=[col])
    except (OSError, pa.ArrowException) as e:
        raise _Unreadable(rel, col, e) from None


def _read(dataset: Any, rel: str, col: str) -> pa.ChunkedArray:
    try:
        return dataset.to_table(columns=[col])[col]
    except (OSError, pa.ArrowException) as e:
        raise _Unreadable(rel, col, e) from None


class _Checker:
    def __init__(self, data_dir: str, schema: Schema, shown: int):
        self.data_dir = data_dir
        self.schema = schema
        self.shown = shown
        self.faults: list[Fault] = []
        self.summary = Summary()
        self.ids: dict[str, IdIndex] = {}  # node type -> its ids
        self.train_end: int | None = None  # last training-label timestamp
        self.eval_pairs: np.ndarray | None = None  # dense (member, job) keys of val/test pairs
        self.eval_rows: np.ndarray | None = None  # their label-table rows
        self.show_pairs: Any = None  # label-table rows -> quoted (member, job, split)

    # -- helpers ---------------------------------------------------------------------------------

    def add(
        self, table: str, column: str | None, problem: str, rows: np.ndarray | None = None, values: Any = None
    ) -> None:
        """Record a fault. `rows`: every offending row number; `values`: the whole column they index,
        or a function from row numbers to the values to quote."""
        shown_rows = np.asarray(rows[: self.shown] if rows is not None else [], np.int64)
        if callable(values):
            picked = values(shown_rows)
        elif isinstance(values, (pa.Array, pa.ChunkedArray)):
            picked = values.take(pa.array(shown_rows)).to_pylist()
        else:
            picked = np.asarray(values)[shown_rows].tolist() if len(shown_rows) else []
        self.faults.append(Fault(table, column, problem, tuple(shown_rows.tolist()), tuple(picked)))

    def open(self, rel: str, expected: dict[str, str]) -> tuple[Any, set[str]]:
        """(dataset, usable columns); missing tables and columns and wrong dtypes become faults."""
        try:
            dataset = open_table(self.data_dir, rel)
        except StarError as e:
            self.add(rel, None, str(e).removeprefix(f"{rel}: "))
            return None, set()
        usable = set()
        for col, kind in expected.items():
            if col not in dataset.schema.names:
                self.add(rel, col, f"column missing (expected {type_name(kind)})")
            elif not compatible(dataset.schema.field(col).type, kind):
                self.add(
                    rel, col, f"wrong dtype {dataset.schema.field(col).type}, expected {type_name(kind)}"
                )
            else:
                usable.add(col)
        return dataset, usable

    def column(self, dataset: Any, rel: str, col: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(values as numpy with nulls zeroed, non-null mask); nulls become a fault."""
        arr = canonical(_read(dataset, rel, col), kind).combine_chunks()
        valid = np.ones(len(arr), bool)
        if arr.null_count:
            valid = ~pc.is_null(arr).to_numpy(zero_copy_only=False)
            self.add(rel, col, f"{arr.null_count} null values", np.flatnonzero(~valid), arr)
            arr = arr.fill_null(0)
        return arr.to_numpy(), valid

    def dangling(self, rel: str, col: str, x: np.ndarray, valid: np.ndarray, node_type: str) -> np.ndarray:
        """Positions of `x` in `node_type`'s ids; ids not in the node table become a fault."""
        if node_type not in self.ids:  # that node table is already reported broken
            return np.zeros(len(x), np.int64)
        found, pos = self.ids[node_type].find(x)
        bad = np.flatnonzero(valid & ~found)
        if len(bad):
            target = self.schema.node_types[node_type].table
            self.add(rel, col, f"{len(bad)} ids not in {target} id (dangling)", bad, x)
        valid &= found
        return pos

    # -- tables ----------------------------------------------------------------------------------

    def nodes(self, node_type: str) -> None:
        spec = self.schema.node_types[node_type]
        rel = spec.table
        dataset, ok = self.open(rel, node_columns(spec))
        if dataset is None:
            return
        rows = dataset.count_rows()
        self.summary.nodes[node_type] = rows
        if rows == 0 and node_type in ("member", "job"):
            self.add(rel, None, "table has no rows")
        if "id" in ok:
            ids, valid = self.column(dataset, rel, "id", "int64")
            order = np.argsort(ids, kind="stable")
            s = ids[order]
            v = valid[order]
            repeat = (s[1:] == s[:-1]) & v[1:] & v[:-1]
            dup_sorted = np.flatnonzero(repeat) + 1
            if len(dup_sorted):
                dups = np.flatnonzero(isin(ids, s[dup_sorted]) & valid)
                self.add(
                    rel, "id", f"{len(dup_sorted)} duplicate ids ({len(dups)} rows share an id)", dups, ids
                )
            first = np.concatenate([[True], ~repeat])
            self.ids[node_type] = IdIndex(s[first & v])
        if "text" in ok:
            self.texts(dataset, rel)

    def texts(self, dataset: Any, rel: str) -> None:
        # Streamed in record batches: the text column is the one that does not fit comfortably in memory.
        nulls, empties, offset = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
        null_values, empty_values = [], []
        for batch in _batches(dataset, rel, "text"):
            col = canonical(batch.column("text"), "string")
            is_null = pc.is_null(col).to_numpy(zero_copy_only=False)
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0).fill_null(False)
            is_empty = blank.to_numpy(zero_copy_only=False)
            for idx, out, vals in ((is_null, nulls, null_values), (is_empty, empties, empty_values)):
                hit = np.flatnonzero(idx)
                out.append(hit + offset)
                if len(vals) < self.shown:
                    vals.extend(col.take(pa.array(hit[: self.shown])).to_pylist())
            offset += len(col)
        for what, hits, vals in (
            ("null", nulls, null_values),
            ("empty (or whitespace-only)", empties, empty_values),
        ):
            hits = np.concatenate(hits)
            if len(hits):
                self.add(
                    rel,
                    "text",
                    f"{len(hits)} {what} texts; every node of a text type needs one",
                    hits,
                    lambda shown, vals=vals: vals[: len(shown)],
                )

    def labels(self) -> None:
        rel = self.schema.labels
        dataset, ok = self.open(rel, label_columns())
        if dataset is None:
            return
        n = dataset.count_rows()
        valid = np.ones(n, bool)
        code = np.full(n, -1, np.int64)  # index into SPLITS; -1 for an unknown or null split
        if "split" in ok:
            split = canonical(_read(dataset, rel, "split"), "string").combine_chunks()
            if split.null_count:
                self.add(
                    rel,
                    "split",
                    f"{split.null_count} null values",
                    np.flatnonzero(pc.is_null(split).to_numpy(zero_copy_only=False)),
                    split,
                )
            code = pc.index_in(split, pa.array(SPLITS)).fill_null(-1).to_numpy().astype(np.int64)
            unknown = np.flatnonzero((code < 0) & pc.is_valid(split).to_numpy(zero_copy_only=False))
            if len(unknown):
                self.add(
                    rel,
                    "split",
                    f"{len(unknown)} rows with an unknown split (expected one of {', '.join(SPLITS)})",
                    unknown,
                    split,
                )
            for s, name in enumerate(SPLITS):
                self.summary.pairs[name] = int((code == s).sum())
                if self.summary.pairs[name] == 0:
                    self.add(
                        rel, "split", f"no {name!r} rows; the {', '.join(SPLITS)} splits are all required"
                    )
            valid &= code >= 0
        if "label" in ok:
            label, lvalid = self.column(dataset, rel, "label", "int64")
            bad = np.flatnonzero(lvalid & (label != 0) & (label != 1))
            if len(bad):
                self.add(rel, "label", f"{len(bad)} labels other than 0/1", bad, label)
        if "timestamp" in ok:
            ts, tvalid = self.column(dataset, rel, "timestamp", "timestamp")
            train = tvalid & (code == SPLITS.index("train"))
            if train.any():
                self.train_end = int(ts[train].max())
                for name in SPLITS[1:]:
                    early = np.flatnonzero(tvalid & (code == SPLITS.index(name)) & (ts < self.train_end))
                    if len(early):
                        self.add(
                            rel,
                            "timestamp",
                            f"{len(early)} {name!r} pairs dated before the training "
                            f"period ends (last train timestamp {self.train_end}); splits must be "
                            f"in time order",
                            early,
                            ts,
                        )
        pos, raw = {}, {}
        for col, node_type in (("member_id", "member"), ("job_id", "job")):
            if col in ok:
                raw[col], xvalid = self.column(dataset, rel, col, "int64")
                valid &= xvalid
                pos[col] = self.dangling(rel, col, raw[col], valid, node_type)
        if len(pos) == 2 and "member" in self.ids and "job" in self.ids:

            def pairs(rows: np.ndarray) -> list[str]:
                return [
                    f"member {raw['member_id'][r]}, job {raw['job_id'][r]}, {SPLITS[code[r]]}" for r in rows
                ]

            key = pos["member_id"] * max(len(self.ids["job"]), 1) + pos["job_id"]
            # A pair of split s clashes when it also occurs in a later split; hash lookups, no sort.
            in_split = [key[valid & (code == s)] for s in range(len(SPLITS))]
            clashing = [
                k[isin(k, np.concatenate(in_split[s + 1 :]))] for s, k in enumerate(in_split[:-1]) if len(k)
            ]
            bad_keys = np.unique(np.concatenate(clashing)) if clashing else np.zeros(0, np.int64)
            if len(bad_keys):
                bad = np.flatnonzero(valid & isin(key, bad_keys))
                self.add(
                    rel,
                    "member_id, job_id",
                    f"{len(bad_keys)} (member_id, job_id) pairs appear in more than one split",
                    bad,
                    pairs,
                )
            evaluation = valid & (code > 0)
            self.eval_pairs, self.eval_rows, self.show_pairs = (
                key[evaluation],
                np.flatnonzero(evaluation),
                pairs,
            )

    def edges(self, relation: str) -> None:
        spec = self.schema.relations[relation]
        rel = spec.table
        dataset, ok = self.open(rel, edge_columns(spec))
        if dataset is None:
            return
        n = dataset.count_rows()
        self.summary.edges[relation] = n
        valid = np.ones(n, bool)
        pos = {}
        for col, node_type in (("src", spec.src), ("dst", spec.dst)):
            if col in ok:
                x, xvalid = self.column(dataset, rel, col, "int64")
                valid &= xvalid
                pos[col] = self.dangling(rel, col, x, valid, node_type)
                del x
        if "weight" in ok:
            w, wvalid = self.column(dataset, rel, "weight", "float32")
            bad = np.flatnonzero(wvalid & ~(np.isfinite(w) & (w >= 0)))
            if len(bad):
                self.add(rel, "weight", f"{len(bad)} weights that are negative, NaN or infinite", bad, w)
        if spec.kind != "interaction":
            return
        if "timestamp" in ok and self.train_end is not None:
            ts, tvalid = self.column(dataset, rel, "timestamp", "timestamp")
            late = np.flatnonzero(tvalid & (ts > self.train_end))
            if len(late):
                self.add(
                    rel,
                    "timestamp",
                    f"{len(late)} interaction edges dated after the training period "
                    f"ends ({self.train_end}); they would leak val/test behaviour into the graph",
                    late,
                    ts,
                )
        ends = {spec.src: "src", spec.dst: "dst"}
        if len(pos) == 2 and set(ends) == {"member", "job"} and self.eval_pairs is not None:
            key = pos[ends["member"]] * max(len(self.ids["job"]), 1) + pos[ends["job"]]
            leaked_keys = key[valid][isin(key[valid], self.eval_pairs)]
            leaked = isin(self.eval_pairs, leaked_keys)
            if leaked.any():
                rows = self.eval_rows[leaked]
                self.add(
                    self.schema.labels,
                    "member_id, job_id",
                    f"{len(rows)} val/test pairs are also "
                    f"{relation} edges ({rel}); the graph would reveal them",
                    rows,
                    self.show_pairs,
                )


def _run(
    data_dir: str | os.PathLike, shown: int = SHOWN_ROWS, progress_bar: bool = False
) -> tuple[list[Fault], Summary]:
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise StarError(f"data directory not found: {data_dir}")
    try:
        schema = read_schema(data_dir)
    except StarError as e:
        path = os.path.join(data_dir, SCHEMA_FILE)
        return [Fault(SCHEMA_FILE, None, str(e).removeprefix(f"{path}: "))], Summary()
    checker = _Checker(data_dir, schema, shown)
    # nodes -> labels -> edges: the dangling-id checks need the node ids, and the leakage checks on
    # interaction edges need the end of the training period from the labels.
    steps = [(checker.nodes, t) for t in schema.node_types] + [(lambda _: checker.labels(), "labels")]
    steps += [(checker.edges, r) for r in schema.relations]
    bar = progress(total=len(steps), desc="validate", unit="table") if progress_bar else None
    for fn, name in steps:
        try:
            fn(name)
        except _Unreadable as e:  # the table's other checks need that column: they are skipped
            checker.faults.append(e.fault)
        if bar is not None:
            bar.set_postfix_str(name, refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    return checker.faults, checker.summary


def validate(data_dir: str | os.PathLike, *, shown: int = SHOWN_ROWS) -> list[Fault]:
    """Every fault of `data_dir` against docs/data_format.md (empty: the directory is valid)."""
    return _run(data_dir, shown)[0]


_checked: dict[tuple, Schema] = {}


def _signature(data_dir: str) -> tuple:
    files = []
    for root, _, names in os.walk(data_dir):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files.append((os.path.relpath(os.path.join(root, name), data_dir), st.st_size, st.st_mtime_ns))
    return (os.path.abspath(data_dir), tuple(sorted(files)))


def check_data(data_dir: str | os.PathLike) -> Schema:
    """Validate `data_dir` and return its schema, or raise one `StarError` summarising the faults.

    Every stage that reads data calls this first. A directory already checked by this process and
    unchanged since (same files, sizes and modification times) is not checked again.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise StarError(f"data directory not found: {data_dir}")
    sig = _signature(data_dir)
    if sig in _checked:
        return _checked[sig]
    faults, _ = _run(data_dir, progress_bar=True)
    if faults:
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        raise StarError(
            f"{data_dir}: invalid data: {faults[0]}{more}; "
            f"run `star-jax validate {data_dir}` to list every fault"
        )
    _checked[sig] = read_schema(data_dir)
    return _checked[sig]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="directory with schema.json and the Parquet tables")
    parser.add_argument("--show", type=int, default=SHOWN_ROWS, help="offending rows quoted per fault")


def main(args: argparse.Namespace) -> int:
    faults, summary = _run(args.data_dir, max(args.show, 0), progress_bar=True)
    for fault in faults:
        print(fault)
    if faults:
        raise StarError(
            f"{args.data_dir}: {len(faults)} fault{'s' * (len(faults) > 1)} found (listed above); "
            "the format is described in docs/data_format.md"
        )
    print(f"{args.data_dir}: valid: {summary}")
    return 0
