"""`star-jax`: one subcommand per pipeline stage, plus `pipeline`.

Each subcommand lives in the module that implements its stage. That module exposes
`add_arguments(parser)` and `main(args) -> int | None`; it is imported only when its command
runs, so `star-jax validate` never pays for importing JAX.

Every `StarError` (a mistake the user can fix) is printed as one line on stderr with exit
status 2 (143 for `Preempted`: SIGTERM stopped a training stage after a checkpoint); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from star_jax.errors import OneLineParser, StarError
from star_jax.tracking import log_to_stderr

# name -> (module, one-line help). The order is the pipeline's.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("star_jax.data.synth", "generate a synthetic job marketplace as Parquet tables"),
    "validate": ("star_jax.data.validate", "check a data directory against docs/data_format.md"),
    "tokenizer": ("star_jax.data.tokenizer", "train a BPE tokenizer on member and job texts"),
    "inspect-model": ("star_jax.llm.hf_io", "load a local HF Mistral directory and summarise it"),
    "pretrain": ("star_jax.llm.pretrain", "causal-LM pretraining of the tiny demo base model"),
    "train-llm": ("star_jax.llm.train", "LoRA fine-tuning of the member/job bi-encoder"),
    "embed": ("star_jax.llm.embed", "embed every member and job text into the EmbeddingStore"),
    "store": ("star_jax.store.cli", "inspect the EmbeddingStore and migrate between versions"),
    "build-graph": ("star_jax.graph.build_cli", "build the per-relation CSR graph from edge tables"),
    "graph": ("star_jax.graph.tstore", "fetch a graph directory from its TensorStore copy"),
    "train-gnn": ("star_jax.gnn.train", "train the heterogeneous attention GNN for link prediction"),
    "gnn-embed": ("star_jax.gnn.export", "write every node's GNN embedding to the store"),
    "evaluate": ("star_jax.eval.report", "score every variant and write report.md/report.json"),
    "pipeline": ("star_jax.pipeline", "run every stage, skipping those already done"),
    "index": ("star_jax.eval.index", "build an ANN index over a variant's job embeddings"),
    "recommend": ("star_jax.eval.recommend", "the top-k jobs for a member, or for all as Parquet"),
}

# Directory flags, by argparse dest, checked before a command starts any work: an input must be an
# existing directory; an output must not be, or lie under, a file (one would be replaced or fail
# deep inside the stage). kvstore URLs are left to the store.
INPUT_DIRS = ("data", "tokenizer", "base", "graph", "ckpt", "run")
OUTPUT_DIRS = ("out", "out_store", "log_dir", "store")


def _top_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items())
    p = OneLineParser(
        prog="star-jax",
        description="STAR job matching in JAX (see README.md).",
        epilog=epilog + "\n\nrun `star-jax COMMAND --help` for a command's flags",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", help="one of the commands below")
    return p


def _check_dirs(args: argparse.Namespace) -> None:
    for dest in INPUT_DIRS + OUTPUT_DIRS:
        path = getattr(args, dest, None)
        if not isinstance(path, str) or "://" in path:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in INPUT_DIRS:
            if not os.path.isdir(path):
                why = "not a directory" if os.path.exists(path) else "no such directory"
                raise StarError(f"{flag} {path}: {why}")
            continue
        existing = os.path.abspath(path)
        while not os.path.exists(existing):  # ends at the root at the latest
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            under = "" if existing == os.path.abspath(path) else f" ({existing} is a file)"
            raise StarError(f"{flag} {path}: not a directory{under}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    log_to_stderr()
    try:
        if not argv or argv[0] in ("-h", "--help"):
            _top_parser().print_help()
            return 0
        name = argv[0]
        if name not in COMMANDS:
            raise StarError(f"unknown command {name!r}; expected one of: {', '.join(COMMANDS)}")
        module_name, help_ = COMMANDS[name]
        module = importlib.import_module(module_name)
        parser = OneLineParser(prog=f"star-jax {name}", description=help_)
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        _check_dirs(args)
        return int(module.main(args) or 0)
    except StarError as e:
        print(f"star-jax: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("star-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
