"""`star-jax validate`: one planted fault per case, each reported with table, column and rows."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from data_fixtures import T0, edit_table, write_tiny_data

from star_jax import cli
from star_jax.data.tables import IdIndex, read_edges, read_labels, read_nodes
from star_jax.data.validate import check_data, validate
from star_jax.errors import StarError


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture
def data(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "data")


def run_validate(path, capsys) -> tuple[int, list[str]]:
    rc = cli.main(["validate", str(path)])
    out = capsys.readouterr()
    return rc, out.out.splitlines() + out.err.splitlines()


def test_clean_directory_is_valid(clean, capsys):
    rc, lines = run_validate(clean, capsys)
    assert rc == 0
    assert any("valid" in line and "labelled pairs" in line for line in lines)
    assert validate(clean) == []
    assert set(check_data(clean).node_types) == {"member", "job", "company", "skill", "title"}


def _set(rel, row, column, value, dtype=None):
    def fn(df):
        if dtype is not None:  # e.g. a nullable or float column, to plant a null id or a float label
            df[column] = df[column].astype(dtype)
        df.loc[row, column] = value
        return df

    return rel, fn


def _append_row(rel, copy_of, **changes):
    def fn(df):
        extra = df.iloc[[copy_of]].assign(**changes)
        return pd.concat([df, extra], ignore_index=True)

    return rel, fn


def _first_split_row(df, split):
    return int(np.flatnonzero(df["split"].to_numpy() == split)[0])


def _pair_in_two_splits(df):
    t = _first_split_row(df, "test")
    df.loc[t, ["member_id", "job_id"]] = df.loc[0, ["member_id", "job_id"]].to_numpy()
    return df


def _test_before_train_end(df):
    df.loc[_first_split_row(df, "test"), "timestamp"] = T0
    return df


def _ids_as_strings(df):
    df["id"] = df["id"].astype(str)
    return df


CASES = {
    # name: (table to edit, edit, expected table in the message, column, phrase, expected first rows)
    "duplicate ids": (
        *_append_row("nodes/skill.parquet", 7),
        "nodes/skill.parquet",
        "id",
        "duplicate ids",
        "7 (7), 12 (7)",
    ),
    "dangling edge": (
        *_set("edges/job_company.parquet", 3, "dst", 99),
        "edges/job_company.parquet",
        "dst",
        "not in nodes/company.parquet id",
        "3 (99)",
    ),
    "dangling label": (
        *_set("labels/pairs.parquet", 2, "job_id", 555),
        "labels/pairs.parquet",
        "job_id",
        "not in nodes/job.parquet id",
        "2 (555)",
    ),
    "null text": (
        *_set("nodes/member.parquet", 4, "text", None),
        "nodes/member.parquet",
        "text",
        "null texts",
        "4 (null)",
    ),
    "empty text": (
        *_set("nodes/job.parquet", 2, "text", "  "),
        "nodes/job.parquet",
        "text",
        "empty",
        "2 ('  ')",
    ),
    "label not 0/1": (
        *_set("labels/pairs.parquet", 5, "label", 2),
        "labels/pairs.parquet",
        "label",
        "other than 0/1",
        "5 (2)",
    ),
    "unknown split": (
        *_set("labels/pairs.parquet", 6, "split", "dev"),
        "labels/pairs.parquet",
        "split",
        "unknown split",
        "6 ('dev')",
    ),
    "pair in two splits": (
        "labels/pairs.parquet",
        _pair_in_two_splits,
        "labels/pairs.parquet",
        "member_id, job_id",
        "more than one split",
        "0 ('member",
    ),
    "test starts before train ends": (
        "labels/pairs.parquet",
        _test_before_train_end,
        "labels/pairs.parquet",
        "timestamp",
        "'test' pairs dated before the training period ends",
        f"({T0})",
    ),
    "apply edge after train ends": (
        *_set("edges/member_applied.parquet", 1, "timestamp", T0 + 10**8),
        "edges/member_applied.parquet",
        "timestamp",
        "after the training period",
        f"1 ({T0 + 10**8})",
    ),
    "null id": (
        *_set("edges/member_skill.parquet", 0, "src", None, "Int64"),
        "edges/member_skill.parquet",
        "src",
        "1 null values",
        "0 (null)",
    ),
    "wrong dtype": ("nodes/title.parquet", _ids_as_strings, "nodes/title.parquet", "id", "wrong dtype", ""),
    "wrong label dtype": (
        *_set("labels/pairs.parquet", 0, "label", 0.5, float),
        "labels/pairs.parquet",
        "label",
        "wrong dtype double",
        "",
    ),
    "missing column": (
        "nodes/job.parquet",
        lambda df: df.drop(columns=["text"]),
        "nodes/job.parquet",
        "text",
        "column missing",
        "",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_fault_is_reported(case, data, capsys):
    rel, edit, table, column, phrase, rows = CASES[case]
    edit_table(data, rel, edit)
    assert_reported(data, capsys, table, column, phrase, rows)


def assert_reported(data, capsys, table, column, phrase, rows):
    rc, lines = run_validate(data, capsys)
    assert rc != 0
    prefix = f"{table}: {column}: "
    hits = [line for line in lines if line.startswith(prefix) and phrase in line]
    assert len(hits) == 1, f"no line starting {prefix!r} with {phrase!r} in:\n" + "\n".join(lines)
    assert rows in hits[0]
    assert any("fault" in line and "star-jax: error" in line for line in lines)
    assert any(f.table == table and f.column == column for f in validate(data))


def test_val_pair_that_is_an_apply_edge(data, capsys):
    pair = read_labels(data, "val").loc[0, ["member_id", "job_id"]].to_numpy()
    row = int(np.flatnonzero(read_labels(data)["split"].to_numpy() == "val")[0])

    def edit(df):
        df.loc[0, ["src", "dst"]] = pair
        return df

    edit_table(data, "edges/member_applied.parquet", edit)
    assert_reported(
        data,
        capsys,
        "labels/pairs.parquet",
        "member_id, job_id",
        "also member_applied edges",
        f"{row} ('member {pair[0]}, job {pair[1]}, val')",
    )


def test_missing_table(data, capsys):
    os.remove(data / "edges/job_skill.parquet")
    rc, lines = run_validate(data, capsys)
    assert rc != 0
    assert any(line.startswith("edges/job_skill.parquet: table missing") for line in lines)


def test_missing_schema(data, capsys):
    os.remove(data / "schema.json")
    rc, lines = run_validate(data, capsys)
    assert rc != 0 and any("schema.json" in line and "missing" in line for line in lines)


def test_every_fault_is_listed_and_check_data_summarises(data, capsys):
    edit_table(data, "nodes/job.parquet", _set("nodes/job.parquet", 2, "text", "")[1])
    edit_table(data, "edges/job_company.parquet", _set("edges/job_company.parquet", 3, "dst", 99)[1])
    rc, lines = run_validate(data, capsys)
    assert rc != 0
    assert sum(line.startswith(("nodes/", "edges/", "labels/")) for line in lines) == 2
    assert any("2 faults" in line for line in lines)
    with pytest.raises(StarError) as err:
        check_data(data)
    msg = str(err.value)
    assert "\n" not in msg and "nodes/job.parquet: text" in msg and "1 more" in msg


def test_readers_return_canonical_dtypes(data):
    # Compatible but non-canonical storage: int32 ids, dictionary strings, Arrow timestamps.
    before = read_edges(data, "member_applied")
    edit_table(
        data,
        "nodes/member.parquet",
        lambda df: pa.table(
            {
                "id": pa.array(df["id"], pa.int32()),
                "text": pa.array(df["text"]).dictionary_encode(),
                **{c: pa.array(df[c]) for c in ("seniority", "location", "industry")},
            }
        ),
    )
    edit_table(
        data,
        "edges/member_applied.parquet",
        lambda df: pa.table(
            {
                "src": pa.array(df["src"], pa.int64()),
                "dst": pa.array(df["dst"], pa.int64()),
                "timestamp": pa.array(df["timestamp"] * 1000, pa.timestamp("ms", tz="UTC")),
            }
        ),
    )
    assert validate(data) == []
    nodes = read_nodes(data, "member", ["id", "text"])
    assert nodes["id"].dtype == np.int64 and isinstance(nodes["text"][0], str)
    edges = read_edges(data, "member_applied")
    assert edges["timestamp"].dtype == np.int64
    assert (edges["timestamp"].to_numpy() == before["timestamp"].to_numpy()).all()
    labels = read_labels(data, "test")
    assert set(labels["split"]) == {"test"} and labels["label"].dtype == np.int8
    with open(data / "schema.json") as f:
        assert read_labels(data).shape[0] == pd.read_parquet(data / json.load(f)["labels"]).shape[0]


@pytest.mark.parametrize("ids", [np.arange(50), np.arange(0, 150, 3) + 7, np.array([-(2**40), 5, 2**50])])
def test_id_index_agrees_with_binary_search(ids):
    # Dense, compact and sparse ids take the three lookup paths; np.searchsorted is the oracle.
    index = IdIndex(np.sort(ids).astype(np.int64))
    x = np.concatenate([ids, ids + 1, [-1, 2**62, -(2**62)]]).astype(np.int64)
    found, pos = index.find(x)
    ref = np.clip(np.searchsorted(index.ids, x), 0, len(ids) - 1)
    assert np.array_equal(found, index.ids[ref] == x)
    assert np.array_equal(pos[found], ref[found])
