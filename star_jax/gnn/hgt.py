"""HGT-style heterogeneous multi-head attention over a fixed-shape `HeteroBatch` graph.

The Heterogeneous Graph Transformer convolution (Hu et al., WWW 2020, section 3), with PyG's
`HGTConv` (torch_geometric 2.8) as the numerical reference; `HGTConv` gives the equations and where
it differs from PyG. Parameters carry the type and relation names: `kqv_<type>`, `out_<type>`,
`skip_<type>`, `att_<relation>`, `msg_<relation>` (both [heads, D, D]) and `prior_<relation>`
(μ, [heads]). `dtype` sets the compute dtype (e.g. bfloat16); logits, softmax and aggregation stay
in float32 and parameters are float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from star_jax.graph.batch import Layout

# Finite, so a receiver whose incoming edges are all masked gets a uniform softmax over them (then
# zeroed) instead of exp(-inf - -inf) = NaN.
MASKED_LOGIT = -1e9


def relation_matrix_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """LeCun-normal per head: shape [heads, D_in, D_out], fan-in D_in."""
    return nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))(key, shape, dtype)


class HGTConv(nn.Module):
    """One HGT layer on the typed blocks of a `HeteroBatch` graph.

    For a receiver t of type τ(t), a sender s of type τ(s), an edge e of relation φ(e) and head i
    (F = heads · D channels):

        K_i(s), Q_i(t), V_i(s) = heads of kqv_{τ}(H[s or t])             one Dense(3F) per node type
        att_i(e) = (K_i(s) W_att[φ, i]) · Q_i(t) · μ[φ, i] / √D
        α_i(e)   = softmax of att_i over *every* valid incoming edge of t, across all relations
        H̃[t]     = ‖_i Σ_e α_i(e) · V_i(s) W_msg[φ, i]
        out[t]   = out_{τ(t)}(GELU(H̃[t]))                                 exact (erf) GELU, as torch
        H'[t]    = σ(skip_τ) · out[t] + (1 − σ(skip_τ)) · H[t]            only when in_dim == F

    Where this layer differs from PyG, on purpose:
      - a node type that no relation reaches keeps its input unchanged (PyG drops it from the output
        dict). Real nodes of a reached type that have no valid incoming edge get H̃ = 0, exactly as
        in PyG;
      - optional dropout on out[t] before the gated skip (the HGT reference code's place for it;
        PyG has none). With `deterministic=True` or rate 0 the layer is PyG's;
      - edge masks: invalid edges (sampler misses and padding) are dropped from the softmax with
        `jnp.where`; PyG simply never sees them. Edge weights are ignored, as in PyG and the paper.

    Call with `x = {type: [cap_t, in_dim_t]}` covering every `layout.node_types` block, the batch's
    `jraph.GraphsTuple` (flat sender/receiver indices, `edges["mask"]`) and its `Layout`.
    Returns `{type: [cap_t, dim]}` (or the unchanged input for types that no relation reaches).
    """

    dim: int  # output channels F, split into `heads` heads of D = F // heads
    heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32  # compute dtype of the projections

    @nn.compact
    def __call__(
        self,
        x: Mapping[str, jax.Array],
        graph: jraph.GraphsTuple,
        layout: Layout,
        *,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        if self.dim % self.heads:
            raise ValueError(f"HGTConv: dim {self.dim} is not divisible by heads {self.heads}")
        heads, d = self.heads, self.dim // self.heads

        k, q, v = {}, {}, {}
        for t in layout.node_types:
            kqv = nn.Dense(3 * self.dim, dtype=self.dtype, name=f"kqv_{t}")(x[t])
            # PyG splits the 3F output into contiguous K | Q | V thirds, each head-major.
            k[t], q[t], v[t] = jnp.moveaxis(kqv.reshape(-1, 3, heads, d), 1, 0)

        logits, messages = [], []
        for name, src, dst in layout.relations:
            att = self.param(f"att_{name}", relation_matrix_init, (heads, d, d))
            msg = self.param(f"msg_{name}", relation_matrix_init, (heads, d, d))
            prior = self.param(f"prior_{name}", nn.initializers.ones, (heads,))
            es = layout.edge_slice(name)  # a relation's edges: a static slice of the flat arrays
            send = graph.senders[es] - layout.node_slice(src).start  # local to the sender block
            recv = graph.receivers[es] - layout.node_slice(dst).start
            # Relation matrices at node level on the sender block ([cap_s, H, D] x [H, D, D]), never
            # per edge ([E, H, D, D]) (docs/architecture.md decision 5).
            k_rel = jnp.einsum("nhd,hde->nhe", k[src], att.astype(self.dtype))
            v_rel = jnp.einsum("nhd,hde->nhe", v[src], msg.astype(self.dtype))
            score = jnp.einsum("ehd,ehd->eh", q[dst][recv], k_rel[send], preferred_element_type=jnp.float32)
            logits.append(score * prior / math.sqrt(d))
            messages.append(v_rel[send])

        num_nodes = layout.num_nodes
        valid = graph.edges["mask"][:, None]
        # One softmax and one aggregation over every relation's edges together.
        logits = jnp.where(valid, jnp.concatenate(logits), MASKED_LOGIT)  # [E, H]
        alpha = jraph.segment_softmax(logits, graph.receivers, num_nodes)
        alpha = jnp.where(valid, alpha, 0.0)
        weighted = jnp.concatenate(messages).astype(jnp.float32) * alpha[..., None]  # [E, H, D]
        aggregated = jraph.segment_sum(weighted, graph.receivers, num_nodes).reshape(num_nodes, self.dim)

        receiving = {dst for _, _, dst in layout.relations}
        out = {}
        for t in layout.node_types:
            if t not in receiving:
                out[t] = x[t]
                continue
            h = nn.gelu(aggregated[layout.node_slice(t)], approximate=False).astype(self.dtype)
            h = nn.Dense(self.dim, dtype=self.dtype, name=f"out_{t}")(h)
            h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
            if x[t].shape[-1] == self.dim:
                gate = jax.nn.sigmoid(self.param(f"skip_{t}", nn.initializers.ones, ()))
                h = gate * h.astype(jnp.float32) + (1.0 - gate) * x[t].astype(jnp.float32)
            out[t] = h
        return out
