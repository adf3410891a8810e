"""train.prefetch: batches made ahead on a thread arrive exactly as direct collation makes them, from any start."""
import threading
import time

import pytest
import torch

from train.data.batches import Encoded, EpochBatches, collate
from train.data.prefetch import Prefetcher


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (500,), generator=g)
    offsets = torch.zeros(501, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    return Encoded(torch.randint(3, 100, (int(offsets[-1]),), generator=g, dtype=torch.int32), offsets,
                   torch.randint(0, 4, (500,), generator=g))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("depth", [3, 0])
@pytest.mark.parametrize("start", [0, 1, 17, 31, 32])
def test_same_batches_in_the_same_order_as_direct_collation_from_any_start(data, start, depth):
    plan = EpochBatches(data.offsets, 16, seed=4, epoch=1, mega=2, buffer_rows=96)  # 3 windows-worth of starts
    direct = [collate(data, rows, 1) for rows in plan]
    make = lambda rows: collate(data, rows, 1)  # noqa: E731
    for source in (plan, list(plan), iter(list(plan))):  # an EpochBatches, a list, a one-shot iterator
        with Prefetcher(source, make, start=start, depth=depth) as ahead:
            got = list(ahead)
        assert [r.index for r in got] == list(range(start, len(direct)))
        assert [r.rows for r in got] == list(plan)[start:]
        assert all(same(r.batch, d) for r, d in zip(got, direct[start:]))


def test_work_runs_ahead_but_no_further_than_depth(data):
    made = []
    gate = threading.Event()

    def make(rows):
        made.append(rows[0])
        return {"x": torch.tensor(rows)}
    ahead = Prefetcher([[i] for i in range(10)], make, depth=2)
    deadline = time.monotonic() + 10
    while len(made) < 3 and time.monotonic() < deadline:  # two queued, one made and waiting for room
        gate.wait(0.01)
    gate.wait(0.2)
    assert made == [0, 1, 2]
    assert next(ahead).rows == [0]
    ahead.close()
    assert not ahead._thread.is_alive() and list(ahead) == []


def test_depth_zero_makes_each_batch_when_asked_on_the_callers_thread():
    made = []

    def make(rows):
        made.append((rows[0], threading.current_thread()))
        return {"x": torch.tensor(rows)}
    ahead = Prefetcher([[i] for i in range(5)], make, start=1, depth=0)
    assert made == [] and ahead._thread is None
    assert next(ahead).rows == [1] and made == [(1, threading.current_thread())]
    ahead.close()
    assert list(ahead) == [] and len(made) == 1


def test_an_error_in_make_reaches_the_loop_and_stops_the_thread():
    def make(rows):
        if rows == [3]:
            raise RuntimeError("bad row 3")
        return {"x": torch.tensor(rows)}
    ahead = Prefetcher([[i] for i in range(10)], make)
    assert [next(ahead).index for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="bad row 3"):
        next(ahead)
    assert not ahead._thread.is_alive()
    with pytest.raises(StopIteration):
        next(ahead)


def test_leaving_early_stops_the_thread(data):
    plan = EpochBatches(data.offsets, 8, seed=0, epoch=0)
    ahead = Prefetcher(plan, lambda rows: collate(data, rows, 1), start=5, depth=1)
    thread = ahead._thread
    for ready in ahead:
        if ready.index == 7:
            break  # as the loop does at --stop-after
    del ahead, ready  # dropped without close(): __del__ stops it
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_pin_puts_every_tensor_in_pinned_memory(monkeypatch):
    pinned = []

    def fake_pin(self):  # this CPU build cannot pin; record the call and mark the tensor
        pinned.append(self)
        return self.clone()
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    with Prefetcher([[1, 2]], lambda rows: {"a": torch.tensor(rows), "b": torch.zeros(2)}, pin=True) as ahead:
        [ready] = list(ahead)
    assert len(pinned) == 2 and ready.batch["a"].tolist() == [1, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth must be >= 0, got -1"):
        Prefetcher([[0]], lambda rows: {}, depth=-1)
