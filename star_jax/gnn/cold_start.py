"""Cold-start simulation for `train-gnn` (`gnn_train.cold_start_rate`, after DropoutNet, Volkovs et
al., NeurIPS 2017): training seeds that lose their own applies and ID embedding, as held-out
nodes without training applies have neither."""

from __future__ import annotations

from typing import Any

import numpy as np

from star_jax.graph.batch import HeteroBatch
from star_jax.graph.hetero import reverse_name
from star_jax.graph.sampler import NeighborSampler


class ColdStartSampler:
    """A `NeighborSampler` whose seeds lose their own interaction edges with probability `rate`.

    Each member and job seed of a batch turns cold with probability `rate`: the hop-1 edges of the
    target relation (and its reverse) into it are dropped, exactly the edges a cold node lacks,
    while its other neighbours, and their own applies, stay; its ID embedding is withheld (`known`
    false, as for a real cold node: star_jax.gnn.model). Dropped edges become padding edges
    (masked, pointing at the padding nodes), as the sampler writes a missing draw. The extra draws
    come from the batch's own random stream, so batches stay a pure function of their index.
    """

    def __init__(self, sampler: NeighborSampler, rate: float):
        self.sampler, self.rate = sampler, float(rate)
        self.cfg, self.layout = sampler.cfg, sampler.layout
        L, target = sampler.layout, sampler.cfg.target_relation
        self._cuts = [  # (edge slice, receiver type, receiver block start, sender pad, receiver pad)
            (L.edge_slice(name), dst, L.node_slice(dst).start, L.pad_node(src), L.pad_node(dst))
            for name, src, dst in L.relations if name in (target, reverse_name(target))
        ]

    def sample(self, seeds: Any, rng: np.random.Generator) -> HeteroBatch:
        batch = self.sampler.sample(seeds, rng)
        L, whole, part = self.layout, self.sampler.global_layout, self.sampler.seed_positions
        # drawn for the whole batch, so a part of it (NeighborSampler's `parts`) turns the same seeds cold
        cold = {"member": (rng.random(whole.num_pairs) < self.rate)[part("member")],
                "job": (rng.random(whole.num_pairs + whole.num_negatives) < self.rate)[part("job")]}
        g = batch.graph
        senders, receivers, mask = g.senders.copy(), g.receivers.copy(), g.edges["mask"].copy()
        for es, dst, start, pad_sender, pad_receiver in self._cuts:
            slot = receivers[es] - start
            n = cold[dst].shape[0]
            drop = (slot < n) & cold[dst][np.minimum(slot, n - 1)]
            idx = es.start + np.flatnonzero(drop)
            senders[idx], receivers[idx], mask[idx] = pad_sender, pad_receiver, False
        known = g.nodes["known"].copy()
        for t in ("member", "job"):  # a simulated cold seed loses its ID embedding too
            known[L.node_slice(t).start + np.flatnonzero(cold[t])] = False
        graph = g._replace(senders=senders, receivers=receivers, edges={**g.edges, "mask": mask},
                           nodes={**g.nodes, "known": known})
        return batch._replace(graph=graph)
