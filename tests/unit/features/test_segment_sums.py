"""``_segment_sums`` of the Redis store: the same bits as summing down a matrix of records.

The store's features are sums over each transaction's card history; their last
bit must not depend on how the sums are laid out in memory (snapshots, scores
and replays compare them). The reference here is the layout the store used
before: one row per record, ``np.add.reduceat`` down the rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from fraudstream.service.features.redis_store import _segment_sums


def _row_per_record(
    columns: list[np.ndarray], starts: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    matrix = np.zeros((len(columns[0]) + 1, len(columns)))
    for j, column in enumerate(columns):
        matrix[:-1, j] = column
    sums = np.add.reduceat(matrix, starts, axis=0)
    sums[lengths == 0] = 0.0
    return sums


@pytest.mark.parametrize("seed", range(6))
def test_the_sums_are_bit_for_bit_those_of_a_matrix_of_records(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    # Segments of every size: empty, shorter and longer than numpy's pairwise
    # summation blocks (8 and 128), one transaction's whole 30-day history.
    lengths = rng.choice([0, 1, 2, 7, 8, 9, 60, 127, 128, 129, 300, 1000], size=n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    size = int(lengths.sum())
    columns = [
        rng.random(size) * 10.0 ** rng.integers(-3, 9, size),  # amounts of every magnitude
        (rng.random(size) * 1e3) ** 2,  # squares
        np.where(rng.random(size) < 0.5, rng.random(size) * 1e6, 0.0),
        rng.normal(size=size) * 1e4,  # signed
        rng.random(size) < 0.3,  # flags
        rng.integers(0, 1000, size),  # positions
    ]
    ours = _segment_sums(columns, starts, lengths)
    theirs = _row_per_record(columns, starts, lengths)
    assert ours.shape == theirs.shape == (n, len(columns))
    assert np.ascontiguousarray(ours).tobytes() == theirs.tobytes()
    assert (ours[lengths == 0] == 0.0).all()


def test_every_segment_empty_or_the_last_one_empty() -> None:
    columns = [np.array([1.5, 2.5, 4.0])]
    lengths = np.array([0, 3, 0])
    starts = np.cumsum(lengths) - lengths
    assert _segment_sums(columns, starts, lengths).tolist() == [[0.0], [8.0], [0.0]]
    none = [np.zeros(0)]
    assert _segment_sums(none, np.zeros(2, np.int64), np.zeros(2, np.int64)).tolist() == [
        [0.0],
        [0.0],
    ]
