"""python -m train.evaluate: an evaluation file is scored with the adapter's classes, never remapped silently."""
import json

from helpers.oneline import refused
from helpers.tiny import CLASSES, train_args, write_agnews
from train.__main__ import main as train
from train.ship.evaluate import main as evaluate


def test_an_evaluation_file_whose_classes_txt_orders_them_otherwise_is_refused(tiny_model_dir, tiny_data_dir,
                                                                               tmp_path, capsys):
    run = tmp_path / "run"
    assert train(train_args(tiny_model_dir, tiny_data_dir, run, "--epochs", "1")) == 0
    other = write_agnews(tmp_path / "other", 16, 16)
    (other / "classes.txt").write_text("\n".join(reversed(CLASSES)) + "\n")  # the same names, another order
    capsys.readouterr()
    line = refused(["--adapter", run / "adapter", "--eval-file", other / "test.csv"], capsys, evaluate)
    assert "classes.txt lists ['Sci/Tech', 'Business', 'Sports', 'World']" in line
    assert "but the adapter was trained on ['World', 'Sports', 'Business', 'Sci/Tech']" in line
    (other / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    assert evaluate(["--adapter", str(run / "adapter"), "--eval-file", str(other / "test.csv"), "--json",
                     "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\n{"text": "a\\ud800b", "label": 1}\n')  # a lone surrogate
    assert f"{bad} line 2: text is not valid Unicode (a lone surrogate at character 1)" in refused(
        ["--adapter", run / "adapter", "--eval-file", bad], capsys, evaluate)


def test_an_unfinished_runs_adapter_is_scored_only_when_asked_and_then_named(tmp_path, capsys):
    """The rule export and predict follow; and an empty text is refused naming its line, as predict refuses it."""
    import shutil

    from helpers.shipping import make_adapter, make_encoder_dir

    run, _, _ = make_adapter(tmp_path / "run", make_encoder_dir(tmp_path / "encoder"), "linear", ("query", "value"))
    data = write_agnews(tmp_path / "data", 16, 16)
    args = ["--eval-file", data / "test.csv", "--precision", "fp32", "--device", "cpu", "--json"]
    shutil.copytree(run, tmp_path / "unfinished")
    (tmp_path / "unfinished" / "eval.json").unlink()
    for given in (tmp_path / "unfinished", tmp_path / "unfinished" / "adapter"):
        line = refused(["--adapter", given, *args], capsys, evaluate)
        assert f"{given} is an unfinished run (no eval.json: its adapter is the best epoch so far)" in line
        assert "--allow-unfinished" in line
    assert evaluate([str(a) for a in ["--adapter", tmp_path / "unfinished", *args, "--allow-unfinished"]]) == 0
    got = capsys.readouterr()
    assert [x for x in got.err.splitlines() if x.startswith("note:")] == [
        f"note: {tmp_path / 'unfinished'} is an unfinished run (no eval.json): its adapter is the best epoch so far"]
    assert json.loads(got.out)["examples"] == 16
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\ngoal match,Sports\n   ,World\n")
    line = refused(["--adapter", run, "--eval-file", empty], capsys, evaluate)
    assert line == f"error: {empty} line 3: empty text"
