"""train/model.py's loading: whatever dtype a checkpoint stores, the run gets fp32 weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.tiny import train_args
from train.__main__ import main
from train.model import load_pretrained


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_checkpoint_stored_in_half_precision_loads_in_fp32_and_trains(tiny_model_dir, tiny_data_dir, tmp_path, dtype):
    # transformers 5 keeps the stored dtype; without the cast a CPU run stopped in LayerNorm ("mixed dtype")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    half = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, dtype=dtype).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(half)
    stored, _ = load_pretrained(str(half), 4, ["a", "b", "c", "d"])
    assert {p.dtype for p in stored.parameters()} == {torch.float32}
    assert main(train_args(half, tiny_data_dir, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"] >= 0.8  # as the fp32 model learns it
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
