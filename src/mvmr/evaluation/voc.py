"""VOC07 classification metrics (average precision, mAP) and the per-class linear-SVM protocol.

AP is computed over a whole split. Tied scores form one threshold (one point of the precision-recall
curve), so the result does not depend on the order of tied samples; without ties both methods follow the
official devkits:

- ``"11point"`` (VOC2007 devkit, the default): mean over recall levels t in {0, 0.1, ..., 1} of the
  interpolated precision max{precision(r) : r >= t}. "r >= t" is
  compared exactly (10 * TP >= i * n_pos); the devkits compare against floating-point levels such as
  0.30000000000000004, so they differ only when a recall equals a level exactly (n_pos a multiple of 10).
- ``"area"`` (VOC2010+ devkit): area under the interpolated precision-recall curve,
  sum over thresholds of (R_n - R_{n-1}) * max_{m >= n} P_m.

sklearn's ``average_precision_score`` is the non-interpolated sum (R_n - R_{n-1}) * P_n; hence
"area" >= sklearn's AP, with equality exactly when precision never rises again after a recall step
(e.g. a perfect ranking). Both group ties the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from mvmr.errors import DataError

AP_METHODS = ("11point", "area")
SVM_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)
SVM_CLASS_WEIGHT = {1: 2, 0: 1}  # as in Goyal et al. 2019's benchmark (positives count twice)
SVM_MAX_ITER = 10_000


def true_positive_counts(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives (T,), predicted positives (T,)) int64 at each distinct score threshold, highest first.

    scores (N,) float, targets (N,) in {0, 1}.
    """
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order].astype(np.int64)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    return np.cumsum(targets)[last_of_tie], np.arange(1, len(scores) + 1)[last_of_tie]


def average_precision(scores: Any, targets: Any, ignore: Any = None, method: str = "11point") -> float:
    """VOC AP of one class: scores (N,), targets (N,) in {0, 1}, ignore (N,) bool (entries left out entirely).

    NaN when no positive remains (AP is undefined).
    """
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    keep = np.ones_like(scores, bool) if ignore is None else ~np.asarray(ignore, bool).reshape(-1)
    if not scores.shape == targets.shape == keep.shape:
        raise ValueError(
            f"scores, targets, ignore must have one shape, got {scores.shape}, {targets.shape}, {keep.shape}"
        )
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("targets must be 0 or 1")
    if not np.isfinite(scores[keep]).all():
        raise ValueError("scores must be finite")
    scores, targets = scores[keep], targets[keep]
    if targets.sum() == 0:
        return float("nan")
    true_pos, predicted = true_positive_counts(scores, targets)
    n_pos = int(true_pos[-1])
    # interpolated precision: the best precision at this recall or beyond
    interpolated = np.maximum.accumulate((true_pos / predicted)[::-1])[::-1]
    if method == "area":
        return float(np.sum(np.diff(true_pos, prepend=0) / n_pos * interpolated))
    # first point with recall >= t = i / 10, compared exactly in integers: 10 * tp >= i * n_pos
    reached = np.searchsorted(10 * true_pos, np.arange(11) * n_pos, side="left")
    return float(interpolated[reached].mean())


def mean_average_precision(
    scores: Any, targets: Any, ignore: Any = None, method: str = "11point"
) -> tuple[float, list[float]]:
    """(mAP, per-class AP) of scores (N, K), targets (N, K), ignore (N, K) bool, over the whole split.

    Classes with no positive get AP NaN and are left out of the mean.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must be (N, K) of one shape, got {scores.shape} and {targets.shape}")
    ignore = np.zeros(scores.shape, bool) if ignore is None else np.asarray(ignore, bool)
    per_class = [average_precision(scores[:, k], targets[:, k], ignore[:, k], method) for k in range(scores.shape[1])]
    defined = [ap for ap in per_class if not np.isnan(ap)]
    if not defined:
        raise ValueError("mAP is undefined: no class has a positive (non-ignored) sample")
    return float(np.mean(defined)), per_class


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (N, D) divided by their L2 norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@dataclass
class LinearSVMs:
    """One linear SVM per class on L2-normalised features: scores = normalize(x) @ coef_.T + intercept_.

    coef_ (K, D), intercept_ (K,), costs (K,) chosen per class, cv_ap (K, len(cost grid)) mean CV AP.
    """

    coef_: np.ndarray
    intercept_: np.ndarray
    costs: np.ndarray
    cost_grid: tuple
    cv_ap: np.ndarray

    def decision_function(self, x: Any) -> np.ndarray:
        """Scores (N, K) of features x (N, D)."""
        return l2_normalize(x) @ self.coef_.T + self.intercept_


def make_svm(cost: float) -> LinearSVC:
    return LinearSVC(C=cost, class_weight=SVM_CLASS_WEIGHT, dual="auto", max_iter=SVM_MAX_ITER)


def fit_svm(x: np.ndarray, y: np.ndarray, cost: float) -> LinearSVC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # large costs may stop at max_iter; still usable
        return make_svm(cost).fit(x, y)


def cross_validated_ap(x: np.ndarray, y: np.ndarray, costs: Sequence[float], folds: int, seed: int) -> np.ndarray:
    """Mean over ``folds`` stratified folds of sklearn's AP on the held-out fold, per cost: (len(costs),)."""
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))

    def fold_ap(cost: float, train: np.ndarray, test: np.ndarray) -> float:
        return average_precision_score(y[test], fit_svm(x[train], y[train], cost).decision_function(x[test]))

    return np.array([np.mean([fold_ap(cost, train, test) for train, test in splits]) for cost in costs])


def fit_class(
    x: np.ndarray, y: np.ndarray, costs: Sequence[float], folds: int, seed: int, name: str
) -> tuple[LinearSVC, float, np.ndarray]:
    """(SVM refit on all rows with the best cost, that cost, CV AP per cost) for one class."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    n_folds = min(folds, n_pos, n_neg)
    if n_folds < 2:
        raise DataError(
            f"VOC SVM: class '{name}' has {n_pos} positive and {n_neg} negative training images; "
            f"cross-validation needs at least 2 of each (use a larger training split)"
        )
    cv_ap = cross_validated_ap(x, y, costs, n_folds, seed)
    best = float(costs[int(np.argmax(cv_ap))])  # ties: the smallest-index (first listed) cost
    return fit_svm(x, y, best), best, cv_ap


def fit_linear_svms(
    train_x: Any,
    train_y: Any,
    ignore: Any = None,
    costs: Sequence[float] = SVM_COSTS,
    folds: int = 3,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    n_jobs: int = 1,
) -> LinearSVMs:
    """Goyal et al. (2019) VOC07 protocol: per class, a LinearSVC on L2-normalised features train_x (N, D).

    train_y (N, K) in {0, 1}; ignore (N, K) bool rows are dropped from that class's training set.
    The cost is chosen per class by ``folds``-fold stratified CV (seeded shuffle) of sklearn's AP (the
    benchmark's criterion; fewer folds when a class has fewer positives), then the SVM is refit on all rows.
    ``n_jobs`` classes are fitted in parallel threads.
    """
    x = l2_normalize(train_x)
    y = np.asarray(train_y).astype(np.int64)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"train_y must be (N, K) with N = {x.shape[0]}, got {y.shape}")
    keep = np.ones(y.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    names = list(class_names) if class_names is not None else [str(k) for k in range(y.shape[1])]
    costs = tuple(float(c) for c in costs)
    fitted = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(fit_class)(x[keep[:, k]], y[keep[:, k], k], costs, folds, seed, names[k]) for k in range(y.shape[1])
    )
    return LinearSVMs(
        coef_=np.stack([svm.coef_[0] for svm, _, _ in fitted]),
        intercept_=np.array([svm.intercept_[0] for svm, _, _ in fitted]),
        costs=np.array([cost for _, cost, _ in fitted]),
        cost_grid=costs,
        cv_ap=np.stack([ap for _, _, ap in fitted]),
    )
