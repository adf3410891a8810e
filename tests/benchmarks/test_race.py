"""benchmarks/race.py: rounds alternate, each run lands in runs.jsonl at once, and a cut-off race resumes with the
runs it had, refusing other settings. The contestants here are stand-ins (no child processes)."""
import json

import pytest

import benchmarks.race as race
from benchmarks.common import write_json
from benchmarks.contestants import RaceError, Setup

SETUP = Setup("M", ["--data", "D"], 3)
KEY = race.race_key(SETUP, ["tuned", "fast"], [0, 1], ("tuned",))


@pytest.fixture
def ran(monkeypatch):
    """Every run the race launched, as (contestant, seed); each scores seed / 10."""
    launched = []

    def child(cmd, log, metrics, env):
        launched.append((cmd[cmd.index("--seed") + 1], str(log.parent.name)))
        return {"wall_seconds": 1.0, "cpu_seconds": 2.0}
    monkeypatch.setattr(race, "run_child", child)
    monkeypatch.setattr(race, "read_result", lambda name, run_dir: {"accuracy": 0.5, "loop_seconds": 0.5,
                                                                    "precision": "fp32"})
    monkeypatch.setattr(race, "work_of", lambda *a: {"total": 1})
    return launched


def test_the_slow_contestant_runs_once_and_every_run_is_logged_as_it_lands(ran, tmp_path):
    seen = []
    runs = race.run_race(SETUP, ["tuned", "fast"], [0, 1], tmp_path, None, 2, True, ("tuned",),
                         after_each=lambda rs: seen.append(len(rs)))
    assert [(r["contestant"], r["seed"]) for r in runs] == [("tuned", 0), ("fast", 0), ("fast", 1)]
    assert seen == [1, 2, 3]  # the partial result is rewritten after every run
    logged = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert logged == runs


def test_a_resumed_race_keeps_its_runs_drops_a_torn_line_and_runs_the_rest(ran, tmp_path):
    race.run_race(SETUP, ["tuned", "fast"], [0, 1], tmp_path, None, 2, True, ("tuned",))
    write_json(tmp_path / "race-setup.json", KEY)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    (tmp_path / "runs.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # killed mid-write
    done = race.resumed_runs(tmp_path, KEY)
    assert [(r["contestant"], r["seed"]) for r in done] == [("tuned", 0), ("fast", 0)]
    ran.clear()
    runs = race.run_race(SETUP, ["tuned", "fast"], [0, 1], tmp_path, None, 2, True, ("tuned",), done)
    assert ran == [("1", "seed1-fast")] and len(runs) == 3
    logged = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert logged == runs  # the torn line is gone, not glued to the next record


def test_resume_refuses_a_race_with_other_settings_or_none(tmp_path):
    with pytest.raises(RaceError, match=r"--resume: .* holds no race \(no race-setup.json\)"):
        race.resumed_runs(tmp_path, KEY)
    write_json(tmp_path / "race-setup.json", KEY)
    other = race.race_key(Setup("M", ["--data", "D"], 5), ["tuned", "fast"], [0, 2], ("tuned",))
    with pytest.raises(RaceError, match=r"is a race with other settings \(epochs, seeds\); give the same"):
        race.resumed_runs(tmp_path, other)
