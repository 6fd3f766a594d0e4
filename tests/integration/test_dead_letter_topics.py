"""Dead-letter topics always take a dead letter of ``dead_letter_max_bytes``.

A dead letter the broker refuses would be retried for ever and stall its
partition, so the service creates its dead-letter topics big enough and refuses
to start on existing ones that are too small.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fraudstream.service.app import Application
from fraudstream.service.deadletter import dead_letter_record_limit
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import ensure_topics, max_message_bytes
from fraudstream.service.settings import Settings


def test_created_dead_letter_topics_take_the_largest_dead_letter(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(dead_letter_max_bytes=3_000_000)
    Application(settings).ensure_topics()
    limits = max_message_bytes(
        settings, [settings.topic_transactions_dlq, settings.topic_labels_dlq]
    )
    assert limits == {
        settings.topic_transactions_dlq: dead_letter_record_limit(3_000_000),
        settings.topic_labels_dlq: dead_letter_record_limit(3_000_000),
    }


def test_an_existing_dead_letter_topic_too_small_is_refused_in_one_line(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    ensure_topics(
        settings,
        {settings.topic_transactions_dlq: 1},
        configs={settings.topic_transactions_dlq: {"max.message.bytes": "200000"}},
    )
    with pytest.raises(ConfigurationError) as refused:
        Application(settings).ensure_topics()
    message = str(refused.value)
    assert "\n" not in message
    assert f"dead-letter topic {settings.topic_transactions_dlq!r} takes records up to 200,000" in (
        message
    )
    assert "FRAUDSTREAM_DEAD_LETTER_MAX_BYTES" in message and "below 199,488" in message

    # Lowered as told, the same topic is accepted.
    fitting = settings.model_copy(update={"dead_letter_max_bytes": 199_488})
    Application(fitting).ensure_topics()
