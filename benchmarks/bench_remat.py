"""Peak memory and step time of the bi-encoder training step under each remat policy.

    python -m benchmarks.bench_remat [--layers 8] [--hidden 256] [--seq 1024] [--pairs 4] [--steps 2]

Builds the `train-llm` step (star_jax/train_loop.py + the bi-encoder loss, shared LoRA adapter, fp32
on one device) for a Mistral shape where activations dominate (long sequences, several layers),
compiles it under `llm.arch.remat` = none, full and save_projections, and reads the memory the
compiled step needs from `memory_analysis()` (arguments + outputs + temporaries - donated
aliases; see `loop.peak_bytes`). Step time is the median of `--steps` timed steps after one
warm-up: what the saved memory costs in recomputation. The table goes into the `bench:remat`
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from benchmarks.common import machine_info, write_section
from star_jax import train_loop as loop
from star_jax.config import Config, LLMConfig, LLMTrainConfig, LoraConfig, MeshConfig, MistralConfig
from star_jax.llm.biencoder import build_biencoder
from star_jax.llm.losses import init_head
from star_jax.llm.mistral import REMAT_POLICIES, MistralModel, abstract_variables, init_lora
from star_jax.parallel import make_mesh

SECTION = "remat"


def run(layers: int = 8, hidden: int = 256, seq: int = 1024, pairs: int = 4, steps: int = 2) -> dict:
    arch = MistralConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 32,
                         num_key_value_heads=hidden // 64)
    cfg = Config(llm=LLMConfig(arch=arch), lora=LoraConfig(rank=8), llm_train=LLMTrainConfig())
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {
        "member_ids": rng.integers(4, arch.vocab_size, (pairs, seq)).astype(np.int32),
        "member_len": np.full(pairs, seq, np.int32),
        "job_ids": rng.integers(4, arch.vocab_size, (pairs, seq)).astype(np.int32),
        "job_len": np.full(pairs, seq, np.int32),
        "label": (np.arange(pairs) % 2).astype(np.int32),
        "valid": np.ones(pairs, bool),
        "member_key": np.stack([np.arange(pairs), np.zeros(pairs)], 1).astype(np.int32),
        "job_key": np.stack([np.arange(pairs), np.ones(pairs)], 1).astype(np.int32),
    }
    batch = loop.put_batch(batch, mesh, (0, 1))
    init = MistralModel(arch).init
    base = jax.jit(lambda k: nn.unbox(init(k, batch["member_ids"][:1, :1])["params"]))(jax.random.key(0))
    out = {}
    for policy in REMAT_POLICIES:
        model = MistralModel(dataclasses.replace(arch, remat=policy), cfg.lora)
        params = {"adapters": {"shared": init_lora(jax.random.key(1), arch, cfg.lora, mesh=mesh)},
                  "head": loop.gather(init_head(cfg.llm_train), mesh)}
        tx, schedule = loop.make_optimizer(
            lr=1e-3, warmup_steps=1, steps=100, weight_decay=0.0, clip_norm=1.0
        )
        state = loop.init_state(params, tx, 0, mesh)
        loss = build_biencoder(cfg.llm, cfg.lora, cfg.llm_train, arch=model.config).loss
        step = loop.make_train_step(loss, tx, schedule, 1, mesh, state)
        t0 = time.perf_counter()
        compiled = step.lower(state, base, batch).compile()
        compile_s = time.perf_counter() - t0
        stats = compiled.memory_analysis()
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            state, metrics = compiled(state, base, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        out[policy] = {"peak_bytes": loop.peak_bytes(compiled), "temp_bytes": int(stats.temp_size_in_bytes),
                       "step_s": statistics.median(times[1:]), "compile_s": compile_s}
        print(policy, out[policy], flush=True)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_variables(arch)["params"]))
    return {"arch": arch, "pairs": pairs, "seq": seq, "params": n_params, "policies": out}


def table(result: dict) -> str:
    arch, policies = result["arch"], result["policies"]
    m = machine_info()
    none = policies["none"]
    lines = [
        "## Remat policies: memory vs recomputation (bi-encoder training step)",
        "",
        f"`python -m benchmarks.bench_remat`: the `train-llm` step (both towers through one pass, "
        f"shared LoRA r=8 on every projection, BCE + semi-hard triplet, AdamW) on "
        f"{result['pairs']} member/job pairs of {result['seq']} tokens each, fp32, one device. Model: "
        f"{arch.num_hidden_layers} layers, hidden {arch.hidden_size}, MLP {arch.intermediate_size}, "
        f"{arch.num_attention_heads} heads / {arch.num_key_value_heads} KV heads, vocab {arch.vocab_size} "
        f"({result['params'] / 1e6:.1f}M parameters). Peak = arguments + outputs + temporaries - "
        "donated aliases, from the compiled step's `memory_analysis()`; step time is the median of "
        "timed steps after a warm-up. Remat trades memory for recomputation: `full` reruns each "
        "layer's forward pass in the backward pass (about a third more FLOPs), `save_projections` "
        "keeps the projection outputs and reruns only norms, RoPE, the attention core and elementwise "
        "ops. On a CPU, where the step is bound by memory traffic, the smaller working set can also "
        "make the step faster; on a GPU expect the FLOP cost instead.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, shared with other work "
        f"(1-minute load average {m['load_avg_1m']} at the end); Python {m['python']}, "
        f"jax {importlib.metadata.version('jax')}, jaxlib {importlib.metadata.version('jaxlib')}, "
        f"backend {jax.default_backend()}.",
        "",
        "| `llm.arch.remat` | peak MB | temporaries MB | peak vs none | step s | step vs none |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in policies.items():
        lines.append(
            f"| `{name}` | {p['peak_bytes'] / 1e6:,.1f} | {p['temp_bytes'] / 1e6:,.1f} | "
            f"{p['peak_bytes'] / none['peak_bytes']:.2f}x | {p['step_s']:.2f} | "
            f"{p['step_s'] / none['step_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args()
    text = table(run(args.layers, args.hidden, args.seq, args.pairs, args.steps))
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)
        print("\nwritten to docs/benchmarks.md")


if __name__ == "__main__":
    main()
