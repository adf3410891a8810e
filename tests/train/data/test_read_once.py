"""The data are read once before training: one pass over each file's rows checks, fingerprints and tokenizes
them; a warm token cache reads none of them (only each file's first record, which says its format); the plan
still counts the rows; and a resume on other data is still refused."""
import json
import os

import pytest
import torch

import train.data.sources
import train.trainer
from helpers.oneline import refused
from helpers.tiny import train_args, write_agnews, write_jsonl
from train.__main__ import main
from train.data.batches import encode
from train.data.corpus import Split
from train.data.sources import Rows
from train.metrics import PLOTTED


@pytest.fixture
def rows_read(monkeypatch):
    """{file name: rows its readers yielded}, counted where CSV and JSON Lines records are parsed."""
    counts = {}

    def counted(real):
        def read(path, *args):
            for item in real(path, *args):
                counts[path.name] = counts.get(path.name, 0) + 1
                yield item
        return read
    monkeypatch.setattr(train.data.sources, "_csv_rows", counted(train.data.sources._csv_rows))
    monkeypatch.setattr(train.data.sources, "jsonl_objects", counted(train.data.sources.jsonl_objects))
    return counts


def run(model, data, out, *extra):
    return main(train_args(model, data, out, "--epochs", "1", "--stop-after", "1", *extra))


def test_a_run_reads_each_row_once_cold_and_none_warm(tiny_model_dir, tiny_data_dir, tmp_path, rows_read, capsys):
    cache = str(tmp_path / "cache")
    assert run(tiny_model_dir, tiny_data_dir, tmp_path / "a", "--cache-dir", cache) == 0
    assert rows_read == {"train.csv": 1 + 256, "test.csv": 1 + 64}  # the first record (its format), then one pass
    assert "data       256 train / 64 eval examples" in capsys.readouterr().out
    rows_read.clear()
    assert run(tiny_model_dir, tiny_data_dir, tmp_path / "b", "--cache-dir", cache) == 0
    assert rows_read == {"train.csv": 1, "test.csv": 1}  # the first record only: the cache holds the rest
    assert "data       256 train / 64 eval examples" in capsys.readouterr().out  # counted by the cache
    rows_read.clear()
    assert run(tiny_model_dir, tiny_data_dir, tmp_path / "c", "--cache-dir", "") == 0  # no cache: one pass too
    assert rows_read == {"train.csv": 1 + 256, "test.csv": 1 + 64}


def test_picks_and_inferred_names_read_their_labels_once_cold_and_nothing_warm(tiny_model_dir, tmp_path, rows_read):
    """Without classes.txt the names come from one pass over the training labels; --holdout and a subset pick
    their rows from one pass over the labels. The cache remembers all of it: a warm run reads no row."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", 120, seed=1)
    cache = str(tmp_path / "cache")
    flags = ["--train-file", str(data / "train.jsonl"), "--holdout", "24", "--max-train-samples", "60",
             "--cache-dir", cache]
    argv = [a for a in train_args(tiny_model_dir, data, tmp_path / "a", "--epochs", "1", "--stop-after", "1")
            if a not in ("--data", str(data))]
    assert main(argv + flags) == 0
    # the names, the holdout's pick, the subset's pick, and one pass over the rest, which keeps the held-out rows
    # it passes: the evaluation split is read from them (a JSON Lines file's format needs no record read)
    assert rows_read == {"train.jsonl": 120 * 4}
    rows_read.clear()
    argv[argv.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert main(argv + flags) == 0
    assert rows_read == {}


def test_a_resume_on_data_edited_in_place_is_refused_with_a_warm_cache(tiny_model_dir, tmp_path, capsys):
    """An edit that keeps the file's size and mtime still changes its ctime: the cache does not vouch for the
    rows, they are read again, and their fingerprint is not the checkpoint's."""
    data, out = write_agnews(tmp_path / "data", 64, 16), tmp_path / "run"
    cache = str(tmp_path / "cache")
    assert main(train_args(tiny_model_dir, data, out, "--epochs", "2", "--stop-after", "3", "--cache-dir", cache)) == 0
    train = data / "train.csv"
    stat, text = train.stat(), train.read_text()
    first = text.index('"1"')
    train.write_text(text[:first] + '"2"' + text[first + 3:])  # one label changed, the size kept
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    line = refused(["--resume", out], capsys)
    assert "the data differ from what" in line


def test_the_plots_are_drawn_from_the_runs_own_history_across_a_resume(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                        monkeypatch):
    drawn = []
    monkeypatch.setattr(train.trainer, "plot_run", lambda out, result, entries: drawn.append(list(entries)))
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "2", "--stop-after", "5")) == 0
    assert main(["--resume", str(out)]) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    [entries] = drawn
    assert entries == [{k: v for k, v in e.items() if k in PLOTTED} for e in logged]
    assert [e["step"] for e in entries if "loss" in e] == list(range(1, 33))  # both sessions' steps


class Counted(Rows):
    def __init__(self, rows, **kwargs):
        self.passes = 0

        def read():
            self.passes += 1
            return iter(rows)
        super().__init__(read, "counted", **kwargs)


SPLIT = Split(["war treaty", "goal match", "bank shares", "chip robot"] * 5, [0, 1, 2, 3] * 5)


@pytest.mark.parametrize("named", ["origin", "key", "stream"])
def test_encode_reads_its_rows_once_to_build_and_not_at_all_to_find(named, tokenizer, tmp_path):
    kwargs = {"origin": lambda: "files"} if named == "origin" else {"key": lambda: "fp"} if named == "key" else {}
    rows = Counted(list(SPLIT), **kwargs)
    want = encode(SPLIT, tokenizer, 8, None)
    built = encode(rows, tokenizer, 8, tmp_path)
    assert rows.passes == 1 and tokenizer.calls == 2  # want's call, then the one pass that built the entry
    found = encode(rows, tokenizer, 8, tmp_path)
    assert rows.passes == 1 + (named == "stream")  # a stream is named by its content: read (once) to find it
    assert tokenizer.calls == 2 + (named == "stream")
    assert found.key == built.key and torch.equal(found.ids, want.ids) and torch.equal(found.labels, want.labels)
    if named != "key":  # the content names the rows: the same key as rows held in memory, cached or not
        assert built.key == want.key == encode(SPLIT, tokenizer, 8, tmp_path / "other").key
