"""grain input pipelines: labelled pairs for the bi-encoder, packed text for pretraining, node texts
for embedding (docs/architecture.md, decision 9).

Every pipeline is a `grain.MapDataset` over row indices (shuffled with a seed, repeated, batched)
mapped to dicts of numpy arrays of `batch_size` rows (tower inputs right-padded to a configured
bucket, `tokenizer.encode_e5`) and returned as a `grain.IterDataset`, whose iterator state
`star_jax.checkpoint.Checkpointer` saves next to the model. Batches are the same with `workers=0`
and `workers=N`; `shard=(process_index, process_count)` gives each process its rows of each batch.

    batches = iter(pair_dataset(data_dir, tokenizer, cfg.llm, batch_size=64, epochs=None))
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import grain
import numpy as np
from absl import flags

from star_jax.config import LLMConfig
from star_jax.data.schema import read_schema
from star_jax.data.tables import IdIndex, arrow_table, node_columns, read_labels
from star_jax.data.tokenizer import adds_eos, encode_e5
from star_jax.data.validate import check_data
from star_jax.errors import StarError
from star_jax.tracking import progress

# grain 0.2.18 worker processes read an absl flag when they start (google/grain#1355): mark the
# flags parsed here, the one module that builds loaders. Spawned workers import it too.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

# One prefetch thread: the HF tokenizer wrapper is not safe to call from several threads at once,
# and the fast tokenizer already spreads a batch over cores.
_READ = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class Tower(NamedTuple):
    max_len: int  # tokens a text is cut to, EOS included
    instruction: str | None  # E5's task instruction before the text (the request tower only)
    pool: str | None  # regex whose first group is the part of the text the mean pools (None: all)


def tower(llm: LLMConfig, node_type: str) -> Tower:
    """How `node_type`'s texts go through their tower. In STAR's bi-encoder member profiles are the
    requests and job postings the documents; E5 puts its instruction on the request side only. Any
    other node type with text is treated as a document."""
    if node_type == "member":
        return Tower(llm.member_max_len, llm.instruction or None, llm.member_pool)
    return Tower(llm.job_max_len, None, llm.job_pool)


class NodeTexts:
    """id -> text of one node type, loaded on first use in each process (workers reload, not unpickle)."""

    def __init__(self, data_dir: str | os.PathLike, node_type: str):
        self.data_dir, self.node_type = os.fspath(data_dir), node_type
        self._index: IdIndex | None = None  # sorted ids
        self._texts: Any = None  # pyarrow StringArray aligned with the sorted ids

    def __getstate__(self) -> dict:
        # A grain worker reloads the lookup from the data directory instead of receiving every text.
        return {"data_dir": self.data_dir, "node_type": self.node_type}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def table(self) -> str:
        return read_schema(self.data_dir).node_types[self.node_type].table

    def _load(self) -> None:
        spec = read_schema(self.data_dir).node_types[self.node_type]
        t = arrow_table(self.data_dir, spec.table, node_columns(spec), ["id", "text"])
        ids = t["id"].to_numpy()
        order = np.argsort(ids, kind="stable")
        self._index, self._texts = IdIndex(ids[order]), t["text"].combine_chunks().take(order)

    def ids(self) -> np.ndarray:
        """int64 [N]: every id of the type, in increasing order."""
        return self.index().ids

    def index(self) -> IdIndex:
        if self._index is None:
            self._load()
        return self._index

    def lookup(self, ids: np.ndarray) -> list[str]:
        found, pos = self.index().find(ids)
        if not found.all():
            raise StarError(f"{self.table}: id {ids[~found][0]} not found (run `star-jax validate`)")
        return self._texts.take(pos).to_pylist()


def _local_rows(shard: tuple[int, int], batch_size: int) -> slice:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise StarError(
            f"shard: expected (process_index, process_count) with 0 <= index < count, got {shard}"
        )
    if batch_size % count:
        raise StarError(f"batch_size: {batch_size} is not divisible by the {count} processes")
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


def _fill(rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill a short final batch with copies of its first row; returns (rows, valid).

    Every batch then has `batch_size` rows, so a jitted step compiles once per token bucket.
    """
    valid = np.arange(batch_size) < len(rows)
    return np.concatenate([rows, np.full(batch_size - len(rows), rows[0], rows.dtype)]), valid


def _index_batches(
    n: int, batch_size: int, *, seed: int, shuffle: bool, epochs: int | None, drop_remainder: bool
) -> grain.MapDataset:
    if drop_remainder and n < batch_size:
        raise StarError(f"batch_size: {batch_size} is larger than the {n} rows available")
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # a different permutation per epoch, derived from the seed
    if epochs != 1:
        ds = ds.repeat(epochs)  # None: forever
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def _finish(ds: grain.MapDataset, workers: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(_READ)
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


# -- labelled pairs ------------------------------------------------------------------------------


class Pairs:
    """The labelled pairs of one split (optionally positives only), loaded on first use per process."""

    def __init__(self, data_dir: str | os.PathLike, split: str, positives_only: bool = False):
        self.data_dir, self.split, self.positives_only = os.fspath(data_dir), split, positives_only
        self._cols: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {"data_dir": self.data_dir, "split": self.split, "positives_only": self.positives_only}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def columns(self) -> dict[str, np.ndarray]:
        """member_id, job_id (int64) and label (int8), in file order."""
        if self._cols is None:
            df = read_labels(self.data_dir, self.split, ["member_id", "job_id", "label"])
            if self.positives_only:
                df = df[df["label"] == 1]
            self._cols = {c: df[c].to_numpy() for c in df.columns}
        return self._cols

    def __len__(self) -> int:
        return len(self.columns()["label"])


class _PairBatch:
    def __init__(
        self,
        pairs: Pairs,
        members: NodeTexts,
        jobs: NodeTexts,
        tokenizer: Any,
        llm: LLMConfig,
        batch_size: int,
        shard: tuple[int, int],
    ):
        self.pairs, self.members, self.jobs, self.tokenizer = pairs, members, jobs, tokenizer
        self.member, self.job = tower(llm, "member"), tower(llm, "job")
        self.buckets = list(llm.buckets)
        self.batch_size, self.local = batch_size, _local_rows(shard, batch_size)

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows, valid = _fill(rows, self.batch_size)
        cols = self.pairs.columns()
        member_id, job_id = cols["member_id"][rows], cols["job_id"][rows]
        m = encode_e5(
            self.tokenizer,
            self.members.lookup(member_id),
            self.member.max_len,
            self.buckets,
            self.member.instruction,
            where=f"{self.members.table}: text",
            ids=member_id,
            section=self.member.pool,
        )
        j = encode_e5(
            self.tokenizer,
            self.jobs.lookup(job_id),
            self.job.max_len,
            self.buckets,
            self.job.instruction,
            where=f"{self.jobs.table}: text",
            ids=job_id,
            section=self.job.pool,
        )
        batch = {
            "member_ids": m.ids,
            "member_len": m.lengths,
            "member_pool": m.pool,
            "job_ids": j.ids,
            "job_len": j.lengths,
            "job_pool": j.pool,
            "label": cols["label"][rows].astype(np.int32),
            "member_id": member_id,
            "job_id": job_id,
            "valid": valid,
        }
        # The pad length above comes from the whole global batch, so the per-process pieces
        # concatenate to what one process would see; each process tokenizes the whole global batch,
        # which is small next to a forward pass of the towers.
        return {k: v[self.local] for k, v in batch.items()}


def pair_dataset(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    llm: LLMConfig,
    *,
    split: str = "train",
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = 1,
    positives_only: bool = False,
    drop_remainder: bool = True,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Labelled (member, job) pairs of `split` as tokenized, bucketed batches of `batch_size` rows.

    Each batch (local rows only, with `shard`) is a dict of numpy arrays:
        member_ids int32 [B, Tm]  member text with the E5 instruction (request tower, llm.member_max_len)
        member_len int32 [B]
        member_pool float32 [B, Tm] 1 on the tokens the tower's mean pools (llm.member_pool)
        job_ids    int32 [B, Tj]  job text, no prefix (document tower, llm.job_max_len)
        job_len    int32 [B]
        job_pool   float32 [B, Tj]  (llm.job_pool)
        label      int32 [B]      1: applied, 0: not
        member_id, job_id int64 [B]
        valid      bool  [B]      False only for the fill rows of a short final batch
    `epochs=None` repeats forever (training); each epoch has its own permutation of the seed.
    """
    check_data(data_dir)
    pairs = Pairs(data_dir, split, positives_only)
    batches = _index_batches(
        len(pairs), batch_size, seed=seed, shuffle=shuffle, epochs=epochs, drop_remainder=drop_remainder
    )
    fn = _PairBatch(
        pairs, NodeTexts(data_dir, "member"), NodeTexts(data_dir, "job"), tokenizer, llm, batch_size, shard
    )
    return _finish(batches.map(fn), workers)


# -- node texts for embedding --------------------------------------------------------------------


class _TextBatch:
    def __init__(
        self,
        node_ids: np.ndarray,
        texts: NodeTexts,
        tokenizer: Any,
        max_len: int,
        buckets: list[int],
        instruction: str | None,
        batch_size: int,
        shard: tuple[int, int],
    ):
        self.node_ids, self.texts, self.tokenizer = node_ids, texts, tokenizer
        self.max_len, self.buckets, self.instruction = max_len, buckets, instruction
        self.batch_size, self.local = batch_size, _local_rows(shard, batch_size)

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows, valid = _fill(rows, self.batch_size)
        ids = self.node_ids[rows]
        enc = encode_e5(
            self.tokenizer,
            self.texts.lookup(ids),
            self.max_len,
            self.buckets,
            self.instruction,
            where=f"{self.texts.table}: text",
            ids=ids,
        )
        batch = {"input_ids": enc.ids, "lengths": enc.lengths, "node_id": ids, "valid": valid}
        return {k: v[self.local] for k, v in batch.items()}


def text_dataset(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    node_type: str,
    *,
    max_len: int,
    buckets: list[int],
    batch_size: int,
    instruction: str | None = None,
    node_ids: np.ndarray | None = None,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Texts of `node_type` (all, in id order, or `node_ids` in the given order), one pass, for embedding.

    Batches: input_ids int32 [B, T], lengths int32 [B], node_id int64 [B], valid bool [B] (the last
    batch is filled up to `batch_size`). `tower(llm, node_type)` gives the matching max_len and instruction.
    """
    schema = check_data(data_dir)
    if node_type not in schema.node_types or not schema.node_types[node_type].text:
        raise StarError(f"node type {node_type!r} has no text column in schema.json")
    texts = NodeTexts(data_dir, node_type)
    ids = texts.ids() if node_ids is None else np.asarray(node_ids, np.int64)
    if node_ids is not None and len(ids):
        found, _ = texts.index().find(ids)
        if not found.all():
            raise StarError(f"node_ids: {ids[~found][0]} is not an id of {texts.table}")
    batches = _index_batches(len(ids), batch_size, seed=0, shuffle=False, epochs=1, drop_remainder=False)
    fn = _TextBatch(ids, texts, tokenizer, max_len, list(buckets), instruction, batch_size, shard)
    return _finish(batches.map(fn), workers)


# -- packed corpus for causal-LM pretraining -----------------------------------------------------


def token_stream(data_dir: str | os.PathLike, tokenizer: Any, *, chunk: int = 1024) -> np.ndarray:
    """int32 [N]: every member then every job text in id order, each as BOS text EOS, concatenated."""
    schema = read_schema(data_dir)
    types = [t for t, spec in schema.node_types.items() if spec.text]
    sources = [NodeTexts(data_dir, t) for t in types]
    total = sum(len(s.ids()) for s in sources)
    eos = [] if adds_eos(tokenizer) else [tokenizer.eos_token_id]
    pieces = []
    with progress(total=total, desc="tokenize corpus", unit="text") as bar:
        for source in sources:
            ids = source.ids()
            for start in range(0, len(ids), chunk):
                texts = source.lookup(ids[start : start + chunk])
                rows = tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]
                pieces.extend(np.asarray(r + eos, np.int32) for r in rows)
                bar.update(len(texts))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


class _Windows:
    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, shard: tuple[int, int]):
        self.tokens, self.seq_len, self.local = tokens, seq_len, _local_rows(shard, batch_size)

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        starts = rows[self.local, None] * self.seq_len
        return {"input_ids": self.tokens[starts + np.arange(self.seq_len)]}


def corpus_dataset(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    epochs: int | None = None,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Member and job texts packed into `seq_len`-token windows, shuffled, batched: `input_ids` int32 [B, L].

    Documents are concatenated (BOS text EOS) and cut into consecutive windows, so a window may
    span documents, as in GPT-style packing; the trainer shifts inputs against targets itself.
    """
    check_data(data_dir)
    tokens = token_stream(data_dir, tokenizer)
    n = len(tokens) // seq_len
    if n < batch_size:
        raise StarError(
            f"pretrain.seq_len/batch_size: the corpus has {len(tokens):,} tokens, fewer than "
            f"one batch of {batch_size} x {seq_len}"
        )
    batches = _index_batches(n, batch_size, seed=seed, shuffle=True, epochs=epochs, drop_remainder=True)
    return _finish(batches.map(_Windows(tokens, seq_len, batch_size, shard)), workers)
