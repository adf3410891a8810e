"""python -m train.export and what it exports: --out never onto, into or around the run (however it is named),
and the run's eval.json read through one reader, so a damaged one is one line naming the key."""
import json

import pytest

from helpers.oneline import refused as refused_by
from helpers.shipping import make_adapter, make_encoder_dir
from train.ship.export import main as export


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder_dir(tmp_path_factory.mktemp("encoder"))


def refused(argv, capsys) -> str:
    return refused_by(argv, capsys, export)


def test_an_export_never_goes_onto_into_or_around_the_run_it_exports(encoder, tmp_path, capsys):
    """Replacing --out deletes what is there: the run, and the adapter in it, are inputs however --out names them
    (inside the run, its parent, a link to it, a path through '..'), even with --overwrite and an export's marker."""
    run, _, _ = make_adapter(tmp_path / "runs" / "run", encoder, "linear", ("query", "value"))
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "runs" / ".roberta-lora-export").write_text("{}")  # even a folder that looks like an export
    for out, says in [(run / "exports" / "hf", "lies inside the input"), (run / "adapter" / ".." / "x", "lies inside"),
                      (tmp_path / "runs", "holds the input"), (tmp_path / "link", "is the input"),
                      (tmp_path / "link" / "adapter", "is the input")]:
        for source in (run, run / "adapter"):
            line = refused([source, "--out", out, "--format", "peft", "--overwrite"], capsys)
            assert f"{out} (--out) {says}" in line, line
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "eval.json"]


def test_an_eval_json_of_the_wrong_shape_is_one_line_naming_the_key(encoder, tmp_path, capsys):
    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", ("query", "value"))
    good = json.loads((run / "eval.json").read_text())
    for change, says in [({"accuracy": "high"}, 'accuracy is "high", not a number'),
                         ({"per_class": [1]}, "per_class[0] is 1, not an object"),
                         ({"per_class": [{**good["per_class"][0], "f1": None}]}, "per_class[0].f1 is null"),
                         ({"trainable_params": "6k"}, 'trainable_params is "6k", not a whole number'),
                         ({"examples": 40.5}, "examples is 40.5, not a whole number")]:
        (run / "eval.json").write_text(json.dumps({**good, **change}))
        line = refused([run, "--out", tmp_path / "a", "--format", "peft"], capsys)
        assert f"{run / 'eval.json'} is not the eval.json of a run of python -m train: {says}" in line
    assert not (tmp_path / "a").exists()
