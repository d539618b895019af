"""LoRA layer maths with HF PEFT's semantics (`peft/tuners/lora/layer.py`, `init_lora_weights=True`).

`delta(x) = lora_B(lora_A(dropout(x))) * alpha / r`, the dropout on the adapter's input only;
A ~ U(-1/sqrt(in), 1/sqrt(in)) (torch's `kaiming_uniform_(a=sqrt(5))`), B = 0, so a fresh adapter
leaves the base unchanged. A is stored `[in, r]` and B `[r, out]` (PEFT's weights transposed),
stacked over the layer axis, in the `lora` collection: `adapters['layers']['self_attn']['q_proj']
['lora_A']` is `[layers, hidden, r]`. PEFT's `modules_to_save` (`lora.modules_to_save`) are full
trained copies of base modules, kept beside the LoRA weights in the same tree (`adapters
['embed_tokens']['embedding']`) and run in place of the base's. `lora_linear`: a projection plus
its adapter, with its own backward pass. Fresh adapters: `mistral.init_lora`; PEFT files: `peft_io`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from star_jax.config import LoraConfig

COLLECTION = "lora"
# Our target names -> HF module names (the keys of PEFT's `target_modules`).
TARGET_MODULES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
# Base modules an adapter may carry a full trained copy of (PEFT's `modules_to_save`).
SAVED_MODULES = ("embed_tokens",)


def scaling(cfg: LoraConfig) -> float:
    """PEFT's `lora_alpha / r` (no rsLoRA)."""
    return cfg.alpha / cfg.rank


def lora_for(cfg: LoraConfig | None, module_name: str) -> LoraConfig | None:
    """`cfg` if the projection `module_name` (e.g. 'q_proj') is one of its targets, else None."""
    if cfg is None or module_name not in {TARGET_MODULES[t] for t in cfg.targets if t in TARGET_MODULES}:
        return None
    return cfg


def init_lora_a(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """A `[..., in, r]` ~ U(-1/sqrt(in), 1/sqrt(in)): torch's `kaiming_uniform_(a=sqrt(5))` on PEFT's
    `[r, in]` weight, whose bound is gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2))."""
    bound = 1.0 / math.sqrt(shape[-2])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


_INITIALIZERS = {"lora_A": init_lora_a, "lora_B": nn.initializers.zeros}


def lora_weights(module: nn.Module, x: jax.Array, features: int, axes: tuple[str, str], cfg: LoraConfig):
    """`(lora_A [in, r], lora_B [r, out])`, fp32, for the input `x` of `module`'s projection.

    Called from inside `module`'s compact `__call__`: declares both in `module`'s `lora` collection,
    with logical axes (in, `lora_rank`) and (`lora_rank`, out). PEFT upcasts the adapter input to
    fp32; `lora_linear` stays in the compute dtype (the same in fp32, cheaper in bf16).
    """
    shapes = {"lora_A": (x.shape[-1], cfg.rank), "lora_B": (cfg.rank, features)}
    names = {"lora_A": (axes[0], "lora_rank"), "lora_B": ("lora_rank", axes[1])}

    def variable(name: str) -> jax.Array:
        init = nn.with_logical_partitioning(_INITIALIZERS[name], names[name])
        return module.variable(
            COLLECTION, name, lambda: init(module.make_rng("params"), shapes[name], jnp.float32)
        ).value

    return variable("lora_A"), variable("lora_B")


def lora_linear(
    x: jax.Array,
    kernel: jax.Array,
    a: jax.Array,
    b: jax.Array,
    scale: float,
    adapter_in: jax.Array | None = None,
) -> jax.Array:
    """`x @ kernel + scale * adapter_in @ a @ b` (adapter_in: x after the adapter's dropout; None: x).

    The same values as autodiff, with a hand-written backward pass (`_lora_linear_bwd`).
    """
    dtype = x.dtype
    a, b = a.astype(dtype), b.astype(dtype)
    if adapter_in is None:
        return _lora_linear(x, kernel, a, b, scale)
    return _lora_linear_dropout(x, adapter_in, kernel, a, b, scale)


def _forward(x, adapter_in, kernel, a, b, scale):
    xa = jnp.dot(adapter_in, a)
    return jnp.dot(x, kernel) + (jnp.dot(xa, b) * scale).astype(x.dtype), xa


def _backward(x, adapter_in, xa, kernel, a, b, scale, kernel_grad, g):
    # XLA's CPU layouts for autodiff's `dB = xa^T g` transpose all of g (a [tokens, out] copy per
    # projection, about a fifth of the step); `(g^T xa)^T` reads g as it lies (docs/benchmarks.md).
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    g2, xa2 = flat(g), flat(xa)
    gb = jnp.dot(g, b.T) * scale  # [..., r]
    db = jax.lax.dot_general(g2, xa2, (((0,), (0,)), ((), ()))).T * scale
    da = jax.lax.dot_general(flat(adapter_in), flat(gb), (((0,), (0,)), ((), ())))
    dx = jnp.dot(g, kernel.T)
    d_adapter = jnp.dot(gb, a.T)
    dk = None
    if kernel_grad:  # only when the caller differentiates the base kernel too
        dk = jax.lax.dot_general(flat(x), g2, (((0,), (0,)), ((), ()))).astype(kernel.dtype)
    return dx, d_adapter, dk, da.astype(a.dtype), db.astype(b.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lora_linear(x, kernel, a, b, scale):
    return _forward(x, x, kernel, a, b, scale)[0]


def _lora_linear_fwd(x, kernel, a, b, scale):
    y, xa = _forward(x.value, x.value, kernel.value, a.value, b.value, scale)
    # The residuals' pytree structure records whether the kernel needs a gradient (None: frozen).
    return y, (x.value, xa, kernel.value, a.value, b.value, () if kernel.perturbed else None)


def _lora_linear_bwd(scale, res, g):
    x, xa, kernel, a, b, kernel_grad = res
    dx, d_adapter, dk, da, db = _backward(x, x, xa, kernel, a, b, scale, kernel_grad is not None, g)
    return dx + d_adapter, dk, da, db


_lora_linear.defvjp(_lora_linear_fwd, _lora_linear_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lora_linear_dropout(x, adapter_in, kernel, a, b, scale):
    return _forward(x, adapter_in, kernel, a, b, scale)[0]


def _lora_linear_dropout_fwd(x, adapter_in, kernel, a, b, scale):
    y, xa = _forward(x.value, adapter_in.value, kernel.value, a.value, b.value, scale)
    res = (x.value, adapter_in.value, xa, kernel.value, a.value, b.value, () if kernel.perturbed else None)
    return y, res


def _lora_linear_dropout_bwd(scale, res, g):
    x, adapter_in, xa, kernel, a, b, kernel_grad = res
    dx, d_adapter, dk, da, db = _backward(x, adapter_in, xa, kernel, a, b, scale, kernel_grad is not None, g)
    return dx, d_adapter, dk, da, db


_lora_linear_dropout.defvjp(_lora_linear_dropout_fwd, _lora_linear_dropout_bwd, symbolic_zeros=True)


def split_saved(adapters: dict) -> tuple[dict, dict]:
    """`(LoRA weights, saved modules)` of one adapter tree: the saved ones are `{name: base-like params}`."""
    saved = {k: v for k, v in adapters.items() if k in SAVED_MODULES}
    return {k: v for k, v in adapters.items() if k not in SAVED_MODULES}, saved


def with_saved(base: dict, adapters: dict) -> tuple[dict, dict]:
    """`(base params with the adapter's saved modules in place of their own, the LoRA weights)`."""
    lora, saved = split_saved(adapters)
    return ({**base, **saved} if saved else base), lora


def adapter_modules(adapters: dict) -> dict[tuple[str, ...], dict[str, jax.Array]]:
    """{module path, e.g. ('layers', 'self_attn', 'q_proj'): {'lora_A': .., 'lora_B': ..}}; saved
    modules are not among them (`split_saved`)."""
    modules: dict[tuple[str, ...], dict[str, jax.Array]] = {}
    for path, leaf in traverse_util.flatten_dict(split_saved(adapters)[0]).items():
        modules.setdefault(path[:-1], {})[path[-1]] = leaf
    return modules


def merge_lora(base: dict, adapters: dict, lora_cfg: LoraConfig) -> dict:
    """Base params with every adapter folded in, `W + (alpha/r) A B` (PEFT's `merge_and_unload`).

    The result runs in `MistralModel(cfg)` without LoRA and gives the same output as base +
    adapters (without dropout); saved modules replace the base's. Pure, jit-able; kernels keep their dtype.
    """
    merged, adapters = with_saved(base, adapters)
    base = {k: jax.tree.map(lambda new, old: new.astype(old.dtype), v, base[k]) for k, v in merged.items()}
    flat = traverse_util.flatten_dict(base)
    for path, ab in adapter_modules(adapters).items():
        kernel = flat[(*path, "kernel")]
        delta = jnp.einsum(
            "...ir,...ro->...io", ab["lora_A"].astype(jnp.float32), ab["lora_B"].astype(jnp.float32)
        )
        flat[(*path, "kernel")] = (kernel.astype(jnp.float32) + scaling(lora_cfg) * delta).astype(
            kernel.dtype
        )
    return traverse_util.unflatten_dict(flat)
