"""7B-shaped bi-encoder LoRA train step on one GPU: star_jax (cuDNN attention) vs transformers + PEFT.

Run through `launch/bench_gpu.sh`, which calls this module once per framework (separate
processes, so neither allocator sees the other's memory) and then `--report` to merge the JSON
files into a markdown table. `--tiny` runs the same code path at toy shapes on the CPU.

The workload is the bi-encoder step of STAR's first stage: random bf16 Mistral-7B weights, LoRA
r16 on q,k,v,o,gate,up,down, AdamW on the adapters, last-token pooling and an in-batch InfoNCE
loss between the two halves of the batch (member rows vs job rows), all sequences full length.

Useful FLOPs per token (docs/benchmarks.md): 4·N + 6·S·d·L. The frozen base needs a forward
(2N) and an input-gradient backward (2N) but no weight-gradient GEMMs; causal attention costs
2·S·d per layer forward and twice that backward. Remat recomputation and the adapters' own
matmuls (<1% at r16) are not counted, so MFU is the fraction of peak spent on useful work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shapes(tiny: bool) -> dict:
    if tiny:
        return dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768)


def workloads(tiny: bool, spec: list[str] | None = None) -> list[tuple[int, int]]:
    """(sequence length, batch): by default about 8k tokens per step at each length."""
    if spec:
        return [tuple(int(v) for v in item.split("x")) for item in spec]
    return [(96, 2), (64, 4)] if tiny else [(1800, 4), (1024, 8)]


def flops_per_token(arch: dict, seq: int) -> float:
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = h * arch["num_key_value_heads"] // arch["num_attention_heads"]
    n_matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    return 4.0 * n_matmul + 6.0 * seq * h * layers


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def run_jax(args: argparse.Namespace) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import optax

    from star_jax.config import LoraConfig, MistralConfig
    from star_jax.llm import MistralModel, init_lora

    arch = shapes(args.tiny)
    dev = jax.devices()[0]
    attention = None if args.tiny else "cudnn"
    base_cfg = MistralConfig(**arch, dtype="bfloat16", param_dtype="bfloat16", attention=attention)
    lora_cfg = LoraConfig(rank=16, alpha=32.0, targets=TARGETS)
    model = MistralModel(base_cfg)
    base = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"])(jax.random.key(0))
    base = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, base,
                        is_leaf=lambda x: hasattr(x, "unbox"))
    rows = []
    for seq, batch in workloads(args.tiny, args.workloads):
        for remat in args.remat:
            cfg = MistralConfig(**{**base_cfg.__dict__, "remat": remat})
            m = MistralModel(cfg, lora_cfg)
            adapters = init_lora(jax.random.key(1), cfg, lora_cfg)
            opt = optax.adamw(1e-4)
            opt_state = opt.init(adapters)
            ids = jax.random.randint(jax.random.key(2), (batch, seq), 3, arch["vocab_size"])

            def loss_fn(adapters, base, ids, m=m, batch=batch):
                hidden = m.apply({"params": base, "lora": adapters}, ids)
                pooled = hidden[:, -1].astype(jnp.float32)  # full-length rows: the last token
                pooled = pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)
                member, job = pooled[: batch // 2], pooled[batch // 2:]
                logits = member @ job.T / 0.05
                return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(batch // 2)).mean()

            def step(adapters, opt_state, base, ids, loss_fn=loss_fn, opt=opt):
                loss, grads = jax.value_and_grad(loss_fn)(adapters, base, ids)
                updates, opt_state = opt.update(grads, opt_state, adapters)
                return optax.apply_updates(adapters, updates), opt_state, loss

            row = {"framework": "star_jax", "seq": seq, "batch": batch, "remat": remat}
            try:
                lowered = jax.jit(step, donate_argnums=(0, 1)).lower(adapters, opt_state, base, ids)
                compiled = lowered.compile()
                mem = compiled.memory_analysis()
                if mem is not None:  # XLA's own peak estimate for this step: buffers live at once
                    row["compiled_peak_gib"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**30
                for _ in range(args.warmup):
                    adapters, opt_state, loss = compiled(adapters, opt_state, base, ids)
                loss.block_until_ready()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    adapters, opt_state, loss = compiled(adapters, opt_state, base, ids)
                loss.block_until_ready()
                row["step_s"] = (time.perf_counter() - t0) / args.steps
                row["loss"] = float(loss)
            except Exception as e:  # an OOM at one setting should not lose the others
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            stats = dev.memory_stats() or {}
            row["process_peak_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_torch(args: argparse.Namespace) -> list[dict]:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import MistralConfig as HFConfig
    from transformers import MistralModel as HFModel

    arch = shapes(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build the 7B weights directly in bf16 on the device
    with torch.device(device):
        model = HFModel(HFConfig(**arch, attn_implementation="sdpa"))
    torch.set_default_dtype(torch.float32)
    model = get_peft_model(model, PeftLoraConfig(r=16, lora_alpha=32, target_modules=HF_TARGETS))
    model.config.use_cache = False
    rows = []
    for seq, batch in workloads(args.tiny, args.workloads):
        for remat in args.remat:
            if remat == "save_projections":
                continue  # HF offers all-or-nothing gradient checkpointing
            if remat == "full":
                model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
            else:
                model.base_model.model.gradient_checkpointing_disable()
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            ids = torch.randint(3, arch["vocab_size"], (batch, seq), device=device)
            labels = torch.arange(batch // 2, device=device)
            row = {"framework": "transformers+peft", "seq": seq, "batch": batch, "remat": remat}

            def step(ids=ids, labels=labels, batch=batch, opt=opt):
                hidden = model(input_ids=ids).last_hidden_state
                pooled = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)
                logits = pooled[: batch // 2] @ pooled[batch // 2:].T / 0.05
                loss = torch.nn.functional.cross_entropy(logits, labels)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            try:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(args.warmup + 1):
                    loss = step()
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    loss = step()
                if device == "cuda":
                    torch.cuda.synchronize()
                row["step_s"] = (time.perf_counter() - t0) / args.steps
                row["loss"] = float(loss)
                if device == "cuda":
                    row["process_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def device_name(framework: str) -> str:
    if framework == "jax":
        import jax

        return jax.devices()[0].device_kind
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def report(out_dir: Path, tiny: bool) -> str:
    """Merge `jax.json` and `torch.json` into a markdown table with tokens/s, MFU and memory."""
    arch = shapes(tiny)
    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json")) if p.stem in ("jax", "torch")]
    lines = [
        "| framework | seq | batch | remat | step (s) | tokens/s | MFU | peak memory (GiB)¹ |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    devices = set()
    for run in runs:
        devices.add(run["device"])
        peak = peak_tflops(run["device"])
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {r['framework']} | {r['seq']} | {r['batch']} | {r['remat']} | "
                             f"{r['error'][:60]} | | | |")
                continue
            tok_s = r["batch"] * r["seq"] / r["step_s"]
            mfu = f"{tok_s * flops_per_token(arch, r['seq']) / (peak * 1e12):.1%}" if peak else "n/a"
            mem = r.get("compiled_peak_gib", r.get("process_peak_gib"))
            mem = "" if mem is None else f"{mem:.1f}"
            lines.append(f"| {r['framework']} | {r['seq']} | {r['batch']} | {r['remat']} | "
                         f"{r['step_s']:.3f} | {tok_s:,.0f} | {mfu} | {mem} |")
    head = f"Device: {', '.join(sorted(devices))}. Shapes: {'toy (--tiny)' if tiny else 'Mistral-7B'}.\n\n"
    foot = ("\n¹ star_jax: XLA's compiled estimate (arguments + outputs − donated + temporaries); "
            "transformers: `torch.cuda.max_memory_allocated()` over the step.\n")
    return head + "\n".join(lines) + "\n" + foot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=["jax", "torch"])
    p.add_argument("--report", type=Path, help="merge the JSON files in this directory")
    p.add_argument("--out", type=Path, help="JSON output file")
    p.add_argument("--tiny", action="store_true", help="toy shapes on the CPU, same code path")
    p.add_argument("--remat", nargs="+", default=["save_projections", "full", "none"])
    p.add_argument("--workloads", nargs="+", metavar="SEQxBATCH", help="e.g. 1800x2 1024x4")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    if args.report:
        table = report(args.report, args.tiny)
        (args.report / "table.md").write_text(table)
        print(table)
        return
    t0 = time.time()
    rows = run_jax(args) if args.framework == "jax" else run_torch(args)
    result = {"device": device_name(args.framework), "rows": rows, "seconds": time.time() - t0,
              "versions": _versions(args.framework)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def _versions(framework: str) -> dict:
    from importlib.metadata import version

    names = ["jax", "jaxlib", "flax", "optax"] if framework == "jax" else ["torch", "transformers", "peft"]
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:
            out[n] = "?"
    out["python"] = platform.python_version()
    out["host"] = os.uname().machine
    return out


if __name__ == "__main__":
    main()
