"""The run's plan: LoRA rank and trainable-parameter budget on roberta-base shapes (built on the meta
device, so no weights are allocated), the plan as printed by a real run, and the learning-rate schedule."""
import re

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from lora import LoRALinear, count_trainable, lora_layers
from helpers.tiny import train_args
from train.config import TrainConfig
from train.errors import UserError
from train.model import prepare, resolve
from train.config import recipe


def ref(**settings) -> TrainConfig:
    """The reference recipe (query,value; full head) with `settings` changed, flat as on the command line."""
    return TrainConfig.from_flat({**recipe("reference"), **settings})


def made(cfg: TrainConfig, model) -> tuple:
    """Resolve `cfg` on `model` and give the model what it says: (the adapter's LoRAConfig, plan rows, total)."""
    resolved, rows = resolve(cfg, model, 32)
    prepare(resolved, model)
    return resolved.lora, rows, sum(v for _, v in rows)


H, LAYERS, K = 768, 12, 4  # roberta-base, AG News
FULL_HEAD = (H * H + H) + (H * K + K)  # classifier.dense + classifier.out_proj = 593,668
LINEAR_HEAD = H * K + K  # 3,076


@pytest.fixture
def base():
    with torch.device("meta"):
        return RobertaForSequenceClassification(RobertaConfig(num_labels=K))


def test_rank_auto_with_query_value_and_full_head_is_11(base):
    config, rows, total = made(ref(rank="auto"), base)
    assert config.rank == 11
    assert total == 11 * LAYERS * 2 * (H + H) + FULL_HEAD == 999_172
    assert count_trainable(base) == total  # the plan counts what really trains
    assert sum(count for _, count in rows) == total
    assert len(list(lora_layers(base))) == 2 * LAYERS


def test_rank_12_is_refused_with_the_count(base):
    with pytest.raises(UserError, match=r"1,036,036 trainable parameters reach the budget of 1,000,000; "
                                        r"fit it with a lower --rank .*fewer --targets"):
        made(ref(rank=12), base)
    assert not list(lora_layers(base))  # refused before anything was injected


def test_linear_head_has_3076_parameters_and_buys_a_larger_rank(base):
    config, rows, total = made(ref(rank="auto", head="linear"), base)
    assert rows[-1] == ("trained classifier.out_proj", LINEAR_HEAD)
    assert config.rank == (1_000_000 - 1 - LINEAR_HEAD) // (LAYERS * 2 * (H + H)) == 27
    assert total == count_trainable(base) < 1_000_000
    assert {n for n, p in base.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "classifier.out_proj.weight", "classifier.out_proj.bias"}
    # The stock head stays: dense -> tanh -> out_proj, dense frozen (as the identity) and stored in the adapter.
    assert type(base.classifier).__name__ == "RobertaClassificationHead"
    assert not base.classifier.dense.weight.requires_grad
    assert (config.trainable_modules, config.saved_modules) == (("classifier.out_proj",), ("classifier",))


def test_lora_head_adapts_the_dense_layer_and_trains_out_proj_only(base):
    config, rows, total = made(ref(rank=4, head="lora"), base)
    assert isinstance(base.classifier.dense, LoRALinear)
    assert not isinstance(base.classifier.out_proj, LoRALinear)
    trained = {n for n, p in base.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {"classifier.out_proj.weight", "classifier.out_proj.bias"}
    assert not base.classifier.dense.weight.requires_grad and base.classifier.dense.lora_A.weight.requires_grad
    assert dict(rows)["LoRA classifier.dense"] == 4 * (H + H)
    assert total == 4 * (LAYERS * 2 + 1) * (H + H) + LINEAR_HEAD == count_trainable(base)


def test_six_targets_with_linear_head_and_rank_auto_stay_under_budget(base):
    targets = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
    config, rows, total = made(ref(rank="auto", head="linear", targets=targets), base)
    per_rank = LAYERS * (3 * (H + H) + (H + H) + (H + 4 * H) + (4 * H + H))  # q k v, attn out, ffn in, ffn out
    assert config.rank == (1_000_000 - 1 - LINEAR_HEAD) // per_rank
    assert total == config.rank * per_rank + LINEAR_HEAD == count_trainable(base) < 1_000_000
    assert len(list(lora_layers(base))) == 6 * LAYERS
    with pytest.raises(UserError, match=r"fewer --targets"):
        with torch.device("meta"):
            made(ref(rank=config.rank + 1, head="linear", targets=targets),
                    RobertaForSequenceClassification(RobertaConfig(num_labels=K)))


def test_a_layer_subset_scales_the_lora_count(base):
    every = resolve(ref(rank=8), base, 32)[1]
    some = resolve(ref(rank=8, layers=(0, 5, 11)), base, 32)[1]
    lora_every = sum(c for n, c in every if n.startswith("LoRA"))
    lora_some = sum(c for n, c in some if n.startswith("LoRA"))
    assert lora_some * LAYERS == lora_every * 3
    assert every[-1] == some[-1]  # the head does not depend on the layers
    with pytest.raises(UserError, match=r"layers \[12\] are not in the model"):
        resolve(ref(rank=8, layers=(11, 12)), base, 32)


def test_printed_plan_rows_sum_to_the_printed_total(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from train.__main__ import main

    argv = train_args(tiny_model_dir, tiny_data_dir, tmp_path / "o", "--targets", "query,key,value",
                      "--head", "lora", "--epochs", "1", "--stop-after", "1")
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [int(m.group(1).replace(",", "")) for m in re.finditer(r"^ +([\d,]+)  \S", out, re.M)]
    total = int(re.search(r"^trainable +([\d,]+) parameters", out, re.M).group(1).replace(",", ""))
    assert len(rows) == 5  # LoRA on query, key, value and classifier.dense; classifier.out_proj trained
    assert sum(rows) == total == 8 * (2 * 3 + 1) * (64 + 64) + (64 * 4 + 4)


def test_linear_head_dense_starts_as_the_identity(tiny_roberta):
    """Frozen at HF's random init (std 0.02) the dense layer shrinks the features and the default recipe learned
    slower; as the identity, out_proj sees tanh(features) at their own scale."""
    model = tiny_roberta()
    made(ref(rank=2, head="linear"), model)
    assert torch.equal(model.classifier.dense.weight, torch.eye(32)) and not model.classifier.dense.bias.any()
    untouched = tiny_roberta()
    made(ref(rank=2, head="lora"), untouched)  # the lora head keeps its random init, as before
    assert not torch.equal(untouched.classifier.dense.weight, torch.eye(32))


@pytest.mark.parametrize("outputs, rank", [(1, 11), (4, 11), (28, 10), (200, 6)])
def test_rank_auto_and_the_budget_follow_the_heads_size(outputs, rank):
    """A regression's head has one output, a multi-label one K: --rank auto fits the rank to what is left."""
    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=outputs))
    config, _, total = made(ref(rank="auto"), model)
    head = (H * H + H) + (H * outputs + outputs)
    assert config.rank == rank == (1_000_000 - 1 - head) // (LAYERS * 2 * (H + H)) and total < 1_000_000


@pytest.mark.parametrize("outputs, rank", [(1, 6), (4, 6), (6, 6), (7, 5), (28, 5)])
def test_the_default_recipes_rank_6_is_a_ceiling_that_a_wide_head_lowers(outputs, rank):
    """The default recipe trains rank 6 on every Linear while the head leaves room for it under the budget; 7 labels
    or more (GoEmotions' 28) leave room for 5 on roberta-base, and a note says so. A rank given is never lowered."""
    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=outputs))
    notes: list[str] = []
    resolved, rows = resolve(TrainConfig(), model, 32, say=notes.append)
    assert resolved.lora.rank == rank and sum(v for _, v in rows) < 1_000_000
    assert (resolved.rank, resolved.max_rank) == (None, None)  # resolved: config.json records the number
    assert [n for n in notes if "ceiling" in n] == ([] if rank == 6 else [
        f"note: LoRA rank 5, under its ceiling of 6: the head's {H * outputs + outputs:,} trainable parameters leave "
        "no room for more under the budget of 1,000,000"])
    if rank < 6:
        with pytest.raises(UserError, match=r"trainable parameters reach the budget of 1,000,000"):
            resolve(TrainConfig.from_flat({"rank": 6}), model, 32)
