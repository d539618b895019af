"""`star-jax embed`: every member and job text through the bi-encoder towers into the EmbeddingStore.

    star-jax embed --data DATA_DIR --tokenizer TOK --base BASE_HF_DIR [--adapters ADAPTER_DIR] \
        --store ROOT --version NAME [--types member,job] [--log-dir DIR] [--config FILE] [--set k=v ...]
    star-jax embed --store ROOT --parent VERSION --dims D [--reduce prefix|pca|linear] --version NAME

STAR stores the LLM embeddings once for the GNN and the rankers (arXiv 2507.09797, "decoupling"); a
text is re-embedded only when its hash changed, as in JUDE's nearline pipeline (docs/architecture.md
decision 8). `--adapters` takes a `train-llm` output or one PEFT adapter directory; without it the
frozen base embeds (the paper's "frozen E5-Mistral" baseline). Blocks of whole store shards stream
through `star_jax.llm.towers` into the store writer, which publishes the version at the end; a
killed run resumes to the bytes of an uninterrupted one, and multi-host runs share process 0's plan.
`--dims D` writes a compact version from a stored one instead (`star_jax.store.compact`).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from star_jax import train_loop as loop
from star_jax.config import Config, EmbedConfig, LLMConfig, MistralConfig
from star_jax.data.loader import NodeTexts
from star_jax.data.schema import Schema
from star_jax.data.tokenizer import STAMP_FILE, load_tokenizer
from star_jax.data.validate import check_data
from star_jax.errors import StarError
from star_jax.fileio import content_digest
from star_jax.llm.biencoder import EXPORT_DIR, JOB, MEMBER, BiEncoder, Params, build_biencoder, read_lora
from star_jax.llm.hf_io import CONFIG, INDEX, check_vocab, load_mistral, read_config, runtime_arch
from star_jax.llm.peft_io import ADAPTER_CONFIG
from star_jax.llm.towers import TextTowers
from star_jax.parallel import Rules, broadcast_from_lead, initialize_distributed, logical_rules, make_mesh
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, text_hash
from star_jax.store.compact import REDUCTIONS, train_pairs, write_compact
from star_jax.tracking import MetricsLogger, progress

log = logging.getLogger(__name__)

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


def adapter_source(path: Path) -> Path:
    """The directory `BiEncoder.load` reads: a PEFT adapter directory, or a train-llm output's export."""
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if (path / EXPORT_DIR).is_dir():
        return path / EXPORT_DIR
    raise StarError(f"--adapters {path}: neither a PEFT adapter directory ({ADAPTER_CONFIG}) nor a "
                    f"train-llm output ({EXPORT_DIR}/)")


def load_towers(
    cfg: Config, arch: MistralConfig, adapters: str | os.PathLike | None, mesh: Mesh, rules: Rules
) -> tuple[BiEncoder, Params | None]:
    """The bi-encoder `--adapters` holds (LoRA config from its files) and its params on the mesh;
    None: the frozen base. Tensors of another base model fail in one line, before anything is written."""
    if adapters is None:
        return build_biencoder(cfg.llm, None, cfg.llm_train, arch=arch), None
    source = adapter_source(Path(adapters))
    try:
        bienc = build_biencoder(cfg.llm, read_lora(source), cfg.llm_train, arch=arch)
        return bienc, bienc.load(source, mesh, rules)
    except StarError as e:
        raise StarError(f"--adapters {e}") from None


def embedding_spec(
    llm: LLMConfig, bienc: BiEncoder, base_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
    adapters: str | os.PathLike | None,
) -> EmbeddingSpec:
    """The identity of the embedding function, as the store records it (writing into a version with
    a different one is refused). Model, adapter and tokenizer are `<directory name>@<content digest>`,
    not paths: a moved run directory still matches its store, a retrained model in place does not."""
    base_dir, tokenizer_dir, arch = Path(base_dir), Path(tokenizer_dir), bienc.arch
    tokenizer_files = sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and p.name != STAMP_FILE)
    adapter = None
    if adapters is not None:
        adapter = _named_digest(Path(adapters), [adapter_source(Path(adapters))])
    extra = {"instruction": llm.instruction, "dtype": arch.dtype, "param_dtype": arch.param_dtype}
    if bienc.projection is not None:
        extra["projection"] = bienc.projection.name
    return EmbeddingSpec(
        model=_named_digest(base_dir, _model_files(base_dir)),
        adapter=adapter,
        tokenizer=_named_digest(tokenizer_dir, tokenizer_files),
        max_len={MEMBER: llm.member_max_len, JOB: llm.job_max_len},
        pooling=llm.pooling,
        dim=bienc.dim,
        extra=extra,
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
    lead = jax.process_index() == 0
    flat = [a for t in types for a in (plans[t].rows, plans[t].write)] if lead else None
    flat = broadcast_from_lead(flat, [np.int64, bool] * len(types))
    return {t: Plan(flat[2 * i], flat[2 * i + 1]) for i, t in enumerate(types)}


# -- embedding -----------------------------------------------------------------------------------


def _embed_type(
    towers: TextTowers, writer: EmbeddingWriter | None, node_type: str, texts: NodeTexts, plan: Plan,
    shard_rows: int, block_rows: int,
) -> tuple[int, int]:
    """Embed and store the planned rows of `node_type`: (rows embedded, texts truncated)."""
    ids = texts.ids()  # ascending, as the writer orders them: a plan row is also a position in `ids`
    blocks = plan_blocks(plan.rows, shard_rows, block_rows)
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
    mesh, rules = make_mesh(cfg.mesh, devices), logical_rules(cfg.mesh)
    bienc, params = load_towers(cfg, arch, adapters, mesh, rules)
    spec = embedding_spec(cfg.llm, bienc, base_dir, tokenizer_dir, adapters)
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
        log.info(f"embed: resuming an unfinished write of version {version}: {done:,} rows already stored")
    seconds = 0.0
    if any(p.write.any() for p in plans.values()):
        _, base = load_mistral(base_dir, arch.param_dtype, mesh=mesh, rules=rules)
        towers = TextTowers(bienc, base, params, tokenizer, cfg.embed.batch_size, mesh)
        start = time.perf_counter()
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for t in types:
                if plans[t].write.any():
                    embedded[t], truncated[t] = _embed_type(
                        towers, writer, t, sources[t], plans[t], cfg.store.shard_rows, cfg.embed.block_rows
                    )
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
    log.info(f"embed: store {os.fspath(root)} version {r.version} (generation {r.generation}): {per_type}; "
          f"{done}")
    for t, n in r.truncated.items():
        if n:
            log.info(f"embed: {n:,} of the {r.embedded[t]:,} {t} texts embedded were cut to the tower's "
                  "max length")
    if log_dir is not None:
        scalars = {f"{t}_{k}": getattr(r, k)[t] for t in r.changed for k in ("changed", "copied", "embedded",
                                                                               "truncated")}
        with MetricsLogger(log_dir) as logger:
            logger.log(r.generation, "embed", **scalars, seconds=r.seconds, rows_per_second=rate)


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

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
    add("--dims", type=int, default=None,
        help="write --version as a D-d reduction of the stored --parent version (no model runs)")
    add("--parent", default=None, help="with --dims: the full-width store version to reduce")
    add("--reduce", choices=REDUCTIONS, default=None,
        help="with --dims: prefix (first D components, renormalised; the default), pca, or linear "
             "(a map learned from --data's train pairs)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args, flag_or_config

    cfg = config_from_args(args)
    types = None if args.types is None else [t for t in args.types.split(",") if t]
    if args.dims is None:
        for flag, value in (("--parent", args.parent), ("--reduce", args.reduce)):
            if value is not None:
                raise StarError(f"{flag}: only with --dims D")
    else:
        if args.parent is None:
            raise StarError("--dims: give --parent VERSION, the stored full-width version to reduce")
        root = cfg.store.root if args.store is None else args.store
        if root is None:
            raise StarError("--store: required (or set store.root)")
        pairs = None
        if args.reduce == "linear":  # fitted on the train split's positive pairs
            pairs = train_pairs(flag_or_config("--data", args.data, cfg.data.dir, "data.dir"))
        write_compact(root, args.parent, args.version, args.dims, reduce=args.reduce or "prefix",
                      config=cfg.store, node_types=types, pairs=pairs)
        return 0
    data = flag_or_config("--data", args.data, cfg.data.dir, "data.dir")
    tok = flag_or_config("--tokenizer", args.tokenizer, cfg.tokenizer.dir, "tokenizer.dir")
    base = flag_or_config("--base", args.base, cfg.llm.base_dir, "llm.base_dir")
    embed_store(cfg, data, tok, base, args.store, args.version,
                adapters=args.adapters, node_types=types, log_dir=args.log_dir)
    return 0
