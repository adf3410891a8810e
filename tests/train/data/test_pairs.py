"""Sentence pairs (GLUE MRPC/RTE style): the readers find the text column(s) by the hub's usual names, a pair is
tokenized as the tokenizer pairs it, and a pair split's key is its own while a single-text split's is unchanged."""
import csv
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

from train.data.batches import encode
from train.data.cache import lookup_key, token_chunks
from train.data.keys import Fingerprint, data_key, tokenizer_parts
from train.data.corpus import Split, open_corpus
from train.data.labels import text_columns
from train.data.sources import Rows, raw_rows, records
from train.errors import UserError

PAIRS = [("the war today", "a treaty on the border", 1), ("market shares", "the goal", 0),
         ("new chip", "robot research", 1)]


def write_pairs(path, rows=PAIRS, first="sentence1", second="sentence2"):
    path.write_text("".join(json.dumps({first: a, second: b, "label": y}) + "\n" for a, b, y in rows))
    return path


@pytest.fixture
def pair_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a pair template, so a pair's ids hold separator tokens."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


@pytest.mark.parametrize("columns, found", [
    (["text", "label", "sentence1", "sentence2"], ("text",)),
    (["label", "sentence", "idx"], ("sentence",)),
    (["sentence1", "sentence2", "label"], ("sentence1", "sentence2")),
    (["question", "sentence", "label"], ("question", "sentence")),
    (["question1", "question2", "label"], ("question1", "question2")),
    (["premise", "hypothesis", "label"], ("premise", "hypothesis")),
    (["body", "label"], None),
])
def test_each_column_pattern_is_found(columns, found):
    assert text_columns(columns, "f.csv") == found


def test_an_explicit_list_names_the_columns():
    assert text_columns(["a", "b", "text"], "f.csv", explicit=["b", "a"]) == ("b", "a")
    with pytest.raises(UserError, match=r"^f.csv: text columns a,c: no column 'c' \(it has a, b\)$"):
        text_columns(["a", "b"], "f.csv", explicit=["a", "c"])


def test_a_jsonl_pair_file_reads_as_pairs(tmp_path):
    path = write_pairs(tmp_path / "train.jsonl")
    assert [r[:2] for r in raw_rows(path)[0]] == [((a, b), y) for a, b, y in PAIRS]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_pairs(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([["premise", "hypothesis", "label"], *PAIRS])
    else:
        pq.write_table(pa.table({"premise": [r[0] for r in PAIRS], "hypothesis": [r[1] for r in PAIRS],
                                 "label": [r[2] for r in PAIRS]}), path)
    assert [r.text for r in records(path)[0]] == [(a, b) for a, b, _ in PAIRS]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_half_a_pair_is_one_line_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"sentence1": "a", "label": 0}) + "\n")
    elif suffix == ".csv":
        path.write_text("sentence1,label\na,0\n")
    else:
        pq.write_table(pa.table({"sentence1": ["a"], "label": [0]}), path)
    with pytest.raises(UserError, match=rf"^{path}( line 1)?: has a 'sentence1' column but no 'sentence2': "
                                        r"a pair of texts needs both$"):
        list(raw_rows(path)[0])


def test_an_empty_side_of_a_pair_is_refused_naming_its_line(tmp_path):
    path = write_pairs(tmp_path / "train.jsonl", [*PAIRS, ("the war", " ", 0)])
    (tmp_path / "classes.txt").write_text("0\n1\n")
    corpus = open_corpus("", str(path), str(path))
    with pytest.raises(UserError, match=rf"^{path} line 4: second text: empty text$"):
        list(corpus.train)


def test_a_pair_file_among_single_text_files_is_refused(tmp_path):
    pairs = write_pairs(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "the war", "label": 0}) + "\n")
    (tmp_path / "classes.txt").write_text("0\n1\n")
    corpus = open_corpus("", str(tmp_path / "*.jsonl"), str(pairs))
    with pytest.raises(UserError, match=r"b.jsonl line 1: text is one text, but at .*a.jsonl line 1 it is a pair"):
        list(corpus.train)


def test_pair_tokenization_is_the_tokenizers_own_pair_call(pair_tokenizer):
    rows = [((a, b), y) for a, b, y in PAIRS]
    ids, lengths, labels = next(token_chunks(rows, pair_tokenizer, 6))
    want = pair_tokenizer([a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS], truncation=True,
                          max_length=6)["input_ids"]
    assert ids.tolist() == [i for row in want for i in row] and lengths.tolist() == [len(r) for r in want]
    assert labels.tolist() == [y for *_, y in PAIRS] and want[0].count(2) == 3  # </s> </s> between, </s> at the end


def test_single_texts_keep_their_ids_and_key(pair_tokenizer, tmp_path):
    texts, labels = ["the war today", "market shares"], [1, 0]
    data = encode(Split(texts, labels), pair_tokenizer, 8, None)
    want = pair_tokenizer(texts, truncation=True, max_length=8)["input_ids"]
    assert data.ids.tolist() == [i for row in want for i in row]
    old = hashlib.sha256("".join(f"{y}\0{t}\0" for t, y in zip(texts, labels)).encode()).hexdigest()
    assert data.key == data_key(f"rows:{old}", tokenizer_parts(pair_tokenizer, 8))


def test_a_pair_splits_key_includes_both_texts_and_differs_from_any_single_text_split(pair_tokenizer):
    parts = tokenizer_parts(pair_tokenizer, 8)
    pair = encode(Split([("a b", "c")], [0]), pair_tokenizer, 8, None)
    moved = encode(Split([("a", "b c")], [0]), pair_tokenizer, 8, None)
    as_json = encode(Split([json.dumps(["a b", "c"])], [0]), pair_tokenizer, 8, None)
    assert len({pair.key, moved.key, as_json.key}) == 3
    seen = Fingerprint([(("a b", "c"), 0)])
    list(seen)
    assert seen.digest().startswith("pairs-") and lookup_key(Split([("a b", "c")], [0]), parts) == pair.key


def test_pairs_through_the_token_cache(pair_tokenizer, tmp_path):
    rows = Rows(lambda: [((a, b), y) for a, b, y in PAIRS], "pairs")
    cached = encode(rows, pair_tokenizer, 8, tmp_path / "cache")
    memory = encode(rows, pair_tokenizer, 8, None)
    assert cached.key == memory.key and torch.equal(cached.ids, memory.ids)
    assert torch.equal(cached.offsets, memory.offsets)
