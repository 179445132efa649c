"""The saved form of :class:`~leukoseg.classify.fusion.StackingFusion`, applied in NumPy alone.

Kept apart from :mod:`.fusion` (which imports scikit-learn and Keras) so that a model bundle fuses its
models' scores with NumPy only, by the same code that :func:`~leukoseg.classify.fuse_numpy` documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["expit", "fuse_numpy", "stack_inputs"]


def expit(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid without overflow for large ``|x|`` (``exp`` of a non-positive number only)."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def stack_inputs(X: np.ndarray, n_classes: int, n_inputs: int, eps: float) -> np.ndarray:
    """Logit of each model's positive-class probability (two classes), else each model's log-probabilities."""
    P = np.clip(np.asarray(X, np.float64).reshape(len(X), n_inputs, n_classes), eps, 1 - eps)
    if n_classes == 2:
        return np.log(P[:, :, 1]) - np.log1p(-P[:, :, 1])
    return np.log(P).reshape(len(X), n_inputs * n_classes)


def fuse_numpy(fusion: Mapping[str, Any], probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """Apply a fusion saved with :meth:`StackingFusion.to_dict` in NumPy (no Keras, no scikit-learn).

    Parameters
    ----------
    fusion : mapping
        The dict of :meth:`StackingFusion.to_dict`.
    probabilities : mapping of str to ndarray
        For two classes: each input model's positive-class probabilities, shape (n,); for more classes its
        (n, n_classes) probabilities.

    Returns
    -------
    ndarray
        Two classes: (n,) fused positive-class probabilities; more: (n, n_classes).

    Examples
    --------
    >>> fuse_numpy({"inputs": ["a"], "coef": [1.0], "intercept": 0.0, "eps": 1e-6}, {"a": np.array([0.2])})
    array([0.2])
    """
    eps = float(fusion["eps"])
    names = list(fusion["inputs"])
    if "classes" not in fusion:
        P = np.column_stack([np.asarray(probabilities[n], np.float64) for n in names])
        P = np.clip(P, eps, 1 - eps)
        logit = float(fusion["intercept"]) + (np.log(P) - np.log1p(-P)) @ np.asarray(fusion["coef"], np.float64)
        return expit(logit)
    k = len(fusion["classes"])
    X = np.concatenate([np.asarray(probabilities[n], np.float64).reshape(-1, k) for n in names], axis=1)
    z = stack_inputs(X, k, len(names), eps) @ np.asarray(fusion["coef"]) + np.asarray(fusion["intercept"])
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
