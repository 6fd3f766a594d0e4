"""The feature store contract shared by the Redis store and the in-memory reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fraudstream.service.schemas import Transaction


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Features of a batch of transactions, in the batch's order.

    Attributes
    ----------
    names
        Feature names, the columns of ``values``.
    values
        ``float64`` array of shape ``(len(batch), len(names))``.
    is_duplicate
        ``bool`` array: the transaction id had been counted before (a replay);
        its features are computed as of its own time, but nothing was counted again.
    is_conflict
        ``bool`` array when the store claimed the ids in the same call
        (:attr:`RedisFeatureStore.claims_ids
        <fraudstream.service.features.redis_store.RedisFeatureStore.claims_ids>`):
        the id was claimed before with other content, nothing was counted and the
        row's values mean nothing. ``None``: the store claimed no ids.
    """

    names: tuple[str, ...]
    values: np.ndarray
    is_duplicate: np.ndarray
    is_conflict: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class LabelFact:
    """What the feature store needs to know of a received label."""

    transaction_id: str
    card_id: str
    terminal_id: str
    event_time_ms: int
    is_fraud: bool


class FeatureStore(Protocol):
    """Rolling event-time features, updated and read in one step per batch."""

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in column order."""
        ...

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        """Count each new transaction once; return every transaction's features as of its time."""
        ...

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        """Feed received labels into the label-aware (fraud-rate) features.

        The caller passes each label once (the learner claims labels before calling).
        """
        ...
