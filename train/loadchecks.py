"""What load_pretrained (train/model.py) refuses after transformers has loaded a model: weights outside the head
left at a random init, and a tokenizer that is not the model's. Each refusal is one UserError line."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import UserError

# Files that hold a tokenizer's vocabulary, in the formats transformers reads.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spm.model", "sentencepiece.bpe.model",
                   "spiece.model", "tokenizer.model")
# Lowercase news words, the kind of text this tool classifies: every subword vocabulary covers them, and so
# does a word-level vocabulary built for news (the tests' tiny model knows most of them).
SAMPLE = "the market said on a new report today that shares rose after the election in a big week for the league"


def check_weights(name: str, report: dict, head: tuple[str, ...]) -> None:
    """Refuse a load (transformers' loading info: `report`) that left a weight outside the `head` modules at a
    random init: a tensor whose shape in config.json differs from the checkpoint's (ignore_mismatched_sizes
    re-draws it), or one the checkpoint lacks. Keys a model declares optional (position_ids buffers and the like)
    transformers leaves out of the report; unexpected keys (a pretraining head, a pooler no head reads) are
    simply not loaded."""
    def outside(key: str) -> bool:
        return not any(key == h or key.startswith(h + ".") for h in head)

    if report.get("error_msgs"):
        raise UserError(f"cannot load model '{name}': {str(report['error_msgs'][0]).strip().splitlines()[0][:200]}")
    wrong = sorted((k, list(a), list(b)) for k, a, b in report.get("mismatched_keys", []) if outside(k))
    if wrong:
        key, stored, wanted = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise UserError(f"cannot load model '{name}': {key} is {stored} in its weights but {wanted} in its "
                        f"config.json{more}; the config does not describe these weights")
    missing = sorted(k for k in report.get("missing_keys", []) if outside(k))
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"cannot load model '{name}': its weights lack {listed}, which would start at random")


def check_tokenizer(name: str, model: nn.Module, tokenizer, local: bool) -> None:
    """Refuse a tokenizer that is not this model's: for a directory with no tokenizer files AutoTokenizer
    builds a 5-token one, and the run trains to chance with every word unknown or dropped."""
    if local and not any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"cannot use model '{name}': no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                        "save the model's tokenizer in that directory")
    rows, size = model.get_input_embeddings().num_embeddings, len(tokenizer)
    # Embeddings may have spare rows (padded to a round number), never fewer than the ids the tokenizer makes;
    # a vocabulary of special tokens alone reads no text.
    if size > rows or 2 * size < rows or size <= len(set(tokenizer.all_special_ids)):
        raise UserError(f"cannot use model '{name}': its tokenizer has a vocabulary of {size} tokens for an "
                        f"embedding of {rows} rows; it is not this model's tokenizer")
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    unknown = sum(i == tokenizer.unk_token_id for i in ids) if tokenizer.unk_token_id is not None else 0
    if not ids or 2 * unknown > len(ids):
        raise UserError(f"cannot use model '{name}': its tokenizer reads {unknown} of the {len(ids)} tokens of an "
                        "English sample sentence as unknown; it is not this model's tokenizer")
