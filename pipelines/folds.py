"""Image-level cross-validation folds: stratified by image label, grouped by identical images, seeded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from leukoseg.io import _python_scalar

__all__ = ["assign_folds", "check_no_leak", "groups_per_class"]


_MAX_SEED = 2**32 - 1  # NumPy's legacy generators (scikit-learn's random_state) take seeds up to this


def _seed_refusal(seed: object, repeats: int = 1) -> str | None:
    """Why `seed` cannot seed `repeats` repeats (repeat ``r`` uses ``seed + r``), or None when it can."""
    top = _MAX_SEED - (repeats - 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= top:
        return (f"seed must be a whole number from 0 to {top}" + (f" (with {repeats} repeats: repeat r uses seed + r, "
                f"at most {_MAX_SEED})" if repeats > 1 else "") + f"; got {seed!r}")  # fmt: skip
    return None


def assign_folds(
    labels: ArrayLike, groups: ArrayLike, *, n_folds: int = 5, repeats: int = 1, seed: int = 0
) -> np.ndarray:
    """Fold of every image in every repeat.

    :class:`~sklearn.model_selection.StratifiedGroupKFold` over images, stratified by the image label and
    grouped by ``groups`` (identical images share a fold), shuffled with ``seed + r`` in repeat ``r``.

    Parameters
    ----------
    labels : (n_images,) array-like
        Image labels.
    groups : (n_images,) array-like of int
        Group ids (e.g. :attr:`~leukoseg.datasets.ImageRecord.group`).
    n_folds : int, optional
        Folds per repeat.
    repeats : int, optional
        Independent repeats.
    seed : int, optional
        Seed of repeat 0.

    Returns
    -------
    (repeats, n_images) ndarray of int
        Fold index in ``0 .. n_folds - 1``.

    Raises
    ------
    ValueError
        If a class has fewer groups than `n_folds`.

    Examples
    --------
    >>> folds = assign_folds([0, 0, 1, 1], [0, 1, 2, 3], n_folds=2)
    >>> folds.shape, sorted(folds[0].tolist())
    ((1, 4), [0, 0, 1, 1])
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D of one length; got {labels.shape} and {groups.shape}")
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    why = _seed_refusal(seed, int(repeats))
    if why:
        raise ValueError(why)
    for c, n_groups in groups_per_class(labels, groups).items():
        if n_groups < n_folds:
            raise ValueError(
                f"class {c!r} has {n_groups} distinct image(s), fewer than the {n_folds} folds; use fewer folds"
            )
    out = np.full((repeats, len(labels)), -1, dtype=int)
    for r in range(repeats):
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=int(seed) + r)
        for k, (_, test) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels, groups)):
            out[r, test] = k
    return out


def check_no_leak(
    train_images: ArrayLike, test_images: ArrayLike, train_groups: ArrayLike, test_groups: ArrayLike
) -> None:
    """Raise if an image, or a group of identical images, is on both sides of a split.

    Parameters
    ----------
    train_images, test_images : array-like of str
        Image names (of every training / test *cell*, or of the images).
    train_groups, test_groups : array-like of int
        Their group ids.

    Raises
    ------
    AssertionError
        Naming the images that leak.
    """
    shared = set(np.asarray(train_images).tolist()) & set(np.asarray(test_images).tolist())
    if shared:
        raise AssertionError(f"test images in the training set: {sorted(shared)[:5]}")
    shared_groups = set(np.asarray(train_groups).tolist()) & set(np.asarray(test_groups).tolist())
    if shared_groups:
        raise AssertionError(f"groups of identical images on both sides of a split: {sorted(shared_groups)[:5]}")


def groups_per_class(labels: ArrayLike, groups: ArrayLike, classes: Iterable[Any] = ()) -> dict[Any, int]:
    """Number of distinct groups (identical images count once) of each class: what a grouped split can use.

    Parameters
    ----------
    labels, groups : (n,) array-like
        Class and group of each sample.
    classes : iterable, optional
        Classes to report even when no sample has them (with 0).

    Returns
    -------
    dict
        Class (as a plain Python value) -> number of distinct groups, the given `classes` first.

    Examples
    --------
    >>> groups_per_class([1, 1, 0], [5, 5, 6], classes=[0, 1, 2])
    {0: 1, 1: 1, 2: 0}
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    counts = {_python_scalar(c): 0 for c in classes}
    for c in np.unique(labels):
        counts[_python_scalar(c)] = len(np.unique(groups[labels == c]))
    return counts
