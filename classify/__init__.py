"""Cell classifiers: genetic-algorithm kNN (GkNN), SVM, plain kNN and the CNN of Thanh et al."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukoseg._lazy import lazy_exports

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
    "fuse_numpy": "_fusion_numpy",
}

__all__ = [
    "CNNClassifier",
    "FABResult",
    "FABSettings",
    "FAB_CRITERIA",
    "GeneticKNNClassifier",
    "ModelBundle",
    "SVMClassifier",
    "StackingFusion",
    "build_densenet121",
    "build_thanh_cnn",
    "export_gknn",
    "export_knn",
    "export_numpy",
    "export_svm",
    "fab_classify",
    "fuse_numpy",
    "knn_predict_proba",
    "load_bundle",
    "make_knn",
    "make_svm",
    "numpy_predict_proba",
    "save_bundle",
    "svm_predict_proba",
]

if TYPE_CHECKING:
    from .bundle import (
        ModelBundle,
        export_gknn,
        export_knn,
        export_svm,
        knn_predict_proba,
        load_bundle,
        save_bundle,
        svm_predict_proba,
    )
    from .cnn import CNNClassifier, build_densenet121, build_thanh_cnn, export_numpy, numpy_predict_proba
    from .fab import FAB_CRITERIA, FABResult, FABSettings, fab_classify
    from ._fusion_numpy import fuse_numpy
    from .fusion import StackingFusion
    from .gknn import GeneticKNNClassifier
    from .knn import make_knn
    from .svm import SVMClassifier, make_svm

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE)
