"""Our LoRA for frozen encoders: one LoRALinear, injected by module name, saved in PEFT's format."""
from .adapter import load_adapter, read_adapter_config, save_adapter
from .config import LoRAConfig
from .inject import (cast_frozen, count_trainable, fuse_shared_inputs, inject_lora, lora_layers, lora_parameters,
                     lora_targets, merge_lora, unmerge_lora)
from .layer import LoRALinear, SharedInput

__all__ = [
    "LoRAConfig", "LoRALinear", "SharedInput", "inject_lora", "fuse_shared_inputs", "cast_frozen", "count_trainable",
    "merge_lora", "unmerge_lora", "lora_layers", "lora_parameters", "lora_targets", "save_adapter", "load_adapter",
    "read_adapter_config",
]
