"""Offline stand-ins for the tests: a tiny RoBERTa with a tokenizer built here, and a learnable dataset."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
TOPIC_WORDS = [
    ["war", "election", "minister", "treaty", "border", "embassy"],
    ["match", "goal", "coach", "league", "season", "striker"],
    ["market", "shares", "profit", "bank", "stocks", "merger"],
    ["software", "chip", "internet", "robot", "laptop", "research"],
]
FILLER = ["the", "a", "on", "in", "said", "today", "new", "after", "report", "week", "big", "more"]


def make_tiny_model(directory: Path, num_labels: int = 4, seed: int = 0) -> Path:
    """Save a 2-layer RoBERTa (hidden 64) and a word-level tokenizer, as a local model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    words = sorted({w for ws in TOPIC_WORDS for w in ws} | set(FILLER))
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])  # RoBERTa's
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_input_names=["input_ids", "attention_mask"])  # RoBERTa's: no token types
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, num_labels=num_labels)
    RobertaForSequenceClassification(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def synthetic_rows(n: int, seed: int) -> list[tuple[int, str, str]]:
    """(class 1..4, title, description): topic words mark the class, filler words are noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % len(CLASSES)
        title = " ".join(rng.choice(TOPIC_WORDS[y] if rng.random() < 0.8 else FILLER) for _ in range(3))
        desc = " ".join(rng.choice(TOPIC_WORDS[y] if rng.random() < 0.5 else FILLER) for _ in range(rng.randint(3, 20)))
        rows.append((y + 1, title, desc))
    return rows


def write_agnews(directory: Path, n_train: int = 160, n_eval: int = 40, seed: int = 0) -> Path:
    """train.csv and test.csv in the original AG News layout, plus classes.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train.csv", n_train, seed), ("test.csv", n_eval, seed + 1)):
        with (directory / name).open("w", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(synthetic_rows(n, s))
    (directory / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return directory


def write_jsonl(path: Path, n: int, seed: int) -> Path:
    with path.open("w") as f:
        for y, title, desc in synthetic_rows(n, seed):
            f.write(json.dumps({"text": f"{title} {desc}", "label": y - 1}) + "\n")
    return path


def write_task(directory: Path, kind: str, n_train: int = 192, n_eval: int = 48, seed: int = 0,
               splits: tuple[str, ...] = ("train", "test")) -> Path:
    """JSONL splits of a learnable task of each kind, from synthetic_rows' topics: "pairs" (sentence1/sentence2,
    label 1 when both sentences share the topic), "regression" (sentence1/sentence2, a float score 0-5 that the
    first sentence's topic sets) or "multi_label" (text, `labels`: the names of the one or two topics written,
    with classes.txt)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate((s, n_train if s == "train" else n_eval) for s in splits):
        rows, other = synthetic_rows(n, seed + i), synthetic_rows(n + 1, seed + 10 + i)[1:]  # another topic a row
        with (directory / f"{name}.jsonl").open("w") as f:
            for k, ((y, title, desc), (z, title2, _)) in enumerate(zip(rows, other)):
                if kind == "pairs":
                    second = title if k % 2 else title2
                    row = {"sentence1": f"{title} {desc}", "sentence2": second, "label": int(k % 2 or y == z)}
                elif kind == "regression":
                    row = {"sentence1": title, "sentence2": desc, "label": round(1.25 * (y - 1) + 0.1 * (k % 3), 2)}
                else:
                    both = k % 3 == 0 and y != z
                    row = {"text": f"{title} {title2 if both else ''} {desc}".strip(),
                           "labels": [CLASSES[y - 1]] + ([CLASSES[z - 1]] if both else [])}
                f.write(json.dumps(row) + "\n")
    if kind == "multi_label":
        (directory / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return directory


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A fast, learnable tiny run of the reference recipe: fp32 so results are bit-reproducible on any CPU."""
    return ["--recipe", "reference", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--epochs", "4", "--batch-size", "16", "--lr", "2e-2", "--rank", "8", "--precision", "fp32",
            "--cache-dir", "",
            *extra]


class Counting:
    """The tiny tokenizer, counting calls and rows; after `fail_after` calls it raises, as a kill would stop it."""

    def __init__(self, real, fail_after=None):
        self.real, self.calls, self.rows, self.fail_after = real, 0, 0, fail_after

    def __call__(self, texts, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.rows += len(texts)
        return self.real(texts, **kwargs)

    def __len__(self):
        return len(self.real)

    def __getattr__(self, name):
        return getattr(self.real, name)
