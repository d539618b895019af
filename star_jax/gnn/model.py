"""STAR's GNN: a heterogeneous attention encoder with an in-batch link-prediction decoder.

STAR (arXiv 2507.09797) feeds the stored LLM embeddings of members and jobs, learned ID embeddings
and categorical features into a multi-head attention GNN over the member/job/company/skill/title
graph and exports 200-d embeddings; the paper gives no layer-level detail, so the choices here are
docs/architecture.md decisions 5, 6, 14, 17 and 27. Encoder: per node type the sum of the enabled input
parts (`GNNConfig.use_llm/use_id/use_cat`), `layers` x [`HGTConv` -> LayerNorm per type], a
per-type projection plus the attribute skips, and for members and jobs the LLM block (or the summed
LLM skip) and the attribute block beside it, to `out_dim`. Decoder (LinkSAGE's, arXiv
2402.13430, plus K shared random negatives): sigmoid BCE on `scale * <member_i, job_j> + bias`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.config import GNNConfig
from star_jax.errors import StarError
from star_jax.gnn.hgt import HGTConv
from star_jax.graph.batch import HeteroBatch, Layout

Params = dict[str, Any]  # {"encoder": Flax params, "decoder": {"log_scale": f32[], "bias": f32[]}}
Metrics = dict[str, jax.Array]

LLM_TYPES = ("member", "job")  # the node types whose text the LLM towers embed


def hash_ids(ids: jax.Array, buckets: int) -> jax.Array:
    """Bucket of each node id: MurmurHash3's 32-bit finaliser of the id's low 32 bits, mod `buckets`.

    Without 64-bit JAX, int64 ids arrive as their low 32 bits; that is enough for up to 2^32 nodes
    per type. Consecutive ids land in unrelated buckets, so collisions are not clustered.
    """
    x = ids.astype(jnp.uint32)
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return (x % jnp.uint32(buckets)).astype(jnp.int32)


def shared_orthogonal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """An initializer of f32[n, D, k]: one orthonormal D x k map, the same for all n (the LLM block's
    member and job maps before train-gnn sets them)."""
    return jnp.broadcast_to(nn.initializers.orthogonal()(key, shape[1:]), shape)


def unit(x: jax.Array) -> jax.Array:
    """Each row of `x` L2-normalised (a zero row stays zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


def batch_llm_dim(batch: HeteroBatch) -> int:
    """The width of the batch's stored LLM vectors."""
    return next(iter(batch.llm.values())).shape[-1]


def cat_rows(codes: jax.Array, buckets: int) -> jax.Array:
    """Embedding row of each categorical code: 0 stays 0 (missing); codes >= buckets wrap onto 1.."""
    return jnp.where(codes > 0, 1 + (codes - 1) % (buckets - 1), 0).astype(jnp.int32)


def attribute_columns(types: list[str], cats: list[str]) -> tuple[str, ...]:
    """The attribute block's table names (`gnn.attribute_block`): one per attribute node type a
    member or job links to, one per categorical column both have (`cat_<name>`), and a constant."""
    return (*sorted(types), *(f"cat_{c}" for c in sorted(cats)), "bias")


def attribute_table_size(name: str, buckets: int, cat_buckets: int) -> int:
    """The rows of the attribute block's table `name` (`attribute_columns`)."""
    return 1 if name == "bias" else cat_buckets if name.startswith("cat_") else buckets


def attribute_table_rows(name: str, values: jax.Array, buckets: int, cat_buckets: int) -> jax.Array:
    """The rows of table `name` that node ids (or, for `cat_*`, categorical codes) `values` read."""
    if name.startswith("cat_"):
        return cat_rows(values, cat_buckets)
    return hash_ids(values, buckets)


def check_batch(batch: HeteroBatch, layout: Layout, cfg: GNNConfig) -> None:
    """Shape checks at trace time: a batch that does not match its `Layout` fails in one line."""

    def expect(name: str, shape: tuple[int, ...], want: tuple[int, ...]) -> None:
        if tuple(shape) != want:
            raise StarError(f"{name}: shape {tuple(shape)} does not match the layout, expected {want}")

    expect("batch.graph.senders", batch.graph.senders.shape, (layout.num_edges,))
    expect("batch.graph.receivers", batch.graph.receivers.shape, (layout.num_edges,))
    expect("batch.graph.edges['mask']", batch.graph.edges["mask"].shape, (layout.num_edges,))
    expect("batch.graph.nodes['mask']", batch.graph.nodes["mask"].shape, (layout.num_nodes,))
    expect("batch.graph.nodes['known']", batch.graph.nodes["known"].shape, (layout.num_nodes,))
    for t, cap in zip(layout.node_types, layout.node_capacity):
        expect(f"batch.node_ids[{t!r}]", batch.node_ids[t].shape, (cap,))
        if t in batch.llm:
            expect(f"batch.llm[{t!r}]", batch.llm[t].shape[:1], (cap,))
        if t in batch.cat:
            expect(f"batch.cat[{t!r}]", batch.cat[t].shape[:1], (cap,))
    for name, want in (
        ("member_seeds", layout.num_pairs),
        ("job_seeds", layout.num_pairs),
        ("pair_mask", layout.num_pairs),
        ("labels", layout.num_pairs),
        ("neg_jobs", layout.num_negatives),
    ):
        expect(f"batch.{name}", getattr(batch, name).shape, (want,))
    if cfg.use_llm:
        for t in LLM_TYPES:
            if t in layout.node_types and t not in batch.llm:
                raise StarError(f"batch.llm[{t!r}]: missing, but gnn.use_llm is true")


def column_names(layout: Layout, node_type: str, n: int) -> tuple[str, ...]:
    """The categorical column names of `node_type` (positions when the layout carries none)."""
    if layout.cat_columns:
        names = layout.cat_columns[layout.node_types.index(node_type)]
        if len(names) == n:
            return names
    return tuple(f"{node_type}_{c}" for c in range(n))


def attribute_bags(
    h: dict[str, jax.Array], batch: HeteroBatch, layout: Layout
) -> dict[str, dict[str, jax.Array]]:
    """{member/job type: {attribute type: f32[cap, hidden]}}: the mean input vector of each node's
    sampled neighbours of that attribute type (skill, title, company), zero where it has none."""
    flat = jnp.concatenate([h[t] for t in layout.node_types])
    g = batch.graph
    out: dict[str, dict[str, jax.Array]] = {}
    for name, src, dst in layout.relations:
        if dst not in LLM_TYPES or src in LLM_TYPES:
            continue
        es, block = layout.edge_slice(name), layout.node_slice(dst)
        mask = g.edges["mask"][es]
        # A relation's edges, padded ones included, all end in its receiver type's block.
        receivers, size = g.receivers[es] - block.start, block.stop - block.start
        total = jax.ops.segment_sum(jnp.where(mask[:, None], flat[g.senders[es]], 0.0), receivers, size)
        count = jax.ops.segment_sum(mask.astype(jnp.float32), receivers, size)
        mean = total / jnp.maximum(count, 1.0)[:, None]
        prev = out.setdefault(dst, {}).get(src)
        out[dst][src] = mean if prev is None else prev + mean
    return out


class GNNEncoder(nn.Module):
    """Node inputs -> `layers` HGT layers -> per-type projection to `out_dim` (module docstring)."""

    config: GNNConfig

    @nn.compact
    def __call__(
        self, batch: HeteroBatch, layout: Layout, *, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        node_mask = batch.graph.nodes["mask"]
        h = {}
        tables: dict[str, nn.Module] = {}  # categorical tables (with shared_cat, one per column name)
        columns: dict[str, dict[str, jax.Array]] = {}  # type -> column name -> f32[cap, cat_dim]
        for t, cap in zip(layout.node_types, layout.node_capacity):
            parts = []
            if cfg.use_llm and t in batch.llm:
                # LLM part (member, job): a Dense of the layer-normalised stored embedding; the norm
                # makes the projection indifferent to the store's scale (unit-norm E5 vectors have
                # components ~1/64) and puts it on the same footing as the ID part.
                llm = nn.LayerNorm(name=f"llm_norm_{t}")(jnp.asarray(batch.llm[t], jnp.float32))
                parts.append(nn.Dense(cfg.hidden_dim, dtype=dtype, name=f"llm_{t}")(llm))
            if cfg.use_id:
                # ID part: LiGNN's ID embeddings, hash-bucketed so the table does not grow with the
                # graph. With `cold_start_ids: drop` a member or job with no training apply gets none
                # (`known` false): its row was never trained, or is another node's. Seeds made cold by
                # `gnn_train.cold_start_rate` lose theirs too, so the encoder learns to embed a node
                # from its content and attributes alone (DropoutNet).
                rows = hash_ids(batch.node_ids[t], cfg.id_buckets)
                ids = nn.Embed(cfg.id_buckets, cfg.hidden_dim, name=f"id_{t}")(rows)
                if cfg.cold_start_ids == "drop":
                    ids = jnp.where(batch.graph.nodes["known"][layout.node_slice(t), None], ids, 0.0)
                parts.append(ids)
            if cfg.use_cat and t in batch.cat and batch.cat[t].shape[-1] > 0:
                # Categorical part: one table per column (code 0 = missing, embedded as zeros),
                # concatenated and projected; with `shared_cat` one table per column name, shared
                # by the types that have it (their codes share a vocabulary).
                codes = batch.cat[t]
                names = column_names(layout, t, codes.shape[-1])
                cols = []
                for c, name in enumerate(names):
                    key = name if cfg.shared_cat else f"{t}_{c}"  # the table's name after `cat_`
                    if key not in tables:
                        tables[key] = nn.Embed(cfg.cat_buckets, cfg.cat_dim, name=f"cat_{key}")
                    rows = cat_rows(codes[:, c], cfg.cat_buckets)
                    cols.append(jnp.where(codes[:, c, None] > 0, tables[key](rows), 0.0))
                    columns.setdefault(t, {})[name] = cols[-1]
                parts.append(
                    nn.Dense(cfg.hidden_dim, dtype=dtype, name=f"cat_proj_{t}")(jnp.concatenate(cols, -1))
                )
            if not parts:  # no enabled part: a learned type embedding
                embedding = self.param(f"type_{t}", nn.initializers.normal(1.0), (cfg.hidden_dim,))
                parts.append(jnp.broadcast_to(embedding, (cap, cfg.hidden_dim)))
            x = sum(p.astype(jnp.float32) for p in parts)
            h[t] = jnp.where(node_mask[layout.node_slice(t), None], x, 0.0)

        bags = attribute_bags(h, batch, layout) if cfg.attribute_skip else {}

        # HGT's gated skip, then a layer norm as in the HGT reference code (`use_norm=True`; PyG's
        # HGTConv has none). Dropout sits on each layer's output projection.
        for layer in range(cfg.layers):
            h = HGTConv(cfg.hidden_dim, cfg.heads, cfg.dropout, dtype, name=f"hgt_{layer}")(
                h, batch.graph, layout, deterministic=deterministic
            )
            h = {
                t: nn.LayerNorm(name=f"norm_{layer}_{t}")(h[t].astype(jnp.float32)) for t in layout.node_types
            }

        out = {}
        block = cfg.llm_block if cfg.use_llm else 0
        attribute = {}
        llm_skip = cfg.use_llm and cfg.llm_skip and not block
        if block:
            # Fixed affine maps (one per LLM_TYPES entry) and a gain, none of them trained by the
            # GNN's loss. train-gnn sets the maps (set_llm_block_map, gnn.llm_block_fit) to the
            # stored vectors' principal directions or to a bilinear form fitted on the labelled
            # train pairs; the gain is 0 while the graph part trains and is set on val afterwards
            # (gnn_train.llm_block_gains).
            llm_map = self.param("llm_block_map", shared_orthogonal,
                                 (len(LLM_TYPES), batch_llm_dim(batch), block))
            llm_shift = self.param("llm_block_shift", nn.initializers.zeros, (len(LLM_TYPES), block))
            llm_gain = jax.lax.stop_gradient(self.param("llm_gain", nn.initializers.zeros, ()))
        shared_columns = sorted(set.intersection(*(set(columns.get(t, {})) for t in LLM_TYPES)))
        if cfg.attribute_block:
            # Fixed tables summed over each member's and job's attributes, set by train-gnn to a
            # bilinear form fitted on the labelled train pairs (gnn.attribute_block); its gain, like
            # the LLM block's, is 0 while the graph part trains and is set on val afterwards.
            attribute = self.attribute_block(batch, layout, shared_columns)
            attribute_gain = jax.lax.stop_gradient(self.param("attribute_gain", nn.initializers.zeros, ()))
        # The graph part of a member's or job's output: what the blocks leave of out_dim.
        width = cfg.out_dim - block - (cfg.attribute_block if attribute else 0)
        llm_out = None
        if llm_skip:
            # LLM skip: ONE Dense shared by members and jobs keeps (up to scale) the member-job inner
            # product the bi-encoder trained to predict applies, so the score can use the towers'
            # similarity directly. Zero at the start (ReZero-style): as a random projection it
            # outweighed the untrained graph part (docs/architecture.md decision 6).
            llm_out = nn.Dense(width, dtype=dtype, kernel_init=nn.initializers.zeros, name="llm_out")
        if cfg.attribute_skip and cfg.shared_cat and shared_columns:
            # The member's and job's embeddings of the columns both have (seniority, location,
            # industry), through one map: the score sees "same city", "one level up" directly.
            cat_out = nn.Dense(width, dtype=dtype, use_bias=False, name="attribute_out_cat")
            cat_skip = {t: cat_out(jnp.concatenate([columns[t][c] for c in shared_columns], -1))
                        for t in LLM_TYPES if t in layout.node_types}
        else:
            cat_skip = {}
        attribute_out = {
            s: nn.Dense(width, dtype=dtype, use_bias=False, name=f"attribute_out_{s}")
            for s in sorted({s for per_type in bags.values() for s in per_type})
        }
        for t in layout.node_types:
            blocked = block and t in batch.llm
            z = nn.Dense(width if blocked or t in attribute else cfg.out_dim, dtype=dtype,
                         name=f"proj_{t}")(h[t])
            z = z.astype(jnp.float32)
            if llm_out is not None and t in batch.llm:
                z = z + llm_out(jnp.asarray(batch.llm[t], jnp.float32)).astype(jnp.float32)
            if t in cat_skip:
                z = z + cat_skip[t].astype(jnp.float32)
            for s, bag in bags.get(t, {}).items():
                # One map per attribute type, shared by members and jobs: <W a, W b> tracks <a, b>, so
                # the score sees the overlap of the two nodes' skills, titles and companies directly.
                z = z + attribute_out[s](bag).astype(jnp.float32)
            if blocked or t in attribute:
                parts = [unit(z)]
                if blocked:
                    x = jnp.asarray(batch.llm[t], jnp.float32)
                    side = LLM_TYPES.index(t)
                    parts.append(llm_gain * unit(jax.lax.stop_gradient(x @ llm_map[side] + llm_shift[side])))
                if t in attribute:
                    parts.append(attribute_gain * unit(attribute[t]))
                z = jnp.concatenate(parts, -1)
            if cfg.normalize:  # cosine geometry downstream; the loss cannot be lowered by inflating norms
                z = unit(z)
            out[t] = z
        return out

    def attribute_block(self, batch: HeteroBatch, layout: Layout,
                        shared_columns: list[str]) -> dict[str, jax.Array]:
        """{member/job type: f32[cap, attribute_block]}: the sum of fixed table rows over each node's
        sampled attribute neighbours and its codes of the shared columns, plus a constant; the
        tables are set by train-gnn (set_attribute_tables) and get no gradient."""
        cfg, g = self.config, batch.graph
        types = sorted({src for _, src, dst in layout.relations if dst in LLM_TYPES and src not in LLM_TYPES})
        tables = {name: jax.lax.stop_gradient(self.param(
            f"attribute_block_{name}", nn.initializers.zeros,
            (len(LLM_TYPES), attribute_table_size(name, cfg.attribute_block_buckets, cfg.cat_buckets),
             cfg.attribute_block)))
            for name in attribute_columns(types, shared_columns)}

        def rows(name: str, values: jax.Array) -> jax.Array:
            return attribute_table_rows(name, values, cfg.attribute_block_buckets, cfg.cat_buckets)

        out = {}
        for t in LLM_TYPES:
            if t not in layout.node_types:
                continue
            side, block = LLM_TYPES.index(t), layout.node_slice(t)
            size = block.stop - block.start
            total = jnp.broadcast_to(tables["bias"][side, 0], (size, cfg.attribute_block))
            for name, src, dst in layout.relations:
                if dst != t or src not in types:
                    continue
                es = layout.edge_slice(name)
                ids = jnp.asarray(batch.node_ids[src])[g.senders[es] - layout.node_slice(src).start]
                mask = g.edges["mask"][es] & (ids >= 0)
                vec = jnp.where(mask[:, None], tables[src][side][rows(src, ids)], 0.0)
                total = total + jax.ops.segment_sum(vec, g.receivers[es] - block.start, size)
            names = column_names(layout, t, batch.cat[t].shape[-1]) if t in batch.cat else ()
            for c in shared_columns:
                codes = batch.cat[t][:, names.index(c)]
                vec = tables[f"cat_{c}"][side][rows(f"cat_{c}", codes)]
                total = total + jnp.where(codes[:, None] > 0, vec, 0.0)
            out[t] = total
        return out


# ---------------------------------------------------------------------------------------------
# Decoder and loss: pure functions of embeddings and the batch, testable on their own.


def link_logits(member: jax.Array, jobs: jax.Array, decoder: dict[str, jax.Array]) -> jax.Array:
    """[B, d] x [B + K, d] -> [B, B + K] logits, scale * dot + bias.

    `scale` (stored as its log) and `bias` are learned, as in SigLIP: cosines in [-1, 1] need a
    temperature to reach confident logits, and the bias absorbs the 1 : (B + K - 1) imbalance.
    """
    return jnp.exp(decoder["log_scale"]) * (member @ jobs.T) + decoder["bias"]


def link_targets(batch: HeteroBatch, layout: Layout) -> tuple[jax.Array, jax.Array]:
    """Targets f32[B, B + K] (the pair label on the diagonal, else 0) and the valid mask bool[B, B + K].

    Column j < B is pair j's job, column B + k the k-th shared negative. An entry is valid when its
    row is a real pair, its column a real job, and it is either the diagonal or not a known
    positive of the row's member (a pair of the same member with label 1 and the same job id).
    """
    b = layout.num_pairs
    member_ids = jnp.asarray(batch.node_ids["member"])[batch.member_seeds - layout.node_slice("member").start]
    columns = jnp.concatenate([batch.job_seeds, batch.neg_jobs])
    job_ids = jnp.asarray(batch.node_ids["job"])[columns - layout.node_slice("job").start]
    pair_mask = jnp.asarray(batch.pair_mask)
    labels = jnp.asarray(batch.labels, jnp.float32)

    positive = pair_mask & (labels > 0)  # [B]
    member_positive = (member_ids[:, None] == member_ids[None, :]) & positive[None, :]  # [B row, B pair]
    same_job = job_ids[:b, None] == job_ids[None, :]  # [B pair, B + K column]
    known_positive = (member_positive.astype(jnp.float32) @ same_job.astype(jnp.float32)) > 0

    diagonal = jnp.eye(b, b + layout.num_negatives, dtype=bool)
    real_column = jnp.concatenate([pair_mask, batch.graph.nodes["mask"][batch.neg_jobs]])
    mask = pair_mask[:, None] & real_column[None, :] & (diagonal | ~known_positive)
    targets = jnp.where(diagonal, labels[:, None], 0.0)
    return targets, mask


def link_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, negatives_weight: float | None = None
) -> tuple[jax.Array, Metrics]:
    """Sigmoid BCE with ranking diagnostics.

    `negatives_weight` None: the mean over every valid entry. A number w: the mean over the valid
    diagonal entries (the batch's labelled pairs) plus w times the mean over the valid off-diagonal
    ones (in-batch and shared random negatives), so the B labelled pairs are not outweighed
    B + K - 1 to 1 by the easy negatives (docs/quality.md).
    """
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    if negatives_weight is None:
        loss = jnp.where(mask, bce, 0.0).sum() / jnp.maximum(mask.sum(), 1)
    else:
        diagonal = jnp.eye(*mask.shape, dtype=bool)
        pairs, others = mask & diagonal, mask & ~diagonal
        loss = jnp.where(pairs, bce, 0.0).sum() / jnp.maximum(pairs.sum(), 1) + negatives_weight * (
            jnp.where(others, bce, 0.0).sum() / jnp.maximum(others.sum(), 1)
        )

    positive = mask & (targets > 0)
    negative = mask & (targets <= 0)
    pos_rows = positive.any(-1)
    best_negative = jnp.max(jnp.where(negative, logits, -jnp.inf), -1)
    pos_logit = jnp.max(jnp.where(positive, logits, -jnp.inf), -1)
    metrics = {
        "loss": loss,
        "pos_logit": jnp.where(positive, logits, 0.0).sum() / jnp.maximum(positive.sum(), 1),
        "neg_logit": jnp.where(negative, logits, 0.0).sum() / jnp.maximum(negative.sum(), 1),
        # share of positive pairs that outscore every valid negative of their row
        "top1": jnp.where(pos_rows, pos_logit > best_negative, False).sum() / jnp.maximum(pos_rows.sum(), 1),
    }
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# The model as pure functions over (params, batch, layout).


class GNN(NamedTuple):
    """Pure functions of one `GNNConfig`; `layout` is always a static (hashable) argument.

    init(rng, batch, layout) -> params
    encode(params, batch, layout, rng=None) -> {type: f32[cap_t, out_dim]}   (dropout iff rng)
    seed_embeddings(params, batch, layout, rng=None) -> (f32[B, out_dim], f32[B + K, out_dim])
    loss_fn(params, batch, layout, rng) -> (loss, metrics)
    """

    config: GNNConfig
    init: Callable[[jax.Array, HeteroBatch, Layout], Params]
    encode: Callable[..., dict[str, jax.Array]]
    seed_embeddings: Callable[..., tuple[jax.Array, jax.Array]]
    loss_fn: Callable[[Params, HeteroBatch, Layout, jax.Array], tuple[jax.Array, Metrics]]


def build_gnn(cfg: GNNConfig) -> GNN:
    """The encoder, decoder and loss for `cfg` as pure functions (see `GNN`)."""
    cfg.check()  # again: a config changed in code after it was built
    encoder = GNNEncoder(cfg)
    # One jitted init per GNN: compiling the initialisers is the slow part on CPU, so keep the cache.
    init_encoder = jax.jit(encoder.init, static_argnums=2)

    def init(rng: jax.Array, batch: HeteroBatch, layout: Layout) -> Params:
        check_batch(batch, layout, cfg)
        variables = init_encoder(rng, batch, layout)
        decoder = {
            "log_scale": jnp.asarray(np.log(cfg.init_logit_scale), jnp.float32),
            "bias": jnp.asarray(cfg.init_logit_bias, jnp.float32),
        }
        return {"encoder": variables["params"], "decoder": decoder}

    def encode(params: Params, batch: HeteroBatch, layout: Layout, rng: jax.Array | None = None) -> dict:
        check_batch(batch, layout, cfg)
        rngs = None if rng is None else {"dropout": rng}
        return encoder.apply(
            {"params": params["encoder"]}, batch, layout, deterministic=rng is None, rngs=rngs
        )

    def seed_embeddings(
        params: Params, batch: HeteroBatch, layout: Layout, rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        emb = encode(params, batch, layout, rng)
        member = emb["member"][batch.member_seeds - layout.node_slice("member").start]
        jobs = emb["job"][jnp.concatenate([batch.job_seeds, batch.neg_jobs]) - layout.node_slice("job").start]
        return member, jobs

    def loss_fn(
        params: Params, batch: HeteroBatch, layout: Layout, rng: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        member, jobs = seed_embeddings(params, batch, layout, rng if cfg.dropout > 0 else None)
        logits = link_logits(member, jobs, params["decoder"])
        targets, mask = link_targets(batch, layout)
        loss, metrics = link_loss(logits, targets, mask, cfg.negatives_weight)
        metrics["logit_scale"] = jnp.exp(params["decoder"]["log_scale"])
        return loss, metrics

    return GNN(cfg, init, encode, seed_embeddings, loss_fn)


GAIN_PARAMS = {"llm": "llm_gain", "attribute": "attribute_gain"}  # output block -> its gain's parameter


def set_block_gains(params: Params, gains: dict[str, float]) -> Params:
    """`params` with the gains of the output blocks named in `gains` (`GAIN_PARAMS`: `gnn.llm_block`,
    `gnn.attribute_block`) set."""
    enc = dict(params["encoder"])
    for name, gain in gains.items():
        enc[GAIN_PARAMS[name]] = jnp.asarray(gain, jnp.float32)
    return {**params, "encoder": enc}


def set_attribute_tables(params: Params, tables: dict[str, np.ndarray]) -> Params:
    """`params` with the attribute block's fixed tables (`gnn.attribute_block`) set, by name."""
    enc = dict(params["encoder"])
    for name, table in tables.items():
        key = f"attribute_block_{name}"
        if key not in enc or enc[key].shape != table.shape:
            want = enc[key].shape if key in enc else "no such table"
            raise StarError(f"gnn.attribute_block: table {name} of shape {table.shape} for {want}")
        enc[key] = jnp.asarray(table, jnp.float32)
    return {**params, "encoder": enc}


def set_llm_block_map(params: Params, kernel: np.ndarray, shift: np.ndarray) -> Params:
    """`params` with the LLM block's fixed maps (`gnn.llm_block`) set: node type `LLM_TYPES[i]`'s
    block is `x @ kernel[i] + shift[i]`, kernel f32[2, D, block], shift f32[2, block]."""
    enc = params["encoder"]
    want = (enc["llm_block_map"].shape, enc["llm_block_shift"].shape)
    if (kernel.shape, shift.shape) != want:
        raise StarError(f"gnn.llm_block: a map of shapes {kernel.shape}, {shift.shape} for a block of {want}")
    return {**params, "encoder": {**enc, "llm_block_map": jnp.asarray(kernel, jnp.float32),
                                  "llm_block_shift": jnp.asarray(shift, jnp.float32)}}


# ---------------------------------------------------------------------------------------------
# Optimisation: which weights decay (the optimizer itself is star_jax.train_loop's).


def decay_mask(params: Params) -> Any:
    """Weight decay on matrices (Dense kernels, relation matrices) only: not on biases, norms,
    priors, gates, the decoder's scale/bias, embedding tables (hashed rows that a batch does not
    touch would otherwise shrink every step) or the LLM and attribute blocks' fixed maps (they get no
    gradient)."""

    def wants_decay(path: tuple, leaf: jax.Array) -> bool:
        key = str(getattr(path[-1], "key", ""))
        fixed = key == "llm_block_map" or key.startswith("attribute_block_")
        return leaf.ndim >= 2 and key != "embedding" and not fixed

    return jax.tree_util.tree_map_with_path(wants_decay, params)
