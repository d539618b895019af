"""HeteroGraph: CSR per relation against a brute-force adjacency, persistence, errors, CLI."""

from __future__ import annotations

import collections
import os
import pickle

import graph_fixtures as gf
import numpy as np
import pytest

from star_jax import cli
from star_jax.data.schema import read_schema
from star_jax.errors import StarError
from star_jax.graph.hetero import HeteroGraph, build_graph, degree_stats, ensure_graph, relation_types

NODE_IDS = {"member": gf.MEMBERS, "job": gf.JOBS, "company": gf.COMPANIES, "skill": gf.SKILLS,
            "title": gf.TITLES}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    data = gf.write_data_dir(root / "data")
    return data, root / "graph", build_graph(data, root / "graph")


def test_csr_equals_brute_force_adjacency(built):
    _, _, g = built
    assert set(g.csr) == set(relation_types(gf.schema()))  # every relation and its reverse
    for name, (src_t, dst_t) in g.relations.items():
        c = g.csr[name]
        assert c.indptr.dtype == np.int64 and c.indices.dtype == np.int32
        assert c.indptr.shape == (len(NODE_IDS[src_t]) + 1,)
        expected = collections.defaultdict(list)
        for e in gf.edge_set(name):
            expected[e[0]].append(tuple(e[1:]))
        for row, src_id in enumerate(NODE_IDS[src_t]):
            lo, hi = c.indptr[row], c.indptr[row + 1]
            nbr = np.asarray(c.indices[lo:hi])
            assert (np.diff(nbr) >= 0).all(), "neighbours must be sorted within a row"
            got = [(NODE_IDS[dst_t][k],) for k in nbr]
            if c.weight is not None:
                assert c.weight.dtype == np.float32
                got = [(d, float(w)) for (d,), w in zip(got, c.weight[lo:hi])]
            assert sorted(got) == sorted(expected[src_id]), (name, src_id)


def test_timestamps_follow_their_edges(built):
    _, _, g = built
    for name in ("member_applied", "member_applied_rev"):
        c = g.csr[name]
        src_t, dst_t = g.relations[name]
        assert c.timestamp.dtype == np.int64
        got = []
        for row in range(c.indptr.shape[0] - 1):
            for k in range(c.indptr[row], c.indptr[row + 1]):
                got.append((NODE_IDS[src_t][row], NODE_IDS[dst_t][c.indices[k]], int(c.timestamp[k])))
        want = [(m, j, t) for m, j, t in gf.APPLIES]
        if name.endswith("_rev"):
            want = [(j, m, t) for m, j, t in want]
        assert sorted(got) == sorted(want)
    assert g.csr["member_title"].weight is None and g.csr["member_title"].timestamp is None


def test_ids_rows_and_categorical_codes(built):
    data, _, g = built
    assert list(g.node_types) == list(read_schema(data).node_types)
    for t, ids in NODE_IDS.items():
        np.testing.assert_array_equal(g.ids[t], ids)
        np.testing.assert_array_equal(g.rows(t, np.array(ids[::-1])), np.arange(len(ids))[::-1])
    with pytest.raises(StarError, match=r"labels: 1 id\(s\) not in nodes/job.parquet \(e.g. 31337\)"):
        g.rows("job", np.array([2001, 31337]), what="labels")
    # Vocabularies are sorted; code 0 is null or empty.
    assert g.vocab["member"]["seniority"] == ["junior", "mid", "senior"]
    np.testing.assert_array_equal(g.cat["member"][:, 0], [3, 0, 1, 0, 3, 2, 1, 0])
    np.testing.assert_array_equal(g.cat["company"], [[2, 2], [1, 1], [2, 0]])
    assert g.cat["skill"].shape == (len(gf.SKILLS), 0) and g.cat["member"].dtype == np.int32


def test_reload_is_memory_mapped_and_equal(built, tmp_path):
    data, out, g = built
    fresh = build_graph(data, tmp_path / "again", force=True)
    loaded = HeteroGraph.load(out)
    assert isinstance(loaded.csr["member_applied"].indices, np.memmap)
    for name in g.csr:
        for a, b in zip(fresh.csr[name], loaded.csr[name]):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
    for t in g.node_types:
        np.testing.assert_array_equal(fresh.cat[t], loaded.cat[t])
        np.testing.assert_array_equal(fresh.id_order[t], loaded.id_order[t])
    # A pickled graph is its path: worker processes re-open the memory maps.
    blob = pickle.dumps(loaded)
    assert len(blob) < 2000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.csr["member_skill"].weight, loaded.csr["member_skill"].weight)


def test_skips_when_up_to_date_and_rebuilds_on_change(tmp_path):
    data = gf.write_data_dir(tmp_path / "data")
    g1, built1 = ensure_graph(data, tmp_path / "g")
    g2, built2 = ensure_graph(data, tmp_path / "g")
    assert built1 and not built2 and g1.digest == g2.digest
    gf.write_data_dir(tmp_path / "data", applies=gf.APPLIES[:-1])
    g3, built3 = ensure_graph(data, tmp_path / "g")
    assert built3 and g3.digest != g1.digest
    assert g3.csr["member_applied"].indices.shape[0] == len(gf.APPLIES) - 1


def test_dangling_id_is_one_line_error_and_writes_nothing(tmp_path):
    data = gf.write_data_dir(tmp_path / "data", applies=gf.APPLIES + [(501, 9999, 99)])
    with pytest.raises(StarError) as err:
        build_graph(data, tmp_path / "g")
    msg = str(err.value)
    assert "edges/member_applied.parquet" in msg and "'dst'" in msg and "9999" in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / "g")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".g")]


def test_degree_stats(built):
    _, _, g = built
    stats = degree_stats(g)
    for name, (src_t, _) in g.relations.items():
        count = collections.Counter(e[0] for e in gf.edge_set(name))
        deg = np.array([count[i] for i in NODE_IDS[src_t]])
        s = stats[name]
        assert (s["min"], s["max"], s["edges"]) == (deg.min(), deg.max(), deg.sum())
        assert s["zero"] == (deg == 0).sum()
        assert s["mean"] == pytest.approx(deg.mean()) and s["median"] == pytest.approx(np.median(deg))
        assert s["p99"] == pytest.approx(np.percentile(deg, 99))


def test_cli_builds_skips_and_reports_errors(tmp_path, capsys):
    data = gf.write_data_dir(tmp_path / "data")
    out = str(tmp_path / "g")
    assert cli.main(["build-graph", "--data", data, "--out", out]) == 0
    first = capsys.readouterr()  # the status line is logged to stderr, the degree table printed
    assert "built:" in first.err and "member_applied_rev" in first.out and "p99" in first.out
    assert cli.main(["build-graph", "--data", data, "--out", out]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("up to date:")
    bad = gf.write_data_dir(tmp_path / "bad", applies=[(12345, 2001, 1)])
    assert cli.main(["build-graph", "--data", bad, "--out", str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("star-jax: error: edges/member_applied.parquet: column 'src'")
    assert "12345" in err and "nodes/member.parquet" in err


def test_a_column_name_has_one_vocabulary_across_node_types(built):
    import pandas as pd

    data, _, g = built
    schema = read_schema(data)
    for t, spec in schema.node_types.items():
        table = pd.read_parquet(os.path.join(data, spec.table))
        for i, c in enumerate(spec.categorical):
            # The same value has the same code in every type that has the column (graph format 2).
            owners = [u for u, s in schema.node_types.items() if c in s.categorical]
            union = sorted(set().union(*(
                set(pd.read_parquet(os.path.join(data, schema.node_types[u].table))[c].dropna()) - {""}
                for u in owners)))
            assert g.vocab[t][c] == union
            codes = g.cat[t][:, i]
            values = table[c].fillna("").to_numpy()
            decoded = np.array([union[k - 1] if k else "" for k in codes], dtype=object)
            np.testing.assert_array_equal(decoded, values)
