"""Training-data checks and inner cross-validation splits shared by the trained classifiers (private)."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["checked_training_data", "inner_cv_splits", "own_random_state"]

log = logging.getLogger(__name__)

_REDRAWS = 10  # draws of grouped folds tried per fold count before fewer folds are tried


def checked_training_data(
    estimator: object, X: ArrayLike, y: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a classifier's training data, as every ``fit`` here does before it stores anything.

    Parameters
    ----------
    estimator : scikit-learn estimator
        The estimator being fitted (``validate_data`` records ``n_features_in_`` on it).
    X : array-like of shape (n_samples, n_features)
        Training features; must be finite.
    y : array-like of shape (n_samples,)
        Class labels.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,)
    classes : ndarray
        The sorted distinct labels.
    codes : ndarray of shape (n_samples,)
        Index of each sample's label in `classes`.

    Raises
    ------
    ValueError
        If `X` is not finite, `y` is not a classification target or holds fewer than two classes.
    """
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import validate_data

    X_checked, y_checked = validate_data(estimator, X, y, dtype=np.float64)
    check_classification_targets(y_checked)
    classes, codes = np.unique(y_checked, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{type(estimator).__name__} needs at least 2 classes; got 1 class ({classes[0]!r})")
    return np.asarray(X_checked), np.asarray(y_checked), classes, codes


def own_random_state(random_state: int | np.random.RandomState | None) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``, except that None gives a generator seeded from fresh entropy.

    scikit-learn's None means NumPy's global generator, which a fit would then move on: another part of
    the program seeded with ``np.random.seed`` would draw other numbers because a model was fitted.

    Parameters
    ----------
    random_state : int, RandomState instance or None
        An int seeds a new generator; a RandomState instance is used (and advanced) as it is.

    Returns
    -------
    numpy.random.RandomState
    """
    from sklearn.utils import check_random_state

    if random_state is None:
        return np.random.RandomState(np.random.SeedSequence().generate_state(1)[0])
    return check_random_state(random_state)


def inner_cv_splits(
    y: np.ndarray, groups: ArrayLike | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (and, with `groups`, grouped) shuffled k-fold splits of the training data.

    The number of folds is lowered, with a debug message, to what the data allow: at most the size of the
    smallest class and, with groups, at most the number of groups in which the rarest class appears. Grouped
    folds are redrawn (seeds derived from `seed`, then fewer folds) until every test fold holds every class.

    Parameters
    ----------
    y : (n_samples,) ndarray
        Class labels.
    groups : (n_samples,) array-like or None
        Group of each sample (e.g. its image); samples of a group stay in the same fold.
    n_splits : int
        Wanted number of folds, at least 2.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of (train, test) index arrays

    Raises
    ------
    ValueError
        If fewer than two folds are possible.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"inner_cv must be an integer >= 2; got {n_splits!r}")
    classes, y_codes = np.unique(y, return_inverse=True)
    possible = int(np.bincount(y_codes).min())
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(y),):
            raise ValueError(f"groups must have one entry per sample ({len(y)}); got shape {groups.shape}")
        _, group_codes = np.unique(groups, return_inverse=True)
        groups_per_class = [len(np.unique(group_codes[y_codes == c])) for c in range(len(classes))]
        possible = min(possible, min(groups_per_class))
    if possible < 2:
        what = "group" if groups is not None else "sample"
        raise ValueError(
            f"inner cross-validation needs every class in at least 2 {what}s; the rarest class has {possible}. "
            "Collect more data for that class or drop it"
        )
    if possible < n_splits:
        log.debug("inner cross-validation lowered from %d to %d folds (small class)", n_splits, possible)
    n = min(n_splits, possible)
    if groups is None:
        splitter = StratifiedKFold(n, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros((len(y), 1)), y))
    # StratifiedGroupKFold assigns whole groups greedily, so with few groups of a class a test fold can miss
    # that class (a fold whose score is undefined). Such a split is redrawn with seeds derived from `seed`,
    # then with fewer folds; the first draw is kept whenever it holds every class in every fold.
    first = None
    for k in range(n, 1, -1):
        for attempt in range(_REDRAWS):
            state = seed if attempt == 0 else int(np.random.SeedSequence([seed, k, attempt]).generate_state(1)[0])
            splits = list(StratifiedGroupKFold(k, shuffle=True, random_state=state).split(y_codes, y_codes, groups))
            if first is None:
                first = splits
            if all(len(np.unique(y_codes[test])) == len(classes) for _, test in splits):
                if (k, attempt) != (n, 0):
                    log.debug("inner cross-validation: %d folds, draw %d, so that every fold holds every class",
                              k, attempt)
                return splits
    log.debug("inner cross-validation: no draw gives every class in every fold; keeping the first")
    assert first is not None  # n >= 2: at least one draw was made
    return first
