"""rate_limit holds messages back to the configured rate and loses none."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from operators.rate_limit import RateLimitConfig, TokenBucket


def test_token_bucket_waits_in_proportion_to_the_debt() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=10, clock=lambda: now[0])
    assert bucket.take(10) == 0.0  # the burst passes at once
    assert bucket.take(5) == pytest.approx(0.05)  # 5 tokens of debt at 100/s
    now[0] += 1.0  # a second later: refilled up to the burst only
    assert bucket.take(10) == 0.0
    assert bucket.take(1) == pytest.approx(0.01)


def test_config_defaults_burst_to_one_second_and_rejects_zero_rate() -> None:
    assert RateLimitConfig(rate=250).burst == 250
    with pytest.raises(ValidationError):
        RateLimitConfig(rate=0)


def test_graph_is_slowed_to_the_rate_and_every_message_arrives(write_graph, tmp_path, run) -> None:
    path = write_graph("""
        version: 1
        name: rl
        defaults: {dead_letter: dead}
        nodes:
          g: {type: generate, config: {count: 600, batch: 100}}
          slow: {type: rate_limit, inputs: [g], config: {rate: 2000, burst: 100}}
          out: {type: file_sink, inputs: [slow], config: {path: out.ndjson}}
          dead: {type: drop, inputs: [g.errors]}
    """)
    t0 = time.monotonic()
    report = run(path)
    elapsed = time.monotonic() - t0
    assert report.balanced and report.totals()["delivered"] == 600
    assert len((tmp_path / "out.ndjson").read_text().splitlines()) == 600
    assert elapsed >= (600 - 100) / 2000 * 0.9  # at most `burst` ahead of the rate
