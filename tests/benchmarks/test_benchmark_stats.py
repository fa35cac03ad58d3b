"""Helpers of the benchmark scripts: step_time's per-round ratio statistic, step_profile's labels and argument
checks (hand-worked cases)."""

import argparse

import pytest
from conftest import load_benchmark


def test_paired_ratio_is_the_median_of_per_round_ratios():
    paired_ratio = load_benchmark("step_time").paired_ratio
    # rounds: 1.1/1.0, 2.4/2.0, 3.0/3.0 -> ratios 1.1, 1.2, 1.0 -> median 1.1
    assert paired_ratio([1.1, 2.4, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.1)
    # the two statistics differ: medians 2.0 / 3.0 = 0.67, per-round ratios 2, 2/3, 2 -> 2
    times, floor = [2.0, 2.0, 6.0], [1.0, 3.0, 3.0]
    assert paired_ratio(times, floor) == pytest.approx(2.0)


def test_paired_ratio_quartiles_are_those_of_the_per_round_ratios():
    quartiles = load_benchmark("step_time").paired_ratio_quartiles
    # per-round ratios 1, 2, 3, 4, 5 (given out of order); inclusive quartiles: 2 and 4
    floor = [1.0, 2.0, 1.0, 4.0, 2.0]
    times = [3.0, 2.0, 5.0, 8.0, 8.0]  # ratios 3, 1, 5, 2, 4
    assert quartiles(times, floor) == pytest.approx((2.0, 4.0))


def test_step_profile_shape_label_skips_scalar_arguments():
    shape_label = load_benchmark("step_profile").shape_label
    # the profiler lists scalar arguments as empty shapes: they are dropped, tensors joined with 'x'
    assert shape_label([[128, 32, 28, 28], [], [32, 1, 3, 3], []]) == "128x32x28x28, 32x1x3x3"
    assert shape_label([[], []]) == ""


def test_step_profile_counts_must_be_positive():
    positive_int = load_benchmark("step_profile").positive_int
    assert positive_int("3") == 3
    for bad in ("0", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
            positive_int(bad)


def test_int_at_least_gives_usage_errors():
    """The benchmarks' argparse type (step_time's --rounds needs 2 for quartiles; ablation's epoch counts need 1)."""
    from mvmr.cli.flags import int_at_least

    assert int_at_least(2)("2") == 2 and int_at_least(0)("0") == 0
    for low, bad in ((2, "1"), (0, "-1"), (1, "two"), (1, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError, match=f">= {low}"):
            int_at_least(low)(bad)


def test_benchmark_flags_reject_bad_counts_before_any_work(capsys):
    """A bad count stops the script at argument parsing (exit 2, one line naming the flag), not after an hour."""
    for script, argv in (
        ("step_time", ["--rounds", "1"]),
        ("ablation", ["--supervised_epochs", "0"]),
        ("ablation", ["--epochs", "0"]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            load_benchmark(script).build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        assert argv[0] in capsys.readouterr().err


def test_isolated_extra_work_names_every_piece(tmp_path):
    """Smoke test at 32 px, batch 4: the four pieces of the cached step's extra work come back as finite seconds
    (the keys name the cache's four representations; timing differences may be slightly negative)."""
    import math

    import torch

    step_time = load_benchmark("step_time")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    stepper = step_time.Stepper(step_time.make_module(32, 4, step_time.AUTHORS), None)
    step_time.attach_cache(stepper.module, images, str(tmp_path))
    pieces = step_time.isolated_extra_work(stepper, images[:4], torch.arange(4), rounds=1)
    assert list(pieces) == [
        "the augmented copy's view (one more per step)",
        "the augmented copy's dCor term",
        "the 4 cache reads",
        "the 4 cached dCor terms",
    ]
    assert all(math.isfinite(seconds) for seconds in pieces.values())
