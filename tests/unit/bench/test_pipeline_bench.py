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
    capacity_model,
    format_readme_table,
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
        "--redis-cluster",
    ):
        assert option in result.output


def test_summary_shows_the_cluster_run_next_to_the_single_node() -> None:
    result = {
        **_result(),
        "cluster_scorer_tx_per_s": 13_000.0,
        "cluster_vs_single": 0.77,
        "cluster_scorer_cpu_us_per_tx": 44.0,
        "cluster_redis_cpu_us_per_tx": 36.0,
    }
    text = format_summary(result)
    assert "| scorer on a 3-master Redis Cluster (same topic, same run) | 13,000 tx/s |" in text
    assert "| cluster / single Redis node | 0.77 x |" in text
    assert "| Redis CPU per transaction, 6 cluster nodes | 36.00 µs |" in text
    assert "Redis Cluster" not in format_summary(_result())


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
        "scorer_cpu_us_per_tx",
        "redis_cpu_us_per_tx",
        "broker_cpu_us_per_tx",
        "scorer_runs",
    ):
        assert key in last
    assert last["scorer_processed"] >= 3000


def test_summary_and_readme_table_show_the_peer_and_the_scaling() -> None:
    result = {
        **_result(),
        "peer_tx_per_s": 20_000.0,
        "scorer_vs_peer": 2.06,
        "peer_cpu_us_per_tx": 45.0,
        "peer_rss_mb": 190.0,
        "broker_cpu_us_per_tx": 12.0,
        "scorer_cpu_us_per_tx": 30.0,
        "redis_cpu_us_per_tx": 15.0,
        "scorer_runs": [{"scorers": 1}, {"scorers": 2}],
        "scorers_2_tx_per_s": 70_000.0,
        "scorers_2_vs_1": 1.7,
    }
    text = format_summary(result)
    assert "| Quix Streams peer (same topic, same run) | 20,000 tx/s |  |  |" in text
    assert "| scorer / peer | 2.06 x | >= 1.50 | yes |" in text
    assert "| 2 scorer processes, one group (aggregate) | 70,000 tx/s |  |  |" in text
    assert "| 2 scorers / 1 scorer | 1.70 x |  |  |" in text
    assert "| Kafka broker CPU per transaction (scorer run) | 12.00 µs |" in text
    assert "| peer peak RSS (VmHWM) | 190.00 MB |" in text
    table = format_readme_table(result)
    assert (
        "| scorer / peer | **2.06\N{MULTIPLICATION SIGN}** | ≥ 1.5\N{MULTIPLICATION SIGN} | met |"
        in table
    )
    assert "| 2 scorer processes, one group (aggregate) | 70,000 tx/s |  |  |" in table
    assert (
        "| CPU per transaction | scorer 30.00 µs, Redis 15.00 µs, broker 12.00 µs, peer 45.00 µs |"
        in table
    )
    assert "| scorer throughput | **41,235 tx/s** | ≥ 50,000 | not met |" in table


def test_cli_parses_scorer_counts_and_refuses_bad_ones() -> None:
    result = CliRunner().invoke(bench, ["pipeline", "--scorers", "1,x"])
    assert result.exit_code == 2
    assert "expected positive whole numbers like 1,2; got '1,x'" in result.output


def test_cli_says_in_one_line_how_to_get_the_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    import fraudstream.bench.cli as cli

    monkeypatch.setattr(cli, "quix_available", lambda: False)
    result = CliRunner().invoke(bench, ["pipeline", "--peer", "quix"])
    assert result.exit_code == 2
    assert "--peer quix needs Quix Streams: pip install -e '.[bench]' (quixstreams==3.28.*)" in (
        result.output
    )


def test_the_peers_card_windows_match_the_reference_store() -> None:
    """What the Quix peer computes (counts, sums, time since last) has the service's semantics."""
    import random

    from fraudstream.bench.peer_quix import CardWindows
    from fraudstream.service.features.definitions import FeatureConfig
    from fraudstream.service.features.reference import ReferenceFeatureStore
    from fraudstream.service.schemas import Transaction

    rng = random.Random(4)
    config = FeatureConfig(windows_s=(600, 3600, 21600), allowed_lateness_s=0)
    stream = [
        Transaction(
            transaction_id=f"p{i}",
            card_id=f"c{rng.randrange(5)}",
            terminal_id="t",
            amount=float(rng.randrange(1, 500)),  # exact in float32 too
            timestamp=1_522_540_800_000 + rng.randrange(2 * 86_400) * 1000,
        )
        for i in range(400)
    ]
    stream.sort(key=lambda tx: tx.event_time_ms)
    want = ReferenceFeatureStore(config).update_and_compute(stream)
    windows = CardWindows(config.windows_s)
    histories: dict[str, dict[str, list[float]]] = {}
    names = want.names
    for row, tx in zip(want.values, stream, strict=True):
        history = histories.setdefault(tx.card_id, {"ts": [], "amount": []})
        counts, sums, previous_s = windows.update(history, tx.event_time_ms, tx.amount)
        for label, count, total in zip(("600s", "1h", "6h"), counts, sums, strict=True):
            assert count == row[names.index(f"card_tx_count_{label}")]
            assert total == pytest.approx(row[names.index(f"card_amount_sum_{label}")])
        since = row[names.index("card_seconds_since_prev")]
        assert (previous_s if previous_s is not None else 21600.0) == pytest.approx(since)


def test_capacity_model_scales_with_the_rate_and_names_the_tighter_unit() -> None:
    cpu = {"scorer_cpu_us_per_tx": 30.0, "redis_cpu_us_per_tx": 20.0, "broker_cpu_us_per_tx": 8.0}
    rows = capacity_model(cpu)
    assert [r["tx_per_s"] for r in rows] == [10_000, 65_000, 1_000_000]
    million = rows[-1]
    # 1e6 tx/s x 30 µs = 30 cores of scorer work, at 60 % per process: 50 processes.
    assert million["scorers"] == 50 and million["partitions"] == 100
    assert million["redis_shards"] == 34 and million["broker_cores"] == 13.33
    assert all(r["bound"] == "scorer process" for r in rows)  # 20,000 < 30,000 tx/s
    assert capacity_model({**cpu, "redis_cpu_us_per_tx": 40.0})[0]["bound"] == "Redis shard"


def test_summary_has_the_capacity_model_when_cpu_was_measured() -> None:
    cpu = {"scorer_cpu_us_per_tx": 30.0, "redis_cpu_us_per_tx": 20.0}
    assert "## Capacity model" in format_summary(cpu)
    assert "## Capacity model" not in format_summary({"scorer_tx_per_s": 1.0})


def test_readme_table_shows_the_service_latency_beside_its_floor() -> None:
    result = {
        **_result(),
        "latency_offered_tx_per_s": 2000,
        "latency_kafka_p50_ms": 9.0,
        "latency_kafka_p99_ms": 50.0,
        "latency_floor_p50_ms": 6.0,
        "latency_floor_p99_ms": 93.0,
        "latency_floor_kafka_p50_ms": 3.0,
        "latency_floor_kafka_p99_ms": 71.0,
    }
    lines = format_readme_table(result).splitlines()
    [send] = [line for line in lines if line.startswith("| latency event-in")]
    assert "p50 **3.20 ms**, p99 **30.00 ms** | p50 ≤ 5, p99 ≤ 25 | not met |" in send
    [own] = [line for line in lines if line.startswith("| the same, from the transaction")]
    assert "p50 9.00 ms, p99 50.00 ms" in own
    [floor] = [line for line in lines if line.startswith("| the floor")]
    assert "p50 6.00 ms, p99 93.00 ms; p50 3.00 ms, p99 71.00 ms" in floor


def test_a_given_broker_that_is_down_is_one_line_naming_the_option() -> None:
    from fraudstream.cli import main

    args = ["--bootstrap-servers", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"]
    result = CliRunner().invoke(main, ["bench", "pipeline", *args, "--events", "1000"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: Kafka at 127.0.0.1:1 is not reachable (nothing accepts connections there): is "
        "the broker running? Check --bootstrap-servers"
    )
