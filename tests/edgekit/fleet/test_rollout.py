"""A wave's health verdict in numbers (rollouts against real agents: test_fleet.py, test_cluster.py)."""

from __future__ import annotations

import pytest

from edgekit.cli import _options as opt
from edgekit.fleet.rollout import Policy, p95_breach


def test_a_p95_rise_is_a_breach_only_past_both_the_percentage_and_the_absolute_floor():
    plain = Policy(max_p95_regression=0.5)
    assert "+62%, limit +50%)" in p95_breach(0.696, 1.127, plain)
    assert p95_breach(0.696, 1.0, plain) is None  # +44 %
    floored = Policy(max_p95_regression=0.5, min_p95_increase_ms=2.0)
    assert p95_breach(0.696, 1.127, floored) is None  # +62 % but +0.43 ms: what a busy machine does to sub-ms p95
    assert "at least +2 ms" in p95_breach(0.2, 4.0, floored)  # a 20x slower model is still caught
    assert p95_breach(10.0, 13.0, floored) is None  # +3 ms but +30 %: the percentage still applies
    assert p95_breach(None, 5.0, plain) is None and p95_breach(1.0, None, plain) is None  # nothing to compare


def test_a_saved_rollout_without_the_floor_resumes_with_none():
    saved = {"max_p95_regression": 0.2, "max_error_rate": 0.01, "min_soak": 60.0, "install_timeout": 300.0,
             "poll": 0.5}  # fmt: skip
    assert Policy(**saved).min_p95_increase_ms == 0.0


@pytest.mark.parametrize(("text", "ms"), [("2ms", 2.0), ("0.5ms", 0.5), ("1s", 1000.0), ("3", 3.0), ("0ms", 0.0)])
def test_min_p95_increase_reads_milliseconds_or_seconds(text, ms):
    assert opt.millis(text, "--min-p95-increase") == ms


@pytest.mark.parametrize("text", ["fast", "2 minutes", "-1ms", ""])
def test_a_bad_min_p95_increase_is_a_one_line_error_naming_the_option(text):
    with pytest.raises(opt.OptionInvalid, match="--min-p95-increase"):
        opt.millis(text, "--min-p95-increase")
