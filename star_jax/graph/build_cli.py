"""`star-jax build-graph`: build the graph directory, and with `--tensorstore` its graph store.

    star-jax build-graph --data DATA_DIR --out GRAPH_DIR [--tensorstore URL] [--force]

Prints each relation's degree statistics (star_jax.graph.hetero.format_degree_stats).
"""

from __future__ import annotations

import argparse
import logging

from star_jax.errors import StarError
from star_jax.graph.hetero import ensure_graph, format_degree_stats
from star_jax.graph.tstore import write_graph_store

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data directory (schema.json + Parquet tables)")
    parser.add_argument("--out", required=True, help="graph directory to write")
    parser.add_argument("--force", action="store_true", help="rebuild even if the graph matches the data")
    parser.add_argument("--tensorstore", default=None, metavar="URL",
                        help="also write the graph as zarr3 arrays to this kvstore URL (file://, gs://, "
                             "s3://) or path, manifest last (docs/scaling.md)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20,
                        help="bytes per stored object (zarr3 shard) with --tensorstore (default: 1 MiB)")
    parser.add_argument("--read-bytes", type=int, default=1 << 16,
                        help="bytes per read chunk inside an object, the unit a random read decodes "
                             "(default: 64 KiB)")


def main(args: argparse.Namespace) -> int:
    for flag, value in (("--chunk-bytes", args.chunk_bytes), ("--read-bytes", args.read_bytes)):
        if value < 1:
            raise StarError(f"{flag}: must be >= 1, got {value}")
    graph, built = ensure_graph(args.data, args.out, force=args.force)
    counts = ", ".join(f"{t} {graph.num_nodes(t)}" for t in graph.node_types)
    log.info(f"{'built' if built else 'up to date'}: {args.out} ({counts})")
    if args.tensorstore:
        write_graph_store(args.out, args.tensorstore, chunk_bytes=args.chunk_bytes,
                          read_bytes=args.read_bytes, force=args.force)
        log.info(f"graph store: {args.tensorstore}")
    print(format_degree_stats(graph))
    return 0
