"""`star-jax embed`: every member and job text through the bi-encoder towers into the EmbeddingStore.

    star-jax embed --data DATA_DIR --tokenizer TOK --base BASE_HF_DIR [--adapters ADAPTER_DIR] \
        --store ROOT --version NAME [--types member,job] [--log-dir DIR] [--config FILE] [--set k=v ...]

STAR stores the LLM embeddings once and lets the GNN and the rankers read them (arXiv 2507.09797,
"decoupling"); a text is re-embedded only when its hash changed, as in JUDE's nearline pipeline
(docs/architecture.md decision 8). Members go through the request (member) tower with the E5
instruction prefix, jobs through the document (job) tower without it (`data.loader.tower`), both
pooled by `llm.pooling` (E5's last real token, or the mean) and L2-normalised
(`biencoder.encode`). `--adapters` takes a `train-llm` output (`OUT/adapters/shared`, or `member`
+ `job`) or one PEFT adapter directory; without it the frozen base embeds (the paper's "frozen
E5-Mistral" baseline).

How a run goes:
- The store writer (`star_jax.store.EmbeddingWriter`) gets every (id, text hash) and decides what
  is new or changed against the version's published state; only those rows are embedded, the
  rest are copied byte for byte. A node type with no change is not touched at all.
- The rows to embed are cut into blocks of whole store shards (`embed.block_rows`). A block is
  tokenized at once, sorted by length and batched (`embed.batch_size`); each batch is padded to
  the smallest `llm.buckets` length that fits, so the towers compile once per bucket. Each batch
  is split over the mesh's data x fsdp devices (`parallel.make_mesh`), the base is FSDP-sharded.
  The next block is tokenized and dispatched while the device still works on the previous one.
- Vectors stream into the writer block by block; it stores each shard whole as soon as all its
  rows arrived, and publishes the version (one manifest write) at the end. A reader opening the
  store meanwhile sees the previous published state only.
- Resuming. A killed run leaves a staged generation; the rerun skips its stored shards. The
  blocks and batches are planned from every row the generation needs, stored or not, so a block
  the kill cut in half is embedded again as a whole (its stored shards are not rewritten): every
  row is computed in the same batch, at the same padded length, as in an uninterrupted run, and
  the result is byte-identical to one (same machine and devices, same `embed` settings).
- Multi-host: every process embeds its rows of each batch, process 0 alone opens the writer and
  tells the others the plan (`jax.experimental.multihost_utils`), and publishes.

The manifest records the model, adapter and tokenizer as `<directory name>@<content digest>`, not
as paths: a run directory moved elsewhere still matches its store, while a retrained model in the
same place does not (a renamed directory reads as another model too). It also records the max
lengths of both towers, the pooling, the dim, and in `extra` the instruction and the compute
dtypes. Writing into an existing version with any of these different is refused
by the store in one line, as are a bad version name and a store root it cannot open.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from star_jax.config import Config, EmbedConfig, MistralConfig
from star_jax.data.loader import NodeTexts, tower
from star_jax.data.schema import Schema
from star_jax.data.tokenizer import STAMP_FILE, bucket_length, encode_e5, load_tokenizer
from star_jax.data.validate import check_data
from star_jax.errors import StarError
from star_jax.fileio import content_digest
from star_jax.llm import loop
from star_jax.llm.biencoder import JOB, MEMBER, encode, load_adapters, tower_adapters
from star_jax.llm.hf_io import CONFIG, INDEX, load_mistral, read_config
from star_jax.llm.lora import ADAPTER_CONFIG, import_peft
from star_jax.llm.mistral import MistralModel, abstract_variables
from star_jax.llm.train import check_vocab, runtime_arch
from star_jax.metrics import MetricsLogger, progress
from star_jax.parallel import (
    Rules,
    initialize_distributed,
    logical_rules,
    logical_shardings,
    make_mesh,
    replicated,
)
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, text_hash

_HASH_CHUNK = 8192  # texts hashed per lookup


class EmbedResult(NamedTuple):
    """What an `embed` run did, per node type."""

    version: str
    generation: int  # the published generation after this run
    changed: dict[str, int]  # rows whose text is new or changed: embedded into this generation
    copied: dict[str, int]  # rows whose text hash is unchanged: kept byte for byte
    embedded: dict[str, int]  # rows this run put through the towers (a resumed run skips stored shards)
    truncated: dict[str, int]  # of those, texts cut to the tower's max length
    resumed: bool  # continued an unfinished write of the same inputs
    seconds: float  # time in the embedding loop (tokenize, forward, store), model loading excluded
    manifest: dict  # the published manifest


class Plan(NamedTuple):
    """The rows of one node type to embed in this generation, as process 0's writer sees them."""

    rows: np.ndarray  # int64 [n] ascending store rows (= positions in the sorted ids) to embed
    write: np.ndarray  # bool [n] row still to store (False: its shard was stored before a crash)


# -- inputs and identity -------------------------------------------------------------------------


def _named_digest(path: Path, files: Sequence[Path]) -> str:
    return f"{Path(os.path.abspath(path)).name}@{content_digest(list(files))}"


def _model_files(base_dir: Path) -> list[Path]:
    files = [base_dir / CONFIG, *sorted(base_dir.glob("*.safetensors"))]
    return files + ([base_dir / INDEX] if (base_dir / INDEX).is_file() else [])


def _adapter_source(path: Path) -> tuple[str, Path]:
    """('peft', dir) for one PEFT adapter directory, ('run', dir/adapters) for a train-llm output."""
    if (path / ADAPTER_CONFIG).is_file():
        return "peft", path
    if (path / "adapters").is_dir():
        return "run", path / "adapters"
    raise StarError(f"--adapters {path}: neither a PEFT adapter directory ({ADAPTER_CONFIG}) nor a "
                    "train-llm output (adapters/)")


def embedding_spec(
    cfg: Config, arch: MistralConfig, base_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
    adapters: str | os.PathLike | None,
) -> EmbeddingSpec:
    """The identity of the embedding function (see the module docstring), as the store records it."""
    base_dir, tokenizer_dir = Path(base_dir), Path(tokenizer_dir)
    tokenizer_files = sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and p.name != STAMP_FILE)
    adapter = None
    if adapters is not None:
        adapter = _named_digest(Path(adapters), [_adapter_source(Path(adapters))[1]])
    return EmbeddingSpec(
        model=_named_digest(base_dir, _model_files(base_dir)),
        adapter=adapter,
        tokenizer=_named_digest(tokenizer_dir, tokenizer_files),
        max_len={MEMBER: cfg.llm.member_max_len, JOB: cfg.llm.job_max_len},
        pooling=cfg.llm.pooling,
        dim=arch.hidden_size,
        extra={"instruction": cfg.llm.instruction, "dtype": arch.dtype, "param_dtype": arch.param_dtype},
    )


def _check_inputs(schema: Schema, types: Sequence[str], ecfg: EmbedConfig) -> None:
    if not types:
        raise StarError("--types: no node type given")
    for t in types:
        if t not in schema.node_types or not schema.node_types[t].text:
            have = [n for n, s in schema.node_types.items() if s.text]
            raise StarError(f"--types {t}: not a node type with text in schema.json "
                            f"(with text: {', '.join(have)})")
    if len(set(types)) != len(types):
        raise StarError(f"--types {','.join(types)}: a node type is listed twice")
    if ecfg.batch_size < 1 or ecfg.block_rows < 1:
        raise StarError(f"embed.batch_size={ecfg.batch_size}, embed.block_rows={ecfg.block_rows}: "
                        "must be positive")


def hash_texts(texts: NodeTexts) -> np.ndarray:
    """uint64 [N]: `store.text_hash` of each text, in ascending id order (the text itself, without
    the instruction: the instruction is part of the version's spec)."""
    ids = texts.ids()
    return np.concatenate([text_hash(texts.lookup(ids[i : i + _HASH_CHUNK]))
                           for i in range(0, len(ids), _HASH_CHUNK)] or [np.zeros(0, np.uint64)])


def read_tower_adapters(path: str | os.PathLike, arch: MistralConfig) -> tuple[dict, Any]:
    """(adapters on the host, as `encode` takes them, LoraConfig) from `--adapters`.

    Every tensor's shape is checked against the base model, so adapters trained for another base
    fail in one line, before anything is written, instead of deep inside a matmul.
    """
    kind, source = _adapter_source(Path(path))
    adapters, lora_cfg = import_peft(source) if kind == "peft" else load_adapters(path)
    want = traverse_util.flatten_dict(nn.unbox(abstract_variables(arch, lora_cfg)["lora"]))
    trees = {source: adapters} if "layers" in adapters else {source / n: t for n, t in adapters.items()}
    for where, tree in trees.items():
        flat = traverse_util.flatten_dict(tree)
        for key in sorted(set(want) | set(flat)):
            name = "/".join(key)
            if key not in flat or key not in want:
                what = "no" if key not in flat else "unexpected"
                raise StarError(f"--adapters {where}: {what} tensor {name} for the base model's "
                                f"{arch.num_hidden_layers} layers and lora targets")
            if tuple(flat[key].shape) != tuple(want[key].shape):
                raise StarError(f"--adapters {where}: {name} has shape {tuple(flat[key].shape)}, the base "
                                f"model needs {tuple(want[key].shape)} (adapters of another base model?)")
    return adapters, lora_cfg


def place_adapters(adapters: dict, arch: MistralConfig, lora_cfg: Any, mesh: Mesh, rules: Rules) -> dict:
    """Host adapters onto the mesh, each tensor in the sharding its logical axes get under `rules`."""
    abstract = abstract_variables(arch, lora_cfg)["lora"]
    dtypes = traverse_util.flatten_dict(nn.unbox(abstract))
    shardings = traverse_util.flatten_dict(logical_shardings(abstract, mesh, rules))

    def place(tree: dict) -> dict:
        flat = traverse_util.flatten_dict(tree)
        return traverse_util.unflatten_dict(
            {k: jax.device_put(np.asarray(v, dtypes[k].dtype), shardings[k]) for k, v in flat.items()})

    return place(adapters) if "layers" in adapters else {n: place(t) for n, t in adapters.items()}


# -- planning ------------------------------------------------------------------------------------


def _plan(
    writer: EmbeddingWriter,
    published: EmbeddingStore | None,
    node_type: str,
    ids: np.ndarray,
    hashes: np.ndarray,
) -> Plan:
    """Every row the writer's new generation needs from the model, and which are still unstored.

    `writer.pending` leaves out the shards a killed run already stored; the rows those shards
    needed are found here from the published state (`published`, by the writer's own rule: a row
    is current when its id was stored with the same text hash), so a block is planned the same
    with or without a crash.
    """
    if node_type not in writer.node_types:  # unchanged: the published generation is current
        return Plan(np.zeros(0, np.int64), np.zeros(0, bool))
    need = np.ones(len(ids), bool)
    if published is not None and node_type in published.node_types:
        old_ids, old_hashes = published.ids(node_type), published.text_hashes(node_type)
        pos = np.searchsorted(old_ids, ids).clip(max=len(old_ids) - 1)
        need = ~((old_ids[pos] == ids) & (old_hashes[pos] == hashes))
    rows = np.flatnonzero(need).astype(np.int64)
    pending = writer.pending(node_type).rows
    write = np.isin(rows, pending)
    shard = rows // writer.cfg.shard_rows
    partly_stored = np.zeros(int(shard.max(initial=-1)) + 1, bool)
    partly_stored[shard[~write]] = True
    if len(pending) != write.sum() or (partly_stored[shard] & write).any():
        raise RuntimeError(f"embed: the store's pending {node_type} rows disagree with its change detection")
    return Plan(rows, write)


def plan_blocks(rows: np.ndarray, shard_rows: int, block_rows: int) -> list[slice]:
    """Slices of `rows` (ascending) into blocks of whole shards, each of at least `block_rows` rows
    but the last: `EmbeddingWriter.pending_blocks`' cut, applied to every row the generation needs."""
    shard = rows // shard_rows
    blocks, start = [], 0
    for end in [*(np.flatnonzero(np.diff(shard)) + 1).tolist(), len(rows)]:
        if end > start and (end - start >= block_rows or end == len(rows)):
            blocks.append(slice(start, end))
            start = end
    return blocks


def _share(plans: dict[str, Plan] | None, types: Sequence[str]) -> dict[str, Plan]:
    """Process 0's plans, on every process (multi-host runs compute every batch together)."""
    if jax.process_count() == 1:
        return plans
    from jax.experimental import multihost_utils

    lead = jax.process_index() == 0
    sizes = np.array([len(plans[t].rows) if lead else 0 for t in types], np.int32)
    sizes = np.asarray(multihost_utils.broadcast_one_to_all(sizes))
    out = {}
    for t, n in zip(types, sizes.tolist()):
        if n == 0:
            out[t] = Plan(np.zeros(0, np.int64), np.zeros(0, bool))
            continue
        rows = plans[t].rows.astype(np.int32) if lead else np.zeros(n, np.int32)
        write = plans[t].write if lead else np.zeros(n, bool)
        rows, write = multihost_utils.broadcast_one_to_all((rows, write))
        out[t] = Plan(np.asarray(rows).astype(np.int64), np.asarray(write).astype(bool))
    return out


# -- embedding -----------------------------------------------------------------------------------


_TOWER_FNS: dict[tuple[str, Mesh], Any] = {}


def _tower_fn(model: MistralModel, mesh: Mesh, pooling: str) -> Any:
    """`(lora, base, ids, lengths) -> unit vectors [B, H]`, jitted once per model and mesh in a process.

    The tower's adapter is an argument, so both towers share one compiled function per bucket, and
    so do later runs in the same process (the pipeline embeds with the frozen base, the fine-tuned
    adapters and a second seed's adapters in a row).
    """
    # `lora.shared` says how the adapters are keyed (one tree or one per tower), not what runs.
    lora = None if model.lora is None else dataclasses.asdict(dataclasses.replace(model.lora, shared=True))
    key = (json.dumps([dataclasses.asdict(model.config), lora, pooling], sort_keys=True), mesh)
    if key not in _TOWER_FNS:
        fn = lambda lora, base, ids, lengths: encode(model, base, lora, MEMBER, ids, lengths, pooling=pooling)
        _TOWER_FNS[key] = jax.jit(fn, out_shardings=replicated(mesh))
    return _TOWER_FNS[key]


class _Towers:
    """The jitted towers on the mesh: a block of texts -> unit vectors, batched by length bucket."""

    def __init__(self, model: MistralModel, base: dict, adapters: dict | None, tokenizer: Any, cfg: Config,
                 mesh: Mesh):
        self.base, self.adapters, self.tokenizer, self.mesh = base, adapters, tokenizer, mesh
        self.llm = cfg.llm
        self.batch_size, self.dim = cfg.embed.batch_size, model.config.hidden_size
        self.shard = loop.process_shard(mesh, self.batch_size)
        per = self.batch_size // self.shard[1]
        self.local = slice(self.shard[0] * per, (self.shard[0] + 1) * per)
        self.fn = _tower_fn(model, mesh, cfg.llm.pooling)

    def dispatch(self, node_type: str, ids: np.ndarray, texts: list[str], where: str
                 ) -> tuple[list[tuple[np.ndarray, jax.Array]], int]:
        """Start every batch of a block on the device: ([(block positions, vectors [B, H])], truncated)."""
        max_len, instruction = tower(self.llm, node_type)
        buckets, bs = self.llm.buckets, self.batch_size
        enc = encode_e5(self.tokenizer, texts, max_len, buckets, instruction, where=where, ids=ids)
        lora = tower_adapters(self.adapters, MEMBER if node_type == MEMBER else JOB)
        order = np.argsort(enc.lengths, kind="stable")
        batches = []
        for lo in range(0, len(order), bs):
            take = order[lo : lo + bs]
            fill = np.concatenate([take, np.repeat(take[:1], bs - len(take))])  # a short batch: repeat a row
            # encode_e5 padded the block to its longest row; each batch needs only its own bucket.
            width = bucket_length(int(enc.lengths[take].max()), max_len, buckets)
            host = {"ids": enc.ids[fill, :width][self.local], "lengths": enc.lengths[fill][self.local]}
            dev = loop.put_batch(host, self.mesh, self.shard)
            batches.append((take, self.fn(lora, self.base, dev["ids"], dev["lengths"])))
        return batches, enc.truncated

    def collect(self, n: int, batches: list[tuple[np.ndarray, jax.Array]]) -> np.ndarray:
        """float32 [n, H]: the block's vectors back in block order (waits for the device)."""
        out = np.empty((n, self.dim), np.float32)
        for take, vectors in batches:
            out[take] = np.asarray(vectors)[: len(take)]
        return out


def _embed_type(
    towers: _Towers, writer: EmbeddingWriter | None, node_type: str, texts: NodeTexts, plan: Plan,
    cfg: Config,
) -> tuple[int, int]:
    """Embed and store the planned rows of `node_type`: (rows embedded, texts truncated)."""
    ids = texts.ids()  # ascending, as the writer orders them: a plan row is also a position in `ids`
    blocks = plan_blocks(plan.rows, cfg.store.shard_rows, cfg.embed.block_rows)
    blocks = [b for b in blocks if plan.write[b].any()]  # blocks stored whole before a crash are done
    embedded = truncated = 0
    bar = progress(total=int(plan.write.sum()), desc=f"embed {node_type}", unit="row")

    def finish(block: slice, batches: list) -> None:
        rows, write = plan.rows[block], plan.write[block]
        vectors = towers.collect(len(rows), batches)
        if writer is not None:
            writer.write(node_type, rows[write], vectors[write])
        bar.update(int(write.sum()))

    previous = None
    for block in blocks:
        block_ids = ids[plan.rows[block]]
        batches, cut = towers.dispatch(node_type, block_ids, texts.lookup(block_ids), f"{texts.table}: text")
        embedded, truncated = embedded + len(block_ids), truncated + cut
        if previous is not None:  # the device works on this block while the last one is stored
            finish(*previous)
        previous = (block, batches)
    if previous is not None:
        finish(*previous)
    bar.close()
    return embedded, truncated


def embed_store(
    cfg: Config,
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    store_root: str | os.PathLike | None,
    version: str,
    *,
    adapters: str | os.PathLike | None = None,
    node_types: Sequence[str] | None = None,
    log_dir: str | os.PathLike | None = None,
    devices: list[jax.Device] | None = None,
) -> EmbedResult:
    """Embed the texts of `node_types` (default `embed.node_types`) into `version` of the store.

    `adapters`: a train-llm output or a PEFT adapter directory; None embeds with the frozen base.
    `store_root` None: `store.root`. `log_dir` gets metrics.jsonl and TensorBoard events with the
    counts. `devices` restricts the mesh (default: every device of every process).
    """
    initialize_distributed(cfg.mesh)
    data_dir, tokenizer_dir, base_dir = map(os.fspath, (data_dir, tokenizer_dir, base_dir))
    root = cfg.store.root if store_root is None else store_root
    if root is None:
        raise StarError("--store: required (or set store.root)")
    types = list(cfg.embed.node_types if node_types is None else node_types)
    _check_inputs(check_data(data_dir), types, cfg.embed)  # empty texts, dangling ids, ... fail here
    tokenizer = load_tokenizer(tokenizer_dir)
    arch = runtime_arch(read_config(base_dir), cfg.llm.arch)
    check_vocab(tokenizer, tokenizer_dir, arch, base_dir)
    spec = embedding_spec(cfg, arch, base_dir, tokenizer_dir, adapters)
    host_adapters, lora_cfg = (None, None) if adapters is None else read_tower_adapters(adapters, arch)
    mesh, rules = make_mesh(cfg.mesh, devices), logical_rules(cfg.mesh)
    loop.check_batch(cfg.embed.batch_size, 1, mesh, "embed")  # refused before the writer stages anything
    sources = {t: NodeTexts(data_dir, t) for t in types}
    inputs = {t: (s.ids(), hash_texts(s)) for t, s in sources.items()}

    writer, plans = None, None
    if jax.process_index() == 0:
        writer = EmbeddingWriter.open(root, version, spec, inputs, cfg.store)
        published = None
        if writer.base is not None:
            published = EmbeddingStore.open(root, version, kvstore=cfg.store.kvstore)
            if published.manifest["generation"] != writer.base["generation"]:
                raise StarError(f"store {published.root} version {version}: another writer published "
                                "meanwhile; rerun")
        plans = {t: _plan(writer, published, t, *inputs[t]) for t in types}
    plans = _share(plans, types)

    embedded, truncated = dict.fromkeys(types, 0), dict.fromkeys(types, 0)
    resumed = any(not p.write.all() for p in plans.values())
    if resumed:
        done = sum(int((~p.write).sum()) for p in plans.values())
        print(f"embed: resuming an unfinished write of version {version}: {done:,} rows already stored")
    seconds = 0.0
    if any(p.write.any() for p in plans.values()):
        _, base = load_mistral(base_dir, arch.param_dtype, mesh=mesh, rules=rules)
        lora = None if adapters is None else place_adapters(host_adapters, arch, lora_cfg, mesh, rules)
        towers = _Towers(MistralModel(arch, lora_cfg), base, lora, tokenizer, cfg, mesh)
        start = time.perf_counter()
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for t in types:
                if plans[t].write.any():
                    embedded[t], truncated[t] = _embed_type(towers, writer, t, sources[t], plans[t], cfg)
        seconds = time.perf_counter() - start

    if writer is not None:
        manifest = writer.publish().manifest
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("embed: published")
    if writer is None:
        manifest = EmbeddingStore.open(root, version, kvstore=cfg.store.kvstore).manifest
    changed = {t: len(p.rows) for t, p in plans.items()}
    copied = {t: len(inputs[t][0]) - changed[t] for t in types}
    result = EmbedResult(version, manifest["generation"], changed, copied, embedded, truncated, resumed,
                         seconds, manifest)
    _report(result, root, log_dir)
    return result


def _report(r: EmbedResult, root: str | os.PathLike, log_dir: str | os.PathLike | None) -> None:
    rows = sum(r.embedded.values())
    rate = rows / r.seconds if r.seconds > 0 else 0.0
    per_type = "; ".join(f"{t} {r.changed[t]:,} new or changed, {r.copied[t]:,} unchanged" for t in r.changed)
    done = f"{rows:,} texts embedded in {r.seconds:.1f}s ({rate:,.0f} rows/s)" if rows else "nothing to embed"
    print(f"embed: store {os.fspath(root)} version {r.version} (generation {r.generation}): {per_type}; "
          f"{done}")
    for t, n in r.truncated.items():
        if n:
            print(f"embed: {n:,} of the {r.embedded[t]:,} {t} texts embedded were cut to the tower's "
                  "max length")
    if log_dir is not None:
        scalars = {f"{t}_{k}": getattr(r, k)[t] for t in r.changed for k in ("changed", "copied", "embedded",
                                                                               "truncated")}
        with MetricsLogger(log_dir) as logger:
            logger.log(r.generation, "embed", **scalars, seconds=r.seconds, rows_per_second=rate)


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.cli import add_config_args

    add = parser.add_argument
    add("--data", default=None, help="data directory (default: data.dir)")
    add("--tokenizer", default=None, help="HF tokenizer directory (default: tokenizer.dir)")
    add("--base", default=None, help="HF Mistral directory (default: llm.base_dir)")
    add("--adapters", default=None,
        help="a train-llm output or a PEFT adapter directory (default: the frozen base)")
    add("--store", default=None, help="store root: a path or kvstore URL (default: store.root)")
    add("--version", required=True, help="store version to write or refresh")
    add("--types", default=None, help="comma-separated node types (default: embed.node_types, member,job)")
    add("--log-dir", default=None, help="write the counts to DIR/metrics.jsonl and DIR/tb")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.cli import config_from_args, flag_or_config

    cfg = config_from_args(args)
    data = flag_or_config("--data", args.data, cfg.data.dir, "data.dir")
    tok = flag_or_config("--tokenizer", args.tokenizer, cfg.tokenizer.dir, "tokenizer.dir")
    base = flag_or_config("--base", args.base, cfg.llm.base_dir, "llm.base_dir")
    types = None if args.types is None else [t for t in args.types.split(",") if t]
    embed_store(cfg, data, tok, base, args.store, args.version,
                adapters=args.adapters, node_types=types, log_dir=args.log_dir)
    return 0
