"""A synthetic job marketplace with planted structure, written in the data-directory format.

STAR's data is private, so this generator stands in for it (docs/architecture.md, decision 11).
One latent world (occupation families, seniority, places, skills, member taste and job style)
drives both the texts and the graph, so that each signal the paper combines is present for the
reason the paper gives it; docs/data_format.md, "The planted structure", describes it. A seed
fixes every byte of the output.

    synthesize("runs/synth/tiny-seed0", "tiny", seed=0)   # star-jax synth --scale tiny --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from star_jax.data import synth_vocab as V
from star_jax.data.schema import SCHEMA_FILE, default_schema, write_schema
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, read_json
from star_jax.tracking import progress

log = logging.getLogger(__name__)

GENERATOR = "star_jax.data.synth"
GENERATOR_VERSION = 2  # bump when the same (scale, seed) would give different bytes


@dataclass(frozen=True)
class Scale:
    members: int
    jobs: int
    companies: int
    impressions: float  # mean impressions drawn per member; repeats of a (member, job) pair are dropped


# tiny draws more impressions because its few live jobs per family make repeats common.
SCALES = {
    "tiny": Scale(members=2_000, jobs=600, companies=150, impressions=24.0),
    "small": Scale(members=50_000, jobs=5_000, companies=2_000, impressions=15.0),
    "medium": Scale(members=1_000_000, jobs=80_000, companies=20_000, impressions=20.0),
}
# Members per generation chunk and Parquet row group. Each chunk draws from its own RNG stream, so
# peak memory does not grow with the member count and the bytes do not depend on the machine.
CHUNK = 20_000

# Time line (seconds). Pairs before TRAIN_END are train, before VAL_END val, the rest test.
DAY = 86_400
T0 = 1_704_067_200  # 2024-01-01 UTC
T_END = T0 + 180 * DAY
TRAIN_END = T0 + 126 * DAY
VAL_END = T0 + 153 * DAY
CURRENT_YEAR = 2024
JOB_LIFE_DAYS = (45, 90)

# The apply model, weighted against each term's spread over the pairs shown: skill match dominates,
# as in the paper's setting, and taste, the part only the graph can reveal, comes second.
W_SKILL = 8.0
W_SENIORITY = 1.2
W_LOCATION = 1.2
W_TASTE = 1.6
APPLY_BIAS = -5.2
TASTE_DIM = 2  # few dimensions: a member's handful of training applies can reveal them
# Expected share of a node's true skills that become skill edges. Members' are tagged less: with most
# of a member's skills only in the text, the applied-to jobs' skills stand in for them (LLM features
# then add more for cold-start members than for active ones, as STAR reports).
MEMBER_TAG_RATE = 0.3
JOB_TAG_RATE = 0.6
TAG_RELATIVE = (1.0, 0.85, 0.35)  # relative tag odds of a canonical name, a synonym, a misspelling
# By a skill's popularity rank in its family (0 = most listed): relative odds that the taxonomy tags
# it, and its weight in skill coverage. Niche skills decide a match more than ubiquitous ones.
RANK_BINS = (5, 10)
TAG_BY_RANK = (1.0, 0.35, 0.05)
WEIGHT_BY_RANK = (1.0, 2.0, 3.0)
MEMBER_FORMS = (0.7, 0.22, 0.08)  # how members write a skill: canonical, synonym, misspelling
JOB_FORMS = (0.85, 0.13, 0.02)
NEW_MEMBER_SHARE = 0.15  # members who join after VAL_END: the cold-start slice of the test split
NEW_MEMBER_ACTIVITY = 0.5  # their impressions relative to others': they have had less time to browse
REMOTE_SHARE = 0.12
CANDIDATES = 3  # jobs the recommender scores per impression before showing the best


# --------------------------------------------------------------------------------------------
# The vocabulary, compiled to arrays once.


class Vocab(NamedTuple):
    skill_names: list[str]  # [S]
    forms: pa.Array  # [Q] every surface form of every skill
    form_skill: np.ndarray  # int32 [Q]
    form_start: np.ndarray  # int32 [S, 3] first form of each kind (canonical, synonym, misspelling)
    form_count: np.ndarray  # int32 [S, 3]
    family_pool: np.ndarray  # int32 [F, P] skill ids, -1 padding, most common first
    family_logw: np.ndarray  # f64 [F, P] log draw weight, -inf padding
    general: np.ndarray  # int32 [G] skills any family may list
    tag_odds: np.ndarray  # f64 [S] relative odds that the taxonomy recognises the skill at all
    weight: np.ndarray  # f64 [S] the skill's weight in skill coverage
    related: np.ndarray  # int32 [F, R] the other families of each family's group, -1 padding
    n_related: np.ndarray  # int32 [F]
    family_weight: np.ndarray  # f64 [F] sums to 1
    industry_cum: np.ndarray  # f64 [F, I] cumulative industry preference of each family
    title_of: np.ndarray  # int32 [F, 3, 6] (family, base title, seniority) -> title id
    title_names: list[str]
    title_family: np.ndarray  # int32 [T]
    title_level: np.ndarray  # int8 [T]
    verbs_past: pa.Array  # [F * 4] capitalised
    verbs_now: pa.Array  # [F * 4] capitalised
    verbs_now_lower: pa.Array
    objects: pa.Array  # [F * 5]
    n_verbs: int
    n_objects: int


@functools.lru_cache(maxsize=1)
def vocab() -> Vocab:
    skills: dict[str, tuple[list[str], list[str]]] = {}

    def add(spec: str) -> list[int]:
        ids = []
        for canonical, syn, mis in V.parse_skills(spec):
            s, m = skills.setdefault(canonical, ([], []))
            s.extend(x for x in syn if x not in s)
            m.extend(x for x in mis if x not in m)
            ids.append(list(skills).index(canonical))
        return ids

    general = add(V.GENERAL_SKILLS)
    pools = [add(f.skills) for f in V.FAMILIES]
    names = list(skills)
    forms, form_skill = [], []
    form_start = np.zeros((len(names), 3), np.int32)
    form_count = np.zeros((len(names), 3), np.int32)
    for i, name in enumerate(names):
        syn, mis = skills[name]
        mis = mis or [t for t in [V.typo(name)] if t]
        for kind, group in enumerate(([name], syn, mis)):
            form_start[i, kind], form_count[i, kind] = len(forms), len(group)
            forms.extend(group)
            form_skill.extend([i] * len(group))
    P = max(map(len, pools))
    F = len(V.FAMILIES)
    # A taxonomy knows established skills better than niche ones: a skill's odds follow its best
    # rank (popularity) in any family that lists it.
    rank = np.full(len(names), P)
    rank[general] = 0
    for pool in pools:
        rank[pool] = np.minimum(rank[pool], np.arange(len(pool)))
    rank_bin = np.searchsorted(RANK_BINS, rank, side="right")
    family_pool = np.full((F, P), -1, np.int32)
    family_logw = np.full((F, P), -np.inf)
    for f, pool in enumerate(pools):
        family_pool[f, : len(pool)] = pool
        family_logw[f, : len(pool)] = -0.5 * np.log1p(np.arange(len(pool)))  # gentle Zipf: listed order
    groups = [f.group for f in V.FAMILIES]
    rel_lists = [[g for g in range(F) if g != f and groups[g] == groups[f]] for f in range(F)]
    related = np.full((F, max(map(len, rel_lists))), -1, np.int32)
    for f, r in enumerate(rel_lists):
        related[f, : len(r)] = r
    fw = np.array([f.weight for f in V.FAMILIES])
    ind_index = {name: i for i, name in enumerate(V.INDUSTRIES)}
    pref = np.full((F, len(V.INDUSTRIES)), 0.15 / len(V.INDUSTRIES))  # anyone can work anywhere
    for f, fam in enumerate(V.FAMILIES):
        w = 1.0 / np.arange(1, len(fam.industries) + 1)
        pref[f, [ind_index[x] for x in fam.industries]] += 0.85 * w / w.sum()
    title_of = np.zeros((F, 3, len(V.SENIORITY)), np.int32)
    title_names, title_family, title_level = [], [], []
    for f, fam in enumerate(V.FAMILIES):
        for level, pattern in enumerate(V.SENIORITY_TITLE):
            for b, base in enumerate(fam.titles):
                name = pattern.format(base, dept=fam.dept)
                if name not in title_names[-3:]:  # one director title per family
                    title_names.append(name)
                    title_family.append(f)
                    title_level.append(level)
                title_of[f, b, level] = len(title_names) - 1
    verbs = [v for fam in V.FAMILIES for v in fam.verbs]
    objects = [o for fam in V.FAMILIES for o in fam.objects]
    n_verbs, n_objects = len(V.FAMILIES[0].verbs), len(V.FAMILIES[0].objects)
    assert len(verbs) == F * n_verbs and len(objects) == F * n_objects, "every family: 4 verbs, 5 objects"
    return Vocab(
        skill_names=names,
        forms=pa.array(forms, pa.string()),
        form_skill=np.array(form_skill, np.int32),
        form_start=form_start,
        form_count=form_count,
        family_pool=family_pool,
        family_logw=family_logw,
        general=np.array(general, np.int32),
        tag_odds=np.array(TAG_BY_RANK)[rank_bin],
        weight=np.array(WEIGHT_BY_RANK)[rank_bin],
        related=related,
        n_related=np.array([len(r) for r in rel_lists], np.int32),
        family_weight=fw / fw.sum(),
        industry_cum=np.cumsum(pref / pref.sum(1, keepdims=True), axis=1),
        title_of=title_of,
        title_names=title_names,
        title_family=np.array(title_family, np.int32),
        title_level=np.array(title_level, np.int8),
        verbs_past=pa.array([p[0].upper() + p[1:] for _, p in verbs]),
        verbs_now=pa.array([n[0].upper() + n[1:] for n, _ in verbs]),
        verbs_now_lower=pa.array([n for n, _ in verbs]),
        objects=pa.array(objects),
        n_verbs=n_verbs,
        n_objects=n_objects,
    )


# --------------------------------------------------------------------------------------------
# Vectorised helpers: random draws and Arrow string assembly (texts are built column-wise with
# Arrow string kernels, never row by row in Python).


def _cat(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _take(values: pa.Array | list[str], idx: np.ndarray) -> pa.Array:
    values = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    return values.take(pa.array(np.asarray(idx, np.int64)))


def _itoa(x: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(x, np.int64)), pa.string())


def _lists(values: pa.Array, counts: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _join(values: pa.Array, counts: np.ndarray, sep: str) -> pa.Array:
    return pc.binary_join(_lists(values, counts), sep)


def _and_join(values: pa.Array, counts: np.ndarray) -> pa.Array:
    """Per row: "a", "a and b", "a, b and c" over consecutive runs of `counts` values (counts >= 1)."""
    ends = np.cumsum(counts)
    is_last = np.zeros(len(values), bool)
    is_last[ends - 1] = True
    head = _join(values.filter(pa.array(~is_last)), counts - 1, ", ")
    last = values.take(pa.array(ends - 1))
    return pc.if_else(pa.array(counts > 1), _cat(head, " and ", last), last)


def _cum_choice(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One draw per row of a [n, K] matrix of cumulative probabilities."""
    u = rng.random(len(cum))
    return np.minimum((u[:, None] > cum).sum(1), cum.shape[1] - 1)


def _block_choice(rng: np.random.Generator, keys: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Draw one row from `block` b of a sorted `keys` = block + cumulative-probability-within-block."""
    return np.searchsorted(keys, block + rng.random(len(block)) * (1 - 1e-9), side="right")


def _top_k_rows(rng: np.random.Generator, pool: np.ndarray, logw: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, `k[i]` items of `pool[i]` drawn without replacement by weight (Gumbel top-k); -1 after."""
    keys = logw + rng.gumbel(size=logw.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    picked = np.take_along_axis(pool, order, axis=1)
    picked[np.arange(pool.shape[1])[None, :] >= k[:, None]] = -1
    return picked


def _dedupe_shuffle(rng: np.random.Generator, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids (-1 = empty) -> (rows with duplicates dropped, shuffled, -1 at the end; counts)."""
    big = np.iinfo(np.int32).max
    s = np.sort(np.where(ids < 0, big, ids), axis=1)
    s[:, 1:][s[:, 1:] == s[:, :-1]] = big
    keys = np.where(s == big, 2.0, rng.random(s.shape))
    s = np.take_along_axis(s, np.argsort(keys, axis=1, kind="stable"), axis=1)
    counts = (s != big).sum(1)
    width = max(int(counts.max(initial=1)), 1)
    s = s[:, :width]
    return np.where(s == big, -1, s).astype(np.int32), counts


def _pick_forms(rng: np.random.Generator, voc: Vocab, skills: np.ndarray, mix: tuple) -> tuple:
    """How a text writes each skill: (form index [same shape], kind 0/1/2; -1 where skills is -1)."""
    s = np.maximum(skills, 0)
    kind = np.searchsorted(np.cumsum(mix), rng.random(skills.shape), side="right").clip(0, 2)
    kind = np.where(voc.form_count[s, kind] > 0, kind, 0)  # no synonym or misspelling: canonical
    form = voc.form_start[s, kind] + (rng.random(skills.shape) * voc.form_count[s, kind]).astype(np.int32)
    return np.where(skills >= 0, form, -1), np.where(skills >= 0, kind, -1)


def _tag(
    rng: np.random.Generator, voc: Vocab, skills: np.ndarray, kind: np.ndarray, rate: float
) -> np.ndarray:
    """Which true skills the taxonomy tags: `rate` overall, common skills written canonically most often."""
    valid = kind >= 0
    rel = (np.array(TAG_RELATIVE)[np.maximum(kind, 0)] * voc.tag_odds[np.maximum(skills, 0)])[valid]
    lo, hi = 0.0, 1.0 / rel.min()  # bisect the scale c with mean(min(c * rel, 1)) = rate
    for _ in range(50):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(c * rel, 1.0).mean() < rate else (lo, c)
    p = np.zeros(kind.shape)
    p[valid] = np.minimum(c * rel, 1.0)
    return valid & (rng.random(kind.shape) < p)


def _flat(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded rows -> (row index, value) of the non-negative entries, row-major."""
    rows, cols = np.nonzero(ids >= 0)
    return rows, ids[rows, cols]


# --------------------------------------------------------------------------------------------
# The world shared by all members: companies and jobs.


class World(NamedTuple):
    company_name: pa.Array  # [C]
    company_industry: np.ndarray  # int32 [C]
    company_size: np.ndarray  # int8 [C] index into COMPANY_SIZES
    company_hq: np.ndarray  # int32 [C] location index
    company_pop: np.ndarray  # f64 [C]
    company_keys: np.ndarray  # sorted industry + cumulative popularity, for `_block_choice`
    company_order: np.ndarray  # company ids in `company_keys` order
    job_family: np.ndarray  # int32 [J]
    job_level: np.ndarray  # int8 [J]
    job_title: np.ndarray  # int32 [J]
    job_company: np.ndarray  # int32 [J]
    job_location: np.ndarray  # int32 [J] location index, -1 remote
    job_skills: np.ndarray  # int32 [J, K] true (required) skills, -1 padding
    job_n_skills: np.ndarray  # int32 [J]
    job_skill_matrix: np.ndarray  # bool [J, S]
    job_skill_weight: np.ndarray  # f64 [J] total weight of the job's required skills
    job_style: np.ndarray  # f32 [J, TASTE_DIM]
    job_posted: np.ndarray  # int64 [J]
    job_expires: np.ndarray  # int64 [J]
    live_keys: np.ndarray  # int64 sorted family * 2^40 + posted
    live_jobs: np.ndarray  # job ids in `live_keys` order


LOC_COUNTRY = np.array([sorted({c for _, c, _ in V.LOCATIONS}).index(c) for _, c, _ in V.LOCATIONS], np.int32)
LOC_WEIGHT = np.array([w for *_, w in V.LOCATIONS]) / sum(w for *_, w in V.LOCATIONS)
LOC_NAMES = [name for name, _, _ in V.LOCATIONS]


def _related_draw(rng: np.random.Generator, voc: Vocab, family: np.ndarray) -> np.ndarray:
    """A random other family of the same group (the family itself where it has none)."""
    k = voc.n_related[family]
    pick = voc.related[family, (rng.random(len(family)) * np.maximum(k, 1)).astype(np.int64)]
    return np.where(k > 0, pick, family).astype(np.int32)


def _industry_draw(rng: np.random.Generator, voc: Vocab, family: np.ndarray) -> np.ndarray:
    return _cum_choice(rng, voc.industry_cum[family])


def _company_draw(
    rng: np.random.Generator, keys: np.ndarray, order: np.ndarray, industry: np.ndarray
) -> np.ndarray:
    """A company of each given industry, drawn by popularity (`keys`, `order`: see `World`)."""
    return order[_block_choice(rng, keys, industry.astype(np.float64))].astype(np.int32)


def make_world(scale: Scale, seed: int) -> World:
    """Companies (grouped by industry, Zipf-popular) and jobs with their latent factors."""
    voc = vocab()
    rng = np.random.default_rng([seed, 1])
    F, S, n_ind = len(V.FAMILIES), len(voc.skill_names), len(V.INDUSTRIES)

    # Companies: industries in proportion to the families that hire from them (at least 2 each).
    demand = (voc.family_weight[:, None] * np.diff(voc.industry_cum, prepend=0, axis=1)).sum(0)
    n_c = scale.companies
    per_ind = np.maximum(2, np.floor(demand / demand.sum() * (n_c - 2 * n_ind)).astype(int))
    per_ind[np.argmax(demand)] += n_c - per_ind.sum()
    industry = np.repeat(np.arange(n_ind, dtype=np.int32), per_ind)
    names = []
    for i, k in enumerate(per_ind):
        suffixes = V.INDUSTRY_SUFFIX[V.INDUSTRIES[i]]
        space = len(V.COMPANY_ROOTS_A) * len(V.COMPANY_ROOTS_B) * len(suffixes)
        for code in rng.choice(space, size=k, replace=k > space):
            a, rest = divmod(int(code), len(V.COMPANY_ROOTS_B) * len(suffixes))
            b, s = divmod(rest, len(suffixes))
            names.append(f"{V.COMPANY_ROOTS_A[a]}{V.COMPANY_ROOTS_B[b]} {suffixes[s]}")
    pop = rng.pareto(1.2, n_c) + 0.05  # a few giants, a long tail of small firms
    rank = np.argsort(np.argsort(-pop)) / n_c  # 0 = most popular
    size = np.searchsorted([0.01, 0.04, 0.1, 0.2, 0.35, 0.55, 0.8], rank, side="right").astype(np.int8)
    size = (len(V.COMPANY_SIZES) - 1 - size).astype(np.int8)
    hq = rng.choice(len(LOC_NAMES), n_c, p=LOC_WEIGHT).astype(np.int32)
    cum = np.zeros(n_c)
    for i in range(n_ind):
        m = industry == i
        cum[m] = np.cumsum(pop[m]) / pop[m].sum()
    keys = industry + cum * (1 - 1e-9)
    order = np.argsort(keys, kind="stable").astype(np.int32)
    keys = keys[order]

    # Jobs.
    J = scale.jobs
    family = rng.choice(F, J, p=voc.family_weight).astype(np.int32)
    level = rng.choice(len(V.SENIORITY), J, p=V.SENIORITY_SHARE).astype(np.int8)
    title = voc.title_of[family, rng.integers(0, 3, J), level]
    company = _company_draw(rng, keys, order, _industry_draw(rng, voc, family))
    location = np.where(rng.random(J) < 0.7, hq[company], rng.choice(len(LOC_NAMES), J, p=LOC_WEIGHT)).astype(
        np.int32
    )
    location[rng.random(J) < REMOTE_SHARE] = -1
    n_fam = rng.integers(6, 11, J)
    fam_skills = _top_k_rows(rng, voc.family_pool[family], voc.family_logw[family], n_fam)
    gen = _top_k_rows(
        rng,
        np.broadcast_to(voc.general, (J, len(voc.general))),
        np.zeros((J, len(voc.general))),
        rng.binomial(2, 0.4, J),
    )
    skills, n_skills = _dedupe_shuffle(rng, np.concatenate([fam_skills, gen], axis=1))
    matrix = np.zeros((J, S), bool)
    r, v = _flat(skills)
    matrix[r, v] = True
    style = rng.standard_normal((J, TASTE_DIM)).astype(np.float32)
    posted = rng.integers(T0 - 90 * DAY, T_END - 7 * DAY, J)
    expires = posted + rng.integers(JOB_LIFE_DAYS[0] * DAY, JOB_LIFE_DAYS[1] * DAY, J)
    live_keys = family.astype(np.int64) * (1 << 40) + (posted - (T0 - 365 * DAY))
    live_order = np.argsort(live_keys, kind="stable")
    return World(
        company_name=pa.array(names),
        company_industry=industry,
        company_size=size,
        company_hq=hq,
        company_pop=pop,
        company_keys=keys,
        company_order=order,
        job_family=family,
        job_level=level,
        job_title=title,
        job_company=company,
        job_location=location,
        job_skills=skills,
        job_n_skills=n_skills.astype(np.int32),
        job_skill_matrix=matrix,
        job_skill_weight=(matrix * voc.weight).sum(1),
        job_style=style,
        job_posted=posted,
        job_expires=expires,
        live_keys=live_keys[live_order],
        live_jobs=live_order.astype(np.int32),
    )


def _skill_sentences(
    rng: np.random.Generator,
    owner: np.ndarray,
    family: np.ndarray,
    forms: np.ndarray,
    counts: np.ndarray,
    verbs: pa.Array,
    *,
    bullet: str,
    sep: str,
) -> pa.Array:
    """One "<Verb> <object> using <skill> [and <skill>]." per entry of `owner`, joined per owner.

    `owner[i]` is the row (of `forms` / `counts` / `family`) sentence i belongs to; owners are sorted.
    """
    voc = vocab()
    n = len(owner)
    f = family[owner]
    verb = _take(verbs, f * voc.n_verbs + rng.integers(0, voc.n_verbs, n))
    obj = _take(voc.objects, f * voc.n_objects + rng.integers(0, voc.n_objects, n))
    k = counts[owner]
    a = (rng.random(n) * k).astype(np.int64)
    b = (a + 1 + (rng.random(n) * np.maximum(k - 1, 1)).astype(np.int64)) % np.maximum(k, 1)
    sa = _take(voc.forms, forms[owner, a])
    two = (rng.random(n) < 0.5) & (k > 1)
    sb = _take(voc.forms, forms[owner, b])
    skills = pc.if_else(pa.array(two), _cat(sa, " and ", sb), sa)
    conn = _take(list(V.SKILL_CONNECTORS), rng.integers(0, len(V.SKILL_CONNECTORS), n))
    sentences = _cat(bullet, verb, " ", obj, conn, skills, ".")
    return _join(sentences, np.bincount(owner, minlength=len(counts)), sep)


def job_texts(world: World, seed: int) -> tuple[pa.Array, np.ndarray]:
    """Job postings (title, role, responsibilities, requirements, company blurb) and skill form kinds."""
    voc = vocab()
    rng = np.random.default_rng([seed, 2])
    J = len(world.job_family)
    forms, kinds = _pick_forms(rng, voc, world.job_skills, JOB_FORMS)
    title = _take(voc.title_names, world.job_title)
    company = world.company_name.take(pa.array(world.job_company))
    remote = world.job_location < 0
    loc = pc.if_else(
        pa.array(remote),
        _cat("Remote (", _take(LOC_NAMES, world.company_hq[world.job_company]), " time zone)"),
        _take(LOC_NAMES, np.maximum(world.job_location, 0)),
    )
    kind = pc.if_else(pa.array(world.job_level == 0), "Internship", "Full-time")
    f = world.job_family
    lead_obj = _take(voc.objects, f * voc.n_objects + rng.integers(0, voc.n_objects, J))
    lead_verb = _take(voc.verbs_now_lower, f * voc.n_verbs + rng.integers(0, voc.n_verbs, J))
    n_resp = rng.integers(2, 5, J)
    resp = _skill_sentences(
        rng,
        np.repeat(np.arange(J), n_resp),
        f,
        forms,
        world.job_n_skills,
        voc.verbs_now,
        bullet="- ",
        sep="\n",
    )
    lo = np.array([y[0] for y in V.SENIORITY_YEARS])[world.job_level]
    years = pc.if_else(
        pa.array(world.job_level == 0),
        "Currently studying towards a degree in a related field.",
        _cat(
            _itoa(np.maximum(lo, 1)), "+ years of experience in ", _take([x.dept for x in V.FAMILIES], f), "."
        ),
    )
    _, v = _flat(forms)
    required = _and_join(_take(voc.forms, v), world.job_n_skills)
    industry = world.company_industry[world.job_company]
    blurb = _cat(
        company,
        " is a ",
        _take(list(V.COMPANY_SIZE_WORDS), world.company_size[world.job_company]),
        " ",
        _take(list(V.INDUSTRIES), industry),
        " company headquartered in ",
        _take(LOC_NAMES, world.company_hq[world.job_company]),
        ". ",
        _take([V.INDUSTRY_BLURB[x] for x in V.INDUSTRIES], industry),
        " ",
        _take(list(V.JOB_PERKS), rng.integers(0, len(V.JOB_PERKS), J)),
    )
    text = _cat(
        title,
        " at ",
        company,
        "\n",
        loc,
        " | ",
        kind,
        "\n\nAbout the role\n",
        company,
        " is hiring a new ",
        title,
        " to ",
        lead_verb,
        " ",
        lead_obj,
        ".\n\nResponsibilities\n",
        resp,
        "\n\nRequirements\n- ",
        years,
        "\n- Experience with ",
        required,
        ".\n\nAbout ",
        company,
        "\n",
        blurb,
    )
    return pc.utf8_trim_whitespace(text), kinds


# --------------------------------------------------------------------------------------------
# Members, their texts and labels, one chunk at a time.


def _live_candidates(rng: np.random.Generator, world: World, family: np.ndarray, t: np.ndarray) -> tuple:
    """For each (family, time): CANDIDATES jobs of that family live at t (or its latest job)."""
    base = family.astype(np.int64) * (1 << 40) - (T0 - 365 * DAY)
    lo = np.searchsorted(world.live_keys, base + t - JOB_LIFE_DAYS[1] * DAY, side="right")
    hi = np.searchsorted(world.live_keys, base + t, side="right")
    first = np.searchsorted(world.live_keys, base + (T0 - 365 * DAY), side="left")  # the family's block
    n = hi - lo
    pos = lo[:, None] + (rng.random((len(t), CANDIDATES)) * n[:, None]).astype(np.int64)
    fallback = np.maximum(hi - 1, first)  # no job posted in the window: the family's latest
    pos = np.where(n[:, None] > 0, pos, fallback[:, None])
    jobs = world.live_jobs[np.minimum(pos, len(world.live_jobs) - 1)]
    live = (world.job_posted[jobs] <= t[:, None]) & (world.job_expires[jobs] > t[:, None])
    return jobs, live


def affinity_terms(
    world: World,
    m_skills: np.ndarray,
    m_level: np.ndarray,
    m_loc: np.ndarray,
    m_taste: np.ndarray,
    jobs: np.ndarray,
) -> dict[str, np.ndarray]:
    """The four components of the apply model for pairs (member row i, jobs[i])."""
    w = vocab().weight
    valid = m_skills >= 0
    hits = world.job_skill_matrix[jobs[:, None], np.maximum(m_skills, 0)] & valid
    coverage = (hits * w[np.maximum(m_skills, 0)]).sum(1) / world.job_skill_weight[jobs]
    d = world.job_level[jobs].astype(np.float64) - m_level
    fit = np.exp(-((d - 0.5) ** 2) / 1.5)  # the same level or one step up fits; a big jump does not
    jl = world.job_location[jobs]
    location = np.where(
        jl < 0,
        0.6,
        np.where(jl == m_loc, 1.0, np.where(LOC_COUNTRY[np.maximum(jl, 0)] == LOC_COUNTRY[m_loc], 0.35, 0)),
    )
    taste = (m_taste * world.job_style[jobs]).sum(1) / np.sqrt(TASTE_DIM)
    return {"skill_coverage": coverage, "seniority_fit": fit, "location_fit": location, "taste": taste}


def apply_logit(terms: dict[str, np.ndarray]) -> np.ndarray:
    return (
        APPLY_BIAS
        + W_SKILL * terms["skill_coverage"]
        + W_SENIORITY * terms["seniority_fit"]
        + W_LOCATION * terms["location_fit"]
        + W_TASTE * terms["taste"]
    )


class Members(NamedTuple):
    """Latent factors and work history of one chunk of n members (E experience entries in all)."""

    family: np.ndarray  # int32 [n]
    level: np.ndarray  # int8 [n] seniority index
    base: np.ndarray  # int [n] which of the family's base titles
    loc: np.ndarray  # int32 [n] location index
    years: np.ndarray  # int [n] years of experience
    taste: np.ndarray  # f32 [n, TASTE_DIM] collaborative taste, in no text or attribute
    skills: np.ndarray  # int32 [n, K] true skills, -1 padding
    n_skills: np.ndarray  # int [n]
    forms: np.ndarray  # int32 [n, K] how the profile writes each skill (index into Vocab.forms)
    kinds: np.ndarray  # int [n, K] 0 canonical, 1 synonym, 2 misspelling
    tagged: np.ndarray  # bool [n, K] the skill is a member_skill edge
    n_exp: np.ndarray  # int [n] experience entries, the current one first
    owner: np.ndarray  # int [E] member row of each entry
    k: np.ndarray  # int [E] 0 = current role
    e_family: np.ndarray  # int32 [E]
    e_title: np.ndarray  # int32 [E]
    e_company: np.ndarray  # int32 [E]
    e_start: np.ndarray  # int [E] year
    e_end: np.ndarray  # int [E] year


def member_profiles(rng: np.random.Generator, world: World, n: int) -> Members:
    """Occupation, seniority, place, taste, true skills (and which are tagged) and work history."""
    voc = vocab()
    F = len(V.FAMILIES)
    family = rng.choice(F, n, p=voc.family_weight).astype(np.int32)
    level = rng.choice(len(V.SENIORITY), n, p=V.SENIORITY_SHARE).astype(np.int8)
    base = rng.integers(0, 3, n)
    loc = rng.choice(len(LOC_NAMES), n, p=LOC_WEIGHT).astype(np.int32)
    yr = np.array(V.SENIORITY_YEARS)[level]
    years = rng.integers(yr[:, 0], yr[:, 1] + 1)
    taste = rng.standard_normal((n, TASTE_DIM)).astype(np.float32)
    # Career changers bring a few skills and past jobs from a related family.
    n_rel = voc.n_related[family]
    changer = (rng.random(n) < 0.15) & (n_rel > 0)
    prev_family = np.where(changer, _related_draw(rng, voc, family), family)

    # True skills: the family's (more with seniority), a related family's, general ones.
    fam = _top_k_rows(
        rng, voc.family_pool[family], voc.family_logw[family], np.clip(rng.poisson(5 + level), 3, 13)
    )
    rel = _top_k_rows(
        rng, voc.family_pool[prev_family], voc.family_logw[prev_family], np.where(changer, 3, 0)
    )
    G = len(voc.general)
    gen = _top_k_rows(rng, np.broadcast_to(voc.general, (n, G)), np.zeros((n, G)), rng.binomial(3, 0.4, n))
    skills, n_skills = _dedupe_shuffle(rng, np.concatenate([fam, rel, gen], axis=1))
    forms, kinds = _pick_forms(rng, voc, skills, MEMBER_FORMS)
    tagged = _tag(rng, voc, skills, kinds, MEMBER_TAG_RATE)

    # Experience: the current role first, then earlier ones, a step down in seniority each.
    n_exp = np.clip(1 + years // 4 + rng.integers(0, 2, n), 1, 4)
    owner = np.repeat(np.arange(n), n_exp)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n_exp) - n_exp, n_exp)
    e_family = np.where((k > 0) & (rng.random(len(owner)) < 0.5), prev_family[owner], family[owner])
    e_level = np.maximum(level[owner] - k, 0)
    e_title = voc.title_of[e_family, np.where(k == 0, base[owner], rng.integers(0, 3, len(owner))), e_level]
    e_company = _company_draw(
        rng, world.company_keys, world.company_order, _industry_draw(rng, voc, e_family)
    )
    e_len = 1 + rng.poisson(np.maximum(years[owner], 1) / n_exp[owner])
    # An entry ends when the next (more recent) one starts; the current one runs to the present.
    before = np.concatenate([[0], np.cumsum(e_len)[:-1]])
    e_end = CURRENT_YEAR - (before - np.repeat(before[np.cumsum(n_exp) - n_exp], n_exp))
    e_start = e_end - e_len

    return Members(
        family=family, level=level, base=base, loc=loc, years=years, taste=taste, skills=skills,
        n_skills=n_skills, forms=forms, kinds=kinds, tagged=tagged, n_exp=n_exp, owner=owner, k=k,
        e_family=e_family, e_title=e_title, e_company=e_company, e_start=e_start, e_end=e_end,
    )  # fmt: skip


def member_texts(rng: np.random.Generator, world: World, mb: Members) -> pa.Array:
    """Profiles: headline, summary, dated experience, education and the skills list."""
    voc = vocab()
    n = len(mb.family)
    family, level, years, forms, n_skills = mb.family, mb.level, mb.years, mb.forms, mb.n_skills
    owner, k, n_exp = mb.owner, mb.k, mb.n_exp
    current = np.cumsum(n_exp) - n_exp
    tname = _take(voc.title_names, mb.e_title)
    cname = world.company_name.take(pa.array(mb.e_company))
    period = _cat(_itoa(mb.e_start), " - ", pc.if_else(pa.array(k == 0), "present", _itoa(mb.e_end)))
    n_sent = np.where(k == 0, 2, 1)
    sentences = _skill_sentences(
        rng,
        np.repeat(np.arange(len(owner)), n_sent),
        mb.e_family,
        forms[owner],
        n_skills[owner],
        voc.verbs_past,
        bullet="",
        sep=" ",
    )
    entries = _join(_cat(tname, " at ", cname, " (", period, ")\n", sentences), n_exp, "\n\n")
    adj = _take(list(V.SUMMARY_ADJECTIVES), rng.integers(0, len(V.SUMMARY_ADJECTIVES), n))
    base_title = _take([t for fam in V.FAMILIES for t in fam.titles], family * 3 + mb.base)
    obj = _take(voc.objects, family * voc.n_objects + rng.integers(0, voc.n_objects, n))
    opener = pc.if_else(
        pa.array(years > 0),
        _cat(
            adj, " ", pc.utf8_lower(base_title), " with ", _itoa(years), " years of experience in ", obj, "."
        ),
        _cat(adj, " ", pc.utf8_lower(base_title), " starting out, keen to work on ", obj, "."),
    )
    n_top = np.minimum(n_skills, 3)
    top = _and_join(_take(voc.forms, forms[:, :3][np.arange(3)[None, :] < n_top[:, None]]), n_top)
    closer = pc.if_else(
        pa.array(rng.random(n) < 0.5),
        _cat(" ", _take(list(V.SUMMARY_CLOSERS), rng.integers(0, len(V.SUMMARY_CLOSERS), n))),
        "",
    )
    _, fv = _flat(forms)
    skill_list = _join(_take(voc.forms, fv), n_skills, ", ")
    degree = np.where(
        (level >= 4) & (rng.random(n) < 0.3), 2, (rng.random(n) < 0.35).astype(np.int64)
    )  # BSc / MSc / MBA
    grad = CURRENT_YEAR - years - rng.integers(0, 3, n)
    education = _cat(
        _take(list(V.DEGREES), degree),
        pc.if_else(
            pa.array(degree == 2),
            "",
            _cat(" in ", _take([V.DEGREE_SUBJECT[x.name] for x in V.FAMILIES], family)),
        ),
        ", ",
        _take(list(V.UNIVERSITIES), rng.integers(0, len(V.UNIVERSITIES), n)),
        pc.if_else(
            pa.array(level == 0),
            _cat(" (expected ", _itoa(np.full(n, CURRENT_YEAR + 1)), ")"),
            _cat(" (", _itoa(grad), ")"),
        ),
    )
    return _cat(
        _take(voc.title_names, mb.e_title[current]),
        " at ",
        world.company_name.take(pa.array(mb.e_company[current])),
        " | ",
        _take(LOC_NAMES, mb.loc),
        "\n\nAbout\n",
        opener,
        " Skilled in ",
        top,
        ".",
        closer,
        "\n\nExperience\n",
        entries,
        "\n\nEducation\n",
        education,
        "\n\nSkills\n",
        skill_list,
    )


class Impressions(NamedTuple):
    """The labelled pairs of one chunk, sorted by member then time."""

    member: np.ndarray  # int [P] member row in the chunk
    job: np.ndarray  # int32 [P]
    time: np.ndarray  # int64 [P] seconds
    terms: dict[str, np.ndarray]  # the apply model's components, f64 [P] each
    prob: np.ndarray  # f64 [P] apply probability
    label: np.ndarray  # int8 [P]
    new: np.ndarray  # bool [n] the member joined after VAL_END
    active_from: np.ndarray  # int64 [n]
    active_to: np.ndarray  # int64 [n]


def impressions(rng: np.random.Generator, world: World, scale: Scale, mb: Members) -> Impressions:
    """Activity windows, the jobs a simple recommender shows, and which of them the member applies to."""
    voc = vocab()
    n, F = len(mb.family), len(V.FAMILIES)
    family, loc = mb.family, mb.loc
    new = rng.random(n) < NEW_MEMBER_SHARE
    start = np.where(
        new, rng.integers(VAL_END, T_END - 5 * DAY, n), rng.integers(T0 - 180 * DAY, TRAIN_END - 30 * DAY, n)
    )
    first = np.maximum(start, T0)
    churn = ~new & (rng.random(n) < 0.2)
    end = np.where(churn, first + ((T_END - first) * rng.uniform(0.3, 1.0, n)).astype(np.int64), T_END)
    activity = rng.lognormal(-0.18, 0.6, n) * np.where(new, NEW_MEMBER_ACTIVITY, 1.0)
    n_imp = np.clip(rng.poisson(scale.impressions * activity), 3, 80)
    m = np.repeat(np.arange(n), n_imp)
    t = first[m] + (rng.random(len(m)) * (end[m] - first[m])).astype(np.int64)
    u = rng.random(len(m))
    rel_pick = _related_draw(rng, voc, family[m])
    target = np.where(u < 0.75, family[m], np.where(u < 0.9, rel_pick, rng.integers(0, F, len(m))))
    cand, live = _live_candidates(rng, world, target, t)
    jl = world.job_location[cand]
    loc_score = np.where(jl == loc[m][:, None], 1.5, np.where(jl < 0, 0.8, 0.0))
    score = np.where(live, loc_score + rng.gumbel(size=cand.shape), -np.inf)
    best = np.argmax(score, axis=1)
    job = cand[np.arange(len(m)), best]
    shown = live[np.arange(len(m)), best]  # no live job of that family at that time: no impression
    # A member sees a job once: keep the first impression of each pair.
    key = m.astype(np.int64) * len(world.job_family) + job
    order = np.lexsort((t, key))
    order = order[shown[order]]
    keep = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    keep = keep[np.lexsort((t[keep], m[keep]))]
    m, job, t = m[keep], job[keep], t[keep]
    terms = affinity_terms(world, mb.skills[m], mb.level[m], loc[m], mb.taste[m], job)
    p = 1.0 / (1.0 + np.exp(-apply_logit(terms)))
    label = (rng.random(len(m)) < p).astype(np.int8)
    return Impressions(m, job, t, terms, p, label, new, first, end)


def member_chunk(world: World, scale: Scale, seed: int, index: int, lo: int, hi: int) -> dict[str, pa.Table]:
    """Members lo..hi-1: node rows, attribute edges, labelled pairs, applies and latent rows."""
    rng = np.random.default_rng([seed, 3, index])
    ids = np.arange(lo, hi, dtype=np.int64)
    mb = member_profiles(rng, world, hi - lo)
    text = member_texts(rng, world, mb)
    imp = impressions(rng, world, scale, mb)
    m, job, t, label = imp.member, imp.job, imp.time, imp.label
    split = np.where(t < TRAIN_END, 0, np.where(t < VAL_END, 1, 2))
    cold = np.bincount(m, weights=split == 0, minlength=len(ids)) == 0
    current = np.cumsum(mb.n_exp) - mb.n_exp
    skills, tagged, n_skills = mb.skills, mb.tagged, mb.n_skills
    taste, level, loc = mb.taste, mb.level, mb.loc
    splits = pa.array(np.array(["train", "val", "test"])[split], pa.string())
    sr, sv = _flat(np.where(tagged, skills, -1))
    applied = (label == 1) & (split == 0)
    comp_pairs = np.unique(mb.owner.astype(np.int64) * len(world.company_name) + mb.e_company)
    return {
        "nodes/member": pa.table(
            {
                "id": ids,
                "text": text,
                "seniority": _take(list(V.SENIORITY), level),
                "location": _take(LOC_NAMES, loc),
                "industry": _take(list(V.INDUSTRIES), world.company_industry[mb.e_company[current]]),
                "cold_start": pa.array(cold),
            }
        ),
        "edges/member_skill": pa.table({"src": ids[sr], "dst": sv.astype(np.int64)}),
        "edges/member_title": pa.table({"src": ids, "dst": mb.e_title[current].astype(np.int64)}),
        "edges/member_company": pa.table(
            {
                "src": ids[comp_pairs // len(world.company_name)],
                "dst": comp_pairs % len(world.company_name),
            }
        ),
        "edges/member_applied": pa.table(
            {"src": ids[m[applied]], "dst": job[applied].astype(np.int64), "timestamp": t[applied]}
        ),
        "labels/pairs": pa.table(
            {
                "member_id": ids[m],
                "job_id": job.astype(np.int64),
                "label": label,
                "timestamp": t,
                "split": splits,
            }
        ),
        "latent/member": pa.table(
            {
                "id": ids,
                "family": _take([x.name for x in V.FAMILIES], mb.family),
                "seniority_level": level,
                "location": _take(LOC_NAMES, loc),
                "years": mb.years.astype(np.int16),
                **{f"taste_{i}": taste[:, i] for i in range(TASTE_DIM)},
                "true_skills": _lists(pa.array(skills[skills >= 0].astype(np.int64)), n_skills),
                "tagged": _lists(pa.array(tagged[skills >= 0]), n_skills),
                "skill_form": _lists(pa.array(mb.kinds[skills >= 0].astype(np.int8)), n_skills),
                "new_member": imp.new,
                "active_from": imp.active_from,
                "active_to": imp.active_to,
            }
        ),
        "latent/pairs": pa.table(
            {
                **{k: v.astype(np.float32) for k, v in imp.terms.items()},
                "apply_prob": imp.prob.astype(np.float32),
            }
        ),
    }


# --------------------------------------------------------------------------------------------
# Whole-world tables and the writer.


def world_tables(world: World, seed: int) -> dict[str, pa.Table]:
    """Every table except the member ones: jobs, companies, skills, titles, their edges and latents."""
    voc = vocab()
    J = len(world.job_family)
    text, kinds = job_texts(world, seed)
    tagged = _tag(np.random.default_rng([seed, 4]), voc, world.job_skills, kinds, JOB_TAG_RATE)
    jr, jv = _flat(np.where(tagged, world.job_skills, -1))
    job_ids = np.arange(J, dtype=np.int64)
    ind = world.company_industry
    C = len(ind)
    valid = world.job_skills >= 0
    location = _take(
        LOC_NAMES + [V.REMOTE], np.where(world.job_location < 0, len(LOC_NAMES), world.job_location)
    )
    return {
        "nodes/job": pa.table(
            {
                "id": job_ids,
                "text": text,
                "seniority": _take(list(V.SENIORITY), world.job_level),
                "location": location,
                "industry": _take(list(V.INDUSTRIES), ind[world.job_company]),
            }
        ),
        "nodes/company": pa.table(
            {
                "id": np.arange(C, dtype=np.int64),
                "industry": _take(list(V.INDUSTRIES), ind),
                "size": _take(list(V.COMPANY_SIZES), world.company_size),
            }
        ),
        "nodes/skill": pa.table({"id": np.arange(len(voc.skill_names), dtype=np.int64)}),
        "nodes/title": pa.table(
            {
                "id": np.arange(len(voc.title_names), dtype=np.int64),
                "seniority": _take(list(V.SENIORITY), voc.title_level),
            }
        ),
        "edges/job_skill": pa.table({"src": job_ids[jr], "dst": jv.astype(np.int64)}),
        "edges/job_title": pa.table({"src": job_ids, "dst": world.job_title.astype(np.int64)}),
        "edges/job_company": pa.table({"src": job_ids, "dst": world.job_company.astype(np.int64)}),
        "latent/job": pa.table(
            {
                "id": job_ids,
                "family": _take([x.name for x in V.FAMILIES], world.job_family),
                "seniority_level": world.job_level,
                "location": location,
                "company": world.job_company.astype(np.int64),
                **{f"style_{i}": world.job_style[:, i] for i in range(TASTE_DIM)},
                "true_skills": _lists(pa.array(world.job_skills[valid].astype(np.int64)), world.job_n_skills),
                "tagged": _lists(pa.array(tagged[valid]), world.job_n_skills),
                "posted": world.job_posted,
                "expires": world.job_expires,
            }
        ),
        "latent/skill": pa.table(
            {
                "id": np.arange(len(voc.skill_names), dtype=np.int64),
                "name": voc.skill_names,
                "weight": voc.weight.astype(np.float32),
                "tag_odds": voc.tag_odds.astype(np.float32),
                "forms": _lists(voc.forms, np.diff(np.r_[voc.form_start[:, 0], len(voc.forms)])),
            }
        ),
        "latent/title": pa.table(
            {
                "id": np.arange(len(voc.title_names), dtype=np.int64),
                "name": voc.title_names,
                "family": _take([x.name for x in V.FAMILIES], voc.title_family),
            }
        ),
        "latent/company": pa.table(
            {
                "id": np.arange(C, dtype=np.int64),
                "name": world.company_name,
                "hq": _take(LOC_NAMES, world.company_hq),
                "popularity": world.company_pop.astype(np.float32),
            }
        ),
        "latent/location": pa.table(
            {
                "name": LOC_NAMES,
                "country": [c for _, c, _ in V.LOCATIONS],
            }
        ),
    }


class _Writers:
    """One `ParquetWriter` per table; each `write` appends row groups."""

    def __init__(self, root: Path):
        self.root = root
        self._w: dict[str, pq.ParquetWriter] = {}

    def write(self, tables: dict[str, pa.Table]) -> None:
        for name, table in tables.items():
            if name not in self._w:
                path = self.root / f"{name}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                self._w[name] = pq.ParquetWriter(path, table.schema, compression="zstd")
            self._w[name].write_table(table, row_group_size=1 << 20)

    def close(self) -> None:
        for w in self._w.values():
            w.close()


def _provenance(scale: str, seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "scale": scale,
        "seed": int(seed),
        "member_flags": {
            "cold_start": "bool: the member has no train-split labelled pair and no member_applied edge"
        },
        "latent_dir": "latent",  # synthetic only: the oracle's true factors; no pipeline stage reads it
        "split_times": {"train_end": TRAIN_END, "val_end": VAL_END},
    }


def synthesize(
    out_dir: str | os.PathLike, scale: str = "tiny", seed: int = 0, *, force: bool = False
) -> Path:
    """Generate the synthetic marketplace at `scale` into `out_dir` (atomically) and return its path.

    An existing directory generated with the same scale, seed and generator version is kept as is
    (unless `force`). Any other non-empty directory at `out_dir` is refused rather than replaced.
    """
    if scale not in SCALES:
        raise StarError(f"--scale / data.scale: unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    out = Path(out_dir)
    schema_path = out / SCHEMA_FILE
    if out.exists() and any(out.iterdir()):
        extra = read_json(schema_path).get("extra", {}) if schema_path.is_file() else {}
        if extra.get("generator") != GENERATOR:
            raise StarError(
                f"--out {out}: exists and is not a synthetic data directory; refusing to replace it"
            )
        if not force and {k: extra.get(k) for k in ("generator_version", "scale", "seed")} == {
            "generator_version": GENERATOR_VERSION,
            "scale": scale,
            "seed": int(seed),
        }:
            return out
    sc = SCALES[scale]
    with atomic_dir(out) as tmp:
        world = make_world(sc, seed)
        writers = _Writers(tmp)
        try:
            writers.write(world_tables(world, seed))
            with progress(total=sc.members, desc=f"synth {scale}", unit="member", unit_scale=True) as bar:
                for index, lo in enumerate(range(0, sc.members, CHUNK)):
                    hi = min(lo + CHUNK, sc.members)
                    writers.write(member_chunk(world, sc, seed, index, lo, hi))
                    bar.update(hi - lo)
        finally:
            writers.close()
        write_schema(tmp, dataclasses.replace(default_schema(), extra=_provenance(scale, seed)))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    add_config_args(parser)
    parser.add_argument(
        "--scale", choices=list(SCALES), default=None, help="default: data.scale of the config"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: data.seed of the config")
    parser.add_argument("--out", required=True, help="data directory to write")
    parser.add_argument("--force", action="store_true", help="regenerate even if --out is up to date")


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args

    cfg = config_from_args(args)
    scale = args.scale or cfg.data.scale
    seed = cfg.data.seed if args.seed is None else args.seed
    t = time.perf_counter()
    out = synthesize(args.out, scale, seed, force=args.force)
    log.info(f"{out}: {scale} marketplace, seed {seed} ({time.perf_counter() - t:.1f}s)")
    return 0
