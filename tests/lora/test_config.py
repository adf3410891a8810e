"""LoRAConfig: validation reports every bad field at once, lists become tuples, scaling is right."""
import math

import pytest

from lora import LoRAConfig


def test_defaults_are_valid_and_hashable():
    config = LoRAConfig()
    assert config.targets == ("query", "value") and config.trainable_modules == ("classifier",)
    assert hash(config) == hash(LoRAConfig())


def test_lists_and_bare_values_are_coerced_to_tuples():
    config = LoRAConfig(targets=["query", "key"], layers=[0, 2], trainable_modules=["classifier"])
    assert config.targets == ("query", "key") and isinstance(config.targets, tuple)
    assert config.layers == (0, 2) and isinstance(config.layers, tuple)
    assert config.trainable_modules == ("classifier",) and isinstance(config.trainable_modules, tuple)
    hash(config)  # a list left inside would make this raise TypeError
    bare = LoRAConfig(targets="query", layers=3, trainable_modules="classifier")
    assert (bare.targets, bare.layers, bare.trainable_modules) == (("query",), (3,), ("classifier",))
    assert LoRAConfig(trainable_modules=[]).trainable_modules == ()


@pytest.mark.parametrize("field, value", [
    ("rank", 0), ("rank", -2), ("rank", 4.0), ("rank", True), ("rank", "4"),
    ("alpha", 0), ("alpha", -1.0), ("alpha", math.inf), ("alpha", math.nan), ("alpha", True), ("alpha", "16"),
    ("dropout", -0.1), ("dropout", 1.0), ("dropout", math.nan), ("dropout", True), ("dropout", "0.1"),
    ("targets", ()), ("targets", []), ("targets", ("",)), ("targets", (".",)), ("targets", ("query", 3)),
    ("targets", None), ("targets", 5),
    ("layers", ()), ("layers", (-1,)), ("layers", (0, 1.0)), ("layers", (True,)), ("layers", "0"), ("layers", 2.5),
    ("trainable_modules", ("",)), ("trainable_modules", (None,)), ("trainable_modules", None),
    ("saved_modules", ("",)), ("saved_modules", None),
    ("use_rslora", 1), ("use_rslora", "yes"), ("use_rslora", None),
])
def test_each_invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"invalid LoRAConfig: {field} must"):
        LoRAConfig(**{field: value})


def test_several_bad_fields_are_all_named_in_one_error():
    with pytest.raises(ValueError) as info:
        LoRAConfig(rank=0, alpha=-1, dropout=2.0, targets=(), layers=(-1,), trainable_modules=("",),
                   use_rslora="no")
    message = str(info.value)
    for field in ("rank", "alpha", "dropout", "targets", "layers", "trainable_modules", "use_rslora"):
        assert f"{field} must" in message, field
    assert message.count(";") == 6  # one ValueError, seven problems


def test_good_fields_are_not_blamed():
    with pytest.raises(ValueError, match="rank must") as info:
        LoRAConfig(rank=0, alpha=8.0)
    assert "alpha" not in str(info.value)


@pytest.mark.parametrize("rank, alpha", [(1, 1.0), (4, 16.0), (8, 16), (11, 7.5)])
def test_scaling_is_alpha_over_rank_or_over_sqrt_rank_with_rslora(rank, alpha):
    assert LoRAConfig(rank=rank, alpha=alpha).scaling == pytest.approx(alpha / rank, rel=1e-15)
    assert LoRAConfig(rank=rank, alpha=alpha, use_rslora=True).scaling == pytest.approx(
        alpha / math.sqrt(rank), rel=1e-15)


def test_rslora_scaling_differs_from_plain_once_rank_exceeds_one():
    assert LoRAConfig(rank=16, alpha=16, use_rslora=True).scaling == 4.0
    assert LoRAConfig(rank=16, alpha=16).scaling == 1.0
