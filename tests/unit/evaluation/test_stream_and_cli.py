"""Labelled files read as they are (the handbook's CSV), and the evaluate command's outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.producers.files import FileFormatError
from fraudstream.producers.simulator import SimulationConfig, simulate

#: The Fraud Detection Handbook's simulated data, as its notebooks write it to CSV.
HANDBOOK_CSV = """\
TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO
0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0
1,2018-04-01 00:02:10,4961,3412,81.51,130,0,0,0
2,2018-04-01 00:07:56,2,1365,146.0,476,0,0,0
3,2018-04-01 00:09:29,4128,8737,226.4,569,0,1,1
4,2018-04-02 00:10:34,927,9906,55.79,86434,1,0,0
"""


def test_the_handbook_csv_is_read_as_is(tmp_path: Path) -> None:
    path = tmp_path / "handbook.csv"
    path.write_text(HANDBOOK_CSV)
    stream = LabelledStream.from_file(path, preset="handbook")
    assert len(stream) == 5
    assert stream.transaction_ids(np.arange(5)) == ["0", "1", "2", "3", "4"]
    assert [stream.card_names[c] for c in stream.card] == ["596", "4961", "2", "4128", "927"]
    assert stream.is_fraud.tolist() == [False, False, False, True, False]
    assert stream.scenario is not None and stream.scenario.tolist() == [0, 0, 0, 1, 0]
    # Naive datetimes are UTC.
    assert stream.time_ms[0] == 1_522_540_831_000
    tx = stream.transactions(3, 4)[0]
    assert (tx.card_id, tx.terminal_id, tx.amount) == ("4128", "8737", 226.4)
    # Without the scenario column, and without the extra columns, it still reads.
    short = tmp_path / "short.csv"
    short.write_text(
        "\n".join(
            ",".join([*line.split(",")[:5], line.split(",")[7]])
            for line in HANDBOOK_CSV.splitlines()
        )
        + "\n"
    )
    plain = LabelledStream.from_file(short, preset="handbook")
    assert plain.scenario is None and plain.is_fraud.sum() == 1


def test_a_row_without_label_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HANDBOOK_CSV.replace("146.0,476,0,0,0", "146.0,476,0,,"))
    with pytest.raises(FileFormatError, match="line 4"):
        LabelledStream.from_file(path, preset="handbook")


def _write_handbook_csv(path: Path) -> None:
    """A small simulation written in the handbook's CSV layout (naive UTC datetimes)."""
    sim = simulate(SimulationConfig(n_customers=200, n_terminals=400, n_days=40, seed=3))
    start_s = sim.config.start_ms // 1000
    lines = [
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,TX_FRAUD_SCENARIO"
    ]
    stamps = np.datetime_as_string((sim.time_ms // 1000).astype("datetime64[s]"), unit="s")
    for i in range(len(sim)):
        lines.append(
            f"{i},{stamps[i].replace('T', ' ')},{sim.customer[i]},{sim.terminal[i]},"
            f"{sim.amount[i]:.2f},{int(sim.is_fraud[i])},{sim.scenario[i]}"
        )
    assert start_s > 0
    path.write_text("\n".join(lines) + "\n")


def test_evaluate_a_handbook_file_prints_the_table_and_json_last(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    _write_handbook_csv(path)
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(path),
            "--preset",
            "handbook",
            "--models",
            "logreg,forest_logreg",
            "--store",
            "reference",
            "--label-delay-days",
            "3",
            "--assessment-weeks",
            "2",
            "--bootstrap",
            "50",
            "--min-frauds",
            "3",
            "--ceiling",
            "--no-progress",
            "--json",
            "--report",
            str(report_dir),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["default_model"] == "forest_logreg"
    for name in ("forest_logreg", "logreg", "rules"):
        m = report["models"][name]
        for key in ("roc_auc", "average_precision", "card_precision_at_100"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
            lo, hi = m["ci95"][key]
            assert lo <= m[key] <= hi
    assert report["protocol"]["weeks"] == 2
    assert report["assessed"]["transactions"] > 0
    assert "compromised-terminal" in report["models"]["forest_logreg"]["by_scenario"]
    table = "\n".join(lines[:-1])
    assert "forest_logreg (default)" in table and "rules prior alone" in table
    # The ceiling's reference scorers, last, assessed alike and never serving.
    assert list(report["models"])[-2:] == ["oracle_visible", "oracle_activity"]
    for name in ("oracle_visible", "oracle_activity"):
        m = report["models"][name]
        assert m["reference"] is True and "serving_from" not in m
        assert m["roc_auc"] >= report["models"]["rules"]["roc_auc"], name
        assert f"{name} (ceiling)" in table
    assert table.index("rules prior alone") < table.index("oracle_visible (ceiling)")
    written = sorted(p.name for p in report_dir.iterdir())
    assert {
        "report.json",
        "report.md",
        "card_precision_daily.png",
        "roc_pr.png",
        "score_distribution.png",
        "learning.png",
        "scenario_recall.png",
    } <= set(written)
    assert (
        json.loads((report_dir / "report.json").read_text())["models"].keys()
        == report["models"].keys()
    )
    assert "| **forest_logreg (default)** |" in (report_dir / "report.md").read_text()


def test_evaluate_needs_a_file_or_simulate() -> None:
    result = CliRunner().invoke(main, ["evaluate"])
    assert result.exit_code != 0 and "--simulate" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--simulate", "--models", "nope"])
    assert result.exit_code != 0 and "unknown model" in result.output


def test_the_ceiling_needs_the_frauds_scenarios(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text(
        "\n".join(",".join(line.split(",")[:8]) for line in HANDBOOK_CSV.splitlines()) + "\n"
    )
    result = CliRunner().invoke(
        main, ["evaluate", str(path), "--preset", "handbook", "--ceiling", "--no-progress"]
    )
    assert result.exit_code != 0 and "--ceiling needs the frauds' scenarios" in result.output


def test_a_stream_shorter_than_the_warm_up_is_refused_before_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "hb.csv"
    path.write_text(HANDBOOK_CSV)
    result = CliRunner().invoke(
        main, ["evaluate", str(path), "--preset", "handbook", "--store", "reference",
               "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        "Error: hb.csv: too few transactions after the warm-up: 5 transactions over 2 day(s) "
        "(2018-04-01 .. 2018-04-02), none after the first 14 days (--warmup-days): nothing to "
        "assess; give a longer stream or fewer --warmup-days (at most 1 here)"
    )
    outside = CliRunner().invoke(
        main, ["evaluate", str(path), "--preset", "handbook", "--assessment-start", "2019-01-01",
               "--no-progress"],
    )  # fmt: skip
    assert outside.exit_code == 1
    assert outside.output.strip() == (
        "Error: hb.csv: none of its 5 transactions over 2 day(s) (2018-04-01 .. 2018-04-02) is "
        "in the test weeks 2019-01-01 .. 2019-01-28: nothing to assess; choose an "
        "--assessment-start within the stream"
    )


def test_evaluate_reads_standard_input(tmp_path: Path) -> None:
    args = ["evaluate", "-", "--preset", "handbook", "--store", "reference", "--models",
            "logreg", "--warmup-days", "1", "--bootstrap", "0", "--no-progress",
            "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args, input=HANDBOOK_CSV)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["source"] == "<stdin> (5 transactions)"
    assert report["assessed"]["transactions"] == 1  # the second day
    # gzip-compressed too: recognised by its first bytes.
    zipped = CliRunner().invoke(main, args, input=gzip.compress(HANDBOOK_CSV.encode()))
    assert zipped.exit_code == 0, zipped.output


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--start", "junk"],
            "Error: Invalid value for --start: 'junk' is not a time (2018-04-01, "
            "2018-04-01T10:00:00Z, epoch ms, now, today)",
        ),
        (
            ["--start", "99999999999999999999"],
            "Error: Invalid value for --start: '99999999999999999999' is out of range: epoch ms "
            "up to 253402300799999 (9999-12-31)",
        ),
        (
            ["--extra", "junk"],
            "Error: Invalid value for '--extra': 'junk' is not one of 'account-takeover', "
            "'card-testing', 'impossible-travel'.",
        ),
        (
            ["--customers", "1"],
            "Error: Invalid value for --customers: 1 is too few: the simulation compromises 3 "
            "customers a day; give --customers 3 or more",
        ),
        (
            ["--assessment-start", "junk"],
            "Error: Invalid value for --assessment-start: 'junk' is not a date (YYYY-MM-DD)",
        ),
    ],
)
def test_a_wrong_simulation_option_is_named_before_anything_runs(
    args: list[str], line: str
) -> None:
    result = CliRunner().invoke(main, ["evaluate", "--simulate", "--days", "1", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == line


def test_a_simulation_too_big_for_memory_is_one_line() -> None:
    args = ["--customers", "999999999999999", "--days", "1", "--no-progress"]
    result = CliRunner().invoke(main, ["evaluate", "--simulate", *args])
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert line.startswith("Error: not enough memory (Unable to allocate "), line
    assert line.endswith("): give fewer --customers, --terminals or --days, or a smaller FILE"), (
        line
    )


_SMALL_RUN = [
    "evaluate", "--simulate", "--days", "20", "--customers", "50", "--terminals", "100",
    "--warmup-days", "1", "--models", "logreg", "--bootstrap", "0", "--no-progress",
]  # fmt: skip


def test_a_report_folder_that_cannot_be_made_is_refused_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    folder = blocker / "report"  # under a file: no one, not even root, can make it
    result = CliRunner().invoke(main, [*_SMALL_RUN, "--report", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: cannot write the report to {folder}: Not a directory; give a writable "
        "--report folder"
    )


def test_via_kafka_with_a_given_broker_that_is_down_is_one_fast_line() -> None:
    args = ["--via", "kafka", "--bootstrap-servers", "127.0.0.1:1"]
    result = CliRunner().invoke(main, [*_SMALL_RUN, *args, "--redis-url", "redis://127.0.0.1:1"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: Kafka at 127.0.0.1:1 is not reachable (nothing accepts connections there): is "
        "the broker running? Check --bootstrap-servers"
    ]
