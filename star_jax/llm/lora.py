"""LoRA adapters with HF PEFT's semantics, kept apart from the frozen base.

Follows `peft/tuners/lora/layer.py` (`LoraLayer.update_layer`, `reset_lora_parameters`,
`Linear.forward`), default `init_lora_weights=True`:

- `delta(x) = lora_B(lora_A(dropout(x))) * alpha / r`; the dropout acts on the adapter's input
  only, never on the base projection;
- A ~ U(-1/sqrt(in), 1/sqrt(in)), which is `kaiming_uniform_(a=sqrt(5))` on A's `[r, in]` weight;
- B = 0, so a fresh adapter leaves the base model's output unchanged.

Here A is stored `[in, r]` and B `[r, out]` (PEFT's `lora_A.weight` / `lora_B.weight`
transposed), stacked over the layer axis like every other layer variable, in the `lora`
collection: `adapters['layers']['self_attn']['q_proj']['lora_A']` is `[layers, hidden, r]`.
Deviation: PEFT upcasts the adapter input to the adapter dtype (fp32); we compute the branch in
the model's compute dtype, which is the same in fp32 and cheaper in bf16.

`export_peft` / `import_peft` read and write PEFT's `adapter_model.safetensors` +
`adapter_config.json`, so `peft.PeftModel.from_pretrained(MistralModel, dir)` loads our adapters.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from star_jax.config import LoraConfig, MeshConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, atomic_write_json, read_json
from star_jax.parallel import Rules, logical_rules, logical_shardings

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
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# PEFT wraps the base model as `base_model.model`; a `MistralForCausalLM` base adds its `model.`.
_PEFT_KEY = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$"
)


def check_lora_config(cfg: LoraConfig) -> None:
    bad = [t for t in cfg.targets if t not in TARGET_MODULES]
    if bad:
        raise StarError(
            f"lora.targets: unknown target {bad[0]!r}; expected some of {', '.join(TARGET_MODULES)}"
        )
    if cfg.rank < 1:
        raise StarError(f"lora.rank: must be >= 1, got {cfg.rank}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise StarError(f"lora.dropout: must be in [0, 1), got {cfg.dropout}")


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


def lora_delta(
    module: nn.Module,
    x: jax.Array,
    features: int,
    axes: tuple[str, str],
    cfg: LoraConfig,
    deterministic: bool,
) -> jax.Array:
    """The adapter's contribution `(alpha/r) * dropout(x) @ A @ B`, in x's dtype.

    Called from inside `module`'s compact `__call__`: declares `lora_A` `[in, r]` and `lora_B`
    `[r, out]` (fp32) in `module`'s `lora` collection, with logical axes (in, `lora_rank`) and
    (`lora_rank`, out).
    """
    shapes = {"lora_A": (x.shape[-1], cfg.rank), "lora_B": (cfg.rank, features)}
    names = {"lora_A": (axes[0], "lora_rank"), "lora_B": ("lora_rank", axes[1])}

    def variable(name: str) -> jax.Array:
        init = nn.with_logical_partitioning(_INITIALIZERS[name], names[name])
        return module.variable(
            COLLECTION, name, lambda: init(module.make_rng("params"), shapes[name], jnp.float32)
        ).value

    a, b = variable("lora_A"), variable("lora_B")
    if cfg.dropout > 0.0:
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    return (jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * scaling(cfg)).astype(x.dtype)


def init_lora(
    rng: jax.Array,
    model_cfg: MistralConfig,
    lora_cfg: LoraConfig,
    *,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> dict:
    """Fresh adapters (A random, B zero) for every target of every layer, as a plain fp32 pytree.

    Shapes and logical axes come from the model itself (`abstract_variables`), so nothing but the
    adapters is computed. With a mesh they are created in their logical sharding under `rules`
    (default: the config's default rules).
    """
    from star_jax.llm.mistral import abstract_variables  # mistral imports this module

    check_lora_config(lora_cfg)
    abstract = abstract_variables(model_cfg, lora_cfg)[COLLECTION]
    flat = traverse_util.flatten_dict(nn.unbox(abstract))

    def init(key: jax.Array) -> dict:
        # One uniform draw for every A: a single RNG kernel compiles much faster than one per tensor.
        a_paths = sorted(p for p in flat if p[-1] == "lora_A")
        sizes = [math.prod(flat[p].shape) for p in a_paths]
        u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
        leaves = {p: jnp.zeros(a.shape, a.dtype) for p, a in flat.items() if p[-1] == "lora_B"}
        for p, chunk in zip(a_paths, jnp.split(u, np.cumsum(sizes)[:-1])):
            shape = flat[p].shape
            leaves[p] = chunk.reshape(shape) / math.sqrt(shape[-2])  # U(+-1/sqrt(fan_in)), see init_lora_a
        return traverse_util.unflatten_dict(leaves)

    if mesh is None:
        return jax.jit(init)(rng)
    rules = logical_rules(MeshConfig()) if rules is None else rules
    return jax.jit(init, out_shardings=logical_shardings(abstract, mesh, rules))(rng)


def _adapter_modules(adapters: dict) -> dict[tuple[str, ...], dict[str, jax.Array]]:
    """{module path, e.g. ('layers', 'self_attn', 'q_proj'): {'lora_A': .., 'lora_B': ..}}."""
    modules: dict[tuple[str, ...], dict[str, jax.Array]] = {}
    for path, leaf in traverse_util.flatten_dict(adapters).items():
        modules.setdefault(path[:-1], {})[path[-1]] = leaf
    return modules


def merge_lora(base: dict, adapters: dict, lora_cfg: LoraConfig) -> dict:
    """Base params with every adapter folded in, `W + (alpha/r) A B` (PEFT's `merge_and_unload`).

    The result runs in `MistralModel(cfg)` without LoRA and gives the same output as base +
    adapters (without dropout). Pure, jit-able; kernels keep their dtype.
    """
    flat = traverse_util.flatten_dict(base)
    for path, ab in _adapter_modules(adapters).items():
        kernel = flat[(*path, "kernel")]
        delta = jnp.einsum(
            "...ir,...ro->...io", ab["lora_A"].astype(jnp.float32), ab["lora_B"].astype(jnp.float32)
        )
        flat[(*path, "kernel")] = (kernel.astype(jnp.float32) + scaling(lora_cfg) * delta).astype(
            kernel.dtype
        )
    return traverse_util.unflatten_dict(flat)


def _peft_config(lora_cfg: LoraConfig, base_model_name_or_path: str | None, causal_lm: bool) -> dict:
    # The fields PEFT's LoraConfig needs to rebuild our adapter; everything else keeps its default.
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if causal_lm else None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "target_modules": sorted(TARGET_MODULES[t] for t in lora_cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def export_peft(
    adapters: dict,
    lora_cfg: LoraConfig,
    model_cfg: MistralConfig,
    out_dir: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    causal_lm: bool = False,
) -> Path:
    """Write PEFT's `adapter_model.safetensors` + `adapter_config.json` into `out_dir` (atomically).

    Keys are `base_model.model.layers.{i}.self_attn.q_proj.lora_A.weight` `[r, in]` and
    `...lora_B.weight` `[out, r]` for a bare `MistralModel` base (E5-Mistral's class);
    `causal_lm=True` targets a `MistralForCausalLM` base (`base_model.model.model.layers...`).
    """
    from safetensors.numpy import save_file

    check_lora_config(lora_cfg)
    prefix = "base_model.model.model." if causal_lm else "base_model.model."
    tensors: dict[str, np.ndarray] = {}
    for path, ab in _adapter_modules(adapters).items():
        a, b = np.asarray(jax.device_get(ab["lora_A"])), np.asarray(jax.device_get(ab["lora_B"]))
        where = "/".join(path)
        if path[0] != "layers" or a.ndim != 3 or a.shape[0] != model_cfg.num_hidden_layers:
            raise StarError(
                f"adapters/{where}/lora_A: shape {a.shape} does not match num_hidden_layers="
                f"{model_cfg.num_hidden_layers}"
            )
        if a.shape[2] != lora_cfg.rank or b.shape[1] != lora_cfg.rank:
            raise StarError(f"adapters/{where}: rank {a.shape[2]} does not match lora.rank={lora_cfg.rank}")
        module = ".".join(path[1:])
        for i in range(a.shape[0]):
            tensors[f"{prefix}layers.{i}.{module}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{prefix}layers.{i}.{module}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(tmp / ADAPTER_CONFIG, _peft_config(lora_cfg, base_model_name_or_path, causal_lm))
    return Path(out_dir)


def _lora_config_from_peft(path: Path) -> LoraConfig:
    try:
        cfg = read_json(path)
    except FileNotFoundError:
        raise StarError(f"{path}: not found (not a PEFT adapter directory)") from None
    except ValueError as e:
        raise StarError(f"{path}: not valid JSON: {e}") from None
    if cfg.get("peft_type") != "LORA":
        raise StarError(f"{path}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    for field in ("use_rslora", "use_dora", "fan_in_fan_out", "layers_to_transform", "modules_to_save"):
        if cfg.get(field):
            raise StarError(f"{path}: {field}={cfg[field]!r} is not supported")
    if cfg.get("bias", "none") != "none":
        raise StarError(f"{path}: bias={cfg['bias']!r} is not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise StarError(f"{path}: rank_pattern/alpha_pattern are not supported")
    modules = cfg.get("target_modules")
    if modules == "all-linear":
        modules = list(TARGET_MODULES.values())
    if not isinstance(modules, list):
        raise StarError(f"{path}: target_modules={modules!r}; expected a list of module names")
    ours = {hf: short for short, hf in TARGET_MODULES.items()}
    unknown = [m for m in modules if m not in ours]
    if unknown:
        raise StarError(f"{path}: target_modules entry {unknown[0]!r} is not a Mistral projection")
    targets = [t for t in TARGET_MODULES if TARGET_MODULES[t] in modules]  # canonical order
    return LoraConfig(
        rank=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout", 0.0)),
        targets=targets,
    )


def import_peft(adapter_dir: str | os.PathLike) -> tuple[dict, LoraConfig]:
    """Read a PEFT LoRA directory (ours or PEFT's own) into `(adapters, LoraConfig)`.

    Accepts `MistralModel` and `MistralForCausalLM` key prefixes. Adapters come back in the
    tensors' stored dtype, stacked over layers, as `init_lora` lays them out.
    """
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    lora_cfg = _lora_config_from_peft(adapter_dir / ADAPTER_CONFIG)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise StarError(f"{weights}: not found")
    found: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
    for key, value in load_file(str(weights)).items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise StarError(f"{weights}: unexpected tensor {key}")
        layer, parent, module, ab = m.groups()
        if _PARENT.get(module, "mlp") != parent or module not in TARGET_MODULES.values():
            raise StarError(f"{weights}: unexpected tensor {key}")
        found.setdefault((parent, module, f"lora_{ab}"), {})[int(layer)] = value
    expected = {(_PARENT.get(TARGET_MODULES[t], "mlp"), TARGET_MODULES[t]) for t in lora_cfg.targets}
    if {(p, m) for p, m, _ in found} != expected:
        raise StarError(
            f"{weights}: adapted modules {sorted(m for _, m, _ in found)} do not match "
            f"target_modules {sorted(m for _, m in expected)} in {ADAPTER_CONFIG}"
        )
    num_layers = 1 + max(i for per_layer in found.values() for i in per_layer)
    flat = {}
    for (parent, module, name), per_layer in found.items():
        missing = [i for i in range(num_layers) if i not in per_layer]
        if missing:
            raise StarError(f"{weights}: no tensor for layers.{missing[0]}.{parent}.{module}.{name}")
        stacked = np.stack([per_layer[i].T for i in range(num_layers)])  # back to [in, r] / [r, out]
        rank_axis = 2 if name == "lora_A" else 1
        if stacked.shape[rank_axis] != lora_cfg.rank:
            raise StarError(
                f"{weights}: {parent}.{module}.{name} has rank {stacked.shape[rank_axis]}, "
                f"but {ADAPTER_CONFIG} says r={lora_cfg.rank}"
            )
        flat[("layers", parent, module, name)] = jnp.asarray(stacked)
    return traverse_util.unflatten_dict(flat), lora_cfg
