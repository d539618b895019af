"""`star-jax gnn-embed`: every member's and job's 200-d GNN embedding, into the EmbeddingStore.

    star-jax gnn-embed --graph GRAPH_DIR [--store ROOT --store-version V] --ckpt OUT \
        --out-store ROOT --version NAME [--config --set]

Only the encoder's embeddings are exported (STAR, arXiv 2507.09797; LiGNN, arXiv 2402.11139, §3):
each member and job is a seed of the sampler's all-nodes mode at the fan-outs the run last trained
with, written through the store's writer API as version NAME, so exporting the same checkpoint over
the same graph again finds nothing to do and a killed export resumes shard by shard. Several
processes (`mesh.num_processes`) split the batches; process 0 writes. `score_pairs` /
`split_scores` score every GNN variant downstream: the dot product of the stored embeddings.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from star_jax.config import Config
from star_jax.data.tables import read_labels
from star_jax.errors import StarError
from star_jax.fileio import read_json
from star_jax.gnn.embed import export_sampler_config, make_embed_fn
from star_jax.gnn.features import open_features
from star_jax.gnn.model import LLM_TYPES
from star_jax.gnn.run import RUN_FILE, load_run
from star_jax.graph.sampler import NeighborSampler, make_dataset
from star_jax.graph.seeds import BatchSubset, node_seeds
from star_jax.graph.tstore import open_graph
from star_jax.parallel import broadcast_from_lead, initialize_distributed
from star_jax.store import EmbeddingSpec, EmbeddingStore, EmbeddingWriter, RefreshReport, text_hash
from star_jax.store.manifest import check_name
from star_jax.tracking import progress

log = logging.getLogger(__name__)

POOLING = "gnn"


def node_hashes(graph: Any, node_type: str) -> np.ndarray:
    """uint64 per node: a hash of (graph digest, id), the writer's change key for GNN vectors."""
    return text_hash(f"{graph.digest}:{int(i)}" for i in np.asarray(graph.ids[node_type]))


def params_digest(params: Any) -> str:
    """16 hex digits of the parameters' names and bytes."""
    h = hashlib.blake2b(digest_size=8)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def gnn_embed(
    cfg: Config,
    graph_dir: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    out_store: str | os.PathLike,
    version: str,
    *,
    store_root: str | os.PathLike | None = None,
    store_version: str | None = None,
) -> RefreshReport:
    """Write every member and job embedding of the run in `ckpt_dir` as `version` of `out_store`.

    `cfg` supplies the store settings (`store.*`) and the batch size (`gnn_train.eval_batch_size`);
    the model, sampler and variant come from the run itself.
    """
    check_name("--version", version)  # names, not paths: refused before anything is read
    if store_version is not None:
        check_name("--store-version", store_version)
    initialize_distributed(cfg.mesh)  # several processes: each embeds every count-th batch
    graph = open_graph(graph_dir, cfg.graph)
    # Node features come from the store the run trained on, unless --store/--store-version name
    # another one of the same dimension (new texts, same embedding model).
    features, feat_info = None, None
    run_cfg = _run_config(ckpt_dir)
    if run_cfg["features"] is not None:
        trained = run_cfg["features"]
        root = store_root if store_root is not None else trained["root"]
        features, feat_info = open_features(graph, root, store_version or trained["version"], cfg.store)
        if feat_info["dim"] != trained["dim"]:
            raise StarError(f"--store-version {feat_info['version']}: dim {feat_info['dim']}, but the GNN "
                            f"trained on {trained['version']} with dim {trained['dim']}")
        if feat_info["version"] != trained["version"]:  # the GNN learned on the training version's scale
            reference, _ = open_features(graph, trained["root"], trained["version"], cfg.store)
            features = features._replace(mean=reference.mean, scale=reference.scale)
    run = load_run(ckpt_dir, graph, features)
    if not run.finished:
        log.info(f"gnn-embed: {ckpt_dir}: training has not finished; exporting its step-{run.step} "
                 "checkpoint")

    sampler = NeighborSampler(graph, export_sampler_config(run.cfg.sampler, cfg.gnn_train.eval_batch_size),
                              features=features, hop_fanouts=run.fanouts)
    # The spec names the GNN: the variant as its model, the run's fingerprint and step and the
    # parameters' digest as its adapter, so a model retrained by other code under the same config
    # re-embeds every row instead of keeping the old vectors.
    spec = EmbeddingSpec(
        model=f"star-gnn/{run.variant}",
        adapter=f"{run.fingerprint}@{run.step}#{params_digest(run.params)}",
        tokenizer=feat_info["version"] if feat_info else "none",
        max_len=0,
        pooling=POOLING,
        dim=run.cfg.gnn.out_dim,
        extra={"variant": run.variant, "fanouts": list(run.fanouts), "graph_digest": graph.digest,
               "features": None if feat_info is None else {k: feat_info[k] for k in ("version", "model",
                                                                                      "adapter", "dim")}},
    )
    inputs = {t: (graph.ids[t], node_hashes(graph, t)) for t in LLM_TYPES}
    lead, count, index = jax.process_index() == 0, jax.process_count(), jax.process_index()
    writer = EmbeddingWriter.open(out_store, version, spec, inputs, cfg.store) if lead else None
    embed = make_embed_fn(run.gnn)
    layout, bs = sampler.layout, sampler.cfg.batch_size
    for t in LLM_TYPES:
        # Process 0's writer knows what is left; every process embeds every count-th batch of it.
        pending = writer.pending(t) if lead else None
        positions, rows = broadcast_from_lead(None if pending is None else (pending.positions, pending.rows),
                                              (np.int64, np.int64))
        if len(rows) == 0:
            continue
        store_row = np.full(graph.num_nodes(t), -1, np.int64)
        store_row[positions] = rows  # positions are graph rows: inputs were in graph order
        todo = np.unique(positions // bs)
        # Fixed-shape batches of `eval_batch_size` seeds (the encoder compiles once); a node's
        # embedding depends only on its batch, a fixed function of its row and the sampler seed,
        # so it does not matter which process embeds it.
        mine = iter(make_dataset(sampler, BatchSubset(node_seeds(graph, t, sampler.cfg), todo[index::count]),
                                 seed=sampler.cfg.seed))
        with progress(total=len(rows), desc=f"gnn-embed {t}", unit="node") as bar:
            for first in range(0, len(todo), count):  # one batch per process per round
                vectors = np.zeros((bs, spec.dim), np.float32)
                if first + index < len(todo):
                    member, job = embed(run.params, next(mine), layout)
                    vectors = np.asarray(member if t == "member" else job, np.float32)
                if count > 1:
                    vectors = np.asarray(multihost_utils.process_allgather(vectors))  # [count, bs, dim]
                for b, v in zip(todo[first : first + count], vectors.reshape(-1, bs, spec.dim)):
                    batch_rows = store_row[b * bs : (b + 1) * bs]  # its seeds: rows b*bs, b*bs + 1, ...
                    keep = batch_rows >= 0
                    if lead:
                        writer.write(t, batch_rows[keep], v[: len(batch_rows)][keep])
                    bar.update(int(keep.sum()))
    report = writer.publish() if lead else None
    # Also the other processes' wait for the publish: they then read the manifest it wrote.
    embedded, copied = broadcast_from_lead(
        None if report is None else [[report.embedded.get(t, 0) for t in LLM_TYPES],
                                     [report.copied.get(t, 0) for t in LLM_TYPES]], (np.int64, np.int64))
    if report is None:
        manifest = EmbeddingStore.open(out_store, version, kvstore=cfg.store.kvstore).manifest
        report = RefreshReport(version, manifest["generation"], dict(zip(LLM_TYPES, embedded.tolist())),
                               dict(zip(LLM_TYPES, copied.tolist())), manifest)
    done = ", ".join(f"{t} {report.embedded.get(t, 0):,} embedded / {report.copied.get(t, 0):,} kept"
                     for t in LLM_TYPES)
    log.info(f"gnn-embed: {run.variant} (step {run.step}) -> store {os.fspath(out_store)} "
          f"version {version}: {done}")
    return report


def _run_config(ckpt_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(ckpt_dir), RUN_FILE)
    if not os.path.isfile(path):
        raise StarError(f"--ckpt {os.fspath(ckpt_dir)}: no {RUN_FILE}; expected the --out directory of "
                        "`star-jax train-gnn`")
    return read_json(path)


# -- scoring -------------------------------------------------------------------------------------


class PairScores(NamedTuple):
    member_ids: np.ndarray  # int64 [n]
    job_ids: np.ndarray  # int64 [n]
    labels: np.ndarray  # f32 [n]
    scores: np.ndarray  # f32 [n]: <member embedding, job embedding>


def score_pairs(store: EmbeddingStore, member_ids: np.ndarray, job_ids: np.ndarray, *,
                chunk: int = 1 << 16) -> np.ndarray:
    """f32 [n]: the dot product of each pair's stored member and job embeddings."""
    member_ids = np.asarray(member_ids, np.int64).reshape(-1)
    job_ids = np.asarray(job_ids, np.int64).reshape(-1)
    if member_ids.shape != job_ids.shape:
        raise ValueError(f"{member_ids.shape[0]} member ids but {job_ids.shape[0]} job ids")
    out = np.empty(member_ids.shape[0], np.float32)
    for lo in range(0, member_ids.shape[0], chunk):
        m = store.lookup("member", member_ids[lo : lo + chunk])
        j = store.lookup("job", job_ids[lo : lo + chunk])
        out[lo : lo + chunk] = np.einsum("nd,nd->n", m, j)
    return out


def split_scores(store: EmbeddingStore, data_dir: str | os.PathLike, split: str) -> PairScores:
    """Every labelled pair of `split` (file order) with its GNN score from `store`."""
    df = read_labels(data_dir, split, columns=["member_id", "job_id", "label"])
    m, j = df["member_id"].to_numpy(np.int64), df["job_id"].to_numpy(np.int64)
    return PairScores(m, j, df["label"].to_numpy(np.float32), score_pairs(store, m, j))


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    parser.add_argument("--graph", required=True, help="graph directory (`star-jax build-graph`)")
    parser.add_argument("--store", default=None, help="feature store root (default: the run's)")
    parser.add_argument("--store-version", default=None, help="feature version (default: the run's)")
    parser.add_argument("--ckpt", required=True, help="the --out directory of `star-jax train-gnn`")
    parser.add_argument("--out-store", default=None, help="store root to write into (default: store.root)")
    parser.add_argument("--version", required=True, help="store version name for the GNN embeddings")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args, flag_or_config

    cfg = config_from_args(args)
    out_store = flag_or_config("--out-store", args.out_store, cfg.store.root, "store.root")
    gnn_embed(cfg, args.graph, args.ckpt, out_store, args.version, store_root=args.store,
              store_version=args.store_version)
    return 0
