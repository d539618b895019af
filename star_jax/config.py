"""Typed run configuration: dataclasses, YAML files in `configs/`, and `--set a.b=c` overrides.

The dataclasses below are the schema. OmegaConf merges a YAML file and the overrides onto it, and
rejects unknown keys and wrong types; `load_config` turns its errors into one `StarError` line
naming the file and the field. The defaults are the tiny CPU demo, so `configs/tiny.yaml` only
has to say what it wants to document.

Sections follow the pipeline: data -> tokenizer -> llm (+ pretrain, lora, llm_train) -> embed ->
store -> graph/sampler -> gnn (+ gnn_train) -> eval, with `mesh` shared by the JAX stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from star_jax.errors import StarError

# Names the model code maps to functions; listed here so a config is checked when it loads
# (tests/test_pipeline.py checks each list against the code that uses it).
LLM_DTYPES = ("float32", "bfloat16", "float16")
REMAT_NAMES = ("none", "full", "save_projections")  # star_jax.llm.mistral.REMAT_POLICIES
ATTENTION_NAMES = (None, "xla", "cudnn", "chunked")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # star_jax.llm.lora.TARGET_MODULES
LORA_SAVED = ("embed_tokens",)  # star_jax.llm.lora.SAVED_MODULES
STORE_DTYPES = ("bfloat16", "float32", "float16")  # star_jax.store.layout.DTYPES
COMPRESSIONS = ("zstd", "blosc", "none")
WEIGHTINGS = ("uniform", "degree", "weight")  # sampler.neighbor_weighting


class Checked:
    """A config section that checks itself when built (YAML, `--set`, or code) and on `check()`."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        pass


def _at_least(section: str, obj: Any, low: float, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < low:
            raise StarError(f"{section}.{name}: must be >= {low:g}, got {getattr(obj, name)}")


def _within(section: str, obj: Any, low: float, high: float, *names: str, open_high: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if not (low <= v < high if open_high else low <= v <= high):
            bracket = ")" if open_high else "]"
            raise StarError(f"{section}.{name}: expected a value in [{low:g}, {high:g}{bracket}, got {v}")


def _one_of(field_name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise StarError(f"{field_name}: expected one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass
class DataConfig:
    dir: str | None = None  # your own Parquet tables (docs/data_format.md); None: synthesize them
    scale: str = "tiny"  # synthetic scale (star_jax.data.synth): tiny 2k | small 50k | medium 1M members
    seed: int = 0  # synthetic data seed: the same seed gives byte-identical tables


@dataclass
class TokenizerConfig:
    dir: str | None = None  # an existing HF tokenizer directory; None: train a BPE on the corpus
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclass
class MistralConfig(Checked):
    """Mistral architecture (HF `config.json` names) plus the numerics we choose at run time.

    `star_jax.llm.load_mistral` fills the architecture from a checkpoint's config.json; the runtime
    fields (`dtype`, `param_dtype`, `remat`, `attention`) always come from the run config.
    """

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None
    max_position_embeddings: int = 4096
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False  # LM head = embedding matrix (only the causal-LM head uses it)
    initializer_range: float = 0.02  # std of the normal init of fresh (pretrained-by-us) weights
    # Runtime numerics, never read from config.json.
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | save_projections
    # None (auto: chunked on the CPU, jax.nn.dot_product_attention elsewhere) | chunked | xla | cudnn
    attention: str | None = None

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def check(self) -> None:
        """One line naming the `llm.arch` field the model cannot honour."""
        _one_of("llm.arch.dtype", self.dtype, LLM_DTYPES)
        _one_of("llm.arch.param_dtype", self.param_dtype, LLM_DTYPES)
        _one_of("llm.arch.remat", self.remat, REMAT_NAMES)
        _one_of("llm.arch.attention", self.attention, ATTENTION_NAMES)
        if self.attention == "cudnn" and self.dtype == "float32":
            raise StarError("llm.arch.attention: 'cudnn' needs llm.arch.dtype bfloat16 or float16")
        _at_least("llm.arch", self, 1, "num_attention_heads", "num_key_value_heads", "hidden_size",
                  "num_hidden_layers", "vocab_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise StarError(f"llm.arch.num_attention_heads: {self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_key_value_heads}")
        if self.resolved_head_dim % 2:
            raise StarError(f"llm.arch.head_dim: {self.resolved_head_dim} must be even for rotary embeddings")


# The skill list of a member's text and the requirements of a job's (star_jax.data.synth writes them).
MEMBER_SKILLS_SECTION = r"\nSkills\n(.*)$"
JOB_SKILLS_SECTION = r"\nRequirements\n(.*?)(?:\n\n|$)"
POOLINGS = ("mean", "last_token", "mean_first_last")  # `llm.pooling`; functions in star_jax.llm.biencoder
# `llm.projection`: "none", or a head registered in star_jax.llm.biencoder.PROJECTIONS (CONTRIBUTING.md).
PROJECTIONS = ("none",)


@dataclass
class LLMConfig(Checked):
    base_dir: str | None = None  # local HF Mistral dir (e.g. e5-mistral-7b-instruct); None: pretrain one
    arch: MistralConfig = field(default_factory=MistralConfig)
    # E5 puts a task instruction on the query side only; in STAR the query is the member profile.
    instruction: str = (
        "Instruct: Given a member profile, retrieve job postings the member would apply to\nQuery: "
    )
    member_max_len: int = 256  # request tower (paper: about 1024)
    job_max_len: int = 256  # document tower (paper: about 1800)
    # mean_first_last: the mean token embedding plus the mean final state, each unit-length, which
    # the demo's tiny from-scratch base needs (its layers blur the words; decision 23); mean: the
    # final states' mean; last_token: E5's, the last real token's state (star_jax/llm/biencoder.py).
    pooling: str = "mean_first_last"
    buckets: list[int] = field(default_factory=lambda: [64, 128, 192, 256])  # padded lengths, jit once each
    # A regex per tower whose first group spans the part of a text the mean pools (the layers still
    # read the whole text; star_jax.data.tokenizer.encode_e5); null pools every token. The defaults
    # are the synthetic texts' skill lists, which the signal baselines read as well; a text without
    # one pools its whole text (docs/architecture.md decision 28; docs/quality.md).
    member_pool: str | None = MEMBER_SKILLS_SECTION
    job_pool: str | None = JOB_SKILLS_SECTION
    projection: str = "none"  # a head after pooling, trained and exported with the adapters

    def check(self) -> None:
        # Checked here, not at the first trace: a typo should fail before the minutes of pretraining.
        self.arch.check()
        if self.pooling not in POOLINGS:
            raise StarError(f"llm.pooling: expected one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for name in ("member_pool", "job_pool"):
            pattern = getattr(self, name)
            try:
                groups = None if pattern is None else re.compile(pattern).groups
            except re.error as e:
                raise StarError(f"llm.{name}: not a regex: {e}") from None
            if groups == 0:
                raise StarError(f"llm.{name}: {pattern!r} has no group; its first group is the part pooled")
        if self.projection not in PROJECTIONS:
            raise StarError(f"llm.projection: unknown head {self.projection!r}; expected one of "
                            f"{', '.join(PROJECTIONS)}")


@dataclass
class PretrainConfig(Checked):
    """Causal-LM pretraining of the tiny demo base (there is no hub to download E5-Mistral from).

    The defaults fit the demo's budget of about 2.5 minutes on 2 CPU cores: 200 steps of 16 x 128
    tokens (410k tokens, one pass over the tiny member + job corpus).
    """

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    workers: int = 0  # grain worker processes
    seed: int = 0

    def check(self) -> None:
        _at_least("pretrain", self, 1, "steps", "batch_size", "seq_len", "log_every", "checkpoint_every",
                  "keep_checkpoints")
        _at_least("pretrain", self, 0, "warmup_steps", "workers")


@dataclass
class LoraConfig(Checked):
    """LoRA with PEFT's semantics: delta = (alpha / rank) * B(A(dropout(x))), A ~ U(+-1/sqrt(in)), B = 0."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input only, as PEFT's lora_dropout
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    shared: bool = True  # one adapter for both towers; False: a member adapter and a job adapter
    # PEFT's modules_to_save: a trained full copy of each, saved with the adapter. ["embed_tokens"]
    # lets the towers re-learn the token embeddings, which LoRA on the projections cannot reach
    # (docs/architecture.md decision 20; `Config.lora` turns it on for the demo).
    modules_to_save: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name, known in (("targets", LORA_TARGETS), ("modules_to_save", LORA_SAVED)):
            bad = [t for t in getattr(self, name) if t not in known]
            if bad:
                raise StarError(f"lora.{name}: unknown entry {bad[0]!r}; expected some of {', '.join(known)}")
        _at_least("lora", self, 1, "rank")
        _within("lora", self, 0.0, 1.0, "dropout", open_high=True)


@dataclass
class LLMTrainConfig(Checked):
    """Bi-encoder fine-tuning (star_jax/llm/train.py); losses in star_jax/llm/losses.py.

    The defaults fit the demo's budget of about 2.5 minutes on 2 CPU cores at the tiny scale
    (1,600 of the 16.6k train pairs seen, plus two embedding passes over the val and test texts).
    """

    steps: int = 100
    # Pairs per optimizer step. With grad_accum > 1 it is split into micro-batches of
    # batch_size / grad_accum (rows r with r % grad_accum == k), whose in-batch negatives are their own.
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3  # peak of linear warm-up then cosine decay to 0 (AdamW)
    warmup_steps: int = 10
    weight_decay: float = 0.0  # on matrices only (LoRA A/B), never on the logit scale and bias
    clip_norm: float = 1.0
    # BCE's gradient on a cosine is scaled by the logit scale (about 45 once fitted to the demo
    # base, see calibration_pairs): 0.25 keeps it from drowning the triplet term. On the tiny data,
    # test AUC after 100 steps (data seed 0): 0.73 with these weights, 0.67 with 1.0 / 1.0.
    bce_weight: float = 0.25
    triplet_weight: float = 1.0
    infonce_weight: float = 0.0
    triplet_margin: float = 0.2  # FaceNet's alpha, on squared L2 distances of unit vectors
    infonce_temperature: float = 0.05
    # Matryoshka widths (Kusupati et al. 2022): the loss is also applied to the renormalised first
    # D components of each embedding, for each D, and averaged with the full-width loss, so that
    # prefixes serve as compact vectors (`star-jax embed --dims D`). Increasing, each below the
    # pooled width (checked when the towers are built). []: off.
    matryoshka_dims: list[int] = field(default_factory=list)
    init_logit_scale: float = 10.0  # BCE logit = scale * cos + bias, both learned
    init_logit_bias: float = -5.0
    # Before training, fit the scale and bias to the frozen towers' cosines on this many train
    # pairs (logistic regression, the linear probe of LP-FT); 0: start from the init values above.
    calibration_pairs: int = 1024
    # Val AUC every this many steps; always at step 0 (adapters at zero: the frozen base) and at the end.
    eval_every: int = 0
    eval_batch_size: int = 64  # texts per embedding batch during evaluation (sorted by length)
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    log_every: int = 10
    log_examples: bool = False  # append every step's member/job ids to OUT/examples.jsonl
    workers: int = 0  # grain worker processes
    seed: int = 0

    def check(self) -> None:
        _at_least("llm_train", self, 1, "steps", "batch_size", "grad_accum", "eval_batch_size",
                  "checkpoint_every", "keep_checkpoints", "log_every")
        _at_least("llm_train", self, 0, "warmup_steps", "eval_every", "calibration_pairs", "workers",
                  "bce_weight", "triplet_weight", "infonce_weight")
        if self.batch_size % self.grad_accum:
            raise StarError(f"llm_train.batch_size: {self.batch_size} does not split into "
                            f"llm_train.grad_accum={self.grad_accum} equal micro-batches")
        dims = self.matryoshka_dims
        if any(not isinstance(d, int) or d < 1 for d in dims) or any(a >= b for a, b in zip(dims, dims[1:])):
            raise StarError(f"llm_train.matryoshka_dims: {dims} must be increasing positive integers")


@dataclass
class EmbedConfig(Checked):
    """`star-jax embed` (star_jax/llm/embed.py): member and job texts through the towers into the store.

    Texts are tokenized and written a block at a time; inside a block they are sorted by length
    and batched, each batch padded to its `llm.buckets` length (one compile per bucket).
    """

    node_types: list[str] = field(default_factory=lambda: ["member", "job"])  # `--types`
    batch_size: int = 64  # texts per forward pass (global), split over the mesh's data x fsdp devices
    # Texts sorted by length together; a block ends on a store shard boundary, so it holds at least
    # this many rows (whole shards). Changing it (or batch_size) between a crash and the rerun still
    # resumes, but the resumed rows may then differ from an uninterrupted run in the last bits.
    block_rows: int = 1024

    def check(self) -> None:
        _at_least("embed", self, 1, "batch_size", "block_rows")


@dataclass
class StoreConfig(Checked):
    root: str | None = None  # local path or kvstore URL (file://, gs://, s3://, memory://); None: RUN/store
    kvstore: str = "file"  # kvstore driver for a root given as a bare path: file | gcs | s3 | memory
    dtype: str = "bfloat16"  # bfloat16 | float32 | float16 (zarr-python reads float32 and float16, not bf16)
    shard_rows: int = 1024  # rows per stored shard (one file)
    # Rows per inner chunk, the unit a random-row read decodes. 0: about 8 KiB per chunk, e.g. 1 row
    # of 4096-d bf16, which reads random rows 5-7x faster than 16 rows (docs/benchmarks.md).
    chunk_rows: int = 0
    # zstd | blosc (zstd + bitshuffle) | none. Both save ~22% on embeddings; zstd decodes faster.
    compression: str = "zstd"
    compression_level: int = 3
    cache_mb: int = 0  # readers' cache of decoded chunks (repeated random reads, e.g. GNN features)

    def check(self) -> None:
        """One line for a store dtype, layout or compression the writer cannot use."""
        _one_of("store.dtype", self.dtype, STORE_DTYPES)
        _one_of("store.compression", self.compression, COMPRESSIONS)
        rows, chunk = self.shard_rows, self.chunk_rows
        if chunk < 0 or rows < 1 or (chunk and rows % chunk):
            raise StarError(f"store.shard_rows={self.shard_rows}: must be a positive multiple of "
                            f"store.chunk_rows={self.chunk_rows} (0: automatic)")
        _at_least("store", self, 0, "cache_mb")


def _default_relation_fanouts() -> dict[str, list[int]]:
    # Members and jobs have one title, jobs one company, members about two: more draws repeat them.
    # Skills are what a match turns on: a node draws up to 8 of them (with `distinct`, all of them
    # where it has no more; members have about 3 tagged, jobs 5, at most 9 on the synthetic data).
    return {"member_title_rev": [1, 1], "member_company_rev": [2, 1], "job_title_rev": [1, 1],
            "job_company_rev": [1, 1], "member_skill_rev": [8, 2], "job_skill_rev": [8, 2]}


@dataclass
class SamplerConfig(Checked):
    """Fixed-shape k-hop neighbour sampling (star_jax.graph.sampler); hops = len(fanouts).

    With the defaults a batch has 12,965 node slots and 12,800 edge slots (about 81 per seed).
    """

    fanouts: list[int] = field(default_factory=lambda: [4, 2])  # per hop, for every relation
    # Per-relation overrides, keyed by relation name in *message* direction (graph/batch.py):
    # `member_skill: [0, 3]` lets a skill node draw 3 members at hop 2; `member_skill_rev` is a
    # member drawing skills. Caps hop-2 growth through hub types (skill, title, company).
    relation_fanouts: dict[str, list[int]] = field(default_factory=_default_relation_fanouts)
    adaptive: bool = False  # LiGNN schedule: start small, grow when validation AUC plateaus
    start_fanouts: list[int] = field(default_factory=lambda: [2, 1])
    fanout_step: int = 1
    plateau_tolerance: float = 0.002
    neighbor_weighting: str = "uniform"  # uniform | degree (1/sqrt(neighbour degree)) | weight (edge weight)
    # uniform only: a node with no more neighbours than its fan-out takes each one once (the rest of
    # its slots stay empty) instead of drawing with replacement, so small neighbourhoods come whole.
    distinct: bool = True
    target_relation: str = "member_applied"  # the predicted member -> job edges, kept out of neighbourhoods
    batch_size: int = 64  # positive pairs per step
    num_random_negatives: int = 32  # shared random jobs per step
    workers: int = 0  # grain worker processes (0: sample in a background thread)
    prefetch: int = 2  # batches buffered ahead (per worker)
    seed: int = 0

    def check(self) -> None:
        """The checks that need no graph (star_jax.graph.sampler checks relation names against one)."""
        hops = len(self.fanouts)
        if hops == 0:
            raise StarError("sampler.fanouts: at least one hop is needed")

        def counts(name: str, values: list[int]) -> None:
            if len(values) != hops:
                raise StarError(f"sampler.{name}: expected {hops} values (one per hop, like "
                                f"sampler.fanouts), got {list(values)}")
            if any(int(v) < 0 for v in values):
                raise StarError(f"sampler.{name}: fan-outs must be >= 0, got {list(values)}")

        counts("fanouts", self.fanouts)
        for name, values in self.relation_fanouts.items():
            counts(f"relation_fanouts.{name}", values)
        if self.adaptive:
            counts("start_fanouts", self.start_fanouts)
            if self.fanout_step < 1:
                raise StarError(f"sampler.fanout_step: must be >= 1 with sampler.adaptive, "
                                f"got {self.fanout_step}")
        _one_of("sampler.neighbor_weighting", self.neighbor_weighting, WEIGHTINGS)
        _at_least("sampler", self, 1, "batch_size", "prefetch")
        _at_least("sampler", self, 0, "num_random_negatives", "workers")


GRAPH_SOURCES = ("local", "tensorstore")  # graph.source


@dataclass
class GraphConfig(Checked):
    """Where the graph's arrays live (star_jax.graph.tstore; docs/scaling.md)."""

    # A TensorStore kvstore URL (file://, gs://, s3://) that build-graph also writes the graph to,
    # as zarr3 arrays with a manifest written last; "" writes none.
    store: str = ""
    # What train-gnn and gnn-embed read: "local" memory-maps the graph directory (written by
    # build-graph or `star-jax graph fetch`); "tensorstore" reads graph.store directly through a
    # cache of cache_mb of decoded chunks, for a graph larger than one host's disk.
    source: str = "local"
    cache_mb: int = 1024
    chunk_bytes: int = 1 << 20  # bytes per stored object (a zarr3 shard); rows are never split
    # Bytes per read chunk inside an object: what one random read decodes and the cache holds.
    read_bytes: int = 1 << 16

    def check(self) -> None:
        _one_of("graph.source", self.source, GRAPH_SOURCES)
        if self.source == "tensorstore" and not self.store:
            raise StarError("graph.store: required with graph.source=tensorstore (a kvstore URL)")
        _at_least("graph", self, 0, "cache_mb")
        _at_least("graph", self, 1, "chunk_bytes", "read_bytes")


@dataclass
class GNNConfig(Checked):
    """The heterogeneous attention encoder and its link-prediction decoder (star_jax.gnn.model)."""

    hidden_dim: int = 128  # divisible by heads
    out_dim: int = 200  # STAR's exported embedding size
    heads: int = 4
    layers: int = 2
    dropout: float = 0.0  # on each HGT layer's output projection, before the gated skip
    use_llm: bool = True  # projected stored LLM embeddings (member and job)
    # With use_llm and llm_block 0: also add one shared projection of the member and job LLM
    # embeddings to the output (star_jax.gnn.model, "LLM skip", zero at the start), so the towers'
    # own similarity reaches the scores.
    llm_skip: bool = True
    # With use_llm, D > 0: the member and job outputs are [graph part (out_dim - D) ; the stored LLM
    # vector through a fixed map to D dims, times a gain], each part L2-normalised, so a score is a
    # weighted sum of the graph cosine and the block's cosine. The gain is 0 while the graph part
    # trains and is then picked on val (gnn_train.llm_block_gains; docs/architecture.md decision
    # 17). 0: the LLM skip instead.
    llm_block: int = 64
    # The block's maps. principal: the stored vectors' top D principal directions, one map for
    # members and jobs, so the block keeps the towers' cosine. labelled: a member map and a job map
    # from a logistic regression on the bilinear form of the two stored vectors, fitted on the
    # labelled train pairs (star_jax.gnn.block_fit; decision 26): the towers saw a tenth of them.
    llm_block_fit: str = "labelled"
    # Also add to a member's or job's output a map of the mean input vector of its sampled skill,
    # title and company neighbours, one map per attribute type shared by both (star_jax.gnn.model).
    attribute_skip: bool = True
    # K > 0: the member and job outputs also carry a K-d block of fixed tables summed over the node's
    # attributes (skill, title and company neighbours, shared categorical codes with use_cat, a
    # constant), fitted as a bilinear form on the labelled train pairs before the graph part trains
    # (star_jax.gnn.attribute_fit; docs/architecture.md decision 27). Its gain is 0 while the graph
    # part trains and is then picked on val with the LLM block's (gnn_train.attribute_block_gains).
    attribute_block: int = 64
    attribute_block_buckets: int = 4096  # hashed rows per attribute node type of the block's tables
    use_id: bool = True  # hashed learned ID embeddings
    # drop: a member or job with no training-period apply (cold start, real or simulated by
    # gnn_train.cold_start_rate) gets no ID embedding, as DropoutNet withholds preference input;
    # keep: it reads its hash bucket like any node (an untrained or colliding row).
    cold_start_ids: str = "drop"
    use_cat: bool = True  # categorical feature embeddings
    # One embedding table per categorical column name, shared by the node types that have it
    # (member and job `location` codes name the same city; graph.hetero.shared_codes).
    shared_cat: bool = True
    id_buckets: int = 4096  # hashed ID embedding rows per node type
    cat_dim: int = 32  # embedding size of each categorical column
    cat_buckets: int = 1024  # rows per categorical column; code 0 is "missing", larger codes wrap
    normalize: bool = True  # L2-normalise the output embeddings (scores are then scaled cosines)
    init_logit_scale: float = 10.0  # decoder: logit = scale * <member, job> + bias, both learned
    init_logit_bias: float = -5.0
    # Loss: BCE over the batch's labelled pairs (the diagonal) plus this weight times BCE over the
    # in-batch and random negatives; None: one mean over every entry (star_jax.gnn.model.link_loss).
    negatives_weight: float | None = None
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

    def check(self) -> None:
        if self.hidden_dim % self.heads:
            raise StarError(f"gnn.hidden_dim: {self.hidden_dim} is not divisible by gnn.heads={self.heads}")
        _one_of("gnn.dtype", self.dtype, ("float32", "bfloat16"))
        _one_of("gnn.cold_start_ids", self.cold_start_ids, ("drop", "keep"))
        _one_of("gnn.llm_block_fit", self.llm_block_fit, ("principal", "labelled"))
        _at_least("gnn", self, 1, "hidden_dim", "out_dim", "heads", "layers", "id_buckets", "cat_dim",
                  "cat_buckets")
        _within("gnn", self, 0.0, 1.0, "dropout", open_high=True)
        _at_least("gnn", self, 0, "llm_block", "attribute_block")
        _at_least("gnn", self, 1, "attribute_block_buckets")
        if self.llm_block + self.attribute_block >= self.out_dim:
            raise StarError(f"gnn.llm_block + gnn.attribute_block: {self.llm_block} + {self.attribute_block} "
                            f"leave no room in gnn.out_dim={self.out_dim}")


@dataclass
class GNNTrainConfig(Checked):
    """Link-prediction training of the GNN (star_jax.gnn.train) and its export (star_jax.gnn.export)."""

    # 300 x 64 applies: about 4.4 passes over the tiny train split (docs/quality.md: the test AUC
    # still rose from 100 to 300 steps; more random negatives per step did not help)
    steps: int = 300
    lr: float = 3e-3
    warmup_steps: int = 20  # linear warm-up, then cosine decay to `final_lr_ratio` * lr
    final_lr_ratio: float = 0.1
    # Train on every labelled train pair, the shown-but-not-applied ones as negatives (LinkSAGE's
    # (member, job, label) tuples), not on the applies alone.
    labelled_negatives: bool = False
    # Place one job each batch member was shown in the train period and did not apply to among the
    # shared negatives (the rest stay random): the in-batch objective then also separates an apply
    # from what the member passed over, which is what the labelled test pairs measure
    # (docs/architecture.md decision 16).
    shown_negatives: bool = True
    # Per training batch, the share of member and job seeds stripped of their own apply edges, so
    # the encoder also learns to embed cold-start nodes (star_jax.gnn.cold_start.ColdStartSampler).
    cold_start_rate: float = 0.5
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    eval_every: int = 50  # val AUC every this many steps and at the end (adaptive fan-outs grow here)
    # Early stopping: gnn-embed exports the parameters of the evaluation with the best val AUC, not
    # the last step's (the LLM-feature variants peak early on the tiny data: docs/quality.md).
    keep_best: bool = True
    # With gnn.llm_block: the LLM block's gain is 0 while the graph part trains; afterwards each of
    # these is tried on every val pair (one embedding pass for all) and the best is kept (result.json
    # `llm_block_gain`). The apply-vs-random objective would weigh the towers' cosine for an easy
    # task, not for ranking the jobs a member was shown (docs/architecture.md decision 17).
    llm_block_gains: list[float] = field(default_factory=lambda: [0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0])
    # With gnn.llm_block_fit labelled: the L2 penalties on the bilinear form (times the mean loss's
    # scale; star_jax.gnn.block_fit) tried, the one with the best val AUC kept.
    llm_block_l2: list[float] = field(default_factory=lambda: [3e-6, 1e-5, 3e-5, 1e-4])
    # With gnn.attribute_block: its gains tried with each LLM block gain (result.json
    # `attribute_block_gain`), and the L2 penalties of its fit (star_jax.gnn.attribute_fit).
    attribute_block_gains: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.7, 1.0, 1.4, 2.0])
    attribute_block_l2: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3, 1e-2])
    eval_pairs: int = 1024  # val pairs scored at each evaluation (a fixed random subset; 0: all)
    eval_batch_size: int = 256  # seeds per evaluation and gnn-embed batch (no negatives)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    # Split each batch over every device of the mesh (star_jax.gnn.distributed), as a run of several
    # processes always does; false: one process trains on its first device.
    data_parallel: bool = False

    def check(self) -> None:
        _at_least("gnn_train", self, 1, "steps", "checkpoint_every", "log_every", "eval_batch_size",
                  "keep_checkpoints")
        _at_least("gnn_train", self, 0, "eval_every", "eval_pairs", "warmup_steps")
        _within("gnn_train", self, 0.0, 1.0, "cold_start_rate", "final_lr_ratio")
        if not self.llm_block_gains or any(g < 0 for g in self.llm_block_gains):
            raise StarError(f"gnn_train.llm_block_gains: expected gains >= 0, got {self.llm_block_gains}")
        if not self.llm_block_l2 or any(v <= 0 for v in self.llm_block_l2):
            raise StarError(f"gnn_train.llm_block_l2: expected penalties > 0, got {self.llm_block_l2}")
        if not self.attribute_block_gains or any(g < 0 for g in self.attribute_block_gains):
            raise StarError(f"gnn_train.attribute_block_gains: expected gains >= 0, got "
                            f"{self.attribute_block_gains}")
        if not self.attribute_block_l2 or any(v <= 0 for v in self.attribute_block_l2):
            raise StarError(f"gnn_train.attribute_block_l2: expected penalties > 0, got "
                            f"{self.attribute_block_l2}")


# The paper's ablation rows: the two LLM towers, and the GNN with the inputs each variant turns on
# (gnn.use_id / use_cat / use_llm).
LLM_VARIANTS = ("llm_frozen", "llm_finetuned")
GNN_VARIANTS: dict[str, dict[str, bool]] = {
    "gnn_id_cat": {"use_id": True, "use_cat": True, "use_llm": False},
    "gnn_id_cat_llm": {"use_id": True, "use_cat": True, "use_llm": True},
    "gnn_id_llm": {"use_id": True, "use_cat": False, "use_llm": True},
}
VARIANTS = LLM_VARIANTS + tuple(GNN_VARIANTS)


def check_variants(variants: list[str]) -> None:
    for v in variants:
        if v not in VARIANTS:
            raise StarError(f"eval.variants: unknown variant {v!r}; expected some of {', '.join(VARIANTS)}")
    if not variants:
        raise StarError("eval.variants: empty; name at least one of " + ", ".join(VARIANTS))


@dataclass
class EvalConfig(Checked):
    """The ablation report (star_jax.eval.report) and which variants the pipeline builds for it."""

    num_candidates: int = 1000  # fixed random candidate jobs for MRR / recall@k (all jobs when fewer)
    k: int = 10  # recall@k (report key `recall_at_<k>`)
    seed: int = 0  # draws the candidate set
    # The paper's ablation rows; the pipeline runs only the stages these need.
    variants: list[str] = field(
        default_factory=lambda: ["llm_frozen", "llm_finetuned", "gnn_id_cat", "gnn_id_cat_llm", "gnn_id_llm"]
    )
    # Version migration: fine-tune a second adapter with llm_train.seed = `migration_seed`, embed it as
    # a new store version, map it onto the first and report fidelity and downstream AUC.
    migration: bool = False
    migration_seed: int = 1

    def check(self) -> None:
        check_variants(self.variants)
        if self.migration and not ({"llm_finetuned", "gnn_id_cat_llm", "gnn_id_llm"} & set(self.variants)):
            raise StarError("eval.migration: needs llm_finetuned or a gnn_*_llm variant in eval.variants")
        _at_least("eval", self, 1, "num_candidates", "k")


def _default_rules() -> dict[str, list[str]]:
    # Logical axis -> mesh axes, after MaxText's pure-FSDP table: weights shard their `embed` dim
    # over fsdp and their head/mlp dims over tensor; activations shard the batch over data+fsdp.
    return {
        "vocab": ["tensor"],
        "embed": ["fsdp"],
        "mlp": ["tensor"],
        "heads": ["tensor"],
        "kv_heads": ["tensor"],
        "head_dim": [],
        "layers": [],
        "norm": [],
        "lora_rank": [],
        "activation_batch": ["data", "fsdp"],
        "activation_length": [],
        "activation_embed": [],
        "activation_heads": ["tensor"],
        "activation_head_dim": [],
        "activation_kv_heads": ["tensor"],
        "activation_mlp": ["tensor"],
    }


@dataclass
class MeshConfig(Checked):
    data: int = 1
    fsdp: int = -1  # -1: all remaining devices
    tensor: int = 1
    rules: dict[str, list[str]] = field(default_factory=_default_rules)
    # Multi-host: jax.distributed.initialize() is called when num_processes > 1 or under SLURM/MPI.
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int | None = None
    # Seconds a training process may go without progress (a step, a progress-bar update) before it
    # stops the job in one line, exit status 75 (star_jax.watchdog; twice this before the first
    # step, which compiles). 0: off. 30 min is far above any live step, evaluation batch or
    # checkpoint wait, and far below the hours a hung job would hold its allocation.
    watchdog_s: float = 1800.0

    def check(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for k, v in sizes.items():
            if v == 0 or v < -1:
                raise StarError(f"mesh.{k}: must be a positive size or -1, got {v}")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise StarError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
        for name, axes in self.rules.items():
            bad = [a for a in axes if a not in sizes]
            if bad:
                raise StarError(f"mesh.rules.{name}: unknown mesh axis {bad[0]!r}; expected one of "
                                f"{', '.join(sizes)}")
        if self.num_processes > 1 and (not self.coordinator_address or self.process_id is None):
            raise StarError("mesh.coordinator_address, mesh.process_id: required when mesh.num_processes > 1")
        if not 0 <= self.watchdog_s < float("inf"):  # also refuses nan
            raise StarError(f"mesh.watchdog_s: must be a number of seconds >= 0 (0: off), "
                            f"got {self.watchdog_s}")


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # The demo trains the tiny base's token embeddings with the adapter (decision 20); a bare
    # LoraConfig() is PEFT's plain LoRA.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(modules_to_save=["embed_tokens"]))
    llm_train: LLMTrainConfig = field(default_factory=LLMTrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    gnn: GNNConfig = field(default_factory=GNNConfig)
    gnn_train: GNNTrainConfig = field(default_factory=GNNTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def check(self) -> None:
        """Re-check every section after a change made in code (building a section checks it)."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if isinstance(section, Checked):
                section.check()


def _one_line(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0].strip()
    where = f"{source}: {key}" if key else source
    return f"{where}: {msg}"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Build a `Config` from the schema defaults, a YAML file and `a.b=c` overrides (in that order)."""
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise StarError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends: report the first line only
            raise StarError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if file_cfg is None or not OmegaConf.is_dict(file_cfg):
            if file_cfg:
                raise StarError(f"{path}: expected a mapping of config sections at the top level")
        else:
            try:
                cfg = OmegaConf.merge(cfg, file_cfg)
            except OmegaConfBaseException as e:
                raise StarError(_one_line(e, path)) from None
    for item in overrides or []:
        if "=" not in item:
            raise StarError(f"--set {item}: expected KEY=VALUE, e.g. --set gnn.heads=8")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise StarError(_one_line(e, f"--set {item}")) from None
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise StarError(_one_line(e, path or "config")) from None


def to_dict(cfg: Any) -> dict:
    """A dataclass config (or any section of one) as plain JSON-able data."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def fingerprint(*parts: Any) -> str:
    """A short, stable content hash of config sections and other JSON-able values.

    Stages store it next to their outputs, so a rerun with the same inputs is skipped and a
    resume against a different config is refused.
    """
    blob = json.dumps(
        [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set a.b=c` overrides."""
    parser.add_argument("--config", default=None, help="YAML config (default: built-in tiny defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set gnn.heads=8 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def flag_or_config(flag: str, given: str | None, configured: str | None, field: str) -> str:
    """A path from its flag, else from the config field; one line naming both when neither is set."""
    value = given or configured
    if value is None:
        raise StarError(f"{flag}: required (or set {field} in the config)")
    return value
