"""python -m train end to end on a tiny RoBERTa: outputs, accuracy, reproducibility, resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.tiny import train_args
from train.__main__ import main


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out)) == 0
    return out


def read_losses(out):
    return [e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def test_run_learns_and_writes_every_output(full_run):
    result = json.loads((full_run / "eval.json").read_text())
    assert result["accuracy"] >= 0.8  # 4 balanced classes: chance is 0.25
    # no validation rows: the final epoch is kept, never the best one on the file it reports
    assert result["accuracy"] == result["history"][-1]["accuracy"] and result["best_epoch"] == 4
    assert result["selected_on"] == "final epoch (no validation rows)" and result["metric"] == "accuracy"
    assert {"macro_f1", "per_class", "confusion", "train_seconds", "eval_seconds", "train_examples_per_s",
            "trainable_params"} <= set(result)
    assert sum(map(sum, result["confusion"])) == 64
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "curves.png", "confusion.png",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (full_run / name).is_file(), name
    config = json.loads((full_run / "config.json").read_text())
    assert config["train"]["lora"]["rank"] == 8 and config["train"]["epochs"] == 4
    assert len(read_losses(full_run)) == 4 * 16  # one line per step


def test_same_seed_gives_same_metrics(full_run, tiny_model_dir, tiny_data_dir, tmp_path):
    assert main(train_args(tiny_model_dir, tiny_data_dir, tmp_path / "again")) == 0
    first, again = (json.loads((d / "eval.json").read_text()) for d in (full_run, tmp_path / "again"))
    assert again["confusion"] == first["confusion"]
    assert read_losses(tmp_path / "again") == read_losses(full_run)


def test_resume_mid_epoch_equals_uninterrupted(full_run, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "resumed"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--stop-after", "21", "--save-every", "7")) == 0
    assert not (out / "eval.json").exists()
    assert main(["--resume", str(out)]) == 0
    assert read_losses(out) == read_losses(full_run)
    first, resumed = (json.loads((d / "eval.json").read_text()) for d in (full_run, out))
    assert resumed["confusion"] == first["confusion"] and resumed["history"] == [
        {**h, "eval_seconds": r["eval_seconds"]} for h, r in zip(first["history"], resumed["history"])]
    a, b = (load_file(str(d / "adapter/adapter_model.safetensors")) for d in (full_run, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_and_predict_use_the_saved_adapter(full_run, tiny_data_dir, capsys):
    from train.ship.evaluate import main as evaluate
    from train.ship.predict import main as predict

    assert evaluate(["--adapter", str(full_run / "adapter"), "--eval-file", str(tiny_data_dir / "test.csv"),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == json.loads((full_run / "eval.json").read_text())["accuracy"]
    assert predict(["--adapter", str(full_run / "adapter"), "--json", "goal match striker league",
                    "shares market profit bank"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == ["Sports", "Business"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch,
                                                          capsys):
    import train.tasks

    real, calls = train.tasks.F.cross_entropy, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(train.tasks.F, "cross_entropy", poisoned)
    out = tmp_path / "nan"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--save-every", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert "loss became nan at step 5" in err and len(err.splitlines()) == 1
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == 4  # the last good one


def test_default_recipe_adapts_every_linear_layer_with_a_lean_head(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "default"
    argv = [a for a in train_args(tiny_model_dir, tiny_data_dir, out) if a not in ("--recipe", "reference")]
    assert main([a for a in argv if a not in ("--lr", "2e-2")] + ["--lr", "5e-3"]) == 0
    config = json.loads((out / "config.json").read_text())
    config = config["train"]
    assert config["head"] == "linear" and len(config["lora"]["targets"]) == 6 and config["warmup_ratio"] > 0
    keys = load_file(str(out / "adapter/adapter_model.safetensors")).keys()
    assert {k.split(".")[-3] for k in keys if "lora_A" in k} == {"query", "key", "value", "dense"}
    assert json.loads((out / "eval.json").read_text())["accuracy"] >= 0.8


def test_a_moved_run_resumes_with_another_cache_dir(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1", "--stop-after", "3",
                           "--cache-dir", str(tmp_path / "c1"))) == 0
    assert main(["--resume", str(out), "--cache-dir", str(tmp_path / "c2")]) == 0
    assert list((tmp_path / "c2").glob("*.safetensors")) and (out / "eval.json").is_file()


@pytest.mark.parametrize("text", ['{"train": ' * 100_000, '{"n": 1' + "0" * 5000 + "}", '{"a": 1'])
def test_a_record_nested_too_deeply_or_with_a_number_too_long_is_one_line(tmp_path, text):
    from train.errors import UserError
    from train.rundir import read_json

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        read_json(tmp_path / "config.json", "run config")


@pytest.mark.slow
def test_a_checkpoint_of_an_earlier_build_is_one_line(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    """A checkpoint whose progress has other fields (an earlier build kept best_accuracy) is refused, not a crash."""
    from helpers.oneline import refused

    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1", "--stop-after", "3")) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["progress"]["best_accuracy"] = state["progress"].pop("best_score")
    torch.save(state, out / "checkpoint.pt")
    capsys.readouterr()
    line = refused(["--resume", str(out)], capsys)
    assert "checkpoint.pt does not fit this run (TypeError" in line and "start again with --overwrite" in line
