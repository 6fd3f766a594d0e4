"""The dashboard picture: every panel's PromQL evaluates over recorded metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.devstack.dashboard import (
    DASHBOARD,
    PromQLError,
    Recording,
    evaluate,
    metric_names,
    panel_queries,
    render,
)
from fraudstream.service.metrics import Metrics


def _recording(scrapes: int = 30) -> Recording:
    """Scrapes of a real Metrics registry while it counts a steady stream."""
    return Recording.from_scrapes(_scrapes(scrapes))


def _scrapes(scrapes: int) -> list[tuple[float, list[tuple[str, dict[str, str], float | None]]]]:
    """The ``(time, samples)`` of each scrape :func:`_recording` holds."""
    m = Metrics()
    rows = []
    rng = np.random.default_rng(1)
    for i in range(scrapes):
        m.processed.inc(1000)
        m.consumed.labels("transactions").inc(1000)
        m.alerts.labels("rules" if i < 10 else "model").inc(10)
        m.dead_lettered.labels("transactions.dlq", "DecodeError").inc(1)
        m.records_lost.labels("transactions").inc(5 if i == 20 else 0)
        m.observe_latencies_ms(rng.exponential(5.0, 1000))
        m.batch_seconds.observe(0.02)
        m.report_lag("scorer", {("transactions", 0): 5 * i, ("transactions", 1): 3})
        m.report_lag("learner", {("labels", 0): 2})
        m.model_version.set(0 if i < 10 else 3)
        if i >= 10:
            report = {"roc_auc": 0.9, "average_precision": 0.5, "precision": 0.6, "recall": 0.4}
            m.model_published(3, {**report, "n": 1000, "positives": 10, "alerts": 20})
        samples = [
            (s.name, s.labels, None if math.isnan(s.value) else s.value)
            for family in m.registry.collect()
            for s in family.samples
        ]
        rows.append((1_000.0 + 2 * i, samples))
    return rows


def test_every_panel_query_evaluates_to_data() -> None:
    recording = _recording()
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(panel_queries(dashboard)) >= 15
    for title, expr in panel_queries(dashboard):
        assert metric_names(expr), f"{title}: reads no fraudstream metric"
        values = evaluate(expr, recording)
        assert values, f"{title}: {expr} gives no series"
        last = [v[-1] for v in values.values()]
        assert any(np.isfinite(last)), f"{title}: {expr} has no value at the end"


def test_values_are_what_promql_would_give() -> None:
    recording = _recording()
    rate = evaluate("sum(rate(fraudstream_transactions_processed_total[10s]))", recording)
    assert rate[()][-1] == pytest.approx(500.0)  # 1000 per 2 s
    per_min = evaluate("sum by (scorer) (rate(fraudstream_alerts_total[10s])) * 60", recording)
    assert per_min[(("scorer", "model"),)][-1] == pytest.approx(300.0)
    p50 = evaluate(
        "histogram_quantile(0.5, sum by (le) "
        "(rate(fraudstream_end_to_end_latency_seconds_bucket[20s])))",
        recording,
    )[()][-1]
    assert 0.002 < p50 < 0.005  # exponential, mean 5 ms: median ~3.5 ms
    lag = evaluate('sum(fraudstream_consumer_lag{role="scorer"})', recording)[()]
    assert lag[-1] == 5 * 29 + 3
    since = evaluate("time() - max(fraudstream_learner_last_publish_timestamp_seconds)", recording)
    assert np.isfinite(since[()][-1])


def test_unknown_promql_is_refused() -> None:
    with pytest.raises(PromQLError):
        evaluate("topk(3, fraudstream_alerts_total)", _recording(3))


def test_render_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = render(json.loads(DASHBOARD.read_text()), _recording(), tmp_path / "d.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _as_recorded(scrapes: int) -> str:
    """Scrapes as ``fraudstream demo --record-metrics`` writes them: a JSON line each."""
    return "".join(
        json.dumps({"t": t, "samples": samples}) + "\n" for t, samples in _scrapes(scrapes)
    )


def test_the_picture_command_reads_a_recording_from_standard_input(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "d.png"
    result = CliRunner().invoke(
        main, ["dev", "dashboard-picture", "--metrics", "-", "-o", str(out)], input=_as_recorded(8)
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_picture_command_names_the_dashboard_file_that_is_not_text(tmp_path: Path) -> None:
    metrics, board = tmp_path / "m.jsonl", tmp_path / "board.json"
    metrics.write_text(_as_recorded(2))
    board.write_bytes(b"\xff\xfe{}")
    args = ["--metrics", str(metrics), "--dashboard", str(board), "-o", str(tmp_path / "d.png")]
    result = CliRunner().invoke(main, ["dev", "dashboard-picture", *args])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: {board}: not a Grafana dashboard (not text: invalid start byte)"
    )


def test_the_picture_command_with_closed_standard_input_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # checked first: without it, that is the error
    # A real process: only then is sys.stdin None (as after `<&-`).
    fraudstream = Path(sys.executable).with_name("fraudstream")
    args = ["dev", "dashboard-picture", "--metrics", "-", "-o", str(tmp_path / "d.png")]
    done = subprocess.run(
        [str(fraudstream), *args],
        preexec_fn=lambda: os.close(0),  # closes the child's stdin only
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().strip() == (
        "Error: standard input is closed, so - has nothing to read; give a file name, or pipe "
        "the data in (e.g. `... < file` or `cat file | ...`)"
    )


def test_the_picture_command_refuses_a_bad_recording_or_dashboard_in_one_line(
    tmp_path: Path,
) -> None:
    metrics, board, out = tmp_path / "m.jsonl", tmp_path / "board.json", tmp_path / "d.png"

    def error(*args: str) -> str:
        result = CliRunner().invoke(main, ["dev", "dashboard-picture", *args, "-o", str(out)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        return result.output.strip()

    metrics.write_text(_as_recorded(2) + "garbage\n")
    assert error("--metrics", str(metrics)) == (
        f"Error: {metrics}: line 3 is not a scrape recorded by `fraudstream demo "
        "--record-metrics` (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"
    )
    metrics.write_text('{"t": 1}\n')
    assert error("--metrics", str(metrics)).startswith(
        f"Error: {metrics}: line 1 is not a scrape recorded by"
    )
    metrics.write_text(_as_recorded(2))
    board.write_text("{")
    assert error("--metrics", str(metrics), "--dashboard", str(board)).startswith(
        f"Error: {board}: not a Grafana dashboard (JSON: "
    )
    board.write_text("[]")
    assert error("--metrics", str(metrics), "--dashboard", str(board)) == (
        f"Error: {board}: not a Grafana dashboard (no panels list)"
    )
    assert not out.exists()
