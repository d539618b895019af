"""Local Hugging Face Mistral directories <-> our params; `star-jax inspect-model`.

A directory holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`; tensor names are HF's (`layers.{i}.self_attn.q_proj.weight`, ...),
with a `model.` prefix when saved from `MistralForCausalLM`; `lm_head.weight` is optional. The
name mapping is derived from the param tree itself (`[L, in, out]` kernels <- per-layer `[out, in]`
weights). With a mesh, each device reads only its slice of each tensor, so a 7B checkpoint is never
whole on one device. config.json: v5's `rope_parameters` and v4's `rope_theta` are both read;
missing fields take transformers' `MistralConfig` defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, SingleDeviceSharding

from star_jax.config import MeshConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.fileio import atomic_dir, atomic_write_json
from star_jax.llm.mistral import DTYPES, abstract_variables, as_dtype
from star_jax.parallel import Rules, logical_rules, logical_shardings

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # PyTorch's pickle formats: never read

# transformers' MistralConfig defaults for keys a config.json may leave out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": None,
    "tie_word_embeddings": False,
}
_ARCH_FIELDS = [k for k in _HF_DEFAULTS if k != "hidden_act"]


def _dtype_of(dtype: Any) -> jnp.dtype:
    if isinstance(dtype, str):
        return as_dtype(dtype, "dtype")
    dtype = jnp.dtype(dtype)
    as_dtype(dtype.name, "dtype")
    return dtype


def read_config(path: str | os.PathLike, dtype: Any = jnp.float32) -> MistralConfig:
    """The architecture in `path/config.json` as a `MistralConfig` computing and storing in `dtype`."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise StarError(f"{file}: not found (not a Hugging Face model directory)")
    try:
        raw = json.loads(file.read_text())
    except ValueError as e:
        raise StarError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise StarError(f"{file}: expected a JSON object")
    if raw.get("model_type") != "mistral":
        raise StarError(f"{file}: model_type {raw.get('model_type')!r} is not 'mistral'")
    values = {k: raw.get(k, default) for k, default in _HF_DEFAULTS.items()}
    if values["hidden_act"] != "silu":
        raise StarError(f"{file}: hidden_act {values['hidden_act']!r} is not supported (only 'silu')")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise StarError(f"{file}: rope_type {rope.get('rope_type', rope.get('type'))!r} is not supported")
    values["rope_theta"] = float(rope.get("rope_theta", raw.get("rope_theta", _HF_DEFAULTS["rope_theta"])))
    if values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = values["num_attention_heads"]
    if isinstance(values["eos_token_id"], list):
        values["eos_token_id"] = values["eos_token_id"][0]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(values[k], int) or values[k] < 1:
            raise StarError(f"{file}: {k} must be a positive integer, got {values[k]!r}")
    window = values["sliding_window"]
    if window is not None and (not isinstance(window, int) or window < 1):
        raise StarError(f"{file}: sliding_window must be null or a positive integer, got {window!r}")
    name = _dtype_of(dtype).name
    cfg = MistralConfig(**{k: values[k] for k in _ARCH_FIELDS}, dtype=name, param_dtype=name)
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise StarError(
            f"{file}: num_attention_heads={cfg.num_attention_heads} is not a multiple of "
            f"num_key_value_heads={cfg.num_key_value_heads}"
        )
    return cfg


class _Tensors:
    """Lazy, slice-wise access to the tensors of a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: Path, stack: contextlib.ExitStack):
        from safetensors import safe_open

        index = path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise StarError(f"{index}: not a safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (path / WEIGHTS).is_file():
            files = [WEIGHTS]
        else:
            pickled = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
            if pickled:  # torch.load would unpickle, i.e. run whatever code the file holds
                raise StarError(f"{path}: only pickle weights ({', '.join(pickled[:3])}), and star-jax "
                                f"loads safetensors only; convert them to {WEIGHTS}")
            raise StarError(f"{path}: no {WEIGHTS} or {INDEX} (missing weights)")
        self.where: dict[str, tuple[str, Any]] = {}  # name without `model.` -> (file, handle)
        self.raw: dict[str, str] = {}  # name without `model.` -> name in the file
        for name in files:
            file = path / name
            if not file.is_file():
                raise StarError(f"{file}: listed in {INDEX} but missing")
            try:
                handle = stack.enter_context(safe_open(str(file), framework="np"))
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise StarError(f"{file}: not a readable safetensors file ({e})") from None
            for key in handle.keys():
                short = key.removeprefix("model.")
                self.where[short] = (name, handle)
                self.raw[short] = key

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name][1].get_slice(self.raw[name]).get_shape())

    def file(self, name: str) -> str:
        return self.where[name][0]

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return self.where[name][1].get_slice(self.raw[name])[index]


def _hf_name(path: tuple[str, ...], layer: int | None) -> str:
    """`('layers', 'self_attn', 'q_proj', 'kernel')`, 3 -> `layers.3.self_attn.q_proj.weight`."""
    modules = list(path[:-1])
    if layer is not None:
        modules.insert(1, str(layer))
    return ".".join(modules) + ".weight"


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[slice]:
    return [slice(*s.indices(n)) for s, n in zip(index, shape)]


def _load_leaf(
    tensors: _Tensors,
    path: tuple[str, ...],
    shape: tuple[int, ...],
    dtype: jnp.dtype,
    sharding: Any,
    cfg_file: Path,
) -> jax.Array:
    stacked = path[0] == "layers"
    transpose = path[-1] == "kernel"
    names = [_hf_name(path, i) for i in range(shape[0])] if stacked else [_hf_name(path, None)]
    per_tensor = shape[1:] if stacked else shape
    hf_shape = tuple(reversed(per_tensor)) if transpose else per_tensor
    for name in names:
        if name not in tensors:
            raise StarError(f"{cfg_file.parent}: tensor {name} is missing from the checkpoint")
        if tensors.shape(name) != hf_shape:
            file = cfg_file.parent / tensors.file(name)
            raise StarError(
                f"{file}: tensor {name} has shape {list(tensors.shape(name))}, "
                f"expected {list(hf_shape)} from {cfg_file.name}"
            )

    def read(index: tuple[slice, ...]) -> np.ndarray:
        index = _bounds(index, shape)
        inner = index[1:] if stacked else index
        hf_index = tuple(reversed(inner)) if transpose else tuple(inner)
        chosen = names[index[0]] if stacked else names
        parts = [tensors.read(n, hf_index) for n in chosen]
        parts = [p.T if transpose else p for p in parts]
        block = np.stack(parts) if stacked else parts[0]
        return np.asarray(block).astype(dtype)

    return jax.make_array_from_callback(shape, sharding, read)


def _shardings(abstract: Any, mesh: Mesh | None, rules: Rules | None) -> Any:
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: device, nn.unbox(abstract))
    return logical_shardings(abstract, mesh, logical_rules(MeshConfig()) if rules is None else rules)


def load_mistral(
    path: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None, rules: Rules | None = None
) -> tuple[MistralConfig, dict]:
    """Read a local HF Mistral directory into `(MistralConfig, params)` for `MistralModel`.

    `dtype` is the parameter (and compute) dtype; the returned config carries it, and its other
    run-time fields (`remat`, `attention`) are the defaults, to be replaced from the run config.
    With `mesh`, every tensor lands directly in the sharding its logical axes get under `rules`
    (default: the config's default rules); without, on the first device.
    """
    path = Path(path)
    if not path.is_dir():
        raise StarError(f"{path}: no such model directory")
    cfg = read_config(path, dtype)
    abstract = abstract_variables(cfg)["params"]
    shardings = traverse_util.flatten_dict(_shardings(abstract, mesh, rules))
    flat_abstract = traverse_util.flatten_dict(nn.unbox(abstract))
    with contextlib.ExitStack() as stack:
        tensors = _Tensors(path, stack)
        flat = {
            p: _load_leaf(tensors, p, a.shape, a.dtype, shardings[p], path / CONFIG)
            for p, a in flat_abstract.items()
        }
    return cfg, traverse_util.unflatten_dict(flat)


def load_lm_head(
    path: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None, rules: Rules | None = None
) -> jax.Array | None:
    """The `[hidden, vocab]` LM head kernel (`lm_head.weight` transposed), or None when absent or tied.

    None means `lm_logits` uses the token embeddings, as a tied (or head-less) checkpoint implies.
    """
    path = Path(path)
    cfg = read_config(path, dtype)
    with contextlib.ExitStack() as stack:
        tensors = _Tensors(path, stack)
        if LM_HEAD not in tensors or cfg.tie_word_embeddings:
            return None
        shape = (cfg.hidden_size, cfg.vocab_size)
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            rules = logical_rules(MeshConfig()) if rules is None else rules
            spec = nn.logical_to_mesh_axes(("embed", "vocab"), rules)
            sharding = jax.sharding.NamedSharding(mesh, spec)
        return _load_leaf(tensors, ("lm_head", "kernel"), shape, _dtype_of(dtype), sharding, path / CONFIG)


def _hf_config(cfg: MistralConfig, architecture: str, tied: bool, dtype: str) -> dict:
    out = {k: getattr(cfg, k) for k in _ARCH_FIELDS if k != "rope_theta"}
    out.update(
        model_type="mistral",
        architectures=[architecture],
        head_dim=cfg.resolved_head_dim,
        hidden_act="silu",
        rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"},
        tie_word_embeddings=tied,
        attention_dropout=0.0,
        use_cache=True,
        dtype=dtype,
    )
    return out


def _host(x: jax.Array) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def save_mistral(
    out_dir: str | os.PathLike,
    config: MistralConfig,
    params: dict,
    lm_head: jax.Array | None = None,
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write an HF Mistral directory that `transformers` loads (atomically).

    Without `lm_head` it is a bare `MistralModel` (as E5-Mistral), unless
    `config.tie_word_embeddings`, which makes it a tied `MistralForCausalLM`; with `lm_head`
    (`[hidden, vocab]`) an untied `MistralForCausalLM`. Tensors keep the params' dtype and are
    split into several files plus `model.safetensors.index.json` above `max_shard_bytes`.
    """
    from safetensors.numpy import save_file

    causal = lm_head is not None or config.tie_word_embeddings
    prefix = "model." if causal else ""
    # (name, producer) pairs: arrays are fetched from the devices one file at a time.
    entries: list[tuple[str, int, Callable[[], np.ndarray]]] = []
    for path, leaf in traverse_util.flatten_dict(params).items():
        transpose = path[-1] == "kernel"
        per_layer = range(leaf.shape[0]) if path[0] == "layers" else [None]
        for i in per_layer:
            nbytes = leaf.nbytes // (leaf.shape[0] if i is not None else 1)

            def get(leaf=leaf, i=i, transpose=transpose):
                x = _host(leaf[i] if i is not None else leaf)
                return np.ascontiguousarray(x.T if transpose else x)

            entries.append((prefix + _hf_name(path, i), nbytes, get))
    if lm_head is not None:
        entries.append((LM_HEAD, lm_head.nbytes, lambda: np.ascontiguousarray(_host(lm_head).T)))
    dtype = jax.tree.leaves(params)[0].dtype.name

    files: list[list[tuple[str, int, Callable[[], np.ndarray]]]] = [[]]
    size = 0
    for entry in entries:
        if files[-1] and size + entry[1] > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(entry)
        size += entry[1]
    architecture = "MistralForCausalLM" if causal else "MistralModel"
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / CONFIG, _hf_config(config, architecture, lm_head is None and causal, dtype))
        names = (
            [WEIGHTS]
            if len(files) == 1
            else [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
        )
        weight_map = {}
        for name, group in zip(names, files):
            save_file({key: get() for key, _, get in group}, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({key: name for key, _, _ in group})
        if len(files) > 1:
            total = sum(n for _, n, _ in entries)
            atomic_write_json(tmp / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return Path(out_dir)


def runtime_arch(base: MistralConfig, run: MistralConfig) -> MistralConfig:
    """The base checkpoint's architecture with the run's numerics (dtypes, remat, attention)."""
    return dataclasses.replace(
        base, dtype=run.dtype, param_dtype=run.param_dtype, remat=run.remat, attention=run.attention
    )


def check_vocab(tokenizer: Any, tokenizer_dir: str | os.PathLike, arch: MistralConfig, base_dir: str) -> None:
    """The tokenizer's ids must fit the base model's embedding table."""
    if len(tokenizer) > arch.vocab_size:
        raise StarError(
            f"--tokenizer {tokenizer_dir}: its {len(tokenizer)} token ids exceed vocab_size="
            f"{arch.vocab_size} of {os.path.join(base_dir, CONFIG)}; use the base model's tokenizer"
        )


def count_params(params: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------- `star-jax inspect-model`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="local Hugging Face Mistral directory (config.json + safetensors)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load the weights in")


def main(args: argparse.Namespace) -> int:
    cfg, params = load_mistral(args.dir, args.dtype)
    head = load_lm_head(args.dir, args.dtype)
    n = count_params(params)
    head_note = (
        "tied to embed_tokens" if cfg.tie_word_embeddings else ("present" if head is not None else "none")
    )
    print(f"{args.dir}: Mistral, {n:,} parameters ({n / 1e9:.3f} B) in {cfg.param_dtype}")
    print(
        f"  layers {cfg.num_hidden_layers}  hidden {cfg.hidden_size}  mlp {cfg.intermediate_size}  "
        f"vocab {cfg.vocab_size}"
    )
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    print(f"  heads {heads}  kv_heads {kv}  head_dim {cfg.resolved_head_dim}")
    print(f"  rope_theta {cfg.rope_theta:g}  rms_norm_eps {cfg.rms_norm_eps:g}  window {cfg.sliding_window}")
    print(f"  lm_head {head_note}")
    return 0
