"""The graph stage: the per-relation CSR graph (`hetero`), the fixed-shape batch (`batch`) and the
neighbour sampler that fills it (`sampler`)."""
