"""README.md model cards in Hugging Face's conventions: YAML front matter, the recipe with its exact
trainable count, the evaluation table, and a usage snippet that runs as written."""
from __future__ import annotations

import json
from pathlib import Path

from lora.files import atomic_write

KINDS = ("adapter", "peft", "hf", "onnx")
LIBRARY = {"adapter": "peft", "peft": "peft", "hf": "transformers", "onnx": "onnx"}
EXAMPLE = "Stocks rally as oil prices slip"
WHAT = {
    "adapter": "a LoRA adapter in PEFT's format, as `python -m train` saved it",
    "peft": "a LoRA adapter in PEFT's format, for `PeftModel.from_pretrained`",
    "hf": "a plain transformers model: the LoRA update merged into the base weights, the head included",
    "onnx": "the merged model in ONNX (`model.onnx`, dynamic batch and sequence axes) with its tokenizer",
}
HEADS = {
    "full": "the stock head, trained whole",
    "lora": "the stock head: LoRA on its dense layer (frozen at its random init), its output layer trained",
    "linear": "the stock head: its output layer trained, its dense layer frozen as the identity",
}


def write_model_card(directory: str | Path, kind: str, info: dict, report: dict | None,
                     trainable: int | None, base_model: str | None = None, shown: str | None = None) -> Path:
    """Write `directory`/README.md. The snippet names the directory as `shown` (default `directory`): the
    path its reader will use. info: {"train": TrainConfig dict, "labels": [...]}; report: eval.json or None."""
    path = Path(directory) / "README.md"
    text = model_card(str(shown or directory), kind, info, report, trainable, base_model)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def model_card(directory: str, kind: str, info: dict, report: dict | None, trainable: int | None,
               base_model: str | None = None) -> str:
    """The card's text; see write_model_card."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cfg, labels = info["train"], info["labels"]
    base = base_model or cfg["model"]
    front = "\n".join([
        "---", f"base_model: {json.dumps(base)}", f"library_name: {LIBRARY[kind]}",
        "pipeline_tag: text-classification",
        "license: other  # placeholder: set the license your base model and training data allow",
        "tags:", "- lora", "- text-classification", "metrics:", "- accuracy", "- f1", "---"])
    return "\n\n".join([
        front, f"# {Path(directory).name}",
        f"A {len(labels)}-class text classifier ({', '.join(labels)}): `{base}` fine-tuned with LoRA by "
        f"`python -m train` (roberta-lora). This directory is {WHAT[kind]}.",
        "## Recipe", _recipe(cfg, trainable), "## Evaluation", _evaluation(cfg, report),
        "## Usage", _usage(kind, directory, base, labels, cfg["max_length"])]) + "\n"


def _recipe(cfg: dict, trainable: int | None) -> str:
    layers = "all" if cfg["layers"] is None else ", ".join(map(str, cfg["layers"]))
    count = "unknown" if trainable is None else f"**{trainable:,}**"
    plus = f" (LoRA+: B × {cfg['lora_plus_ratio']:g})" if cfg["lora_plus_ratio"] != 1 else ""
    data = cfg["data"] if not cfg.get("train_file") else f"{cfg['train_file']} (eval: {cfg['eval_file']})"
    rows = [
        ("LoRA", f"rank {cfg['rank']}, alpha {cfg['alpha']:g}, dropout {cfg['dropout']:g}"
                 + (", rsLoRA (alpha/√rank)" if cfg["use_rslora"] else "")),
        ("targets", f"{', '.join(cfg['targets'])} (layers: {layers})"),
        ("head", f"{cfg['head']}: {HEADS[cfg['head']]}"),
        ("trainable parameters", count),
        ("optimizer", f"AdamW, lr {cfg['lr']:g}{plus}, warmup {cfg['warmup_ratio']:g}, cosine, "
                      f"weight decay {cfg['weight_decay']:g}, label smoothing {cfg['label_smoothing']:g}"),
        ("schedule", f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, max length {cfg['max_length']} tokens, "
                     f"seed {cfg['seed']}" + (f", EMA {cfg['ema_decay']:g}" if cfg["ema_decay"] else "")),
        ("data", data + (f", {cfg['max_train_samples']:,} training rows" if cfg["max_train_samples"] else "")),
    ]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _evaluation(cfg: dict, report: dict | None) -> str:
    if not report:
        return "No evaluation was recorded with this adapter; `python -m train.evaluate` scores it."
    where = cfg.get("eval_file") or f"the evaluation split of {cfg['data']}"
    epoch = f", epoch {report['best_epoch']} (the saved one)" if "best_epoch" in report else ""
    lines = [f"{report['examples']:,} examples of {where}{epoch}.", "",
             "| accuracy | macro-F1 |", "|---:|---:|", f"| {report['accuracy']:.4f} | {report['macro_f1']:.4f} |",
             "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for c in report["per_class"]]
    return "\n".join(lines)


def _usage(kind: str, directory: str, base: str, labels: list[str], max_length: int) -> str:
    d, b = json.dumps(directory), json.dumps(base)
    if kind == "hf":
        code = (f'from transformers import pipeline\n\n'
                f'classify = pipeline("text-classification", model={d}, top_k=None, truncation=True)\n'
                f'print(classify({json.dumps(EXAMPLE)}))')
        note = ("`truncation=True` cuts texts at the training length, which the tokenizer's `model_max_length` "
                f"holds ({max_length}).")
    elif kind == "onnx":
        code = (f"import numpy as np\nimport onnxruntime as ort\nfrom transformers import AutoConfig, AutoTokenizer\n\n"
                f"directory = {d}\ntokenizer = AutoTokenizer.from_pretrained(directory)\n"
                f"labels = AutoConfig.from_pretrained(directory).id2label\n"
                f'session = ort.InferenceSession(f"{{directory}}/model.onnx")\n'
                f'batch = tokenizer([{json.dumps(EXAMPLE)}], padding=True, truncation=True, return_tensors="np")\n'
                f'logits = session.run(["logits"], {{"input_ids": batch["input_ids"], '
                f'"attention_mask": batch["attention_mask"]}})[0]\n'
                f"probs = np.exp(logits - logits.max(-1, keepdims=True))\nprobs /= probs.sum(-1, keepdims=True)\n"
                f"print([labels[int(i)] for i in probs.argmax(-1)], probs)")
        note = "Inputs are int64 `input_ids` and `attention_mask` of shape (batch, sequence); the output is `logits`."
    else:
        code = (f"import torch\nfrom peft import PeftModel\n"
                f"from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"labels = {json.dumps(labels)}\n"
                f"base = AutoModelForSequenceClassification.from_pretrained(\n"
                f"    {b}, num_labels=len(labels), id2label=dict(enumerate(labels)),\n"
                f"    label2id={{name: i for i, name in enumerate(labels)}})\n"
                f"model = PeftModel.from_pretrained(base, {d}).eval()\n"
                f"tokenizer = AutoTokenizer.from_pretrained({b})\n"
                f'batch = tokenizer([{json.dumps(EXAMPLE)}], padding=True, truncation=True, max_length={max_length}, '
                f'return_tensors="pt")\n'
                f"with torch.no_grad():\n    probs = model(**batch).logits.softmax(-1)\n"
                f"print([labels[i] for i in probs.argmax(-1).tolist()], probs)")
        note = ("The whole classification head is stored in the adapter, so the base model's freshly "
                "initialised head is replaced, not used. With this project: "
                f"`python -m train.predict --adapter {directory} \"{EXAMPLE}\"`, and "
                f"`python -m train.export {directory} --out merged --format hf` for a plain transformers model.")
    return f"```python\n{code}\n```\n\n{note}"
