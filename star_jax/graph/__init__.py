"""The graph stage: the per-relation CSR graph (`hetero`, built by `build_cli`), its copy in
TensorStore (`tstore`, read in place through `tsarray`), the fixed-shape batch (`batch`) and the
neighbour sampler that fills it (`sampler`)."""
