"""The synthetic marketplace: determinism, planted structure, the data contract, the baselines."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from star_jax.data import synth
from star_jax.data.baselines import replace_section, run_baselines
from star_jax.data.validate import validate
from star_jax.errors import StarError

# Data seed 102: no generator constant and no threshold below was chosen on it (seed 0 was the
# development seed); docs/repro.md runs it among the held-out seeds 100-103.
HELD_OUT_SEED = 102


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synth.synthesize(tmp_path_factory.mktemp("synth") / f"tiny-{HELD_OUT_SEED}", "tiny", HELD_OUT_SEED)


def _read(d: Path, rel: str):
    return pq.read_table(d / f"{rel}.parquet").to_pandas()


def _parquet_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.parquet"))


def test_same_seed_same_bytes_other_seed_other_data(tiny, tmp_path):
    again = synth.synthesize(tmp_path / "again", "tiny", HELD_OUT_SEED)
    files = _parquet_files(tiny)
    assert files == _parquet_files(again) and len(files) >= 13
    _, mismatch, errors = filecmp.cmpfiles(tiny, again, files + ["schema.json"], shallow=False)
    assert mismatch == [] and errors == []
    other = synth.synthesize(tmp_path / "other", "tiny", 1)
    for rel in (
        "nodes/member.parquet",
        "nodes/job.parquet",
        "labels/pairs.parquet",
        "edges/member_skill.parquet",
    ):
        assert not filecmp.cmp(tiny / rel, other / rel, shallow=False), rel
    assert _read(tiny, "nodes/member").text[0] != _read(other, "nodes/member").text[0]


def test_passes_validate(tiny):
    assert [str(f) for f in validate(tiny)] == []


def test_occupations_and_texts(tiny):
    members, latent = _read(tiny, "nodes/member"), _read(tiny, "latent/member")
    assert len(synth.V.FAMILIES) >= 25 and latent.family.nunique() >= 25
    assert len(members) == synth.SCALES["tiny"].members
    words = members.text.str.split().str.len()
    assert words.min() > 40 and words.max() < 230  # varied, and within the tiny demo's token budget
    assert (
        members.text.str.contains("\n\nExperience\n").all()
        and members.text.str.contains("\n\nSkills\n").all()
    )
    jobs = _read(tiny, "nodes/job")
    assert (
        jobs.text.str.contains("\n\nResponsibilities\n").all()
        and jobs.text.str.contains("\n\nRequirements\n").all()
    )
    assert set(members.seniority) == set(synth.V.SENIORITY)


def test_tag_rates_hold_and_every_true_skill_is_in_the_text(tiny):
    skills = _read(tiny, "latent/skill")
    rates = {"member": synth.MEMBER_TAG_RATE, "job": synth.JOB_TAG_RATE}
    for node, rel in (("member", "member_skill"), ("job", "job_skill")):
        latent, edges = _read(tiny, f"latent/{node}"), _read(tiny, f"edges/{rel}")
        true = {(i, s) for i, ss in zip(latent.id, latent.true_skills) for s in ss}
        tagged = set(zip(edges.src, edges.dst))
        assert tagged <= true, f"{rel}: an edge to a skill the node does not have"
        assert len(tagged) == len(edges)  # no repeated edge
        assert abs(len(tagged) / len(true) - rates[node]) < 0.05, rel
        # Every true skill, tagged or not, is written in the node's text in one of its forms.
        texts = dict(zip(*[_read(tiny, f"nodes/{node}")[c] for c in ("id", "text")]))
        forms = dict(zip(skills.id, skills.forms))
        missing = [(i, s) for i, s in true if not any(f in texts[i] for f in forms[s])]
        assert missing == [], f"{node}: true skills absent from the text, e.g. {missing[:3]}"


def test_time_ordered_splits_with_both_labels(tiny):
    pairs = _read(tiny, "labels/pairs")
    ts = {s: pairs.timestamp[pairs.split == s] for s in ("train", "val", "test")}
    assert ts["train"].max() < ts["val"].min() and ts["val"].max() < ts["test"].min()
    for s in ("train", "val", "test"):
        assert set(pairs.label[pairs.split == s]) == {0, 1}, s
    assert not pairs.duplicated(["member_id", "job_id"]).any()
    applied = _read(tiny, "edges/member_applied")
    train_pos = pairs[(pairs.split == "train") & (pairs.label == 1)]
    assert sorted(zip(applied.src, applied.dst, applied.timestamp)) == sorted(
        zip(train_pos.member_id, train_pos.job_id, train_pos.timestamp)
    )


def test_cold_start_members(tiny):
    members, pairs = _read(tiny, "nodes/member"), _read(tiny, "labels/pairs")
    applied = _read(tiny, "edges/member_applied")
    cold = members.set_index("id").cold_start
    with_train = set(pairs.member_id[pairs.split == "train"])
    assert cold[cold].index.isin(list(with_train)).sum() == 0  # flagged: no train pair
    assert cold[~cold].index.isin(list(with_train)).all()  # unflagged: some train pair
    assert not applied.src.isin(cold[cold].index).any()  # and no interaction edge
    test_members = pairs.member_id[pairs.split == "test"].unique()
    assert cold[test_members].mean() >= 0.10
    # Cold-start members still have text and attribute edges.
    for rel in ("member_title", "member_company", "member_skill"):
        assert _read(tiny, f"edges/{rel}").src.isin(cold[cold].index).any(), rel


def test_taste_is_visible_through_co_applies_only(tiny):
    """Members who applied to the same training job have more alike (hidden) tastes than random pairs."""
    latent = _read(tiny, "latent/member").set_index("id")
    taste = latent[[c for c in latent.columns if c.startswith("taste_")]].to_numpy()
    taste = taste / np.linalg.norm(taste, axis=1, keepdims=True)
    applied = _read(tiny, "edges/member_applied")
    a = applied.merge(applied, on="dst")
    a = a[a.src_x < a.src_y]
    co = (taste[a.src_x] * taste[a.src_y]).sum(1).mean()
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(taste), (2, 20_000))
    assert co > (taste[i] * taste[j]).sum(1).mean() + 0.05
    # The apply model does use it, and no text states it: the taste column is latent only.
    assert not any(c.startswith("taste") for c in _read(tiny, "nodes/member").columns)


def test_text_beats_tags_on_cold_start_and_the_oracle_beats_both(tiny):
    r = {x["baseline"]: x for x in run_baselines(tiny)}
    assert r["text"]["cold_start_auc"] > r["tags"]["cold_start_auc"] + 0.01
    assert r["text"]["test_auc"] > r["tags"]["test_auc"]
    assert r["oracle"]["test_auc"] > max(r["both"]["test_auc"], r["text"]["test_auc"]) + 0.03
    assert min(x["test_auc"] for x in r.values()) > 0.6


def test_up_to_date_output_is_kept_and_other_directories_are_refused(tiny, tmp_path):
    stamp = (tiny / "nodes/member.parquet").stat().st_mtime_ns
    assert synth.synthesize(tiny, "tiny", HELD_OUT_SEED) == tiny
    assert (tiny / "nodes/member.parquet").stat().st_mtime_ns == stamp
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(StarError, match="not a synthetic data directory"):
        synth.synthesize(mine, "tiny", 0)
    with pytest.raises(StarError, match="unknown scale"):
        synth.synthesize(tmp_path / "x", "huge", 0)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_crash_leaves_no_half_written_directory(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(synth, "member_chunk", boom)
    with pytest.raises(RuntimeError, match="killed"):
        synth.synthesize(tmp_path / "data", "tiny", 0)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_reports_errors_in_one_line(tmp_path, capsys):
    from star_jax.cli import main

    assert main(["synth", "--scale", "tiny", "--seed", "3", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "schema.json").is_file()
    capsys.readouterr()
    assert main(["synth", "--scale", "huge", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0]


def test_replace_section_rewrites_only_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- baselines:start -->\nold\n<!-- baselines:end -->\noutro\n")
    replace_section(doc, "baselines", "new table")
    assert doc.read_text() == "intro\n<!-- baselines:start -->\nnew table\n<!-- baselines:end -->\noutro\n"
    replace_section(doc, "scale", "numbers")
    assert doc.read_text().endswith("outro\n\n<!-- scale:start -->\nnumbers\n<!-- scale:end -->\n")
