"""The LLM stage: a Flax Mistral equal to transformers' `MistralModel`, HF checkpoint I/O, and LoRA
adapters with PEFT's semantics (exported to and imported from PEFT's on-disk format)."""

from star_jax.config import LoraConfig, MistralConfig
from star_jax.llm.hf_io import load_lm_head, load_mistral, read_config, save_mistral
from star_jax.llm.lora import export_peft, import_peft, init_lora, merge_lora
from star_jax.llm.mistral import MistralModel, abstract_variables, lm_logits, sequence_lengths

__all__ = [
    "LoraConfig",
    "MistralConfig",
    "MistralModel",
    "abstract_variables",
    "export_peft",
    "import_peft",
    "init_lora",
    "lm_logits",
    "load_lm_head",
    "load_mistral",
    "merge_lora",
    "read_config",
    "save_mistral",
    "sequence_lengths",
]
