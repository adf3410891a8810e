"""python -m train.sweep: a spec of any shape is run or refused in one line, run names never leave --output-dir,
and a rerun after the spec changed is refused instead of mixing two recipes in one run."""
import contextlib
import io
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
    first = json.loads((out / "results.json").read_text())["runs"][0]["scores"]
    assert sweep([str(path), "--output-dir", str(out)]) == 0  # the same spec: the finished run is reused
    assert json.loads((out / "results.json").read_text())["runs"][0]["scores"] == first
    changed = spec_file(tmp_path, {"base": {**base, "lr": 1e-3}, "runs": [{"name": "a"}]}, "changed.json")
    capsys.readouterr()
    line = refused([changed, "--output-dir", out], capsys, sweep)
    assert "holds a run with other settings (lr)" in line
    more = spec_file(tmp_path, {"base": {**base, "rank": 3, "epochs": 3}, "runs": [{"name": "a"}]}, "more.json")
    assert "holds a run with other settings (epochs, rank)" in refused([more, "--output-dir", out], capsys, sweep)
    (out / "a-seed0" / "eval.json").unlink()  # now an unfinished run of the old spec
    (out / "a-seed0" / "checkpoint.pt").write_bytes((out / "a-seed0" / "checkpoint.pt").read_bytes())
    assert "holds a run with other settings (lr)" in refused([changed, "--output-dir", out], capsys, sweep)
    assert "holds a run with other settings (epochs, rank)" in refused([more, "--output-dir", out], capsys, sweep)


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


@pytest.fixture
def stubbed(monkeypatch):
    """The configs trainer.run is called with; nothing trains."""
    import train.trainer

    calls = []
    monkeypatch.setattr(train.trainer, "run", lambda cfg, resume=False: calls.append(cfg))
    return calls


def test_the_sweep_replaces_only_the_tables_it_wrote(tmp_path, capsys, stubbed):
    path, out = spec_file(tmp_path, {"runs": [{"name": "a"}]}), tmp_path / "out"
    out.mkdir()
    for name in ("results.md", "results.json"):
        (out / name).write_text("the user's own notes\n")
        line = refused([path, "--output-dir", out], capsys, sweep)
        assert f"{out / name} (--output-dir) already exists and this tool did not write it" in line
        assert (out / name).read_text() == "the user's own notes\n" and not stubbed  # refused before any run
        (out / name).unlink()
    (out / "results.md").write_text("the user's own notes\n")
    assert sweep([str(path), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "results.md").read_text().startswith("<!-- written by python -m train.sweep")
    assert json.loads((out / "results.json").read_text())["written_by"] == "python -m train.sweep"
    assert sweep([str(path), "--output-dir", str(out)]) == 0  # its own files: replaced without --overwrite
    (out / "a-seed0").mkdir()
    (out / "a-seed0" / "sweep_seconds.json").write_text('{"seconds": 1}')  # not marked: not the sweep's
    assert "sweep_seconds.json (--output-dir) already exists" in refused([path, "--output-dir", out], capsys, sweep)


def test_the_sweep_never_writes_onto_its_spec(tmp_path, capsys, stubbed):
    out = tmp_path / "out"
    out.mkdir()
    path = spec_file(out, {"runs": [{"name": "a"}]}, "results.json")
    for where in (out, tmp_path / "out" / ".." / "out"):
        line = refused([path, "--output-dir", where, "--overwrite"], capsys, sweep)
        assert "results.json (--output-dir) is the input" in line
    (tmp_path / "linked").symlink_to(out)
    assert "is the input" in refused([tmp_path / "linked" / "results.json", "--output-dir", out, "--overwrite"],
                                     capsys, sweep)
    elsewhere = spec_file(tmp_path, {"runs": [{"name": "a"}]})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.md").symlink_to(elsewhere)  # a link there leads to the spec
    assert "is the input" in refused([elsewhere, "--output-dir", tmp_path / "other", "--overwrite"], capsys, sweep)
    assert json.loads(path.read_text()) == {"runs": [{"name": "a"}]} and not stubbed


def test_an_empty_or_relative_xdg_cache_home_never_finds_the_proxy_in_the_current_directory(tmp_path, capsys,
                                                                                            monkeypatch, stubbed):
    (tmp_path / "roberta-lora" / "all-mpnet-base-v2").mkdir(parents=True)
    (tmp_path / "roberta-lora" / "all-mpnet-base-v2" / "config.json").write_text("{}")  # a stray copy here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = spec_file(tmp_path, {"runs": [{"name": "a", "model": "mpnet"}]})
    for value in ("", "."):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        line = refused([path, "--output-dir", tmp_path / "out"], capsys, sweep)
        assert f"is the proxy in {tmp_path / 'home' / '.cache' / 'roberta-lora' / 'all-mpnet-base-v2'}" in line


def test_damaged_records_of_a_finished_run_are_one_line_naming_the_file(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                        capsys):
    out, path = tmp_path / "out", spec_file(tmp_path, {"base": tiny_base(tiny_model_dir, tiny_data_dir)})
    assert sweep([str(path), "--output-dir", str(out)]) == 0
    scores, timing = out / "run-seed0" / "eval.json", out / "run-seed0" / "sweep_seconds.json"
    good = json.loads(scores.read_text())
    assert isinstance(json.loads(timing.read_text())["seconds"], float)
    no_history = {k: v for k, v in good.items() if k != "history"}
    for file, content, detail in [
            (scores, scores.read_text()[:40], "is not valid JSON"),
            (scores, json.dumps(no_history), "history is missing"),
            (scores, json.dumps({**good, "history": [{"accuracy": "0.5", "macro_f1": 1}]}), "has no accuracy in its "
             "last epoch"),
            (timing, "{", "is not valid JSON"), (timing, '{"seconds": "12"}', "seconds is \"12\", not a number"),
            (timing, '{"seconds": -1}', "seconds is -1, not a number of seconds >= 0")]:
        keep = file.read_text()
        file.write_text(content)
        capsys.readouterr()
        line = refused([path, "--output-dir", out], capsys, sweep)
        assert line.startswith(f"error: {file} ") and detail in line, line
        file.write_text(keep)
    assert sweep([str(path), "--output-dir", str(out)]) == 0
    fuzz_records(path, out, scores, timing)


def fuzz_records(path, out, scores, timing):
    """Whatever eval.json or sweep_seconds.json hold (cut short, a key holding any value), the sweep reads them
    or refuses in one line naming the file."""
    good = {f: f.read_text() for f in (scores, timing)}
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                          lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=2), max_leaves=6)

    @settings(max_examples=30, deadline=None)
    @given(which=st.sampled_from([scores, timing]), cut=st.integers(0, 200), key=st.sampled_from(
        ["history", "labels", "seconds", "accuracy"]), value=values, truncate=st.booleans())
    def check(which, cut, key, value, truncate):
        record = json.loads(good[which])
        if key == "accuracy" and which == scores:
            record["history"][-1]["accuracy"] = value
        else:
            record[key] = value
        which.write_text(good[which][:cut] if truncate else json.dumps(record))
        err = io.StringIO()  # capsys does not reset between the examples of a nested test: read stderr here
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = sweep([str(path), "--output-dir", str(out)])
        which.write_text(good[which])
        assert code in (0, 2) and "Traceback" not in err.getvalue()
        if code == 2:
            assert err.getvalue().startswith(f"error: {which} ") and len(err.getvalue().splitlines()) == 1
    check()


NUMBER_TOKENS = st.one_of(
    st.sampled_from(["3", "-3", "+3", " 3", "3 ", "\t3", "٣", "３", "3.0", "1e999", "-1e999", "NaN", "Infinity",
                     "1_000", "0x10", "1e-5", "0.5", "-0", "1" * 5000, "3\x00", "\x1b3", "3\n", "true", "null"]),
    st.text(st.characters(whitelist_categories=("Nd", "No", "Zs", "Cc", "Pd", "Sm")), min_size=1, max_size=4),
    st.integers(-5, 5).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["epochs", "lr", "max_length", "warmup_ratio", "seed", "rank"]), token=NUMBER_TOKENS,
       quoted=st.booleans(), by_set=st.booleans())
def test_fuzzed_numbers_parse_or_are_refused_naming_the_file_or_the_set(key, token, quoted, by_set, tmp_path_factory,
                                                                        capsys, stubbed):
    """A number in the spec (raw or quoted) or in --set KEY=VALUE is read as JSON reads it, never as Python's int()
    would ("٣" and " 3 " are not 3 in a spec string), or refused in one line naming the spec file, or the --set."""
    tmp = tmp_path_factory.mktemp("numbers")
    raw = json.dumps(token) if quoted else token
    text = '{"runs": [{"name": "a"' + ("" if by_set else f', "{key}": {raw}') + "}]}"
    path = spec_file(tmp, text)
    stubbed.clear()
    code = sweep([str(path), "--output-dir", str(tmp / "out"), *(["--set", f"{key}={token}"] if by_set else [])])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"error: --set {key}: run a: " if by_set else f"error: {path}")
        return
    value = json.loads(token if by_set else raw)
    got = getattr(stubbed[0], key, None) if key != "rank" else stubbed[0].lora.rank
    assert not isinstance(value, str) and got == value



@pytest.mark.slow
def test_a_sweep_of_a_regression_reports_its_metric(tiny_model_dir, tmp_path):
    """A sweep reads the score that picks the task's epoch (eval.json's metric), not accuracy, which it has none of."""
    from helpers.tiny import write_task

    data = write_task(tmp_path / "stsb", "regression", n_train=64, n_eval=16)
    out, path = tmp_path / "out", spec_file(tmp_path, {"base": tiny_base(tiny_model_dir, data) | {"holdout": 16}})
    assert sweep([str(path), "--output-dir", str(out)]) == 0
    row = json.loads((out / "results.json").read_text())["runs"][0]
    assert row["metric"] == "pearson" and len(row["scores"]) == 1 and row["macro_f1s"] == []
    assert "final-epoch pearson (mean ± std)" in (out / "results.md").read_text()
