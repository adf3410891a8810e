"""README.md model cards ready for the hub: front matter that huggingface_hub parses (base_model as a hub id,
never a local path; license when it is known; datasets, metrics and a model-index with accuracy and macro-F1),
the recipe with its exact trainable count, the evaluation table, and a usage snippet that runs as written."""
from __future__ import annotations

import json
import re
from pathlib import Path

from train.errors import UserError
from train.files import atomic_write, read_json_as
from train.tasks import task_kind

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # ORG/NAME or NAME: what the hub takes as a repo id
# Where the data of a run came from, as a hub dataset id (the shipped sample is rows of AG News' test split).
DATASETS = {"ag_news": "fancyzhx/ag_news", "ag_news_sample": "fancyzhx/ag_news"}

KINDS = ("adapter", "peft", "hf", "onnx")
LIBRARY = {"adapter": "peft", "peft": "peft", "hf": "transformers", "onnx": "onnx"}
EXAMPLE = "Stocks rally as oil prices slip"
PAIR = ("A man is playing a flute.", "A man plays the flute.")
WHAT = {
    "adapter": "a LoRA adapter in PEFT's format, as `python -m train` saved it",
    "peft": "a LoRA adapter in PEFT's format, for `PeftModel.from_pretrained`",
    "hf": "a plain transformers model: the LoRA update merged into the base weights, the head included",
    "onnx": "the merged model in ONNX (`model.onnx`, dynamic batch and sequence axes) with its tokenizer",
}
# eval.json's scores as the hub's model-index names them: (metric type, display name, config)
METRICS = {"accuracy": ("accuracy", "Accuracy", None), "macro_f1": ("f1", "Macro-F1", "macro"),
           "micro_f1": ("f1", "Micro-F1", "micro"), "f1": ("f1", "F1 (label 1)", "binary"),
           "mcc": ("matthews_correlation", "MCC", None), "exact_match": ("exact_match", "Exact match", None),
           "pearson": ("pearsonr", "Pearson", None), "spearman": ("spearmanr", "Spearman", None),
           "mse": ("mse", "MSE", None)}
TASKS = {"single_label": "{k}-class text classifier ({names})",
         "multi_label": "multi-label text classifier ({k} labels, any of them per text: {names})",
         "regression": "text regression model (one score per text)"}
HEADS = {
    "full": "the stock head, trained whole",
    "lora": "the stock head: LoRA on its dense layer (frozen at its random init), its output layer trained",
    "linear": "the stock head: its output layer trained, its dense layer frozen as the identity",
}


def hub_base(model: str, given: str | None = None) -> str | None:
    """The hub id of the base model: `given` (--base-model-id), else `model` when it names a hub repo and no
    local folder, else the name a local checkpoint records (config.json's _name_or_path) when that is a hub id;
    None when none is known. Never a local path."""
    def hub(name) -> bool:
        return isinstance(name, str) and bool(HUB_ID.fullmatch(name)) and not Path(name).expanduser().exists()
    if given or hub(model):
        return given or model
    try:  # the one reader: a config too deeply nested for json is no name either, never a traceback
        recorded = read_json_as(Path(model).expanduser() / "config.json", "a model config", {}).get("_name_or_path")
    except (OSError, UserError):
        return None
    return recorded if hub(recorded) else None


def base_license(model: str, base: str | None) -> str | None:
    """The license in the base model's own card (its README.md front matter, in its folder or the local hub
    cache), or None."""
    places = [Path(model).expanduser() / "README.md"]
    if base:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, "README.md")
            places += [Path(cached)] if isinstance(cached, str) else []
        except Exception:  # no cache, or not a repo id: no license known
            pass
    for card in (p for p in places if p.is_file()):
        front = card.read_text(errors="replace").split("---")
        found = re.search(r"(?m)^license:\s*([\w.-]+)", front[1]) if len(front) > 2 else None
        if found:
            return found.group(1)
    return None


def write_model_card(directory: str | Path, kind: str, info: dict, report: dict | None, trainable: int | None,
                     base_model: str | None = None, shown: str | None = None, license: str | None = None) -> Path:
    """Write `directory`/README.md. The snippet names the directory as `shown` (default: its name, the folder a
    reader has it in). info: {"train": TrainConfig dict, "labels": [...]}; report: eval.json or None;
    base_model: its hub id (hub_base), or None."""
    path = Path(directory) / "README.md"
    text = model_card(str(shown or Path(directory).name), kind, info, report, trainable, base_model, license)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def front_matter(name: str, kind: str, cfg: dict, report: dict | None, base: str | None,
                 license: str | None) -> str:
    """The card's YAML, made by huggingface_hub's own ModelCardData, so the hub reads what it wrote."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = DATASETS.get(cfg["data"], cfg["data"] if HUB_ID.fullmatch(cfg["data"]) and not cfg.get("train_file")
                           and not Path(cfg["data"]).exists() else None)
    results = None
    if report:
        split, where = split_of(report.get("evaluated_on")), dataset or Path(cfg.get("eval_file") or cfg["data"]).name
        results = [EvalResult(task_type="text-classification", task_name="Text classification",
                              dataset_type=dataset or "local", dataset_name=where, dataset_split=split,
                              metric_type=metric, metric_name=label, metric_value=round(report[key], 4),
                              metric_config=config)
                   for key, (metric, label, config) in METRICS.items() if key in report]
    data = ModelCardData(base_model=base, library_name=LIBRARY[kind], pipeline_tag="text-classification",
                         license=license, tags=["lora", "text-classification", "roberta-lora"],
                         datasets=[dataset] if dataset else None, model_name=name, eval_results=results,
                         metrics=sorted({METRICS[k][0] for k in METRICS if k in (report or {"accuracy": 0})}))
    return f"---\n{data.to_yaml()}\n---"


def split_of(rows: str | None) -> str | None:
    """The split a report's evaluation rows were: a hub split ("name[validation]"), else the file's name up to
    its first dot ("/data/dev.jsonl": "dev"); None where the report does not say."""
    if not rows:
        return None
    return rows[rows.rindex("[") + 1:-1] if rows.endswith("]") and "[" in rows else Path(rows).name.split(".")[0]


def model_card(directory: str, kind: str, info: dict, report: dict | None, trainable: int | None,
               base_model: str | None = None, license: str | None = None) -> str:
    """The card's text; see write_model_card."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cfg, labels = info["train"], info["labels"]
    name, task = Path(directory).name, cfg.get("task", "auto").replace("auto", "single_label")  # a run resolves auto
    return "\n\n".join([
        front_matter(name, kind, cfg, report, base_model, license), f"# {name}",
        f"A {TASKS[task].format(k=len(labels), names=', '.join(labels))}: "
        f"`{base_model or Path(cfg['model']).name}` "
        f"fine-tuned with LoRA by `python -m train` (roberta-lora). This directory is {WHAT[kind]}.",
        "## Recipe", _recipe(cfg, trainable), "## Evaluation", _evaluation(cfg, report),
        "## Usage", _usage(kind, directory, base_model, labels, cfg["max_length"], task,
                                 info.get("pairs", False))]
                     ) + "\n"


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
    shown = [k for k in METRICS if k in report]
    lines = [f"{report['examples']:,} examples of {where}{epoch}" + (f"; the epoch was chosen by "
             f"{report['selected_on']}." if "selected_on" in report else "."), "",
             "| " + " | ".join(METRICS[k][1] for k in shown) + " |", "|" + "---:|" * len(shown),
             "| " + " | ".join(f"{report[k]:.4f}" for k in shown) + " |"]
    if report.get("per_class"):
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
                  for c in report["per_class"]]
    return "\n".join(lines)


def _usage(kind: str, directory: str, base: str | None, labels: list[str], max_length: int,
           task: str = "single_label", pairs: bool = False) -> str:
    """How to run it, as code that runs as written: the task kind's activation, and a pair where it takes pairs."""
    texts = f"[{json.dumps(PAIR[0])}], [{json.dumps(PAIR[1])}]" if pairs else f"[{json.dumps(EXAMPLE)}]"
    if kind == "hf":
        given = (f'{{"text": {json.dumps(PAIR[0])}, "text_pair": {json.dumps(PAIR[1])}}}' if pairs
                 else json.dumps(EXAMPLE))
        code = (f'from transformers import pipeline\n\n'
                f'classify = pipeline("text-classification", model={json.dumps(directory)}, top_k=None, '
                f'truncation=True)\nprint(classify({given}))')
        note = ("`truncation=True` cuts texts at the training length, which the tokenizer's `model_max_length` "
                f"holds ({max_length}). The pipeline applies the task's activation: "
                + {"single_label": "a softmax over the classes.", "multi_label": "a sigmoid per label.",
                   "regression": "none; the score is the model's output."}[task])
    elif kind == "onnx":
        code = _onnx_usage(directory, texts, task)
        note = ("Inputs are the int64 arrays the tokenizer gives, of shape (batch, sequence) (`input_ids`, "
                "`attention_mask`, and `token_type_ids` where the tokenizer pairs texts with them); the output is "
                "`logits`.")
    else:
        code = _peft_usage(directory, base, labels, max_length, task, texts)
        shown = f'--pair "{PAIR[0]}" "{PAIR[1]}"' if pairs else f'"{EXAMPLE}"'
        note = ("The whole classification head is stored in the adapter, so the base model's freshly "
                "initialised head is replaced, not used. With this project: "
                f"`python -m train.predict --adapter {directory} {shown}`, and "
                f"`python -m train.export {directory} --out merged --format hf` for a plain transformers model.")
    return f"```python\n{code}\n```\n\n{note}"


def _onnx_usage(directory: str, texts: str, task: str) -> str:
    return (f"import numpy as np\nimport onnxruntime as ort\nfrom transformers import AutoConfig, AutoTokenizer\n\n"
            f"directory = {json.dumps(directory)}\ntokenizer = AutoTokenizer.from_pretrained(directory)\n"
            f"labels = AutoConfig.from_pretrained(directory).id2label\n"
            f'session = ort.InferenceSession(f"{{directory}}/model.onnx")\n'
            f'batch = tokenizer({texts}, padding=True, truncation=True, return_tensors="np")\n'
            f'logits = session.run(["logits"], {{i.name: batch[i.name] for i in session.get_inputs()}})[0]\n'
            + {"single_label": "probs = np.exp(logits - logits.max(-1, keepdims=True))\n"
                               "probs /= probs.sum(-1, keepdims=True)\n"
                               "print([labels[int(i)] for i in probs.argmax(-1)], probs)",
               "multi_label": "probs = 1 / (1 + np.exp(-logits))\n"
                              "print([[labels[i] for i in np.flatnonzero(row > 0.5)] for row in probs], probs)",
               "regression": "print(logits[:, 0])"}[task])


def _peft_usage(directory: str, base: str | None, labels: list[str], max_length: int, task: str, texts: str) -> str:
    b = json.dumps(base or "BASE-MODEL")
    activate = {"single_label": ".softmax(-1)", "multi_label": ".sigmoid()", "regression": ""}[task]
    shown = {"single_label": "[labels[i] for i in probs.argmax(-1).tolist()], probs",
             "multi_label": "[[n for n, p in zip(labels, row) if p > 0.5] for row in probs.tolist()], probs",
             "regression": "probs.squeeze(-1).tolist()"}[task]
    return ("import torch\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            "from transformers.utils import logging\n\n"
            + ("" if base else "# BASE-MODEL: the hub id (or folder) of the model this adapter was trained on\n")
            + f"labels = {json.dumps(labels)}\n"
            f"logging.set_verbosity_error()  # the base has no head for these labels: the adapter brings it\n"
            f"base = AutoModelForSequenceClassification.from_pretrained(\n"
            f"    {b}, num_labels={1 if task == 'regression' else len(labels)}, id2label=dict(enumerate(labels)),\n"
            f"    label2id={{name: i for i, name in enumerate(labels)}},\n"
            f"    problem_type={json.dumps(task_kind(task).problem_type)})\n"
            f"model = PeftModel.from_pretrained(base, {json.dumps(directory)}).eval()\n"
            f"tokenizer = AutoTokenizer.from_pretrained({b})\n"
            f'batch = tokenizer({texts}, padding=True, truncation=True, max_length={max_length}, '
            f'return_tensors="pt")\n'
            f"with torch.no_grad():\n    probs = model(**batch).logits{activate}\n"
            f"print({shown})")
