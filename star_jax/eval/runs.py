"""A pipeline run directory as the report, `recommend` and the seed sweeps read it.

`RunPaths` says where each stage of `star-jax pipeline --out RUN_DIR` reads and writes;
`read_run` loads the run's config and stage stamps (star_jax.pipeline.stamps writes them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from star_jax.config import GNN_VARIANTS, LLM_VARIANTS, VARIANTS, Config, check_variants, load_config
from star_jax.errors import StarError
from star_jax.fileio import read_json

__all__ = ["CONFIG_FILE", "DIGESTS", "GNN_VARIANTS", "LLM_VARIANTS", "PAPER_AUC", "STAMPS", "VARIANTS", "Run",
           "RunPaths", "check_variants", "read_run", "run_paths", "stage_name"]

CONFIG_FILE = "config.yaml"
STAMPS = "stamps"
DIGESTS = "digests.json"
# The paper's offline AUC for each row of the ablation (arXiv 2507.09797; docs/architecture.md,
# "The paper"); gnn_id_llm has no published figure (only "removing 22 categorical features costs
# little").
PAPER_AUC = {"llm_frozen": 0.6886, "llm_finetuned": 0.7385, "gnn_id_cat": 0.8447, "gnn_id_cat_llm": 0.8489}


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
