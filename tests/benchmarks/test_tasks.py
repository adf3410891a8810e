"""benchmarks/tasks.py and task_reference.py: the metrics against sklearn and scipy, the trivial baselines on tiny
files, our eval.json read per kind, the race's order and --resume (the children are stand-ins), its one-line
refusals, and the PEFT contestant end to end on a tiny random BERT for a pair task, regression and multi-label."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import tasks
from benchmarks.common import REPO_ROOT
from benchmarks.contestants import RaceError
from benchmarks.task_reference import MULTI, REGRESSION, SINGLE, TASKS, run, score, trivial

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _data(root, n=16, seed=0):
    """Tiny mrpc, stsb and goemotions folders in the hub's layouts; dev rows grow longer down the file, so
    length grouping returns them in another order."""
    rng = np.random.default_rng(seed)

    def text(i):
        return " ".join(rng.choice(WORDS, 2 + i))

    for split, size in (("train", n), ("dev", n)):
        _jsonl(root / "mrpc" / f"{split}.jsonl", [{"sentence1": text(i), "sentence2": text(1), "label": i % 3 % 2}
                                                 for i in range(size)])
        _jsonl(root / "stsb" / f"{split}.jsonl", [{"sentence1": text(i), "sentence2": text(2), "label": i * 0.3}
                                                 for i in range(size)])
        _jsonl(root / "goemotions" / f"{split}.jsonl", [{"text": text(i), "labels": [i % 3] + ([2] if i % 4 else [])}
                                                       for i in range(size)])
    (root / "mrpc" / "classes.txt").write_text("not_equivalent\nequivalent\n")
    (root / "goemotions" / "classes.txt").write_text("a\nb\nc\nd\n")
    return root


def test_metrics_match_sklearn_and_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    rng = np.random.default_rng(0)
    for k in (2, 3):
        y, logits = rng.integers(0, k, 200), rng.normal(size=(200, k))
        got, pred = score(SINGLE, logits, y), logits.argmax(-1)
        assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert got["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
        assert ("f1" in got) == (k == 2) and got.get("f1", 0) == pytest.approx(f1_score(y, pred) if k == 2 else 0)
    x, y = np.round(rng.normal(size=300), 1), np.round(rng.normal(size=300), 1)  # rounded: ties for the ranks
    got = score(REGRESSION, x[:, None], y)
    assert got["pearson"] == pytest.approx(pearsonr(x, y)[0]) and got["spearman"] == pytest.approx(spearmanr(x, y)[0])
    assert got["mse"] == pytest.approx(((x - y) ** 2).mean())
    assert score(REGRESSION, np.ones(5), np.arange(5.0))["pearson"] is None  # constant: no correlation
    t, logits = (rng.random((100, 6)) < 0.3).astype(float), rng.normal(size=(100, 6))
    t[:, 5], logits[:, 5] = 0, -1  # a label never true, never predicted: F1 0, still in the macro mean
    got, p = score(MULTI, logits, t), (1 / (1 + np.exp(-logits)) > 0.5)
    assert got["micro_f1"] == pytest.approx(f1_score(t, p, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
    assert got["exact_match"] == pytest.approx(accuracy_score(t, p))


def test_trivial_baselines_from_the_files(tmp_path):
    root = _data(tmp_path)
    mrpc = trivial(TASKS["mrpc"], root / "mrpc", None, None, 0)
    assert mrpc["accuracy"] == pytest.approx(11 / 16)  # i % 3 % 2: label 0 on 11 of 16 rows, the majority
    assert mrpc["f1"] == 0.0 and mrpc["mcc"] == 0.0
    stsb = trivial(TASKS["stsb"], root / "stsb", None, None, 0)
    labels = np.arange(16) * 0.3
    assert stsb["pearson"] is None and stsb["mse"] == pytest.approx(((labels - labels.mean()) ** 2).mean())
    go = trivial(TASKS["goemotions"], root / "goemotions", None, None, 0)
    # label 2 is on 13 of 16 rows, so always predicted, the rest never: right on the 5 rows whose set is {2}
    assert go["exact_match"] == pytest.approx(5 / 16) and go["macro_f1"] == pytest.approx(2 * 13 / (2 * 13 + 3) / 4)
    assert trivial(TASKS["mrpc"], root / "mrpc", 8, 8, 0)["accuracy"] > 0  # a subset is drawn and scored


def _ours(tmp_path, kind, scores):
    out = tmp_path / "run" / "out"
    out.mkdir(parents=True)
    final = {f"final_{k}": v - 0.1 for k, v in scores.items()}
    (out / "eval.json").write_text(json.dumps({**scores, **final, "task": kind, "metric": next(iter(scores)),
                                               "trainable_params": 123, "history": [], "train_seconds": 4.0}))
    (out / "config.json").write_text(json.dumps({"train": {"epochs": 2, "precision": "fp32", "device": "cpu"}}))
    return tmp_path / "run"


@pytest.mark.parametrize("task,scores", [
    ("mrpc", {"accuracy": 0.8, "macro_f1": 0.7, "mcc": 0.5, "f1": 0.85}),
    ("stsb", {"pearson": 0.8, "spearman": 0.7, "mse": 0.9}),
    ("goemotions", {"micro_f1": 0.5, "macro_f1": 0.3, "exact_match": 0.4})])
def test_ours_eval_json_is_read_per_kind_at_the_final_epoch(tmp_path, task, scores):
    setup = tasks.Setup("M", _data(tmp_path / "data"), 2, max_train=10)
    got = tasks.read_ours(_ours(tmp_path, TASKS[task].kind, scores), TASKS[task], setup)
    assert got["metrics"] == {k: pytest.approx(v - 0.1) for k, v in scores.items()}
    assert got["best_epoch_metrics"] == scores and got["selection_metric"] == next(iter(scores))
    assert (got["epochs"], got["precision"], got["trainable_params"]) == (2, "fp32", 123)
    assert got["work"]["rows_x_epochs"] == 10 * 2 and got["work"]["token_layer_passes"] is None
    with pytest.raises(RaceError, match="says task"):
        tasks.read_ours(tmp_path / "run", TASKS["sst2" if task != "mrpc" else "stsb"], setup)


def test_the_race_order_alternates_and_runs_full_in_seed_zeros_round_only():
    order = tasks.plan(["mrpc"], ["trivial", "fast", "peft", "full"], [0, 1])
    assert order == [("mrpc", "trivial", 0), ("mrpc", "fast", 0), ("mrpc", "peft", 0), ("mrpc", "full", 0),
                     ("mrpc", "trivial", 1), ("mrpc", "peft", 1), ("mrpc", "fast", 1)]


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """The child runner and readers replaced: each launch is logged as (task, contestant, seed)."""
    launched = []

    def child(cmd, log, metrics, env):
        launched.append(log.parent.name)
        return {"wall_seconds": 10.0 if "-m train" in " ".join(cmd) else 20.0, "cpu_seconds": 1.0,
                "max_rss_mib": 100.0}

    result = {"metrics": {"accuracy": 0.8, "f1": 0.7}, "trainable_params": 5, "epochs": 1, "precision": "fp32"}
    monkeypatch.setattr(tasks, "run_child", child)
    monkeypatch.setattr(tasks, "read_ours", lambda run_dir, task, setup: dict(result, work={}))
    monkeypatch.setattr(tasks, "read_run", lambda run_dir: dict(result, work={"token_layer_passes": 256}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = ["--model", str(model), "--data-root", str(_data(tmp_path / "data")), "--tasks", "mrpc",
            "--out", str(tmp_path / "out.json"), "--work-dir", str(tmp_path / "runs"), "--epochs", "1"]
    return launched, base


def test_resume_skips_the_runs_already_in_the_file(stand_ins, tmp_path, capsys):
    launched, base = stand_ins
    tasks.main([*base, "--contestants", "default,peft,trivial", "--seeds", "0"])
    assert launched == ["mrpc-seed0-default", "mrpc-seed0-peft"]
    result = tasks.main([*base, "--contestants", "default,peft,trivial", "--seeds", "0,1", "--resume"])
    assert launched[2:] == ["mrpc-seed1-peft", "mrpc-seed1-default"]  # seed 0's runs were kept, not rerun
    assert [(r["contestant"], r["seed"]) for r in result["runs"]][:3] == [("trivial", 0), ("default", 0), ("peft", 0)]
    assert json.loads((tmp_path / "out.json").read_text())["complete"] is True
    peft = result["runs"][2]
    assert peft["work"]["token_layer_passes"] == 256 and peft["machine"]["cpu"]
    ratio = result["summary"]["mrpc"]["fast_over_peft_wall"]
    assert ratio is None  # no fast contestant ran
    table = capsys.readouterr().out
    assert "LoRA paper: RoBERTa-base LoRA 0.3M" in table and "89.7" in table and "80.00" in table
    with pytest.raises(RaceError, match="other settings"):
        tasks.main([*base, "--contestants", "peft", "--seeds", "0", "--resume", "--epochs", "2"])
    with pytest.raises(RaceError, match="--resume continues it"):
        tasks.main([*base, "--contestants", "peft", "--seeds", "0"])
    markdown = tasks.main(["--markdown", "--out", str(tmp_path / "out.json")])
    assert markdown["runs"] == result["runs"] and "| contestant |" in capsys.readouterr().out


def test_the_fast_over_peft_ratio_pairs_seeds(stand_ins):
    _, base = stand_ins
    result = tasks.main([*base, "--contestants", "fast,peft", "--seeds", "0,1"])
    ratio = result["summary"]["mrpc"]["fast_over_peft_wall"]
    assert ratio["per_round"] == [0.5, 0.5] and "0.500×" in tasks.render(result)


def test_a_regression_table_shows_the_mean_scores_error_unscaled_where_it_has_no_correlation():
    runs = [{"task": "stsb", "contestant": name, "seed": 0, "wall_seconds": wall, "epochs": epochs,
             "trainable_params": 1, "metrics": {"pearson": r, "spearman": r, "mse": mse}}
            for name, wall, epochs, r, mse in (("default", 600.0, 3, 0.9141, 0.3548),
                                               ("trivial", None, 0, None, 2.1545))]
    rows = {r[0]: r for r in tasks.table_rows({"summary": tasks.summarize(runs)})[0][2]}
    assert rows["ours, default recipe"][1:4] == ["91.41", "91.41", "0.355"]
    assert rows["trivial baseline"][1:4] == ["—", "—", "2.155"]


@pytest.mark.parametrize("flags,message", [
    (["--seeds", "0,x"], "--seeds takes"), (["--seeds", "٣"], "--seeds takes"), (["--seeds", "+1"], "--seeds"),
    (["--seeds", "0,0"], "distinct"), (["--tasks", "cola"], "--tasks takes"), (["--epochs", "0"], "at least 1"),
    (["--contestants", "peft,peft"], "--contestants"), (["--bogus"], "unrecognized"),
    (["--max-train-samples", "1e3"], "--max-train-samples"), (["--epochs", "1,2"], "one whole number")])
def test_bad_flags_are_one_error_line(stand_ins, flags, message):
    _, base = stand_ins
    with pytest.raises(RaceError) as e:
        tasks.main([*base, *flags])
    assert str(e.value.code).startswith("error: ") and message in e.value.code and "\n" not in e.value.code


def test_a_missing_model_or_task_file_is_one_error_line(tmp_path):
    with pytest.raises(RaceError, match="no model directory"):
        tasks.main(["--model", str(tmp_path), "--out", str(tmp_path / "o.json")])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RaceError, match="no rte/train.jsonl"):
        tasks.main(["--model", str(tmp_path), "--data-root", str(tmp_path), "--tasks", "rte"])


@pytest.mark.slow
def test_the_cli_exits_2_with_one_line():
    done = subprocess.run([sys.executable, "-m", "benchmarks.tasks", "--seeds", "a"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --seeds") and done.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT encoder (no head: each task adds its own) and a word-level tokenizer that pairs as BERT."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("task", ["mrpc", "stsb", "goemotions"])
def test_the_peft_contestant_scores_against_the_label_ids_it_got_back(tiny_bert, tmp_path, task):
    pytest.importorskip("peft")
    root = _data(tmp_path / "data")
    result = run(str(tiny_bert), TASKS[task], root / task, "peft", 1, 0, tmp_path / "run")
    saved = np.load(tmp_path / "run" / "predictions.npz")
    assert result["metrics"] == score(TASKS[task].kind, saved["predictions"], saved["label_ids"])
    assert all(math.isfinite(v) for v in result["metrics"].values() if v is not None)
    assert result["metrics"] == tasks.read_run(tmp_path / "run")["metrics"]
    rows = [json.loads(line) for line in (root / task / "dev.jsonl").read_text().splitlines()]
    labels = np.asarray([r["label"] for r in rows]) if task != "goemotions" else None
    if task == "stsb":  # distinct scores: the rows came back longest first, not in the file's order
        assert saved["label_ids"].tolist() == pytest.approx(labels[::-1].tolist())
    assert len(saved["label_ids"]) == 16 and result["recipe"]["target_modules"] == ["query", "value"]
    assert result["work"]["train_padded_tokens"] > 0 and 0 < result["trainable_params"] < 10_000
