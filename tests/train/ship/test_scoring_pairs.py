"""A directory of sentence pairs (MRPC's layout: train.jsonl, dev.jsonl, classes.txt) trains, and bulk scoring
reads a file with the same columns."""
import json
import random

import pytest

from helpers.tiny import FILLER, TOPIC_WORDS, train_args

from train.__main__ import main as train
from train.ship.predict import main as predict


def pair_rows(n, seed):
    """Label 1 when both sentences are about one topic."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(4), rng.randrange(4)
        b = a if i % 2 else b
        words = [" ".join(rng.choice(TOPIC_WORDS[t] + FILLER) for _ in range(rng.randint(2, 6))) for t in (a, b)]
        rows.append({"sentence1": words[0], "sentence2": words[1], "label": int(a == b), "idx": i})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_pair_directory_trains_and_its_rows_are_scored(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "mrpc"
    data.mkdir()
    write(data / "train.jsonl", pair_rows(64, 0))
    write(data / "dev.jsonl", pair_rows(16, 1))
    (data / "classes.txt").write_text("not_equivalent\nequivalent\n")
    run = tmp_path / "run"
    assert train(train_args(tiny_model_dir, data, run, "--epochs", "1")) == 0
    rows = [{k: v for k, v in r.items() if k != "label"} for r in pair_rows(5, 2)]
    out = tmp_path / "out.jsonl"
    argv = ["--adapter", run, "--input", write(tmp_path / "pairs.jsonl", rows), "--output", out]
    assert predict([str(a) for a in argv] + ["--precision", "fp32", "--device", "cpu"]) == 0
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["line"] for p in preds] == [1, 2, 3, 4, 5]
    assert all(p["label"] in ("not_equivalent", "equivalent") for p in preds)
    assert "scored 5 rows" in capsys.readouterr().err
    # The same pairs on the command line (--pair, two arguments each) and on stdin (one tab between them) get
    # the labels and probabilities the file gave them.
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    common = ["--adapter", str(run), "--precision", "fp32", "--device", "cpu", "--json", "--pair"]
    assert predict(common + [t for pair in pairs for t in pair]) == 0
    given = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["text"] for g in given] == [list(p) for p in pairs]
    assert [g["probability"] for g in given] == pytest.approx([p["probability"] for p in preds], abs=1e-6)
    monkeypatch_stdin = __import__("io").StringIO("".join(f"{a}\t{b}\n" for a, b in pairs))
    with pytest.MonkeyPatch.context() as m:
        m.setattr("sys.stdin", monkeypatch_stdin)
        assert predict(common) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == [g["label"] for g in given]


@pytest.mark.parametrize("argv, message", [(["a", "b", "c"], "--pair takes texts two by two; 3 were given"),
                                           (["a", ""], "pair 1: second text: empty text")])
def test_pair_arguments_come_two_by_two_and_each_side_is_checked(argv, message, capsys):
    from helpers.oneline import refused

    assert message in refused(["--adapter", "nowhere", "--pair", *argv], capsys, predict)


def test_a_stdin_line_without_one_tab_is_refused_under_pair(capsys, monkeypatch):
    from helpers.oneline import refused

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("first\tsecond\njust one\n"))
    assert "stdin line 2: --pair needs two texts separated by one tab" in refused(["--adapter", "x", "--pair"], capsys,
                                                                                   predict)
