"""The features fraudstream computes for every transaction, and their exact semantics.

Every feature is computed **as of the transaction's own event time** ``t`` (epoch
milliseconds, UTC) from the state the store holds when the transaction is
processed. Both stores (:class:`~fraudstream.service.features.reference.ReferenceFeatureStore`
and :class:`~fraudstream.service.features.redis_store.RedisFeatureStore`) implement exactly the
rules below; the integration tests check that they agree.

Card state
----------
A card's *history* ``H`` is the list of its counted transactions, sorted by event
time (ties keep arrival order), trimmed to events with ``ts > newest - retention``
where ``newest`` is the card's latest event time and ``retention = longest card
window + allowed_lateness_s``. A transaction is

* a **duplicate** when ``H`` already holds the same ``transaction_id`` at the same
  event time (what a replay produces). Nothing is counted again; its features are
  computed as of its time from ``H`` as it is.
* **too late** when ``t <= newest - retention``: its window would reach history
  that was already trimmed. It is not inserted (so it is never counted, even on a
  replay) and gets features from what is stored plus itself; the store counts it.
* otherwise **new**: inserted into ``H`` after every event with ``ts <= t``.

Within ``H`` the current transaction sits at position ``p`` (a too-late one at the
virtual position after every event with ``ts <= t``). Amounts and locations are
stored as float32 (about 7 significant digits, ~1 m); the stores use the float32
values for every card feature below, ``amount`` itself is exact.

==============================  ====================================================
Feature                         Meaning
==============================  ====================================================
``card_tx_count_{w}``           Card events with ``t - W < ts <= t`` (``W`` = window
                                ``w``), **including the current transaction**;
                                events with later timestamps are not counted, even
                                if they arrived first. Exact, not bucketed.
``card_amount_sum_{w}``         Sum of their amounts.
``card_amount_mean_{w}``        ``sum / count`` (count is at least 1).
``card_seconds_since_prev``     ``(t - ts of H[p-1]) / 1000``: the latest earlier
                                event of the card. The retention in seconds
                                (:func:`no_previous_s`) when there is none.
``card_amount_zscore``          ``(amount - mean) / max(std, 1)`` over the earlier
                                events ``H[:p]`` with ``ts > t - longest window``
                                (population std, floored at one currency unit so a
                                card that always spends the same is not infinitely
                                surprised); 0 when fewer than 2 such events.
``card_amount_ratio``           ``amount / mean`` of those same earlier events: how
                                many times the card's usual amount this is; 1.0
                                when there is none.
``card_big_amounts_{w}``        Earlier events ``H[:p]`` with ``ts > t - W`` (``w``
                                in :data:`BIG_AMOUNT_WINDOWS_S`, at most the longest
                                window) whose amount is above
                                :data:`BIG_AMOUNT_FACTOR` times that mean: recent
                                outlying amounts, the mark of a card being drained;
                                0 when there is no earlier event.
``card_distance_km_prev``       Great-circle distance (haversine, R = 6371.0088 km)
                                from ``H[p-1]``; 0 unless both have lat/lon.
``card_speed_kmh_prev``         That distance over the time between them, the time
                                floored at one minute (no infinite speeds); 0 when
                                the distance is 0 or unknown.
``card_new_terminal``           1.0 when no earlier event ``H[:p]`` of the card was
                                at this terminal (in its retained history), else 0.
``card_fraud_labels_30d``       Events of ``H`` with ``t - 30 d < ts <= t`` whose
                                fraud label has been received so far.
``terminal_tx_count_{d}d``      Transactions counted at the terminal in UTC days
                                ``(D - d, D]``, ``D`` the UTC day of ``t``, including
                                the current one and every transaction of those days
                                processed so far (day buckets: a later-timestamped
                                event of the same day that arrived first counts).
``terminal_fraud_labels_{l}d``  Fraud labels received so far for the terminal's
                                transactions of UTC days ``(D - l, D]``, ``l`` a
                                *label* window (bucketed by the transaction's day,
                                not the label's).
``terminal_fraud_rate_{l}d``    ``frauds / labelled`` over those days, with
                                ``labelled`` the labels (fraud or not) received so
                                far for them: the fraud rate among transactions
                                whose outcome is known, never diluted by those
                                still waiting for their label; 0 when none is.
``terminal_days_since_fraud``   ``D`` minus the latest day of ``(D - L, D]`` (``L``
                                the longest label window) with a fraud label
                                received; ``L + 1`` when there is none.
``terminal_fraud_episode_days`` ``D`` minus the *earliest* such day: how long the
                                terminal's current run of frauds has been going (a
                                compromise ends); -1 when there is none.
``terminal_fraud_rate_episode`` ``frauds / labelled`` over the days from that
                                earliest day to ``D``; 0 when there is none.
``terminal_labelled_episode``   ``labelled`` over those days (how much that rate
                                is worth); 0 when there is none.
``amount``                      The transaction amount.
``hour_of_day``                 UTC hour of ``t``, 0-23.
``is_night``                    1.0 when ``hour_of_day < 6``.
``is_weekend``                  1.0 on Saturday or Sunday (UTC).
==============================  ====================================================

With every label ``delay`` days late, a transaction's outcome is known only
once it is that old: label windows must be longer than the delay to hold any
label (the default label windows, 14 and 30 days, hold the last 7 and 23 days of
known outcomes under the usual 7-day chargeback delay), and the fraud rate
divides by the labelled transactions only. With a fixed delay this is the
handbook's terminal risk over ``[D - delay - w, D - delay]``; with early or
irregular labels it uses what is known, nothing more.

Terminal state keeps :attr:`FeatureConfig.terminal_slots` day buckets (longest
terminal or label window + allowed lateness in days + 1), each holding the
day's transactions, labels received and fraud labels received; UTC day ``k`` lives in bucket
``k % slots``, which holds one day at a time: a later day takes the bucket over, a
transaction of an earlier day than the bucket's is not counted at the terminal
(only possible for events far later than the allowed lateness). Only new
transactions are counted at their terminal. A label (fraud or not) increments
the terminal bucket of its transaction's day -- labelled, and fraud for a
fraud label -- unless that transaction's card record already carried a label
(so a repeated label is not counted twice); a fraud label also flags the card
record (``card_fraud_labels_30d``). Window lengths come from the settings;
names use :func:`window_label`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraudstream.service.settings import Settings

#: Milliseconds per UTC day.
DAY_MS = 86_400_000
#: Window of ``card_fraud_labels_30d``.
LABEL_WINDOW_S = 30 * 86_400
#: Floor of the standard deviation in ``card_amount_zscore``, in currency units.
MIN_STD = 1.0
#: Floor of the time between two events in ``card_speed_kmh_prev``, in hours (1 min).
MIN_SPEED_HOURS = 1.0 / 60.0
#: Windows of ``card_big_amounts_{w}`` (clipped to the longest card window).
BIG_AMOUNT_WINDOWS_S = (7 * 86_400, 14 * 86_400)
#: An amount above this many times the card's mean is "big" (``card_big_amounts_{w}``).
BIG_AMOUNT_FACTOR = 3.0
#: Mean Earth radius used by :func:`haversine_km`.
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What the feature stores need from the settings.

    Parameters
    ----------
    prefix
        Prefix of every Redis key.
    windows_s
        Card window lengths in seconds, ascending.
    terminal_window_days
        Terminal traffic window lengths in whole UTC days, ascending.
    terminal_label_window_days
        Terminal label (fraud) window lengths in whole UTC days, ascending; to
        hold labels, longer than the label delay.
    allowed_lateness_s
        How late an event may arrive and still get exact window values.
    card_history_max
        Most records a card keeps within its retention (besides those of the
        batch being counted): beyond it the oldest go, and a transaction older
        than the oldest kept one is too late (see ``history.lua``).

    Examples
    --------
    >>> c = FeatureConfig("fs", (3600, 2592000), (1, 7, 30), (14, 30), 86400)
    >>> c.retention_s, c.terminal_slots
    (2678400, 32)
    """

    prefix: str = "fs"
    windows_s: tuple[int, ...] = (3600, 86400, 604800, 2592000)
    terminal_window_days: tuple[int, ...] = (1, 7, 30)
    terminal_label_window_days: tuple[int, ...] = (14, 30)
    allowed_lateness_s: int = 86400
    card_history_max: int = 1000

    def __post_init__(self) -> None:
        if not self.windows_s or any(w <= 0 for w in self.windows_s):
            raise ValueError(f"windows_s must be positive, got {self.windows_s!r}")
        for name in ("terminal_window_days", "terminal_label_window_days"):
            days = getattr(self, name)
            if not days or any(d <= 0 for d in days):
                raise ValueError(f"{name} must be positive: {days!r}")
        if self.allowed_lateness_s < 0:
            raise ValueError("allowed_lateness_s must be >= 0")
        if self.card_history_max < 1:
            raise ValueError(f"card_history_max must be >= 1, got {self.card_history_max}")
        # Sorted, unique: the column order is then a function of the values only.
        object.__setattr__(self, "windows_s", tuple(sorted(set(self.windows_s))))
        for name in ("terminal_window_days", "terminal_label_window_days"):
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureConfig:
        """The feature configuration of ``settings``."""
        return cls(
            prefix=settings.redis_prefix,
            windows_s=settings.window_lengths_s,
            terminal_window_days=settings.terminal_window_days,
            terminal_label_window_days=settings.terminal_label_window_days,
            allowed_lateness_s=settings.allowed_lateness_s,
            card_history_max=settings.card_history_max_records,
        )

    @property
    def retention_s(self) -> int:
        """How long a card's raw history is kept: longest window plus lateness."""
        return max(self.windows_s) + self.allowed_lateness_s

    @property
    def card_ttl_s(self) -> int:
        """Idle time after which a card's history is dropped: retention + 1 day.

        The extra day lets the store refresh the TTL once per event day only.
        """
        return self.retention_s + 86400

    @property
    def longest_terminal_days(self) -> int:
        """Longest terminal window, traffic or label."""
        return max(*self.terminal_window_days, *self.terminal_label_window_days)

    @property
    def terminal_slots(self) -> int:
        """Day buckets kept per terminal: longest window + lateness days + 1.

        Enough that no bucket an event within the lateness reads or writes was
        taken over by a later day.
        """
        return self.longest_terminal_days + math.ceil(self.allowed_lateness_s / 86400) + 1

    @property
    def terminal_ttl_s(self) -> int:
        """Idle time after which a terminal's buckets are all out of every window."""
        return self.longest_terminal_days * 86400 + self.allowed_lateness_s

    @property
    def big_amount_windows_s(self) -> tuple[int, ...]:
        """Windows of ``card_big_amounts_{w}``: :data:`BIG_AMOUNT_WINDOWS_S`, clipped."""
        longest = max(self.windows_s)
        return tuple(sorted({min(w, longest) for w in BIG_AMOUNT_WINDOWS_S}))


def no_previous_s(config: FeatureConfig) -> float:
    """Sentinel of ``card_seconds_since_prev`` when there is no earlier event.

    >>> no_previous_s(FeatureConfig())
    2678400.0
    """
    return float(config.retention_s)


def window_label(seconds: int) -> str:
    """Short name of a window length.

    Examples
    --------
    >>> [window_label(s) for s in (3600, 86400, 604800, 2592000, 7200, 90)]
    ['1h', '1d', '7d', '30d', '2h', '90s']
    """
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


def feature_names(config: FeatureConfig) -> tuple[str, ...]:
    """Feature names in column order.

    Examples
    --------
    >>> names = feature_names(FeatureConfig(windows_s=(3600,), terminal_window_days=(7,),
    ...                                     terminal_label_window_days=(14,)))
    >>> names[:4]
    ('card_tx_count_1h', 'card_amount_sum_1h', 'card_amount_mean_1h', 'card_seconds_since_prev')
    >>> names[6:8]
    ('card_big_amounts_1h', 'card_distance_km_prev')
    >>> names[-11:-4]
    ('terminal_tx_count_7d', 'terminal_fraud_labels_14d', 'terminal_fraud_rate_14d', \
'terminal_days_since_fraud', 'terminal_fraud_episode_days', 'terminal_fraud_rate_episode', \
'terminal_labelled_episode')
    >>> len(feature_names(FeatureConfig()))
    36
    """
    names: list[str] = []
    for w in config.windows_s:
        label = window_label(w)
        names += [f"card_tx_count_{label}", f"card_amount_sum_{label}", f"card_amount_mean_{label}"]
    names += ["card_seconds_since_prev", "card_amount_zscore", "card_amount_ratio"]
    names += [f"card_big_amounts_{window_label(w)}" for w in config.big_amount_windows_s]
    names += [
        "card_distance_km_prev",
        "card_speed_kmh_prev",
        "card_new_terminal",
        "card_fraud_labels_30d",
    ]
    names += [f"terminal_tx_count_{d}d" for d in config.terminal_window_days]
    for d in config.terminal_label_window_days:
        names += [f"terminal_fraud_labels_{d}d", f"terminal_fraud_rate_{d}d"]
    names += [
        "terminal_days_since_fraud",
        "terminal_fraud_episode_days",
        "terminal_fraud_rate_episode",
        "terminal_labelled_episode",
    ]
    names += ["amount", "hour_of_day", "is_night", "is_weekend"]
    return tuple(names)


def stable_hash32(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same in every process (CRC-32).

    Python's ``hash`` is salted per process, so two scorers would disagree.

    >>> stable_hash32("t1") == stable_hash32("t1"), stable_hash32("t1")
    (True, 1532276279)
    """
    return zlib.crc32(text.encode("utf-8"))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees.

    Examples
    --------
    >>> round(haversine_km(48.8566, 2.3522, 51.5074, -0.1278), 1)  # Paris-London
    343.6
    >>> haversine_km(1.0, 2.0, 1.0, 2.0)
    0.0
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def calendar_features(event_time_ms: int) -> tuple[float, float, float]:
    """``(hour_of_day, is_night, is_weekend)`` of an event time, in UTC.

    Examples
    --------
    >>> calendar_features(1522540800000)  # 2018-04-01 00:00 UTC, a Sunday
    (0.0, 1.0, 1.0)
    >>> calendar_features(1522670400000)  # 2018-04-02 12:00 UTC, a Monday
    (12.0, 0.0, 0.0)
    """
    day, ms_of_day = divmod(event_time_ms, DAY_MS)
    hour = ms_of_day // 3_600_000
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return float(hour), float(hour < 6), float(weekday >= 5)


def utc_day(event_time_ms: int) -> int:
    """Days since 1970-01-01 (UTC) of an event time.

    >>> utc_day(1522540800000), utc_day(1522540799999)
    (17622, 17621)
    """
    return event_time_ms // DAY_MS


@dataclass(slots=True)
class StoreCounters:
    """What a feature store did with the transactions it was given (this process).

    Attributes
    ----------
    inserted
        New transactions counted in card history.
    duplicates
        Transactions already counted (replays); features computed, nothing counted.
    too_late
        Transactions older than the card's retention; features computed, not stored.
    terminal_dropped
        New transactions whose day is older than the terminal's day buckets.
    """

    inserted: int = 0
    duplicates: int = 0
    too_late: int = 0
    terminal_dropped: int = 0
