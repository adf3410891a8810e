"""train.files: the one guard every writer passes (never onto its own input, never over a file it did not
write), the one reader of the JSON the tool wrote back, and the cache's place by the XDG rules."""
import importlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from train.errors import UserError
from train.files import NUMBER, TEXT, WHOLE, cache_home, check_output, env_int, read_json_as, shape_problem

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("value", [None, "", "   ", "relative/cache", "./c", "~user-that-is-not/x"])
def test_an_unset_empty_or_relative_xdg_cache_home_means_home_cache(value, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert cache_home() == tmp_path / "home" / ".cache"


def test_an_absolute_xdg_cache_home_is_used_and_tilde_is_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/elsewhere")
    assert cache_home() == tmp_path / "home" / "elsewhere"


ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@FUZZ
@given(value=st.one_of(ENV_TEXT, st.sampled_from(["٣", "-1", " /x", "\t", "\x1b[0m", "/", "//x/../y"])))
def test_fuzzed_xdg_values_never_put_the_cache_under_the_current_directory(value, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    got = cache_home()
    expanded = os.path.expanduser(value)
    assert got.is_absolute()
    assert got == (Path(expanded) if os.path.isabs(expanded) else tmp_path / "home" / ".cache")


def test_env_int_reads_ascii_digits_and_refuses_the_rest_naming_the_variable(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_int("WORLD_SIZE", 1) == 1
    for value, got in (("", 1), ("4", 4), ("0", 0), ("007", 7)):
        monkeypatch.setenv("WORLD_SIZE", value)
        assert env_int("WORLD_SIZE", 1) == got
    for value in ("٣", "３", " 3", "3 ", "+3", "-1", "1_000", "3\n", "0x10", "3.0", "1" * 5000, "\x1b[3m"):
        monkeypatch.setenv("WORLD_SIZE", value)
        with pytest.raises(UserError, match=r"^environment variable WORLD_SIZE=.* is not a whole number >= 0 "):
            env_int("WORLD_SIZE", 1)


@FUZZ
@given(value=st.text(st.characters(whitelist_categories=("Nd", "No", "Zs", "Cc", "Pd", "Sm"),
                                   blacklist_characters="\x00"), max_size=6), minimum=st.integers(-2, 2))
def test_fuzzed_environment_numbers_parse_as_ascii_digits_or_are_one_line(value, minimum, monkeypatch):
    monkeypatch.setenv("ROBERTA_LORA_TEST_N", value)
    try:
        got = env_int("ROBERTA_LORA_TEST_N", 5, minimum)
    except UserError as e:
        assert str(e).startswith("environment variable ROBERTA_LORA_TEST_N=") and "\n" not in str(e)
        assert value != ""
    else:
        plain = value.removeprefix("-")
        assert value == "" and got == 5 or (plain.isascii() and plain.isdigit() and got == int(value) >= minimum)


def test_the_training_cache_default_follows_the_xdg_rules(tmp_path, monkeypatch):
    """python -m train's --cache-dir default, read when train.__main__ is imported."""
    import train.__main__ as entry

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.chdir(tmp_path)
    try:
        assert importlib.reload(entry).DEFAULT_CACHE == str(tmp_path / "home" / ".cache" / "roberta-lora")
    finally:
        monkeypatch.undo()
        importlib.reload(entry)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "data" / "in.csv"
    path.parent.mkdir()
    path.write_text("text\nkeep me\n")
    return path


def test_an_output_that_is_its_input_is_refused_however_it_is_named(source, tmp_path, monkeypatch):
    link = tmp_path / "link.csv"
    link.symlink_to(source)
    hard = tmp_path / "hard.csv"
    os.link(source, hard)
    (tmp_path / "linked-dir").symlink_to(source.parent)
    monkeypatch.chdir(tmp_path / "data")
    for out in (source, link, hard, tmp_path / "data" / ".." / "data" / "in.csv", Path("in.csv"),
                Path("../linked-dir/in.csv")):
        for overwrite in (False, True):
            with pytest.raises(UserError, match=r"\(--output\) is the input .*: writing it would destroy it"):
                check_output(out, inputs=[source], overwrite=overwrite)
    assert source.read_text() == "text\nkeep me\n"


def test_an_output_folder_inside_or_around_an_input_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    with pytest.raises(UserError, match=r"lies inside the input"):
        check_output(run / "export", inputs=[run], overwrite=True, flag="--out")
    with pytest.raises(UserError, match=r"holds the input"):
        check_output(tmp_path, inputs=[run / "adapter"], overwrite=True, flag="--out")
    with pytest.raises(UserError, match=r"lies inside the input"):
        check_output(run / "adapter" / ".." / "x", inputs=[run], flag="--out")
    assert check_output(tmp_path / "elsewhere", inputs=[run], flag="--out") == tmp_path / "elsewhere"


def test_an_existing_output_is_replaced_only_when_ours_or_asked(tmp_path):
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    mine.write_text('{"by": "us"}')
    theirs.write_text("user data")
    ours = lambda p: p.read_text().startswith('{"by": "us"')  # noqa: E731
    assert check_output(mine, ours=ours) == mine
    with pytest.raises(UserError, match=r"theirs.json \(--output\) already exists and this tool did not write it; "
                                        r"pick another --output, or --overwrite to replace it"):
        check_output(theirs, ours=ours)
    assert check_output(theirs, ours=ours, overwrite=True) == theirs
    with pytest.raises(UserError, match=r"already exists and nothing marks it as this tool's output; "):
        check_output(theirs)  # predict's plain output files carry no mark: it cannot tell, and says so
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="already exists"):
        check_output(dangling)
    unreadable = lambda p: json.loads(p.read_text())  # noqa: E731  (raises on user data: not ours)
    with pytest.raises(UserError, match="already exists"):
        check_output(theirs, ours=unreadable)


SCORES = {"history": [{"accuracy": NUMBER}], "labels": [TEXT], "steps?": WHOLE}


def test_shape_problems_name_the_key():
    assert shape_problem({"history": [{"accuracy": 0.5}], "labels": ["a"]}, SCORES) is None
    assert shape_problem({"labels": ["a"]}, SCORES) == "history is missing"
    assert shape_problem({"history": [], "labels": ["a"]}, SCORES) == "history is [], not a non-empty list"
    assert shape_problem({"history": [{"accuracy": "x"}], "labels": ["a"]}, SCORES) == \
        'history[0].accuracy is "x", not a number'
    assert shape_problem({"history": [{"accuracy": float("nan")}], "labels": ["a"]}, SCORES) == \
        "history[0].accuracy is nan, not a number"
    assert shape_problem({"history": [{"accuracy": 1}], "labels": ["a"], "steps": True}, SCORES) == \
        "steps is true, not a whole number"
    assert shape_problem([1], SCORES) == "the top level is [1], not an object"


def test_read_json_as_names_the_file_for_each_way_it_can_be_broken(tmp_path):
    path = tmp_path / "eval.json"
    for content, detail in [(b'{"history": [{"accur', "not valid JSON (Unterminated string"),
                            (b"", "not valid JSON (Expecting value, line 1)"),
                            (b"\xff\xfe{}", "not valid JSON ("),
                            (b"[" * 100_000, "not valid JSON (nested too deeply)"),
                            (b"1" * 5000, "not valid JSON (Exceeds the limit"),
                            (b'{"labels": ["a"]}', "is not scores: history is missing; rerun it"),
                            (b'{"history": [{"accuracy": NaN}], "labels": ["a"]}', "history[0].accuracy is nan")]:
        path.write_bytes(content)
        with pytest.raises(UserError, match=r"^\S*eval.json ") as e:
            read_json_as(path, "scores", SCORES, hint="rerun it")
        assert detail in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(UserError, match=r"missing.json does not exist; rerun it"):
        read_json_as(tmp_path / "missing.json", "scores", SCORES, hint="rerun it")


GOOD = {"history": [{"accuracy": 0.5}, {"accuracy": 0.75}], "labels": ["a", "b"], "steps": 3}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)


@FUZZ
@given(cut=st.integers(0, len(json.dumps(GOOD)) - 1), junk=st.binary(max_size=8), value=JSON,
       key=st.sampled_from(["history", "labels", "steps"]))
def test_fuzzed_files_are_read_or_refused_in_one_line_naming_the_file(cut, junk, value, key, tmp_path_factory):
    """Cut short, followed by junk bytes, or with one key holding any JSON value: the reader returns a value of the
    shape asked, or raises one UserError line naming the file, never another exception."""
    path = tmp_path_factory.mktemp("read") / "eval.json"
    text = json.dumps(GOOD)
    for content in (text[:cut].encode(), text[:cut].encode() + junk, json.dumps({**GOOD, key: value}).encode()):
        path.write_bytes(content)
        try:
            got = read_json_as(path, "scores", SCORES)
        except UserError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
        else:
            assert shape_problem(got, SCORES) is None and isinstance(got["history"][-1]["accuracy"], (int, float))
