"""benchmarks/variants.py: what the tuned reference changes, and the engine contestant (our fast recipe in PEFT)."""
import pytest
import torch


def test_tuned_reference_groups_by_length_and_uses_bf16_only_where_native(monkeypatch):
    import benchmarks.variants as reference

    monkeypatch.setattr(reference, "cpu_has_bf16", lambda: False)
    plain = reference.tuned_arguments(torch.device("cpu"))
    assert "bf16" not in plain and (plain.get("train_sampling_strategy") == "group_by_length"
                                    or plain.get("group_by_length") is True)
    monkeypatch.setattr(reference, "cpu_has_bf16", lambda: True)
    assert {"bf16": True, "use_cpu": True}.items() <= reference.tuned_arguments(torch.device("cpu")).items()


def test_tuned_reference_leaves_cudnn_out_of_sdpa_on_cuda_as_ours_does(monkeypatch):
    import benchmarks.variants as reference

    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    assert reference.tuned_kernels(torch.device("cpu")) == {} and calls == []
    assert reference.tuned_kernels(torch.device("cuda")) == {"cudnn_sdpa": False} and calls == [False]


@pytest.mark.parametrize("model_type", ["roberta", "mpnet"])
def test_the_engine_contestant_trains_our_fast_recipe_in_peft(tmp_path, model_type):
    """Same layers, targets (in the model's own names), rank and linear head as `python -m train --recipe fast`:
    the same trainable count, and a frozen head dense layer that is the identity."""
    pytest.importorskip("peft")
    from helpers.shipping import make_family_dir
    from helpers.tiny import CLASSES

    from benchmarks.variants import model_for, variant_recipe
    from train.config import TrainConfig
    from train.model import load_pretrained
    from train.model import resolve
    from train.config import recipe

    encoder = make_family_dir(tmp_path / "m", model_type, layers=3)
    fast = variant_recipe("engine")
    assert (fast["epochs"], fast["use_rslora"]) == (recipe("fast")["epochs"], recipe("fast")["use_rslora"])
    peft_model, layers = model_for(str(encoder), CLASSES, 0, fast, "eager")
    cfg = TrainConfig.from_flat({**recipe("fast"), "model": str(encoder)})
    ours, _ = load_pretrained(str(encoder), 4, CLASSES)
    resolved, rows = resolve(cfg, ours, 32)
    assert layers == [1, 2] and sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == sum(
        v for _, v in rows)
    lora = next(m for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict))
    assert lora.scaling["default"] == pytest.approx(resolved.lora.scaling)  # rsLoRA's alpha/sqrt(r) in both
    dense = peft_model.base_model.model.classifier.dense
    assert torch.equal(dense.weight, torch.eye(64)) and not dense.weight.requires_grad
