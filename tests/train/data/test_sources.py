"""train.sources / train.data streams: globs, shards, Parquet, hub streaming, subsets; all the same rows."""
import csv
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.tiny import synthetic_rows
from train.errors import UserError
from train.data.batches import EpochBatches, collate, encode
from train.data.corpus import Split, load_corpus, open_corpus, to_split
from train.data.splits import stratified_subset, subset_rows
from train.data.sources import Rows, expand_paths

ROWS = synthetic_rows(90, seed=5)  # (class 1..4, title, description)


def write_agnews_csv(path, rows):
    with path.open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    return path


def write_text_label(path, rows):
    """rows: (class 1..4, title, description) -> text,label with labels 0..3, as JSONL or CSV."""
    items = [{"text": f"{t} {d}", "label": y - 1} for y, t, d in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(x) + "\n" for x in items))
    else:
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *((x["text"], x["label"]) for x in items)])
    return path


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def batches_of(rows, tokenizer, cache_dir):
    """Every collated batch of one epoch (batch 8, windows of 2 blocks), as lists: the training input."""
    data = encode(rows, tokenizer, 16, cache_dir)
    plan = EpochBatches(data.offsets, 8, seed=3, epoch=1, mega=2, buffer_rows=32)
    return [{k: v.tolist() for k, v in collate(data, b, 1).items()} for b in plan]


def test_a_glob_shards_and_a_stream_give_the_batches_of_one_file(tmp_path, tokenizer):
    one = tmp_path / "one"
    one.mkdir()
    write_agnews_csv(one / "train.csv", ROWS)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((ROWS[:40], ROWS[40:41], ROWS[41:])):
        write_agnews_csv(shards / f"train-{i:05d}.csv", part)
    for d in (one, shards):
        write_agnews_csv(d / "test.csv", ROWS[:4])
    single = open_corpus(str(one)).train
    globbed = open_corpus("", str(shards / "train-*.csv"), str(shards / "test.csv")).train
    in_dir = open_corpus(str(shards)).train  # the directory layout finds train-*.csv itself
    as_list = list(single)
    stream = Rows(lambda: (row for row in as_list), "a generator")
    assert list(globbed) == list(in_dir) == as_list and len(as_list) == 90
    expected = batches_of(single, tokenizer, None)
    assert len(expected) == 12
    for source in (globbed, in_dir, stream):
        assert batches_of(source, tokenizer, None) == expected
        assert batches_of(source, tokenizer, tmp_path / "cache") == expected
    # The data key is the rows' content: the same for all four sources, from the cache or not. The cache finds
    # an entry by where its rows come from: one for the shards (by a glob or the directory), one for the stream.
    keys = {encode(s, tokenizer, 16, c).key for s in (single, globbed, in_dir, stream) for c in (None, tmp_path / "c")}
    assert len(keys) == 1
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_parquet_reads_like_jsonl_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_text_label(tmp_path / "rows.jsonl", ROWS)
    csvf = write_text_label(tmp_path / "rows.csv", ROWS)
    table = pa.table({"id": list(range(90)), "text": [f"{t} {d}" for _, t, d in ROWS],
                      "label": [y - 1 for y, _, _ in ROWS]})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=25)
    want = load_corpus("", str(jsonl), str(jsonl))
    for path in (csvf, tmp_path / "rows.parquet"):
        got = load_corpus("", str(path), str(path))
        assert got.train == want.train and got.label_names == ["0", "1", "2", "3"]


def test_parquet_and_glob_mistakes_are_one_line_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a"], "label": [0]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": ["goal", "   "], "label": [0, 1]}), tmp_path / "blank.parquet")
    with pytest.raises(UserError, match=r"nocol.parquet: needs 'text' and 'label' columns, has \['body', 'label'\]"):
        load_corpus("", str(tmp_path / "nocol.parquet"), str(tmp_path / "nocol.parquet"))
    with pytest.raises(UserError, match=r"blank.parquet row 2: empty text"):
        load_corpus("", str(tmp_path / "blank.parquet"), str(tmp_path / "blank.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"junk.parquet is not a Parquet file"):
        load_corpus("", str(tmp_path / "junk.parquet"), str(tmp_path / "junk.parquet"))
    with pytest.raises(UserError, match=r"no files match .*nothing-\*\.csv"):
        open_corpus("", str(tmp_path / "nothing-*.csv"), str(tmp_path / "nocol.parquet"))
    write_agnews_csv(tmp_path / "a-1.csv", ROWS[:3])
    write_text_label(tmp_path / "a-2.csv", ROWS[3:6])
    with pytest.raises(UserError, match=r"a-1.csv and .*a-2.csv are in different formats \(agnews vs textlabel\)"):
        open_corpus("", str(tmp_path / "a-*.csv"), str(tmp_path / "a-1.csv"))
    with pytest.raises(UserError, match=r"data not found: .*\*\.csv"):
        open_corpus(str(tmp_path / "*.csv"))


def test_a_stream_with_no_rows_is_refused_at_encode(tmp_path, tokenizer):
    (tmp_path / "train.csv").write_text("text,label\n")
    (tmp_path / "test.csv").write_text("text,label\nhello,0\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    corpus = open_corpus(str(tmp_path))  # nothing is read yet: classes.txt names the classes
    with pytest.raises(UserError, match=r"train.csv has no rows"):
        encode(corpus.train, tokenizer, 16, tmp_path / "cache")
    with pytest.raises(UserError, match=r"train.csv has no rows"):
        to_split(corpus.train)


def test_subset_rows_picks_what_stratified_subset_picks(tmp_path):
    path = write_text_label(tmp_path / "rows.jsonl", ROWS)
    corpus = open_corpus("", str(path), str(path))
    whole = to_split(corpus.train)
    for n, seed in ((7, 0), (30, 4), (89, 1), (500, 2)):
        assert to_split(subset_rows(corpus.train, n, seed)) == stratified_subset(whole, n, seed)
    assert subset_rows(corpus.train, None, 0) is corpus.train
    with pytest.raises(UserError, match=r"a subset needs at least 1 row, got 0"):
        subset_rows(corpus.train, 0, 0)


def test_hub_streaming_dataset_reads_row_by_row(tmp_path, monkeypatch):
    """The hub code path on a local JSON dataset (no network): streaming and not, same rows as the file."""
    import datasets

    path = write_text_label(tmp_path / "rows.jsonl", ROWS)
    real = datasets.load_dataset
    calls = []

    def local(name, streaming=False, **kwargs):
        calls.append((name, streaming))
        return real("json", data_files={"train": str(path), "test": str(path)}, streaming=streaming,
                    cache_dir=str(tmp_path / "hf"))
    monkeypatch.setattr(datasets, "load_dataset", local)
    want = load_corpus("", str(path), str(path))
    streamed = open_corpus("someone/news", streaming=True)
    assert isinstance(streamed.train, Rows) and streamed.train.key is None  # nothing cheap names a stream
    assert streamed.label_names == want.label_names
    assert to_split(streamed.train) == want.train and to_split(streamed.eval) == want.eval
    loaded = open_corpus("someone/news")
    assert to_split(loaded.train) == want.train and loaded.train.key() == loaded.train.key()
    assert calls == [("someone/news", True), ("someone/news", False)]


def test_split_is_a_row_source_too():
    split = Split(["a b", "c"], [1, 0])
    assert list(split) == [("a b", 1), ("c", 0)]
    assert torch.equal(encode(split, _Words(), 8, None).labels, torch.tensor([1, 0]))


class _Words:
    """A minimal tokenizer: one id per word (its length), between ids 0 and 2."""
    name_or_path = "words"

    def __len__(self):
        return 100

    def get_vocab(self):
        return {}

    def __call__(self, texts, truncation, max_length):
        return {"input_ids": [([0] + [len(w) for w in t.split()] + [2])[:max_length] for t in texts]}


# Fuzzing the readers: whatever a file holds, reading it is a correct split or one UserError, never a traceback.

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**13), st.floats(), st.text(max_size=6),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                             max_size=1))
JSONL_LINES = st.lists(st.one_of(
    st.fixed_dictionaries({"text": JSON_VALUES, "label": JSON_VALUES}),
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=12), "label": st.integers(0, 3)}),
    st.dictionaries(st.sampled_from(["text", "label", "id"]), JSON_VALUES, max_size=3),
    st.text(max_size=10)), min_size=0, max_size=8)
CSV_CELLS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
CSV_ROWS = st.lists(st.lists(CSV_CELLS, min_size=0, max_size=4), max_size=8)


def _read_everything(directory) -> None:
    """What python -m train does with a data directory before the model loads, plus a full read."""
    from train.data.corpus import check_rows, load_corpus, open_corpus

    corpus = open_corpus(str(directory))
    check_rows(corpus)
    loaded = load_corpus(str(directory))
    assert all(0 <= y < len(loaded.label_names) for y in loaded.train.labels + loaded.eval.labels)
    assert all(isinstance(t, str) and t.strip() for t in loaded.train.texts + loaded.eval.texts)


def _one_line_or_fine(directory) -> None:
    try:
        _read_everything(directory)
    except UserError as e:
        assert "\n" not in str(e) and str(e)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=JSONL_LINES, test=JSONL_LINES)
def test_fuzzed_jsonl_is_read_or_refused_in_one_line(train, test, tmp_path_factory):
    import json as _json

    directory = tmp_path_factory.mktemp("jsonl")
    for name, lines in (("train.jsonl", train), ("test.jsonl", test)):
        (directory / name).write_text("".join((x if isinstance(x, str) else _json.dumps(x)) + "\n" for x in lines))
    _one_line_or_fine(directory)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=CSV_ROWS, test=CSV_ROWS, header=st.sampled_from([None, ["text", "label"], ["label", "text", "id"]]),
       classes=st.sampled_from([None, "World\nSports\n", "a\na\n", ""]))
def test_fuzzed_csv_is_read_or_refused_in_one_line(train, test, header, classes, tmp_path_factory):
    import csv as _csv

    directory = tmp_path_factory.mktemp("csv")
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with (directory / name).open("w", newline="") as f:
            writer = _csv.writer(f)
            writer.writerows(([header] if header else []) + rows)
    if classes is not None:
        (directory / "classes.txt").write_text(classes)
    _one_line_or_fine(directory)


NAMES = ["plain.csv", "with space.csv", "[x].csv", "star*.csv", "what?.csv", "ünïcødé.csv", "-dash.csv",
         "a[!b].csv"]


@pytest.mark.parametrize("name", NAMES)
def test_a_file_that_exists_is_taken_by_its_name_whatever_it_holds(name, tmp_path):
    literal = tmp_path / name
    literal.write_text('"1","a","b"\n')
    for decoy in ("x.csv", "starry.csv", "whatz.csv", "a!.csv", "ac.csv"):  # what the name would match as a glob
        (tmp_path / decoy).write_text('"2","c","d"\n')
    assert expand_paths(str(literal)) == [literal]
    corpus = open_corpus("", str(literal), str(literal))
    assert list(corpus.train) == [("a b", 0)]  # the literal file's row, no other


def test_a_pattern_is_a_glob_only_when_no_file_has_its_name(tmp_path):
    folder = tmp_path / "[2024] news"  # a folder whose own name holds glob characters
    folder.mkdir()
    for name in ("train-0.csv", "train-1.csv"):
        (folder / name).write_text('"1","a","b"\n')
    assert expand_paths(str(folder / "train-*.csv")) == [folder / "train-0.csv", folder / "train-1.csv"]
    assert expand_paths(str(folder / "train-?.csv")) == [folder / "train-0.csv", folder / "train-1.csv"]
    with pytest.raises(UserError, match=r"^no files match .*nothing-\*\.csv$"):
        expand_paths(str(folder / "nothing-*.csv"))
    with pytest.raises(UserError, match=r"^file not found: .*missing\.csv$"):
        expand_paths(str(folder / "missing.csv"))
