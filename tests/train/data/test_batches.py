"""train.data.batches: the two windowed planners (EpochBatches for training, eval_windows for evaluation) on
any batch source, and collate reading only its rows."""
import pytest
import torch

from train.data.batches import Encoded, EpochBatches, collate, eval_windows


def offsets_of(lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    out[1:] = lengths.cumsum(0)
    return out


def random_lengths(n, seed=0):
    return torch.randint(5, 129, (n,), generator=torch.Generator().manual_seed(seed))


def padded(lengths, batches):
    return sum(len(b) * int(lengths[b].max()) for b in batches)


@pytest.mark.parametrize("n", [0, 1, 31, 400, 401, 5003])
@pytest.mark.parametrize("buffer_rows", [200, 1000, 1 << 17])
def test_every_row_once_at_most_one_short_batch_and_len_is_exact(n, buffer_rows):
    plan = EpochBatches(offsets_of(random_lengths(n)), 20, seed=1, epoch=0, mega=10, buffer_rows=buffer_rows)
    batches = list(plan)
    assert len(plan) == len(batches) == -(-n // 20)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert sum(len(b) < 20 for b in batches) <= 1


def test_order_is_a_pure_function_of_seed_and_epoch_and_any_start_resumes_it():
    offsets = offsets_of(random_lengths(5003))
    plan = EpochBatches(offsets, 20, seed=1, epoch=2, mega=10, buffer_rows=1000)
    batches = list(plan)
    assert list(EpochBatches(offsets.clone(), 20, seed=1, epoch=2, mega=10, buffer_rows=1000)) == batches
    assert list(EpochBatches(offsets, 20, seed=1, epoch=3, mega=10, buffer_rows=1000)) != batches
    assert list(EpochBatches(offsets, 20, seed=2, epoch=2, mega=10, buffer_rows=1000)) != batches
    for start in (0, 1, 49, 50, 51, 137, len(batches) - 1, len(batches)):  # window edges fall every 50
        assert list(plan.iter_from(start)) == batches[start:]
    with pytest.raises(ValueError, match=r"start 252 is outside 0\.\.251"):
        next(plan.iter_from(252))


def test_windows_bound_the_index_and_still_group_lengths():
    lengths = random_lengths(20_000)
    plan = EpochBatches(offsets_of(lengths), 32, seed=0, epoch=0, mega=10, buffer_rows=3200)
    assert max(sum(map(len, plan._window(w))) for w in range(len(plan.windows))) == 3200  # rows held at once
    grouped = padded(lengths, plan)
    shuffled = padded(lengths, torch.randperm(len(lengths)).split(32))
    assert grouped < 0.8 * shuffled and grouped < 1.1 * int(lengths.sum())
    # Rows of one window come from 10 random blocks of 320, not from one stretch of the file.
    first = sorted(i for b in list(plan)[:100] for i in b)
    assert len({i // 320 for i in first}) == 10 and first[-1] - first[0] > 3200


def test_one_window_is_a_full_shuffle_that_still_groups_lengths():
    """Below buffer_rows the window is the corpus: batches of rows from all over it, nearly unpadded."""
    lengths = random_lengths(3000)
    plan = list(EpochBatches(offsets_of(lengths), 32, seed=0, epoch=0))
    assert padded(lengths, plan) < 1.1 * int(lengths.sum())  # nearly no padding at all
    assert padded(lengths, plan) < 0.8 * padded(lengths, torch.randperm(3000).split(32))
    spread = [max(b) - min(b) for b in plan[:20]]
    assert min(spread) > 300  # a batch's rows come from all over the corpus


def test_eval_windows_cover_every_row_and_sort_within_windows():
    lengths = random_lengths(1000)
    batches = list(eval_windows(offsets_of(lengths), 16, buffer_rows=300))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    firsts = [b for b in batches if b[0] < 300]
    ordered = [int(lengths[i]) for b in firsts for i in b]
    assert ordered == sorted(ordered, reverse=True)
    assert padded(lengths, batches) < 1.1 * int(lengths.sum())


def old_collate(data, indices, pad_id):
    """train.batches.collate before it read only its own rows: the reference."""
    lengths = data.lengths[indices]
    width = int(lengths.max()) if len(indices) else 1
    ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(indices), width), dtype=torch.int64)
    for row, (i, n) in enumerate(zip(indices, lengths.tolist())):
        start = int(data.offsets[i])
        ids[row, :n] = data.ids[start:start + n]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": data.labels[indices]}


def test_collate_matches_the_row_by_row_reference():
    lengths = random_lengths(300)
    g = torch.Generator().manual_seed(1)
    data = Encoded(torch.randint(3, 100, (int(lengths.sum()),), generator=g, dtype=torch.int32),
                   offsets_of(lengths), torch.randint(0, 4, (300,), generator=g))
    for batch in [[5], [7, 3, 299, 0], list(range(0, 300, 7)), []]:
        got, want = collate(data, batch, 1), old_collate(data, batch, 1)
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (batch, k)
