"""train.trackers: metrics.jsonl lines into TensorBoard (read back from the event file), MLflow and W&B
(through stand-ins that record the calls), and one-line errors for an unknown or missing tracker."""
import sys
import types

import pytest

from train.errors import UserError
from train.trackers import metrics, open_tracker

CONFIG = {"model": "roberta-base", "rank": 6, "targets": ["query", "value"], "layers": None, "lr": 5e-4}
LINES = [{"step": 1, "epoch": 0, "loss": 1.4, "lr": 1e-4, "examples_per_s": 30.0},
         {"step": 2, "epoch": 0, "loss": 1.1, "lr": 2e-4, "examples_per_s": 31.0},
         {"step": 2, "epoch": 1, "eval_accuracy": 0.75, "eval_macro_f1": 0.7}]


def mirror(kind, run_dir):
    tracker = open_tracker(kind, run_dir, CONFIG)
    for entry in LINES:
        tracker.log(entry, step=entry["step"])
    tracker.close()
    tracker.close()  # twice is harmless: a finally block may close what an error path closed already


def test_metrics_keeps_numbers_but_not_the_step():
    assert metrics({"step": 3, "loss": 1, "ok": True, "name": "x", "lr": 0.5}) == {"loss": 1.0, "lr": 0.5}


def test_tensorboard_event_file_holds_every_logged_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mirror("tensorboard", tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert set(events.Tags()["scalars"]) == {"epoch", "loss", "lr", "examples_per_s", "eval_accuracy",
                                             "eval_macro_f1"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 1.4), (2, 1.1)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval_accuracy")] == [(2, 0.75)]
    assert "config/text_summary" in events.Tags()["tensors"]


def recorder(name):
    """A module standing in for mlflow or wandb that records every call as (function, args, kwargs)."""
    calls = []

    def record(fn, result=None):
        def call(*args, **kwargs):
            calls.append((fn, args, kwargs))
            return result
        return call
    module = types.ModuleType(name)
    module.calls = calls
    return module, record


def test_mlflow_run_gets_params_and_metrics_per_step(tmp_path, monkeypatch):
    mlflow, record = recorder("mlflow")
    for fn in ("start_run", "log_params", "log_metrics", "end_run"):
        setattr(mlflow, fn, record(fn))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    mirror("mlflow", tmp_path / "run-7")
    names = [c[0] for c in mlflow.calls]
    assert names == ["start_run", "log_params", "log_metrics", "log_metrics", "log_metrics", "end_run"]
    assert mlflow.calls[0][2] == {"run_name": "run-7"}
    assert mlflow.calls[1][1][0] == {"model": "roberta-base", "rank": 6, "targets": '["query", "value"]',
                                     "layers": "null", "lr": 5e-4}
    assert mlflow.calls[4][1:] == (({"epoch": 1.0, "eval_accuracy": 0.75, "eval_macro_f1": 0.7},), {"step": 2})


def test_wandb_run_gets_config_and_metrics_per_step(tmp_path, monkeypatch):
    wandb, record = recorder("wandb")
    run, _ = recorder("run")
    run.log, run.finish = record("log"), record("finish")
    wandb.init = record("init", result=run)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("WANDB_PROJECT", "agnews")
    mirror("wandb", tmp_path / "run-8")
    assert wandb.calls == [("init", (), {"project": "agnews", "name": "run-8", "dir": str(tmp_path / "run-8"),
                                         "config": CONFIG}),
                           ("log", ({"epoch": 0.0, "loss": 1.4, "lr": 1e-4, "examples_per_s": 30.0},), {"step": 1}),
                           ("log", ({"epoch": 0.0, "loss": 1.1, "lr": 2e-4, "examples_per_s": 31.0},), {"step": 2}),
                           ("log", ({"epoch": 1.0, "eval_accuracy": 0.75, "eval_macro_f1": 0.7},), {"step": 2}),
                           ("finish", (), {})]


@pytest.mark.parametrize("kind, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, kind, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(UserError, match=rf"^--report-to {kind} needs the {package} package: "
                                        rf"pip install 'roberta-lora\[{kind}\]'$"):
        open_tracker(kind, tmp_path, CONFIG)


def test_none_does_nothing_and_unknown_kind_is_refused(tmp_path):
    mirror("none", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"^--report-to must be one of none, tensorboard, mlflow, wandb, got 'comet'$"):
        open_tracker("comet", tmp_path, CONFIG)


def test_report_to_tensorboard_mirrors_every_metrics_line_of_a_run(tiny_model_dir, tiny_data_dir, tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers.tiny import train_args
    from train.__main__ import main

    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1", "--report-to", "tensorboard")) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    logged = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert logged["loss"] == pytest.approx([x["loss"] for x in lines if "loss" in x])
    assert logged["eval_accuracy"] == pytest.approx([x["eval_accuracy"] for x in lines if "eval_accuracy" in x])
