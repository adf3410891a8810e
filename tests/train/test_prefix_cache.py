"""The frozen prefix on disk (train.prefix_cache): reused when model, tokens and start layer match,
whole or rebuilt (an interrupted build, a short file, a changed byte), and sized before it is written."""
import copy
import re

import pytest
import torch
from helpers.encoders import encoded, make

import train.prefix_cache as prefix
from train.errors import UserError
from train.data.batches import Encoded
from train.prefix_cache import build_prefix_cache, cache_bytes


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
    import os
    import subprocess
    import sys

    from train.files import _host

    model, data = make("roberta"), encoded()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left = tmp_path / f".prefix-abc.bin.{_host()}.{gone}.x.roberta-lora.tmp"
    left.write_bytes(b"\0" * 4096)  # what a kill -9 mid-build left: it holds disk space, and is swept
    # A build in flight (a live process: this one) keeps its file. Its space was allocated before it was mapped
    # (posix_fallocate), so the disk check's free space already leaves it out: two builds never count it twice.
    live = tmp_path / f".prefix-def.bin.{_host()}.{os.getpid()}.y.roberta-lora.tmp"
    live.write_bytes(b"\0" * 4096)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prefix.os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"the frozen-prefix cache needs .* no space left on the device"):
        build_prefix_cache(model, data, 1, None, tmp_path)
    assert list(tmp_path.iterdir()) == [live]  # the dead build's file swept, this one's temp file gone
