"""python -m train.predict on files: CSV and JSONL in, JSONL and CSV out, malformed rows stopped or skipped
with their line numbers, an adapter, a run directory or a merged export as the model."""
import csv
import json

import pytest
import torch

from helpers.shipping import TEXTS, make_adapter, make_encoder_dir
from helpers.tiny import CLASSES
from train.ship.export import main as export
from train.ship.predict import main as predict

FP32 = ["--precision", "fp32", "--device", "cpu", "--batch-size", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    run, _, _ = make_adapter(root / "run", make_encoder_dir(root / "encoder"), "lora", ("query", "value"))
    assert export([str(run), "--out", str(root / "merged"), "--format", "hf"]) == 0
    return run


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def jsonl(tmp_path):
    """Line 3 is not JSON, line 4 blank (ignored), line 5 has no text, line 7 an empty one."""
    lines = [json.dumps({"id": "a", "text": TEXTS[0]}), json.dumps({"text": TEXTS[1]}), "{not json", "",
             json.dumps({"title": "no text"}), json.dumps({"id": 7, "text": TEXTS[2]}), json.dumps({"text": " "})]
    return write(tmp_path / "rows.jsonl", "\n".join(lines) + "\n")


@pytest.fixture
def csv_rows(tmp_path):
    """A quoted text spanning two lines (lines 3-4), line 5 with a field too many."""
    return write(tmp_path / "rows.csv", f'id,text\nx1,{TEXTS[0]}\nx2,"{TEXTS[1]}\nsecond line"\nx3,a,b\n'
                                        f'x4,"{TEXTS[3]}, with a comma"\n')


def score(*argv, capsys):
    code = predict([str(a) for a in argv] + FP32)
    return code, capsys.readouterr().err


def test_malformed_row_stops_by_default_naming_its_line(run, jsonl, csv_rows, tmp_path, capsys):
    code, err = score("--adapter", run / "adapter", "--input", jsonl, "--output", tmp_path / "p.jsonl", capsys=capsys)
    assert code == 2 and err == f"error: {jsonl} line 3: not valid JSON (Expecting property name enclosed in " \
                                "double quotes); --on-bad-row skip scores the other rows\n"
    code, err = score("--adapter", run, "--input", csv_rows, "--output", tmp_path / "p.csv", capsys=capsys)
    assert code == 2 and err.startswith(f"error: {csv_rows} line 5: expected 2 columns (id,text), got 3;")
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.csv").exists()


def test_skip_reports_each_malformed_row_and_scores_the_rest(run, jsonl, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    code, err = score("--adapter", run / "adapter", "--input", jsonl, "--output", out, "--on-bad-row", "skip",
                      capsys=capsys)
    assert code == 0
    assert err.splitlines() == [f"skipped {jsonl} line 3: not valid JSON (Expecting property name enclosed in "
                                "double quotes)", f'skipped {jsonl} line 5: needs a "text" field',
                                f"skipped {jsonl} line 7: empty text",
                                f"scored 3 rows of {jsonl} into {out}; skipped 3 malformed"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [{k: r[k] for k in r if k in ("id", "line")} for r in rows] == [{"id": "a"}, {"line": 2}, {"id": 7}]
    expected = expected_rows(run, [TEXTS[0], TEXTS[1], TEXTS[2]], capsys)
    for row, want in zip(rows, expected):
        assert row["label"] == want["label"] and set(row["probabilities"]) == set(CLASSES)
        assert row["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert row["probability"] == max(row["probabilities"].values())


def expected_rows(run, texts, capsys):
    """What predict says for the same texts given on the command line."""
    assert predict(["--adapter", str(run / "adapter"), "--json", *texts] + FP32) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def test_csv_in_csv_out_keeps_ids_order_and_every_probability(run, csv_rows, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code, err = score("--adapter", run, "--input", csv_rows, "--output", out, "--on-bad-row", "skip", capsys=capsys)
    assert code == 0 and f"skipped {csv_rows} line 5: expected 2 columns" in err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["id", "label", *(f"prob_{c}" for c in CLASSES)]
    assert [r["id"] for r in rows] == ["x1", "x2", "x4"]
    texts = [TEXTS[0], f"{TEXTS[1]}\nsecond line", f"{TEXTS[3]}, with a comma"]
    for row, want in zip(rows, expected_rows(run, texts, capsys)):
        assert row["label"] == want["label"]
        assert [float(row[f"prob_{c}"]) for c in CLASSES] == pytest.approx(
            [want["probabilities"][c] for c in CLASSES], abs=1e-6)


def test_merged_export_scores_without_an_adapter_like_the_adapter(run, jsonl, tmp_path, capsys):
    args = ["--input", jsonl, "--on-bad-row", "skip"]
    assert score("--adapter", run, *args, "--output", tmp_path / "a.jsonl", capsys=capsys)[0] == 0
    assert score("--model", run.parent / "merged", *args, "--output", tmp_path / "m.jsonl", capsys=capsys)[0] == 0
    a, m = ([json.loads(x) for x in (tmp_path / f).read_text().splitlines()] for f in ("a.jsonl", "m.jsonl"))
    assert [r["label"] for r in a] == [r["label"] for r in m]
    for x, y in zip(a, m):
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--input", "{jsonl}"], "--input needs --output (a .jsonl or .csv file)"),
    (["--input", "{jsonl}", "--output", "p.txt"], "--output p.txt: expected a .csv or .jsonl file"),
    (["--input", "rows.tsv", "--output", "p.csv"], "--input rows.tsv: file not found"),
    (["--input", "{jsonl}", "--output", "p.csv", "some text"], "give texts or --input, not both"),
    (["--output", "p.csv", "some text"], "--output goes with --input"),
])
def test_bad_flags_are_one_line(run, jsonl, capsys, argv, message):
    code, err = score("--adapter", run, *[a.format(jsonl=jsonl) for a in argv], capsys=capsys)
    assert code == 2 and err == f"error: {message}\n"


def test_model_alone_must_be_a_merged_export(run, capsys):
    code, err = score("--model", run, "some text", capsys=capsys)
    assert code == 2 and err == f"error: {run} is not a merged model directory (config.json and model.safetensors)\n"
    code, err = score("some text", capsys=capsys)
    assert code == 2 and "pass --adapter DIR (a trained adapter or run), or --model DIR" in err


def test_csv_without_text_column_and_no_rows_left(run, tmp_path, capsys):
    bad = write(tmp_path / "bad.csv", "id,body\n1,hello\n")
    code, err = score("--adapter", run, "--input", bad, "--output", tmp_path / "p.csv", capsys=capsys)
    assert code == 2 and err == (f"error: {bad}: the header needs a 'text' column (or rows of AG News' class,title,"
                                 "description), has ['id', 'body']\n")
    empty = write(tmp_path / "empty.jsonl", '{"text": ""}\n')
    code, err = score("--adapter", run, "--input", empty, "--output", tmp_path / "p.csv", "--on-bad-row", "skip",
                      capsys=capsys)
    assert code == 2 and err.splitlines()[-1] == f"error: {empty} has no rows to score (1 skipped)"


def test_ag_news_layout_is_scored_by_line(run, tmp_path, capsys):
    rows = write(tmp_path / "test.csv", f'"3","market shares","{TEXTS[2]}"\n"2","goal"\n"1","war","border"\n')
    out = tmp_path / "p.jsonl"
    code, err = score("--adapter", run, "--input", rows, "--output", out, "--on-bad-row", "skip", capsys=capsys)
    assert code == 0 and f"skipped {rows} line 2: expected 3 columns (class,title,description), got 2" in err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    want = expected_rows(run, [f"market shares {TEXTS[2]}", "war border"], capsys)
    assert [r["line"] for r in got] == [1, 3] and [r["label"] for r in got] == [w["label"] for w in want]


def test_broken_models_and_adapters_are_one_line(run, tiny_data_dir, tmp_path, capsys):
    """A truncated or pickle base checkpoint, a truncated or pickle adapter, a merged export with a label missing."""
    import shutil

    from helpers.oneline import refused

    merged = tmp_path / "merged"
    shutil.copytree(run.parent / "merged", merged)
    config = json.loads((merged / "config.json").read_text())
    config["id2label"] = {"0": "World", "2": "Business", "3": "Sci/Tech"}
    (merged / "config.json").write_text(json.dumps(config))
    line = refused(["--model", merged, "hello"], capsys, predict)
    assert "config.json must name each class in id2label, numbered 0..K-1; it has ['0', '2', '3']" in line
    del config["id2label"]
    (merged / "config.json").write_text(json.dumps(config))
    assert "it has none" in refused(["--model", merged, "hello"], capsys, predict)
    config["id2label"] = dict(enumerate(CLASSES))
    (merged / "config.json").write_text(json.dumps(config))
    weights = merged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    assert "cannot load model" in refused(["--model", merged, "hello"], capsys, predict)
    assert "cannot load model" in refused(["--adapter", run / "adapter", "--model", merged, "hello"], capsys, predict)
    from train.__main__ import main as train  # the same truncated file as the base of a training run

    assert "cannot load model" in refused(["--model", merged, "--data", tiny_data_dir, "--output-dir",
                                           tmp_path / "t"], capsys, train)
    adapter = tmp_path / "adapter"
    shutil.copytree(run / "adapter", adapter)
    shutil.copyfile(run / "eval.json", adapter / "eval.json")  # a finished run's adapter, as an export keeps it
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[:len(data) // 2])
    assert "cannot load adapter" in refused(["--adapter", adapter, "hello"], capsys, predict)
    torch.save({"x": torch.zeros(1)}, adapter / "adapter_model.safetensors")  # a pickle under a safetensors name
    assert "cannot load adapter" in refused(["--adapter", adapter, "hello"], capsys, predict)


def test_a_pickle_base_model_is_refused_without_advising_to_unpickle(tmp_path, capsys):
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    from helpers.shipping import make_encoder_dir
    from helpers.oneline import refused
    from train.__main__ import main as train

    import numpy as np

    encoder = make_encoder_dir(tmp_path / "e")
    model = RobertaForSequenceClassification.from_pretrained(encoder)
    model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(tmp_path / "pickled")
    # a pickle that torch's weights_only loader refuses (a numpy array inside): what an untrusted file may hold
    torch.save({"roberta.pooler.dense.bias": np.zeros(3)}, tmp_path / "pickled" / "pytorch_model.bin")
    (tmp_path / "pickled" / "model.safetensors").unlink(missing_ok=True)  # transformers 5 saves it whatever we ask
    capsys.readouterr()
    line = refused(["--model", tmp_path / "pickled", "--data", "ag_news_sample", "--output-dir", tmp_path / "o"],
                   capsys, train)
    assert "cannot load model" in line and "weights_only=False" not in line and not (tmp_path / "o").exists()


def test_scoring_names_the_line_of_bad_text(run, tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": "half \\ud800 a surrogate"}\n')
    code, err = score("--adapter", run, "--input", bad, "--output", tmp_path / "o.jsonl", capsys=capsys)
    assert code == 2 and "line 2: text is not valid Unicode (a lone surrogate at character 5)" in err
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text\nfine\ncaf\xe9\n")
    code, err = score("--adapter", run, "--input", latin, "--output", tmp_path / "o.jsonl", capsys=capsys)
    assert code == 2 and f"{latin} line 3 is not UTF-8 text" in err


def test_the_output_is_never_the_input_and_replaces_a_file_only_with_overwrite(run, jsonl, tmp_path, capsys):
    from helpers.oneline import refused

    original = jsonl.read_text()
    (tmp_path / "link.jsonl").symlink_to(jsonl)
    (tmp_path / "sub").mkdir()
    args = ["--adapter", run, "--input", jsonl, "--on-bad-row", "skip", *FP32]
    for out in (jsonl, tmp_path / "link.jsonl", tmp_path / "sub" / ".." / jsonl.name):
        for extra in ([], ["--overwrite"]):
            line = refused([*args, "--output", out, *extra], capsys, predict)
            assert f"{out} (--output) is the input {jsonl}: writing it would destroy it" in line
    assert jsonl.read_text() == original
    out = tmp_path / "p.jsonl"
    out.write_text("the user's own file\n")
    line = refused([*args, "--output", out], capsys, predict)
    assert "(--output) already exists and nothing marks it as this tool's output; pick another --output, or " \
           "--overwrite" in line
    assert out.read_text() == "the user's own file\n"
    assert predict([str(a) for a in [*args, "--output", out, "--overwrite"]]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines() if "id" in json.loads(x)] == ["a", 7]


def test_an_empty_text_is_refused_naming_its_place_wherever_it_comes_from(run, tmp_path, capsys, monkeypatch):
    """Arguments, stdin lines and --input rows: one rule (evaluate's files hold to it too, in train.data)."""
    import io

    from helpers.oneline import refused

    hint = "; --on-bad-row skip scores the other rows"
    for texts, place in (([TEXTS[0], ""], "text argument 2"), ([" \t "], "text argument 1")):
        assert refused(["--adapter", run, *texts, *FP32], capsys, predict) == f"error: {place}: empty text{hint}"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{TEXTS[0]}\n\n  \n{TEXTS[1]}\n"))
    assert refused(["--adapter", run, *FP32], capsys, predict) == f"error: stdin line 2: empty text{hint}"
    rows = write(tmp_path / "rows.csv", f"text\n{TEXTS[0]}\n   \n")
    assert refused(["--adapter", run, "--input", rows, "--output", tmp_path / "o.csv", *FP32], capsys, predict) == \
        f"error: {rows} line 3: empty text{hint}"
    assert predict(["--adapter", str(run), TEXTS[0], "", " ", "--on-bad-row", "skip", *FP32]) == 0
    got = capsys.readouterr()
    assert got.err.splitlines() == ["skipped text argument 2: empty text", "skipped text argument 3: empty text"]
    assert len(got.out.splitlines()) == 1 and got.out.rstrip("\n").endswith(f"\t{TEXTS[0]}")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n \n"))
    assert predict(["--adapter", str(run), "--on-bad-row", "skip", *FP32]) == 2
    assert capsys.readouterr().err.splitlines() == ["skipped stdin line 1: empty text",
                                                    "skipped stdin line 2: empty text",
                                                    "error: no texts to score (2 skipped)"]


def test_an_unfinished_runs_adapter_is_used_only_when_asked_and_then_named(run, tmp_path, capsys):
    import shutil

    from helpers.oneline import refused

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "eval.json").unlink()
    for given in (unfinished, unfinished / "adapter"):
        line = refused(["--adapter", given, TEXTS[0], *FP32], capsys, predict)
        assert f"{given} is an unfinished run (no eval.json: its adapter is the best epoch so far)" in line
        assert "--allow-unfinished" in line
    assert predict(["--adapter", str(unfinished), TEXTS[0], "--allow-unfinished", *FP32]) == 0
    got = capsys.readouterr()
    assert [x for x in got.err.splitlines() if x.startswith("note:")] == [
        f"note: {unfinished} is an unfinished run (no eval.json): its adapter is the best epoch so far"]
    assert got.out.rstrip("\n").endswith(TEXTS[0])


def test_a_merged_export_that_loads_wrong_is_refused_like_a_base_model(run, tmp_path, capsys):
    """predict --model EXPORT goes through the same load checks as training: a config that disagrees with the
    weights, or a tokenizer that is not the model's, is one line, never scores at chance."""
    import shutil

    from helpers.oneline import refused

    merged = tmp_path / "merged"
    shutil.copytree(run.parent / "merged", merged)
    config = json.loads((merged / "config.json").read_text())
    (merged / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    assert "cannot load model" in refused(["--model", merged, "hello"], capsys, predict)  # transformers' own check
    (merged / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (merged / name).unlink(missing_ok=True)
    assert "no tokenizer files" in refused(["--model", merged, "hello"], capsys, predict)
