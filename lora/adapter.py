"""Adapter files in PEFT's format: adapter_model.safetensors + adapter_config.json.

Only safetensors and JSON are ever read, so loading an adapter never runs pickle.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from .config import LoRAConfig
from .inject import inject_lora, layer_index, lora_layers, lora_targets, name_matches

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped transformers model


def adapter_state_dict(model: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """PEFT key -> tensor, for every LoRA A/B weight and every parameter of `trainable_modules`."""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    state.update(_trainable_state(model, config))
    return state


def _trainable_state(model: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """PEFT key -> parameter, for every parameter inside a module of `config.trainable_modules`."""
    state = {}
    for name, param in model.named_parameters():
        module_path = name.rpartition(".")[0]
        if any(name_matches(p, config.trainable_modules) for p in _prefixes(module_path)):
            state[_PREFIX + name] = param
    return state


def stored_modules(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names of the modules an adapter stores whole (trainable_modules and saved_modules), none inside another."""
    patterns = config.trainable_modules + config.saved_modules
    names = [n for n, _ in model.named_modules() if n and name_matches(n, patterns)]
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]


def file_config(model: nn.Module, config: LoRAConfig) -> LoRAConfig:
    """The config the adapter file of `model` describes. Without saved_modules, `config` itself. With them,
    the file is in PEFT's own form: the stored modules become one modules_to_save list, and a LoRA layer inside
    one is merged into it, so its target leaves target_modules (PEFT never adapts a modules_to_save module)."""
    if not config.saved_modules:
        return config
    stored = stored_modules(model, config)
    outside = [n for n, _ in lora_layers(model) if not _inside(n, stored)]
    targets = tuple(t for t in config.targets if any(name_matches(n, (t,)) for n in outside))
    if not targets:
        raise ValueError(f"every LoRA layer is inside the stored modules {stored}: nothing is left to adapt")
    return replace(config, targets=targets, trainable_modules=tuple(stored), saved_modules=())


def file_state_dict(model: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """PEFT key -> tensor, as written to the file: LoRA A/B outside the stored modules, and every parameter of the
    stored modules, with the ΔW of a LoRA layer inside one merged into its weight (LoRA A/B themselves left out)."""
    if not config.saved_modules:
        return adapter_state_dict(model, config)
    stored = stored_modules(model, config)
    state = {}
    for name, layer in lora_layers(model):
        if not _inside(name, stored):
            state[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
            state[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    merged = {f"{n}.weight": m.merged_weight() for n, m in lora_layers(model) if _inside(n, stored)}
    for name, param in model.named_parameters():
        if _inside(name.rpartition(".")[0], stored) and ".lora_A." not in name and ".lora_B." not in name:
            state[_PREFIX + name] = merged.get(name, param)
    return state


def _inside(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _expected_shapes(model: nn.Module, config: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """PEFT key -> shape of the adapter `config` describes for `model`, without changing `model`."""
    if any(True for _ in lora_layers(model)):
        _check_layers_match(model, config)
        return {k: tuple(v.shape) for k, v in adapter_state_dict(model, config).items()}
    shapes = {}
    for name in lora_targets(model, config):
        linear = model.get_submodule(name)
        shapes[f"{_PREFIX}{name}.lora_A.weight"] = (config.rank, linear.in_features)
        shapes[f"{_PREFIX}{name}.lora_B.weight"] = (linear.out_features, config.rank)
    shapes.update({k: tuple(v.shape) for k, v in _trainable_state(model, config).items()})
    return shapes


def _check_layers_match(model: nn.Module, config: LoRAConfig) -> None:
    """Raise unless every LoRALinear in `model` is one `config` describes, with its rank and scaling."""
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("model has no LoRA layers; call inject_lora first")
    for name, layer in layers:
        if not name_matches(name, config.targets) or (
            config.layers is not None and layer_index(name) not in config.layers
        ):
            raise ValueError(f"LoRA layer {name} is not among the config's targets {list(config.targets)}"
                             + ("" if config.layers is None else f" in layers {list(config.layers)}"))
        if layer.rank != config.rank or not math.isclose(layer.scaling, config.scaling, rel_tol=1e-12):
            raise ValueError(f"LoRA layer {name} has rank {layer.rank} and scaling {layer.scaling:g}, "
                             f"the config says rank {config.rank} and scaling {config.scaling:g}")


def _prefixes(path: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']: every module that contains a parameter of `path`."""
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def peft_config_dict(config: LoRAConfig, base_model_name: str | None) -> dict:
    """adapter_config.json as PEFT writes it for a sequence classifier (fields we do not use are PEFT's defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "layers_to_transform": None if config.layers is None else list(config.layers),
        "modules_to_save": list(config.trainable_modules) or None,
        "bias": "none",
        "use_rslora": config.use_rslora,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def adapter_files(model: nn.Module, config: LoRAConfig, base_model_name: str | None = None) -> dict[str, bytes]:
    """The adapter as {file name: bytes}: WEIGHTS_NAME (safetensors) and CONFIG_NAME (JSON, utf-8), what
    save_adapter writes. With `config.saved_modules`, in the form `file_config` describes (what PEFT can load).
    For a caller that writes the files its own way (atomically, say).

    Args:
        model: the model with LoRA, trained.
        config: the LoRAConfig it was injected with; it must describe the model's LoRA layers exactly.
        base_model_name: written as base_model_name_or_path, where PEFT looks for the base.

    Raises ValueError when `config` does not describe the model's LoRA layers."""
    _check_layers_match(model, config)  # the JSON must describe the tensors actually written
    # Saved as trained (unmerged A/B); contiguous CPU copies because safetensors wants owned storage.
    with torch.no_grad():
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in file_state_dict(model, config).items()}
    text = json.dumps(peft_config_dict(file_config(model, config), base_model_name), indent=2) + "\n"
    return {WEIGHTS_NAME: save(tensors, metadata={"format": "pt"}), CONFIG_NAME: text.encode("utf-8")}


def save_adapter(model: nn.Module, directory: str | os.PathLike, config: LoRAConfig,
                 base_model_name: str | None = None) -> Path:
    """Write `adapter_files` into `directory`, plainly (as PEFT's save_pretrained does). Returns the directory.

    Args:
        model: the model with LoRA, trained.
        directory: where adapter_model.safetensors and adapter_config.json go (created if missing).
        config: the LoRAConfig it was injected with; it must describe the model's LoRA layers exactly.
        base_model_name: written as base_model_name_or_path, where PEFT looks for the base."""
    files = adapter_files(model, config, base_model_name)  # every check runs before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def read_adapter_config(directory: str | os.PathLike) -> tuple[LoRAConfig, dict]:
    """The LoRAConfig stored in `directory` (ours or PEFT's), and the raw JSON.

    Args:
        directory: holds adapter_config.json.

    Raises FileNotFoundError, or ValueError for an option we do not implement (DoRA, rank patterns, ...)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    raw = json.loads(path.read_text())
    # Options that change what the adapter computes and that we do not implement: refuse, never ignore.
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "layer_replication", "lora_bias",
                               "fan_in_fan_out", "exclude_modules", "trainable_token_indices", "target_parameters")
                   if raw.get(k)]
    unsupported += ["bias"] if raw.get("bias", "none") != "none" else []
    if raw.get("peft_type", "LORA") != "LORA" or unsupported or not isinstance(raw.get("target_modules"), list):
        raise ValueError(f"{path}: only plain LoRA adapters with a list of target_modules are supported"
                         + (f" (has {unsupported})" if unsupported else ""))
    layers = raw.get("layers_to_transform")
    config = LoRAConfig(
        rank=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0),
        targets=tuple(raw["target_modules"]),
        layers=None if layers is None else tuple([layers] if isinstance(layers, int) else layers),
        # PEFT adds "classifier" and "score" for SEQ_CLS whatever the model has; keep each once.
        trainable_modules=tuple(dict.fromkeys(raw.get("modules_to_save") or ())),
        use_rslora=bool(raw.get("use_rslora", False)),
    )
    return config, raw


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> tuple[nn.Module, LoRAConfig]:
    """Inject LoRA into a base `model` as the adapter's config says (or reuse LoRA already there, which
    must have the adapter's targets, rank and scaling) and load the adapter's weights.

    Every key and shape must match; the first one that does not (in sorted order) is named, and a
    refused adapter leaves `model` as it was: everything is checked before anything is changed.
    Returns (model, the LoRAConfig loaded).

    Args:
        model: the base model (a fresh one, or one with LoRA of the same shape, merged or not).
        directory: an adapter directory written by save_adapter or by PEFT (safetensors only: never pickle)."""
    config, _ = read_adapter_config(directory)
    # Keep only the trainable modules this model has ("score" is PEFT's guess for other architectures).
    present = tuple(t for t in config.trainable_modules
                    if any(name_matches(n, (t,)) for n, _ in model.named_modules()))
    config = LoRAConfig(**{**config.__dict__, "trainable_modules": present})
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory} (pickle files are never read)")
    loaded = load_file(str(weights))
    expected = _expected_shapes(model, config)
    for key in sorted(set(loaded) | set(expected)):
        if key not in expected:
            raise ValueError(f"adapter key {key} does not exist in the model")
        if key not in loaded:
            raise ValueError(f"adapter is missing key {key}")
        if tuple(loaded[key].shape) != expected[key]:
            raise ValueError(f"adapter key {key} has shape {tuple(loaded[key].shape)}, "
                             f"the model expects {expected[key]}")
    if not any(True for _ in lora_layers(model)):
        inject_lora(model, config)
    # A merged layer holds the old ΔW in its weight: unmerge, load, and merge the new ΔW back in.
    merged = [layer for _, layer in lora_layers(model) if layer.merged]
    for layer in merged:
        layer.unmerge()
    params = adapter_state_dict(model, config)
    with torch.no_grad():
        for key, tensor in loaded.items():
            params[key].copy_(tensor)
    for layer in merged:
        layer.merge()
    return model, config
