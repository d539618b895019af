"""Typed run configuration: dataclasses, YAML files in `configs/`, and `--set a.b=c` overrides.

The dataclasses below are the schema. OmegaConf merges a YAML file and the overrides onto it, and
rejects unknown keys and wrong types; `load_config` turns its errors into one `StarError` line
naming the file and the field. The defaults are the tiny CPU demo, so `configs/tiny.yaml` only
has to say what it wants to document.

Sections follow the pipeline: data -> tokenizer -> llm (+ pretrain, lora, llm_train) -> embed ->
store -> graph/sampler -> gnn (+ gnn_train) -> eval, with `mesh` shared by the JAX stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from star_jax.errors import StarError


@dataclass
class DataConfig:
    dir: str | None = None  # your own Parquet tables (docs/data_format.md); None: synthesize them
    scale: str = "tiny"  # synthetic scale: tiny | small | medium
    seed: int = 0


@dataclass
class TokenizerConfig:
    dir: str | None = None  # an existing HF tokenizer directory; None: train a BPE on the corpus
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclass
class MistralConfig:
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
    attention: str | None = None  # jax.nn.dot_product_attention implementation: None (auto) | xla | cudnn

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass
class LLMConfig:
    base_dir: str | None = None  # local HF Mistral dir (e.g. e5-mistral-7b-instruct); None: pretrain one
    arch: MistralConfig = field(default_factory=MistralConfig)
    # E5 puts a task instruction on the query side only; in STAR the query is the member profile.
    instruction: str = (
        "Instruct: Given a member profile, retrieve job postings the member would apply to\nQuery: "
    )
    member_max_len: int = 256  # request tower (paper: about 1024)
    job_max_len: int = 256  # document tower (paper: about 1800)
    buckets: list[int] = field(default_factory=lambda: [64, 128, 256])  # padded lengths, jit once each


@dataclass
class PretrainConfig:
    """Causal-LM pretraining of the tiny demo base (there is no hub to download E5-Mistral from)."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0


@dataclass
class LoraConfig:
    """LoRA with PEFT's semantics: delta = (alpha / rank) * B(A(dropout(x))), A ~ U(+-1/sqrt(in)), B = 0."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input only, as PEFT's lora_dropout
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    shared: bool = True  # one adapter for both towers; False: a member adapter and a job adapter


@dataclass
class LLMTrainConfig:
    steps: int = 200
    batch_size: int = 32  # pairs per optimizer step (before accumulation split)
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    bce_weight: float = 1.0
    triplet_weight: float = 1.0
    infonce_weight: float = 0.0
    triplet_margin: float = 0.2
    infonce_temperature: float = 0.05
    init_logit_scale: float = 10.0
    init_logit_bias: float = -5.0
    eval_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    workers: int = 0  # grain worker processes
    seed: int = 0


@dataclass
class EmbedConfig:
    batch_size: int = 64


@dataclass
class StoreConfig:
    root: str | None = None  # local path or kvstore URL (file://, gs://, s3://, memory://); None: RUN/store
    kvstore: str = "file"  # kvstore driver for a root given as a bare path: file | gcs | s3 | memory
    dtype: str = "bfloat16"  # bfloat16 | float32
    shard_rows: int = 1024  # rows per stored shard (one file)
    # Rows per inner chunk, the unit a random-row read decodes. 0: about 8 KiB per chunk, e.g. 1 row
    # of 4096-d bf16, which reads random rows 5-7x faster than 16 rows (docs/benchmarks.md).
    chunk_rows: int = 0
    # zstd | blosc (zstd + bitshuffle) | none. Both save ~22% on embeddings; zstd decodes faster.
    compression: str = "zstd"
    compression_level: int = 3
    cache_mb: int = 0  # readers' cache of decoded chunks (repeated random reads, e.g. GNN features)


def _default_relation_fanouts() -> dict[str, list[int]]:
    # Members and jobs have one title, jobs one company, members about two: more draws repeat them.
    return {"member_title_rev": [1, 1], "member_company_rev": [2, 1], "job_title_rev": [1, 1],
            "job_company_rev": [1, 1]}


@dataclass
class SamplerConfig:
    """Fixed-shape k-hop neighbour sampling (star_jax.graph.sampler); hops = len(fanouts).

    With the defaults a batch has 11,653 node slots and 11,456 edge slots (about 61 per seed).
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
    target_relation: str = "member_applied"  # the predicted member -> job edges, kept out of neighbourhoods
    batch_size: int = 64  # positive pairs per step
    num_random_negatives: int = 64  # shared random jobs per step
    workers: int = 0  # grain worker processes (0: sample in a background thread)
    prefetch: int = 2  # batches buffered ahead (per worker)
    seed: int = 0


@dataclass
class GNNConfig:
    """The heterogeneous attention encoder and its link-prediction decoder (star_jax.gnn.model)."""

    hidden_dim: int = 128  # divisible by heads
    out_dim: int = 200  # STAR's exported embedding size
    heads: int = 4
    layers: int = 2
    dropout: float = 0.0  # on each HGT layer's output projection, before the gated skip
    use_llm: bool = True  # projected stored LLM embeddings (member and job)
    use_id: bool = True  # hashed learned ID embeddings
    use_cat: bool = True  # categorical feature embeddings
    id_buckets: int = 4096  # hashed ID embedding rows per node type
    cat_dim: int = 32  # embedding size of each categorical column
    cat_buckets: int = 1024  # rows per categorical column; code 0 is "missing", larger codes wrap
    normalize: bool = True  # L2-normalise the output embeddings (scores are then scaled cosines)
    init_logit_scale: float = 10.0  # decoder: logit = scale * <member, job> + bias, both learned
    init_logit_bias: float = -5.0
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass
class GNNTrainConfig:
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    eval_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0


@dataclass
class EvalConfig:
    num_candidates: int = 1000  # fixed candidate jobs for MRR / recall@k
    k: int = 10
    variants: list[str] = field(
        default_factory=lambda: ["llm_frozen", "llm_finetuned", "gnn_id_cat", "gnn_id_cat_llm", "gnn_id_llm"]
    )


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
class MeshConfig:
    data: int = 1
    fsdp: int = -1  # -1: all remaining devices
    tensor: int = 1
    rules: dict[str, list[str]] = field(default_factory=_default_rules)
    # Multi-host: jax.distributed.initialize() is called when num_processes > 1 or under SLURM/MPI.
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int | None = None


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    llm_train: LLMTrainConfig = field(default_factory=LLMTrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    gnn: GNNConfig = field(default_factory=GNNConfig)
    gnn_train: GNNTrainConfig = field(default_factory=GNNTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


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
