"""The stages of `star-jax pipeline`, in order, each run through the `Runner` (stamps.py).

    synth | data.dir -> validate -> tokenizer | tokenizer.dir -> pretrain | llm.base_dir
      -> train-llm -> embed (llm_frozen, llm_finetuned) -> build-graph
      -> train-gnn + gnn-embed per GNN variant
      -> [compact -> train-gnn + gnn-embed of gnn_id_cat_llm per D] -> [migration] -> evaluate

Only the stages `eval.variants` needs run; `compact` only with `llm_train.matryoshka_dims`.
docs/pipeline.md describes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from star_jax.config import GNN_VARIANTS, Config, check_variants, fingerprint, to_yaml
from star_jax.errors import StarError
from star_jax.eval.compact_report import COMPACT_GNN, COMPACT_STAGE, compact_gnn_name, compact_version
from star_jax.eval.runs import CONFIG_FILE, read_run, run_paths
from star_jax.fileio import atomic_write_text
from star_jax.pipeline.lock import run_lock
from star_jax.pipeline.stamps import Runner
from star_jax.tracking import is_lead

logger = logging.getLogger(__name__)


# -- the stages ----------------------------------------------------------------------------------


_LLM_UPSTREAM = ("synth", "tokenizer", "pretrain")


def _features_stage(features: dict | None) -> tuple[str, ...]:
    return () if features is None else (features.get("stage", "embed-llm_finetuned"),)


def _section(obj: Any, *drop: str) -> dict:
    d = dataclasses.asdict(obj)
    return {k: v for k, v in d.items() if k not in drop}


def _version_exists(result: dict, kvstore: str) -> bool:
    from star_jax.store import list_versions

    try:
        return result["version"] in list_versions(result["store"], kvstore)
    except StarError:
        return False


def _manifest_digest(root: str, version: str, kvstore: str) -> str:
    from star_jax.store import EmbeddingStore

    return fingerprint(EmbeddingStore.open(root, version, kvstore=kvstore).manifest)


class Pipeline:
    """The stages of one pipeline invocation over `cfg` and `run_dir` (see the module docstring)."""

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, *, log: Callable[[str], None] = logger.info,
                 redo: tuple[str, ...] = ()):
        check_variants(cfg.eval.variants)
        self.cfg, self.paths = cfg, run_paths(cfg, run_dir)
        self.run = Runner(self.paths.root, log=log, redo=redo)
        self.log = log
        self.gnn_variants, self.gnn_llm, self.needs_finetuned, self.needs_llm = wants(cfg)

    # Each stage method returns its result dict (from the stage or its stamp).

    def data(self) -> dict:
        cfg, p = self.cfg, self.paths
        if cfg.data.dir:
            if not os.path.isdir(cfg.data.dir):
                raise StarError(f"data.dir: directory not found: {cfg.data.dir}")
            return {"dir": os.fspath(p.data)}
        from star_jax.data import synth

        def fn() -> dict:
            synth.synthesize(p.data, cfg.data.scale, cfg.data.seed)
            return {"dir": os.fspath(p.data)}

        return self.run("synth", fn, inputs={}, config=(cfg.data, synth.GENERATOR_VERSION),
                        code=("star_jax.data.synth",), exists=lambda r: os.path.isdir(r["dir"]))

    def validate(self) -> dict:
        from star_jax.data.validate import check_data

        def fn() -> dict:
            schema = check_data(self.paths.data)
            return {"node_types": list(schema.node_types), "relations": list(schema.relations)}

        return self.run("validate", fn, inputs={"data": self.run.digest(self.paths.data)},
                        code=("star_jax.data.validate",), after=("synth",))

    def tokenizer(self) -> dict:
        cfg, p = self.cfg, self.paths
        if cfg.tokenizer.dir:
            from star_jax.data.tokenizer import load_tokenizer

            load_tokenizer(cfg.tokenizer.dir)  # a one-line error now, not deep inside train-llm
            return {"dir": os.fspath(p.tokenizer)}
        from star_jax.data.tokenizer import train_tokenizer

        def fn() -> dict:
            train_tokenizer(p.data, p.tokenizer, cfg.tokenizer)
            return {"dir": os.fspath(p.tokenizer)}

        return self.run("tokenizer", fn, inputs={"data": self.run.digest(p.data)},
                        config=(_section(cfg.tokenizer, "dir"),), exists=lambda r: os.path.isdir(r["dir"]),
                        code=("star_jax.data.tokenizer",), after=("synth",))

    def base(self) -> dict:
        cfg, p = self.cfg, self.paths
        if cfg.llm.base_dir:
            if not os.path.isdir(cfg.llm.base_dir):
                raise StarError(f"llm.base_dir: directory not found: {cfg.llm.base_dir}")
            return {"dir": os.fspath(p.base), "train_seconds": None}
        from star_jax.llm.pretrain import pretrain

        def fn() -> dict:
            result = pretrain(cfg, p.data, p.tokenizer, p.pretrain)
            return {"dir": os.fspath(p.base), "train_seconds": result["train_seconds"],
                    "final_loss": result["final_loss"]}

        inputs = {"data": self.run.digest(p.data), "tokenizer": self.run.digest(p.tokenizer)}
        return self.run("pretrain", fn, inputs=inputs, config=(cfg.llm.arch, cfg.pretrain), collective=True,
                        exists=lambda r: os.path.isdir(r["dir"]), owns=(p.pretrain,),
                        code=("star_jax.llm.pretrain",), after=("synth", "tokenizer"))

    def _llm_inputs(self) -> dict[str, str]:
        p = self.paths
        return {"data": self.run.digest(p.data), "tokenizer": self.run.digest(p.tokenizer),
                "base": self.run.digest(p.base)}

    def train_llm(self, seed: int | None = None) -> dict:
        """Fine-tune the towers (`seed`: a second adapter with that llm_train.seed, for migration)."""
        from star_jax.llm.train import train_llm

        cfg, p = self.cfg, self.paths
        out, name = p.llm, "train-llm"
        if seed is not None:
            cfg = dataclasses.replace(cfg, llm_train=dataclasses.replace(cfg.llm_train, seed=seed))
            out, name = p.llm_seed(seed), f"train-llm-seed{seed}"

        def fn() -> dict:
            result = train_llm(cfg, p.data, p.tokenizer, p.base, out)
            keep = ("train_seconds", "test_auc", "test_auc_frozen", "val_auc", "val_auc_frozen")
            return {"dir": os.fspath(out), **{k: result.get(k) for k in keep}}

        return self.run(name, fn, inputs=self._llm_inputs(),
                        config=(_section(cfg.llm, "base_dir"), cfg.lora, cfg.llm_train), collective=True,
                        exists=lambda r: os.path.isdir(os.path.join(r["dir"], "adapters")), owns=(out,),
                        code=("star_jax.llm.train",), after=_LLM_UPSTREAM)

    def embed(self, variant: str, adapters_dir: Path | None, trained_by: str | None = None) -> dict:
        """Embed every member and job text into the store as `variant`'s version (`trained_by`: the
        train-llm stage that wrote `adapters_dir`)."""
        from star_jax.llm.embed import embed_store

        cfg, p = self.cfg, self.paths
        inputs = self._llm_inputs()
        if adapters_dir is not None:
            inputs["adapters"] = self.run.digest(adapters_dir / "adapters")
        # Named after the embedding function, not the texts: changed texts refresh the same version.
        model = {k: v for k, v in inputs.items() if k != "data"}
        version = f"{variant}-{fingerprint(model, _section(cfg.llm, 'base_dir'), cfg.store.dtype)[:8]}"

        def fn() -> dict:
            embed_store(cfg, p.data, p.tokenizer, p.base, p.store, version,
                        adapters=None if adapters_dir is None else adapters_dir)
            return {"store": p.store, "version": version}

        return self.run(f"embed-{variant}", fn, inputs=inputs,
                        config=(_section(cfg.llm, "base_dir"), cfg.embed, _section(cfg.store, "root")),
                        collective=True, exists=lambda r: _version_exists(r, cfg.store.kvstore),
                        code=("star_jax.llm.embed",),
                        after=(*_LLM_UPSTREAM, *([trained_by] if trained_by else [])))

    def graph(self) -> dict:
        from star_jax.graph.hetero import GRAPH_FORMAT, build_graph
        from star_jax.graph.tstore import write_graph_store

        p, g = self.paths, self.cfg.graph

        def fn() -> dict:
            graph = build_graph(p.data, p.graph)
            if g.store:  # also the TensorStore copy that graph.source=tensorstore reads
                write_graph_store(p.graph, g.store, chunk_bytes=g.chunk_bytes, read_bytes=g.read_bytes)
            return {"dir": os.fspath(p.graph), "digest": graph.digest}

        return self.run("build-graph", fn, inputs={"data": self.run.digest(p.data)},
                        config=(GRAPH_FORMAT, g.store, g.chunk_bytes, g.read_bytes),
                        exists=lambda r: os.path.isdir(r["dir"]),
                        code=("star_jax.graph.hetero", "star_jax.graph.tstore"), after=("synth",))

    def train_gnn(self, variant: str, features: dict | None, name: str | None = None) -> dict:
        """Train `variant` (`name`: its stage suffix and RUN_DIR/gnn/ folder when not the variant's,
        as for the compact widths' runs)."""
        from star_jax.gnn.train import train_gnn

        cfg, p = self.cfg, self.paths
        name = name or variant
        out = p.gnn(name)
        inputs = {"data": self.run.digest(p.data), "graph": self.run.digest(p.graph)}
        if features is not None:
            inputs["features"] = _manifest_digest(features["store"], features["version"], cfg.store.kvstore)

        def fn() -> dict:
            result = train_gnn(cfg, p.data, p.graph, out, variant,
                               store_root=None if features is None else features["store"],
                               store_version=None if features is None else features["version"])
            keep = ("fingerprint", "train_seconds", "val_auc", "val_auc_cold_start")
            return {"dir": os.fspath(out), **{k: result.get(k) for k in keep}}

        config = (cfg.gnn, cfg.gnn_train, cfg.sampler, _section(cfg.store, "root"))
        return self.run(f"train-gnn-{name}", fn, inputs=inputs, config=config,
                        exists=lambda r: os.path.isfile(os.path.join(r["dir"], "result.json")), owns=(out,),
                        code=("star_jax.gnn.train",), collective=True,  # data-parallel on every process
                        after=("synth", "build-graph", *_features_stage(features)))

    def gnn_embed(self, variant: str, trained: dict, features: dict | None, name: str | None = None) -> dict:
        from star_jax.gnn.export import gnn_embed

        cfg, p = self.cfg, self.paths
        name = name or variant
        # Named by the finished run, not its config: a model retrained under the same config (by other
        # code) is a new version, whose adapter (gnn.export) the store would refuse under the old name.
        run = self.run.digest(Path(trained["dir"]) / "result.json")
        version = f"{name}-{run[:8]}"
        inputs = {"graph": self.run.digest(p.graph), "run": run}

        def fn() -> dict:
            gnn_embed(cfg, p.graph, trained["dir"], p.store, version,
                      store_root=None if features is None else features["store"],
                      store_version=None if features is None else features["version"])
            return {"store": p.store, "version": version}

        return self.run(f"gnn-embed-{name}", fn, inputs=inputs,
                        config=(_section(cfg.store, "root"), cfg.gnn_train.eval_batch_size),
                        exists=lambda r: _version_exists(r, cfg.store.kvstore), code=("star_jax.gnn.export",),
                        collective=True,  # every process embeds its share of the batches; process 0 writes
                        after=("build-graph", f"train-gnn-{name}", *_features_stage(features)))

    def compact(self, finetuned: dict) -> dict:
        """The Matryoshka sizes of the fine-tuned towers: per D of `llm_train.matryoshka_dims`, the
        store version `star-jax embed --dims D` writes, and every width's store bytes and lookup rows/s."""
        from star_jax.store import EmbeddingStore
        from star_jax.store.compact import lookup_rate, stored_bytes, write_compact

        cfg = self.cfg
        root, parent, kv = finetuned["store"], finetuned["version"], cfg.store.kvstore
        versions = [compact_version(parent, d) for d in cfg.llm_train.matryoshka_dims]

        def fn() -> dict:
            for d, version in zip(cfg.llm_train.matryoshka_dims, versions):
                write_compact(root, parent, version, d, config=cfg.store)
            widths = []
            for version in [*versions, parent]:
                store = EmbeddingStore.open(root, version, kvstore=kv)
                widths.append({"dims": store.dim, "version": version, "bytes": stored_bytes(store),
                               "lookup_rows_s": lookup_rate(store)})
            return {"store": root, "parent": parent, "widths": widths}

        def exists(r: dict) -> bool:
            return all(_version_exists({**r, "version": w["version"]}, kv) for w in r["widths"])

        return self.run(COMPACT_STAGE, fn, inputs={"parent": _manifest_digest(root, parent, kv)},
                        config=(cfg.llm_train.matryoshka_dims, _section(cfg.store, "root")), exists=exists,
                        code=("star_jax.store.compact",), after=("embed-llm_finetuned",))

    def compact_gnns(self, compact: dict) -> None:
        """COMPACT_GNN trained and embedded again on each compact version's features."""
        full = max(w["dims"] for w in compact["widths"])
        for w in compact["widths"]:
            if w["dims"] < full:
                features = {"store": compact["store"], "version": w["version"], "stage": COMPACT_STAGE}
                name = compact_gnn_name(w["dims"])
                self.gnn_embed(COMPACT_GNN, self.train_gnn(COMPACT_GNN, features, name), features, name)

    def migration(self, v1: dict) -> dict:
        """STAR's version management: a second adapter (another seed) as V2, mapped onto V1."""
        from star_jax.eval.migration import run_migration_experiment

        cfg, p = self.cfg, self.paths
        second = self.train_llm(seed=cfg.eval.migration_seed)
        v2 = self.embed("llm_finetuned_v2", Path(second["dir"]), f"train-llm-seed{cfg.eval.migration_seed}")
        inputs = {"data": self.run.digest(p.data),
                  "v1": _manifest_digest(v1["store"], v1["version"], cfg.store.kvstore),
                  "v2": _manifest_digest(v2["store"], v2["version"], cfg.store.kvstore)}

        def fn() -> dict:
            return run_migration_experiment(p.store, v1["version"], v2["version"], p.data,
                                            kvstore=cfg.store.kvstore)

        return self.run("migration", fn, inputs=inputs, config=(cfg.eval.migration_seed,),
                        code=("star_jax.eval.migration",),
                        after=("synth", "embed-llm_finetuned", "embed-llm_finetuned_v2"))

    def evaluate(self) -> dict:
        from star_jax.eval import report

        p = self.paths
        upstream = {s: self.run.stamp(s)["key"] for s in self._upstream()}
        inputs = {"data": self.run.digest(p.data), **upstream}

        def fn() -> dict:
            out = report.write_report(read_run(p.root))
            return {"report": os.fspath(out)}

        return self.run("evaluate", fn, inputs=inputs, config=(self.cfg.eval, report.REPORT_FORMAT),
                        exists=lambda r: os.path.isfile(r["report"]), code=("star_jax.eval.report",),
                        after=tuple(upstream))

    def _upstream(self) -> list[str]:
        return [r.name for r in self.run.records]

    def __call__(self) -> dict:
        """Run every stage the config asks for; returns the evaluate stage's result."""
        cfg = self.cfg
        self.data()
        self.validate()
        finetuned = None
        if self.needs_llm:
            self.tokenizer()
            self.base()
            if "llm_frozen" in cfg.eval.variants:
                self.embed("llm_frozen", None)
            if self.needs_finetuned:
                trained = self.train_llm()
                finetuned = self.embed("llm_finetuned", Path(trained["dir"]), "train-llm")
        if self.gnn_variants:
            self.graph()
        for variant in self.gnn_variants:
            features = finetuned if self.gnn_llm[variant] else None
            self.gnn_embed(variant, self.train_gnn(variant, features), features)
        if finetuned is not None and cfg.llm_train.matryoshka_dims:
            compact = self.compact(finetuned)
            if COMPACT_GNN in self.gnn_variants:
                self.compact_gnns(compact)
        if cfg.eval.migration:
            if finetuned is None:
                raise StarError("eval.migration: needs llm_finetuned or a gnn_*_llm variant in eval.variants")
            self.migration(finetuned)
        return self.evaluate()


class Wants(NamedTuple):
    """What `cfg.eval.variants` asks the pipeline for."""

    gnn_variants: list[str]  # the GNN variants, in GNN_VARIANTS order
    gnn_llm: dict[str, bool]  # variant -> whether it reads the fine-tuned LLM embeddings
    needs_finetuned: bool  # train-llm and the fine-tuned embeddings
    needs_llm: bool  # the LLM branch at all (tokenizer, base)


def wants(cfg: Config) -> Wants:
    variants = set(cfg.eval.variants)
    gnn = [v for v in GNN_VARIANTS if v in variants]
    gnn_llm = {v: GNN_VARIANTS[v]["use_llm"] for v in gnn}
    finetuned = "llm_finetuned" in variants or any(gnn_llm.values())
    return Wants(gnn, gnn_llm, finetuned, finetuned or "llm_frozen" in variants)


def plan(cfg: Config) -> list[tuple[str, bool]]:
    """The stages `Pipeline(cfg, ...)()` goes through, in order, as (stamp name, whether every process
    runs it; otherwise process 0 does while the others wait). Nothing is read or written."""
    check_variants(cfg.eval.variants)
    gnn, _, finetuned, llm = wants(cfg)
    out = [("validate", False)] if cfg.data.dir else [("synth", False), ("validate", False)]
    if llm:
        out += [] if cfg.tokenizer.dir else [("tokenizer", False)]
        out += [] if cfg.llm.base_dir else [("pretrain", True)]
        if "llm_frozen" in cfg.eval.variants:
            out.append(("embed-llm_frozen", True))
        if finetuned:
            out += [("train-llm", True), ("embed-llm_finetuned", True)]
    if gnn:
        out.append(("build-graph", False))
    for v in gnn:
        out += [(f"train-gnn-{v}", True), (f"gnn-embed-{v}", True)]
    dims = cfg.llm_train.matryoshka_dims
    if finetuned and dims:
        out.append((COMPACT_STAGE, False))
        if COMPACT_GNN in gnn:
            for d in dims:  # (a D as wide as the towers' output would be the full version: not retrained)
                name = compact_gnn_name(d)
                out += [(f"train-gnn-{name}", True), (f"gnn-embed-{name}", True)]
    if cfg.eval.migration:
        if not finetuned:
            raise StarError("eval.migration: needs llm_finetuned or a gnn_*_llm variant in eval.variants")
        seed = cfg.eval.migration_seed
        out += [(f"train-llm-seed{seed}", True), ("embed-llm_finetuned_v2", True), ("migration", False)]
    return out + [("evaluate", False)]


# Stage families; a stamp name is a family or `<family>-<variant or seed>` (docs/pipeline.md).
STAGES = ("synth", "validate", "tokenizer", "pretrain", "train-llm", "embed", "build-graph", "train-gnn",
          "gnn-embed", "compact", "migration", "evaluate")


def check_redo(names: tuple[str, ...]) -> None:
    for name in names:
        if not any(name == f or (name.startswith(f + "-") and name[len(f) + 1:].replace("_", "").isalnum())
                   for f in STAGES):
            raise StarError(f"--redo {name}: not a stage; expected one of {', '.join(STAGES)} or a stamp "
                            "name such as train-gnn-gnn_id_cat (RUN_DIR/stamps)")


def run_pipeline(cfg: Config, run_dir: str | os.PathLike, *, log: Callable[[str], None] = logger.info,
                 redo: tuple[str, ...] = ()) -> dict:
    """Write RUN_DIR/config.yaml and run (or resume, or skip) every stage; returns evaluate's result.

    RUN_DIR/.lock is held throughout (pipeline/lock.py): a second pipeline on RUN_DIR stops at once.

    `redo`: stages to run even when up to date (a name such as `train-gnn-gnn_id_cat`, or a family
    such as `train-gnn`), with every stage downstream of them.
    """
    from star_jax.parallel import initialize_distributed

    check_variants(cfg.eval.variants)
    check_redo(redo)
    if cfg.data.dir and not os.path.isdir(cfg.data.dir):
        raise StarError(f"data.dir: directory not found: {cfg.data.dir}")
    initialize_distributed(cfg.mesh)
    root = Path(run_dir)
    lead = is_lead()
    # RUN_DIR/.lock, taken by process 0 before anything is written: a second pipeline on the same
    # directory stops here.
    with run_lock(root, log=log) if lead else contextlib.nullcontext():
        if lead:
            # Without this invocation's process layout: the file must also serve a single-process rerun.
            solo = dataclasses.replace(cfg.mesh, coordinator_address=None, num_processes=1, process_id=None)
            atomic_write_text(root / CONFIG_FILE, to_yaml(dataclasses.replace(cfg, mesh=solo)))
        pipeline = Pipeline(cfg, root, log=log, redo=redo)
        t0 = time.perf_counter()
        result = pipeline()
    ran = [r for r in pipeline.run.records if not r.skipped]
    log(f"pipeline: {len(ran)} stage(s) ran, {len(pipeline.run.records) - len(ran)} skipped; "
        f"{time.perf_counter() - t0:.0f}s -> {root}")
    return result
