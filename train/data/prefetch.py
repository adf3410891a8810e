"""Batches made ahead of the training step on a background thread, so collation (and, on CUDA, the
copy into pinned memory) overlaps the model's forward and backward instead of preceding them."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple

import torch


class Ready(NamedTuple):
    index: int  # the batch's position in the epoch
    rows: list[int]  # the global batch's row indices, as the plan gave them
    batch: dict[str, torch.Tensor]  # make(rows), pinned when asked


class _Failed(NamedTuple):
    error: BaseException


_DONE = object()


class Prefetcher:
    """Iterate Ready(index, rows, make(rows)) for batches[start:], in order, with up to `depth` made
    ahead by one background thread; depth 0 makes each batch when it is asked for, on the caller's
    thread (for CPU training, where the step already uses every core: a thread beside it slowed a
    2-core step by ~40%). One producer and a FIFO queue keep the order exactly the plan's,
    so a run resumed at batch k sees the same batches as one that never stopped.

    `batches` is an EpochBatches (entered with iter_from(start), making nothing before it), a
    sequence, or any iterable (its first `start` items are skipped). With `pin`, every tensor of
    the batch is put in page-locked memory, so `.to("cuda", non_blocking=True)` is a true async copy.
    An error in `make` is raised from the iteration. close() (or leaving a `with` block, or
    breaking out and dropping the object) stops the thread and waits for it."""

    def __init__(self, batches: Iterable[list[int]], make: Callable[[list[int]], dict[str, torch.Tensor]],
                 start: int = 0, depth: int = 2, pin: bool = False):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._finished = False
        self._thread = None
        if depth == 0:
            self._inline = (Ready(i, rows, _pinned(make(rows), pin))
                            for i, rows in enumerate(_from(batches, start), start))
            return
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # The thread holds no reference to self, so dropping the Prefetcher runs __del__ and stops it.
        self._thread = threading.Thread(target=_fill, name="prefetch", daemon=True,
                                        args=(_from(batches, start), start, make, pin, self._queue, self._stop))
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Ready:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            return next(self._inline)
        item = self._queue.get()
        if isinstance(item, Ready):
            return item
        self.close()
        if isinstance(item, _Failed):
            raise item.error
        raise StopIteration

    def close(self) -> None:
        self._finished = True
        if self._thread is None:
            return
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            try:
                self.close()
            except Exception:  # at interpreter exit the modules close() uses may be gone already
                pass


def _fill(plan: Iterator[list[int]], start: int, make, pin: bool, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for index, rows in enumerate(plan, start):
            if stop.is_set():
                return
            batch = _pinned(make(rows), pin)
            if not _put(q, stop, Ready(index, rows, batch)):
                return
    except BaseException as e:  # handed to the consumer, raised there
        _put(q, stop, _Failed(e))
        return
    _put(q, stop, _DONE)


def _pinned(batch: dict[str, torch.Tensor], pin: bool) -> dict[str, torch.Tensor]:
    return {k: v.pin_memory() for k, v in batch.items()} if pin else batch


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    """Wait for room, but give up once close() is called: a full queue must not hold the thread."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _from(batches: Iterable[list[int]], start: int) -> Iterator[list[int]]:
    if hasattr(batches, "iter_from"):
        return batches.iter_from(start)
    if isinstance(batches, Sequence):
        return (batches[i] for i in range(start, len(batches)))
    return islice(batches, start, None)
