"""`star-jax pipeline`: every stage in order, each skipped when its inputs and config are unchanged.

    star-jax pipeline --config configs/tiny.yaml --out RUN_DIR [--set k=v ...]

The data flow of docs/architecture.md ("The pipeline"), one stage function per step, called in
process (no subprocesses):

    synth | data.dir -> validate -> tokenizer | tokenizer.dir -> pretrain | llm.base_dir
      -> train-llm -> embed (frozen base: llm_frozen; fine-tuned: llm_finetuned) -> build-graph
      -> train-gnn + gnn-embed per GNN variant -> [migration] -> evaluate

Only the stages the `eval.variants` need run: `[gnn_id_cat]` alone never touches the LLM.

RUN_DIR:
    config.yaml              the resolved config of the last invocation
    stamps/<stage>.json      written when the stage succeeds (see `Runner`)
    data/ tokenizer/         synthetic tables and the BPE tokenizer (unless data.dir, tokenizer.dir)
    pretrain/                the demo's own base model in pretrain/model (unless llm.base_dir)
    llm/                     the fine-tuned adapters (train-llm's OUT); llm_seed<S>/ for migration
    store/                   the EmbeddingStore (unless store.root): one version per variant
    graph/                   build-graph's CSR graph
    gnn/<variant>/           train-gnn's OUT per GNN variant
    report.md report.json plots/

Skipping (the `Runner`). A stage's key is the fingerprint of its name, the config sections it
reads (`config.fingerprint`) and the content digests of its inputs (`fileio.content_digest`; for
a store version, its manifest). The stamp is written only after the stage returns, so a stage
killed midway has no stamp and runs again on the next invocation, where the stage resumes from its
own checkpoints (train-llm, train-gnn, the store writer all resume). Digests are cached in
`stamps/digests.json` by each file's size and modification time, so a rerun that skips every
stage reads no large file again (a 14 GB base model is hashed once).

Store versions are named `<variant>-<8 hex>` after what defines the embedding function (model,
adapters, tokenizer, settings; for the GNN, its training run), never after the texts: when only
texts change, the version stays and `embed` refreshes the changed rows; when the model changes, a
new version appears beside the old one (STAR's version management).

Multi-host (launch/gpu_pod.sh): every process runs the pipeline. The JAX stages (pretrain,
train-llm, embed) run on all processes; the others run on process 0 while the rest wait at a
barrier; only process 0 writes stamps. RUN_DIR must be on a filesystem all hosts share.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from star_jax.config import Config, fingerprint, load_config, to_yaml
from star_jax.errors import StarError
from star_jax.fileio import atomic_write_json, atomic_write_text, content_digest, read_json

CONFIG_FILE = "config.yaml"
STAMPS = "stamps"
DIGESTS = "digests.json"
LLM_VARIANTS = ("llm_frozen", "llm_finetuned")
GNN_VARIANTS = ("gnn_id_cat", "gnn_id_cat_llm", "gnn_id_llm")  # star_jax.gnn.train.VARIANTS (no JAX here)
VARIANTS = LLM_VARIANTS + GNN_VARIANTS
# The paper's offline AUC for each row of the ablation (arXiv 2507.09797; docs/architecture.md,
# "The paper"); gnn_id_llm has no published figure (only "removing 22 categorical features costs
# little").
PAPER_AUC = {"llm_frozen": 0.6886, "llm_finetuned": 0.7385, "gnn_id_cat": 0.8447, "gnn_id_cat_llm": 0.8489}


# -- run directory -------------------------------------------------------------------------------


class RunPaths(NamedTuple):
    """Where each stage of a pipeline run reads and writes (inputs the config names win)."""

    root: Path
    data: Path
    tokenizer: Path
    pretrain: Path
    base: Path  # HF Mistral directory the towers start from
    llm: Path
    store: str  # EmbeddingStore root (a path or kvstore URL)
    graph: Path

    def gnn(self, variant: str) -> Path:
        return self.root / "gnn" / variant

    def llm_seed(self, seed: int) -> Path:
        return self.root / f"llm_seed{seed}"


def run_paths(cfg: Config, run_dir: str | os.PathLike) -> RunPaths:
    root = Path(run_dir)
    pretrain = root / "pretrain"
    return RunPaths(
        root=root,
        data=Path(cfg.data.dir) if cfg.data.dir else root / "data",
        tokenizer=Path(cfg.tokenizer.dir) if cfg.tokenizer.dir else root / "tokenizer",
        pretrain=pretrain,
        base=Path(cfg.llm.base_dir) if cfg.llm.base_dir else pretrain / "model",
        llm=root / "llm",
        store=cfg.store.root or os.fspath(root / "store"),
        graph=root / "graph",
    )


def stage_name(variant: str) -> str:
    """The stage whose stamp holds `variant`'s store version."""
    return f"embed-{variant}" if variant in LLM_VARIANTS else f"gnn-embed-{variant}"


def check_variants(variants: list[str]) -> None:
    for v in variants:
        if v not in VARIANTS:
            raise StarError(f"eval.variants: unknown variant {v!r}; expected some of {', '.join(VARIANTS)}")
    if not variants:
        raise StarError("eval.variants: empty; name at least one of " + ", ".join(VARIANTS))


class Run(NamedTuple):
    """A pipeline run directory as the report and `recommend` read it."""

    paths: RunPaths
    cfg: Config
    stamps: dict[str, dict]  # stage name -> its stamp

    def result(self, stage: str) -> dict | None:
        stamp = self.stamps.get(stage)
        return None if stamp is None else stamp["result"]

    def store_version(self, variant: str) -> tuple[str, str] | None:
        """(store root, version) of `variant`'s embeddings, None if the pipeline has not made them."""
        result = self.result(stage_name(variant))
        return None if result is None else (result["store"], result["version"])


def read_run(run_dir: str | os.PathLike, overrides: list[str] | None = None) -> Run:
    """The config (RUN_DIR/config.yaml plus `overrides`) and stamps of a pipeline run."""
    root = Path(run_dir)
    if not (root / CONFIG_FILE).is_file():
        raise StarError(f"--run {root}: no {CONFIG_FILE}; expected an --out directory of `star-jax pipeline`")
    cfg = load_config(root / CONFIG_FILE, overrides)
    stamps = {}
    if (root / STAMPS).is_dir():
        for p in (root / STAMPS).glob("*.json"):
            if p.name != DIGESTS:
                stamps[p.stem] = read_json(p)
    order = sorted(stamps, key=lambda name: stamps[name]["finished"])  # the pipeline's order
    return Run(run_paths(cfg, root), cfg, {name: stamps[name] for name in order})


# -- stage skipping ------------------------------------------------------------------------------


class DigestCache:
    """`content_digest` of files and directories, remembered by each file's (size, mtime)."""

    def __init__(self, path: Path):
        self.path = path
        self._cache: dict[str, dict] = read_json(path) if path.is_file() else {}

    @staticmethod
    def _signature(path: Path) -> str:
        files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        stats = [(os.fspath(q.relative_to(path)) if q != path else "", q.stat().st_size, q.stat().st_mtime_ns)
                 for q in files]
        return fingerprint(stats)

    def __call__(self, path: str | os.PathLike) -> str:
        path = Path(path).absolute()
        if not path.exists():
            raise StarError(f"{path}: missing (an input of the pipeline)")
        sig = self._signature(path)
        hit = self._cache.get(os.fspath(path))
        if hit is None or hit["signature"] != sig:
            hit = {"signature": sig, "digest": content_digest([path])}
            self._cache[os.fspath(path)] = hit
        return hit["digest"]

    def save(self) -> None:
        atomic_write_json(self.path, self._cache)


class StageRecord(NamedTuple):
    name: str
    skipped: bool
    seconds: float  # this invocation's wall time (skipped: the time of the run that made it)


def _barrier(name: str) -> None:
    import sys

    if "jax" not in sys.modules:
        return
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"star-jax pipeline {name}")


def _lead() -> bool:
    import sys

    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


class Runner:
    """Runs a stage unless its stamp says it already ran with the same key and its outputs exist.

    Stamp (`RUN_DIR/stamps/<stage>.json`): `{"key", "inputs": {name: digest}, "config": fingerprint,
    "result": what the stage returned, "seconds" (wall), "cpu_seconds" (this process, all threads),
    "finished"}`.
    """

    def __init__(self, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print):
        self.dir = Path(run_dir) / STAMPS
        self.digest = DigestCache(self.dir / DIGESTS)
        self.log = log
        self.records: list[StageRecord] = []

    def stamp(self, name: str) -> dict | None:
        path = self.dir / f"{name}.json"
        try:
            return read_json(path) if path.is_file() else None
        except ValueError:  # unreadable: treat as absent (stamps are written atomically, so rare)
            return None

    def __call__(
        self,
        name: str,
        fn: Callable[[], dict],
        *,
        inputs: dict[str, str],
        config: tuple = (),
        collective: bool = False,
        exists: Callable[[dict], bool] | None = None,
        owns: tuple[str | os.PathLike, ...] = (),
    ) -> dict:
        """`fn()` (a JSON-able result) unless stamped with the same key; the result either way.

        `inputs` are digests (from `self.digest` or `fingerprint`); `config` the config sections
        and constants the stage reads; `exists(result)` says whether the stage's outputs are still
        there (a deleted output reruns its stage). `collective` stages run on every process.

        `owns`: directories only this stage writes, where it keeps checkpoints to resume from.
        `stamps/<stage>.running` records the key a started run had: a rerun with that key resumes
        in them; with another key (new settings or inputs) they are deleted first, since the stage
        would refuse to resume a checkpoint of other settings.
        """
        config_fp = fingerprint(*config)
        key = fingerprint(name, inputs, config_fp)
        stamp = self.stamp(name)
        if stamp is not None and stamp.get("key") == key and (exists is None or exists(stamp["result"])):
            self.log(f"pipeline: {name}: up to date (ran in {stamp['seconds']:.0f}s); skipped")
            self.records.append(StageRecord(name, True, float(stamp["seconds"])))
            return stamp["result"]
        self.log(f"pipeline: {name}: running")
        running = self.dir / f"{name}.running"
        if _lead():
            started = read_json(running).get("key") if running.is_file() else None
            for d in map(Path, owns):
                if started != key and d.exists():
                    self.log(f"pipeline: {name}: {d} holds a run of other inputs or settings; starting over")
                    shutil.rmtree(d)
            atomic_write_json(running, {"key": key})
        _barrier(f"{name} start")
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = fn() if collective or _lead() else None
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        _barrier(f"{name} done")
        if _lead():
            self.digest.save()
            atomic_write_json(self.dir / f"{name}.json", {
                "key": key, "inputs": inputs, "config": config_fp, "result": result,
                "seconds": seconds, "cpu_seconds": cpu,  # all threads: on a busy machine, the honest cost
                "finished": datetime.now().isoformat(timespec="microseconds"),
            })
            running.unlink()
        _barrier(f"{name} stamped")
        if result is None:
            result = read_json(self.dir / f"{name}.json")["result"]
        self.records.append(StageRecord(name, False, seconds))
        self.log(f"pipeline: {name}: done in {seconds:.0f}s")
        return result


# -- the stages ----------------------------------------------------------------------------------


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

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print):
        check_variants(cfg.eval.variants)
        self.cfg, self.paths = cfg, run_paths(cfg, run_dir)
        self.run = Runner(self.paths.root, log=log)
        self.log = log
        from star_jax.gnn.train import VARIANTS as GNN

        variants = set(cfg.eval.variants)
        self.gnn_variants = [v for v in GNN_VARIANTS if v in variants]
        self.gnn_llm = {v: GNN[v]["use_llm"] for v in self.gnn_variants}  # reads the fine-tuned embeddings
        self.needs_finetuned = "llm_finetuned" in variants or any(self.gnn_llm.values())
        self.needs_llm = self.needs_finetuned or "llm_frozen" in variants

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
                        exists=lambda r: os.path.isdir(r["dir"]))

    def validate(self) -> dict:
        from star_jax.data.validate import check_data

        def fn() -> dict:
            schema = check_data(self.paths.data)
            return {"node_types": list(schema.node_types), "relations": list(schema.relations)}

        return self.run("validate", fn, inputs={"data": self.run.digest(self.paths.data)})

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
                        config=(_section(cfg.tokenizer, "dir"),), exists=lambda r: os.path.isdir(r["dir"]))

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
                        exists=lambda r: os.path.isdir(r["dir"]), owns=(p.pretrain,))

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
                        exists=lambda r: os.path.isdir(os.path.join(r["dir"], "adapters")), owns=(out,))

    def embed(self, variant: str, adapters_dir: Path | None) -> dict:
        """Embed every member and job text into the store as `variant`'s version."""
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
                        collective=True, exists=lambda r: _version_exists(r, cfg.store.kvstore))

    def graph(self) -> dict:
        from star_jax.graph.hetero import GRAPH_FORMAT, build_graph

        p = self.paths

        def fn() -> dict:
            graph = build_graph(p.data, p.graph)
            return {"dir": os.fspath(p.graph), "digest": graph.digest}

        return self.run("build-graph", fn, inputs={"data": self.run.digest(p.data)}, config=(GRAPH_FORMAT,),
                        exists=lambda r: os.path.isdir(r["dir"]))

    def train_gnn(self, variant: str, features: dict | None) -> dict:
        from star_jax.gnn.train import train_gnn

        cfg, p = self.cfg, self.paths
        out = p.gnn(variant)
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
        return self.run(f"train-gnn-{variant}", fn, inputs=inputs, config=config,
                        exists=lambda r: os.path.isfile(os.path.join(r["dir"], "result.json")), owns=(out,))

    def gnn_embed(self, variant: str, trained: dict, features: dict | None) -> dict:
        from star_jax.gnn.export import gnn_embed

        cfg, p = self.cfg, self.paths
        version = f"{variant}-{trained['fingerprint'][:8]}"
        inputs = {"graph": self.run.digest(p.graph),
                  "run": self.run.digest(Path(trained["dir"]) / "result.json")}

        def fn() -> dict:
            gnn_embed(cfg, p.graph, trained["dir"], p.store, version,
                      store_root=None if features is None else features["store"],
                      store_version=None if features is None else features["version"])
            return {"store": p.store, "version": version}

        return self.run(f"gnn-embed-{variant}", fn, inputs=inputs,
                        config=(_section(cfg.store, "root"), cfg.gnn_train.eval_batch_size),
                        exists=lambda r: _version_exists(r, cfg.store.kvstore))

    def migration(self, v1: dict) -> dict:
        """STAR's version management: a second adapter (another seed) as V2, mapped onto V1."""
        from star_jax.eval.migration import run_migration_experiment

        cfg, p = self.cfg, self.paths
        second = self.train_llm(seed=cfg.eval.migration_seed)
        v2 = self.embed("llm_finetuned_v2", Path(second["dir"]))
        inputs = {"data": self.run.digest(p.data),
                  "v1": _manifest_digest(v1["store"], v1["version"], cfg.store.kvstore),
                  "v2": _manifest_digest(v2["store"], v2["version"], cfg.store.kvstore)}

        def fn() -> dict:
            return run_migration_experiment(p.store, v1["version"], v2["version"], p.data,
                                            kvstore=cfg.store.kvstore)

        return self.run("migration", fn, inputs=inputs, config=(cfg.eval.migration_seed,))

    def evaluate(self) -> dict:
        from star_jax.eval import report

        p = self.paths
        upstream = {s: self.run.stamp(s)["key"] for s in self._upstream()}
        inputs = {"data": self.run.digest(p.data), **upstream}

        def fn() -> dict:
            out = report.write_report(read_run(p.root))
            return {"report": os.fspath(out)}

        return self.run("evaluate", fn, inputs=inputs, config=(self.cfg.eval, report.REPORT_FORMAT),
                        exists=lambda r: os.path.isfile(r["report"]))

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
                finetuned = self.embed("llm_finetuned", Path(trained["dir"]))
        if self.gnn_variants:
            self.graph()
        for variant in self.gnn_variants:
            features = finetuned if self.gnn_llm[variant] else None
            self.gnn_embed(variant, self.train_gnn(variant, features), features)
        if cfg.eval.migration:
            if finetuned is None:
                raise StarError("eval.migration: needs llm_finetuned or a gnn_*_llm variant in eval.variants")
            self.migration(finetuned)
        return self.evaluate()


def run_pipeline(cfg: Config, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print) -> dict:
    """Write RUN_DIR/config.yaml and run (or resume, or skip) every stage; returns evaluate's result."""
    from star_jax.parallel import initialize_distributed

    check_variants(cfg.eval.variants)
    if cfg.data.dir and not os.path.isdir(cfg.data.dir):
        raise StarError(f"data.dir: directory not found: {cfg.data.dir}")
    initialize_distributed(cfg.mesh)
    root = Path(run_dir)
    if _lead():
        root.mkdir(parents=True, exist_ok=True)
        # Without this invocation's process layout: the file must also serve a single-process rerun.
        solo = dataclasses.replace(cfg.mesh, coordinator_address=None, num_processes=1, process_id=None)
        atomic_write_text(root / CONFIG_FILE, to_yaml(dataclasses.replace(cfg, mesh=solo)))
    pipeline = Pipeline(cfg, root, log=log)
    t0 = time.perf_counter()
    result = pipeline()
    ran = [r for r in pipeline.run.records if not r.skipped]
    log(f"pipeline: {len(ran)} stage(s) ran, {len(pipeline.run.records) - len(ran)} skipped; "
        f"{time.perf_counter() - t0:.0f}s -> {root}")
    return result


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.cli import add_config_args

    parser.add_argument("--out", required=True, help="run directory (created; rerun it to resume or skip)")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.cli import config_from_args

    cfg = config_from_args(args)
    result = run_pipeline(cfg, args.out)
    if _lead():
        from star_jax.eval.report import REPORT_JSON, table_markdown

        print()
        print(table_markdown(read_json(Path(result["report"]).parent / REPORT_JSON)))
    return 0
