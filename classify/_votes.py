"""Neighbour vote weightings of the kNN classifiers, in NumPy only (shared by training and the bundle)."""

from __future__ import annotations

import numpy as np

__all__ = ["gaussian_vote"]


def gaussian_vote(distances: np.ndarray, *, width: float = 2.0) -> np.ndarray:
    """Neighbour weights of a Gaussian kernel whose width adapts to each query's neighbourhood.

    A `weights` callable for :class:`~sklearn.neighbors.KNeighborsClassifier` (and the `vote` of
    :class:`~leukoseg.classify.GeneticKNNClassifier`): for a query with neighbour distances
    ``d_1 <= ... <= d_k``, neighbour
    ``i`` gets ``exp(-2 * (d_i / d_k)**2)``, from 1 (at distance 0) down to ``exp(-2)`` (about 0.14) for the
    k-th. Near neighbours count more than far ones, which gives a continuous vote share (a finer
    ranking, hence a higher ROC AUC, than the ``k + 1`` possible values of equal votes) while the k-th
    neighbour still counts, so that the share stays close to the plain one; unlike inverse distances
    it is bounded at distance 0. A query whose neighbours all lie at distance 0 gets equal weights.

    Parameters
    ----------
    distances : (n_queries, k) ndarray
        Distances of the k nearest neighbours of each query (any order).
    width : float, optional
        The 2 of ``exp(-2 * (d_i / d_k)**2)``: larger weighs near neighbours more (``benchmarks/gknn_settings.py``
        compares widths through :func:`functools.partial`; a model bundle stores the default only).

    Returns
    -------
    (n_queries, k) ndarray of float64
        Weight of each neighbour, from ``exp(-width)`` to 1.

    Examples
    --------
    >>> gaussian_vote(np.array([[0.0, 1.0, 2.0]])).round(3)
    array([[1.   , 0.607, 0.135]])
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        return np.ones_like(d)
    kth = d.max(axis=1, keepdims=True)
    scaled = np.divide(d, kth, out=np.zeros_like(d), where=kth > 0)
    return np.exp(-width * scaled**2)
