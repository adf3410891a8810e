"""Our LoRA for frozen encoders: one LoRALinear, injected by module name, saved in PEFT's format.

    from lora import LoRAConfig, adapter_files, fuse, inject_lora, load_adapter, merge_and_unload, save_adapter

    model = inject_lora(model, LoRAConfig(rank=4, targets=("query", "value")))
    fuse(model)                                    # optional: the same formula in one autograd.Function per layer
    # train it, then:
    save_adapter(model, "adapter/", config)       # loads in PeftModel.from_pretrained too
    adapter_files(model, config)                   # the same two files as {name: bytes}, for the caller to write
    merge_and_unload(model)                        # a stock model again, W + ΔW in its Linears
"""
from .adapter import adapter_files, load_adapter, read_adapter_config, save_adapter
from .config import LoRAConfig
from .inject import (cast_frozen, count_trainable, fuse, inject_lora, load_trainable, lora_layers, lora_targets,
                     merge_and_unload, merge_lora, trainable_state, unfuse, unmerge_lora)
from .layer import LoRALinear

__all__ = [
    "LoRAConfig", "LoRALinear", "inject_lora", "lora_targets", "lora_layers", "count_trainable", "merge_lora",
    "unmerge_lora", "merge_and_unload", "fuse", "unfuse", "cast_frozen", "adapter_files", "save_adapter",
    "load_adapter", "read_adapter_config", "trainable_state", "load_trainable",
]
