"""Cell classifiers: genetic-algorithm kNN (GkNN), SVM, plain kNN and the CNN of Thanh et al."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["GeneticKNNClassifier", "SVMClassifier", "make_knn", "make_svm"]

# Public name -> submodule, imported on first use: importing leukoseg.classify loads no scikit-learn.
_SUBMODULE = {
    "GeneticKNNClassifier": "gknn",
    "SVMClassifier": "svm",
    "make_knn": "knn",
    "make_svm": "svm",
}

if TYPE_CHECKING:
    from .gknn import GeneticKNNClassifier
    from .knn import make_knn
    from .svm import SVMClassifier, make_svm


def __getattr__(name: str):
    if name in _SUBMODULE:
        return getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
