"""Plain k-nearest-neighbour reference classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["make_knn"]


def make_knn(*, n_neighbors: int = 5, weights: str = "uniform") -> Pipeline:
    """Unweighted-feature kNN on standardised features, the reference for :class:`GeneticKNNClassifier`.

    Parameters
    ----------
    n_neighbors : int, optional
        Number of neighbours (fixed, not tuned).
    weights : {"uniform", "distance"}, optional
        Neighbour votes, as in :class:`~sklearn.neighbors.KNeighborsClassifier`.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Unfitted ``StandardScaler -> KNeighborsClassifier``, with ``predict_proba``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]]); y = np.array([0, 0, 0, 1, 1, 1])
    >>> make_knn(n_neighbors=3).fit(X, y).predict([[0.05], [1.15]])
    array([0, 1])
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [("scale", StandardScaler()), ("knn", KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights))]
    )
