"""Where and how fast a step runs: the device, the autocast precision, the attention kernel, and the pretrained
model's own dropout (a large share of a CPU step: the recipes turn it off), and the library versions a run records.
torchrun's process group is train/distributed.py's."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .errors import UserError


def avoid_cudnn_attention() -> None:
    """Take cuDNN out of SDPA's CUDA kernels, for the whole process. torch sends padding-masked bf16 attention
    to cuDNN first on Hopper, and cuDNN builds a plan for every new (batch, length) shape; length-grouped batches
    bring a new shape every few steps, so steps stall on plan building (benchmarks/results/speed-cuda.md).
    Flash and memory-efficient attention build nothing per shape."""
    torch.backends.cuda.enable_cudnn_sdp(False)


def pick_device(name: str) -> torch.device:
    """The device `--device` names ("auto": CUDA when there is one); on CUDA, see avoid_cudnn_attention."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: nothing this program can train or score on
        raise UserError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here")
    if device.type == "cuda":
        avoid_cudnn_attention()
    return device


def cpu_has_bf16() -> bool:
    """bf16 matmul instructions (AVX512-BF16 or AMX), where bf16 autocast is a real speedup."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 on a CPU is slow and loses accuracy (no fp16 matmul units); use "
                        + ("--precision bf16 (native on this CPU)" if cpu_has_bf16() else "--precision fp32"))
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def forward_batch_size(device: torch.device) -> int:
    """Examples per forward-only batch (evaluation, the frozen prefix, scoring) when none is given: on CPU 32,
    whose activations stay in cache (faster than 128 in benchmarks/results/); on a GPU 128, which a small batch
    would leave idle."""
    return 32 if device.type == "cpu" else 128


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or nothing for plain fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def set_model_dropout(model: nn.Module, p: float | None) -> None:
    """Set every dropout of the pretrained model (hidden states, attention probabilities, head) to `p`,
    modules and config alike; None leaves the model's own. LoRA's dropout (a LoRALinear's) is not touched."""
    if p is None:
        return
    from lora import LoRALinear

    lora_dropouts = {id(m.dropout) for m in model.modules() if isinstance(m, LoRALinear)}
    for m in model.modules():
        if isinstance(m, nn.Dropout) and id(m) not in lora_dropouts:
            m.p = p
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)


def pick_attention(attention: str, device: torch.device) -> str:
    """The attention kernel to train with. On CPU, SDPA's fused backward is far slower than its forward under
    bf16 autocast; transformers' eager attention (matmul, softmax, matmul) computes the same thing without that
    cost. Forward-only passes (the frozen prefix, evaluation) use SDPA whatever this says: see
    inference_attention."""
    if attention != "auto":
        return attention
    return "eager" if device.type == "cpu" else "sdpa"


@contextmanager
def inference_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, `model` attends with SDPA, the fastest forward-only kernel on CPU and CUDA;
    after it, with the kernel it had (the training one). A model without SDPA (MPNet) keeps its own."""
    old = model.config._attn_implementation
    if old == "sdpa" or not hasattr(model, "set_attn_implementation") or not getattr(model, "_supports_sdpa", False):
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def versions() -> dict:
    """torch, transformers and project versions, and the git commit of the code when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"torch": torch.__version__, "transformers": version("transformers"), "roberta-lora": None}
    try:
        found["roberta-lora"] = version("roberta-lora")
    except PackageNotFoundError:
        pass
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        found["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        found["git_commit"] = None
    return found
