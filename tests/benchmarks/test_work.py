"""benchmarks/work.py: the work counter (padded tokens × layer passes) and both sides' batch plans."""
import pytest
import torch

from benchmarks.work import count_work, ours_batches, padded_tokens, reference_batches


def test_padded_tokens_pads_each_batch_to_its_longest_row():
    lengths = [10, 2, 3, 7]
    assert padded_tokens(lengths, [[0, 1], [2, 3]]) == 2 * 10 + 2 * 7
    assert padded_tokens(lengths, [[0, 3], [1, 2]]) == 2 * 10 + 2 * 3
    assert padded_tokens(lengths, [[0], [1], [2], [3], []]) == 22


def test_count_work_by_hand():
    train, evals = [10, 2, 3, 7], [5, 1, 4]
    epochs = [[[0, 1], [2, 3]], [[0, 3], [1, 2]]]  # 34 then 26 padded tokens
    one_eval = [[[0, 1], [2]]]  # 2*5 + 1*4 = 14 padded tokens
    w = count_work(train, epochs, evals, one_eval, layers=6)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"], w["forward_prefix"]) == (60 * 6, 60 * 6,
                                                                                                 14 * 6, 0)
    assert w["total"] == 60 * 6 * 2 + 14 * 6

    # LoRA from layer 4 of 6, no cache: every forward runs all 6 layers, backward only the top 2.
    w = count_work(train, epochs, evals, one_eval, layers=6, start=4)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"]) == (60 * 6, 60 * 2, 14 * 6)

    # With the frozen-prefix cache: layers 0-3 once per example, in length-sorted batches of 2:
    # train [10, 7] [3, 2] -> 20 + 6 = 26 tokens, eval [5, 4] [1] -> 10 + 1 = 11 tokens.
    w = count_work(train, epochs, evals, one_eval, layers=6, start=4, prefix_cache=True, prefix_batch_size=2)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"]) == (60 * 2, 60 * 2, 14 * 2)
    assert w["forward_prefix"] == 4 * (26 + 11)
    assert w["total"] == 120 + 120 + 28 + 148


def test_count_work_refuses_a_start_layer_outside_the_encoder():
    with pytest.raises(ValueError):
        count_work([1], [[[0]]], [1], [[[0]]], layers=6, start=6)


def test_batch_plans_cover_every_row_once_per_epoch_and_grouping_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.rand(400, generator=gen) ** 3 * 120 + 8).long().tolist()  # long-tailed, like news text
    evals = lengths[:100]
    for train, ev in (ours_batches(lengths, evals, 32, 128, 3, seed=1),
                      reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=False),
                      reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=True)):
        assert len(train) == 3
        assert all(sorted(i for b in epoch for i in b) == list(range(400)) for epoch in train)
        assert all(sorted(i for b in e for i in b) == list(range(100)) for e in ev)
    ours, ours_evals = ours_batches(lengths, evals, 32, 128, 3, seed=1)
    assert len(ours_evals) == 3  # ours evaluates after every epoch, the reference once at the end
    random_, _ = reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=False)
    grouped, _ = reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=True)
    padded = {name: sum(padded_tokens(lengths, e) for e in plan)
              for name, plan in (("ours", ours), ("random", random_), ("grouped", grouped))}
    assert padded["ours"] < 0.8 * padded["random"] and padded["grouped"] < 0.8 * padded["random"]
    assert min(padded.values()) >= 3 * sum(lengths)
