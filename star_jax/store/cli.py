"""`star-jax store info|migrate|replicate`: inspect an EmbeddingStore, map a new version onto an
old one, and build local replicas.

    star-jax store info --store ROOT [--version V] [--json]
    star-jax store migrate --store ROOT --from V1 --to V2 [--method ridge|procrustes] [--ridge 1e-3]
    star-jax store replicate --store ROOT [--version V] --out DIR [--node-types member,job]

`migrate` fits a map from V2 (new) onto V1 (old) with `star_jax.store.migrate`, stores it with
V2 and prints its fidelity; `EmbeddingStore.open(ROOT, V2, map_to=V1)` then reads V2 in
V1's space. `replicate` writes an uncompressed, memory-mapped copy of a version into the local
folder DIR (`star_jax.store.replica`) for `EmbeddingStore.open(ROOT, V, replica=DIR)`.
"""

from __future__ import annotations

import argparse
import json

from star_jax import config as cli_config
from star_jax.errors import StarError
from star_jax.store.kv import StoreRoot
from star_jax.store.manifest import published_versions, read_manifest
from star_jax.store.maps import list_maps
from star_jax.store.migrate import METHODS, fit_version_map
from star_jax.store.reader import EmbeddingStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    info = sub.add_parser("info", help="list versions, their manifests and maps")
    migrate = sub.add_parser("migrate", help="fit a linear map from a new version onto an old one")
    replicate = sub.add_parser("replicate", help="copy a version into an uncompressed, memory-mapped local "
                               "replica (fast random-row reads)")
    for p in (info, migrate, replicate):
        p.add_argument("--store", default=None, help="a path or kvstore URL (default: store.root)")
        cli_config.add_config_args(p)
    info.add_argument("--version", default=None, help="show only this version")
    info.add_argument("--json", action="store_true", help="print the manifests and map records as JSON")
    add = migrate.add_argument
    add("--from", dest="old", required=True, metavar="V1", help="the old version (map target)")
    add("--to", dest="new", required=True, metavar="V2", help="the new version (map source)")
    add("--method", choices=METHODS, default="procrustes")
    add("--ridge", type=float, default=1e-3, help="ridge strength, relative to the mean feature variance")
    add("--holdout", type=float, default=0.1, help="fraction of shared rows held out")
    add("--node-types", default=None, help="comma-separated types to fit on (default: all shared)")
    add = replicate.add_argument
    add("--version", default=None, help="the version to copy (default: the latest)")
    add("--out", required=True, metavar="DIR", help="local folder of the replicas")
    add("--node-types", default=None, help="comma-separated types to copy (default: all)")


def _root(args: argparse.Namespace) -> tuple[str, str]:
    cfg = cli_config.config_from_args(args).store
    root = args.store or cfg.root
    if root is None:
        raise StarError("--store: required (or set store.root)")
    return root, cfg.kvstore


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _print_version(m: dict, maps: list[dict]) -> None:
    print(f"version {m['version']}  (generation {m['generation']}, created {m['created']}, "
          f"updated {m['updated']})")
    for key in ("model", "adapter", "tokenizer", "max_len", "pooling", "dim", "dtype"):
        print(f"  {key:<10} {m[key]}")
    if m.get("extra"):
        print(f"  {'extra':<10} {json.dumps(m['extra'], sort_keys=True)}")
    if m.get("compact"):  # a version derived from a stored one (`star-jax embed --dims`)
        print(f"  {'compact':<10} {json.dumps(m['compact'], sort_keys=True)}")
    for t, info in m["node_types"].items():
        print(f"  {t:<10} {info['rows']} rows in generation {info['generation']} "
              f"({info['embedded']} embedded, {info['copied']} copied)")
    for mp in maps:
        f = mp["fidelity"]
        print(f"  map onto {mp['target']}: {mp['method']}, fidelity holdout {_fmt(f['holdout'])}, "
              f"overall {_fmt(f['overall'])}, unmapped {_fmt(f['unmapped'])}")


def main(args: argparse.Namespace) -> int:
    root, kvstore = _root(args)
    r = StoreRoot(root, kvstore)
    if args.action == "info":
        manifests = [read_manifest(r, args.version)] if args.version else published_versions(r)
        if not manifests:
            raise StarError(f"store not found: {r.name} (no published version under manifests/)")
        if args.json:
            print(json.dumps([{**m, "maps": list_maps(r, m["version"])} for m in manifests], indent=2))
            return 0
        print(f"store {r.name}: {len(manifests)} version(s), latest last")
        for m in manifests:
            _print_version(m, list_maps(r, m["version"]))
        return 0
    types = [t for t in args.node_types.split(",") if t] if args.node_types else None
    if args.action == "replicate":
        store = EmbeddingStore.open(root, args.version, kvstore=kvstore, replica=args.out)
        for t in types or store.node_types:
            rep = store.replica(t)
            print(f"{t}: {rep.rows:,} rows of generation {store.manifest['node_types'][t]['generation']} "
                  f"in {rep.path}")
        return 0
    record = fit_version_map(root, args.old, args.new, method=args.method, ridge=args.ridge,
                             node_types=types, holdout=args.holdout, kvstore=kvstore)
    f = record["fidelity"]
    print(f"map {args.new} -> {args.old} ({args.method}) fitted on {record['rows_fit']} rows, "
          f"{record['rows_holdout']} held out; stored at {r.name}/maps/{args.new}/{args.old}.json")
    print(f"fidelity (mean cosine to {args.old}): holdout {_fmt(f['holdout'])}, "
          f"overall {_fmt(f['overall'])}, unmapped {_fmt(f['unmapped'])}")
    for t, pt in f["per_type"].items():
        print(f"  {t:<10} holdout {_fmt(pt['holdout'])}, overall {_fmt(pt['overall'])}, "
              f"unmapped {_fmt(pt['unmapped'])} ({pt['rows']} shared rows)")
    return 0
