"""A directory of sentence pairs (MRPC's layout: train.jsonl, dev.jsonl, classes.txt) trains, and bulk scoring
reads a file with the same columns."""
import json
import random

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
