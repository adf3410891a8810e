"""python -m train.sweep: a spec of any shape is run or refused in one line, run names never leave --output-dir,
and a rerun after the spec changed is refused instead of mixing two recipes in one run."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.oneline import refused
from train.sweep import main as sweep

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def spec_file(tmp_path, spec, name="s.json"):
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def tiny_base(tiny_model_dir, tiny_data_dir) -> dict:
    return {"recipe": "reference", "model": str(tiny_model_dir), "data": str(tiny_data_dir), "epochs": 1,
            "batch_size": 32, "lr": 2e-2, "rank": 4, "precision": "fp32", "cache_dir": "",
            "max_train_samples": 64, "max_eval_samples": 16}


@pytest.mark.parametrize("spec, message", [
    ([1, 2], "the spec is a JSON object with base, seeds, runs and grid; got a list"),
    ({"runs": {"name": "a"}}, '"runs" is a non-empty list of objects'),
    ({"grid": {"epochs": 1}}, '"grid" maps settings to non-empty lists of values'),
    ({"seeds": []}, '"seeds" is a non-empty list of distinct whole numbers, got []'),
    ({"seeds": "0"}, "\"seeds\" is a non-empty list of distinct whole numbers, got '0'"),
    ({"seeds": [0, 0]}, '"seeds" is a non-empty list of distinct whole numbers'),
    ({"runs": [{"name": "../../escaped"}]}, "run name '../../escaped' is not a folder name"),
    ({"runs": [{"name": ".hidden"}]}, "run name '.hidden' is not a folder name"),
    ({"runs": [{"name": "a", "max_length": 16.5}]}, "run a: max_length must be a whole number >= 2, got 16.5"),
    ({"runs": [{"name": "a", "batch_size": True}]}, "run a: batch_size must be a whole number >= 1, got True"),
    ({"base": [1]}, '"base" is an object of settings'),
    ({"bogus": 1}, "unknown keys ['bogus']"),
])
def test_a_spec_that_is_not_one_is_one_line(spec, message, tmp_path, capsys):
    line = refused([spec_file(tmp_path, spec), "--output-dir", tmp_path / "out"], capsys, sweep)
    assert message in line and not (tmp_path / "out").exists()


def test_set_values_and_only_names_are_checked(tmp_path, capsys):
    path = spec_file(tmp_path, {"runs": [{"name": "a"}, {"name": "b"}]})
    assert "epochs must be a whole number >= 1, got 1.5" in refused(
        [path, "--set", "epochs=1.5", "--output-dir", tmp_path / "out"], capsys, sweep)
    assert "--only c matches no run; the runs: a, b" in refused(
        [path, "--only", "c", "--output-dir", tmp_path / "out"], capsys, sweep)


def test_a_rerun_after_the_spec_changed_is_refused_for_unfinished_and_finished_runs(tiny_model_dir, tiny_data_dir,
                                                                                      tmp_path, capsys):
    base, out = tiny_base(tiny_model_dir, tiny_data_dir), tmp_path / "out"
    path = spec_file(tmp_path, {"base": base, "runs": [{"name": "a"}]})
    assert sweep([str(path), "--output-dir", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())[0]["accuracies"]
    assert sweep([str(path), "--output-dir", str(out)]) == 0  # the same spec: the finished run is reused
    assert json.loads((out / "results.json").read_text())[0]["accuracies"] == first
    changed = spec_file(tmp_path, {"base": {**base, "lr": 1e-3}, "runs": [{"name": "a"}]}, "changed.json")
    capsys.readouterr()
    line = refused([changed, "--output-dir", out], capsys, sweep)
    assert "holds a run with other settings (lr)" in line
    more = spec_file(tmp_path, {"base": {**base, "rank": 3, "epochs": 3}, "runs": [{"name": "a"}]}, "more.json")
    assert "holds a run with other settings (epochs, lora)" in refused([more, "--output-dir", out], capsys, sweep)
    (out / "a-seed0" / "eval.json").unlink()  # now an unfinished run of the old spec
    (out / "a-seed0" / "checkpoint.pt").write_bytes((out / "a-seed0" / "checkpoint.pt").read_bytes())
    assert "holds a run with other settings (lr)" in refused([changed, "--output-dir", out], capsys, sweep)
    assert "holds a run with other settings (epochs, lora)" in refused([more, "--output-dir", out], capsys, sweep)


def test_a_signal_stops_a_sweep_in_one_line_and_the_same_command_continues(tmp_path, capsys, monkeypatch):
    import signal

    import train.trainer
    from train.errors import Stopped

    def stopped(cfg, resume=False):
        raise Stopped(signal.SIGTERM, 7)  # what trainer.run raises after checkpointing the step in flight
    monkeypatch.setattr(train.trainer, "run", stopped)
    path = spec_file(tmp_path, {"runs": [{"name": "a"}]})
    assert sweep([str(path), "--output-dir", str(tmp_path / "out")]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "stopped by SIGTERM after step 7, checkpointed; run the same command again to continue"]


SETTINGS = st.sampled_from(["epochs", "rank", "lr", "max_length", "batch_size", "seed", "head", "targets",
                            "layers", "warmup_ratio", "nonsense"])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=4),
                   st.lists(st.integers(-1, 3), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                               max_size=2))
SPECS = st.one_of(
    st.dictionaries(st.sampled_from(["base", "seeds", "runs", "grid"]),
                    st.one_of(VALUES, st.dictionaries(SETTINGS, VALUES, max_size=3),
                              st.lists(st.dictionaries(st.sampled_from(["name", "epochs", "rank", "lr"]), VALUES,
                                                       max_size=3), max_size=2)), max_size=4),
    VALUES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=SPECS)
def test_fuzzed_specs_end_in_one_line_never_a_traceback(spec, tmp_path_factory, capsys, monkeypatch):
    """Whatever the spec holds, the sweep refuses it in one line before anything trains (nothing here could
    train: no model), or it would run: the run itself is stubbed out and must get a valid TrainConfig."""
    import train.trainer

    calls = []
    monkeypatch.setattr(train.trainer, "run", lambda cfg, resume=False: calls.append(cfg))
    tmp = tmp_path_factory.mktemp("fuzz")
    code = sweep([str(spec_file(tmp, spec)), "--output-dir", str(tmp / "out")])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
