"""Bi-encoder LoRA train step and embedding inference on the CPU: star_jax vs transformers + PEFT.

    python -m benchmarks.bench_llm [--configs tiny small] [--no-docs]

Both sides run the same workload on the same random weights' shapes:

- train: the `train-llm` step (star_jax/llm/train.py: both towers through one pass over the
  shared base with one shared adapter, last-token pooling, 0.25 x BCE on the scaled cosine +
  semi-hard triplet, global-norm clipping, AdamW on the adapters and the logit head) against
  transformers' `MistralModel` (SDPA attention) + PEFT LoRA with the same targets, rank and
  alpha, the same loss written in torch, `clip_grad_norm_` and `torch.optim.AdamW`. Remat is
  matched: `llm.arch.remat=full` against `gradient_checkpointing_enable(use_reentrant=False)`,
  `none` against no checkpointing;
- embed: the tower forward pass (`biencoder.encode`, jitted, as `star-jax embed` runs it) against
  the PEFT model's forward under `torch.inference_mode()`, both with the unmerged adapter.

All sequences are full length, fp32. Each (framework, config, mode, remat) runs in its own process
(`common.run_worker`) with all cores: one warm-up step, then the median of the timed steps.
Memory: the process's peak RSS over the warm-up and timed steps minus its RSS before them (both
sides, from the same sampler), and for star_jax also XLA's compiled estimate (`loop.peak_bytes`).
"""

from __future__ import annotations

import argparse
import json
import math
import time

from benchmarks.common import machine_info, machine_line, ratio, run_worker, time_steps, write_section

SECTION = "llm"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")

# Model shapes, pairs per train step, sequences per embedding batch, sequence length.
CONFIGS = {
    # The demo's tiny base (MistralConfig defaults) at its tower length and train batch.
    "tiny": dict(arch=dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2),
                 seq=256, pairs=16, embed_batch=64, steps=3, remat=("none",)),
    # Hidden 1024, 8 layers, GQA 16/4 heads and Mistral's MLP ratio (3.5): 109M matmul parameters.
    "small": dict(arch=dict(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                            num_attention_heads=16, num_key_value_heads=4),
                  seq=512, pairs=2, embed_batch=4, steps=2, remat=("none", "full")),
}
RANK, ALPHA = 8, 16.0
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
HF_TARGETS = [f"{t}_proj" for t in TARGETS]
LR, CLIP = 1e-3, 1.0
REMATS = ("none", "full")


def flops_per_token(arch: dict, seq: int, train: bool) -> float:
    """Matmul FLOPs per token (docs/benchmarks.md): 2N forward (+ 2N input-gradient backward when
    training; the frozen base needs no weight gradients) + causal attention 2·S·d per layer forward
    (x3 with its backward). Remat recomputation and the rank-8 adapters (<1%) are not counted."""
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = h * arch["num_key_value_heads"] // arch["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    return (4.0 if train else 2.0) * n + (6.0 if train else 2.0) * seq * h * layers


def _batch(rng, cfg: dict):
    """Token ids, full lengths, labels and the in-batch id keys of `pairs` member/job pairs."""
    import numpy as np

    pairs, seq, vocab = cfg["pairs"], cfg["seq"], cfg["arch"]["vocab_size"]
    return {
        "member_ids": rng.integers(4, vocab, (pairs, seq)).astype(np.int32),
        "member_len": np.full(pairs, seq, np.int32),
        "job_ids": rng.integers(4, vocab, (pairs, seq)).astype(np.int32),
        "job_len": np.full(pairs, seq, np.int32),
        "label": (np.arange(pairs) % 2 == 0).astype(np.int32),
        "valid": np.ones(pairs, bool),
        "member_key": np.stack([np.arange(pairs) // 2, np.zeros(pairs)], 1).astype(np.int32),
        "job_key": np.stack([np.arange(pairs), np.zeros(pairs)], 1).astype(np.int32),
    }


def _embed_ids(cfg: dict):
    import numpy as np

    shape = (cfg["embed_batch"], cfg["seq"])
    return np.random.default_rng(1).integers(4, cfg["arch"]["vocab_size"], shape).astype(np.int32)


# -- star_jax ------------------------------------------------------------------------------------


def jax_worker(config: str, mode: str, remat: str, steps: int) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from star_jax import train_loop as loop
    from star_jax.config import Config, LLMConfig, LLMTrainConfig, LoraConfig, MeshConfig, MistralConfig
    from star_jax.llm.biencoder import MEMBER, build_biencoder, encode
    from star_jax.llm.losses import init_head
    from star_jax.llm.mistral import MistralModel, init_lora
    from star_jax.parallel import make_mesh

    spec = CONFIGS[config]
    arch = MistralConfig(**spec["arch"], remat=remat)
    lora_cfg = LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS)
    # E5's last-token pooling, as the torch side pools (not the demo's default mean).
    cfg = Config(llm=LLMConfig(arch=arch, pooling="last_token"), lora=lora_cfg, llm_train=LLMTrainConfig())
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    model = MistralModel(arch, lora_cfg)
    base = jax.jit(lambda k: nn.unbox(MistralModel(arch).init(k, jnp.zeros((1, 8), jnp.int32))["params"]))(
        jax.random.key(0))
    adapters = {"shared": init_lora(jax.random.key(1), arch, lora_cfg, mesh=mesh)}
    batch = _batch(np.random.default_rng(0), spec)
    row: dict = {}
    if mode == "train":
        params = {"adapters": adapters, "head": loop.gather(init_head(cfg.llm_train), mesh)}
        tx, schedule = loop.make_optimizer(lr=LR, warmup_steps=0, steps=100, weight_decay=0.0, clip_norm=CLIP)
        state = loop.init_state(params, tx, 0, mesh)
        loss = build_biencoder(cfg.llm, cfg.lora, cfg.llm_train, arch=model.config).loss
        step = loop.make_train_step(loss, tx, schedule, 1, mesh, state)
        batch = loop.put_batch(batch, mesh, (0, 1))
        t0 = time.perf_counter()
        compiled = step.lower(state, base, batch).compile()
        row["compile_s"] = time.perf_counter() - t0
        row["xla_peak_bytes"] = loop.peak_bytes(compiled)
        box = [state]

        def run():
            box[0], metrics = compiled(box[0], base, batch)
            row["loss"] = float(metrics["loss"])

        tokens = 2 * spec["pairs"] * spec["seq"]
    else:
        ids = jnp.asarray(_embed_ids(spec), jnp.int32)
        lengths = jnp.full((ids.shape[0],), spec["seq"], jnp.int32)
        fn = jax.jit(lambda lora, base, ids, lengths: encode(model, base, lora, MEMBER, ids, lengths,
                                                             pooling=cfg.llm.pooling))
        t0 = time.perf_counter()
        compiled = fn.lower(adapters, base, ids, lengths).compile()
        row["compile_s"] = time.perf_counter() - t0
        row["xla_peak_bytes"] = loop.peak_bytes(compiled)

        def run():
            compiled(adapters, base, ids, lengths).block_until_ready()

        tokens = ids.shape[0] * spec["seq"]
    row.update(time_steps(run, steps))
    row["tokens"] = tokens
    return row


# -- transformers + PEFT ---------------------------------------------------------------------------


def torch_loss(member, job, head: dict, batch: dict, bce_weight: float, margin: float):
    """biencoder.biencoder_losses (BCE + semi-hard triplet) in torch, for unit-norm [B, H] inputs."""
    import torch
    import torch.nn.functional as F

    label, valid = batch["label"].float(), batch["valid"]
    logits = head["log_scale"].exp() * (member * job).sum(-1) + head["bias"]
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    bce = torch.where(valid, bce, 0.0).sum() / valid.sum().clamp(min=1)

    same_m = (batch["member_key"][:, None] == batch["member_key"][None]).all(-1)
    same_j = (batch["job_key"][:, None] == batch["job_key"][None]).all(-1)
    positive = (batch["label"] > 0) & valid
    excluded = ((same_m & positive[None]).float() @ same_j.float()) > 0
    negatives = valid[None] & ~excluded
    d = 2.0 - 2.0 * member @ job.T
    d_ap = d.diagonal()
    sel = d.detach()
    semihard = negatives & (sel > d_ap[:, None]) & (sel < d_ap[:, None] + margin)
    inf = torch.tensor(math.inf)
    choice = torch.where(semihard.any(1), torch.where(semihard, sel, inf).argmin(1),
                         torch.where(negatives, sel, inf).argmin(1))
    d_an = d.gather(1, choice[:, None])[:, 0]
    per_anchor = torch.relu(d_ap - d_an + margin)
    anchors = positive & negatives.any(1)
    triplet = torch.where(anchors, per_anchor, 0.0).sum() / anchors.sum().clamp(min=1)
    return bce_weight * bce + triplet


def torch_worker(config: str, mode: str, remat: str, steps: int) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import MistralConfig as HFConfig
    from transformers import MistralModel as HFModel

    from star_jax.config import LLMTrainConfig

    torch.set_num_threads(torch.get_num_threads())  # all cores (torch's default), stated for clarity
    spec = CONFIGS[config]
    torch.manual_seed(0)
    hf = HFConfig(**spec["arch"], max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                  sliding_window=None, attn_implementation="sdpa")
    model = get_peft_model(HFModel(hf), PeftLoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=HF_TARGETS))
    model.config.use_cache = False
    base = model.base_model.model
    batch = {k: torch.from_numpy(v).long() if v.dtype != bool else torch.from_numpy(v)
             for k, v in _batch(np.random.default_rng(0), spec).items()}
    row: dict = {}
    if mode == "train":
        tcfg = LLMTrainConfig()
        if remat == "full":
            base.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        head = {"log_scale": torch.tensor(math.log(tcfg.init_logit_scale), requires_grad=True),
                "bias": torch.tensor(tcfg.init_logit_bias, requires_grad=True)}
        trainable = [p for p in model.parameters() if p.requires_grad] + list(head.values())
        opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
        pairs, seq = spec["pairs"], spec["seq"]
        # Both towers in one pass, rows interleaved (member i, job i), as encode_towers does.
        ids = torch.stack([batch["member_ids"], batch["job_ids"]], 1).reshape(2 * pairs, seq)
        lengths = torch.stack([batch["member_len"], batch["job_len"]], 1).reshape(2 * pairs)
        mask = (torch.arange(seq)[None] < lengths[:, None]).long()

        def run():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = hidden[torch.arange(2 * pairs), lengths - 1]
            pooled = torch.nn.functional.normalize(pooled, dim=-1).reshape(pairs, 2, -1)
            loss = torch_loss(pooled[:, 0], pooled[:, 1], head, batch, tcfg.bce_weight, tcfg.triplet_margin)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            row["loss"] = loss.item()

        tokens = 2 * pairs * seq
    else:
        model.eval()
        n, seq = spec["embed_batch"], spec["seq"]
        ids = torch.from_numpy(_embed_ids(spec)).long()
        lengths = torch.full((n,), seq)
        mask = torch.ones(n, seq, dtype=torch.long)

        def run():
            with torch.inference_mode():
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                torch.nn.functional.normalize(hidden[torch.arange(n), lengths - 1], dim=-1)

        tokens = n * seq
    row.update(time_steps(run, steps))
    row["tokens"] = tokens
    row["threads"] = torch.get_num_threads()
    return row


# -- orchestration ---------------------------------------------------------------------------------


def run(configs: list[str], steps: int | None = None) -> dict:
    """Every measurement, each in its own process; returns the rows and the markdown table."""
    rows = []
    for config in configs:
        for mode, remats in (("train", CONFIGS[config]["remat"]), ("embed", ("none",))):
            for remat in remats:
                for framework in ("star_jax", "torch"):
                    args = ["--worker", framework, "--config", config, "--mode", mode, "--remat", remat,
                            "--steps", str(steps or CONFIGS[config]["steps"])]
                    t0 = time.perf_counter()
                    r = run_worker("benchmarks.bench_llm", args)
                    r.update(framework=framework, config=config, mode=mode, remat=remat,
                             wall_s=time.perf_counter() - t0)
                    r["tokens_per_s"] = r["tokens"] / r["step_s"]
                    spec = CONFIGS[config]
                    flops = flops_per_token(spec["arch"], spec["seq"], mode == "train")
                    r["gflops"] = r["tokens_per_s"] * flops / 1e9
                    print(json.dumps({k: v for k, v in r.items() if k != "steps_s"}), flush=True)
                    rows.append(r)
    specs = {c: {**CONFIGS[c], "steps": steps or CONFIGS[c]["steps"]} for c in configs}
    return {"configs": specs, "rows": rows, "machine": machine_info(PACKAGES)}


def table(result: dict) -> str:
    rows = result["rows"]
    find = {(r["framework"], r["config"], r["mode"], r["remat"]): r for r in rows}
    lines = [
        "## Bi-encoder LoRA train step and embedding inference on the CPU (star_jax vs transformers + PEFT)",
        "",
        "`python -m benchmarks.bench_llm`, fp32, random weights, every sequence full length. **train**: the "
        "`train-llm` step (member and job towers in one pass over the frozen base with one shared LoRA "
        f"adapter, r={RANK}, alpha={ALPHA:g}, on q,k,v,o,gate,up,down; last-token pooling; 0.25 x BCE + "
        "semi-hard triplet; global-norm clip; AdamW on the adapters and the logit head) against "
        "transformers `MistralModel` (SDPA) + PEFT with the same targets, rank, loss and optimizer. Remat "
        "`full` = `gradient_checkpointing_enable(use_reentrant=False)` on the torch side. **embed**: one "
        "tower's forward pass with the unmerged adapter, pooled and normalised, under `jax.jit` vs "
        "`torch.inference_mode()`. Each row is its own process using all cores: one warm-up step, then "
        "the median of the timed steps. tokens/s counts every token of both towers. GFLOP/s counts useful "
        "matmul FLOPs (4N + 6·S·d·L per token when training, 2N + 2·S·d·L for inference, "
        "N = matmul parameters; remat recomputation not counted). Memory: peak RSS over the warm-up and "
        "timed steps minus RSS before them, same sampler on both sides; XLA: the compiled step's own "
        "estimate (arguments + outputs + temporaries − donated).",
        "",
    ]
    for config, spec in result["configs"].items():
        a = spec["arch"]
        n = a["num_hidden_layers"] * (2 * a["hidden_size"] ** 2 + 2 * a["hidden_size"] * a["hidden_size"]
                                      * a["num_key_value_heads"] // a["num_attention_heads"]
                                      + 3 * a["hidden_size"] * a["intermediate_size"])
        lines.append(
            f"- **{config}**: hidden {a['hidden_size']}, {a['num_hidden_layers']} layers, MLP "
            f"{a['intermediate_size']}, {a['num_attention_heads']}/{a['num_key_value_heads']} heads, vocab "
            f"{a['vocab_size']} ({n / 1e6:.1f}M matmul parameters); sequence {spec['seq']}; train "
            f"{spec['pairs']} pairs = {2 * spec['pairs']} sequences per step, remat "
            f"{' and '.join(spec['remat'])}; embed {spec['embed_batch']} sequences per batch; "
            f"{spec['steps']} timed steps."
        )
    lines += [
        "",
        machine_line(result["machine"], PACKAGES),
        "",
        "| config | step | remat | star_jax tokens/s | torch tokens/s | **ratio** | star_jax GFLOP/s | "
        "torch GFLOP/s | star_jax step s | torch step s | star_jax memory MB (XLA est.) | torch memory MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config in result["configs"]:
        for mode, remats in (("train", CONFIGS[config]["remat"]), ("embed", ("none",))):
            for remat in remats:
                ours = find.get(("star_jax", config, mode, remat))
                theirs = find.get(("torch", config, mode, remat))
                if ours is None or theirs is None:
                    continue
                mb = lambda r: (r["rss_peak"] - r["rss_start"]) / 1e6
                lines.append(
                    f"| {config} | {mode} | {remat if mode == 'train' else '—'} | "
                    f"{ours['tokens_per_s']:,.0f} | {theirs['tokens_per_s']:,.0f} | "
                    f"**{ratio(ours['tokens_per_s'], theirs['tokens_per_s'])}** | "
                    f"{ours['gflops']:,.0f} | {theirs['gflops']:,.0f} | {ours['step_s']:.3f} | "
                    f"{theirs['step_s']:.3f} | {mb(ours):,.0f} ({ours['xla_peak_bytes'] / 1e6:,.0f}) | "
                    f"{mb(theirs):,.0f} |"
                )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    p.add_argument("--worker", choices=["star_jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["train", "embed"], help=argparse.SUPPRESS)
    p.add_argument("--remat", choices=REMATS, default="none", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: per config)")
    args = p.parse_args()
    if args.worker:
        fn = jax_worker if args.worker == "star_jax" else torch_worker
        print(json.dumps(fn(args.config, args.mode, args.remat, args.steps or CONFIGS[args.config]["steps"])))
        return
    result = run(args.configs, args.steps)
    text = table(result)
    print(text)
    if not args.no_docs:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
