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
