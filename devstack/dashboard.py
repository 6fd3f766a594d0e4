"""The Grafana dashboard's panels, drawn with matplotlib from recorded metrics.

There is no Grafana here to take a screenshot of, so the picture in
``docs/dashboard.png`` is drawn from the dashboard file itself
(``deploy/grafana/dashboards/fraudstream.json``): every panel's PromQL is
evaluated by a small evaluator over metrics recorded during a demo run
(``fraudstream demo --record-metrics FILE``), and drawn at the panel's place
in the dashboard's grid. The evaluator knows the part of PromQL the dashboard
uses — selectors with label matchers, ``rate``, ``sum``/``max``/``min``/``avg``
with ``by``, ``histogram_quantile``, ``time()``, arithmetic with numbers — and
refuses anything else, so a panel the picture cannot draw fails loudly
(a unit test evaluates every panel).

Recording format: JSON Lines, one scrape per line,
``{"t": <unix s>, "samples": [[name, {labels}, value], ...]}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fraudstream.service.cli_status import histogram_quantile

#: Where the dashboard lives in the repository.
DASHBOARD = (
    Path(__file__).resolve().parent.parent
    / "deploy"
    / "grafana"
    / "dashboards"
    / ("fraudstream.json")
)
#: ``$__rate_interval`` when evaluating recorded scrapes (taken every ~2 s).
RATE_INTERVAL = "20s"

_METRIC = re.compile(r"\bfraudstream_[a-z0-9_]+\b")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?P<unit>[smhd])? |
        (?P<string>"(?:[^"\\]|\\.)*") |
        (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*) |
        (?P<op>!=|=~|[(){}\[\],=*/+-])
    )""",
    re.VERBOSE,
)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGGREGATIONS = {"sum", "max", "min", "avg"}

LabelSet = tuple[tuple[str, str], ...]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every target of every panel."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in dashboard.get("panels", [])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def metric_names(expr: str) -> set[str]:
    """The fraudstream metric names a query reads (as exposed: ``_total``, ``_bucket``...).

    >>> sorted(metric_names('sum(rate(fraudstream_alerts_total[1m])) * 60'))
    ['fraudstream_alerts_total']
    """
    return set(_METRIC.findall(expr))


# --- a small PromQL evaluator over recorded scrapes ---------------------------


@dataclass
class Recording:
    """Scrapes over time: ``times`` (s) and ``series[(name, labels)]`` (NaN where absent)."""

    times: np.ndarray
    series: dict[tuple[str, LabelSet], np.ndarray]

    @classmethod
    def load(cls, path: Path) -> Recording:
        """Read a recording written by ``fraudstream demo --record-metrics``."""
        return cls.parse(Path(path).read_text(), str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<recording>") -> Recording:
        r"""A recording from its JSON lines (one scrape a line), read from ``source``.

        Raises
        ------
        ValueError
            Naming the first line that is not a scrape.

        Examples
        --------
        >>> Recording.parse('{"t": 0, "samples": [["up", {}, 1]]}\n').times
        array([0.])
        >>> Recording.parse("up 1\n", "m.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: m.jsonl: line 1 is not a scrape recorded by ... (JSONDecodeError: ...)
        """
        scrapes = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
                samples = [(str(n), dict(labels), v) for n, labels, v in s["samples"]]
                scrapes.append((float(s["t"]), samples))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{source}: line {number} is not a scrape recorded by `fraudstream demo "
                    f"--record-metrics` ({type(exc).__name__}: {exc})"
                ) from exc
        return cls.from_scrapes(scrapes)

    @classmethod
    def from_scrapes(
        cls, scrapes: Iterable[tuple[float, Sequence[tuple[str, dict[str, str], float | None]]]]
    ) -> Recording:
        """A recording from ``(time, samples)`` scrapes."""
        rows = list(scrapes)
        times = np.array([t for t, _ in rows], dtype=np.float64)
        series: dict[tuple[str, LabelSet], np.ndarray] = {}
        for i, (_, samples) in enumerate(rows):
            for name, labels, value in samples:
                key = (name, tuple(sorted(labels.items())))
                if key not in series:
                    series[key] = np.full(len(rows), np.nan)
                series[key][i] = np.nan if value is None else float(value)
        return cls(times, series)


Vector = dict[LabelSet, np.ndarray]
Value = Vector | np.ndarray  # a vector of series, or a scalar over time


class PromQLError(ValueError):
    """A query uses PromQL this evaluator does not know."""


class _Parser:
    def __init__(self, expr: str, recording: Recording) -> None:
        self.tokens = self._tokenize(expr.replace("$__rate_interval", RATE_INTERVAL))
        self.pos = 0
        self.rec = recording
        self.expr = expr

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise PromQLError(f"cannot read {text[pos:]!r}")
            pos = m.end()
            if m.group("number") is not None:
                if m.group("unit"):
                    seconds = float(m.group("number")) * _UNIT_S[m.group("unit")]
                    tokens.append(("duration", str(seconds)))
                else:
                    tokens.append(("number", m.group("number")))
            elif m.group("string") is not None:
                tokens.append(("string", json.loads(m.group("string"))))
            elif m.group("ident") is not None:
                tokens.append(("ident", m.group("ident")))
            else:
                tokens.append(("op", m.group("op")))
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (text and token[1] != text):
            raise PromQLError(f"expected {text or kind} in {self.expr!r} at {token}")
        self.pos += 1
        return token[1]

    def parse(self) -> Value:
        value = self.additive()
        if self.peek() is not None:
            raise PromQLError(f"unexpected {self.peek()} in {self.expr!r}")
        return value

    def additive(self) -> Value:
        left = self.multiplicative()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()
            left = _binary(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> Value:
        left = self.term()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()
            left = _binary(op, left, self.term())
        return left

    def labels_list(self) -> list[str]:
        self.take("op", "(")
        names = [self.take("ident")]
        while self.peek() == ("op", ","):
            self.take()
            names.append(self.take("ident"))
        self.take("op", ")")
        return names

    def term(self) -> Value:
        token = self.peek()
        if token is None:
            raise PromQLError(f"{self.expr!r} ends too early")
        kind, text = token
        if kind == "number":
            self.take()
            return np.full(len(self.rec.times), float(text))
        if token == ("op", "("):
            self.take()
            value = self.additive()
            self.take("op", ")")
            return value
        if kind != "ident":
            raise PromQLError(f"unexpected {token} in {self.expr!r}")
        self.take()
        if text in _AGGREGATIONS:
            by = self.labels_list() if self.peek() == ("ident", "by") and self.take() else None
            self.take("op", "(")
            inner = self.additive()
            self.take("op", ")")
            if by is None and self.peek() == ("ident", "by"):
                self.take()
                by = self.labels_list()
            return _aggregate(text, _vector(inner), by or [])
        if text == "rate":
            self.take("op", "(")
            name, matchers = self.selector_body()
            self.take("op", "[")
            window = float(self.take("duration"))
            self.take("op", "]")
            self.take("op", ")")
            return {k: _rate(self.rec.times, v, window) for k, v in self.select(name, matchers)}
        if text == "histogram_quantile":
            self.take("op", "(")
            q = float(self.take("number"))
            self.take("op", ",")
            buckets = _vector(self.additive())
            self.take("op", ")")
            return _quantile(q, buckets, len(self.rec.times))
        if text == "time":
            self.take("op", "(")
            self.take("op", ")")
            return self.rec.times.copy()
        self.pos -= 1
        name, matchers = self.selector_body()
        return dict(self.select(name, matchers))

    def selector_body(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self.take("ident")
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == ("op", "{"):
            self.take()
            while self.peek() != ("op", "}"):
                label = self.take("ident")
                op = self.take("op")
                if op not in ("=", "!=", "=~"):
                    raise PromQLError(f"unknown matcher {op!r} in {self.expr!r}")
                matchers.append((label, op, self.take("string")))
                if self.peek() == ("op", ","):
                    self.take()
            self.take("op", "}")
        return name, matchers

    def select(
        self, name: str, matchers: list[tuple[str, str, str]]
    ) -> list[tuple[LabelSet, np.ndarray]]:
        found = []
        for (series_name, labels), values in self.rec.series.items():
            if series_name != name:
                continue
            have = dict(labels)
            ok = True
            for label, op, wanted in matchers:
                actual = have.get(label, "")
                if op == "=":
                    ok &= actual == wanted
                elif op == "!=":
                    ok &= actual != wanted
                else:
                    ok &= re.fullmatch(wanted, actual) is not None
            if ok:
                found.append((labels, values))
        return found


def _vector(value: Value) -> Vector:
    if isinstance(value, dict):
        return value
    raise PromQLError("expected a vector of series, got a number")


def _rate(times: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    """Per-second increase over the last ``window_s`` (counter resets tolerated)."""
    out = np.full(len(times), np.nan)
    for i in range(len(times)):
        j = int(np.searchsorted(times, times[i] - window_s, side="left"))
        if j >= i or math.isnan(values[i]) or math.isnan(values[j]):
            continue
        delta = values[i] - values[j]
        if delta < 0:  # the counter restarted
            delta = values[i]
        out[i] = delta / (times[i] - times[j])
    return out


def _aggregate(op: str, vector: Vector, by: list[str]) -> Vector:
    groups: dict[LabelSet, list[np.ndarray]] = {}
    for labels, values in vector.items():
        key = tuple((k, v) for k, v in labels if k in by)
        groups.setdefault(key, []).append(values)
    out: Vector = {}
    for key, members in groups.items():
        stacked = np.vstack(members)
        present = ~np.isnan(stacked)
        with np.errstate(all="ignore"):
            if op == "sum":
                result = np.nansum(stacked, axis=0)
            elif op == "max":
                result = np.nanmax(np.where(present, stacked, -np.inf), axis=0)
            elif op == "min":
                result = np.nanmin(np.where(present, stacked, np.inf), axis=0)
            else:
                result = np.nanmean(stacked, axis=0)
        result[~present.any(axis=0)] = np.nan
        out[key] = result
    return out


def _quantile(q: float, buckets: Vector, length: int) -> Vector:
    groups: dict[LabelSet, dict[float, np.ndarray]] = {}
    for labels, values in buckets.items():
        le = dict(labels).get("le")
        if le is None:
            raise PromQLError("histogram_quantile needs series with an 'le' label")
        key = tuple((k, v) for k, v in labels if k != "le")
        groups.setdefault(key, {})[float(le)] = values
    out: Vector = {}
    for key, by_le in groups.items():
        result = np.full(length, np.nan)
        for i in range(length):
            counts = {le: float(v[i]) for le, v in by_le.items() if not math.isnan(v[i])}
            if counts:
                found = histogram_quantile(q, counts)
                result[i] = np.nan if found is None else found
        out[key] = result
    return out


def _binary(op: str, left: Value, right: Value) -> Value:
    def apply(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(all="ignore"):
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            return a / b

    if isinstance(left, dict) and isinstance(right, dict):
        return {k: apply(v, right[k]) for k, v in left.items() if k in right}
    if isinstance(left, dict):
        return {k: apply(v, right) for k, v in left.items()}  # type: ignore[arg-type]
    if isinstance(right, dict):
        return {k: apply(left, v) for k, v in right.items()}
    return apply(left, right)


def evaluate(expr: str, recording: Recording) -> Vector:
    """Evaluate ``expr`` at every recorded scrape; a number becomes a one-series vector."""
    value = _Parser(expr, recording).parse()
    return value if isinstance(value, dict) else {(): value}


def legend(template: str, labels: LabelSet) -> str:
    """Grafana's ``{{label}}`` legend templating.

    >>> legend("partition {{partition}}", (("partition", "3"),))
    'partition 3'
    """
    have = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: have.get(m.group(1), ""), template)


# --- drawing -------------------------------------------------------------------

_COLORS = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#FADE2A"]


def _format_stat(value: float, unit: str, decimals: int | None) -> str:
    if math.isnan(value):
        return "No data"
    if unit == "bool_yes_no":
        return "yes" if value else "no"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    text = f"{value:,.{0 if decimals is None else decimals}f}"
    suffix = {"tx/s": " tx/s", "s": " s"}.get(unit, "")
    return text + suffix


def render(dashboard: dict[str, Any], recording: Recording, output: Path) -> Path:
    """Draw every panel of ``dashboard`` from ``recording`` into a PNG at ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard.get("panels", [])
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h, width_in = 0.5, 20.0
    fig = plt.figure(figsize=(width_in, rows * unit_h + 0.8), facecolor="#111217")
    fig.suptitle(
        f"{dashboard.get('title', '')} — the Grafana dashboard's panels, drawn from a demo run's "
        "metrics (x: seconds into the run)",
        color="#d8d9da",
        fontsize=14,
        x=0.01,
        ha="left",
    )
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    elapsed = recording.times - recording.times[0]
    for panel in panels:
        g = panel["gridPos"]
        is_stat = panel.get("type") == "stat"
        # Room inside the panel's cell for the title, tick labels and axis label.
        pad_left = 0.006 if is_stat else 0.04
        pad_right, pad_top = 0.006, 0.45 / g["h"]
        pad_bottom = 0.012 if is_stat else 0.65 / g["h"]
        cell_height = g["h"] / rows * top
        left = g["x"] / 24 + pad_left
        width = g["w"] / 24 - pad_left - pad_right
        bottom = top - (g["y"] + g["h"]) / rows * top + pad_bottom * cell_height
        height = cell_height * (1 - pad_bottom - pad_top)
        ax = fig.add_axes((left, bottom, width, height), facecolor="#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        ax.set_title(panel.get("title", ""), color="#d8d9da", fontsize=10, loc="left")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "none")
        if is_stat:
            target = panel["targets"][0]
            vector = evaluate(target["expr"], recording)
            last = float("nan")
            for values in vector.values():
                finite = values[~np.isnan(values)]
                if len(finite):
                    last = float(finite[-1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(
                0.5, 0.4, _format_stat(last, unit, defaults.get("decimals")),
                color="#73BF69", fontsize=22, ha="center", va="center", transform=ax.transAxes,
            )  # fmt: skip
            continue
        color = 0
        for target in panel.get("targets", []):
            for labels, values in sorted(evaluate(target["expr"], recording).items()):
                ax.plot(
                    elapsed,
                    values * (100 if unit == "percentunit" else 1),
                    color=_COLORS[color % len(_COLORS)],
                    linewidth=1.6,
                    label=legend(target.get("legendFormat", ""), labels) or target["expr"],
                )
                color += 1
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.set_xlim(0, max(float(elapsed[-1]), 1.0))
        suffix = {"s": " (s)", "percentunit": " (%)", "ops": " (/s)"}.get(unit, "")
        if suffix:
            ax.set_ylabel(suffix.strip(" ()"), color="#9fa7b3", fontsize=8)
        if color:
            legend_box = ax.legend(fontsize=7, loc="upper left", facecolor="#181b1f",
                                   edgecolor="#2c3235", ncols=min(color, 4))  # fmt: skip
            for text in legend_box.get_texts():
                text.set_color("#d8d9da")
        else:
            ax.text(0.5, 0.5, "No data", color="#9fa7b3", ha="center", transform=ax.transAxes)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80, facecolor=fig.get_facecolor())
    plt.close(fig)
    return output
