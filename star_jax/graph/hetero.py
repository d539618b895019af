"""The heterogeneous graph: one CSR adjacency per relation and per reverse relation.

`build_graph` (`star-jax build-graph`, star_jax.graph.build_cli) reads a data directory once and
writes a graph directory of numpy arrays (docs/pipeline.md, "The graph directory"), which
`HeteroGraph.load` memory-maps.
Every stored relation `r: A -> B` also gets `r_rev: B -> A`, so a node reaches its neighbours in
both directions (LinkSAGE, arXiv 2402.13430, makes attribute edges bidirectional). The same
arrays can also live in TensorStore (star_jax.graph.tstore).

    graph = build_graph("runs/demo/data", "runs/demo/graph")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from star_jax.data.schema import SCHEMA_FILE, NodeTypeSpec, RelationSpec, Schema, read_schema
from star_jax.data.tables import (
    IdIndex,
    arrow_table,
    canonical,
    compatible,
    edge_columns,
    node_columns,
    open_table,
    type_name,
)
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, atomic_write_json, content_digest, read_json
from star_jax.tracking import progress

log = logging.getLogger(__name__)

GRAPH_FILE = "graph.json"
GRAPH_FORMAT = 2  # 2: one vocabulary per categorical column name, shared by the node types
REV = "_rev"
NODE_ARRAYS = ("ids", "id_sorted", "id_order", "cat")  # per node type, as in HeteroGraph's fields


class CSR(NamedTuple):
    """Adjacency of one relation `src_type -> dst_type`, indexed by src row."""

    indptr: np.ndarray  # int64 [src_rows + 1]: row v's edges are indices[indptr[v]:indptr[v + 1]]
    # int32 [edges]: dst rows, ascending within a row, repeats kept, so the sampler finds (and
    # excludes) every copy of an edge with one binary search
    indices: np.ndarray
    weight: np.ndarray | None  # float32 [edges], aligned with indices
    timestamp: np.ndarray | None  # int64 [edges], aligned with indices

    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)


def reverse_name(relation: str) -> str:
    """`r` <-> `r_rev`."""
    return relation[: -len(REV)] if relation.endswith(REV) else relation + REV


def relation_types(schema: Schema) -> dict[str, tuple[str, str]]:
    """Every relation of the graph, reverses included, as name -> (src_type, dst_type).

    Order: each stored relation followed by its reverse, in schema order.
    """
    out: dict[str, tuple[str, str]] = {}
    for name, spec in schema.relations.items():
        out[name] = (spec.src, spec.dst)
        out[name + REV] = (spec.dst, spec.src)
    return out


@dataclass(eq=False)
class HeteroGraph:
    """Node ids, categorical codes and one CSR per relation (docs/pipeline.md, "The graph directory")."""

    schema: Schema
    ids: dict[str, np.ndarray]  # type -> int64 [rows]: node table `id`s in table order
    id_sorted: dict[str, np.ndarray]  # type -> int64 [rows]: ascending ids
    id_order: dict[str, np.ndarray]  # type -> int32 [rows]: the row of each id in id_sorted
    csr: dict[str, CSR]  # relation name (`<name>_rev` included) -> CSR over its src rows
    cat: dict[str, np.ndarray]  # type -> int32 [rows, C_t]: codes of schema.node_types[t].categorical
    vocab: dict[str, dict[str, list[str]]]  # type -> column -> values; value i has code i + 1
    digest: str  # content digest of the input tables (fileio.content_digest)
    path: str | None = None  # the graph directory (or TensorStore URL) it was opened from
    reopen: tuple | None = None  # (function, args) that opens it again, in a worker process
    _index: dict[str, IdIndex] = field(default_factory=dict, repr=False)  # built on first `rows`

    @property
    def node_types(self) -> tuple[str, ...]:
        return tuple(self.schema.node_types)

    @property
    def relations(self) -> dict[str, tuple[str, str]]:
        return relation_types(self.schema)

    def num_nodes(self, node_type: str) -> int:
        return int(self.ids[node_type].shape[0])

    def rows(self, node_type: str, ids: np.ndarray, *, what: str | None = None) -> np.ndarray:
        """int64 rows of `ids` in `node_type`'s table; an unknown id is a `StarError` naming `what`."""
        ids = np.asarray(ids, np.int64)
        if node_type not in self._index:
            self._index[node_type] = IdIndex(np.asarray(self.id_sorted[node_type]))
        rows, missing = _lookup(self._index[node_type], self.id_order[node_type], ids)
        if missing.any():
            bad = ids[missing]
            where = what or f"{node_type} ids"
            raise StarError(f"{where}: {bad.size} id(s) not in {self.schema.node_types[node_type].table} "
                            f"(e.g. {int(bad[0])})")
        return rows

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HeteroGraph:
        """Memory-map a graph directory written by `build_graph` (or `star-jax graph fetch`)."""
        directory = Path(directory)
        meta_path = directory / GRAPH_FILE
        if not meta_path.is_file():
            raise StarError(f"{meta_path}: missing (build the graph with `star-jax build-graph`)")
        meta = read_json(meta_path)
        path = os.path.abspath(directory)
        return cls.from_arrays(meta, os.fspath(meta_path), lambda key: _load(directory / f"{key}.npy"),
                               path, (HeteroGraph.load, (path,)))

    @classmethod
    def from_arrays(cls, meta: dict, where: str, array: Callable[[str], Any], path: str,
                    reopen: tuple | None = None) -> HeteroGraph:
        """The graph that graph.json `meta` (read from `where`) describes, each array opened by
        `array(key)` for the keys of `array_keys(meta)`: a memory map, or a TensorStore reader."""
        if meta.get("format_version") != GRAPH_FORMAT:
            raise StarError(f"{where}: format_version {meta.get('format_version')} != {GRAPH_FORMAT}; "
                            "rebuild it with `star-jax build-graph --force`")
        schema = schema_from_json(meta["schema"], meta["order"])
        ids, id_sorted, id_order, cat = {}, {}, {}, {}
        for t in schema.node_types:
            ids[t], id_sorted[t], id_order[t], cat[t] = (array(f"nodes/{t}/{a}") for a in NODE_ARRAYS)
        csr = {}
        for name in relation_types(schema):
            info, d = meta["relations"][name], f"csr/{name}/"
            csr[name] = CSR(
                array(d + "indptr"),
                array(d + "indices"),
                array(d + "weight") if info["weight"] else None,
                array(d + "timestamp") if info["timestamp"] else None,
            )
        return cls(schema, ids, id_sorted, id_order, csr, cat, meta["vocab"], meta["digest"], path, reopen)

    def __reduce__(self):
        # Worker processes re-open the graph (memory maps, or TensorStore readers) instead of
        # receiving a pickled copy of it.
        if self.reopen is not None:
            return self.reopen
        if self.path is not None:  # built by hand with a directory path
            return (HeteroGraph.load, (self.path,))
        return super().__reduce__()


def array_keys(meta: dict) -> list[str]:
    """The key of every array of a graph (its path under the graph directory, less `.npy`)."""
    keys = [f"nodes/{t}/{a}" for t in meta["order"]["node_types"] for a in NODE_ARRAYS]
    for name, info in meta["relations"].items():
        keys += [f"csr/{name}/{part}" for part in CSR._fields
                 if part in ("indptr", "indices") or info[part]]
    return keys


def _meta_json(schema: Schema, digest: str, nodes: dict[str, int], edges: dict[str, tuple[int, bool, bool]],
               vocab: dict) -> dict:
    """graph.json: edges maps relation -> (count, has weight, has timestamp)."""
    return {
        "format_version": GRAPH_FORMAT,
        "digest": digest,
        "schema": schema.to_json(),
        # JSON objects are written with sorted keys: keep the schema's order, which fixes the Layout's.
        "order": {"node_types": list(schema.node_types), "relations": list(schema.relations)},
        "nodes": nodes,
        "edges": {name: e[0] for name, e in edges.items()},
        "relations": {name: {"src": s, "dst": d, "weight": edges[name][1], "timestamp": edges[name][2]}
                      for name, (s, d) in relation_types(schema).items()},
        "vocab": vocab,
    }


def _load(path: Path) -> np.ndarray:
    # Memory-mapped: sampler worker processes share the page cache instead of copying the graph.
    return np.load(path, mmap_mode="r")


def _save_node_arrays(root: Path, t: str, ids, id_sorted, id_order, cat) -> None:
    d = root / "nodes" / t
    d.mkdir(parents=True, exist_ok=True)
    for name, a in zip(NODE_ARRAYS, (ids, id_sorted, id_order, cat), strict=True):
        np.save(d / f"{name}.npy", a)


def _save_csr(root: Path, name: str, c: CSR) -> None:
    d = root / "csr" / name
    d.mkdir(parents=True, exist_ok=True)
    for part, a in c._asdict().items():
        if a is not None:
            np.save(d / f"{part}.npy", a)


def schema_from_json(raw: dict, order: dict) -> Schema:
    nodes = {k: NodeTypeSpec(raw["node_types"][k]["table"], raw["node_types"][k]["text"],
                             tuple(raw["node_types"][k]["categorical"])) for k in order["node_types"]}
    rels = {k: RelationSpec(**raw["relations"][k]) for k in order["relations"]}
    return Schema(nodes, rels, raw["labels"], raw["format_version"], raw.get("extra", {}))


# -- building ----------------------------------------------------------------------------------


def _lookup(index: IdIndex, id_order: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64, missing bool) of `ids`: position among the sorted ids, then the row there."""
    found, pos = index.find(ids)
    return np.where(found, np.asarray(id_order)[pos] if len(index) else -1, -1).astype(np.int64), ~found


def csr_from_edges(
    src: np.ndarray,
    dst: np.ndarray,
    num_src: int,
    num_dst: int,
    weight: np.ndarray | None = None,
    timestamp: np.ndarray | None = None,
) -> CSR:
    """CSR of edges given as src/dst rows: neighbours sorted by dst within a row, ties in input order."""
    key = src.astype(np.int64) * max(num_dst, 1) + dst
    order = np.argsort(key, kind="stable")
    del key
    indptr = np.zeros(num_src + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=num_src), out=indptr[1:])
    return CSR(
        indptr,
        dst[order].astype(np.int32, copy=False),
        None if weight is None else weight[order].astype(np.float32, copy=False),
        None if timestamp is None else timestamp[order].astype(np.int64, copy=False),
    )


def encode_categorical(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """int32 codes (0 = null or empty) and the sorted vocabulary (code i + 1 is vocab[i])."""
    enc = pc.dictionary_encode(column).combine_chunks()
    values = enc.dictionary.to_pylist()
    index = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    vocab = sorted(v for v in values if v)
    code_of = {v: i + 1 for i, v in enumerate(vocab)}
    lut = np.array([code_of.get(v, 0) for v in values] + [0], np.int32)  # index -1 -> the trailing 0
    return lut[index], vocab


def shared_codes(
    cats: dict[str, np.ndarray], vocab: dict[str, dict[str, list[str]]]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, list[str]]]]:
    """Re-code every categorical column over one sorted vocabulary per column name, the union over
    the node types that have it: a member's and a job's `location` codes then name the same city,
    so the GNN can share one embedding table between them (star_jax.gnn.model)."""
    union: dict[str, set[str]] = {}
    for columns in vocab.values():
        for c, values in columns.items():
            union.setdefault(c, set()).update(values)
    joint = {c: sorted(v) for c, v in union.items()}
    out_cats, out_vocab = {}, {}
    for t, columns in vocab.items():
        codes = cats[t].copy()
        for i, (c, values) in enumerate(columns.items()):
            code_of = {v: k + 1 for k, v in enumerate(joint[c])}
            lut = np.array([0] + [code_of[v] for v in values], np.int32)
            codes[:, i] = lut[cats[t][:, i]]
        out_cats[t], out_vocab[t] = codes, {c: joint[c] for c in columns}
    return out_cats, out_vocab


def _read_nodes(data_dir: str, spec: NodeTypeSpec) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    table = arrow_table(data_dir, spec.table, node_columns(spec), ["id", *spec.categorical])
    if table["id"].null_count:
        raise StarError(f"{spec.table}: column 'id': {table['id'].null_count} null id(s)")
    ids = table["id"].to_numpy().astype(np.int64, copy=False)
    codes, vocabs = [], []
    for c in spec.categorical:
        code, vocab = encode_categorical(table[c])
        codes.append(code)
        vocabs.append(vocab)
    cat = np.stack(codes, axis=1) if codes else np.zeros((ids.shape[0], 0), np.int32)
    return ids, cat, vocabs


def _sorted_ids(ids: np.ndarray, table: str) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    srt = ids[order]
    dup = np.flatnonzero(srt[1:] == srt[:-1])
    if dup.size:
        raise StarError(f"{table}: column 'id': {dup.size} duplicate id(s) (e.g. {int(srt[dup[0]])})")
    return srt, order.astype(np.int32)


def _open_edges(data_dir: str, table: str, columns: dict[str, str]) -> pads.Dataset:
    """The edge table as a lazy dataset, its columns checked against the contract."""
    dataset = open_table(data_dir, table)
    for c, kind in columns.items():
        if c not in dataset.schema.names:
            raise StarError(f"{table}: column {c!r} missing")
        if not compatible(dataset.schema.field(c).type, kind):
            raise StarError(f"{table}: column {c!r} has type {dataset.schema.field(c).type}, "
                            f"expected {type_name(kind)}")
    return dataset


def _column(batch: pa.RecordBatch, name: str, kind: str, table: str) -> np.ndarray:
    col = batch.column(name)
    if col.null_count:
        raise StarError(f"{table}: column {name!r}: null values")
    return canonical(col, kind).to_numpy(zero_copy_only=False)


def input_paths(data_dir: str | os.PathLike, schema: Schema) -> list[str]:
    """The files a graph is built from: schema.json, node tables, edge tables."""
    d = os.fspath(data_dir)
    tables = [s.table for s in schema.node_types.values()] + [r.table for r in schema.relations.values()]
    return [os.path.join(d, SCHEMA_FILE)] + [os.path.join(d, t) for t in tables]


def graph_digest(data_dir: str | os.PathLike, schema: Schema | None = None) -> str:
    schema = schema or read_schema(data_dir)
    paths = input_paths(data_dir, schema)
    for p in paths:
        if not os.path.exists(p):
            rel = os.path.relpath(p, os.fspath(data_dir))
            raise StarError(f"{rel}: table missing from {os.fspath(data_dir)}")
    return content_digest(paths)


def is_up_to_date(out_dir: str | os.PathLike, digest: str) -> bool:
    meta = Path(out_dir) / GRAPH_FILE
    if not meta.is_file():
        return False
    info = read_json(meta)
    return info.get("digest") == digest and info.get("format_version") == GRAPH_FORMAT


def build_graph(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False
) -> HeteroGraph:
    """Build the graph directory of `data_dir`, or reuse it when its digest matches the data."""
    return ensure_graph(data_dir, out_dir, force=force)[0]


def ensure_graph(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False
) -> tuple[HeteroGraph, bool]:
    """`build_graph`, also saying whether it built (True) or found the graph up to date (False)."""
    data_dir = os.fspath(data_dir)
    schema = read_schema(data_dir)
    for name in schema.relations:
        if name.endswith(REV):
            raise StarError(f"{os.path.join(data_dir, SCHEMA_FILE)}: relations.{name}: names ending in "
                            f"{REV!r} are reserved for reverse relations")
    digest = graph_digest(data_dir, schema)
    if not force and is_up_to_date(out_dir, digest):
        return HeteroGraph.load(out_dir), False
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / GRAPH_FILE).is_file():
        # The build replaces the directory whole: never a directory that is not a graph.
        raise StarError(f"--out {out}: a non-empty directory that is not a graph (no {GRAPH_FILE}); "
                        "choose a new or empty directory")

    ids, index, id_order, vocab = {}, {}, {}, {}
    with atomic_dir(out_dir) as tmp:
        cats = {}
        for t, spec in schema.node_types.items():
            ids[t], cats[t], vocabs = _read_nodes(data_dir, spec)
            vocab[t] = dict(zip(spec.categorical, vocabs))
        cats, vocab = shared_codes(cats, vocab)
        for t, spec in schema.node_types.items():
            id_sorted, id_order[t] = _sorted_ids(ids[t], spec.table)
            index[t] = IdIndex(id_sorted)
            _save_node_arrays(tmp, t, ids[t], id_sorted, id_order[t], cats[t])
        tables = {name: _open_edges(data_dir, spec.table, edge_columns(spec))
                  for name, spec in schema.relations.items()}
        edges: dict[str, tuple[int, bool, bool]] = {}
        with progress(total=sum(t.count_rows() for t in tables.values()), desc="build-graph", unit="edge",
                      unit_scale=True) as bar:
            for name, spec in schema.relations.items():
                batches = tables[name].to_batches(columns=list(edge_columns(spec)))
                src, dst, w, ts = _read_edges(batches, spec, schema, index, id_order, bar)
                n_src, n_dst = ids[spec.src].shape[0], ids[spec.dst].shape[0]
                _save_csr(tmp, name, csr_from_edges(src, dst, n_src, n_dst, w, ts))
                _save_csr(tmp, name + REV, csr_from_edges(dst, src, n_dst, n_src, w, ts))
                edges[name] = edges[name + REV] = (int(src.shape[0]), w is not None, ts is not None)
                del src, dst, w, ts
        meta = _meta_json(schema, digest, {t: int(ids[t].shape[0]) for t in ids}, edges, vocab)
        atomic_write_json(tmp / GRAPH_FILE, meta)
    return HeteroGraph.load(out_dir), True


def _read_edges(batches: Iterator[pa.RecordBatch], spec: RelationSpec, schema: Schema, index: dict,
                id_order: dict, bar) -> tuple:
    """(src rows int32, dst rows int32, weight f32 | None, timestamp int64 | None) of one edge table,
    read one Parquet batch at a time (vectorised id lookups, no Python loop over edges)."""
    cols = edge_columns(spec)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    for batch in batches:
        for end, node_type in (("src", spec.src), ("dst", spec.dst)):
            raw = _column(batch, end, "int64", spec.table)
            rows, missing = _lookup(index[node_type], id_order[node_type], raw)
            if missing.any():
                raise StarError(
                    f"{spec.table}: column {end!r}: {int(missing.sum())} id(s) not in "
                    f"{schema.node_types[node_type].table} (e.g. {int(raw[missing][0])})"
                )
            parts[end].append(rows.astype(np.int32))
        for c in ("weight", "timestamp"):
            if c in cols:
                parts[c].append(_column(batch, c, cols[c], spec.table))
        bar.update(batch.num_rows)
    dtypes = {"src": np.int32, "dst": np.int32, "weight": np.float32, "timestamp": np.int64}
    arr = {c: (np.concatenate(p) if p else np.zeros(0)).astype(dtypes[c], copy=False)
           for c, p in parts.items()}
    if "weight" in arr and not np.isfinite(arr["weight"]).all():
        raise StarError(f"{spec.table}: column 'weight': non-finite values")
    return arr["src"], arr["dst"], arr.get("weight"), arr.get("timestamp")


# -- statistics and CLI ------------------------------------------------------------------------


def degree_stats(graph: HeteroGraph) -> dict[str, dict[str, float]]:
    """Per relation (reverses included): out-degree min/mean/median/p99/max and zero-degree count."""
    out = {}
    for name, c in graph.csr.items():
        deg = np.diff(np.asarray(c.indptr))
        if deg.size == 0:
            deg = np.zeros(1, np.int64)
        out[name] = {
            "rows": int(c.indptr.shape[0] - 1),
            "edges": int(c.indices.shape[0]),
            "min": float(deg.min()),
            "mean": float(deg.mean()),
            "median": float(np.median(deg)),
            "p99": float(np.percentile(deg, 99)),
            "max": float(deg.max()),
            "zero": int((deg == 0).sum()) if c.indptr.shape[0] > 1 else 0,
        }
    return out


def format_degree_stats(graph: HeteroGraph) -> str:
    stats = degree_stats(graph)
    rel = graph.relations
    head = f"{'relation':<22} {'src -> dst':<18} {'rows':>9} {'edges':>11} {'min':>5} {'mean':>8} " \
           f"{'median':>7} {'p99':>7} {'max':>8} {'zero':>9}"
    lines = [head]
    for name, s in stats.items():
        ends = f"{rel[name][0]} -> {rel[name][1]}"
        lines.append(f"{name:<22} {ends:<18} {s['rows']:>9} {s['edges']:>11} {s['min']:>5.0f} "
                     f"{s['mean']:>8.2f} {s['median']:>7.1f} {s['p99']:>7.1f} {s['max']:>8.0f} "
                     f"{s['zero']:>9}")
    return "\n".join(lines)
