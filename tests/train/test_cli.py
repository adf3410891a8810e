"""The command-line layer: flags the user gave are known from the parse, --help shows what runs,
abbreviations are refused, and class coverage is checked before training."""
import csv
import json

import pytest

from helpers.tiny import train_args
from train.__main__ import config_from_args, main, parser
from train.config import TrainConfig
from train.errors import UserError
from train.config import DEFAULT_RECIPE, RECIPES, with_recipe


def config(*argv: str) -> TrainConfig:
    return config_from_args(parser().parse_args(list(argv)))


@pytest.mark.parametrize("abbreviated", [["--warmup", "0.2"], ["--ran", "8"],
                                         ["--recipe", "reference", "--lr-plus", "2"]])
def test_abbreviated_flags_are_refused_not_silently_overwritten(abbreviated, capsys):
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(abbreviated)
    assert stop.value.code == 2
    assert f"unrecognized arguments: {abbreviated[-2]}" in capsys.readouterr().err


def test_rslora_is_switched_either_way_over_the_recipe():
    assert config("--rslora").lora.use_rslora and not config("--no-rslora").lora.use_rslora
    assert not config().lora.use_rslora and not config("--recipe", "reference").lora.use_rslora
    assert config("--recipe", "all-linear", "--rslora", "--rank", "12").lora.scaling == pytest.approx(16 / 12 ** 0.5)


def test_given_flags_win_over_the_recipe_and_others_come_from_it():
    assert config("--warmup-ratio", "0.2").warmup_ratio == 0.2  # the default recipe says 0.06
    assert config("--rank", "8").lora.rank == 8
    assert config("--recipe", "reference", "--warmup-ratio", "0.2").warmup_ratio == 0.2
    ref = config("--recipe", "reference")
    assert ref.warmup_ratio == RECIPES["reference"]["warmup_ratio"] and ref.lora.rank == 4
    assert config("--rank", "auto").rank == "auto" and config("--rank", "auto").to_flat()["rank"] == "auto"


def test_a_sweeps_layers_replace_the_fast_recipes_top_layers_as_on_the_command_line():
    cfg = TrainConfig.from_flat(with_recipe("fast", {"layers": (10, 11)}))  # train.sweep merges runs so
    cli = config("--recipe", "fast", "--layers", "10,11")
    assert (cfg.top_layers, cfg.lora.layers) == (cli.top_layers, cli.lora.layers) == (None, (10, 11))


def test_help_shows_the_defaults_that_run(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps long lines anywhere
    default = RECIPES[DEFAULT_RECIPE]
    assert f"{DEFAULT_RECIPE}:{default['rank']};" in shown and f"{DEFAULT_RECIPE}:{default['lr']};" in shown
    assert f"{DEFAULT_RECIPE}:{','.join(default['targets'])};" in shown and f"(default:{DEFAULT_RECIPE})" in shown


def test_trainconfig_the_cli_and_sweeps_default_to_the_same_recipe():
    plain, cli = TrainConfig(), config("--output-dir", "x", "--cache-dir", "")
    assert plain.lora == cli.lora and (plain.lr, plain.head, plain.warmup_ratio) == (cli.lr, cli.head, cli.warmup_ratio)
    flat = TrainConfig.from_flat({})
    asked = [(c.rank, c.max_rank) for c in (plain, cli, flat)]
    assert flat.lora == plain.lora and asked == [("auto", 6)] * 3
    default = RECIPES[DEFAULT_RECIPE]
    assert (plain.rank, plain.max_rank, plain.lr) == (default["rank"], default["max_rank"], default["lr"])


def test_a_rank_given_drops_the_recipes_ceiling_and_max_rank_sets_one():
    """The default recipe's rank is 'auto, at most 6'; --rank N is N (refused if over the budget), --rank auto the
    largest under it, unless --max-rank caps it; the fast recipe has no ceiling."""
    eight = config("--rank", "8")
    assert (eight.rank, eight.max_rank, eight.lora.rank) == (None, None, 8)
    assert (config("--rank", "auto").rank, config("--rank", "auto").max_rank) == ("auto", None)
    assert config("--rank", "auto", "--max-rank", "9").max_rank == 9 == config("--max-rank", "9").max_rank
    assert config("--recipe", "fast").max_rank is None and config("--recipe", "reference").lora.rank == 4
    assert TrainConfig.from_flat(config("--max-rank", "9").to_flat()).max_rank == 9  # config.json's round trip
    with pytest.raises(UserError, match=r"^max_rank must be a whole number >= 1, got 0$"):
        config("--max-rank", "0")


def write_rows(path, rows) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


@pytest.fixture
def classes_1_and_9(tmp_path):
    """AG News-layout files with labels 1 and 9 only, and no classes.txt: 7 of 9 classes are empty."""
    data = tmp_path / "gaps"
    data.mkdir()
    rows = [(1 if i % 2 else 9, f"goal match {i}", "league") for i in range(32)]
    write_rows(data / "train.csv", rows)
    write_rows(data / "test.csv", rows[:8])
    return data


def test_a_class_without_training_rows_is_refused(tiny_model_dir, classes_1_and_9, tmp_path, capsys):
    rc = main(train_args(tiny_model_dir, classes_1_and_9, tmp_path / "o", "--epochs", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "7 of 9 classes have no training row (2, 3, 4, 5, 6, …)" in err[0] and "--allow-empty-classes" in err[0]
    assert not (tmp_path / "o").exists()


def test_allow_empty_classes_trains_on_purpose(tiny_model_dir, classes_1_and_9, tmp_path):
    out = tmp_path / "o"
    assert main(train_args(tiny_model_dir, classes_1_and_9, out, "--epochs", "1", "--allow-empty-classes")) == 0
    assert len(json.loads((out / "eval.json").read_text())["labels"]) == 9


def test_evaluation_classes_must_match_training(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "test.csv").write_text((tiny_data_dir / "test.csv").read_text())
    (other / "classes.txt").write_text("A\nB\nC\nD\nE\n")
    argv = [a for a in train_args(tiny_model_dir, tiny_data_dir, tmp_path / "o")
            if a not in ("--data", str(tiny_data_dir))]
    rc = main(argv + ["--train-file", str(tiny_data_dir / "train.csv"), "--eval-file", str(other / "test.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "the evaluation file's classes.txt lists ['A', 'B', 'C', 'D', 'E']" in err


def test_top_layers_resolve_to_the_last_k_layers_of_the_model_and_are_written_resolved():
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from train.model import resolve

    with torch.device("meta"):
        base = RobertaForSequenceClassification(RobertaConfig(num_labels=4))
    cfg = config("--top-layers", "3", "--rank", "24")
    assert cfg.top_layers == 3 and cfg.lora.layers is None
    resolved, rows = resolve(cfg, base, 32)
    assert resolved.lora.layers == (9, 10, 11) and sum(v for _, v in rows) == 998_404  # 24 × 13,824 × 3 + 3,076
    assert resolved.top_layers is None and resolved.lora.layers == (9, 10, 11)
    assert config("--recipe", "reference", "--layers", "1").lora.layers == (1,)
    with pytest.raises(UserError, match="give top_layers or layers, not both"):
        config("--top-layers", "3", "--layers", "1")
    with pytest.raises(ValueError, match="give top_layers or layers, not both"):
        TrainConfig.from_flat({"top_layers": 3, "layers": (1,)})
    with pytest.raises(Exception, match="has only 12 encoder layers"):
        resolve(config("--top-layers", "13"), base, 32)


def test_holdout_scores_on_fixed_training_rows_never_on_the_eval_file(tiny_model_dir, tiny_data_dir, tmp_path):
    from train.data.corpus import Split
    from train.data.splits import carve_holdout

    split = Split([f"t{i}" for i in range(40)], [i % 4 for i in range(40)])
    rest, held = carve_holdout(split, 8)
    assert sorted(held.texts + rest.texts) == sorted(split.texts) and not set(held.texts) & set(rest.texts)
    assert sorted(held.labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert carve_holdout(split, 8)[1].texts == held.texts  # the same rows every time
    argv = [a for a in train_args(tiny_model_dir, tiny_data_dir, tmp_path / "o", "--epochs", "1")
            if a not in ("--data", str(tiny_data_dir))]
    argv += ["--train-file", str(tiny_data_dir / "train.csv"), "--holdout", "32", "--seed", "5"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "o/eval.json").read_text())
    assert sum(map(sum, result["confusion"])) == 32 and result["train_examples"] == 256 - 32


def test_the_fast_recipe_adapts_the_top_half_at_the_largest_rank_inside_the_budget():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from train.model import resolve

    fast = config("--recipe", "fast")
    assert (fast.top_layers, fast.rank, fast.lora.use_rslora, fast.epochs) == (0.5, "auto", True, 2)
    resolved, rows = resolve(fast, RobertaForSequenceClassification(RobertaConfig(num_labels=4)), 32)  # roberta-base
    lora = resolved.lora
    assert (lora.rank, lora.layers, sum(v for _, v in rows)) == (12, tuple(range(6, 12)), 998_404)  # 12 × 13,824 × 6
    assert (resolved.rank, resolved.top_layers) == (None, None)  # nothing left to resolve in what is recorded
    assert config("--recipe", "fast", "--layers", "5").top_layers is None  # the user's layers win
    assert config("--recipe", "fast", "--top-layers", "3").top_layers == 3


@pytest.mark.parametrize("module", ["train.__main__", "train.ship.evaluate", "train.ship.predict",
                                    "train.ship.export", "train.sweep"])
def test_every_flag_says_what_it_does(module):
    import argparse
    import importlib

    for action in importlib.import_module(module).parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = (action.help or "").strip()
        assert text and not text.startswith(("(default", "default:")) and len(text.split()) >= 3, action.dest


def test_defaults_that_depend_on_the_recipe_are_shown_per_recipe():
    from train.__main__ import parser

    text = " ".join(parser().format_help().split())
    assert "passes over the training data (default: all-linear: 5; fast: 2; reference: 5)" in text
    assert "(default: all-linear: auto; fast: auto; reference: 4)" in text
    assert "(a --rank given drops the recipe's) (default: all-linear: 6; fast: none; reference: none)" in text


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBERTA_LORA_DEBUG", "1")
    with pytest.raises(UserError, match="nothing to resume"):
        main(["--resume", str(tmp_path)])
