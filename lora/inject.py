"""Put LoRALinear into a model by module name, freeze the rest, and find it again."""
from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from .config import LoRAConfig
from .layer import LoRALinear

# PEFT's default layers_pattern: the index after "layer"/"layers"/"h"/"blocks" in a module path.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)(?:\.|$)")


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """PEFT's rule for target_modules and modules_to_save: exact name, or a dotted suffix of it."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def layer_index(name: str) -> int | None:
    """The encoder layer a module lives in, or None for modules outside the layer stack."""
    found = _LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def lora_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names of the nn.Linear modules that `config` adapts, in model order, without changing `model`.

    Args:
        model: the model to look in.
        config: its targets (PEFT's suffix rule) and layers (None: all) say which Linears.

    Raises ValueError naming a target that matches none (in `config.layers`, when given): a misspelt or
    foreign name never adapts silently less."""
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if config.layers is not None:
        present = {layer_index(n) for n in linears} - {None}
        missing = sorted(set(config.layers) - present)
        if missing:
            raise ValueError(f"layers {missing} are not in the model, which has layers {sorted(present)}")
    names = [
        n for n in linears
        if name_matches(n, config.targets)
        and (config.layers is None or layer_index(n) in config.layers)
    ]
    idle = [t for t in config.targets if not any(name_matches(n, (t,)) for n in names)]
    if idle:
        raise ValueError(f"no nn.Linear in the model matches target{'s' * (len(idle) > 1)} {', '.join(idle)}"
                         + ("" if config.layers is None else f" in layers {list(config.layers)}"))
    return names


def inject_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replace each targeted nn.Linear with a LoRALinear, in place, and freeze all but LoRA and
    `config.trainable_modules` (`saved_modules` stay frozen). Returns the model.

    Args:
        model: a transformers model (or any nn.Module) without LoRA layers.
        config: what to adapt (targets, layers), how (rank, alpha, dropout, rsLoRA), and what else trains.

    Raises ValueError, leaving the model untouched, when a target, layer or module name matches nothing."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers; inject into a fresh model")
    names = lora_targets(model, config)
    trainable = [n for n, _ in model.named_modules() if n and name_matches(n, config.trainable_modules)]
    missing = [t for t in config.trainable_modules if not any(name_matches(n, (t,)) for n in trainable)]
    if missing:
        raise ValueError(f"trainable_modules {missing} match no module in the model")
    modules = [n for n, _ in model.named_modules() if n]
    unsaved = [t for t in config.saved_modules if not any(name_matches(n, (t,)) for n in modules)]
    if unsaved:
        raise ValueError(f"saved_modules {unsaved} match no module in the model")
    overlap = [n for n in names if name_matches(n, config.trainable_modules)
               or any(n.startswith(t + ".") for t in trainable)]
    if overlap:
        raise ValueError(f"{overlap[0]} is both a LoRA target and inside trainable_modules; pick one")

    model.requires_grad_(False)
    for name in trainable:
        model.get_submodule(name).requires_grad_(True)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoRALinear.from_linear(getattr(parent, attr), config)
        setattr(parent, attr, layer)
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, layer) for every LoRALinear in `model`, in model order.

    Args:
        model: any module, with or without LoRA."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def count_trainable(model: nn.Module) -> int:
    """Number of scalars that require grad.

    Args:
        model: any module (after inject_lora: LoRA A/B plus the trainable modules)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter that requires grad, by name: a snapshot that load_trainable puts back."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy a trainable_state snapshot back into `model`'s parameters of those names."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its layer and put plain nn.Linear back, in place: the stock model, with
    nothing of LoRA left (transformers, ONNX). Returns the same model, frozen.

    Args:
        model: a model with LoRA layers, merged or not (each keeps LoRALinear.merged_weight())."""
    for name, layer in list(lora_layers(model)):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(layer.merged_weight())
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, linear.train(layer.training))
    return model.requires_grad_(False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRALinear (idempotent): W holds W + ΔW until unmerge_lora. Returns the model.

    Args:
        model: a model with LoRA layers; for inference, where one matmul per layer is faster."""
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Unmerge every LoRALinear, restoring base weights bit for bit (idempotent). Returns the model.

    Args:
        model: a model with LoRA layers, merged or not."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def fuse(model: nn.Module) -> nn.Module:
    """Run every LoRALinear's unmerged forward on the fused path (LoRALinear.fused): the same outputs and
    gradients from one autograd.Function per layer. Returns the model.

    Args:
        model: a model with LoRA layers; parameters, state dict and merging are unchanged."""
    for _, layer in lora_layers(model):
        layer.fused = True
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Put every LoRALinear back on the plain formula (undoes fuse). Returns the model.

    Args:
        model: a model with LoRA layers, fused or not."""
    for _, layer in lora_layers(model):
        layer.__dict__.pop("fused", None)  # back to the class default, as inject_lora leaves it
    return model


@torch.no_grad()
def cast_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold every frozen Linear weight and bias (LoRALinear bases included) in `dtype`, in place.
    Returns the model.

    Under autocast, a Linear whose weight is not a trainable leaf gets cast anew at every call, in the
    forward and for backward; a weight already in the autocast dtype is used as is. So call this once,
    after .to(device), with the autocast dtype, and run the model under that autocast from then on.
    Left as they are: LoRA A/B (the adapter is saved and updated in float32), everything trainable,
    LayerNorm (autocast runs layer_norm in float32 and would cast a low-precision weight back up at
    every call) and embeddings (a lookup is not cast by autocast, so a low-precision table would only
    round the embeddings before the float32 LayerNorm and make nothing faster).

    Args:
        model: a model with LoRA injected, on its device.
        dtype: the autocast dtype the model will run under (torch.bfloat16 or torch.float16)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"cast_frozen needs a floating-point dtype, got {dtype!r}")
    adapters = {id(m) for _, layer in lora_layers(model) for m in (layer.lora_A, layer.lora_B)}
    for module in model.modules():
        if not isinstance(module, (nn.Linear, LoRALinear)) or id(module) in adapters:
            continue
        # A merged layer is cast as its base and merged again, so its weight is rounded once, from W + ΔW.
        merged = isinstance(module, LoRALinear) and module.merged
        if merged:
            module.unmerge()
        for name in ("weight", "bias"):
            param = getattr(module, name)
            if param is not None and not param.requires_grad:
                param.data = param.data.to(dtype)  # the same Parameter object, so references stay valid
        if merged:
            module.merge()
    return model
