"""Adapter files in PEFT's format: adapter_model.safetensors + adapter_config.json.

Only safetensors and JSON are ever read, so loading an adapter never runs pickle.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import LoRAConfig
from .inject import inject_lora, lora_layers, name_matches

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped transformers model


def adapter_state_dict(model: nn.Module, config: LoRAConfig) -> dict[str, torch.Tensor]:
    """PEFT key -> tensor, for every LoRA A/B weight and every parameter of `trainable_modules`."""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"{_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    for name, param in model.named_parameters():
        module_path = name.rpartition(".")[0]
        if any(name_matches(p, config.trainable_modules) for p in _prefixes(module_path)):
            state[_PREFIX + name] = param
    return state


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


def save_adapter(model: nn.Module, directory: str | os.PathLike, config: LoRAConfig,
                 base_model_name: str | None = None) -> Path:
    """Write the adapter to `directory`, each file atomically (temp file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Saved as trained (unmerged A/B); contiguous CPU copies because safetensors wants owned storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter_state_dict(model, config).items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, path, metadata={"format": "pt"}))
    text = json.dumps(peft_config_dict(config, base_model_name), indent=2) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda path: Path(path).write_text(text))
    return directory


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_adapter_config(directory: str | os.PathLike) -> tuple[LoRAConfig, dict]:
    """The LoRAConfig stored in `directory` (ours or PEFT's), and the raw JSON."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    raw = json.loads(path.read_text())
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "layer_replication") if raw.get(k)]
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
    """Inject LoRA into a base `model` as the adapter's config says (or reuse LoRA already there)
    and load the adapter's weights. Every key and shape must match; the first one that does not is named."""
    config, _ = read_adapter_config(directory)
    # Keep only the trainable modules this model has ("score" is PEFT's guess for other architectures).
    present = tuple(t for t in config.trainable_modules
                    if any(name_matches(n, (t,)) for n, _ in model.named_modules()))
    config = LoRAConfig(**{**config.__dict__, "trainable_modules": present})
    if not any(True for _ in lora_layers(model)):
        inject_lora(model, config)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    loaded = load_file(str(weights))
    expected = adapter_state_dict(model, config)
    for key in sorted(set(loaded) | set(expected)):
        if key not in expected:
            raise ValueError(f"adapter key {key} does not exist in the model")
        if key not in loaded:
            raise ValueError(f"adapter is missing key {key}")
        if loaded[key].shape != expected[key].shape:
            raise ValueError(f"adapter key {key} has shape {tuple(loaded[key].shape)}, "
                             f"the model expects {tuple(expected[key].shape)}")
    with torch.no_grad():
        for key, tensor in loaded.items():
            expected[key].copy_(tensor)
    return model, config
