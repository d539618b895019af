"""One layer's attention core on the CPU: `xla` vs `chunked` (star_jax.llm.mistral) vs torch SDPA.

    python -m benchmarks.bench_attention [--batch 8] [--seq 512] [--steps 3] [--no-torch]

The small config's shape (docs/benchmarks.md): q `[B, T, 16, 64]`, k/v 4 kv heads, causal, fp32,
every row full length (lengths still passed, as the model does). Forward, and forward + backward
(the gradient of a weighted sum of the output with respect to q, k and v), each jitted; one warm-up
call, then the median of `steps` calls. torch runs `scaled_dot_product_attention(is_causal=True,
enable_gqa=True)` in the same process afterwards. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import machine_info, time_steps

HEADS, KV_HEADS, HEAD_DIM = 16, 4, 64


def jax_rows(batch: int, seq: int, steps: int, window: int | None) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from star_jax.llm.mistral import attention_core

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (batch, seq, HEADS, HEAD_DIM), jnp.float32)
    k = jax.random.normal(keys[1], (batch, seq, KV_HEADS, HEAD_DIM), jnp.float32)
    v = jax.random.normal(keys[2], (batch, seq, KV_HEADS, HEAD_DIM), jnp.float32)
    w = jax.random.normal(keys[3], q.shape, jnp.float32)
    lengths = jnp.full((batch,), seq, jnp.int32)
    rows = []
    for impl in ("xla", "chunked"):

        def loss(q, k, v, impl=impl):
            return jnp.sum(attention_core(q, k, v, lengths, window, impl) * w)

        fwd = jax.jit(lambda q, k, v, impl=impl: attention_core(q, k, v, lengths, window, impl))
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        for mode, fn in (("forward", fwd), ("forward+backward", bwd)):
            r = time_steps(lambda fn=fn: jax.block_until_ready(fn(q, k, v)), steps)
            rows.append(dict(impl=impl, mode=mode, step_s=r["step_s"]))
    return rows


def torch_rows(batch: int, seq: int, steps: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    q = torch.randn(batch, HEADS, seq, HEAD_DIM, requires_grad=True)
    k = torch.randn(batch, KV_HEADS, seq, HEAD_DIM, requires_grad=True)
    v = torch.randn(batch, KV_HEADS, seq, HEAD_DIM, requires_grad=True)
    w = torch.randn(batch, HEADS, seq, HEAD_DIM)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def bwd():
        (F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) * w).sum().backward()

    return [
        dict(impl="torch sdpa", mode=mode, step_s=time_steps(fn, steps)["step_s"])
        for mode, fn in (("forward", fwd), ("forward+backward", bwd))
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--window", type=int, help="Mistral sliding window (torch is skipped when set)")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args()
    rows = jax_rows(args.batch, args.seq, args.steps, args.window)
    if not (args.no_torch or args.window):
        rows += torch_rows(args.batch, args.seq, args.steps)
    for r in rows:
        print(json.dumps(r), flush=True)
    print(json.dumps({"machine": machine_info(("jax", "torch"))}))


if __name__ == "__main__":
    main()
