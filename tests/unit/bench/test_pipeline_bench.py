"""Pure helpers of the pipeline benchmark (no servers; no timed assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fraudstream.bench.cli import bench
from fraudstream.bench.pipeline import (
    TARGETS,
    by_second,
    format_summary,
    meets,
    percentiles,
    public_result,
    rate_per_s,
    ratio,
    simulate_records,
    write_results,
)


def test_percentiles_match_numpy_linear_interpolation() -> None:
    values = np.arange(1, 101, dtype=float)
    assert percentiles(values, [50, 99, 100]) == pytest.approx([50.5, 99.01, 100.0])


def test_percentiles_of_nothing_are_nan() -> None:
    assert all(math.isnan(v) for v in percentiles([], [50, 99]))


def test_rate_and_ratio_guard_against_zero() -> None:
    assert rate_per_s(100, 2.0) == 50.0
    assert math.isnan(rate_per_s(100, 0.0))
    assert ratio(30.0, 1.5) == 20.0
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(1.0, math.nan))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("scorer_tx_per_s", 50_000.0, "yes"),
        ("scorer_tx_per_s", 49_999.0, "no"),
        ("latency_p50_ms", 5.0, "yes"),
        ("latency_p99_ms", 25.1, "no"),
        ("redis_bytes_per_card", 2048.0, "yes"),
        ("scorer_rss_mb", math.nan, ""),
        ("events", 10.0, ""),
    ],
)
def test_meets_compares_with_the_design_target(name: str, value: float, expected: str) -> None:
    assert meets(name, value) == expected


def test_every_target_has_a_direction() -> None:
    assert {op for op, _ in TARGETS.values()} <= {">=", "<="}


def test_by_second_groups_by_send_second() -> None:
    sent = np.array([1000.0, 1200.0, 2500.0, 4100.0])
    lat = np.array([2.0, 4.0, 10.0, 1.0])
    result = by_second(sent, lat, 50)
    assert result[:2] == [3.0, 10.0]
    assert math.isnan(result[2])
    assert result[3] == 1.0
    assert by_second(np.zeros(0), np.zeros(0)) == []


def _result() -> dict[str, object]:
    return {
        "events": 200_000,
        "naive_events": 10_000,
        "partitions": 6,
        "scorer_tx_per_s": 41_234.6,
        "naive_tx_per_s": 812.0,
        "speedup_vs_naive": 50.78,
        "raw_consume_tx_per_s": 150_000.0,
        "latency_p50_ms": 3.2,
        "latency_p99_ms": 30.0,
        "redis_bytes_per_card": 1900.0,
        "scorer_rss_mb": math.nan,
        "notes": ["a note"],
        "profile_text": "line 1\nline 2\nline 3",
        "profile_flat_text": "flat 1",
    }


def test_summary_lists_figures_targets_and_verdicts() -> None:
    text = format_summary(_result())
    assert "| scorer throughput (real Application loop) | 41,235 tx/s | >= 50,000 | no |" in text
    assert "| scorer / naive | 50.78 x | >= 20.00 | yes |" in text
    assert "| latency p99 at offered rate | 30.00 ms | <= 25.00 | no |" in text
    assert "| scorer peak RSS (VmHWM) | n/a MB | <= 300.00 |  |" in text
    assert "(on 10,000 events)" in text
    assert "- a note" in text
    assert "line 1\nline 2" in text
    assert "flat 1" in text


def test_summary_cuts_the_profile() -> None:
    text = format_summary(_result(), profile_lines=1)
    assert "line 1" in text and "line 2" not in text


def test_summary_skips_measures_that_were_not_taken() -> None:
    text = format_summary({"events": 10})
    assert "latency" not in text.split("| measure |")[1]


def test_public_result_is_strict_json_without_profiles() -> None:
    public = public_result(_result())
    assert "profile_text" not in public and "profile_flat_text" not in public
    assert public["scorer_rss_mb"] is None
    json.loads(json.dumps(public, allow_nan=False))


def test_write_results_writes_json_and_markdown(tmp_path: Path) -> None:
    output = tmp_path / "results" / "pipeline.json"
    summary = write_results(_result(), output.parent, output)
    assert json.loads(output.read_text())["events"] == 200_000
    assert output.with_suffix(".md").read_text() == summary


def test_simulated_records_are_keyed_by_card_in_event_time_order() -> None:
    data = simulate_records(2_000, seed=3)
    assert len(data.values) == len(data.keys) == len(data.is_fraud) == 2_000
    rows = [json.loads(v) for v in data.values[:50]]
    assert [r["card_id"].encode() for r in rows] == data.keys[:50]
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps)
    assert "is_fraud" not in rows[0]


def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(bench, ["pipeline", "--help"])
    assert result.exit_code == 0
    for option in (
        "--events",
        "--json",
        "--bootstrap-servers",
        "--redis-url",
        "--naive-events",
        "--latency-seconds",
        "--output",
        "--profile",
    ):
        assert option in result.output


@pytest.mark.slow
def test_small_benchmark_run_end_to_end(tmp_path: Path) -> None:
    """Starts Kafka and Redis: opt-in (-m slow). Checks the output shape, not the speed."""
    output = tmp_path / "pipeline.json"
    result = CliRunner().invoke(
        bench,
        [
            "pipeline",
            "--events",
            "3000",
            "--naive-events",
            "200",
            "--latency-seconds",
            "2",
            "--no-profile",
            "--output",
            str(output),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    for key in (
        "events",
        "scorer_tx_per_s",
        "naive_tx_per_s",
        "raw_consume_tx_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "redis_bytes_per_card",
        "scorer_rss_mb",
    ):
        assert key in last
    assert last["scorer_processed"] >= 3000
