"""The data stage: the data-directory contract (docs/data_format.md) and its readers and checks, the
synthetic marketplace and its signal baselines, the tokenizer and the grain input pipelines."""
