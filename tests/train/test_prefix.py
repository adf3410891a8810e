"""The frozen prefix (train.prefix): a run on cached hidden states equals one through the whole model, for
every family, in training, evaluation and under python -m train; the cache's own tests are in test_prefix_cache.py."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from helpers.encoders import KINDS, encoded, make

from lora import LoRAConfig, inject_lora, merge_lora
from train.data.batches import collate
from train.prefix import PrefixModel, start_layer
from train.prefix_cache import build_prefix_cache, cache_bytes

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
TARGETS = ("query", "key", "value", "dense")  # all six linears of a layer
MPNET_TARGETS = ("q", "k", "v", "o", "dense")  # the same six, in MPNet's names


def with_lora(model, start: int, randomize):
    layers = tuple(range(start, model.config.num_hidden_layers))
    targets = MPNET_TARGETS if model.config.model_type == "mpnet" else TARGETS
    inject_lora(model, LoRAConfig(rank=2, targets=targets, layers=layers))
    return randomize(model)


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
sys.path[:0] = ["tests/train", "tests"]
import train.prefix_cache as prefix
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
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "script.py"), str(tmp_path / "cache"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parents[2])
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
    from helpers.tiny import train_args
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


