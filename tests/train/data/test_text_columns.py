"""--text-columns a[,b]: files whose text sits in columns of other names train, and predict scores their rows from
the columns the run recorded; a name that is no column, or three names, is one line."""
import json
import random

import pytest

from helpers.oneline import refused
from helpers.tiny import FILLER, TOPIC_WORDS, train_args

from train.__main__ import main as train
from train.config import TrainConfig
from train.ship.predict import main as predict


def rows(n, seed, label=True):
    """Columns a and b (not the hub's names): label 1 when both are about one topic."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x, y = rng.randrange(4), rng.randrange(4)
        y = x if i % 2 else y
        a, b = (" ".join(rng.choice(TOPIC_WORDS[t] + FILLER) for _ in range(rng.randint(2, 6))) for t in (x, y))
        out.append({"a": a, "b": b, **({"label": int(x == y)} if label else {})})
    return out


def write(path, found):
    path.write_text("".join(json.dumps(r) + "\n" for r in found))
    return path


@pytest.fixture
def files(tmp_path):
    return ["--train-file", str(write(tmp_path / "train.jsonl", rows(64, 0))),
            "--eval-file", str(write(tmp_path / "dev.jsonl", rows(16, 1)))]


def test_named_columns_train_and_predict_scores_them(tiny_model_dir, tmp_path, files, capsys):
    run = tmp_path / "run"
    assert train(train_args(tiny_model_dir, tmp_path, run, "--epochs", "1", *files, "--text-columns", "a,b")) == 0
    assert json.loads((run / "config.json").read_text())["train"]["text_columns"] == ["a", "b"]
    out = tmp_path / "out.jsonl"
    argv = ["--adapter", run, "--input", write(tmp_path / "score.jsonl", rows(5, 2, label=False)), "--output", out]
    assert predict([str(a) for a in argv] + ["--precision", "fp32", "--device", "cpu"]) == 0
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["line"] for p in preds] == [1, 2, 3, 4, 5]
    assert all(p["label"] in ("0", "1") for p in preds)
    assert "scored 5 rows" in capsys.readouterr().err


def test_without_the_flag_such_files_are_refused_in_one_line(tiny_model_dir, tmp_path, files, capsys):
    line = refused(train_args(tiny_model_dir, tmp_path, tmp_path / "run", *files), capsys)
    assert "train.jsonl line 1: needs 'text' and 'label' fields" in line


def test_a_name_that_is_no_column_names_the_file_and_its_columns(tiny_model_dir, tmp_path, files, capsys):
    line = refused(train_args(tiny_model_dir, tmp_path, tmp_path / "run", *files, "--text-columns", "a,z"), capsys)
    assert "train.jsonl line 1: text columns a,z: no column 'z' (it has a, b, label)" in line


def test_three_columns_are_refused(tiny_model_dir, tmp_path, files, capsys):
    line = refused(train_args(tiny_model_dir, tmp_path, tmp_path / "run", *files, "--text-columns", "a,b,c"), capsys)
    assert "text_columns must be one or two distinct column names, got ('a', 'b', 'c')" in line


@pytest.mark.parametrize("columns", [(), ("a", "a"), ("a", ""), ("a", "b", "c"), "ab", (1,)])
def test_the_config_takes_one_or_two_distinct_names(columns):
    with pytest.raises(ValueError, match=r"lr must be > 0, got 0; .*text_columns must be one or two distinct column "
                                         r"names, got"):
        TrainConfig(text_columns=columns, lr=0)


def test_the_config_reads_back_its_columns():
    cfg = TrainConfig(text_columns=("a", "b"))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_hub_dataset_is_refused_named_columns():
    from train.data.corpus import open_corpus
    from train.errors import UserError

    with pytest.raises(UserError, match=r"^--text-columns names columns of files .*, not of hub dataset someone/news$"):
        open_corpus("someone/news", text_columns=("a", "b"))
