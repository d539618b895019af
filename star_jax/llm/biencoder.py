"""The STAR bi-encoder: a member tower and a job tower over one frozen Mistral, as one `BiEncoder`.

STAR's LLM embedding component (arXiv 2507.09797): a request tower embeds member profiles and a
document tower job postings, both LoRA fine-tunings of one frozen base (E5-Mistral); the paper
does not say whether the towers share the adapter, so `lora.shared` offers both. Otherwise the
towers differ only in their input: the E5 instruction is on the member (query) side, added by the
loader (`data.loader.tower`; E5-Mistral, arXiv 2401.00368). A tower pools its hidden states (and
token embeddings, `llm.pooling`), maps them through an optional projection head (`llm.projection`) and
L2-normalises them in fp32, as big_vision's `two_towers.py`. `build_biencoder` bundles init,
encode, loss (star_jax.llm.losses), export and load of everything trainable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from star_jax.config import LLMConfig, LLMTrainConfig, LoraConfig, MeshConfig, MistralConfig
from star_jax.errors import StarError
from star_jax.fileio import atomic_write_bytes
from star_jax.llm.lora import split_saved, with_saved
from star_jax.llm.losses import biencoder_losses, fit_head, init_head
from star_jax.llm.mistral import MistralModel, abstract_variables, init_lora
from star_jax.llm.peft_io import ADAPTER_CONFIG, export_peft, import_peft, read_lora_config
from star_jax.parallel import Rules, logical_rules, logical_shardings, replicated

MEMBER, JOB = "member", "job"
TOWERS = (MEMBER, JOB)
SHARED = "shared"
EXPORT_DIR = "adapters"  # a train-llm run's export: RUN/adapters/{shared | member, job}[/projection...]
PROJECTION_FILE = "projection.safetensors"

Params = dict[str, Any]  # {"adapters": {name: LoRA tree}, "head": {"log_scale", "bias"}, ["projection"]}


def adapter_names(lora: LoraConfig) -> tuple[str, ...]:
    """Keys of the adapters dict: `("shared",)` or `("member", "job")`."""
    return (SHARED,) if lora.shared else TOWERS


def tower_adapters(adapters: dict | None, tower: str) -> dict | None:
    """The LoRA tree `tower` runs with: its own, the shared one, or `adapters` itself when it is
    already a single LoRA tree (e.g. from `peft_io.import_peft`). None: the frozen base alone."""
    if adapters is None or "layers" in adapters:
        return adapters
    return adapters[tower] if tower in adapters else adapters[SHARED]


def last_token(hidden: jax.Array, embedded: jax.Array, lengths: jax.Array, pool: jax.Array) -> jax.Array:
    """`hidden[b, lengths[b] - 1]`: `[B, T, H]` -> `[B, H]` (a zero length picks position 0).

    E5's `last_token_pool` for right padding: found from the lengths, never from token ids (E5's
    pad id is its EOS id)."""
    index = jnp.clip(lengths - 1, 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def mean_pool(hidden: jax.Array, embedded: jax.Array, lengths: jax.Array, pool: jax.Array) -> jax.Array:
    """The mean of `hidden` over the tokens `pool` marks: `[B, T, H]` -> `[B, H]` in fp32 (none gives 0)."""
    total = jnp.einsum("bt,bth->bh", pool, hidden.astype(jnp.float32))
    return total / jnp.maximum(pool.sum(1), 1.0)[:, None]


def mean_first_last(hidden: jax.Array, embedded: jax.Array, lengths: jax.Array, pool: jax.Array) -> jax.Array:
    """The unit mean of the token embeddings plus the unit mean of the final hidden states, `[B, H]`.

    The "first-last average" of sentence encoders (Su et al. 2021), its first layer the embedding
    table: the words two texts share reach the cosine whether or not the layers keep them."""
    first, last = mean_pool(embedded, None, lengths, pool), mean_pool(hidden, None, lengths, pool)
    return l2_normalize(first) + l2_normalize(last)


# `llm.pooling` -> `(hidden [B, T, H], token embeddings [B, T, H], lengths [B], pool [B, T]) -> [B, H]`;
# the config checks the name (config.POOLINGS). `mean` (sentence-transformers') and `mean_first_last`
# suit the demo: its 4-layer base pretrained for 200 steps has not learned to summarise a text in
# its last state, whose vectors sit in a narrow cone, and its layers blur the words the texts share
# (docs/architecture.md, decisions 12 and 23; docs/quality.md).
POOL_FNS = {"last_token": last_token, "mean": mean_pool, "mean_first_last": mean_first_last}


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit rows in fp32 (torch's `F.normalize`: x / max(||x||, eps))."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def encode(
    model: MistralModel,
    base: dict,
    adapters: dict | None,
    tower: str,
    ids: jax.Array,
    lengths: jax.Array,
    pool: jax.Array | None = None,
    *,
    pooling: str,
    rng: jax.Array | None = None,
    head: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Embed right-padded token ids `[B, T]` with `tower`'s adapter: unit-norm fp32 `[B, D]`.

    `model` is `MistralModel(arch, lora_config)` (`lora_config` None with `adapters` None for
    the frozen base). `pool` f32 `[B, T]` marks the tokens a mean pools (None: every real one).
    `pooling` is `llm.pooling` (a key of `POOL_FNS`); `head` maps the pooled
    `[B, H]` to `[B, D]` before the norm (None: D = H). `rng` turns on LoRA dropout (training).
    """
    lora = tower_adapters(adapters, tower)
    if lora is not None:
        base, lora = with_saved(base, lora)  # PEFT's modules_to_save run in place of the base's
    variables = {"params": base} if lora is None else {"params": base, "lora": lora}
    mask = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    hidden = model.apply(
        variables,
        ids,
        mask,
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )
    embedded = jnp.take(base["embed_tokens"]["embedding"], ids, axis=0)  # unused ones are compiled away
    pool = mask.astype(jnp.float32) if pool is None else pool.astype(jnp.float32)
    pooled = POOL_FNS[pooling](hidden, embedded, lengths, pool)
    return l2_normalize(pooled if head is None else head(pooled.astype(jnp.float32)))


def encode_towers(
    model: MistralModel,
    base: dict,
    adapters: dict,
    batch: dict[str, jax.Array],
    *,
    pooling: str,
    rng: jax.Array | None = None,
    head: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Member and job embeddings `[B, D]` of a batch (`member_ids`/`member_len`, `job_ids`/`job_len`,
    and optionally `member_pool`/`job_pool`).

    With one adapter for both towers and equal padded lengths, one pass over the base embeds both
    towers: bigger matmuls, and a training step that traces (and compiles) the model once. Rows
    are interleaved (member i, job i), so a batch split over devices stays where it is.
    """
    m_ids, m_len, j_ids, j_len = (batch[k] for k in ("member_ids", "member_len", "job_ids", "job_len"))
    m_pool, j_pool = batch.get("member_pool"), batch.get("job_pool")
    run = functools.partial(encode, model, base, adapters, pooling=pooling, head=head)
    if tower_adapters(adapters, MEMBER) is tower_adapters(adapters, JOB) and m_ids.shape == j_ids.shape:
        b, t = m_ids.shape
        interleave = lambda m, j: jnp.stack([m, j], axis=1).reshape(2 * b, *m.shape[1:])  # noqa: E731
        pool = None if m_pool is None else interleave(m_pool, j_pool)
        both = run(MEMBER, interleave(m_ids, j_ids), interleave(m_len, j_len), pool, rng=rng)
        both = both.reshape(b, 2, -1)
        return both[:, 0], both[:, 1]
    rm, rj = (None, None) if rng is None else jax.random.split(rng)
    return run(MEMBER, m_ids, m_len, m_pool, rng=rm), run(JOB, j_ids, j_len, j_pool, rng=rj)


# -- projection heads ----------------------------------------------------------------------------


class Projection(NamedTuple):
    """A trainable map of a tower's pooled output before the L2 norm, the same for both towers."""

    name: str  # `llm.projection`'s value; recorded in the exported file
    init: Callable[[jax.Array, int], dict[str, Any]]  # (rng, hidden) -> params: a dict of f32 arrays
    apply: Callable[[dict[str, Any], jax.Array], jax.Array]  # (params, f32[B, hidden]) -> f32[B, dim]


# `llm.projection` -> its head; "none" (the default) is none. A new head is one entry here plus
# its name among the config's choices.
PROJECTIONS: dict[str, Projection] = {}


def projection_for(llm: LLMConfig) -> Projection | None:
    """The head `llm.projection` names (None for "none")."""
    name = llm.projection
    if name in (None, "none"):
        return None
    if name not in PROJECTIONS:
        raise StarError(f"llm.projection: unknown head {name!r}; expected none or one of "
                        f"{', '.join(sorted(PROJECTIONS)) or '(no head is registered)'}")
    return PROJECTIONS[name]


def _save_projection(params: dict, name: str, path: Path) -> None:
    from safetensors.numpy import save

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    tensors = {k: np.ascontiguousarray(v) for k, v in flat.items()}
    atomic_write_bytes(path, save(tensors, metadata={"projection": name}))


def _read_projection(path: Path, projection: Projection, hidden: int) -> dict:
    from safetensors import safe_open

    if not path.is_file():
        raise StarError(f"{path}: not found (llm.projection is {projection.name!r})")
    with safe_open(str(path), framework="numpy") as f:
        stored = (f.metadata() or {}).get("projection")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if stored != projection.name:
        raise StarError(f"{path}: a {stored!r} projection head, but llm.projection is {projection.name!r}")
    shapes = jax.eval_shape(lambda k: projection.init(k, hidden), jax.random.key(0))
    want = traverse_util.flatten_dict(shapes, sep="/")
    for key in sorted(set(want) | set(tensors)):
        if key not in tensors or key not in want or tensors[key].shape != want[key].shape:
            got = tensors[key].shape if key in tensors else "no tensor"
            need = want[key].shape if key in want else "none"
            raise StarError(f"{path}: {key}: {got}, the {projection.name!r} head needs {need}")
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in tensors.items()}, sep="/")


# -- reading an export ---------------------------------------------------------------------------


def _export_names(directory: Path) -> list[str]:
    names = [n for n in (SHARED, *TOWERS) if (directory / n).is_dir()]
    if names not in ([SHARED], list(TOWERS)):
        raise StarError(f"{directory}: no shared/ nor member/ + job/ adapters (a train-llm export)")
    return names


def read_lora(directory: str | os.PathLike) -> LoraConfig:
    """The LoraConfig of a bi-encoder export (`shared/`, or `member/` + `job/`) or of one PEFT adapter
    directory (a shared adapter), from the adapter configs alone."""
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        return dataclasses.replace(read_lora_config(directory), shared=True)
    names = _export_names(directory)
    return dataclasses.replace(read_lora_config(directory / names[0]), shared=names == [SHARED])


def read_adapters(directory: str | os.PathLike) -> tuple[dict[str, dict], LoraConfig]:
    """`({name: LoRA tree}, LoraConfig)` from a bi-encoder export or one PEFT adapter directory (as
    the shared adapter), as `read_lora` finds them."""
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        tree, lora = import_peft(directory)
        return {SHARED: tree}, dataclasses.replace(lora, shared=True)
    names = _export_names(directory)
    loaded = {n: import_peft(directory / n) for n in names}
    lora = dataclasses.replace(loaded[names[0]][1], shared=names == [SHARED])
    return {n: adapters for n, (adapters, _) in loaded.items()}, lora


def load_adapters(run_dir: str | os.PathLike) -> tuple[dict[str, dict], LoraConfig]:
    """The adapters a `train-llm` run exported (`RUN/adapters/`), with their LoraConfig."""
    return read_adapters(Path(run_dir) / EXPORT_DIR)


def _same_lora(a: LoraConfig, b: LoraConfig) -> bool:
    fields = lambda c: (c.rank, float(c.alpha), c.dropout, sorted(c.targets), c.shared,
                        sorted(c.modules_to_save))
    return fields(a) == fields(b)


# -- the bi-encoder ------------------------------------------------------------------------------


class BiEncoder(NamedTuple):
    """The towers and their loss for one config, as pure functions (as `gnn.model.GNN`).

    params (`Params`): "adapters" {name: LoRA tree}, "head" the BCE logit's {log_scale, bias},
    "projection" with a projection head; None runs the frozen base.
    init(rng, mesh=None, rules=None, base=None) -> params  fresh: B = 0 and `lora.modules_to_save`
                                                           copied from `base`, so step 0 is the base
    encode(params, base, tower, ids, lengths, pool=None, rng=None) -> f32[B, dim] unit rows (dropout iff rng)
    tower_params(params, tower) -> what `tower` runs with, as params that encode alike for any tower
    encode_pair(params, base, batch, rng=None) -> (member f32[B, dim], job f32[B, dim])
    loss(params, base, batch, rng) -> (loss, aux)          a `train_loop.LossFn`
    frozen(params) -> params with the adapters at zero, no saved modules (the base's towers)
    calibrate(params, cosines, labels) -> params with the BCE head fitted (`losses.fit_head`)
    logit(params) -> {"logit_scale": float, "logit_bias": float}
    export(params, directory, base_model_name_or_path=None): adapters as PEFT dirs, the projection file
    load(directory, mesh=None, rules=None) -> the exported params (no "head"), checked against the base
    """

    llm: LLMConfig
    lora: LoraConfig | None  # None: the frozen base, nothing trainable
    train: LLMTrainConfig
    arch: MistralConfig  # the base's architecture with the run's numerics
    projection: Projection | None
    model: MistralModel
    dim: int  # embedding width
    key: Any  # hashable, equal for bi-encoders that encode alike (e.g. a jit cache's key)
    init: Callable[..., Params]
    encode: Callable[..., jax.Array]
    tower_params: Callable[[Params | None, str], Params | None]
    encode_pair: Callable[..., tuple[jax.Array, jax.Array]]
    loss: Callable[[Params, Any, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    frozen: Callable[[Params], Params]
    calibrate: Callable[[Params, np.ndarray, np.ndarray], Params]
    logit: Callable[[Params], dict[str, float]]
    export: Callable[..., None]
    load: Callable[..., Params]


def build_biencoder(
    llm: LLMConfig,
    lora: LoraConfig | None,
    train: LLMTrainConfig,
    *,
    arch: MistralConfig | None = None,
    projection: Projection | None = None,
) -> BiEncoder:
    """The bi-encoder of `llm` (pooling, projection head), `lora` and `train` (see `BiEncoder`).

    `arch` defaults to `llm.arch` (runs on a checkpoint pass `hf_io.runtime_arch`); `projection`
    defaults to the head `llm.projection` names. Without LoRA there is no projection either.
    """
    arch = llm.arch if arch is None else arch
    projection = None if lora is None else (projection_for(llm) if projection is None else projection)
    model = MistralModel(arch, lora)
    hidden, pooling = arch.hidden_size, llm.pooling
    dim = hidden
    if projection is not None:
        out = lambda k: projection.apply(projection.init(k, hidden), jnp.zeros((1, hidden), jnp.float32))
        dim = int(jax.eval_shape(out, jax.random.key(0)).shape[-1])
    # `lora.shared` says how the adapters are keyed (one tree or one per tower), not what runs.
    keyed = None if lora is None else dataclasses.asdict(dataclasses.replace(lora, shared=True))
    key = (json.dumps([dataclasses.asdict(arch), keyed, pooling], sort_keys=True), projection)

    def on_mesh(fn: Callable, mesh: Mesh | None, *args: Any) -> Any:
        return jax.jit(fn)(*args) if mesh is None else jax.jit(fn, out_shardings=replicated(mesh))(*args)

    def init(rng: jax.Array, mesh: Mesh | None = None, rules: Rules | None = None,
             base: dict | None = None) -> Params:
        names = adapter_names(lora)
        keys = jax.random.split(rng, len(names))
        adapters = {n: init_lora(k, arch, lora, mesh=mesh, rules=rules) for n, k in zip(names, keys)}
        if lora.modules_to_save:
            if base is None:
                raise ValueError("lora.modules_to_save copies base modules: pass init(..., base=base params)")
            # fp32 trained copies, laid out (and sharded) as the base's own.
            copy = jax.jit(lambda m: jax.tree.map(lambda x: x.astype(jnp.float32), m))
            saved = lambda: {m: copy(base[m]) for m in lora.modules_to_save}  # noqa: E731
            adapters = {n: {**a, **saved()} for n, a in adapters.items()}
        params = {"adapters": adapters, "head": on_mesh(lambda: init_head(train), mesh)}
        if projection is not None:  # its own stream: the adapters draw as without a head
            rng = jax.random.fold_in(rng, len(names))
            params["projection"] = on_mesh(lambda k: projection.init(k, hidden), mesh, rng)
        return params

    def project(params: Params | None) -> Callable[[jax.Array], jax.Array] | None:
        if projection is None or params is None:
            return None
        return functools.partial(projection.apply, params["projection"])

    def encode_(params, base, tower, ids, lengths, pool=None, rng=None) -> jax.Array:
        adapters = None if params is None else params["adapters"]
        head = project(params)
        return encode(model, base, adapters, tower, ids, lengths, pool, pooling=pooling, rng=rng, head=head)

    def tower_params(params: Params | None, tower: str) -> Params | None:
        if params is None:
            return None
        out = {"adapters": tower_adapters(params["adapters"], tower)}
        return out if projection is None else {**out, "projection": params["projection"]}

    def encode_pair(params, base, batch, rng=None) -> tuple[jax.Array, jax.Array]:
        head = project(params)
        return encode_towers(model, base, params["adapters"], batch, pooling=pooling, rng=rng, head=head)

    def loss(params: Params, base: Any, batch: dict, rng: jax.Array):
        member, job = encode_pair(params, base, batch, rng if lora.dropout > 0 else None)
        terms = biencoder_losses(member, job, params["head"], batch, train)
        aux = {k: v for k, v in terms.items() if k != "loss"}
        aux["logit_scale"] = jnp.exp(params["head"]["log_scale"])
        aux["logit_bias"] = params["head"]["bias"]
        return terms["loss"], aux

    def frozen(params: Params) -> Params:
        zero = lambda tree: jax.tree.map(jnp.zeros_like, split_saved(tree)[0])  # noqa: E731
        return {**params, "adapters": {n: zero(t) for n, t in params["adapters"].items()}}

    def calibrate(params: Params, cosines: np.ndarray, labels: np.ndarray) -> Params:
        values = {k: jnp.asarray(v, jnp.float32) for k, v in fit_head(cosines, labels, train).items()}
        shardings = {k: v.sharding for k, v in params["head"].items()}
        return {**params, "head": jax.jit(lambda: values, out_shardings=shardings)()}

    def logit(params: Params) -> dict[str, float]:
        head = {k: float(v) for k, v in jax.device_get(params["head"]).items()}
        return {"logit_scale": float(np.exp(head["log_scale"])), "logit_bias": head["bias"]}

    def export(params: Params, directory: str | os.PathLike, base_model_name_or_path: str | None = None):
        directory = Path(directory)
        for name, tree in params["adapters"].items():
            export_peft(tree, lora, arch, directory / name, base_model_name_or_path=base_model_name_or_path)
        if projection is not None:
            _save_projection(params["projection"], projection.name, directory / PROJECTION_FILE)

    def load(directory: str | os.PathLike, mesh: Mesh | None = None, rules: Rules | None = None) -> Params:
        directory = Path(directory)
        if lora is None:
            raise StarError(f"{directory}: the frozen base has no adapters to load")
        adapters, found = read_adapters(directory)
        if not _same_lora(found, lora):
            raise StarError(f"{directory}: adapters of {found}, but this bi-encoder has {lora}")
        variables = abstract_variables(arch, lora)
        # A saved module is laid out as the base's own, in fp32 (`init`).
        abstract = {**variables["lora"], **{m: variables["params"][m] for m in lora.modules_to_save}}
        want = traverse_util.flatten_dict(nn.unbox(abstract))
        for k in want:
            if k[0] in lora.modules_to_save:
                want[k] = jax.ShapeDtypeStruct(want[k].shape, jnp.float32)
        peft = (directory / ADAPTER_CONFIG).is_file()
        for name, tree in adapters.items():
            where, flat = directory if peft else directory / name, traverse_util.flatten_dict(tree)
            for k in sorted(set(want) | set(flat)):
                path = "/".join(k)
                if k not in flat or k not in want:
                    what = "no" if k not in flat else "unexpected"
                    raise StarError(f"{where}: {what} tensor {path} for the base model's "
                                    f"{arch.num_hidden_layers} layers and lora targets")
                if tuple(flat[k].shape) != tuple(want[k].shape):
                    raise StarError(f"{where}: {path} has shape {tuple(flat[k].shape)}, the base model needs "
                                    f"{tuple(want[k].shape)} (adapters of another base model?)")
        params: Params = {"adapters": adapters}
        if projection is not None:
            params["projection"] = _read_projection(directory / PROJECTION_FILE, projection, hidden)
        elif (directory / PROJECTION_FILE).is_file():
            raise StarError(f"{directory / PROJECTION_FILE}: a projection head, but llm.projection is none")
        if mesh is None:
            return params
        rules = logical_rules(MeshConfig()) if rules is None else rules  # as init_lora's default
        shardings = traverse_util.flatten_dict(logical_shardings(abstract, mesh, rules))

        def place(tree: dict) -> dict:
            flat = traverse_util.flatten_dict(tree)
            return traverse_util.unflatten_dict(
                {k: jax.device_put(np.asarray(v, want[k].dtype), shardings[k]) for k, v in flat.items()})

        placed = {"adapters": {n: place(t) for n, t in adapters.items()}}
        if projection is not None:
            placed["projection"] = jax.device_put(jax.device_get(params["projection"]), replicated(mesh))
        return placed

    return BiEncoder(
        llm, lora, train, arch, projection, model, dim, key,
        init, encode_, tower_params, encode_pair, loss, frozen, calibrate, logit, export, load,
    )
