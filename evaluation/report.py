"""From replayed scores to the handbook's figures: tables, JSON, Markdown and plots.

:func:`build_report` applies the assessment protocol
(:mod:`fraudstream.evaluation.metrics`) to every scorer of a
:class:`~fraudstream.evaluation.prequential.ReplayResult` and returns one
JSON-ready dict; :func:`table` prints it for a terminal, :func:`markdown`
writes the summary, :func:`plots` the PNG figures (with matplotlib, the
``report`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from fraudstream.evaluation.ceiling import CEILINGS
from fraudstream.evaluation.metrics import (
    Assessment,
    assess,
    bootstrap_over_days,
    card_precision_per_day,
)
from fraudstream.evaluation.prequential import ReplayConfig, ReplayResult
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.service.model import DEFAULT_MODEL, describe
from fraudstream.service.progressive import average_precision, roc_auc

#: The handbook's first test day (its 4 test weeks: 2018-08-08 .. 2018-09-04).
HANDBOOK_ASSESSMENT_START = date(2018, 8, 8)

#: The Fraud Detection Handbook's batch models on its own simulated data (test
#: weeks 2018-08-08 .. 2018-09-04, 7-day delay, one training week): reference only.
HANDBOOK_BASELINES: dict[str, tuple[float, float, float]] = {
    "logistic regression": (0.868, 0.623, 0.297),
    "random forest": (0.870, 0.678, 0.299),
    "XGBoost": (0.869, 0.687, 0.303),
    "balanced bagging": (0.879, 0.680, 0.305),
}

_EPOCH = date(1970, 1, 1)


def day_number(d: date) -> int:
    """Days since 1970-01-01.

    >>> day_number(date(2018, 8, 8))
    17751
    """
    return (d - _EPOCH).days


def day_date(n: int) -> date:
    """The date of a day number.

    >>> day_date(17751).isoformat()
    '2018-08-08'
    """
    return _EPOCH + timedelta(days=int(n))


@dataclass(frozen=True)
class Protocol:
    """What is assessed, and how (defaults: the handbook's protocol).

    Parameters
    ----------
    assessment_start
        First test day (default: 2018-08-08 when the stream holds its four
        weeks, else the last whole ``weeks`` of the stream after the warm-up).
    weeks
        Test weeks (default 4).
    warmup_days
        First days of the stream never assessed (default 14).
    remove_known
        Leave out known-compromised cards (default True).
    top_k
        ``k`` of card precision@k (default 100).
    n_boot
        Bootstrap resamples of the days for the intervals (default 1000; 0: none).
    """

    assessment_start: date | None = None
    weeks: int = 4
    warmup_days: int = 14
    remove_known: bool = True
    top_k: int = 100
    n_boot: int = 1000

    def assessment(self, stream: LabelledStream, delay_days: float) -> Assessment:
        """The test weeks of ``stream``."""
        days = stream.day
        first, last = int(days.min()), int(days.max())
        delay = max(0, math.ceil(delay_days))
        if self.assessment_start is not None:
            start, weeks = day_number(self.assessment_start), self.weeks
        else:
            start, weeks = day_number(HANDBOOK_ASSESSMENT_START), self.weeks
            if not (first + self.warmup_days <= start and start + 7 * weeks - 1 <= last):
                # Not the handbook's dates: the last whole weeks after the warm-up.
                weeks = max(1, min(self.weeks, (last - first + 1 - self.warmup_days) // 7))
                start = max(first + self.warmup_days, last - 7 * weeks + 1)
                weeks = max(1, min(weeks, (last - start + 1) // 7 or 1))
        return Assessment(start, weeks, delay_days=delay, remove_known=self.remove_known)


def _k_key(k: int) -> str:
    return f"card_precision_at_{k}"


def build_report(
    stream: LabelledStream,
    result: ReplayResult,
    config: ReplayConfig,
    protocol: Protocol,
    *,
    command: str = "",
    via: str = "in-process",
    references: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready (NaN as ``None``).

    ``references``: scores of reference scorers that are not models (the
    ceilings of :mod:`fraudstream.evaluation.ceiling`), assessed alike and
    marked ``"reference": true``.
    """
    references = dict(references or {})
    all_scores = {**result.scores, **references}
    k = protocol.top_k
    plan = protocol.assessment(stream, config.label_delay_days)
    day = stream.day
    in_weeks = plan.week_of(day) >= 0
    test = plan.test_mask(day, stream.card, stream.is_fraud)
    week = plan.week_of(day)[test]
    y, d, c = stream.is_fraud[test], day[test], stream.card[test]
    scenario = stream.scenario[test] if stream.scenario is not None else None

    models: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, every_score in all_scores.items():
        s = every_score[test]
        m = assess(s, y, d, c, week, k=k)
        daily = card_precision_per_day(d, c, s, y, k, week=week)
        entry: dict[str, Any] = {
            "description": _description(name, name in references),
            "roc_auc": m["roc_auc"],
            "average_precision": m["average_precision"],
            _k_key(k): m["card_precision_at_k"],
            "roc_auc_weekly_mean": m["roc_auc_weekly_mean"],
            "average_precision_weekly_mean": m["average_precision_weekly_mean"],
            "daily_" + _k_key(k): {
                day_date(day_n).isoformat(): v
                for day_n, v in zip(daily.days.tolist(), daily.precision.tolist(), strict=True)
            },
            "weekly": [
                {
                    "week_start": day_date(plan.start_day + 7 * w).isoformat(),
                    **_weekly(s[week == w], y[week == w], d[week == w], c[week == w], k),
                }
                for w in range(plan.weeks)
            ],
        }
        if protocol.n_boot:
            ci = bootstrap_over_days(s, y, d, daily, n_boot=protocol.n_boot, seed=stream.seed)
            entry["ci95"] = {
                "roc_auc": ci["roc_auc"],
                "average_precision": ci["average_precision"],
                _k_key(k): ci["card_precision_at_k"],
            }
        if name in references:
            entry["reference"] = True
        elif name != "rules":
            served = result.serving_from_ms.get(name)
            entry["serving_from"] = (
                datetime.fromtimestamp(served / 1000, UTC).isoformat() if served else None
            )
            learnt = result.labels_learnt.get(name, 0)
            learn_s = result.learn_s.get(name, 0.0)
            entry["labels_learnt"] = learnt
            entry["learn_labels_per_s"] = learnt / learn_s if learn_s > 0 else None
            score_s = result.score_s.get(name)
            entry["score_us_per_tx"] = 1e6 * score_s / len(stream) if score_s else None
        if scenario is not None:
            entry["by_scenario"] = _by_scenario(s, y, d, c, scenario, stream.scenario_names, k)
        models[name] = entry
        curves[name] = s
    report: dict[str, Any] = {
        "command": command,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": stream.source,
        "via": via,
        "store": result.store,
        "transactions": len(stream),
        "frauds": int(stream.is_fraud.sum()),
        "scenarios": _scenario_counts(stream),
        "protocol": {
            "label_delay_days": config.label_delay_days,
            "early_fraud_share": config.early_fraud_share,
            "batch_s": config.batch_s,
            "warmup_days": protocol.warmup_days,
            "assessment_start": day_date(plan.start_day).isoformat(),
            "assessment_end": day_date(plan.start_day + 7 * plan.weeks - 1).isoformat(),
            "weeks": plan.weeks,
            "remove_known_cards": plan.remove_known,
            "known_cards_delay_days": plan.delay_days,
            "top_k": k,
            "bootstrap_resamples": protocol.n_boot,
            "serving_policy": {
                "min_labels": config.policy.min_labels,
                "min_frauds": config.policy.min_frauds,
                "margin": config.policy.margin,
            },
        },
        "assessed": {
            "transactions": int(test.sum()),
            "frauds": int(y.sum()),
            "left_out_known_cards": int(in_weeks.sum() - test.sum()),
        },
        "default_model": DEFAULT_MODEL,
        "models": models,
        "learning": _learning_curve(stream, result, all_scores),
        "timings_s": result.timings_s,
    }
    safe: dict[str, Any] = _json_safe(report)
    return safe


def _description(name: str, reference: bool) -> str:
    if reference:
        return CEILINGS.get(name, "reference scorer")
    return "rules prior alone" if name == "rules" else describe(name)


def _weekly(s: np.ndarray, y: np.ndarray, d: np.ndarray, c: np.ndarray, k: int) -> dict[str, Any]:
    daily = card_precision_per_day(d, c, s, y, k)
    return {
        "transactions": int(y.shape[0]),
        "frauds": int(y.sum()),
        "roc_auc": roc_auc(s, y),
        "average_precision": average_precision(s, y),
        _k_key(k): daily.mean,
    }


def _by_scenario(
    s: np.ndarray,
    y: np.ndarray,
    d: np.ndarray,
    c: np.ndarray,
    scenario: np.ndarray,
    names: dict[int, str],
    k: int,
) -> dict[str, Any]:
    """Per fraud scenario: AUC against genuine transactions, and recall at the budget.

    The recall is the share of its frauds whose card is among the day's ``k``
    riskiest cards.
    """
    # Each day's top-k cards by max score (no detected-card removal: a recall).
    top = np.zeros(y.shape[0], dtype=bool)
    for day_n in np.unique(d).tolist():
        rows = np.flatnonzero(d == day_n)
        cards, inverse = np.unique(c[rows], return_inverse=True)
        best = np.full(cards.shape[0], -np.inf)
        np.maximum.at(best, inverse, s[rows])
        chosen = np.lexsort((cards, -best))[:k]
        top[rows] = np.isin(inverse, chosen)
    genuine = ~y
    out: dict[str, Any] = {}
    for code, name in sorted(names.items()):
        hits = y & (scenario == code)
        if code == 0 or not hits.any():
            continue
        mask = hits | genuine
        out[name] = {
            "frauds": int(hits.sum()),
            "roc_auc_vs_genuine": roc_auc(s[mask], y[mask]),
            f"recall_at_top_{k}_cards": float(top[hits].mean()),
        }
    return out


def _scenario_counts(stream: LabelledStream) -> dict[str, int]:
    if stream.scenario is None:
        return {}
    counts = np.bincount(stream.scenario.astype(np.int64))
    return {
        stream.scenario_names.get(i, str(i)): int(n) for i, n in enumerate(counts.tolist()) if n
    }


def _learning_curve(
    stream: LabelledStream, result: ReplayResult, scores: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Per week of label arrival: each scorer's AUC and AP on the labels that arrived.

    The scores are those given when each transaction was scored (prequential):
    how the scorers did, seen as the labels come in.
    """
    arrived = result.labeled_ms <= stream.time_ms[-1]  # labels the run delivered
    arrived_day = result.labeled_ms // 86_400_000
    first = int(arrived_day[arrived].min()) if arrived.any() else 0
    week = np.where(arrived, (arrived_day - first) // 7, -1)
    out = []
    for w in np.unique(week[arrived]).tolist():
        rows = week == w
        y = stream.is_fraud[rows]
        if not y.any() or y.all():
            continue
        entry: dict[str, Any] = {
            "week_start": day_date(first + 7 * w).isoformat(),
            "labels": int(rows.sum()),
            "frauds": int(y.sum()),
        }
        for name, s in scores.items():
            entry[name] = {
                "roc_auc": roc_auc(s[rows], y),
                "average_precision": average_precision(s[rows], y),
            }
        out.append(entry)
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- text ------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_ci(entry: dict[str, Any], key: str) -> str:
    ci = entry.get("ci95", {}).get(key)
    value = _f(entry.get(key))
    if ci and ci[0] is not None:
        return f"{value} [{_f(ci[0])}, {_f(ci[1])}]"
    return value


def scorer_order(report: dict[str, Any]) -> list[str]:
    """Default model first, then the other models, the rules prior, the reference scorers."""
    models = report["models"]
    names = [n for n in models if n != "rules" and not models[n].get("reference")]
    default = report["default_model"]
    ordered = ([default] if default in names else []) + [n for n in names if n != default]
    return [*ordered, "rules", *(n for n in models if models[n].get("reference"))]


def _label(report: dict[str, Any], name: str) -> str:
    if name == "rules":
        return "rules prior alone"
    if report["models"].get(name, {}).get("reference"):
        return f"{name} (ceiling)"
    return f"{name} (default)" if name == report["default_model"] else name


def table(report: dict[str, Any]) -> str:
    """The results as an aligned text table (what the terminal shows)."""
    p = report["protocol"]
    k = p["top_k"]
    key = _k_key(k)
    header = [
        "model",
        "ROC AUC [95% CI]",
        "AP [95% CI]",
        f"CP@{k} [95% CI]",
        "serves from",
        "learn labels/s",
        "score µs/tx",
    ]
    rows = [header]
    for name in scorer_order(report):
        e = report["models"][name]
        served = e.get("serving_from")
        rate = e.get("learn_labels_per_s")
        never = "-" if name == "rules" or e.get("reference") else "never"
        rows.append(
            [
                _label(report, name),
                _with_ci(e, "roc_auc"),
                _with_ci(e, "average_precision"),
                _with_ci(e, key),
                served[:10] if served else never,
                f"{rate:,.0f}" if rate else "-",
                _f(e.get("score_us_per_tx"), 2) if e.get("score_us_per_tx") else "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    a = report["assessed"]
    intro = (
        f"{report['source']}: {report['transactions']:,} transactions, "
        f"{report['frauds']:,} frauds. Labels {p['label_delay_days']:g} days late"
        + (
            f", {100 * p['early_fraud_share']:.0f} % of frauds earlier"
            if p["early_fraud_share"]
            else " (no early labels)"
        )
        + f". Assessed {p['assessment_start']} .. {p['assessment_end']} ({p['weeks']} weeks): "
        f"{a['transactions']:,} transactions, {a['frauds']:,} frauds"
        + (
            f", {a['left_out_known_cards']:,} of known-compromised cards left out"
            if p["remove_known_cards"]
            else ""
        )
        + "."
    )
    return intro + "\n\n" + "\n".join(lines) + "\n"


def markdown(report: dict[str, Any], images: Sequence[str] = ()) -> str:
    """The report as a Markdown page (``images``: file names of the plots beside it)."""
    p = report["protocol"]
    k = p["top_k"]
    key = _k_key(k)
    a = report["assessed"]
    lines = [
        "# Detection quality",
        "",
        f"Generated by `{report['command']}` on {report['generated_at']}"
        f" ({report['via']}, {report['store']} feature store).",
        "",
        f"**Stream**: {report['source']}: {report['transactions']:,} transactions, "
        f"{report['frauds']:,} frauds"
        + (
            " (" + ", ".join(f"{n} {v:,}" for n, v in report["scenarios"].items()) + ")"
            if report["scenarios"]
            else ""
        )
        + ".",
        "",
        "**Protocol** (the Fraud Detection Handbook's): every transaction is scored before its "
        f"label exists; labels arrive {p['label_delay_days']:g} days later"
        + (
            f" ({100 * p['early_fraud_share']:.0f} % of frauds earlier)"
            if p["early_fraud_share"]
            else ", none earlier"
        )
        + ", and are learnt only once they have arrived. Each model scores once the serving "
        "policy lets it replace the rules prior (its average precision on its last labels, "
        "scored before learning them, at least the prior's, with at least "
        f"{p['serving_policy']['min_frauds']} frauds among them). "
        f"Assessed on {p['assessment_start']} .. {p['assessment_end']} ({p['weeks']} test weeks): "
        f"{a['transactions']:,} transactions, {a['frauds']:,} frauds"
        + (
            f"; on test day D of the week starting W, cards with a fraud on a day in "
            f"[W - {p['known_cards_delay_days'] + 7}, D - {p['known_cards_delay_days'] + 1}] "
            f"are known compromised and left out ({a['left_out_known_cards']:,} transactions)"
            if p["remove_known_cards"]
            else ""
        )
        + f". ROC AUC and average precision over the test transactions; card precision@{k} "
        f"per day (a card's score is its highest that day; cards found earlier in the same "
        f"test week left out), averaged over the days. 95 % intervals: bootstrap over days "
        f"({p['bootstrap_resamples']} resamples).",
        "",
        f"| model | ROC AUC | average precision | card precision@{k} | serves from | "
        "learn labels/s | score µs/tx |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in scorer_order(report):
        e = report["models"][name]
        label = _label(report, name)
        if name == report["default_model"]:
            label = f"**{label}**"
        served = e.get("serving_from")
        rate = e.get("learn_labels_per_s")
        lines.append(
            f"| {label} | {_with_ci(e, 'roc_auc')} | {_with_ci(e, 'average_precision')} | "
            f"{_with_ci(e, key)} | {served[:10] if served else '-'} | "
            f"{f'{rate:,.0f}' if rate else '-'} | "
            f"{_f(e.get('score_us_per_tx'), 2) if e.get('score_us_per_tx') else '-'} |"
        )
    lines += [
        "",
        "For reference, the handbook's batch models on its own simulated data "
        "(one training week, same protocol): "
        + "; ".join(
            f"{n} {a_:.3f} / {b:.3f} / {c:.3f}" for n, (a_, b, c) in HANDBOOK_BASELINES.items()
        )
        + " (AUC / AP / CP@100).",
        "",
        "## Per test week",
        "",
        "| model | "
        + " | ".join(w["week_start"] for w in report["models"]["rules"]["weekly"])
        + " |",
        "|---|" + "---|" * len(report["models"]["rules"]["weekly"]),
    ]
    for name in scorer_order(report):
        cells = [
            f"{_f(w['roc_auc'])} / {_f(w['average_precision'])} / {_f(w[key])}"
            for w in report["models"][name]["weekly"]
        ]
        lines.append(f"| {_label(report, name)} | " + " | ".join(cells) + " |")
    lines += ["", f"Each cell: ROC AUC / average precision / card precision@{k}.", ""]
    first = report["models"][scorer_order(report)[0]]
    if "by_scenario" in first:
        scen = list(first["by_scenario"])
        lines += [
            "## Per fraud scenario",
            "",
            f"ROC AUC of each scenario's frauds against the genuine transactions, and the share "
            f"of its frauds whose card is among the day's {k} riskiest cards.",
            "",
            "| model | "
            + " | ".join(f"{s} ({first['by_scenario'][s]['frauds']})" for s in scen)
            + " |",
            "|---|" + "---|" * len(scen),
        ]
        for name in scorer_order(report):
            by = report["models"][name]["by_scenario"]
            cells = [
                f"{_f(by[s]['roc_auc_vs_genuine'])} / {_f(by[s][f'recall_at_top_{k}_cards'])}"
                for s in scen
            ]
            lines.append(f"| {_label(report, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    lines += [
        "Models: "
        + "; ".join(
            f"`{n}`: {report['models'][n]['description'].rstrip('.')}"
            for n in scorer_order(report)
            if n != "rules"
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------


def plots(
    report: dict[str, Any],
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    folder: Path,
) -> list[str]:
    """Write the PNG plots into ``folder``; their file names (matplotlib needed).

    ``scores`` and ``labels`` are the assessed transactions' (for the curves).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    k = report["protocol"]["top_k"]
    key = _k_key(k)
    order = scorer_order(report)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in order:
        daily = report["models"][name]["daily_" + key]
        days = [date.fromisoformat(x) for x in daily]
        mean = report["models"][name][key]
        ax.plot(
            days,  # type: ignore[arg-type]
            list(daily.values()),
            marker=".",
            label=f"{_label(report, name)} ({_f(mean)})",
            linewidth=2.2 if name == report["default_model"] else 1.2,
        )
    ax.set_ylabel(f"card precision@{k}")
    ax.set_title(f"Daily card precision@{k} on the test weeks (mean in brackets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    save(fig, "card_precision_daily.png")

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in order:
        fpr, tpr = _roc_curve(scores[name], labels)
        roc_ax.plot(
            fpr, tpr, label=f"{_label(report, name)} ({_f(report['models'][name]['roc_auc'])})"
        )
        recall, precision = _pr_curve(scores[name], labels)
        pr_ax.plot(
            recall,
            precision,
            label=f"{_label(report, name)} ({_f(report['models'][name]['average_precision'])})",
        )
    roc_ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    for axis in (roc_ax, pr_ax):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(fig, "roc_pr.png")

    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.5), squeeze=False)
    for axis, name in zip(axes[0], order, strict=True):
        s = scores[name]
        bins = np.linspace(0, 1, 41)
        axis.hist(s[~labels], bins=bins, alpha=0.6, density=True, label="genuine", log=True)
        axis.hist(s[labels], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
        axis.set_title(_label(report, name), fontsize=9)
        axis.set_xlabel("score")
    axes[0][0].legend(fontsize=8)
    save(fig, "score_distribution.png")

    learning = report["learning"]
    if learning:
        fig, (auc_ax, ap_ax) = plt.subplots(1, 2, figsize=(11, 4))
        weeks = [date.fromisoformat(w["week_start"]) for w in learning]
        for name in order:
            auc_ax.plot(weeks, [w[name]["roc_auc"] for w in learning], label=_label(report, name))
            ap_ax.plot(
                weeks, [w[name]["average_precision"] for w in learning], label=_label(report, name)
            )
        auc_ax.set(title="ROC AUC on each week's arriving labels", ylabel="ROC AUC")
        ap_ax.set(title="Average precision on each week's arriving labels", ylabel="AP")
        for axis in (auc_ax, ap_ax):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        fig.autofmt_xdate()
        save(fig, "learning.png")

    first = report["models"][order[0]]
    if first.get("by_scenario"):
        scen = list(first["by_scenario"])
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(order)
        for i, name in enumerate(order):
            by = report["models"][name]["by_scenario"]
            ax.bar(
                np.arange(len(scen)) + i * width,
                [by[s][f"recall_at_top_{k}_cards"] for s in scen],
                width,
                label=_label(report, name),
            )
        ax.set_xticks(np.arange(len(scen)) + width * (len(order) - 1) / 2, scen)
        ax.set(ylabel=f"share in the day's top {k} cards", title="Recall per fraud scenario")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        save(fig, "scenario_recall.png")
    return written


def _roc_curve(s: np.ndarray, y: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    yy = y[order]
    tps, fps = np.cumsum(yy), np.cumsum(~yy)
    keep = np.unique(np.linspace(0, len(yy) - 1, points).astype(np.int64))
    return np.r_[0, fps[keep] / max(fps[-1], 1)], np.r_[0, tps[keep] / max(tps[-1], 1)]


def _pr_curve(s: np.ndarray, y: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    yy = y[order]
    tps = np.cumsum(yy)
    # Denser where the alerts are: the first thousands of ranks matter most.
    keep = np.unique(np.geomspace(1, len(yy), points).astype(np.int64) - 1)
    return tps[keep] / max(tps[-1], 1), tps[keep] / (keep + 1)
