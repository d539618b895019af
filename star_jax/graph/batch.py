"""The fixed-shape heterogeneous batch that the sampler produces and the GNN consumes.

One jraph `GraphsTuple` holds every sampled node and edge (docs/architecture.md, decision 5): nodes
sit in contiguous per-type blocks, each ending in a padding node; edges sit in contiguous
per-relation blocks in message direction (`sender_type` slots -> `receiver_type` slots). Masks are
booleans, applied with `jnp.where`, never by multiplication (NaN * 0 is NaN). A `Layout` depends
only on the config (batch size, negatives, fan-outs), never on the data, so XLA compiles the train
step once; it is hashable and travels as a static argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jraph
import numpy as np


@dataclass(frozen=True)
class Layout:
    node_types: tuple[str, ...]
    node_capacity: tuple[int, ...]  # slots per type, the padding node included
    relations: tuple[tuple[str, str, str], ...]  # (name, sender_type, receiver_type), message direction
    edge_capacity: tuple[int, ...]  # slots per relation
    num_pairs: int  # B: positive (member, job) pairs per batch
    num_negatives: int  # K: shared random negative jobs per batch
    # Per node type (node_types order), the names of its categorical columns (batch.cat's last
    # axis); a name's codes mean the same value in every type (graph.hetero.shared_codes).
    cat_columns: tuple[tuple[str, ...], ...] = ()

    @property
    def num_nodes(self) -> int:
        return sum(self.node_capacity)

    @property
    def num_edges(self) -> int:
        return sum(self.edge_capacity)

    def node_slice(self, node_type: str) -> slice:
        i = self.node_types.index(node_type)
        start = sum(self.node_capacity[:i])
        return slice(start, start + self.node_capacity[i])

    def pad_node(self, node_type: str) -> int:
        """Flat index of the padding node of `node_type`'s block (its last slot).

        A padded edge goes from the sender block's padding node to the receiver block's, so
        `jraph.segment_softmax` over receivers never sees an empty real segment.
        """
        return self.node_slice(node_type).stop - 1

    def edge_slice(self, relation: str) -> slice:
        i = [r[0] for r in self.relations].index(relation)
        start = sum(self.edge_capacity[:i])
        return slice(start, start + self.edge_capacity[i])

    def node_type_ids(self) -> np.ndarray:
        """int32 [num_nodes]: the type index of every slot."""
        return np.repeat(np.arange(len(self.node_types), dtype=np.int32), self.node_capacity)

    def edge_type_ids(self) -> np.ndarray:
        """int32 [num_edges]: the relation index of every edge slot."""
        return np.repeat(np.arange(len(self.relations), dtype=np.int32), self.edge_capacity)


class HeteroBatch(NamedTuple):
    """One training or inference batch. Shapes are fixed by the `Layout`.

    N = layout.num_nodes, E = layout.num_edges, B = layout.num_pairs, K = layout.num_negatives,
    cap_t = the node capacity of type t.
    """

    graph: jraph.GraphsTuple
    # graph.nodes = {"mask": bool[N], "known": bool[N]}     real sampled node or padding; known:
    #                                                       a real node with a training-period
    #                                                       interaction (not cold-start)
    # graph.edges = {"mask": bool[E], "weight": f32[E]}    weight is 1.0 where the data has none
    # graph.senders, graph.receivers: int32[E]             flat node indices
    # graph.n_node = int32[1] (N), graph.n_edge = int32[1] (E), graph.globals = None
    node_ids: dict[str, np.ndarray]  # type -> int64[cap_t]: the node table's `id`, -1 padding
    llm: dict[str, np.ndarray]  # type -> f32[cap_t, D]: stored LLM embeddings (member and job only)
    cat: dict[str, np.ndarray]  # type -> int32[cap_t, C_t]: categorical codes, 0 = missing/padding
    member_seeds: np.ndarray  # int32[B]: flat node index of each pair's member
    job_seeds: np.ndarray  # int32[B]: flat node index of each pair's job
    neg_jobs: np.ndarray  # int32[K]: flat node index of each shared negative job
    pair_mask: np.ndarray  # bool[B]: real pair (False for batch padding)
    labels: np.ndarray  # f32[B]: 1 for an apply; evaluation batches also carry 0-labelled pairs
