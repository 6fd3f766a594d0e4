"""An online random forest of histogram Hoeffding trees, learnt and scored in numpy.

:class:`OnlineForest` is a River classifier (``learn_one``/``predict_proba_one``)
built for fraud labels: rare positives, labels arriving in batches, a scorer
that needs a whole batch scored at once.

How it learns
-------------
* **Under-sampling.** Every fraud label is learnt, and a random
  ``genuine_rate`` share of the genuine ones (default 5 %): with ~1 % frauds
  that is ~15 % frauds among what the trees see, and ~15x less work. Scores are
  corrected back to probabilities on the real class mix (the odds are
  multiplied by ``genuine_rate``), which keeps their order.
* **Binned features.** The first ``warmup`` learnt rows fix ``n_bins`` quantile
  bins per feature. Each leaf keeps a class histogram per feature and bin
  (float32), so a split's merit is a cumulative sum over bins, for every
  feature and threshold at once.
* **Hoeffding trees.** A leaf tries to split once it has seen
  ``grace_period`` more weight: it splits on the best (feature, bin edge) by
  Hellinger distance -- insensitive to class imbalance -- when the best beats
  the second best by the Hoeffding bound (``delta``), or when the bound is below
  ``tie_threshold``. Each attempt looks at a random ``max_features`` share of
  the features, as a random forest does. A new leaf starts with the class
  counts its side of the split had, so it predicts at once.
* **Online bagging.** Each tree learns each row ``Poisson(1)`` times.

A leaf predicts its smoothed fraud share; the forest averages its trees.
:meth:`OnlineForest.proba_many` scores a matrix with a few numpy operations per
tree level (no per-row Python), and gives exactly what ``predict_proba_one``
gives row by row.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(6000, 2))
>>> y = (X[:, 0] > 1.2) & (rng.random(6000) < 0.9)
>>> forest = OnlineForest(n_trees=4, genuine_rate=0.5, grace_period=50, warmup=500, seed=1)
>>> forest.learn_many(X, y, ["a", "b"])
>>> p = forest.proba_many(np.array([[2.0, 0.0], [-1.0, 0.0]]))
>>> bool(p[0] > 0.5 > p[1])
True
>>> forest.predict_proba_one({"a": 2.0, "b": 0.0})[True] == float(p[0])
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import base

__all__ = ["OnlineForest"]

#: Rows learnt between two rounds of split attempts.
_CHUNK = 256
#: Latest learnt rows of each class kept to draw the bins from.
_RECENT_ROWS = 2_000


class _Tree:
    """One histogram Hoeffding tree: node arrays, and a histogram slot per growing leaf."""

    def __init__(self, n_features: int, n_bins: int) -> None:
        self.feature = np.full(1, -1, dtype=np.int32)  # -1 at leaves
        self.threshold = np.zeros(1)  # go left when x <= threshold
        self.left = np.zeros(1, dtype=np.int32)
        self.right = np.zeros(1, dtype=np.int32)
        self.depth = np.zeros(1, dtype=np.int32)
        self.counts = np.zeros((1, 2))  # class weights seen by each node (genuine, fraud)
        self.since = np.zeros(1)  # weight since the last split attempt (leaves)
        # Class histograms per feature and bin of the leaves that may still split:
        # node -> slot of ``hist`` (-1: none), ``hist`` (slots, features, bins, 2).
        self.slot = np.zeros(1, dtype=np.int32)
        self.hist = np.zeros((1, n_features, n_bins, 2), np.float32)
        self.free: list[int] = []
        self.height = 0

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    def route(self, X: np.ndarray) -> np.ndarray:
        """Leaf node of every row of ``X``."""
        node = np.zeros(X.shape[0], dtype=np.int32)
        rows = np.arange(X.shape[0])
        for _ in range(self.height):
            f = self.feature[node]
            inner = f >= 0
            if not inner.any():
                break
            left = X[rows, np.maximum(f, 0)] <= self.threshold[node]
            node = np.where(inner, np.where(left, self.left[node], self.right[node]), node)
        return node

    def _new_slot(self) -> int:
        if self.free:
            slot = self.free.pop()
            self.hist[slot] = 0.0
            return slot
        self.hist = np.concatenate([self.hist, np.zeros_like(self.hist[:1])])
        return self.hist.shape[0] - 1

    def split(
        self, node: int, feature: int, threshold: float, sides: np.ndarray, grow: bool
    ) -> None:
        """Turn leaf ``node`` into a branch with two leaves holding ``sides`` (2, 2) counts."""
        n = self.n_nodes
        depth = int(self.depth[node]) + 1
        self.free.append(int(self.slot[node]))
        slots = [self._new_slot(), self._new_slot()] if grow else [-1, -1]
        self.feature = np.append(self.feature, [-1, -1]).astype(np.int32)
        self.threshold = np.append(self.threshold, [0.0, 0.0])
        self.left = np.append(self.left, [0, 0]).astype(np.int32)
        self.right = np.append(self.right, [0, 0]).astype(np.int32)
        self.depth = np.append(self.depth, [depth, depth]).astype(np.int32)
        self.counts = np.vstack([self.counts, sides])
        self.since = np.append(self.since, [0.0, 0.0])
        self.slot = np.append(self.slot, slots).astype(np.int32)
        self.feature[node], self.threshold[node] = feature, threshold
        self.left[node], self.right[node] = n, n + 1
        self.slot[node] = -1
        self.height = max(self.height, depth)

    def __getstate__(self) -> dict[str, Any]:
        # The histograms are most of the size (a few MB) and only speed up the
        # next splits: a checkpoint leaves them out, a resumed learner refills them.
        state = self.__dict__.copy()
        state["hist"] = self.hist.shape
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.hist = np.zeros(state["hist"], np.float32)


class OnlineForest(base.Classifier):
    """Online random forest of histogram Hoeffding trees (see the module docstring).

    Parameters
    ----------
    n_trees
        Trees in the forest (default 20).
    genuine_rate
        Share of genuine labels learnt; every fraud is learnt (default 0.05).
    n_bins
        Quantile bins per feature (default 64).
    warmup
        Learnt rows (after under-sampling) that fix the first bins; the forest
        says 0.5 (no opinion) until then (default 500).
    grace_period
        Weight a leaf sees between split attempts (default 200).
    delta
        Hoeffding bound confidence (default 1e-5).
    tie_threshold
        Split anyway when the bound is below this (default 0.05).
    max_features
        Share of features looked at per split attempt (default 0.5).
    max_depth
        Deepest leaf (default 12).
    min_child_weight
        Least weight on each side of a split (default 5).
    smoothing
        Pseudo-count pulling a leaf's fraud share towards the forest's (default 1).
    seed
        Seed of every random draw (default 42).
    """

    def __init__(
        self,
        n_trees: int = 20,
        genuine_rate: float = 0.05,
        n_bins: int = 64,
        warmup: int = 500,
        grace_period: float = 200.0,
        delta: float = 1e-5,
        tie_threshold: float = 0.05,
        max_features: float = 0.5,
        max_depth: int = 12,
        min_child_weight: float = 5.0,
        smoothing: float = 1.0,
        seed: int = 42,
    ) -> None:
        if not 0 < genuine_rate <= 1:
            raise ValueError("genuine_rate must be within (0, 1]")
        if n_bins < 2 or n_trees < 1:
            raise ValueError("n_bins must be >= 2 and n_trees >= 1")
        self.n_trees = n_trees
        self.genuine_rate = genuine_rate
        self.n_bins = n_bins
        self.warmup = warmup
        self.grace_period = grace_period
        self.delta = delta
        self.tie_threshold = tie_threshold
        self.max_features = max_features
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.smoothing = smoothing
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.features: tuple[str, ...] | None = None
        self._edges: np.ndarray | None = None  # (features, n_bins - 1)
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._recent: tuple[np.ndarray, np.ndarray] | None = None  # rows the bins come from
        self._kept = 0
        self._next_rebin = warmup
        self._trees: list[_Tree] = []
        self._class_weight = np.zeros(2)  # learnt rows, after under-sampling
        self._compiled: tuple[np.ndarray, ...] | None = None

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"n_trees": 2, "warmup": 50, "grace_period": 20}

    # -- learning ---------------------------------------------------------------

    def learn_one(self, x: Mapping[str, float], y: bool, **kwargs: Any) -> None:  # type: ignore[override]
        """Learn one labelled row (River's verb; :meth:`learn_many` is the fast path)."""
        names = self.features or tuple(x)
        row = np.array([[float(x[f]) for f in names]])
        self.learn_many(row, np.array([bool(y)]), names)

    def learn_many(self, X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> None:
        """Learn labelled rows; ``names`` are the columns of ``X`` (the same every call)."""
        names = tuple(names)
        if self.features is None:
            self.features = names
        elif names != self.features:
            raise ValueError("the forest was learnt with other features")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=bool)
        keep = y | (self._rng.random(y.shape[0]) < self.genuine_rate)
        X, y = X[keep], y[keep]
        if X.shape[0] == 0:
            return
        self._compiled = None
        self._class_weight += np.bincount(y, minlength=2)
        self._keep_recent(X, y)
        self._kept += y.shape[0]
        if self._edges is None:
            self._buffer.append((X, y))
            if self._kept < self.warmup:
                return
            X = np.vstack([b[0] for b in self._buffer])
            y = np.concatenate([b[1] for b in self._buffer])
            self._buffer = []
            self._trees = [_Tree(X.shape[1], self.n_bins) for _ in range(self.n_trees)]
        if self._kept >= self._next_rebin:
            self._rebin()
        assert self._edges is not None
        bins = self._bin(X)
        weights = self._rng.poisson(1.0, size=(len(self._trees), X.shape[0])).astype(np.float64)
        # In chunks, so that a big batch still lets new leaves learn and split.
        for lo in range(0, X.shape[0], _CHUNK):
            part = slice(lo, lo + _CHUNK)
            for tree, w in zip(self._trees, weights, strict=True):
                self._learn_tree(tree, X[part], bins[part], y[part], w[part])

    def _keep_recent(self, X: np.ndarray, y: np.ndarray) -> None:
        """Keep the latest :data:`_RECENT_ROWS` learnt rows of each class."""
        if self._recent is None:
            self._recent = (X[:0].astype(np.float32), y[:0])
        rx = np.vstack([self._recent[0], X.astype(np.float32)])
        ry = np.concatenate([self._recent[1], y])
        keep = np.zeros(ry.shape[0], dtype=bool)
        for label in (False, True):
            keep[np.flatnonzero(ry == label)[-_RECENT_ROWS:]] = True
        self._recent = (rx[keep], ry[keep])

    def _rebin(self) -> None:
        """Bin edges from the recent rows; leaf histograms restart on the new bins.

        Features fill up as the stream goes on (30-day windows, labels that arrive
        after a delay), so the bins are drawn again at 1, 4, 16, ... times
        ``warmup`` learnt rows. Half the edges are genuine quantiles, half fraud
        quantiles: resolution where the frauds are. Splits already made keep
        their thresholds.
        """
        assert self._recent is not None
        X, y = self._recent
        half = self.n_bins // 2
        q = np.linspace(0, 1, half + 1)[1:-1]
        parts = [
            np.quantile(X[y == label], q, axis=0) for label in (False, True) if (y == label).any()
        ]
        edges = np.sort(np.vstack(parts).T, axis=1)  # (features, <= n_bins - 2)
        pad = self.n_bins - 1 - edges.shape[1]
        self._edges = np.hstack([edges, np.repeat(edges[:, -1:], pad, axis=1)])
        for tree in self._trees:
            tree.hist[:] = 0.0
        self._next_rebin = self._kept * 4

    def _bin(self, X: np.ndarray) -> np.ndarray:
        """Bin of each value: ``x <= edges[b]`` exactly when ``bin <= b``."""
        assert self._edges is not None
        out = np.empty(X.shape, dtype=np.int16)
        for j in range(X.shape[1]):
            out[:, j] = np.searchsorted(self._edges[j], X[:, j], side="left")
        return out

    def _learn_tree(
        self, tree: _Tree, X: np.ndarray, bins: np.ndarray, y: np.ndarray, w: np.ndarray
    ) -> None:
        rows = np.flatnonzero(w > 0)
        if rows.shape[0] == 0:
            return
        X, bins, y, w = X[rows], bins[rows], y[rows], w[rows]
        leaf = tree.route(X)
        cls = y.astype(np.int64)
        n_nodes = tree.n_nodes
        tree.counts += np.bincount(leaf * 2 + cls, w, minlength=2 * n_nodes).reshape(-1, 2)
        tree.since += np.bincount(leaf, w, minlength=n_nodes)
        slot = tree.slot[leaf]
        growing = slot >= 0
        if growing.any():
            # One bincount for every (slot, feature, bin, class) of the batch.
            _, n_features, n_bins, _ = tree.hist.shape
            s, b, c = slot[growing].astype(np.int64), bins[growing], cls[growing]
            index = ((s[:, None] * n_features + np.arange(n_features)) * n_bins + b) * 2
            index += c[:, None]
            ww = np.broadcast_to(w[growing][:, None], index.shape)
            flat = tree.hist.reshape(-1)
            flat += np.bincount(index.ravel(), ww.ravel(), minlength=flat.shape[0]).astype(
                np.float32
            )
        for node in np.flatnonzero((tree.since >= self.grace_period) & (tree.slot >= 0)).tolist():
            tree.since[node] = 0.0
            self._attempt_split(tree, node, tree.hist[tree.slot[node]])

    def _attempt_split(self, tree: _Tree, node: int, hist: np.ndarray) -> None:
        total = tree.counts[node]
        if total.min() <= 0:
            return  # a pure leaf has nothing to split
        n_features = hist.shape[0]
        k = max(1, round(self.max_features * n_features))
        candidates = np.sort(self._rng.choice(n_features, size=k, replace=False))
        h = hist[candidates].astype(np.float64)  # (k, bins, 2)
        # Each feature's histogram sums to the weight seen since the leaf was made;
        # the side counts come from those, scaled to the leaf's totals.
        left = np.cumsum(h, axis=1)[:, :-1, :]  # (k, bins - 1, 2): x <= edge b
        seen = h.sum(axis=1)[:, None, :]
        right = seen - left
        with np.errstate(divide="ignore", invalid="ignore"):
            pl, pr = left / np.maximum(seen, 1e-12), right / np.maximum(seen, 1e-12)
            merit = np.sqrt(
                (np.sqrt(pl[..., 1]) - np.sqrt(pl[..., 0])) ** 2
                + (np.sqrt(pr[..., 1]) - np.sqrt(pr[..., 0])) ** 2
            )
        valid = (left.sum(axis=2) >= self.min_child_weight) & (
            right.sum(axis=2) >= self.min_child_weight
        )
        merit = np.where(valid & np.isfinite(merit), merit, -1.0)
        best_bin = merit.argmax(axis=1)
        best = merit[np.arange(k), best_bin]
        order = np.argsort(-best)
        first = best[order[0]]
        if first <= 0:
            return
        second = best[order[1]] if k > 1 else 0.0
        n = float(total.sum())
        bound = math.sqrt(math.log(1.0 / self.delta) / (2.0 * n))
        if first - max(second, 0.0) > bound or bound < self.tie_threshold:
            j = int(order[0])
            feature, b = int(candidates[j]), int(best_bin[j])
            scale = total / np.maximum(seen[j, 0], 1e-12)
            sides = np.vstack([left[j, b] * scale, right[j, b] * scale])
            assert self._edges is not None
            grow = int(tree.depth[node]) + 1 < self.max_depth
            tree.split(node, feature, float(self._edges[feature, b]), sides, grow)

    # -- prediction -----------------------------------------------------------------

    @property
    def _prior(self) -> float:
        """Fraud share of what the trees learnt (after under-sampling)."""
        total = self._class_weight.sum()
        return float(self._class_weight[1] / total) if total else 0.5

    def _compile(self) -> tuple[np.ndarray, ...]:
        """All trees as flat arrays for :meth:`_raw_many`.

        ``feature``, ``threshold`` and ``child`` (left, right interleaved) of every
        node, leaf values and the roots. A leaf tests feature 0 against +inf and
        both its children are itself, so every row walks exactly ``height`` steps
        with no branching in numpy.
        """
        if self._compiled is None:
            prior, a = self._prior, self.smoothing
            parts: list[tuple[np.ndarray, ...]] = []
            roots, offset, height = [], 0, 0
            for tree in self._trees:
                leaf = tree.feature < 0
                own = np.arange(tree.n_nodes, dtype=np.int64) + offset
                child = np.empty(2 * tree.n_nodes, dtype=np.int64)
                child[0::2] = np.where(leaf, own, tree.left + offset)
                child[1::2] = np.where(leaf, own, tree.right + offset)
                parts.append(
                    (
                        np.where(leaf, 0, tree.feature).astype(np.int64),
                        np.where(leaf, np.inf, tree.threshold),
                        child,
                        (tree.counts[:, 1] + a * prior) / (tree.counts.sum(axis=1) + a),
                    )
                )
                roots.append(offset)
                offset += tree.n_nodes
                height = max(height, tree.height)
            arrays = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
            self._compiled = (*arrays, np.array(roots, dtype=np.int64), np.array([height]))
        return self._compiled

    def proba_many(self, X: np.ndarray) -> np.ndarray:
        """Fraud probability of each row of ``X`` (columns as learnt), vectorised."""
        X = np.asarray(X, dtype=np.float64)
        if not self._trees:
            return np.full(X.shape[0], 0.5)  # still warming up: no opinion
        q = self._raw_many(X)
        # Back to the real class mix: the genuine rows were under-sampled.
        r = self.genuine_rate
        return q * r / (q * r + (1.0 - q))

    def _raw_many(self, X: np.ndarray) -> np.ndarray:
        """Mean leaf fraud share over the trees, on the under-sampled class mix."""
        feature, threshold, child, value, roots, height = self._compile()
        n, d = X.shape
        flat = np.ascontiguousarray(X, dtype=np.float64).reshape(-1)
        base = (np.arange(n, dtype=np.int64) * d)[:, None]
        node = np.broadcast_to(roots, (n, roots.shape[0])).copy()
        for _ in range(int(height[0])):
            right = flat[base + feature[node]] > threshold[node]
            node = child[2 * node + right]
        mean: np.ndarray = value[node].mean(axis=1)
        return mean

    def predict_proba_one(  # type: ignore[override]
        self, x: Mapping[str, float], **kwargs: Any
    ) -> dict[bool, float]:
        """Probability of each class for one row (River's verb)."""
        names = self.features or tuple(x)
        p = float(self.proba_many(np.array([[float(x.get(f, 0.0)) for f in names]]))[0])
        return {False: 1.0 - p, True: p}

    # -- introspection ----------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        """Nodes over all trees."""
        return sum(t.n_nodes for t in self._trees)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # derived
        return state
