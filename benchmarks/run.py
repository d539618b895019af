"""`make bench`: every CPU comparison against PyTorch / PyG / numpy in one run, on one machine.

    python -m benchmarks.run [--only llm gnn sampler store] [--quick] [--no-docs]

1. bi-encoder LoRA train step and embedding inference vs transformers + PEFT (`bench_llm`, tiny and
   small configs, remat none and full);
2. GNN train step vs the same model on PyG's `HGTConv`, on identical sampled batches (`bench_gnn`);
3. neighbour sampler vs PyG `LinkNeighborLoader` on the medium marketplace graph (`bench_sampler`);
4. EmbeddingStore writes and lookups vs a numpy memmap (`bench_store`).

Writes `benchmarks/results/cpu.json` (every number, the machine and the library versions) and the
markdown sections of docs/benchmarks.md, with a summary against the targets: train step at the
small config >= 1.0x transformers + PEFT, GNN step >= 2x PyG, sampler >= 1x NeighborLoader.
`--quick` is a smoke run (tiny LLM config, small graph, few steps) that writes nothing to docs.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import bench_gnn, bench_llm, bench_sampler, bench_store
from benchmarks.common import RESULTS, machine_info, write_json, write_section
from star_jax.tracking import progress

PARTS = ("llm", "gnn", "sampler", "store")
# The clean-clone install of `make bench` (base, test and bench extras, torch-scatter and
# torch-sparse compiled), as last measured in docs/benchmarks.md: 3m04s + 6m58s.
_INSTALL_S = 602.0
PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "jraph", "tensorstore", "torch", "transformers",
            "peft", "torch-geometric", "torch-sparse", "torch-scatter")


def summary(results: dict) -> str:
    """The targets, met or not, from whatever parts ran."""
    lines = ["## CPU summary: targets", "",
             "From the last `make bench` (`python -m benchmarks.run`); the tables below have the details "
             "and docs/benchmarks.md's findings section the profiles of any target missed.", "",
             "| comparison | target | measured | met |", "| --- | ---: | ---: | --- |"]

    def add(name: str, target: float, value: float) -> None:
        met = "yes" if value >= target else "**no**"
        lines.append(f"| {name} | ≥ {target:.1f}x | {value:.2f}x | {met} |")

    if "llm" in results:
        rows = {(r["framework"], r["config"], r["mode"], r["remat"]): r for r in results["llm"]["rows"]}
        for remat in bench_llm.CONFIGS["small"]["remat"]:
            ours = rows.get(("star_jax", "small", "train", remat))
            theirs = rows.get(("torch", "small", "train", remat))
            if ours and theirs:
                add(f"LoRA train step, small config, fp32, remat {remat} (tokens/s vs transformers + PEFT)",
                    1.0, ours["tokens_per_s"] / theirs["tokens_per_s"])
    if "gnn" in results:
        r = results["gnn"]["rows"]
        add("GNN train step (steps/s vs PyG HGTConv)", 2.0, r["pyg"]["step_s"] / r["star_jax"]["step_s"])
    if "sampler" in results:
        r = results["sampler"]["rows"]
        add("sampler, medium graph (batches/s vs LinkNeighborLoader)", 1.0,
            r["star_jax"]["batches_per_s"] / r["pyg"]["batches_per_s"])
    if "store" in results:
        r = results["store"]["ratios"]
        for how, key in (("default layout", "default"), ("replica", "replica")):
            for n, size in (("1,000", "1k"), ("10,000", "10k")):
                add(f"EmbeddingStore lookup of {n} random rows, {how} (rows/s vs numpy memmap)", 0.5,
                    r[f"lookup {key} {size}"])
        add("EmbeddingStore write, default layout (rows/s vs numpy memmap)", 0.5, r["write default"])
        gnn = results["store"].get("gnn")
        for name, value in (gnn or {}).get("vs_memory", {}).items():
            if name.startswith("store"):  # lower is better: step time over the in-memory step time
                met = "yes" if value <= 1.1 else "**no**"
                what = f"GNN train step, {gnn['scale']} scale, features from the {name}"
                lines.append(f"| {what} (step time vs features in memory) | ≤ 1.10x | {value:.3f}x | {met} |")
    seconds = results.get("seconds", {})
    if not results.get("quick") and all(p in seconds for p in PARTS):
        # The install is not part of this run: the clean-clone install time measured last (docs).
        total = _INSTALL_S + seconds["total"]
        met = "yes" if total <= 20 * 60 else "**no**"
        install = f"{_INSTALL_S // 60:.0f}m{_INSTALL_S % 60:02.0f}s"
        lines.append(f"| `make bench` from a clean clone: install ({install}, last measured) + these "
                     f"benchmarks ({seconds['total'] / 60:.1f} min) | ≤ 20 min | {total / 60:.1f} min | "
                     f"{met} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--quick", action="store_true", help="smoke run at toy sizes; nothing written to docs")
    p.add_argument("--no-docs", action="store_true", help="write the JSON only")
    args = p.parse_args()
    scale = "small" if args.quick else "medium"
    results: dict = {"quick": args.quick, "seconds": {}}
    sections: dict[str, str] = {}
    data = None
    t_all = time.perf_counter()
    with progress(total=len(args.only), desc="bench", unit="part") as bar:
        for part in args.only:
            bar.set_postfix(part=part)
            t0 = time.perf_counter()
            if part == "llm":
                configs = ["tiny"] if args.quick else list(bench_llm.CONFIGS)
                results["llm"] = bench_llm.run(configs, steps=1 if args.quick else None)
                sections["llm"] = bench_llm.table(results["llm"])
            elif part in ("gnn", "sampler"):
                if data is None:
                    from benchmarks.graph_data import marketplace_graph

                    data = marketplace_graph(scale)
                    results["graph_build_s"] = data.seconds
                if part == "gnn":
                    results["gnn"] = bench_gnn.run(data, 3 if args.quick else 5)
                    sections["gnn"] = bench_gnn.table(results["gnn"], scale)
                else:
                    results["sampler"] = bench_sampler.run(data, 5 if args.quick else 40)
                    sections["sampler"] = bench_sampler.table(results["sampler"], scale)
            else:
                store = bench_store.run(rows=10_000, dim=512) if args.quick else bench_store.run()
                results["store"] = {k: v for k, v in store.items() if k != "table"}
                title = "## EmbeddingStore (TensorStore zarr3) vs numpy memmap"
                sections["store"] = f"{title}\n\n{store['table']}"
            results["seconds"][part] = time.perf_counter() - t0
            print(f"{part}: {results['seconds'][part]:.0f}s", flush=True)
            bar.update()
    results["seconds"]["total"] = time.perf_counter() - t_all
    results["machine"] = machine_info(PACKAGES)
    out = RESULTS / ("cpu_quick.json" if args.quick else "cpu.json")
    write_json(results, out)
    text = summary(results)
    print("\n\n".join([text, *sections.values()]))
    print(f"\nresults: {out}")
    if not (args.quick or args.no_docs):
        write_section(text, "cpu-summary")
        for name, body in sections.items():
            write_section(body, name)
        print("docs/benchmarks.md updated")


if __name__ == "__main__":
    main()
