"""Cell classifiers: genetic-algorithm kNN (GkNN), SVM, plain kNN and the CNN of Thanh et al."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukoseg._lazy import lazy_exports

__all__ = [
    "CNNClassifier",
    "GeneticKNNClassifier",
    "SVMClassifier",
    "StackingFusion",
    "build_densenet121",
    "build_thanh_cnn",
    "export_numpy",
    "fuse_numpy",
    "make_knn",
    "make_svm",
    "numpy_predict_proba",
]

# Public name -> submodule, imported on first use: importing leukoseg.classify loads no scikit-learn.
_SUBMODULE = {
    "CNNClassifier": "cnn",
    "build_densenet121": "cnn",
    "build_thanh_cnn": "cnn",
    "export_numpy": "cnn",
    "numpy_predict_proba": "_cnn_numpy",
    "FAB_CRITERIA": "fab",
    "FABResult": "fab",
    "FABSettings": "fab",
    "fab_classify": "fab",
    "GeneticKNNClassifier": "gknn",
    "SVMClassifier": "svm",
    "make_knn": "knn",
    "make_svm": "svm",
    "ModelBundle": "bundle",
    "export_gknn": "bundle",
    "export_knn": "bundle",
    "export_svm": "bundle",
    "knn_predict_proba": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "svm_predict_proba": "bundle",
    "StackingFusion": "fusion",
    "fuse_numpy": "fusion",
}

if TYPE_CHECKING:
    from .cnn import CNNClassifier, build_densenet121, build_thanh_cnn, export_numpy, numpy_predict_proba
    from .fusion import StackingFusion, fuse_numpy
    from .gknn import GeneticKNNClassifier
    from .knn import make_knn
    from .svm import SVMClassifier, make_svm

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE)
