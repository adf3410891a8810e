"""What PEFT + Hugging Face Trainer trains in each of the race's Trainer contestants (benchmarks/reference.py
runs them): the reference recipe as specified and tuned, our fast recipe in PEFT (the engine alone), and full
fine-tuning (the ceiling)."""
from __future__ import annotations

import torch

from train.device import avoid_cudnn_attention, cpu_has_bf16
from train.config import RECIPES

RECIPE = {"r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "value"],
          "modules_to_save": ["classifier"], "learning_rate": 4e-4, "label_smoothing_factor": 0.1,
          "lr_scheduler_type": "cosine", "batch_size": 32, "max_length": 128, "seed": 0}
VARIANTS = ("specified", "tuned", "engine", "ceiling")


def variant_recipe(variant: str) -> dict:
    """What Trainer trains for `variant`: the reference's RECIPE, our fast recipe's settings (engine), or full
    fine-tuning (ceiling). Targets are roles; the model's own names are resolved when it is loaded."""
    if variant in ("specified", "tuned"):
        return dict(RECIPE, warmup_ratio=0.0, weight_decay=0.0, top_layers=None, head="full", model_dropout=None)
    if variant == "ceiling":
        return dict(RECIPE, r=None, learning_rate=2e-5, warmup_ratio=0.06, weight_decay=0.01, top_layers=None,
                    head="full", model_dropout=None)
    fast = RECIPES["fast"]
    # rank and layers as our planner resolves them on the model (model_for): "auto" and a share of the layers
    return dict(RECIPE, r=fast["rank"], lora_alpha=fast["alpha"], lora_dropout=fast["dropout"],
                use_rslora=fast.get("use_rslora", False), ours="fast",
                target_modules=list(fast["targets"]), top_layers=fast["top_layers"], head=fast["head"],
                learning_rate=fast["lr"], warmup_ratio=fast["warmup_ratio"], weight_decay=fast["weight_decay"],
                label_smoothing_factor=fast["label_smoothing"], epochs=fast["epochs"],
                model_dropout=fast["model_dropout"])


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 is a real speedup here: CUDA with bf16 support, or a CPU with AVX512-BF16/AMX
    (decided by train.device.cpu_has_bf16, the same check our app's --precision auto makes)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def tuned_arguments(device: torch.device) -> dict:
    """The TrainingArguments a strong PEFT + Trainer user adds: length-grouped sampling (the argument's
    name depends on the transformers version) and bf16 where the device has it natively."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    extra = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names
             else {"group_by_length": True})
    if native_bf16(device):
        extra["bf16"] = True
        if device.type == "cpu":
            extra["use_cpu"] = True  # Trainer refuses bf16 on CPU unless told the CPU is the device
    return extra


def tuned_kernels(device: torch.device) -> dict:
    """The tuned reference's kernel choices, process-wide: on CUDA, SDPA without cuDNN, as our app runs
    (train.device.avoid_cudnn_attention says why). Returns what it set, for the result."""
    if device.type != "cuda":
        return {}
    avoid_cudnn_attention()
    return {"cudnn_sdpa": False}


def model_for(model_path: str, names: list[str], seed: int, recipe: dict, attention: str | None):
    """The contestant's model: the encoder with a new head for `names`, wrapped by PEFT with the recipe's LoRA
    (its roles resolved to the model's own module names, in its top layers when it says so), or bare for
    full fine-tuning. Returns (model, the LoRA layers it adapts or None)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, set_seed

    from train.config import TrainConfig
    from train.device import set_model_dropout
    from train.families import resolve_targets
    from train.families import head_modules
    from train.model import apply_head
    set_seed(seed)  # before the model exists, so the new classifier head is the same every run
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, **({"attn_implementation": attention} if attention else {})
    ).float()  # fp32 master weights, whatever the checkpoint stores
    set_model_dropout(model, recipe["model_dropout"])  # a Trainer user's hidden/attention_probs_dropout_prob=0
    if recipe["r"] is None:
        return model, None
    rank, layers = recipe["r"], None
    if recipe.get("ours"):  # our recipe: the rank and layers our planner picks for this model
        from train.config import recipe as ours
        from train.model import resolve

        lora = resolve(TrainConfig.from_flat({**ours(recipe["ours"]), "model": model_path}), model, 32)[0].lora
        rank = lora.rank
        layers = list(lora.layers) if lora.layers is not None else None
    targets = list(resolve_targets(model, tuple(recipe["target_modules"]), layers and tuple(layers)))
    saved = list(recipe["modules_to_save"])
    if recipe["head"] == "linear":  # only the head's output layer trains; its dense layer, frozen, is the identity
        apply_head(TrainConfig(head="linear"), model)
        saved = [head_modules(model)[0]]
    peft_model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=recipe["lora_alpha"], use_rslora=recipe.get("use_rslora", False),
        lora_dropout=recipe["lora_dropout"], target_modules=targets, layers_to_transform=layers,
        modules_to_save=saved))
    if recipe["head"] == "linear":  # PEFT adds the whole `classifier` for SEQ_CLS: keep its dense layer frozen
        out = saved[0].rpartition(".")[2]
        for name, param in peft_model.named_parameters():
            if param.requires_grad and "lora_" not in name and f".{out}." not in name:
                param.requires_grad_(False)
    return peft_model, layers
