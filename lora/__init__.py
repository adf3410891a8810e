"""Our LoRA for frozen encoders: one LoRALinear, injected by module name, saved in PEFT's format.

    from lora import LoRAConfig, inject_lora, save_adapter, load_adapter, merge_and_unload

    model = inject_lora(model, LoRAConfig(rank=4, targets=("query", "value")))   # train it, then:
    save_adapter(model, "adapter/", config)       # loads in PeftModel.from_pretrained too
    merge_and_unload(model)                        # a stock model again, W + ΔW in its Linears
"""
from .adapter import load_adapter, read_adapter_config, save_adapter
from .config import LoRAConfig
from .inject import (cast_frozen, count_trainable, inject_lora, lora_layers, lora_parameters, lora_targets,
                     merge_and_unload, merge_lora, unmerge_lora)
from .layer import LoRALinear

__all__ = [
    "LoRAConfig", "LoRALinear", "inject_lora", "lora_targets", "lora_layers", "lora_parameters", "count_trainable",
    "merge_lora", "unmerge_lora", "merge_and_unload", "cast_frozen", "save_adapter", "load_adapter",
    "read_adapter_config",
]
