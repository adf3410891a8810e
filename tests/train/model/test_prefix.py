"""The frozen-prefix cache: cached and uncached runs agree, a cache is whole or rebuilt, reused, and sized."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from transformers import (BertConfig, BertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          MPNetConfig, MPNetForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

import train.model.prefix_cache as prefix
from lora import LoRAConfig, inject_lora, merge_lora
from train.data.batches import Encoded, collate
from train.cli import UserError
from train.model.prefix import PrefixModel, start_layer
from train.model.prefix_cache import build_prefix_cache, cache_bytes

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
KINDS = {"roberta": (RobertaConfig, RobertaForSequenceClassification, 1),  # (config, class, pad id)
         "bert": (BertConfig, BertForSequenceClassification, 0),
         "mpnet": (MPNetConfig, MPNetForSequenceClassification, 1),
         "electra": (ElectraConfig, ElectraForSequenceClassification, 0),
         "xlm-roberta": (XLMRobertaConfig, XLMRobertaForSequenceClassification, 1)}
TARGETS = ("query", "key", "value", "dense")  # all six linears of a layer
MPNET_TARGETS = ("q", "k", "v", "o", "dense")  # the same six, in MPNet's names


def make(kind: str, dtype=torch.float64, layers: int = 3, **overrides):
    config, cls, _ = KINDS[kind]
    torch.manual_seed(0)
    return cls(config(**{**TINY, "num_hidden_layers": layers, **overrides})).to(dtype)


def with_lora(model, start: int, randomize):
    layers = tuple(range(start, model.config.num_hidden_layers))
    targets = MPNET_TARGETS if model.config.model_type == "mpnet" else TARGETS
    inject_lora(model, LoRAConfig(rank=2, targets=targets, layers=layers))
    return randomize(model)


def encoded(n: int = 7, seed: int = 1, pad_id: int = 1) -> Encoded:
    """Rows of 3..12 tokens (ids avoid both pad ids), flat like the token cache."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (n,), generator=g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    ids = torch.randint(3, TINY["vocab_size"], (int(offsets[-1]),), generator=g, dtype=torch.int32)
    return Encoded(ids, offsets, torch.randint(0, TINY["num_labels"], (n,), generator=g), pad_id)


def step(logits, labels, model):
    """Loss, and the gradient of every trainable parameter after one backward."""
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind,start,attention", [("roberta", 1, "sdpa"), ("roberta", 2, "sdpa"), ("bert", 1, "sdpa"),
                                                   ("bert", 2, "sdpa"), ("roberta", 1, "eager"), ("bert", 2, "eager"),
                                                   ("mpnet", 1, "eager"), ("mpnet", 2, "eager"),
                                                   ("electra", 2, "sdpa"), ("xlm-roberta", 1, "sdpa")])
def test_cached_run_equals_uncached(kind, start, attention, randomize, tmp_path):
    model = with_lora(make(kind, attn_implementation=attention, **NO_DROPOUT), start, randomize).train()
    assert model.config._attn_implementation == attention
    twin = copy.deepcopy(model)
    pad = KINDS[kind][2]
    data, rows = encoded(pad_id=pad), [0, 3, 5, 2]
    batch = collate(data, rows, pad)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, grads = step(logits, batch["labels"], model)

    cache = build_prefix_cache(twin, data, start, None, tmp_path)
    assert twin.training and cache.hidden.dtype == torch.float64
    cached = cache.batch(rows)
    assert torch.equal(cached["attention_mask"], batch["attention_mask"])
    assert torch.equal(cached["labels"], batch["labels"])
    net = PrefixModel(twin, start)
    c_logits = net(cached["hidden_states"], cached["attention_mask"])
    c_loss, c_grads = step(c_logits, cached["labels"], twin)
    torch.testing.assert_close(c_logits, logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(c_loss, loss, rtol=0, atol=1e-12)
    assert c_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], rtol=0, atol=1e-10, msg=name)

    # Evaluation: LoRA merged into the same layers, eval mode, against the unmerged full model.
    model.eval(), twin.eval()
    merge_lora(twin)
    with torch.inference_mode():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(net(cached["hidden_states"], cached["attention_mask"]), full, rtol=0, atol=1e-10)


def test_bf16_cache_is_half_the_bytes_and_adds_no_more_error_than_bf16(randomize, tmp_path):
    model = with_lora(make("roberta", torch.float32), 1, randomize).eval()
    data, rows = encoded(), [1, 4, 6]
    batch = collate(data, rows, 1)
    cache = build_prefix_cache(model, data, 1, torch.bfloat16, tmp_path)
    assert cache.hidden.dtype == torch.bfloat16
    size = cache_bytes(data, TINY["hidden_size"], torch.bfloat16)
    assert cache.path.stat().st_size == size == data.ids.numel() * 32 * 2
    cached, seen = cache.batch(rows), []
    model.roberta.encoder.layer[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.inference_mode():
        exact = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            ours = PrefixModel(model, 1)(cached["hidden_states"], cached["attention_mask"]).float()
    # The stored bf16 state is upcast, so layer 1 sees the dtype it sees uncached (the fp32 residual stream).
    assert seen == [torch.float32] * 3
    assert (ours - full).abs().max() <= 4 * (full - exact).abs().max() + 1e-6


@pytest.fixture
def counted(monkeypatch):
    """How many times the prefix was computed."""
    calls = []
    real = prefix.run_prefix

    def run(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(prefix, "run_prefix", run)
    return calls


def test_a_second_call_reuses_the_cache_and_a_changed_input_does_not(counted, tmp_path):
    model, data = make("bert"), encoded()
    first = build_prefix_cache(model, data, 2, None, tmp_path)
    again = build_prefix_cache(copy.deepcopy(model), data, 2, None, tmp_path)  # a resumed run: same weights
    assert len(counted) == 1 and again.path == first.path and torch.equal(again.hidden, first.hidden)
    build_prefix_cache(model, data, 1, None, tmp_path)  # another start layer
    build_prefix_cache(model, encoded(seed=2), 2, None, tmp_path)  # other tokens
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] += 1  # another frozen prefix
    build_prefix_cache(model, data, 2, None, tmp_path)
    with torch.no_grad():
        model.bert.encoder.layer[2].output.dense.weight[0, 0] += 1  # above the prefix: same cache
    build_prefix_cache(model, data, 2, None, tmp_path)
    assert len(counted) == 4 and len(list(tmp_path.glob("prefix-*.bin"))) == 4


def test_an_interrupted_or_damaged_cache_is_rebuilt_not_read(counted, monkeypatch, tmp_path):
    model, data = make("roberta"), encoded()
    expected = build_prefix_cache(model, data, 1, None, None).hidden  # in memory, no files
    real = prefix.run_prefix

    def killed(model, data, start, amp, batch_size, out):
        out[:5] = 1.0  # half a cache, then the process dies
        raise KeyboardInterrupt
    monkeypatch.setattr(prefix, "run_prefix", killed)
    with pytest.raises(KeyboardInterrupt):
        build_prefix_cache(model, data, 1, None, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no cache, no temp file

    monkeypatch.setattr(prefix, "run_prefix", real)
    cache = build_prefix_cache(model, data, 1, None, tmp_path)
    torch.testing.assert_close(cache.hidden, expected, rtol=0, atol=1e-12)
    binary, index = cache.path, cache.path.with_suffix(".safetensors")
    del cache
    with binary.open("r+b") as f:  # a short .bin behind a whole index
        f.truncate(binary.stat().st_size // 2)
    rebuilt = build_prefix_cache(model, data, 1, None, tmp_path).hidden
    torch.testing.assert_close(rebuilt, expected, rtol=0, atol=1e-12)
    del rebuilt
    index.unlink()  # killed between the .bin's rename and the index's
    rebuilt = build_prefix_cache(model, data, 1, None, tmp_path).hidden
    torch.testing.assert_close(rebuilt, expected, rtol=0, atol=1e-12)
    assert len(counted) == 4


def test_the_disk_check_refuses_in_one_line(monkeypatch, tmp_path):
    model, data = make("roberta"), encoded()
    monkeypatch.setattr(prefix.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    need = data.ids.numel() * 32 * 8
    message = f"needs {need / 1e3:.0f} kB in {tmp_path}, which has only 1.0 kB free"  # units that show the numbers
    with pytest.raises(UserError, match=re.escape(message)) as e:
        build_prefix_cache(model, data, 1, None, tmp_path)
    assert "\n" not in str(e.value) and not list(tmp_path.glob("prefix-*"))
    assert [prefix.human(n) for n in (12, 35_000, 812e6, 10.4e9, 2.25e9)] == [
        "12 bytes", "35 kB", "812 MB", "10 GB", "2.2 GB"]
    # Full AG News on roberta-base at s=8 in bf16: about 10 GB, as the README says.
    ag_news = Encoded(torch.zeros(0, dtype=torch.int32), torch.tensor([0, 120_000 * 55]), torch.zeros(1))
    assert cache_bytes(ag_news, 768, torch.bfloat16) == pytest.approx(10.1e9, rel=0.01)


def test_start_layer():
    assert start_layer(None, 12) == 0
    assert start_layer((8, 9, 10, 11), 12) == 8
    assert start_layer((11, 3, 7), 12) == 3  # any subset: everything below the lowest is LoRA-free
    assert start_layer((0, 1), 2) == 0
    with pytest.raises(ValueError):
        start_layer((12,), 12)


def test_prefix_model_refuses_a_prefix_that_trains(randomize):
    model = with_lora(make("roberta"), 1, randomize)
    with pytest.raises(ValueError, match="layer 1 has trainable parameters or LoRA"):
        PrefixModel(model, 2)
    with pytest.raises(ValueError, match="start must be in 1..3"):
        PrefixModel(model, 0)


SCRIPT = """
import json, os, sys, torch
sys.path[:0] = ["tests/train/model", "tests"]
import train.model.prefix_cache as prefix
from test_prefix import encoded, make
from train.distributed import init_distributed
d = init_distributed(False)
calls = []
real = prefix.run_prefix
prefix.run_prefix = lambda *a: (calls.append(1), real(*a))[1]
cache = prefix.build_prefix_cache(make("bert"), encoded(), 1, None, sys.argv[1], d=d, poll_seconds=0.05)
with open(os.path.join(sys.argv[2], f"rank{d.rank}.json"), "w") as f:  # not stdout: torchrun interleaves ranks' lines
    json.dump({"calls": len(calls), "sum": float(cache.hidden.sum()), "path": str(cache.path)}, f)
"""


@pytest.mark.slow
def test_under_torchrun_local_rank_0_builds_and_every_rank_maps_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "script.py"), str(tmp_path / "cache"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["calls"] for r in ranks] == [1, 0]
    assert ranks[0]["sum"] == ranks[1]["sum"] and ranks[0]["path"] == ranks[1]["path"]


def test_the_prefix_runs_without_dropout_while_the_model_trains():
    model, data = make("roberta"), encoded()  # dropout 0.1 everywhere
    reference = build_prefix_cache(copy.deepcopy(model).eval(), data, 2, None, None).hidden
    model.train()
    torch.testing.assert_close(build_prefix_cache(model, data, 2, None, None).hidden, reference, rtol=0, atol=1e-12)
    assert all(m.training for m in model.modules())  # modes are put back


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_python_m_train_with_the_cache_equals_without_and_resumes_exactly(model_without_dropout, tiny_data_dir,
                                                                             tmp_path):
    from tiny import train_args
    from train.__main__ import main

    def run(out, *extra):
        argv = [a for a in train_args(model_without_dropout, tiny_data_dir, out, "--epochs", "2", "--top-layers", "1",
                                      *extra)]
        return main(argv)

    assert run(tmp_path / "plain", "--no-prefix-cache") == 0
    cache = str(tmp_path / "cache")
    assert run(tmp_path / "cached", "--cache-dir", cache) == 0
    assert list(Path(cache).glob("prefix-*.bin"))  # the lower layer really was cached
    plain, cached = _losses(tmp_path / "plain"), _losses(tmp_path / "cached")
    assert len(plain) == len(cached) == 32 and cached == pytest.approx(plain, rel=1e-4)
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("plain", "cached"))
    assert a["confusion"] == b["confusion"]
    assert run(tmp_path / "resumed", "--cache-dir", cache, "--stop-after", "20") == 0
    assert main(["--resume", str(tmp_path / "resumed")]) == 0
    assert _losses(tmp_path / "resumed") == cached  # bit for bit, from the same cache


def test_a_cache_whose_bytes_changed_is_said_and_rebuilt_never_read(counted, tmp_path, capsys):
    """Same size, same index, other bytes (a bad disk, a stray write): the checksum catches it; NaNs it would
    have fed the run are never blamed on the learning rate."""
    model, data = make("roberta"), encoded()
    expected = build_prefix_cache(model, data, 1, None, tmp_path).hidden.clone()
    [binary] = tmp_path.glob("prefix-*.bin")
    raw = bytearray(binary.read_bytes())
    raw[8:16] = b"\xff" * 8  # a NaN, exactly where a float64 lives
    binary.write_bytes(bytes(raw))
    rebuilt = build_prefix_cache(model, data, 1, None, tmp_path).hidden
    assert f"the frozen-prefix cache {binary} is damaged" in capsys.readouterr().err
    torch.testing.assert_close(rebuilt, expected, rtol=0, atol=0)
    assert len(counted) == 2


def test_a_full_disk_is_one_line_and_a_dead_builds_temp_file_is_swept(monkeypatch, tmp_path):
    import errno
    import subprocess
    import sys

    from lora.files import _host

    model, data = make("roberta"), encoded()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left = tmp_path / f".prefix-abc.bin.{_host()}.{gone}.x.roberta-lora.tmp"
    left.write_bytes(b"\0" * 4096)  # what a kill -9 mid-build left: it holds disk space, and is swept

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prefix.os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"the frozen-prefix cache needs .* no space left on the device"):
        build_prefix_cache(model, data, 1, None, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the dead build's file swept, this one's temp file gone
