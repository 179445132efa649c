"""Inner cross-validation splits shared by the tuned classifiers (private)."""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["inner_cv_splits"]

log = logging.getLogger(__name__)


def inner_cv_splits(
    y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (and, with `groups`, grouped) shuffled k-fold splits of the training data.

    The number of folds is lowered, with a debug message, to what the data allow: at most the size of the
    smallest class and, with groups, at most the number of groups in which the rarest class appears.

    Parameters
    ----------
    y : (n_samples,) ndarray
        Class labels.
    groups : (n_samples,) ndarray or None
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
    splitter = StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(y), 1)), y, groups))
