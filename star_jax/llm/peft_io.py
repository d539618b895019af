"""LoRA adapters <-> HF PEFT's on-disk format (`adapter_model.safetensors` + `adapter_config.json`).

`export_peft` writes what `peft.PeftModel.from_pretrained(MistralModel, dir)` loads; `import_peft`
reads ours or PEFT's own. Keys are `base_model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
`[r, in]` and `...lora_B.weight` `[out, r]` (a bare `MistralModel` base, E5-Mistral's class), or
`base_model.model.model.layers...` for a `MistralForCausalLM` base; our adapters are the same
tensors transposed and stacked over layers (star_jax.llm.lora). A `modules_to_save` table is
`base_model.model.embed_tokens.weight` `[vocab, hidden]`, as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from star_jax.config import LoraConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, atomic_write_json, read_json
from star_jax.llm.lora import SAVED_MODULES, TARGET_MODULES, adapter_modules, split_saved

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
# PEFT wraps the base model as `base_model.model`; a `MistralForCausalLM` base adds its `model.`.
_PEFT_KEY = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$"
)
# A `modules_to_save` module's full weight; ours are the embedding tables, `[vocab, hidden]` in both.
_SAVED_KEY = re.compile(r"^base_model\.model\.(?:model\.)?(\w+)\.weight$")


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
        "modules_to_save": list(lora_cfg.modules_to_save) or None,
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

    `causal_lm=True` targets a `MistralForCausalLM` base (`base_model.model.model.layers...`).
    """
    from safetensors.numpy import save_file

    lora_cfg.check()
    prefix = "base_model.model.model." if causal_lm else "base_model.model."
    tensors: dict[str, np.ndarray] = {}
    saved = split_saved(adapters)[1]
    if sorted(saved) != sorted(lora_cfg.modules_to_save):
        raise StarError(f"adapters: saved modules {sorted(saved)} do not match lora.modules_to_save="
                        f"{sorted(lora_cfg.modules_to_save)}")
    for name, module in saved.items():
        tensors[f"{prefix}{name}.weight"] = np.ascontiguousarray(jax.device_get(module["embedding"]))
    for path, ab in adapter_modules(adapters).items():
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


def read_lora_config(adapter_dir: str | os.PathLike) -> LoraConfig:
    """The LoraConfig of a PEFT adapter directory, from its `adapter_config.json`."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        cfg = read_json(path)
    except FileNotFoundError:
        raise StarError(f"{path}: not found (not a PEFT adapter directory)") from None
    except ValueError as e:
        raise StarError(f"{path}: not valid JSON: {e}") from None
    if cfg.get("peft_type") != "LORA":
        raise StarError(f"{path}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    for field in ("use_rslora", "use_dora", "fan_in_fan_out", "layers_to_transform"):
        if cfg.get(field):
            raise StarError(f"{path}: {field}={cfg[field]!r} is not supported")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or any(m not in SAVED_MODULES for m in saved):
        raise StarError(f"{path}: modules_to_save={saved!r} is not supported (only {list(SAVED_MODULES)})")
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
        modules_to_save=list(saved),
    )


def import_peft(adapter_dir: str | os.PathLike) -> tuple[dict, LoraConfig]:
    """Read a PEFT LoRA directory (ours or PEFT's own) into `(adapters, LoraConfig)`.

    Accepts `MistralModel` and `MistralForCausalLM` key prefixes. Adapters come back in the
    tensors' stored dtype, stacked over layers, as `mistral.init_lora` lays them out.
    """
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    lora_cfg = read_lora_config(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = adapter_dir / "adapter_model.bin"
        if pickled.is_file():  # torch.load would unpickle, i.e. run whatever code the file holds
            raise StarError(f"{weights}: not found, only the pickle {pickled.name}, and star-jax loads "
                            "safetensors only; save the adapter with safe_serialization=True")
        raise StarError(f"{weights}: not found")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise StarError(f"{weights}: not a readable safetensors file ({e})") from None
    found: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
    saved: dict[str, dict] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        s = _SAVED_KEY.match(key)
        if m is None and s is not None and s.group(1) in lora_cfg.modules_to_save:
            saved[s.group(1)] = {"embedding": jnp.asarray(value)}
            continue
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
    missing = sorted(set(lora_cfg.modules_to_save) - set(saved))
    if missing:
        raise StarError(f"{weights}: no tensor for {missing[0]}, named in {ADAPTER_CONFIG}'s modules_to_save")
    return {**traverse_util.unflatten_dict(flat), **saved}, lora_cfg
