"""The warning of a failed batch: one per failure and period, not one per retry."""

from __future__ import annotations

import logging

import pytest

from fraudstream.service.loop import FailureLog


def test_a_failure_that_repeats_is_warned_of_once_per_period_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = FailureLog(every_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fraudstream.service.loop"):
        for _ in range(150):  # 30 s of retries every 200 ms
            failures.warn("scorer", 0, "UnsupportedCodecError: no zstd")
            now[0] += 0.2
        failures.warn("scorer", 3, "RedisError: gone")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0] == (
        "scorer batch of 0 not committed (UnsupportedCodecError: no zstd); retrying after back-off"
    )
    assert warnings[1].startswith("scorer batch of 3 not committed (RedisError: gone)")
    assert warnings[1].endswith("(the failure before came 149 more times after its warning)")
