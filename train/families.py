"""Encoder families: which module of each family plays each role, and where its head and layers are.

`--targets` names roles as RoBERTa names its modules, matched by PEFT's suffix rule against the six
Linears of a RoBERTa layer (SLOTS): `query`, `key`, `value`, `attention.output.dense`,
`intermediate.dense`, `output.dense` (which also matches `attention.output.dense`), or `dense` (the
three dense layers). One table maps each slot to the module that does that job in every family, the way
PEFT keeps a default-target table per model type, so a recipe written in roles adapts the same
projections in every family. A target that is not a role is a literal module name (PEFT's rule), for
models outside the table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# The Linears of a RoBERTa encoder layer, by their path inside the layer: the vocabulary of roles.
SLOTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "intermediate.dense", "output.dense")
# A module's encoder layer and its path inside that layer (PEFT's default layers_pattern).
_IN_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Family:
    name: str  # as messages say it
    model_types: tuple[str, ...]  # config.model_type values of this family
    slots: tuple[str, ...]  # this family's module path inside a layer, for each of SLOTS in order
    head_out: str  # the head's output layer (module name)
    head_dense: str | None  # the head's hidden dense layer, or None
    head_full: tuple[str, ...]  # the modules `--head full` trains
    # Modules of the head that a pretrained checkpoint lacks and that stay frozen under `--head linear|lora`:
    # stored whole in the adapter all the same, so that loading it anywhere restores them (never a new init).
    head_saved: tuple[str, ...]
    # positions are numbered from pad_token_id + 1 (RoBERTa's scheme), which costs that many slots
    positions_after_pad: bool = False
    # the frozen-prefix cache can run this encoder's lower layers alone (embeddings, mask, layer calls)
    splits: bool = True
    # the encoder computes one relative position bias and passes it to every layer (MPNet)
    position_bias: bool = False


_BERT_SLOTS = SLOTS
_ROBERTA_HEAD = dict(head_out="classifier.out_proj", head_dense="classifier.dense", head_full=("classifier",),
                     head_saved=("classifier",))
FAMILIES = (
    Family("RoBERTa", ("roberta", "xlm-roberta", "camembert"), _BERT_SLOTS, positions_after_pad=True,
           **_ROBERTA_HEAD),
    # BERT's head reads the pretrained pooler, which the checkpoint holds: nothing extra is stored.
    Family("BERT", ("bert",), _BERT_SLOTS, head_out="classifier", head_dense="pooler.dense",
           head_full=("classifier",), head_saved=()),
    Family("ELECTRA", ("electra",), _BERT_SLOTS, **_ROBERTA_HEAD),
    Family("MPNet", ("mpnet",), ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                                 "intermediate.dense", "output.dense"),
           positions_after_pad=True, position_bias=True, **_ROBERTA_HEAD),
    Family("DistilBERT", ("distilbert",), ("attention.q_lin", "attention.k_lin", "attention.v_lin",
                                           "attention.out_lin", "ffn.lin1", "ffn.lin2"),
           head_out="classifier", head_dense="pre_classifier", head_full=("pre_classifier", "classifier"),
           head_saved=("pre_classifier",), splits=False),
    Family("DeBERTa-v2", ("deberta-v2",), ("attention.self.query_proj", "attention.self.key_proj",
                                           "attention.self.value_proj", "attention.output.dense",
                                           "intermediate.dense", "output.dense"),
           head_out="classifier", head_dense="pooler.dense", head_full=("pooler", "classifier"),
           head_saved=("pooler",), splits=False),
)


def usable_length(max_length: int, config) -> int:
    """max_length capped at what a model of this `config` (its transformers config) can take in its position
    embeddings, whatever the data's lengths."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return max_length
    # RoBERTa and MPNet number positions from pad_token_id + 1, so they have that many fewer usable slots.
    family = next((f for f in FAMILIES if getattr(config, "model_type", None) in f.model_types), None)
    return min(max_length, positions - (config.pad_token_id + 1 if family and family.positions_after_pad else 0))


def family_of(model: nn.Module) -> Family | None:
    """The family of a transformers model (by config.model_type), or None outside the table."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def matches(name: str, target: str) -> bool:
    """PEFT's rule: the exact name, or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def role_slots(target: str) -> list[int]:
    """Indices into SLOTS of the slots `target` names as a role ([] when it is no role)."""
    return [i for i, slot in enumerate(SLOTS) if matches(slot, target)]


def in_layer(name: str) -> tuple[int, str] | None:
    """(layer index, path inside the layer) of a module in the encoder's layer stack, or None."""
    found = _IN_LAYER.search(name)
    return (int(found.group(1)), found.group(2)) if found else None


def linear_names(model: nn.Module) -> list[str]:
    """Every plain nn.Linear of `model`, in model order."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def resolve_targets(model: nn.Module, targets: tuple[str, ...], layers: tuple[int, ...] | None) -> tuple[str, ...]:
    """The module-name suffixes to adapt in `model` for `targets` (roles or literal names) in `layers`
    (None: all): the targets themselves where they already select exactly those modules (RoBERTa and
    BERT, whose names the roles are), else the shortest suffix of each selected module that selects
    nothing else (other families, or a role like `dense` that would also match the head).

    Raises ValueError naming a target that matches no Linear in any adapted layer, with the names there are."""
    family = family_of(model)
    linears = linear_names(model)
    adapted = {n: where for n in linears if (where := in_layer(n)) and (layers is None or where[0] in layers)}
    chosen: set[str] = set()
    for target in targets:
        slots = role_slots(target) if family is not None else []
        paths = {family.slots[i] for i in slots}
        hit = {n for n, (_, path) in adapted.items() if (path in paths if slots else matches(n, target))}
        if not hit:
            there = list(dict.fromkeys(path for _, path in adapted.values()))  # model order, each once
            where = "" if layers is None else f" in layers {', '.join(map(str, layers))}"
            raise ValueError(f"target {target!r} matches no Linear in the encoder's layers{where}; "
                             f"the layers have {', '.join(there) or 'no Linear'}"
                             + (f" ({family.name}; roles: query, key, value, attention.output.dense, "
                                "intermediate.dense, output.dense)" if family else ""))
        chosen |= hit

    def selects(suffix: str) -> set[str]:
        return {n for n in linears if matches(n, suffix) and (layers is None or (n in adapted))}

    if set().union(*(selects(t) for t in targets)) == chosen:
        return tuple(targets)
    written: list[str] = []
    for name in (n for n in linears if n in chosen):
        parts = name.split(".")
        suffix = next(s for s in (".".join(parts[-k:]) for k in range(1, len(parts) + 1)) if selects(s) <= chosen)
        if suffix not in written:
            written.append(suffix)
    return tuple(written)


def head_modules(model: nn.Module) -> tuple[str, str | None, tuple[str, ...], tuple[str, ...]]:
    """(output layer, hidden dense layer or None, what `--head full` trains, what is stored though frozen) of
    the classification head: from the family table, else guessed from RoBERTa's and BERT's layouts."""
    family = family_of(model)
    names = dict(model.named_modules())
    if family is not None:  # the dense layer by its full name (BERT's is bert.pooler.dense)
        dense = next((n for n in names if family.head_dense and matches(n, family.head_dense)), None)
        return family.head_out, dense, family.head_full, family.head_saved
    if "classifier.out_proj" in names:  # RoBERTa-like: classifier = dense -> tanh -> out_proj
        dense = "classifier.dense" if "classifier.dense" in names else None
        return "classifier.out_proj", dense, ("classifier",), ("classifier",) if dense else ()
    dense = next((n for n in names if n.endswith("pooler.dense")), None)  # BERT-like: pooler -> classifier
    return "classifier", dense, ("classifier",), ()
