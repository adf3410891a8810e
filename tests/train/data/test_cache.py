"""The token cache: chunked build, memory-mapped reads, atomic publication, and rebuilds after a kill."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train.data.cache
from helpers.tiny import Counting, synthetic_rows
from train.data.batches import EpochBatches, collate, encode, eval_windows
from train.data.cache import build, cache_file, checksum, open_cached
from train.data.corpus import Split
from train.errors import UserError

SPLIT = Split([f"{t} {d}" for _, t, d in synthetic_rows(50, seed=2)], [y - 1 for y, _, _ in synthetic_rows(50, seed=2)])


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(train.data.cache, "CHUNK_ROWS", 8)  # 50 rows: 7 chunks


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_memory_mapped_encoded_equals_the_in_memory_one(tokenizer, tmp_path, small_chunks):
    in_memory = encode(SPLIT, tokenizer, 12, None)
    assert tokenizer.calls == 7 and tokenizer.rows == 50
    mapped = encode(SPLIT, tokenizer, 12, tmp_path)
    for name in ("ids", "offsets", "labels"):
        a, b = getattr(in_memory, name), getattr(mapped, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(mapped.lengths, in_memory.lengths) and len(mapped) == 50
    [entry] = tmp_path.glob("*.safetensors")
    assert str(entry) in mapped_files()  # memory-mapped, not read into memory
    assert {k: v.tolist() for k, v in load_file(entry).items()} == \
        {k: getattr(in_memory, k).tolist() for k in ("ids", "offsets", "labels")}  # a valid safetensors file
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".safetensors", ".sum"]  # no leftovers
    calls = tokenizer.calls
    assert torch.equal(encode(SPLIT, tokenizer, 12, tmp_path).ids, in_memory.ids) and tokenizer.calls == calls


def resident_kb(path: Path) -> int:
    """Resident pages of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_batches_from_the_cache_map_no_pages_and_equal_in_memory_ones(tokenizer, tmp_path):
    """Random rows read through a mapping would make whole page-cache folios resident (MBs each on
    ext4 with large folios); collate and the batch plans read by pread instead."""
    big = Split(SPLIT.texts * 40, SPLIT.labels * 40)  # 2,000 rows
    in_memory = encode(big, tokenizer, 12, None)
    mapped = encode(big, tokenizer, 12, tmp_path)
    [entry] = tmp_path.glob("*.safetensors")
    plan = list(EpochBatches(mapped, 16, seed=0, epoch=0, mega=4, buffer_rows=256))
    assert plan == list(EpochBatches(in_memory.offsets, 16, seed=0, epoch=0, mega=4, buffer_rows=256))
    assert list(eval_windows(mapped, 16, 300)) == list(eval_windows(in_memory.offsets, 16, 300))
    for rows in plan[:20]:
        got, want = collate(mapped, rows, 1), collate(in_memory, rows, 1)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert resident_kb(entry) == 0
    assert torch.equal(mapped.lengths, in_memory.lengths)  # reads every offset through the mapping...
    assert resident_kb(entry) == 0  # ...and releases them


def test_an_interrupted_build_leaves_nothing_and_the_rerun_builds_it(tiny_model_dir, tokenizer, tmp_path, small_chunks):
    failing = Counting(tokenizer.real, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        encode(SPLIT, failing, 12, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half file under any name
    again = encode(SPLIT, tokenizer, 12, tmp_path)
    assert tokenizer.rows == 50 and torch.equal(again.ids, encode(SPLIT, tokenizer, 12, None).ids)


@pytest.mark.parametrize("damage", ["truncate", "old format", "garbage"])
def test_a_torn_or_foreign_cache_file_is_rebuilt_not_read(tokenizer, tmp_path, damage):
    good = encode(SPLIT, tokenizer, 12, tmp_path)
    [entry] = tmp_path.glob("*.safetensors")
    if damage == "truncate":  # a copy cut short
        data = entry.read_bytes()
        entry.unlink()  # the mapping above keeps the old inode; write a new, shorter file
        entry.write_bytes(data[:-10])
    elif damage == "old format":  # the previous cache's layout: ids and offsets only, no metadata
        from safetensors.torch import save_file
        entry.unlink()
        save_file({"ids": good.ids.clone(), "offsets": good.offsets.clone()}, str(entry))
    else:
        entry.unlink()
        entry.write_bytes(b"\xff" * 64)
    assert open_cached(entry) is None
    calls = tokenizer.calls
    rebuilt = encode(SPLIT, tokenizer, 12, tmp_path)
    assert tokenizer.calls == calls + 1
    assert torch.equal(rebuilt.ids, good.ids) and torch.equal(rebuilt.labels, good.labels)


KILLED_BUILDER = """
import sys, time
import numpy as np
from pathlib import Path
from train.data.cache import build

def chunks():
    yield np.arange(6, dtype=np.int32), np.array([2, 4]), np.array([0, 1])
    Path(sys.argv[2]).write_text("one chunk written")
    time.sleep(600)  # killed here, mid-build

build(Path(sys.argv[1]), chunks())
"""


def test_a_killed_builder_is_detected_swept_and_rebuilt(tmp_path):
    path, signal_file = tmp_path / "k.safetensors", tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(path), str(signal_file)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the builder never started"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    [partial] = tmp_path.glob(".k.safetensors.*.roberta-lora.tmp")
    assert (partial / "ids").is_file() and not path.exists()  # a half build never has the name
    assert open_cached(path) is None
    rows = build(path, [(np.array([5, 6, 7], np.int32), np.array([1, 2]), np.array([3, 0]))])
    assert rows == 2 and not partial.exists()  # the dead builder's parts are swept
    got, _ = open_cached(path)
    assert {k: v.tolist() for k, v in got.items()} == {"ids": [5, 6, 7], "offsets": [0, 1, 3], "labels": [3, 0]}


def test_sweep_keeps_live_builders_and_other_machines_fresh_parts(tmp_path):
    from train.files import _host, sweep_temps

    mine = tmp_path / f".x.safetensors.{_host()}.{os.getpid()}.a.roberta-lora.tmp"
    other = tmp_path / ".x.safetensors.elsewhere.123.b.roberta-lora.tmp"
    stale = tmp_path / ".x.safetensors.faraway.456.c.roberta-lora.tmp"
    for p in (mine, other, stale):
        p.mkdir()
    os.utime(stale, (time.time() - 2 * 24 * 3600,) * 2)
    sweep_temps(tmp_path, "x.safetensors")
    assert mine.exists() and other.exists() and not stale.exists()


def test_cache_file_names_the_key():
    assert cache_file("/c", "ab12") == Path("/c/ab12.safetensors")


def test_a_cache_whose_labels_were_changed_is_said_and_rebuilt(tokenizer, tmp_path, capsys):
    """A valid file with other labels (flipped to other valid classes) would train on wrong labels silently:
    the checksum written after the build catches it."""
    built = encode(SPLIT, tokenizer, 12, tmp_path)
    [entry] = tmp_path.glob("*.safetensors")
    del built
    from safetensors.torch import load_file, save_file

    tensors, meta = load_file(entry), open_cached(entry)[1].meta  # the same format and key: only labels differ
    tensors["labels"] = (tensors["labels"] + 1) % 4
    save_file(tensors, entry, metadata=meta)
    again = encode(SPLIT, tokenizer, 12, tmp_path)
    assert f"the token cache {entry} is damaged" in capsys.readouterr().err
    assert again.labels.tolist() == SPLIT.labels


@pytest.mark.parametrize("where", ["copyfileobj", "fsync"])
def test_a_full_disk_while_building_names_the_cache_and_leaves_nothing(where, tokenizer, tmp_path, monkeypatch):
    import errno
    import shutil

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil if where == "copyfileobj" else os, where, full)
    with pytest.raises(UserError, match=rf"^no space left on the device for the token cache {tmp_path}/\w+"
                                        r"\.safetensors \(No space left on device\): free some, or give --cache-dir "
                                        r"a folder on another disk \(--cache-dir '' keeps the tokens in memory\)$"):
        encode(SPLIT, tokenizer, 12, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no part, no half entry


def test_an_entry_holds_its_rows_key_and_an_entry_without_one_is_rebuilt(tokenizer, tmp_path):
    """The entry is found by where its rows come from; what a checkpoint records is the key inside it."""
    built = encode(SPLIT, tokenizer, 12, tmp_path)
    [entry] = tmp_path.glob("*.safetensors")
    assert open_cached(entry)[1].meta["key"] == built.key
    tensors = load_file(entry)
    from safetensors.torch import save_file

    entry.unlink()
    save_file(tensors, entry, metadata={"format": "3", "rows": "50", "tokens": str(len(tensors["ids"]))})
    entry.with_suffix(".sum").write_text(checksum(entry) + "\n")  # whole and vouched for, but keyless
    calls = tokenizer.calls
    assert encode(SPLIT, tokenizer, 12, tmp_path).key == built.key and tokenizer.calls == calls + 1


@pytest.mark.parametrize("kind", ["multi_label", "regression"])
def test_every_kinds_labels_survive_the_cache(kind, tokenizer, tmp_path, small_chunks):
    """Multi-hot rows (K not a multiple of 8: padded on disk, cut on read) and float scores come back exactly,
    through the memory map, the pread reader and a batch alike, equal to the in-memory encoding."""
    rng = np.random.default_rng(0)
    labels = ([bytes(rng.integers(0, 2, 5, dtype=np.uint8)) for _ in SPLIT.texts] if kind == "multi_label"
              else [float(x) for x in rng.normal(2.5, 1.3, len(SPLIT.texts))])
    split = Split(SPLIT.texts, labels)
    cached, memory = encode(split, tokenizer, 32, tmp_path), encode(split, tokenizer, 32, None)
    expected = (torch.tensor(np.frombuffer(b"".join(labels), np.uint8).reshape(-1, 5)) if kind == "multi_label"
                else torch.tensor(labels, dtype=torch.float64))
    assert torch.equal(cached.labels, expected) and torch.equal(memory.labels, expected)
    rows = [3, 17, 42, 0]
    assert torch.equal(cached.batch(rows)["labels"], expected[rows]) and torch.equal(memory.batch(rows)["labels"],
                                                                                    expected[rows])
    assert torch.equal(cached.batch(rows)["input_ids"], memory.batch(rows)["input_ids"])
