"""inject_lora on whole models: parameter counts, freezing, merge equivalence, errors, BERT, layer subsets."""
import copy

import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification

from lora import (LoRAConfig, LoRALinear, count_trainable, inject_lora, lora_layers, lora_targets, merge_lora,
                  unmerge_lora)


def roberta_base_on_meta() -> RobertaForSequenceClassification:
    """roberta-base shapes (vocab 50265, 12 layers of 768) with a 4-way head; random, no download.
    Built on the meta device: the real shapes without allocating (or initialising) 125M floats,
    and a parameter count depends on shapes only."""
    with torch.device("meta"):
        return RobertaForSequenceClassification(RobertaConfig(num_labels=4))


@pytest.mark.parametrize("rank, expected", [(4, 741_124), (8, 888_580), (11, 999_172)])
def test_trainable_count_on_roberta_base_shapes(rank, expected):
    model = roberta_base_on_meta()
    total = sum(p.numel() for p in model.parameters())
    inject_lora(model, LoRAConfig(rank=rank))
    assert count_trainable(model) == expected
    assert sum(1 for _ in lora_layers(model)) == 24  # query and value in each of 12 layers
    assert sum(p.numel() for p in model.parameters()) == total + rank * (768 + 768) * 24  # base kept, A/B added
    assert expected < 1_000_000


def test_injected_model_is_identical_to_base_at_init(tiny_roberta, batch):
    base = tiny_roberta(torch.float64)
    model = inject_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                           base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)


def test_only_lora_and_head_require_grad_and_base_survives_adamw(tiny_roberta, batch, randomize):
    model = randomize(inject_lora(tiny_roberta(), LoRAConfig(rank=4, alpha=8)))
    lora_ids = {id(p) for _, layer in lora_layers(model) for p in (layer.lora_A.weight, layer.lora_B.weight)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, p in model.named_parameters() if id(p) in lora_ids or n.startswith("classifier.")}
    assert trainable == expected and len(lora_ids) == 8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # all params, on purpose
    model.train()
    model(**batch).loss.backward()
    optimizer.step()

    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and not torch.equal(param, before[name]), name
        else:
            assert param.grad is None, name
            assert torch.equal(param, before[name]), name


def test_merge_matches_unmerged_logits_in_float64(tiny_roberta, batch, randomize):
    base = tiny_roberta(torch.float64)
    model = randomize(inject_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8)))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base_weights = {n: layer.weight.detach().clone() for n, layer in lora_layers(model)}
    with torch.no_grad():
        unmerged = model(**inputs).logits
        merge_lora(model)
        assert all(layer.merged for _, layer in lora_layers(model))
        merged = model(**inputs).logits
        torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-10)
        merged_weights = {n: layer.weight.detach().clone() for n, layer in lora_layers(model)}
        merge_lora(model)  # twice == once
        assert all(torch.equal(layer.weight, merged_weights[n]) for n, layer in lora_layers(model))
        assert torch.equal(model(**inputs).logits, merged)
        unmerge_lora(model)
        assert all(torch.equal(layer.weight, base_weights[n]) for n, layer in lora_layers(model))
        assert torch.equal(model(**inputs).logits, unmerged)
        assert not torch.allclose(merged, base(**inputs).logits, atol=1e-3)  # the adapter is live


def test_targets_are_the_named_linears_in_model_order(tiny_roberta):
    model = tiny_roberta()
    names = lora_targets(model, LoRAConfig())
    assert names == [f"roberta.encoder.layer.{i}.attention.self.{t}" for i in (0, 1) for t in ("query", "value")]
    inject_lora(model, LoRAConfig())
    assert [n for n, _ in lora_layers(model)] == names
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert type(model.roberta.encoder.layer[0].attention.self.key) is nn.Linear


def test_layers_subset_adapts_only_those_layers(tiny_roberta):
    model = inject_lora(tiny_roberta(num_hidden_layers=3), LoRAConfig(rank=2, layers=(1,)))
    assert [n for n, _ in lora_layers(model)] == [
        "roberta.encoder.layer.1.attention.self.query", "roberta.encoder.layer.1.attention.self.value"]
    for i in (0, 2):
        assert type(model.roberta.encoder.layer[i].attention.self.query) is nn.Linear
    head = sum(p.numel() for p in model.classifier.parameters())
    assert count_trainable(model) == 2 * 2 * (32 + 32) + head


def test_bert_family_works(tiny_bert, batch, randomize):
    base = tiny_bert(torch.float64)
    model = inject_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8))
    assert [n for n, _ in lora_layers(model)] == [
        f"bert.encoder.layer.{i}.attention.self.{t}" for i in (0, 1) for t in ("query", "value")]
    assert count_trainable(model) == 4 * 4 * (32 + 32) + (32 * 4 + 4)  # 4 adapted Linears + Linear head
    assert {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "classifier.weight", "classifier.bias"}
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base(**inputs).logits)
        randomize(model)
        unmerged = model(**inputs).logits
        torch.testing.assert_close(merge_lora(model)(**inputs).logits, unmerged, rtol=0, atol=1e-10)


def assert_untouched(model):
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("config, message", [
    (LoRAConfig(targets=("nonexistent",)), r"no nn.Linear in the model matches target nonexistent$"),
    (LoRAConfig(targets=("attention",)), r"no nn.Linear in the model matches target attention"),  # not a Linear
    (LoRAConfig(targets=("query", "valu", "x")), r"matches targets valu, x$"),  # one idle target is enough
    (LoRAConfig(targets=("query", "out_proj"), layers=(1,)), r"matches target out_proj in layers \[1\]"),
    (LoRAConfig(layers=(0, 5)), r"layers \[5\] are not in the model, which has layers \[0, 1\]"),
    (LoRAConfig(trainable_modules=("classifier", "head")), r"trainable_modules \['head'\] match no module"),
    (LoRAConfig(targets=("dense",)), r"classifier.dense is both a LoRA target and inside trainable_modules"),
    (LoRAConfig(saved_modules=("pooler",)), r"saved_modules \['pooler'\] match no module"),
])
def test_inject_rejects_bad_configs_without_touching_the_model(tiny_roberta, config, message):
    model = tiny_roberta()
    with pytest.raises(ValueError, match=message):
        inject_lora(model, config)
    assert_untouched(model)


def test_double_injection_is_refused(tiny_roberta):
    model = inject_lora(tiny_roberta(), LoRAConfig())
    layers_before = [id(m) for _, m in lora_layers(model)]
    with pytest.raises(ValueError, match="already has LoRA layers"):
        inject_lora(model, LoRAConfig(targets=("key",)))
    assert [id(m) for _, m in lora_layers(model)] == layers_before


@pytest.mark.parametrize("train", [False, True])
def test_injected_layers_follow_the_model_train_eval_mode(tiny_roberta, train):
    model = tiny_roberta().train(train)
    inject_lora(model, LoRAConfig(dropout=0.5))
    assert all(m.training == train for _, layer in lora_layers(model) for m in layer.modules())
