"""benchmarks/common.py: the pairing of rounds and the median of paired ratios, on hand-checkable numbers."""
import pytest

from benchmarks.common import abba_order, mean_std, paired_ratio


def test_abba_order_reverses_every_other_round():
    assert abba_order(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert abba_order(["a", "b"], 2) == [["a", "b"], ["b", "a"]]


def test_paired_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # Round 2 ran under heavy load: both sides took 3x longer. Paired, that cancels.
    ours, theirs = [2.0, 9.0, 3.0], [1.0, 3.0, 2.0]
    r = paired_ratio(ours, theirs)
    assert r["per_round"] == [2.0, 3.0, 1.5]
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.5, 3.0)
    assert r["median"] != sorted(ours)[1] / sorted(theirs)[1]  # the ratio of medians would say 1.5


def test_paired_ratio_refuses_unpaired_rounds():
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([], [])


def test_mean_std_has_no_spread_from_one_seed():
    assert mean_std([0.9]) == (0.9, None)
    mean, std = mean_std([0.88, 0.90, 0.92])
    assert mean == pytest.approx(0.90) and std == pytest.approx(0.02)
