"""Image scores from cell scores, decision thresholds, and binary metrics with confidence intervals."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "binary_metrics",
    "choose_image_rule",
    "choose_threshold",
    "image_score",
    "multiclass_metrics",
    "roc_auc",
    "wilson_interval",
]

log = logging.getLogger(__name__)


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Parameters
    ----------
    successes : int
        Number of successes, ``0 <= successes <= n``.
    n : int
        Number of trials; ``n = 0`` gives ``(0.0, 1.0)`` (nothing is known).
    z : float, optional
        Standard normal quantile (1.96: 95 %).

    Returns
    -------
    (low, high) : tuple of float
        The interval's bounds, in [0, 1].

    Raises
    ------
    ValueError
        Unless ``0 <= successes <= n``.

    Examples
    --------
    >>> [round(v, 4) for v in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n; got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes a bound is exactly 0 or 1; the formula's rounding would leave 3e-18 or 1 - 2e-16.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def image_score(cell_scores: ArrayLike, *, top_k: int = 3) -> float:
    """Score of an image from the blast probabilities of its cells: the mean of its `top_k` highest.

    Missing cells count as 0: an image with fewer than `top_k` cells is scored ``sum / top_k``, and an
    image with no cell scores 0 (it is kept, and called healthy, never dropped). Averaging several cells
    makes the score robust to one false-positive cell, which a maximum or a noisy-OR is not; an ALL smear
    holds many blasts, so its top three are all high.

    Parameters
    ----------
    cell_scores : array-like of float
        Blast probabilities of the image's cells, in [0, 1].
    top_k : int, optional
        How many of the highest cells are averaged.

    Returns
    -------
    float in [0, 1]
        The mean of the `top_k` highest cell scores, missing cells counted as 0.

    Raises
    ------
    ValueError
        If `top_k` is below 1 or a cell score is NaN.

    Examples
    --------
    >>> image_score([0.9, 0.1, 0.8, 0.7, 0.2])
    0.8
    >>> image_score([0.9]), image_score([])
    (0.3, 0.0)
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    scores = np.asarray(cell_scores, dtype=np.float64).ravel()
    if np.isnan(scores).any():  # a NaN would sort last and silently leave the image to its other cells
        raise ValueError("cell_scores must not be NaN")
    s = np.sort(scores)[::-1][:top_k]
    return float(round(s.sum() / top_k, 12))


def choose_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """Choose the image-score threshold that maximises the balanced accuracy of ``score >= threshold``.

    Candidates are 0.5, the midpoints between consecutive distinct scores, and the cuts that call every
    image positive (the lowest score) or none (1e-6 above the highest), so that the choice is never worse
    than a constant call; ties in balanced accuracy go to the candidate nearest 0.5, then the lower one.

    Parameters
    ----------
    scores : (n,) array-like of float
        Image scores (e.g. of :func:`image_score`) of the training images.
    labels : (n,) array-like of {0, 1}
        Their classes (1: ALL).

    Returns
    -------
    float
        The threshold; an image is called positive when its score is at or above it.

    Raises
    ------
    ValueError
        If `scores` and `labels` differ in length, or a score is NaN.

    Notes
    -----
    When `labels` hold a single class (or none: no images), no threshold is better than another and 0.5 is
    returned, with a debug log line. :func:`choose_image_rule` relies on this: a training set of one class
    still gets a rule.

    Examples
    --------
    >>> choose_threshold([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    0.25
    >>> choose_threshold([0.2, 0.3], [1, 1])
    0.5
    >>> choose_threshold([0.2, 0.4, 0.6, 0.8], [1, 1, 0, 0])  # ranked against the labels: a constant call
    0.2
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    if len(scores) != len(labels):
        raise ValueError(
            f"scores and labels must have the same length; got {len(scores)} scores and {len(labels)} labels"
        )
    if np.isnan(scores).any():
        raise ValueError("scores must not be NaN")
    values = np.unique(scores)
    # The two constant calls (balanced accuracy 0.5) only win when every cut between scores does worse,
    # i.e. scores ranked against the labels.
    # 1e-6 above the highest: still above it once rounded (below) and written to images.csv (6 decimals).
    constant = [values[0], values[-1] + 1e-6] if len(values) else []
    candidates = np.concatenate([[0.5], (values[:-1] + values[1:]) / 2, constant])
    if len(np.unique(labels)) < 2:
        log.debug("choose_threshold: the %d labels hold %s; threshold 0.5", len(labels),
                  f"one class ({labels[0]})" if len(labels) else "no class")  # fmt: skip
        return 0.5
    best, best_key = 0.5, None
    for t in candidates:
        pred = scores >= t
        bacc = 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())
        key = (round(bacc, 12), -abs(t - 0.5), -t)
        if best_key is None or key > best_key:
            best, best_key = float(t), key
    return float(round(best, 12))


def choose_image_rule(
    cell_scores: Sequence[ArrayLike], labels: ArrayLike, *, top_ks: Sequence[int] = (1, 2, 3)
) -> tuple[int, float]:
    """Choose the image rule on training images: which top-k mean, and its threshold (:func:`choose_threshold`).

    The k whose image scores, at their best threshold, give the highest balanced accuracy wins; ties go to
    the higher image AUC, then to the larger k (more robust to one false-positive cell). Only training
    images may be given: the rule is learnt like any other parameter.

    Parameters
    ----------
    cell_scores : sequence of (n_cells_i,) array-like
        Blast probabilities of the cells of each image.
    labels : (n_images,) array-like of {0, 1}
        Class of each image (1: ALL).
    top_ks : sequence of int, optional
        Candidate k of :func:`image_score`.

    Returns
    -------
    k : int
        The number of highest cell scores averaged into the image score.
    threshold : float
        The threshold on that score.

    Raises
    ------
    ValueError
        If `top_ks` is empty or holds a k below 1, a cell score is NaN, or `labels` and `cell_scores`
        differ in length.

    Examples
    --------
    Both rules separate these images; the tie goes to the mean of three:

    >>> choose_image_rule([[0.9, 0.1, 0.1], [0.2, 0.1], [0.95, 0.9, 0.8]], [1, 0, 1])
    (3, 0.233333333333)

    An ALL image with one blast and a healthy one with three doubtful cells: only the maximum separates them.

    >>> choose_image_rule([[0.9], [0.6, 0.6, 0.6], [0.95, 0.9, 0.8]], [1, 0, 1])
    (1, 0.75)
    """
    labels = np.asarray(labels).astype(int)
    best, best_key = None, None
    for k in top_ks:
        s = np.array([image_score(c, top_k=k) for c in cell_scores])
        t = choose_threshold(s, labels)
        pred = s >= t
        if len(np.unique(labels)) < 2:
            bacc = float((pred == labels.astype(bool)).mean()) if len(labels) else 0.0
        else:
            bacc = 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())
        auc = roc_auc(labels, s)
        key = (round(float(bacc), 12), round(auc if auc is not None else 0.0, 12), k)
        if best_key is None or key > best_key:
            best, best_key = (int(k), t), key
    if best is None:
        raise ValueError("top_ks is empty")
    return best


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve, or None when only one class is present.

    Parameters
    ----------
    labels : (n,) array-like of {0, 1}
        True classes (1 positive).
    scores : (n,) array-like of float
        Higher means more likely positive.

    Returns
    -------
    float or None
        The AUC (ties count one half), or None when `labels` hold a single class.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def binary_metrics(labels: ArrayLike, pred: ArrayLike, scores: ArrayLike | None = None) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity (each with its Wilson 95 % interval) and the AUC of `scores`.

    Parameters
    ----------
    labels, pred : (n,) array-like of {0, 1}
        Truth and decisions.
    scores : (n,) array-like of float, optional
        For the AUC.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``accuracy_ci``, ``sensitivity``, ``sensitivity_ci``, ``specificity``,
        ``specificity_ci``, ``auc`` (None without both classes or without scores) and ``confusion``
        (``[[tn, fp], [fn, tp]]``). A rate with no case (e.g. sensitivity without positives) is None.
    """
    labels, pred = np.asarray(labels).astype(int), np.asarray(pred).astype(int)
    out: dict = {"n": int(len(labels))}
    for name, mask in (("accuracy", np.ones(len(labels), bool)), ("sensitivity", labels == 1),
                       ("specificity", labels == 0)):  # fmt: skip
        n = int(mask.sum())
        k = int((labels[mask] == pred[mask]).sum())
        out[name] = k / n if n else None
        out[f"{name}_ci"] = list(wilson_interval(k, n)) if n else None
    out["auc"] = roc_auc(labels, scores) if scores is not None else None
    out["confusion"] = [[int(((labels == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    return out


def multiclass_metrics(labels: ArrayLike, pred: ArrayLike, classes: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall (Wilson 95 % intervals) and the confusion matrix.

    Parameters
    ----------
    labels, pred : (n,) array-like
        Truth and decisions, values among `classes`.
    classes : sequence
        Class order of the recall keys and of the confusion matrix.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``accuracy_ci``, ``balanced_accuracy`` (mean recall over the classes present),
        ``recall`` and ``recall_ci`` (class name -> value; None for a class with no image) and ``confusion``
        (rows: truth, columns: prediction, in the order of `classes`).

    Examples
    --------
    >>> m = multiclass_metrics(["a", "b", "c", "c"], ["a", "c", "c", "c"], ["a", "b", "c"])
    >>> m["accuracy"], m["recall"]["b"], m["confusion"][1]
    (0.75, 0.0, [0, 0, 1])
    """
    labels, pred = np.asarray(labels).astype(str), np.asarray(pred).astype(str)
    names = [str(c) for c in classes]
    n = len(labels)
    k = int((labels == pred).sum())
    out: dict = {"n": n, "accuracy": k / n if n else None, "accuracy_ci": list(wilson_interval(k, n)) if n else None}
    recall, recall_ci = {}, {}
    for c in names:
        mask = labels == c
        hits, total = int((pred[mask] == c).sum()), int(mask.sum())
        recall[c] = hits / total if total else None
        recall_ci[c] = list(wilson_interval(hits, total)) if total else None
    present = [v for v in recall.values() if v is not None]
    out["balanced_accuracy"] = float(np.mean(present)) if present else None
    out["recall"], out["recall_ci"] = recall, recall_ci
    out["confusion"] = [[int(((labels == t) & (pred == p)).sum()) for p in names] for t in names]
    return out
