"""The LLM stage: a Flax Mistral equal to transformers' `MistralModel`, HF checkpoint I/O, LoRA
adapters with PEFT's semantics and file format, and the member/job bi-encoder built on them."""

from star_jax.config import LoraConfig, MistralConfig
from star_jax.llm.hf_io import load_lm_head, load_mistral, read_config, save_mistral
from star_jax.llm.lora import merge_lora
from star_jax.llm.mistral import MistralModel, abstract_variables, init_lora, lm_logits, sequence_lengths
from star_jax.llm.peft_io import export_peft, import_peft

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
