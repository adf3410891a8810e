"""python -m train.export RUN_DIR_OR_ADAPTER --out DIR --format hf|peft|onnx: a trained run as a model
anyone can load, with a README.md model card.

hf: LoRA merged into the base weights, saved as a stock *ForSequenceClassification directory (config with
id2label/label2id, safetensors, tokenizer). peft: the adapter for PeftModel.from_pretrained. onnx: the
merged model with dynamic batch and sequence axes, checked against PyTorch in ONNX Runtime when it is installed.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lora import merge_and_unload
from lora.adapter import CONFIG_NAME as ADAPTER_CONFIG
from train.files import ANY, NUMBER, TEXT, WHOLE, check_output, read_json_as, sweep_temps, temp_name

from ..cli import Parser, run_main
from ..errors import UserError, interruptible
from ..prefix import Logits
from ..rundir import ADAPTER, EVAL, RUN_INFO, read_run_info
from .modelcard import METRICS, base_license, hub_base, write_model_card
from .runs import check_finished, load_for_inference, scores_file

FORMATS = ("hf", "peft", "onnx")
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4  # max |Δlogit| between ONNX Runtime and PyTorch that the export accepts
# Written into every export: --overwrite replaces only a directory that holds it (never a run, never other data).
MARKER = ".roberta-lora-export"
# What the model card reads from eval.json: checked when it is read, so a damaged file is one line, not a traceback.
SCORES = {"examples": WHOLE, "trainable_params?": WHOLE, "best_epoch?": ANY, "selected_on?": TEXT,
          **{f"{k}?": NUMBER for k in METRICS},
          "per_class?": [{"label": TEXT, "precision": NUMBER, "recall": NUMBER, "f1": NUMBER, "support": WHOLE}]}


@dataclass
class Run:
    adapter_dir: Path
    info: dict  # {"train": TrainConfig dict, "labels": [...]}
    report: dict | None  # eval.json: accuracy, macro_f1, per_class, examples, trainable_params, ...
    finished: bool  # the run directory (or the adapter's scores) says training ended


def find_run(path: str | Path) -> Run:
    """A run directory (with adapter/) or an adapter directory, with its run info and scores."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path} does not exist")
    if (p / ADAPTER_CONFIG).is_file():
        adapter = p
    elif (p / ADAPTER / ADAPTER_CONFIG).is_file():
        adapter = p / ADAPTER
    else:
        raise UserError(f"{path} is neither a run directory (with {ADAPTER}/) nor an adapter directory "
                        f"(with {ADAPTER_CONFIG})")
    record = read_run_info(adapter)
    cfg, labels = record.train, record.labels
    scores = scores_file(adapter)
    report = read_json_as(scores, "the eval.json of a run of python -m train", SCORES) if scores else None
    return Run(adapter, {"train": cfg.to_flat(), "labels": labels}, report, finished=report is not None)


def export(source: str, out: str, fmt: str, model_name: str | None = None, overwrite: bool = False,
           allow_unfinished: bool = False, base_model_id: str | None = None, license: str | None = None) -> dict:
    """Write `source` (run or adapter directory) to `out` in format `fmt`; the directory appears whole or not
    at all (a staging folder beside it, removed on any error or signal, swept when a kill left it). Returns
    what was checked, e.g. {"onnx_max_abs_diff": 3e-7}."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = find_run(source)
    check_finished(source, run.adapter_dir, allow_unfinished)
    target = Path(out)
    _check_target(target, run, overwrite)
    if fmt == "onnx":
        _need_onnx()
    model, tokenizer, info = load_for_inference(str(run.adapter_dir), model_name, torch.device("cpu"))
    trainable = (run.report or {}).get("trainable_params") or info["trainable_params"]
    info = {"train": info["train"].to_flat(), "labels": info["labels"], "pairs": info["pairs"]}  # the card: flat
    trained_on = model_name or info["train"]["model"]
    base = hub_base(trained_on, base_model_id)  # a hub id or None: the card and adapter never name a local path
    license = license or base_license(trained_on, base)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_name(target)[0], suffix=temp_name(target)[1]))
    try:
        checks = {}
        if fmt == "peft":
            _write_peft(run, staging, base)
        else:
            merge_and_unload(model)  # config.problem_type is the task's: pipeline() activates by it
            # The training length, so that truncation=True (pipeline, tokenizer) cuts where predict does.
            tokenizer.model_max_length = info["train"]["max_length"]
            tokenizer.save_pretrained(staging)
            if fmt == "hf":
                model.save_pretrained(staging)
            else:
                model.config.save_pretrained(staging)
                checks = _write_onnx(model, tokenizer, staging / ONNX_FILE, info["pairs"])
        write_model_card(staging, fmt, info, run.report, trainable, base_model=base, shown=target.name,
                         license=license)
        (staging / MARKER).write_text(json.dumps({"format": fmt, "source": str(Path(source).resolve())}) + "\n")
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return checks


def _check_target(target: Path, run: Run, overwrite: bool) -> None:
    """Never onto, into or around what is exported (the adapter, and the run directory it sits in): replacing
    --out would delete it. An empty folder is taken; anything else only with --overwrite, and only an export."""
    inputs = [run.adapter_dir, *([run.adapter_dir.parent] if run.adapter_dir.name == ADAPTER else [])]
    check_output(target, inputs=inputs, overwrite=overwrite, ours=_empty_folder, flag="--out")
    if os.path.lexists(target) and not _empty_folder(target) and not (_folder(target) and (target / MARKER).is_file()):
        raise UserError(f"--out {target} is not an export of python -m train.export (no {MARKER}); --overwrite "
                        "only replaces an export: remove it yourself if it should go")


def _folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()  # a link is never replaced: rmtree would refuse it half-way


def _empty_folder(path: Path) -> bool:
    return _folder(path) and not any(path.iterdir())


def _replace(staging: Path, target: Path) -> None:
    """Put the finished export in place of `target` (empty, absent, or an export to overwrite), every file and
    folder with the mode the umask gives (mkdtemp and transformers' save_pretrained make theirs private)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [staging, *staging.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _write_peft(run: Run, staging: Path, base: str | None) -> None:
    """The adapter's own files: save_adapter already writes what PEFT loads (the whole head stored)."""
    for name in ("adapter_model.safetensors", ADAPTER_CONFIG, RUN_INFO):
        shutil.copyfile(run.adapter_dir / name, staging / name)
    if run.report is not None:  # the scores travel with the adapter, so it can be exported again with its card
        (staging / EVAL).write_text(json.dumps(run.report, indent=2) + "\n")
    raw = read_json_as(staging / ADAPTER_CONFIG, "an adapter config of PEFT", {})
    raw["base_model_name_or_path"] = base  # where PEFT finds the base: its hub id, never this machine's path
    (staging / ADAPTER_CONFIG).write_text(json.dumps(raw, indent=2) + "\n")


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"--format onnx needs {e.name}: pip install 'roberta-lora[onnx]'") from None


def _write_onnx(model: nn.Module, tokenizer, path: Path, pairs: bool = False) -> dict:
    """Export with torch.export (dynamic batch and sequence), then compare ONNX Runtime with PyTorch. A model
    trained on pairs is traced on pairs; where its tokenizer gives token types (BERT's), they are a third input."""
    import logging
    import warnings

    texts = ["a short text", "a longer text, which makes the batch need padding"]
    sample = tokenizer(texts, texts[::-1] if pairs else None, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if pairs and "token_type_ids" in sample else [])]
    inputs = tuple(sample[n] for n in names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed", progress lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Logits(model).eval(), inputs, dynamo=True, verbose=False, external_data=False,
            input_names=names, output_names=["logits"],
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names})
    program.save(str(path))
    try:
        import onnxruntime
    except ImportError:
        return {}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: x.numpy() for n, x in zip(names, inputs)})[0]
    with torch.no_grad():
        expected = model(**dict(zip(names, inputs))).logits
    diff = float((torch.from_numpy(got) - expected).abs().max())
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime's logits differ from PyTorch's by {diff:.2g} (> {ONNX_TOLERANCE:g})")
    return {"onnx_max_abs_diff": diff}


def parser() -> Parser:
    p = Parser(prog="python -m train.export", description="Export a trained run as a loadable model.")
    p.add_argument("source", metavar="RUN_DIR_OR_ADAPTER", help="run directory (with adapter/) or adapter directory")
    p.add_argument("--out", required=True, help="directory to write (must not exist, or be empty)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="hf: merged transformers model; peft: adapter for PeftModel; onnx: merged model in ONNX")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument("--base-model-id", help="the base model's hub id, for the card and the adapter (default: the "
                   "model trained on when it is a hub id, else the name its config.json records)")
    p.add_argument("--license", help="the card's license (default: the base model card's, when it names one)")
    p.add_argument("--allow-unfinished", action="store_true", help="export a run that has not finished (its best "
                   "epoch so far)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: _export(args), argv)


def _export(args) -> int:
    with interruptible():  # SIGTERM mid-export: the staging folder goes, nothing half-written stays
        checks = export(args.source, args.out, args.format, args.model, args.overwrite, args.allow_unfinished,
                        args.base_model_id, args.license)
    extra = f" (ONNX Runtime vs PyTorch: max |Δlogit| {checks['onnx_max_abs_diff']:.1e})" if checks else ""
    print(f"wrote {args.format} export to {args.out}{extra}; its README.md says how to use it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
