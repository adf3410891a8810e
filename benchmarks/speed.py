"""Training-step and inference speed of our LoRA against PEFT and against the no-LoRA floor.

roberta-base shapes with random weights (nothing downloaded). All contestants start from deep copies
of one model and see the very same batch; their steps run interleaved (one round = one step of each,
in rotating order) after a warm-up, and every figure quoted is a median of per-round ratios, because
the machine is shared and absolute times drift by tens of percent from minute to minute.

    python -m benchmarks.speed                      # CPU: fp32 + bf16 autocast, a few minutes
    python -m benchmarks.speed --device cuda --batch-size 32

The last printed line is one JSON object: the headline ratios, keyed by precision.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/peft import huggingface_hub

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR, interleave, machine_info, round_ratios, step_memory, sync, write_json
from benchmarks.report import speed_tables
from lora import LoRAConfig, cast_frozen, count_trainable, fuse, inject_lora, lora_layers, merge_lora
from train.config import RECIPES

EVAL = ("ours_merged", "peft_unmerged", "peft_merged")
# The default recipe's LoRA path (train's all-linear recipe): every Linear of each layer, at its rank ceiling,
# which roberta-base's 4 labels leave room for.
ALL_LINEAR = LoRAConfig(rank=RECIPES["all-linear"]["max_rank"], targets=RECIPES["all-linear"]["targets"])


def build_base(seed: int = 0, attention: str = "sdpa", model_dropout: float | None = None) -> nn.Module:
    """roberta-base (125M parameters) with random weights, 4 labels, `attention` ("sdpa" or "eager"), and its
    own dropout (0.1) unless `model_dropout` sets it (our recipes run with 0)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from train.device import set_model_dropout

    torch.manual_seed(seed)
    model = RobertaForSequenceClassification._from_config(RobertaConfig(num_labels=4), attn_implementation=attention)
    set_model_dropout(model, model_dropout)
    return model


def make_ours(base: nn.Module, config: LoRAConfig = LoRAConfig(), fused: bool = True) -> nn.Module:
    """Our LoRA, by default with LoRAConfig's defaults: rank 4, alpha 16, query/value, head trainable; on the
    fused path (lora.fuse) as python -m train runs it, or with `fused` False as LoRALinear's plain formula."""
    model = inject_lora(copy.deepcopy(base), config)
    if fused:
        fuse(model)
    return model


def make_peft(base: nn.Module) -> nn.Module:
    """PEFT's LoRA with the same rank, alpha, dropout and targets, head trained via modules_to_save."""
    from peft import LoraConfig, TaskType, get_peft_model

    c = LoRAConfig()
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=c.rank, lora_alpha=c.alpha, lora_dropout=c.dropout,
                        target_modules=list(c.targets), modules_to_save=["classifier"])
    return get_peft_model(copy.deepcopy(base), config)


def make_floor(base: nn.Module) -> nn.Module:
    """The frozen model without LoRA, gradients flowing through every layer, head trainable: the
    backward pass any LoRA must pay for, without LoRA's own work. No LoRA can beat it."""
    model = copy.deepcopy(base).requires_grad_(False)
    model.classifier.requires_grad_(True)
    # Frozen embeddings would stop autograd at the head; marking their output as needing grad makes
    # backward run through all 12 layers, as it must when every layer holds LoRA weights.
    model.roberta.embeddings.register_forward_hook(lambda module, args, out: out.requires_grad_())
    return model


def make_batch(batch_size: int, seq_len: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random full-length token ids (no padding: every contestant pays for every token) and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50265, (batch_size, seq_len), generator=g)  # ids 0-2 are special tokens
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 4, (batch_size,), generator=g).to(device)}


def autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of fresh autocast contexts: bf16 autocast, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model: nn.Module, batch: dict, amp: Callable) -> Callable[[], torch.Tensor]:
    """One full step: forward, backward, AdamW step, zero_grad. Returns the loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-4)

    def step() -> torch.Tensor:
        with amp():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    step.optimizer = opt  # for the memory account
    return step


def train_contestants(base: nn.Module, precision: str) -> dict[str, nn.Module]:
    """Ours (query/value r=4, and the all-linear r=6 path), PEFT and the floor, built fresh from `base`.
    Under bf16 ours and the floor hold their frozen weights in bf16 (lora.cast_frozen, our engine's bf16
    path; the floor too, so that it stays a floor); PEFT runs as its users run it."""
    models = {"ours": make_ours(base), "ours_all_linear": make_ours(base, ALL_LINEAR),
              "ours_all_linear_plain": make_ours(base, ALL_LINEAR, fused=False), "peft": make_peft(base),
              "floor": make_floor(base)}
    if precision == "bf16":
        for name in ("ours", "ours_all_linear", "ours_all_linear_plain", "floor"):
            cast_frozen(models[name], torch.bfloat16)
    return models


def bench_train(base: nn.Module, batch: dict, device: torch.device, precision: str,
                warmup: int, repeats: int) -> dict:
    """Interleaved training steps of every train_contestants model."""
    amp = autocast(device, precision)
    models = train_contestants(base, precision)
    steps = {name: train_step(m, batch, amp) for name, m in models.items()}
    # Sanity: B starts at zero and dropout draws the same masks, so the first losses must agree;
    # if they do not, the contestants are not computing the same thing and no timing means anything.
    first = {}
    for name, step in steps.items():
        torch.manual_seed(1)
        first[name] = float(step())
    wall, cpu = interleave(steps, max(warmup - 1, 0), repeats, device)
    pairs = ("ours/peft", "ours/floor", "peft/floor", "ours_all_linear/ours", "ours/ours_all_linear",
             "ours_all_linear/floor", "ours_all_linear/ours_all_linear_plain", "ours/ours_all_linear_plain")
    return {**round_ratios(wall, cpu, pairs, device), "cast_frozen": precision == "bf16",
            "first_loss": first,
            "trainable_params": {n: count_trainable(m) for n, m in models.items()},
            "memory": {n: step_memory(models[n], steps[n], device) for n in models}}


def eval_models(base: nn.Module) -> dict[str, nn.Module]:
    """Ours merged, PEFT unmerged and PEFT merge_and_unload, all holding the same non-zero adapter."""
    ours, peft_model = make_ours(base), make_peft(base)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, layer in lora_layers(ours):
            layer.lora_B.weight.normal_(0.0, 0.02)  # B = 0 would make every variant trivially equal
            target = peft_model.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_A.weight)
            target.lora_B["default"].weight.copy_(layer.lora_B.weight)
    peft_merged = copy.deepcopy(peft_model).merge_and_unload()
    return {"ours_merged": merge_lora(ours).eval(), "peft_unmerged": peft_model.eval(),
            "peft_merged": peft_merged.eval()}


def bench_eval(base: nn.Module, batch: dict, device: torch.device, precision: str,
               warmup: int, repeats: int) -> dict:
    """Interleaved inference_mode forwards of the three eval contestants on the same batch."""
    amp = autocast(device, precision)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def forward(model: nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.inference_mode(), amp():
                return model(**inputs).logits
        return run
    fns = {name: forward(m) for name, m in eval_models(base).items()}
    logits = {name: fn().float() for name, fn in fns.items()}
    wall, cpu = interleave(fns, max(warmup - 1, 0), repeats, device)
    # ours merged and PEFT merged do identical work: their ratio shows how noisy the run was.
    out = round_ratios(wall, cpu, ("peft_unmerged/ours_merged", "peft_merged/ours_merged",
                                "peft_unmerged/peft_merged"), device)
    n = batch["input_ids"].shape[0]
    out["examples_per_s"] = {k: n / t for k, t in out["median_seconds"].items()}
    # Sanity: merged or not, all three compute the same function (to rounding).
    out["max_logit_diff"] = max(float((logits[n] - logits["peft_unmerged"]).abs().max()) for n in EVAL)
    return out


def profile_step(base: nn.Module, batch: dict, device: torch.device, precision: str, rows: int = 15) -> None:
    """Print torch.profiler's top ops for one training step of each contestant (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    amp = autocast(device, precision)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, model in train_contestants(base, precision).items():
        step = train_step(model, batch, amp)
        step()
        with profile(activities=activities) as prof:
            step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n### profile: {name}, {precision}\n{prof.key_averages().table(sort_by=key, row_limit=rows)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32 and bf16 (autocast)")
    p.add_argument("--batch-size", type=int, help="default 4 on CPU, 32 on CUDA")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bf16-batch-size", type=int, help="default --batch-size, but 1 on a CPU without native "
                   "bf16, where autocast bf16 is emulated and ~40x slower than fp32")
    p.add_argument("--bf16-seq-len", type=int, help="default --seq-len, but 32 on such a CPU")
    p.add_argument("--repeats", type=int, help="timed rounds per measurement; default 7 on CPU, 20 on CUDA")
    p.add_argument("--warmup", type=int, help="untimed rounds first; default 1 on CPU, 3 on CUDA")
    p.add_argument("--threads", type=int, help="torch threads; default 1 on CPU (on a shared machine a second "
                   "thread waits on a core someone else holds: times swing 2x), torch's choice on CUDA")
    p.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                   help="the model's attention kernel (our recipes train with eager on CPU; default %(default)s)")
    p.add_argument("--model-dropout", type=float, help="dropout inside the model for every contestant (default: its "
                   "own, 0.1; our recipes run with 0)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables per contestant")
    p.add_argument("--out", type=Path, help="JSON path; default benchmarks/results/speed-{cpu,cuda}.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write its JSON, print the tables and, last, the headline JSON line."""
    p = parser()
    args = p.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    batch_size = args.batch_size or (32 if cuda else 4)
    repeats, warmup = args.repeats or (20 if cuda else 7), args.warmup or (3 if cuda else 1)
    machine = machine_info()
    slow_bf16 = not cuda and not machine["cpu_native_bf16"]
    shapes = {"fp32": (batch_size, args.seq_len),
              "bf16": (args.bf16_batch_size or (1 if slow_bf16 else batch_size),
                       args.bf16_seq_len or (32 if slow_bf16 else args.seq_len))}
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - set(shapes):
        p.error(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")

    base = build_base(attention=args.attention, model_dropout=args.model_dropout).to(device)
    result: dict = {"benchmark": "speed", "command": " ".join(["python -m benchmarks.speed", *sys.argv[1:]])
                    if argv is None else f"main({argv!r})", "device": device.type, "machine": machine,
                    "repeats": repeats, "warmup": warmup, "lora": LoRAConfig().__dict__,
                    "lora_all_linear": ALL_LINEAR.__dict__, "attention": args.attention,
                    "model_dropout": args.model_dropout, "precisions": {}}
    if slow_bf16 and "bf16" in precisions:
        result["note"] = ("this CPU has no native bf16 (no avx512_bf16/amx): bf16 autocast is emulated, far slower "
                          "than fp32, so bf16 runs at a smaller shape to finish in minutes")
    for precision in precisions:
        b, s = shapes[precision]
        batch = make_batch(b, s, device)
        print(f"[speed] {device.type} {precision}: batch {b} x seq {s}, {repeats} rounds", flush=True)
        result["precisions"][precision] = {"batch_size": b, "seq_len": s,
                                           "train": bench_train(base, batch, device, precision, warmup, repeats),
                                           "eval": bench_eval(base, batch, device, precision, warmup, repeats)}
        if args.profile:
            profile_step(base, batch, device, precision)
    result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    picks = {"step_ratio_vs_peft": ("train", "ours/peft"), "step_ratio_vs_floor": ("train", "ours/floor"),
             "eval_speedup_vs_peft_unmerged": ("eval", "peft_unmerged/ours_merged"),
             "all_linear_step_ratio_vs_query_value": ("train", "ours_all_linear/ours"),
             "fused_step_ratio_vs_plain": ("train", "ours_all_linear/ours_all_linear_plain")}
    result["headline"] = {key: {p: round(r[part]["ratio"][pair], 4) for p, r in result["precisions"].items()}
                          for key, (part, pair) in picks.items()}
    out = args.out or RESULTS_DIR / f"speed-{device.type}.json"
    write_json(out, result)
    print(speed_tables(result))
    print(f"\nwrote {out}")
    print(json.dumps(result["headline"]))
    return result


if __name__ == "__main__":
    main()
