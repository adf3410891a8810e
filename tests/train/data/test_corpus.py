"""train.data: each file format, stratified subsets, length-grouped batches, collate and the token cache."""
import csv
import json
from collections import Counter

import pytest
import torch

from helpers.oneline import refused
from helpers.tiny import CLASSES, Counting, train_args, write_agnews, write_jsonl
from train.data.batches import Encoded, collate, encode
from train.data.corpus import Split, load_corpus, read_split
from train.data.splits import stratified_subset
from train.errors import UserError

AGNEWS_ROWS = [("3", "Stocks rise", "Markets gained\non Monday."),  # a quoted description spanning lines
               ("2", "Cup final", "The coach was pleased."),
               ("3", "Bank merger", "Shares jump."),
               ("1", "Treaty signed", "Ministers met."),
               ("4", "New chip", "Faster laptops.")]


def write_csv(path, rows, header=None):
    with path.open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerows([header, *rows] if header else rows)
    return path


def test_agnews_csv_joins_title_and_description_and_reads_classes_txt(tmp_path):
    write_csv(tmp_path / "train.csv", AGNEWS_ROWS)
    write_csv(tmp_path / "test.csv", AGNEWS_ROWS[1:3])
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    corpus = load_corpus(str(tmp_path))
    assert corpus.label_names == CLASSES
    assert corpus.train.texts[0] == "Stocks rise Markets gained\non Monday."
    assert corpus.train.texts[1:] == [f"{t} {d}" for _, t, d in AGNEWS_ROWS[1:]]
    assert corpus.train.labels == [2, 1, 2, 0, 3]  # classes 1..4 become 0..3
    assert corpus.eval.labels == [1, 2]


def test_agnews_without_classes_txt_names_classes_by_number(tmp_path):
    write_csv(tmp_path / "train.csv", AGNEWS_ROWS)
    write_csv(tmp_path / "dev.csv", AGNEWS_ROWS[:1])
    corpus = load_corpus(str(tmp_path))
    assert corpus.label_names == ["1", "2", "3", "4"]
    assert corpus.train.labels == [2, 1, 2, 0, 3] and corpus.eval.labels == [2]


def test_text_label_csv_finds_columns_by_header(tmp_path):
    rows = [("x", "0", "first text"), ("y", "2", "second, with a comma"), ("z", "1", "third")]
    write_csv(tmp_path / "train.csv", rows, header=("id", "Label", "text"))
    write_csv(tmp_path / "validation.csv", [(t, y) for _, y, t in rows[1:]], header=("text", "label"))
    corpus = load_corpus(str(tmp_path))
    assert corpus.train.texts == ["first text", "second, with a comma", "third"]
    assert corpus.train.labels == [0, 2, 1] and corpus.eval.labels == [2, 1]
    assert corpus.label_names == ["0", "1", "2"]


def test_jsonl_with_string_labels_and_explicit_files(tmp_path):
    lines = [{"text": "goal scored", "label": "sports"}, {"text": "shares fell", "label": "business"},
             {"text": "cup win", "label": "sports"}]
    train = tmp_path / "a.jsonl"
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")  # a trailing blank line is fine
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps(lines[1]) + "\n")
    corpus = load_corpus("ignored-when-files-are-given", str(train), str(other))
    assert corpus.label_names == ["business", "sports"]
    assert corpus.train.texts == ["goal scored", "shares fell", "cup win"] and corpus.train.labels == [1, 0, 1]
    assert corpus.eval.labels == [0]


def test_jsonl_with_integer_labels_matches_the_agnews_csv(tmp_path):
    write_agnews(tmp_path / "csv", n_train=12, n_eval=4)
    jsonl = write_jsonl(tmp_path / "rows.jsonl", 12, seed=0)  # same rows, labels 0..3
    from_csv = load_corpus(str(tmp_path / "csv")).train
    from_jsonl = read_split(jsonl, ["0", "1", "2", "3"])
    assert from_jsonl.texts == from_csv.texts and from_jsonl.labels == from_csv.labels


def test_stratified_subset_keeps_class_mix_and_is_deterministic():
    labels = [0] * 500 + [1] * 300 + [2] * 150 + [3] * 50
    split = Split([f"t{i}" for i in range(len(labels))], labels)
    sub = stratified_subset(split, 100, seed=3)
    assert len(sub.labels) == 100
    assert Counter(sub.labels) == {0: 50, 1: 30, 2: 15, 3: 5}
    assert all(split.labels[int(t[1:])] == y for t, y in zip(sub.texts, sub.labels))  # rows stay intact
    assert stratified_subset(split, 100, seed=3) == sub
    assert stratified_subset(split, 100, seed=4).texts != sub.texts
    odd = stratified_subset(split, 7, seed=0)  # 3.5, 2.1, 1.05, 0.35: exact size, every class kept
    assert len(odd.labels) == 7 and set(odd.labels) == {0, 1, 2, 3}
    assert stratified_subset(split, None, 0) is split and stratified_subset(split, 5000, 0) is split


def random_lengths(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 129, (n,), generator=g)


def test_collate_pads_to_the_longest_row_with_a_matching_mask():
    rows = [[0, 5, 6, 2], [0, 7, 2], [0, 8, 9, 10, 11, 2]]
    data = Encoded(torch.tensor([t for r in rows for t in r], dtype=torch.int32),
                   torch.tensor([0, 4, 7, 13]), torch.tensor([3, 1, 0]))
    batch = collate(data, [1, 0], pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 7, 2, 1], [0, 5, 6, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 3]
    assert batch["input_ids"].dtype == torch.int64
    assert collate(data, [2, 1], pad_id=1)["input_ids"].shape == (2, 6)


SPLIT = Split(["goal match striker", "the market said shares fell today after a big week", "chip"], [1, 2, 3])


def test_encode_truncates_and_flattens_token_rows(tokenizer):
    data = encode(SPLIT, tokenizer, max_length=6, cache_dir=None)
    expected = tokenizer.real(SPLIT.texts, truncation=True, max_length=6)["input_ids"]
    assert data.lengths.tolist() == [5, 6, 3]
    assert [data.ids[data.offsets[i]:data.offsets[i + 1]].tolist() for i in range(3)] == expected
    assert data.labels.tolist() == [1, 2, 3] and len(data) == 3


def test_token_cache_is_reused_and_keyed_on_max_length(tokenizer, tmp_path):
    first = encode(SPLIT, tokenizer, 6, str(tmp_path))
    assert tokenizer.calls == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = encode(SPLIT, tokenizer, 6, str(tmp_path))
    assert tokenizer.calls == 1  # served from the cache
    assert torch.equal(again.ids, first.ids) and torch.equal(again.offsets, first.offsets)
    assert torch.equal(again.labels, first.labels)
    longer = encode(SPLIT, tokenizer, 16, str(tmp_path))
    assert tokenizer.calls == 2 and longer.lengths.tolist() == [5, 12, 3]
    encode(Split(SPLIT.texts[:2], [1, 2]), tokenizer, 6, str(tmp_path))
    assert tokenizer.calls == 3  # other texts, another entry


def test_token_cache_misses_when_the_tokenizer_changes_under_the_same_name(tiny_model_dir, tmp_path):
    from tokenizers import processors
    from transformers import AutoTokenizer

    plain = Counting(AutoTokenizer.from_pretrained(tiny_model_dir))
    changed = Counting(AutoTokenizer.from_pretrained(tiny_model_dir))
    changed.real.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 2)])  # same name and size, no <s> any more
    assert changed.name_or_path == plain.name_or_path and len(changed) == len(plain)
    a = encode(SPLIT, plain, 16, str(tmp_path))
    b = encode(SPLIT, changed, 16, str(tmp_path))
    assert changed.calls == 1 and b.lengths.tolist() == [x - 1 for x in a.lengths.tolist()]


def test_the_shipped_sample_is_what_its_readme_says():
    """--data ag_news_sample: 4,800 training and 800 test rows of real AG News, stratified, with its classes."""
    from collections import Counter

    from train.data.corpus import SAMPLES, load_corpus

    corpus = load_corpus("ag_news_sample")
    assert corpus.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert Counter(corpus.train.labels) == {k: 1200 for k in range(4)}
    assert Counter(corpus.eval.labels) == {k: 200 for k in range(4)}
    assert not set(corpus.train.texts) & set(corpus.eval.texts)  # disjoint samples
    readme = (SAMPLES["ag_news_sample"] / "README.md").read_text()
    assert "Zhang" in readme and "d52ea96a97a2d943681189a97654912d" in readme


def test_labels_that_differ_only_in_case_are_two_classes_and_a_note(tmp_path, capsys):
    rows = [("Sports", "goal"), ("World", "treaty"), ("sports", "match"), ("Sports", "coach")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, t in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "league", "label": "sports"}) + "\n")
    corpus = load_corpus(str(tmp_path))
    assert corpus.label_names == ["Sports", "World", "sports"]
    train = tmp_path / "train.jsonl"
    assert capsys.readouterr().err.splitlines() == [
        f"note: labels 'Sports' ({train} line 1) and 'sports' ({train} line 3) differ only in case; they are 2 classes"]


def test_a_label_unknown_to_classes_txt_but_for_its_case_says_so(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "goal", "label": "sports"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "war", "label": "World"}) + "\n")
    (tmp_path / "classes.txt").write_text("World\nSports\n")
    with pytest.raises(UserError, match=r"train.jsonl line 1: unknown label 'sports' \(labels: World, Sports\); "
                                        r"labels are case-sensitive: did you mean 'Sports'\?$"):
        load_corpus(str(tmp_path))


def test_holdout_taking_a_class_only_row_names_holdout_in_its_advice(tiny_model_dir, tmp_path, capsys):
    rows = [(t, y) for t, y in zip(["war", "goal", "bank", "chip"] * 6, [0, 1, 2, 3] * 6) if y != 3] + [("chip", 3)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    argv = [a for a in train_args(tiny_model_dir, tmp_path, tmp_path / "o") if a not in ("--data", str(tmp_path))]
    line = refused(argv + ["--train-file", train, "--holdout", "4"], capsys)
    assert "1 of 4 classes have no training row (3)" in line and "--holdout 4 took the only rows of some" in line
    assert "a smaller --holdout" in line
