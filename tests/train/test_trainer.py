"""The trainer's pieces on their own: the schedule, the learning rate each step uses, the stop signal, where
a stopped run resumes, and a diverging loss."""
import json
import math

import pytest
import torch

from helpers.tiny import train_args
from train.__main__ import main
from train.errors import Diverged
from train.distributed import Dist, agreed_signal
from train.trainer import lr_at, read_losses


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warmup = 100, 10
    lrs = [lr_at(s, total, warmup) for s in range(total + 1)]
    rises = lrs[:warmup + 1]
    steps = [b - a for a, b in zip(rises, rises[1:])]
    assert all(d == pytest.approx(steps[0]) and d > 0 for d in steps)  # linear rise
    assert lrs[warmup] == 1.0 and max(lrs) == 1.0
    assert all(b <= a for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # never rises again
    assert lrs[warmup + (total - warmup) // 2] == pytest.approx(0.5)  # cosine: half-way is half
    assert lrs[total - 1] < 0.001 and lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, total, 0) == 1.0 and lr_at(0, total, warmup) > 0


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_each_logged_lr_is_the_one_its_step_used(tiny_model_dir, tiny_data_dir, tmp_path):
    """256 rows, batch 16, 2 epochs: 32 steps, 3 of warmup (0.1); step k (1-based) used lr_at(k - 1)."""
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "2", "--warmup-ratio", "0.1")) == 0
    steps = [e for e in metrics(out) if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, 33))
    for e in steps:
        assert e["lr"] == pytest.approx(2e-2 * lr_at(e["step"] - 1, 32, 3), rel=1e-12)
    assert steps[0]["lr"] < steps[2]["lr"] and steps[-1]["lr"] < 2e-2 * 0.01


@pytest.mark.parametrize("stop, epoch, batch", [(5, 0, 5), (16, 1, 0), (21, 1, 5)])
def test_a_run_stopped_after_n_steps_checkpoints_where_it_stands(tiny_model_dir, tiny_data_dir, tmp_path, stop,
                                                                  epoch, batch):
    """16 steps an epoch: mid-epoch the checkpoint points at the next batch; at an epoch's end the epoch is
    evaluated first and the run resumes at the next one."""
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--stop-after", str(stop))) == 0
    progress = torch.load(out / "checkpoint.pt", weights_only=True)["progress"]
    assert (progress["step"], progress["epoch"], progress["batch"]) == (stop, epoch, batch)
    assert len(progress["history"]) == epoch and not (out / "eval.json").exists()
    assert [e["step"] for e in metrics(out) if "loss" in e] == list(range(1, stop + 1))


def test_one_process_stops_on_its_own_signal_and_several_only_where_they_agree():
    assert agreed_signal(15, Dist(), sync=False) == 15 and agreed_signal(0, Dist(), sync=True) == 0
    # Under torchrun no step waits on the host for a peer's flag: between sync points nobody stops yet.
    assert agreed_signal(15, Dist(rank=0, world=2), sync=False) == 0


class _Run:
    def __init__(self):
        self.lines = []

    def append_metrics(self, entry):
        self.lines.append(entry)


class _State:
    """What read_losses reads of a State."""

    def __init__(self, step):
        from train.trainer import Progress

        self.progress, self.base_lrs, self.total_steps, self.warmup_steps = Progress(step=step, epoch=1), [1.0], 10, 0
        self.dist, self.run, self.tracker = Dist(), _Run(), type("T", (), {"log": lambda *a: None})()


class _Bar:
    def set_postfix(self, **kwargs):
        pass


def test_losses_are_read_in_one_go_logged_per_step_and_a_nan_names_its_step():
    s = _State(step=7)
    unread = [(torch.tensor(0.5), 10.0), (torch.tensor(0.25), 12.0)]
    read_losses(s, unread, _Bar())
    assert unread == [] and [(e["step"], e["loss"], e["examples_per_s"]) for e in s.run.lines] == [(6, 0.5, 10.0),
                                                                                                      (7, 0.25, 12.0)]
    assert s.run.lines[0]["lr"] == pytest.approx(lr_at(5, 10, 0))
    with pytest.raises(Diverged, match=r"loss became nan at step 8 \(epoch 2\)"):
        read_losses(_State(step=8), [(torch.tensor(1.0), 1.0), (torch.tensor(math.nan), 1.0)], _Bar())
