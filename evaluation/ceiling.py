"""Reference scorers that read the ground truth: how far any model can go under the protocol.

Not models. These scorers know each fraud's scenario (the simulator's
``fraud_scenario``) and use it to score what a perfect model *could* see at
scoring time, so ``fraudstream evaluate --ceiling`` prints the protocol's
ceiling in the same table as the models, with the same intervals.

What is visible when a transaction is scored, under a label delay:

* a fraud whose scenario shows in the transaction itself or the card's own
  history (a high amount, a compromised customer's five-fold amounts, and the
  opt-in extras: card testing, impossible travel, account takeover);
* a compromised-terminal fraud once a fraud label of the same terminal, of a
  transaction of the last ``window_days`` (the compromise's length), has
  *arrived* before the transaction's batch is scored (``labeled_ms``);
* nothing else: the first days of a terminal compromise look exactly like
  genuine traffic until their labels arrive.

Two scorers (:data:`CEILINGS`):

``oracle_visible``
    1 for every visible fraud, 0 for everything else (genuine transactions
    and invisible frauds alike): a model perfect on what can be seen and blind
    to the rest. The rest is one tie, the expectation of a random order: ROC
    AUC counts a tied pair as half, average precision takes the tie as one
    threshold, card precision breaks it by card code (arbitrary, as chance).
``oracle_activity``
    The same, but the rest is ranked by what is known about the card at
    scoring time: how many distinct terminals, then how many transactions, it
    has used so far that day (a card that visits more terminals is likelier
    to have hit a compromised one).

Examples
--------
>>> from fraudstream.producers.simulator import SimulationConfig, simulate
>>> from fraudstream.evaluation.stream import LabelledStream
>>> stream = LabelledStream.from_simulation(
...     simulate(SimulationConfig(n_customers=200, n_terminals=400, n_days=30)))
>>> scores = ceiling_scores(stream, stream.time_ms + 7 * DAY_MS)
>>> sorted(scores)
['oracle_activity', 'oracle_visible']
>>> bool((scores["oracle_visible"][~stream.is_fraud] < 1).all())
True
"""

from __future__ import annotations

import numpy as np

from fraudstream.evaluation.stream import LabelledStream
from fraudstream.service.features.definitions import DAY_MS

__all__ = [
    "CEILINGS",
    "activity_so_far",
    "ceiling_scores",
    "terminal_label_released",
    "visible_frauds",
]

#: Reference scorers of :func:`ceiling_scores` and their one-line descriptions.
CEILINGS: dict[str, str] = {
    "oracle_visible": "ceiling: every fraud visible at scoring time found, the rest tied",
    "oracle_activity": "ceiling: visible frauds found, the rest ranked by the card's "
    "terminals and transactions so far that day",
}

#: The simulator's scenario whose frauds show only through delayed labels.
TERMINAL_SCENARIO = "compromised-terminal"


def terminal_label_released(
    time_ms: np.ndarray,
    terminal: np.ndarray,
    flagged: np.ndarray,
    labeled_ms: np.ndarray,
    scored_ms: np.ndarray,
    window_ms: int,
) -> np.ndarray:
    """Whether each flagged row's terminal had a flagged label in when the row was scored.

    Row ``i`` (flagged) is marked when some flagged row ``j`` of the same
    terminal, with ``time_ms[i] - window_ms <= time_ms[j] <= time_ms[i]``, had
    its label arrive strictly before ``scored_ms[i]``. Rows not flagged are
    ``False``.

    Parameters
    ----------
    time_ms, terminal
        Event time and terminal code of every row.
    flagged
        The rows considered (e.g. the compromised-terminal frauds).
    labeled_ms
        When each row's label arrives.
    scored_ms
        When each row is scored (its batch's start: labels delivered before it
        count).
    window_ms
        How far back a label still tells about the terminal.

    Examples
    --------
    Terminal 0: frauds at t = 0, 5 and 50, labels 10 later, each scored at its
    own time. The fraud at 5 sees nothing yet (the first label arrives at 10),
    the one at 50 sees the labels of 0 and 5 unless the window is shorter
    than 45.

    >>> t = np.array([0, 5, 50]); term = np.zeros(3, dtype=int)
    >>> f = np.ones(3, dtype=bool)
    >>> terminal_label_released(t, term, f, t + 10, t, window_ms=100).tolist()
    [False, False, True]
    >>> terminal_label_released(t, term, f, t + 10, t, window_ms=40).tolist()
    [False, False, False]
    """
    out = np.zeros(time_ms.shape[0], dtype=bool)
    rows = np.flatnonzero(flagged)
    if rows.shape[0] == 0:
        return out
    rows = rows[np.lexsort((time_ms[rows], terminal[rows]))]
    term, t = terminal[rows], time_ms[rows]
    starts = np.flatnonzero(np.r_[True, term[1:] != term[:-1]])
    ends = np.r_[starts[1:], rows.shape[0]]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        tt, lab, scored = t[lo:hi], labeled_ms[rows[lo:hi]], scored_ms[rows[lo:hi]]
        first = np.searchsorted(tt, tt - window_ms, side="left")
        last = np.searchsorted(tt, tt, side="right")
        for i in range(hi - lo):
            out[rows[lo + i]] = bool((lab[first[i] : last[i]] < scored[i]).any())
    return out


def activity_so_far(
    time_ms: np.ndarray, card: np.ndarray, terminal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the card's transactions and distinct terminals that UTC day, this one included.

    Rows must be in event-time order (a :class:`LabelledStream` is).

    Examples
    --------
    Card 1 uses terminals 7, 7, 8 on day 0 and terminal 9 on day 1; card 2
    uses terminal 7 once.

    >>> t = np.array([0, 1, 2, 3, DAY_MS])
    >>> count, distinct = activity_so_far(t, np.array([1, 1, 2, 1, 1]),
    ...                                   np.array([7, 7, 7, 8, 9]))
    >>> count.tolist(), distinct.tolist()
    ([1, 2, 1, 3, 1], [1, 1, 1, 2, 1])
    """
    n = time_ms.shape[0]
    day = time_ms // DAY_MS
    order = np.lexsort((np.arange(n), card, day))  # by day, card, then stream order
    d, c, term = day[order], card[order], terminal[order]
    new_group = np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])]
    group = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    count = np.arange(n) - group_start[group] + 1
    # First use of a terminal within its (day, card) group.
    seen: set[tuple[int, int]] = set()
    first_use = np.zeros(n, dtype=np.int64)
    for i, (g, tm) in enumerate(zip(group.tolist(), term.tolist(), strict=True)):
        if (g, tm) not in seen:
            seen.add((g, tm))
            first_use[i] = 1
    cum = np.cumsum(first_use)
    distinct = cum - np.r_[0, cum][group_start[group]]
    out_count = np.empty(n, dtype=np.int64)
    out_distinct = np.empty(n, dtype=np.int64)
    out_count[order], out_distinct[order] = count, distinct
    return out_count, out_distinct


def visible_frauds(
    stream: LabelledStream,
    labeled_ms: np.ndarray,
    *,
    batch_ms: int = 3_600_000,
    window_days: float = 28.0,
) -> np.ndarray:
    """Frauds whose signal is observable when they are scored (see the module docstring).

    Raises
    ------
    ValueError
        When the stream does not know its fraud scenarios.
    """
    if stream.scenario is None:
        raise ValueError("the ceiling needs the frauds' scenarios (a simulated stream)")
    codes = {name: code for code, name in stream.scenario_names.items()}
    terminal_code = codes.get(TERMINAL_SCENARIO, -1)
    fraud = np.asarray(stream.is_fraud, dtype=bool)
    at_terminal = fraud & (stream.scenario == terminal_code)
    scored_ms = np.asarray(stream.time_ms) // batch_ms * batch_ms
    released = terminal_label_released(
        stream.time_ms,
        stream.terminal,
        at_terminal,
        labeled_ms,
        scored_ms,
        int(window_days * DAY_MS),
    )
    visible: np.ndarray = fraud & (~at_terminal | released)
    return visible


def ceiling_scores(
    stream: LabelledStream,
    labeled_ms: np.ndarray,
    *,
    batch_ms: int = 3_600_000,
    window_days: float = 28.0,
) -> dict[str, np.ndarray]:
    """The reference scorers of :data:`CEILINGS` (deterministic: no random draw).

    ``batch_ms`` must be the replay's batch length (labels count when they
    arrive before the batch starts); ``window_days`` is how long a terminal
    stays compromised (the simulator's ``terminal_compromise_days``).
    """
    visible = visible_frauds(stream, labeled_ms, batch_ms=batch_ms, window_days=window_days)
    count, distinct = activity_so_far(stream.time_ms, stream.card, stream.terminal)
    # Distinct terminals first, then transactions; squeezed below 1.
    key = distinct * 10_000.0 + np.minimum(count, 9_999)
    activity = key / (key.max() + 1.0) if key.shape[0] else key.astype(np.float64)
    return {
        "oracle_visible": np.where(visible, 1.0, 0.0),
        "oracle_activity": np.where(visible, 1.0, activity),
    }
