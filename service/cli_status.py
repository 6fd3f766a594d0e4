"""``fraudstream status``: what a running service is doing, from its metrics endpoint.

Two scrapes of ``/metrics`` a moment apart give the throughput; one request to
``/readyz`` gives readiness and its reason. Nothing else is needed: the
command works against any scorer or learner whose endpoint is reachable
(``--url``), including one in a container.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.service.cli_options import FloatRange
from fraudstream.service.settings import Settings

#: One sample: (name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_exposition(text: str) -> Samples:
    r"""Every sample of a Prometheus text exposition.

    >>> parse_exposition('# TYPE a_total counter\na_total{x="1"} 2.0\n')
    {('a_total', (('x', '1'),)): 2.0}
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """Samples of ``name`` summed by one label's value."""
    wanted = set(labels.items())
    out: dict[str, float] = {}
    for (n, pairs), v in samples.items():
        if n == name and wanted <= set(pairs):
            key = dict(pairs).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Quantile from cumulative bucket counts, interpolated as PromQL's ``histogram_quantile``.

    >>> histogram_quantile(0.5, {0.01: 50, 0.1: 100, float("inf"): 100})
    0.01
    >>> histogram_quantile(0.5, {0.01: 0, float("inf"): 0}) is None
    True
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def latency_buckets(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` (``le`` -> count)."""
    return {float(le): v for le, v in by_label(samples, f"{name}_bucket", "le").items()}


@dataclass
class Scrape:
    """One look at a service: its metrics, readiness, and when."""

    samples: Samples
    at_s: float
    ready: bool | None = None
    ready_reason: str = ""
    errors: list[str] = field(default_factory=list)


class NotAnswering(click.ClickException):
    """Nothing (or something else) answers at the URL."""


def _get(url: str, timeout_s: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode("utf-8", "replace")


def scrape(base_url: str, timeout_s: float = 3.0) -> Scrape:
    """Read ``/metrics`` and ``/readyz`` of the service at ``base_url``.

    Raises
    ------
    NotAnswering
        One line naming the URL and what to do.
    """
    try:
        code, text = _get(f"{base_url}/metrics", timeout_s)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotAnswering(
            f"nothing answers at {base_url} ({reason}): is `fraudstream serve` running there? "
            "Point --url at its metrics endpoint (FRAUDSTREAM_METRICS_HOST/PORT)"
        ) from None
    try:
        samples = parse_exposition(text) if code == 200 else {}
    except ValueError:
        samples = {}
    if not any(name.startswith("fraudstream_") for name, _ in samples):
        raise NotAnswering(
            f"{base_url}/metrics answers (HTTP {code}) but is not a fraudstream service: "
            "check --url"
        )
    result = Scrape(samples, time.time())
    try:
        ready_code, reason = _get(f"{base_url}/readyz", timeout_s)
        result.ready, result.ready_reason = ready_code == 200, reason.strip()
    except (urllib.error.URLError, OSError) as exc:
        result.ready, result.ready_reason = False, f"/readyz did not answer ({exc})"
    return result


def summarize(first: Scrape, last: Scrape) -> dict[str, Any]:
    """Plain data for printing: readiness, model, throughput, lag, learner, errors."""
    s = last.samples
    elapsed = max(last.at_s - first.at_s, 0.0)

    def rate(name: str) -> float | None:
        if elapsed <= 0:
            return None
        return (value(s, name) - value(first.samples, name)) / elapsed

    lags: dict[str, dict[str, dict[str, float]]] = {}
    for (name, pairs), lag in s.items():
        if name == "fraudstream_consumer_lag":
            labels = dict(pairs)
            role = lags.setdefault(labels.get("role", "?"), {})
            role.setdefault(labels.get("topic", "?"), {})[labels.get("partition", "?")] = lag
    buckets = latency_buckets(s, "fraudstream_end_to_end_latency_seconds")
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    now = last.at_s
    last_errors = {
        dependency: now - at
        for dependency, at in by_label(
            s, "fraudstream_dependency_last_error_timestamp_seconds", "dependency"
        ).items()
        if at > 0
    }
    published = value(s, "fraudstream_learner_last_publish_timestamp_seconds")
    return {
        "ready": last.ready,
        "ready_reason": last.ready_reason,
        "model_version": int(value(s, "fraudstream_model_version")),
        "learner_model_version": int(value(s, "fraudstream_learner_model_version")),
        "learner_published_s_ago": now - published if published > 0 else None,
        "transactions_scored": value(s, "fraudstream_transactions_processed_total"),
        "transactions_per_s": rate("fraudstream_transactions_processed_total"),
        "rate_over_s": elapsed,
        "alerts": by_label(s, "fraudstream_alerts_total", "scorer"),
        "dead_letters": by_label(s, "fraudstream_dead_letters_total", "error"),
        "records_lost": by_label(s, "fraudstream_records_lost_total", "topic"),
        "labels_learnt": value(s, "fraudstream_labels_learnt_total"),
        "progressive": {
            key: _finite(value(s, f"fraudstream_progressive_{key}"))
            for key in ("roc_auc", "average_precision", "precision", "recall", "window_labels")
        },
        "lag": lags,
        "latency_p50_ms": None if p50 is None else p50 * 1000,
        "latency_p99_ms": None if p99 is None else p99 * 1000,
        "dependency_errors": by_label(s, "fraudstream_dependency_errors_total", "dependency"),
        "last_error_s_ago": last_errors,
        "insecure_signing_key": value(s, "fraudstream_insecure_signing_key") > 0,
    }


def _finite(x: float) -> float | None:
    """``None`` for NaN (undefined until the learner publishes), so JSON stays valid."""
    return None if math.isnan(x) else x


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or math.isnan(x) else format(x, spec)


def render(url: str, info: dict[str, Any]) -> list[str]:
    """The human-readable lines of :func:`summarize`'s result."""
    ready = info["ready"]
    if ready:
        state = click.style("READY", fg="green", bold=True)
    else:
        state = click.style("NOT READY", fg="red", bold=True)
    lines = [f"fraudstream at {url}: {state} ({info['ready_reason']})"]
    version = info["model_version"]
    scoring = f"model v{version}" if version else "rules prior (no model in use yet)"
    learner = ""
    if info["learner_model_version"]:
        learner = f"; learner published v{info['learner_model_version']}"
        if info["learner_published_s_ago"] is not None:
            learner += f" {_ago(info['learner_published_s_ago'])}"
    lines.append(f"  scoring      {scoring}{learner}")
    tps = info["transactions_per_s"]
    over = f" over {info['rate_over_s']:.1f} s" if tps is not None else ""
    lines.append(
        f"  throughput   {_fmt(tps, ',.0f')} tx/s{over}; "
        f"{info['transactions_scored']:,.0f} scored since start"
    )
    alerts = info["alerts"]
    lines.append(
        f"  alerts       {sum(alerts.values()):,.0f} ("
        + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(alerts.items()))
        + ")"
    )
    lines.append(
        f"  latency      p50 {_fmt(info['latency_p50_ms'], '.1f')} ms, "
        f"p99 {_fmt(info['latency_p99_ms'], '.1f')} ms (produce to decision, since start)"
    )
    for role, topics in sorted(info["lag"].items()):
        for topic, partitions in sorted(topics.items()):
            ordered = sorted(partitions.items(), key=lambda item: (len(item[0]), item[0]))
            per = " ".join(f"{partition}:{lag:,.0f}" for partition, lag in ordered)
            lines.append(
                f"  lag          {role} {topic}: {sum(partitions.values()):,.0f} "
                f"(partition:lag {per})"
            )
    if not info["lag"]:
        lines.append("  lag          no partitions assigned (yet)")
    p = info["progressive"]
    lines.append(
        f"  learner      {info['labels_learnt']:,.0f} labels learnt; window of "
        f"{_fmt(p['window_labels'], ',.0f')}: AUC {_fmt(p['roc_auc'])}, AP "
        f"{_fmt(p['average_precision'])}, precision {_fmt(p['precision'])}, "
        f"recall {_fmt(p['recall'])}"
    )
    letters = info["dead_letters"]
    detail = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(letters.items()))
    total = f"{sum(letters.values()):,.0f}"
    lines.append(f"  dead letters {total}" + (f" ({detail})" if detail else ""))
    lost = {topic: n for topic, n in info["records_lost"].items() if n}
    if lost:
        lines.append(
            click.style("  LOST         ", fg="red", bold=True)
            + ", ".join(f"{topic} {n:,.0f}" for topic, n in sorted(lost.items()))
            + " records deleted from Kafka before they were read (retention?)"
        )
    errors = info["dependency_errors"]
    shown = []
    for dependency, count in sorted(errors.items()):
        ago = info["last_error_s_ago"].get(dependency)
        shown.append(f"{dependency} {count:,.0f}" + (f" (last {_ago(ago)})" if ago else ""))
    lines.append("  errors       " + ("; ".join(shown) or "none"))
    if info["insecure_signing_key"]:
        lines.append(
            click.style("  WARNING      ", fg="red", bold=True)
            + "model versions are signed with the default development key "
            "(set FRAUDSTREAM_MODEL_SIGNING_KEY)"
        )
    return lines


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a service's metrics endpoint, or ``None`` when it can.

    >>> url_problem("http://127.0.0.1:9108") is None
    True
    >>> url_problem("http://[::1")
    "'http://[::1' is not a URL (Invalid IPv6 URL): give http://HOST:PORT"
    >>> url_problem("ftp://host:9108")
    "'ftp://host:9108' is not an HTTP URL: the metrics endpoint is http://HOST:PORT (or https)"
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is no number, or out of range, raises here
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc}): give http://HOST:PORT"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{url!r} is not an HTTP URL: the metrics endpoint is http://HOST:PORT (or https)"
    if not parts.hostname:
        return f"{url!r} names no host: give http://HOST:PORT"
    if port == 0:
        return f"{url!r}: port 0 is no port: give http://HOST:PORT"
    return None


class _ServiceUrl(click.ParamType[str, Any]):
    """A metrics endpoint: ``http(s)://host[:port]``, ``http://`` added when no scheme is given."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        url = str(value).strip()
        if "://" not in url:
            url = f"http://{url}"
        problem = url_problem(url)
        if problem:
            self.fail(problem, param, ctx)
        return url.rstrip("/")


def default_url(settings: Settings) -> str | None:
    """The metrics endpoint the settings describe (``None`` when it is switched off)."""
    if not settings.metrics_port:
        return None
    host = settings.metrics_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.metrics_port}"


@click.command("status")
@click.option(
    "--url",
    type=_ServiceUrl(),
    help="Metrics endpoint of a running service, e.g. http://host:9108 "
    "(default: FRAUDSTREAM_METRICS_HOST and FRAUDSTREAM_METRICS_PORT).",
)
@click.option(
    "--interval",
    type=FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between the two scrapes that measure throughput (0: one scrape).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.pass_obj
def status(settings: Settings, url: str | None, interval: float, as_json: bool) -> None:
    """Show a running service's readiness, model, throughput, lag, learner and errors.

    Exit status 0 when the service is ready, 1 when it is not ready or does
    not answer.
    """
    base = (url or default_url(settings) or "").rstrip("/")
    if not base:
        raise click.ClickException(
            "the metrics endpoint is off (FRAUDSTREAM_METRICS_PORT=0): pass --url http://HOST:PORT"
        )
    if "://" not in base:
        base = f"http://{base}"
    first = scrape(base)
    last = first
    if interval > 0:
        time.sleep(interval)
        last = scrape(base)
    info = summarize(first, last)
    if as_json:
        click.echo(json.dumps({"url": base, **info}, default=str))
    else:
        for line in render(base, info):
            click.echo(line)
    if not info["ready"]:
        raise SystemExit(1)


#: Mounted by :mod:`fraudstream.cli`.
COMMANDS: list[click.Command] = [status]
