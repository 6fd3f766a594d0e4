"""The service's start: what it says while its dependencies are still starting."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kafka.errors import CoordinatorNotAvailableError, KafkaConnectionError

import fraudstream.service.app as app_module
from fraudstream.service.app import Application
from fraudstream.service.settings import Settings
from fraudstream.service.state import StateMarker

MARKER = StateMarker(generation="g1", origin="fresh", created_at_ms=0)


def _start_with(
    monkeypatch: pytest.MonkeyPatch, answers: list[BaseException | StateMarker]
) -> Application:
    """An application whose state check gives ``answers`` in turn, without sleeping."""
    app = Application(Settings(_env_file=None))
    app._redis = object()  # type: ignore[assignment]
    pending = iter(answers)

    def ensure_state(*_: Any, **__: Any) -> StateMarker:
        answer = next(pending)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(app_module, "ensure_state", ensure_state)
    monkeypatch.setattr(app.stopping, "wait", lambda _s: False)
    return app


def _said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_group_coordinator_that_is_starting_is_progress_then_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A new broker answers the first group lookups with "coordinator not
    # available" while it makes its offsets topic (`make demo` on a fresh stack).
    app = _start_with(monkeypatch, [CoordinatorNotAvailableError()] * 6 + [MARKER])
    with caplog.at_level(logging.INFO, logger="fraudstream.service.app"):
        assert app._wait_for_state()
    waiting = [m for m in _said(caplog, logging.INFO) if "group coordinator" in m]
    assert len(waiting) == 4
    warnings = _said(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert all("cannot check the feature state" in w for w in warnings)


def test_any_other_kafka_error_is_a_warning_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = _start_with(monkeypatch, [KafkaConnectionError("refused"), MARKER])
    with caplog.at_level(logging.INFO, logger="fraudstream.service.app"):
        assert app._wait_for_state()
    assert [w for w in _said(caplog, logging.WARNING) if "refused" in w]
    assert not [m for m in _said(caplog, logging.INFO) if "group coordinator" in m]
