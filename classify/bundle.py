"""A pickle-free bundle of trained cell classifiers, and their inference with NumPy alone.

Training (scikit-learn, Keras) and inference are split:

- **exporters** (:func:`export_gknn`, :func:`export_svm`, :func:`export_knn`; the CNN's is
  :func:`leukoseg.classify.cnn.export_numpy`) run where the estimators were fitted and turn each into a
  dict of plain arrays: numbers and strings, never objects;
- **NumPy predictors** (:func:`knn_predict_proba`, :func:`svm_predict_proba`; the CNN's is
  :func:`leukoseg.classify.numpy_predict_proba`) reproduce the estimators' ``predict_proba`` from
  those arrays (to 1e-9 for the kNNs and the SVM);
- :func:`save_bundle` writes the arrays as ``.npz`` files beside a ``bundle.json`` (format, versions,
  SHA-256 of every file, configuration, provenance), atomically; :func:`load_bundle` checks all of it
  and returns a :class:`ModelBundle`, whose :meth:`ModelBundle.predict_cells` gives each cell's blast
  probability per model, their baseline mean and an optional logistic fusion.

Importing this module, loading a bundle and predicting with its kNNs and SVM imports NumPy only (no
scikit-learn, Keras or TensorFlow): the command line starts in well under a second. Files are read with
``numpy.load(allow_pickle=False)``; nothing is ever unpickled.

On-disk layout::

    model/
        bundle.json      format "leukoseg-bundle", format_version, leukoseg_version, models, features,
                         fusion, files (name -> SHA-256), config, provenance
        features.npz     names (str), medians (float64): feature columns, and the values that replace
                         missing (NaN / inf) features
        gknn.npz         one file per model: kind, format_version, classes and the model's arrays
        svm.npz
        knn.npz
        cnn.npz          one network, or an ensemble whose probabilities are averaged (``n_members``,
                         ``member{i}_<key>``: the cross-fitted CNNs that ``leukoseg train`` ships)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import reprlib
import types
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoseg._version import __version__
from leukoseg.datasets import file_sha256
from leukoseg.errors import LeukosegError
from leukoseg.io import _own_folder_refusal, _refusal_to_replace, _staged_folder, _swap_folder, write_json

from ._fusion_numpy import expit as _expit
from ._fusion_numpy import fuse_numpy
from ._votes import gaussian_vote

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MODEL_NAMES",
    "ModelBundle",
    "export_gknn",
    "export_knn",
    "export_svm",
    "knn_predict_proba",
    "load_bundle",
    "save_bundle",
    "svm_predict_proba",
]

logger = logging.getLogger(__name__)

#: Value of ``format`` in ``bundle.json``.
BUNDLE_FORMAT = "leukoseg-bundle"
#: Version of the bundle layout and of the exported arrays; a bundle with a larger version is refused.
BUNDLE_FORMAT_VERSION = 1
#: Models a bundle may hold, in prediction order.
MODEL_NAMES = ("gknn", "svm", "knn", "cnn")

_MANIFEST = "bundle.json"
_FEATURES_FILE = "features.npz"
_KINDS = {"gknn": "knn", "knn": "knn", "svm": "svm", "cnn": "cnn"}
_EXPORT_ATOL = 1e-9  # exporters check the NumPy predictor against the estimator to this
_CNN_EXPORT_ATOL = 1e-4  # float32 network
_DIST_BLOCK = 1 << 20  # float64 values per block of the distance matrices (8 MiB)
_DBL_MAX = float(np.finfo(np.float64).max)
# A fusion fitted here weighs logits of at most 14 in size (probabilities clipped to 1e-6) by a few units; one
# of 1000 calls every cell by one input alone (or overflows): the bundle is damaged.
_FUSION_MAX_WEIGHT = 1000.0
# Bounds of the classification settings that load_bundle checks: beyond them a bundle is damaged, and would
# fail on, or exhaust the memory of, every image.
_MAX_TOP_K = 100  # image_rule.top_k, cells averaged into the image score (training picks 1 to 3)
_PATCH_SIDE = (8, 1024)  # patch size, pixels a side (the shipped model's: 50)
_PATCH_UM_PER_PX = (0.01, 100.0)  # patch um_per_px (the shipped model's: 0.5)
_MAX_FEATURE_UM = 50.0  # LBP radii and GLCM distances; a white cell is at most about 30 um across


# ----------------------------------------------------------------------------------------------------------
# Exporters (training side: these import scikit-learn)
# ----------------------------------------------------------------------------------------------------------


def export_gknn(estimator: Any, *, check_X: Any = None) -> dict[str, np.ndarray]:
    """Export a fitted :class:`~leukoseg.classify.gknn.GeneticKNNClassifier` as plain arrays.

    The arrays hold what its ``predict_proba`` uses: the standardisation, the feature weights, and the
    training rows, labels, number of neighbours and vote weighting of the kNN of each search (``runs_``;
    several searches become an ensemble whose votes are averaged, as the estimator does). The export is
    checked against ``estimator.predict_proba`` (probe rows between training rows, plus `check_X`), so an
    estimator whose scoring the NumPy predictor does not reproduce is refused rather than exported wrong.

    Parameters
    ----------
    estimator : GeneticKNNClassifier
        Fitted.
    check_X : array-like of shape (n, n_features_in_), optional
        More rows on which the export must agree with the estimator.

    Returns
    -------
    dict of str to ndarray
        Input of :func:`knn_predict_proba` (``kind`` ``'knn'``); no object arrays.

    Raises
    ------
    NotImplementedError
        If the estimator or its ``knn_`` uses a setting the NumPy predictor does not reproduce.
    ValueError
        If the export disagrees with ``estimator.predict_proba`` by more than 1e-9.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from leukoseg.classify import GeneticKNNClassifier
    >>> X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    >>> clf = GeneticKNNClassifier(population_size=4, n_generations=1, random_state=0).fit(X, y)
    >>> params = export_gknn(clf)
    >>> bool(np.allclose(knn_predict_proba(params, X), clf.predict_proba(X), rtol=0, atol=1e-9))
    True
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, ("scaler_", "runs_"))
    vote = getattr(estimator, "vote", "uniform")
    mean, scale = _scaler_arrays(estimator.scaler_, int(estimator.n_features_in_))
    members = []
    for run in estimator.runs_:  # one search, or several whose votes are averaged
        knn = run["knn"]
        if _vote_name(vote) is None or _vote_name(knn.weights) != _vote_name(vote):
            raise NotImplementedError(
                f"GkNN vote {vote!r} with a fitted kNN weighting {knn.weights!r} is not reproduced in NumPy; "
                "supported: 'uniform', 'distance' and gaussian_vote, the same in both"
            )
        if int(knn.n_neighbors) != int(run["k"]):
            raise NotImplementedError(f"GkNN k_={run['k']} differs from its kNN's n_neighbors={knn.n_neighbors}")
        support = np.asarray(run["support"], bool)
        weights = np.asarray(run["weights"], np.float64)
        if not np.array_equal(support, weights > 0):
            raise NotImplementedError("GkNN support_ is not weights_ > 0; the export would use other columns")
        members.append(
            _knn_arrays(knn, mean=mean, scale=scale, columns=np.flatnonzero(support), weights=weights[support])
        )
    params = members[0] if len(members) == 1 else _ensemble_arrays(members)
    _verify_knn("GeneticKNNClassifier", estimator, params, check_X)
    return params


def export_knn(estimator: Any, *, check_X: Any = None) -> dict[str, np.ndarray]:
    """Export the fitted plain kNN of :func:`~leukoseg.classify.knn.make_knn` as plain arrays.

    Parameters
    ----------
    estimator : sklearn.pipeline.Pipeline or sklearn.neighbors.KNeighborsClassifier
        Fitted ``StandardScaler -> KNeighborsClassifier`` (the scaler is optional).
    check_X : array-like of shape (n, n_features), optional
        More rows on which the export must agree with the estimator.

    Returns
    -------
    dict of str to ndarray
        Input of :func:`knn_predict_proba` (``kind`` ``'knn'``).

    Raises
    ------
    NotImplementedError
        If the pipeline has other steps, or the kNN another metric, weighting or algorithm setting that
        changes its result.
    ValueError
        If the export disagrees with ``estimator.predict_proba`` by more than 1e-9.

    Examples
    --------
    >>> from leukoseg.classify import make_knn
    >>> X = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]]); y = np.array([0, 0, 0, 1, 1, 1])
    >>> params = export_knn(make_knn(n_neighbors=3).fit(X, y))
    >>> knn_predict_proba(params, np.array([[0.05], [1.15]]))
    array([[1., 0.],
           [0., 1.]])
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
    else:
        steps = [estimator]
    if not steps or not isinstance(steps[-1], KNeighborsClassifier) or len(steps) > 2:
        raise NotImplementedError("expected a KNeighborsClassifier, alone or after a StandardScaler")
    knn = steps[-1]
    check_is_fitted(knn)
    n_features = int(knn.n_features_in_)
    if len(steps) == 2:
        mean, scale = _scaler_arrays(steps[0], n_features)
    else:
        mean, scale = np.zeros(n_features), np.ones(n_features)
    if knn.weights not in ("uniform", "distance"):
        raise NotImplementedError(
            f"kNN weights {knn.weights!r} are not reproduced in NumPy; use 'uniform' or 'distance'"
        )
    params = _knn_arrays(knn, mean=mean, scale=scale, columns=np.arange(n_features), weights=np.ones(n_features))
    _verify_knn(type(estimator).__name__, estimator, params, check_X)
    return params


def export_svm(estimator: Any, *, check_X: Any = None) -> dict[str, np.ndarray]:
    """Export a fitted :class:`~leukoseg.classify.svm.SVMClassifier` (every calibrated fold) as plain arrays.

    For each fold of its ``CalibratedClassifierCV(ensemble=True)``: the scaler's mean and scale, the RBF
    SVC's support vectors, dual coefficients, intercepts, support counts and numeric gamma, the fold's
    classes, and its calibrators (sigmoid ``a``, ``b``; isotonic thresholds and clipping range).

    Parameters
    ----------
    estimator : SVMClassifier or sklearn.calibration.CalibratedClassifierCV
        Fitted; the calibrated estimators are ``StandardScaler -> SVC(kernel='rbf')`` pipelines (or bare
        RBF SVCs), calibrated with ``method='sigmoid'`` or ``'isotonic'``.
    check_X : array-like of shape (n, n_features), optional
        More rows on which the export must agree with the estimator.

    Returns
    -------
    dict of str to ndarray
        Input of :func:`svm_predict_proba` (``kind`` ``'svm'``).

    Raises
    ------
    NotImplementedError
        For another kernel, calibration method or pipeline.
    ValueError
        If the export disagrees with ``estimator.predict_proba`` by more than 1e-9.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from leukoseg.classify import SVMClassifier
    >>> X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    >>> clf = SVMClassifier(C_grid=(1.0,), gamma_grid=("scale",), random_state=0).fit(X, y)
    >>> params = export_svm(clf)
    >>> bool(np.allclose(svm_predict_proba(params, X), clf.predict_proba(X), rtol=0, atol=1e-9))
    True
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.isotonic import IsotonicRegression
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC
    from sklearn.utils.validation import check_is_fitted

    calibrated = getattr(estimator, "calibrated_", estimator)
    if not isinstance(calibrated, CalibratedClassifierCV):
        raise NotImplementedError(
            f"expected an SVMClassifier or a CalibratedClassifierCV; got {type(estimator).__name__}"
        )
    check_is_fitted(calibrated)
    classes = _plain_classes(calibrated.classes_)
    params: dict[str, np.ndarray] = {
        "kind": np.array("svm"),
        "format_version": np.array(BUNDLE_FORMAT_VERSION, np.int64),
        "classes": classes,
        "n_folds": np.array(len(calibrated.calibrated_classifiers_), np.int64),
    }
    method = None
    for i, fold in enumerate(calibrated.calibrated_classifiers_):
        if fold.method not in ("sigmoid", "isotonic") or (method is not None and fold.method != method):
            raise NotImplementedError(
                f"calibration method {fold.method!r} is not reproduced; use 'sigmoid' or 'isotonic'"
            )
        method = fold.method
        model = fold.estimator
        steps = (
            [s for _, s in model.steps if s not in (None, "passthrough")] if isinstance(model, Pipeline) else [model]
        )
        svc = steps[-1]
        if not isinstance(svc, SVC) or len(steps) > 2:
            raise NotImplementedError("expected SVC, alone or after a StandardScaler, in every calibrated fold")
        if svc.kernel != "rbf":
            raise NotImplementedError(f"SVC kernel {svc.kernel!r} is not reproduced in NumPy; only 'rbf'")
        if len(svc.classes_) > 2 and svc.decision_function_shape != "ovr":
            raise NotImplementedError("multiclass SVC needs decision_function_shape='ovr' (the default)")
        n_features = int(svc.n_features_in_)
        if len(steps) == 2:
            mean, scale = _scaler_arrays(steps[0], n_features)
        else:
            mean, scale = np.zeros(n_features), np.ones(n_features)
        fold_classes = np.searchsorted(calibrated.classes_, svc.classes_)  # LabelEncoder.transform
        p = f"fold{i}_"
        params[p + "mean"] = mean
        params[p + "scale"] = scale
        params[p + "support_vectors"] = np.array(svc.support_vectors_, np.float64, order="C")
        params[p + "dual_coef"] = np.array(svc.dual_coef_, np.float64, order="C")
        params[p + "intercept"] = np.array(svc.intercept_, np.float64)
        params[p + "n_support"] = np.array(svc.n_support_, np.int64)
        params[p + "gamma"] = np.array(float(svc._gamma), np.float64)
        params[p + "class_index"] = np.array(fold_classes, np.int64)
        for j, cal in enumerate(fold.calibrators):
            c = f"{p}cal{j}_"
            if method == "sigmoid":
                params[c + "a"] = np.array(float(cal.a_), np.float64)
                params[c + "b"] = np.array(float(cal.b_), np.float64)
            else:
                if not isinstance(cal, IsotonicRegression) or cal.out_of_bounds != "clip":
                    raise NotImplementedError("isotonic calibrators must clip out-of-range decision values")
                params[c + "x"] = np.array(cal.X_thresholds_, np.float64)
                params[c + "y"] = np.array(cal.y_thresholds_, np.float64)
                params[c + "range"] = np.array([cal.X_min_, cal.X_max_], np.float64)
    params["method"] = np.array(method or "sigmoid")
    probes = [np.asarray(check_X, np.float64)] if check_X is not None else []
    sv = params["fold0_support_vectors"] * params["fold0_scale"] + params["fold0_mean"]
    probes.append(0.5 * (sv[:-1] + sv[1:])[:64] if len(sv) > 1 else sv)
    _verify(
        type(estimator).__name__,
        estimator.predict_proba,
        lambda X: svm_predict_proba(params, X),
        np.vstack(probes),
        _EXPORT_ATOL,
    )
    return params


def _scaler_arrays(scaler: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of a fitted StandardScaler (zeros / ones where it does not centre / scale)."""
    from sklearn.preprocessing import StandardScaler

    if not isinstance(scaler, StandardScaler):
        raise NotImplementedError(f"expected a StandardScaler before the classifier; got {type(scaler).__name__}")
    centred = scaler.with_mean and scaler.mean_ is not None
    scaled = scaler.with_std and scaler.scale_ is not None
    mean = np.asarray(scaler.mean_, np.float64) if centred else np.zeros(n_features)
    scale = np.asarray(scaler.scale_, np.float64) if scaled else np.ones(n_features)
    return np.array(mean, np.float64), np.array(scale, np.float64)


def _knn_arrays(
    knn: Any, *, mean: np.ndarray, scale: np.ndarray, columns: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    from sklearn.neighbors import KNeighborsClassifier

    if not isinstance(knn, KNeighborsClassifier):
        raise NotImplementedError(f"expected a KNeighborsClassifier; got {type(knn).__name__}")
    if knn.effective_metric_ != "euclidean" or (knn.effective_metric_params_ or {}):
        raise NotImplementedError(
            f"kNN metric {knn.metric!r} (p={knn.p}) is not reproduced in NumPy; only the Euclidean distance"
        )
    if knn.outputs_2d_:
        raise NotImplementedError("multi-output kNNs are not supported")
    fit_X = np.array(knn._fit_X, np.float64, order="C")
    return {
        "kind": np.array("knn"),
        "format_version": np.array(BUNDLE_FORMAT_VERSION, np.int64),
        "classes": _plain_classes(knn.classes_),
        "mean": np.array(mean, np.float64),
        "scale": np.array(scale, np.float64),
        "columns": np.array(columns, np.int64),
        "feature_weights": np.array(weights, np.float64),
        "fit_X": fit_X,
        "y": np.array(knn._y, np.int64),
        "n_neighbors": np.array(int(knn.n_neighbors), np.int64),
        "weights": np.array(_vote_name(knn.weights) or "unsupported"),
        "fit_method": np.array("brute" if knn._fit_method == "brute" else "tree"),
    }


#: Arrays of a kNN that differ between the members of an ensemble (the standardisation and classes do not).
_MEMBER_KEYS = ("columns", "feature_weights", "fit_X", "y", "n_neighbors", "weights", "fit_method")


def _ensemble_arrays(members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One flat array dict for several kNNs averaged (a GkNN with ``n_runs > 1``): ``member{i}_<key>``."""
    out = {key: value for key, value in members[0].items() if key not in _MEMBER_KEYS}
    out["n_members"] = np.array(len(members), np.int64)
    for i, member in enumerate(members):
        out.update({f"member{i}_{key}": member[key] for key in _MEMBER_KEYS})
    return out


def _knn_members(params: Mapping[str, np.ndarray]) -> list[Mapping[str, np.ndarray]]:
    """The single kNNs of exported arrays: itself, or the members of an ensemble."""
    if "n_members" not in params:
        return [params]
    shared = {key: value for key, value in params.items() if not key.startswith("member") and key != "n_members"}
    return [
        {**shared, **{key: params[f"member{i}_{key}"] for key in _MEMBER_KEYS}} for i in range(int(params["n_members"]))
    ]


def _cnn_ensemble_arrays(members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One flat array dict for CNNs whose probabilities are averaged: ``member{i}_<key>``.

    The classes and the input shape, which every member must share, are kept at the top as well (the
    bundle's checks and the positive column read them there).
    """
    first = members[0]
    for i, member in enumerate(members[1:], 1):
        if not np.array_equal(member["input_shape"], first["input_shape"]) or not np.array_equal(
            member["classes"], first["classes"]
        ):
            raise ValueError(f"CNN {i} of the ensemble takes other patches or classes than CNN 0")
    out = {key: first[key] for key in ("format_version", "classes", "input_shape")}
    out["kind"] = np.array("cnn")
    out["n_members"] = np.array(len(members), np.int64)
    for i, member in enumerate(members):
        out.update({f"member{i}_{key}": value for key, value in member.items() if key != "kind"})
    return out


def _cnn_members(params: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The single networks of exported CNN arrays: itself, or the members of an ensemble."""
    if "n_members" not in params:
        return [dict(params)]
    prefixes = [f"member{i}_" for i in range(int(params["n_members"]))]
    return [{key[len(p) :]: value for key, value in params.items() if key.startswith(p)} for p in prefixes]


def _vote_name(weights: Any) -> str | None:
    """The stored name of a kNN vote weighting ('uniform', 'distance', 'gaussian'); None if not reproducible."""
    # By name, not identity: a doctest run may import classify._votes a second time under another module
    # name. The export is checked against the estimator's own predictions anyway (_verify_knn).
    if weights is gaussian_vote or (
        getattr(weights, "__qualname__", None) == gaussian_vote.__qualname__
        and getattr(weights, "__module__", "").rpartition(".")[2] == "_votes"
    ):
        return "gaussian"
    if isinstance(weights, str) and weights in ("uniform", "distance"):
        return weights
    return None


def _verify_knn(name: str, estimator: Any, params: Mapping[str, np.ndarray], check_X: Any) -> None:
    """Check an exported kNN against its estimator on probe rows.

    Rows with training rows tied across the k-th distance are skipped where scikit-learn's choice among
    them is not reproducible (a tree-fitted kNN, or more than 256 training rows, which its brute force may
    split between threads).
    """
    members = _knn_members(params)
    probes = _knn_probes(members[0], check_X)
    reproducible_ties = all(str(m["fit_method"]) == "brute" and len(m["fit_X"]) <= 256 for m in members)
    keep = slice(None) if reproducible_ties else ~_knn_proba(params, probes)[1]
    if not len(probes[keep]):
        return
    _verify(name, estimator.predict_proba, lambda X: knn_predict_proba(params, X), probes[keep], _EXPORT_ATOL)


def _knn_probes(params: Mapping[str, np.ndarray], check_X: Any) -> np.ndarray:
    """Rows in the original feature space between consecutive training rows (and `check_X`)."""
    fit_X, cols, w = params["fit_X"], params["columns"], params["feature_weights"]
    mid = 0.5 * (fit_X[:-1] + fit_X[1:])[:64] if len(fit_X) > 1 else fit_X
    probes = np.tile(params["mean"], (len(mid), 1))
    probes[:, cols] = mid / w * params["scale"][cols] + params["mean"][cols]
    if check_X is not None:
        probes = np.vstack([np.asarray(check_X, np.float64), probes])
    return probes


def _plain_classes(classes: Any) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.dtype.kind == "O":
        classes = classes.astype(str)
    if classes.dtype.kind not in "iubUf":
        raise NotImplementedError(f"class labels of dtype {classes.dtype} cannot be exported")
    return classes.copy()


def _verify(name: str, reference, exported, X: np.ndarray, atol: float) -> None:
    expected = np.asarray(reference(X), np.float64)
    got = exported(X)
    if expected.shape != got.shape or not np.allclose(got, expected, rtol=0.0, atol=atol):
        gap = float(np.max(np.abs(got - expected))) if expected.shape == got.shape else float("inf")
        raise ValueError(
            f"the NumPy export of this {name} disagrees with its predict_proba (largest difference {gap:.3g}, "
            f"tolerance {atol:g}): the exporter does not reproduce this estimator (has its scoring changed?)"
        )


# ----------------------------------------------------------------------------------------------------------
# NumPy predictors (inference side: NumPy only)
# ----------------------------------------------------------------------------------------------------------


def knn_predict_proba(params: Mapping[str, np.ndarray], X: Any) -> np.ndarray:
    """Compute the class probabilities of an exported kNN (:func:`export_gknn`, :func:`export_knn`), with NumPy only.

    Reproduces scikit-learn's ``KNeighborsClassifier.predict_proba`` (brute force, Euclidean): uniform
    votes rank neighbours by directly summed squared differences, distance and Gaussian votes by
    scikit-learn's ``|x|^2 - 2 x.t + |t|^2`` (clipped at 0) and weigh them by the inverse of its square
    root, or by :func:`~leukoseg.classify._votes.gaussian_vote` of it; a query at
    distance 0 from training rows gets only their votes. Training rows tied at the k-th distance are
    chosen as scikit-learn's max-heap keeps them when it scans the training rows in order (its
    ``parallel_on_X`` strategy, always used for uniform votes; for distance votes it may instead split
    more than 256 training rows between threads when fewer queries than training rows come, and then
    keeps tied rows in a thread-count dependent way).

    Parameters
    ----------
    params : mapping of str to ndarray
        From :func:`export_gknn` or :func:`export_knn`, or their ``np.load``.
    X : array-like of shape (n, n_features)
        Finite features, in the training columns' order.

    Returns
    -------
    ndarray of shape (n, n_classes)
        Columns in the order of ``params['classes']``; rows sum to 1.

    Examples
    --------
    >>> params = {"mean": np.zeros(1), "scale": np.ones(1), "columns": np.array([0]),
    ...           "feature_weights": np.ones(1), "fit_X": np.array([[0.0], [1.0], [2.0]]),
    ...           "y": np.array([0, 1, 1]), "classes": np.array([0, 1]),
    ...           "n_neighbors": np.array(2), "weights": np.array("uniform")}
    >>> knn_predict_proba(params, [[0.2]])
    array([[0.5, 0.5]])
    """
    return _knn_proba(params, X)[0]


def _knn_proba(params: Mapping[str, np.ndarray], X: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_predict_proba`, and which rows had training rows tied across the k-th distance."""
    if "n_members" in params:  # an ensemble: the mean of its members' votes
        results = [_knn_proba(member, X) for member in _knn_members(params)]
        return np.mean([r[0] for r in results], axis=0), np.any([r[1] for r in results], axis=0)
    X = _check_features(X, len(params["mean"]))
    z = (X - params["mean"]) / params["scale"]
    query = np.ascontiguousarray(z[:, params["columns"]] * params["feature_weights"])
    train = np.asarray(params["fit_X"], np.float64)
    labels = np.asarray(params["y"], np.intp)
    k = int(params["n_neighbors"])
    n_classes = len(params["classes"])
    vote_kind = str(params["weights"])
    # Brute force ranks neighbours by scikit-learn's |x|^2 - 2 x.t + |t|^2; trees by direct sums.
    gemm = str(params.get("fit_method", "brute")) == "brute"
    out = np.zeros((len(query), n_classes))
    ambiguous = np.zeros(len(query), bool)
    if not len(query):
        return out, ambiguous
    train_sq = np.array([np.dot(t, t) for t in train]) if gemm else None
    block = max(1, _DIST_BLOCK // max(1, len(train)))
    for start in range(0, len(query), block):
        q = query[start : start + block]
        if train_sq is not None:  # gemm
            q_sq = np.array([np.dot(v, v) for v in q])
            middle = q @ train.T
            middle *= -2.0
            r = q_sq[:, None] + middle
            r += train_sq
            np.maximum(r, 0.0, out=r)
        else:
            r = _direct_sq_distances(q, train)
        neighbours, ambiguous[start : start + len(q)] = _argkmin(r, k)
        rows = np.arange(len(q))[:, None]
        if vote_kind == "gaussian":
            vote = gaussian_vote(np.sqrt(r[rows, neighbours]))
        elif vote_kind == "distance":
            dist = np.sqrt(r[rows, neighbours])
            with np.errstate(divide="ignore"):
                vote = 1.0 / dist
            inf_mask = np.isinf(vote)
            inf_row = inf_mask.any(axis=1)
            vote[inf_row] = inf_mask[inf_row]
        else:
            vote = np.ones(neighbours.shape)
        proba = out[start : start + len(q)]
        neighbour_labels = labels[neighbours]
        for i in range(k):  # neighbour rank by rank, as scikit-learn adds the votes
            proba[rows[:, 0], neighbour_labels[:, i]] += vote[:, i]
        proba /= proba.sum(axis=1, keepdims=True)
    return out, ambiguous


def _direct_sq_distances(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Squared distances summed feature by feature, in scikit-learn's (Cython) order."""
    r = np.zeros((len(query), len(train)))
    for j in range(query.shape[1]):
        d = query[:, j : j + 1] - train[:, j]
        d *= d
        r += d
    return r


def _argkmin(r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k smallest values of each row, sorted by value; ties kept as scikit-learn's heap does.

    Also returns which rows have a tie, or a near tie (rounding apart), across the k-th neighbour: there,
    which training row is kept depends on the exact rounding and order of the computation.
    """
    part = np.argpartition(r, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(r, part, axis=1).max(axis=1)
    for i in np.flatnonzero(np.count_nonzero(r <= kth[:, None], axis=1) > k):
        part[i] = _heap_argkmin(r[i].tolist(), k)
    if r.shape[1] > k:
        next_value = np.partition(r, k, axis=1)[:, k]
        ambiguous = next_value <= kth + 1e-9 * (1.0 + kth)
    else:
        ambiguous = np.zeros(len(r), bool)
    # Sort by distance, then index (scikit-learn's order among equal distances only changes rounding).
    part.sort(axis=1)
    by_value = np.argsort(np.take_along_axis(r, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, by_value, axis=1), ambiguous


def _heap_argkmin(values: list[float], k: int) -> list[int]:
    """The fixed-size max-heap of scikit-learn (``sklearn.utils._heap.heap_push``), fed in index order."""
    heap_v = [_DBL_MAX] * k
    heap_i = [-1] * k
    for idx, val in enumerate(values):
        if val >= heap_v[0]:
            continue
        cur = 0
        while True:
            left = 2 * cur + 1
            right = left + 1
            if left >= k:
                break
            if right >= k:
                if heap_v[left] > val:
                    swap = left
                else:
                    break
            elif heap_v[left] >= heap_v[right]:
                if val < heap_v[left]:
                    swap = left
                else:
                    break
            elif val < heap_v[right]:
                swap = right
            else:
                break
            heap_v[cur] = heap_v[swap]
            heap_i[cur] = heap_i[swap]
            cur = swap
        heap_v[cur] = val
        heap_i[cur] = idx
    return heap_i


def svm_predict_proba(params: Mapping[str, np.ndarray], X: Any) -> np.ndarray:
    """Calibrated class probabilities of an exported SVM (:func:`export_svm`), with NumPy only.

    For each fold: standardise, RBF decision values (binary: one column; multiclass: one-vs-one values
    turned into one-vs-rest scores as scikit-learn's ``SVC.decision_function``), calibrate each column
    (sigmoid ``1 / (1 + exp(a f + b))``, or isotonic interpolation after clipping to the fitted range),
    then ``p0 = 1 - p1`` (binary) or normalise (multiclass; all-zero rows become uniform); values within
    1e-5 above 1 become 1. The folds' probabilities are averaged.

    Parameters
    ----------
    params : mapping of str to ndarray
        From :func:`export_svm`, or its ``np.load``.
    X : array-like of shape (n, n_features)
        Finite features.

    Returns
    -------
    ndarray of shape (n, n_classes)
        Columns in the order of ``params['classes']``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from leukoseg.classify import SVMClassifier
    >>> X, y = make_classification(n_samples=60, n_features=4, random_state=1)
    >>> params = export_svm(SVMClassifier(C_grid=(1.0,), gamma_grid=("scale",), random_state=0).fit(X, y))
    >>> svm_predict_proba(params, X[:2]).sum(axis=1)
    array([1., 1.])
    """
    X = _check_features(X, len(params["fold0_mean"]))
    n_classes = len(params["classes"])
    method = str(params["method"])
    n_folds = int(params["n_folds"])
    mean_proba = np.zeros((len(X), n_classes))
    for i in range(n_folds):
        p = f"fold{i}_"
        z = (X - params[p + "mean"]) / params[p + "scale"]
        decision = _svc_decision(params, p, z)
        proba = np.zeros((len(X), n_classes))
        # As scikit-learn's _CalibratedClassifier: zip(class indices, decision columns, calibrators).
        for j, class_idx in zip(range(decision.shape[1]), params[p + "class_index"].tolist()):
            if n_classes == 2:
                class_idx += 1  # binary: the single decision column is that of the second class
            c = f"{p}cal{j}_"
            f = decision[:, j]
            if method == "sigmoid":
                proba[:, class_idx] = _expit(-(params[c + "a"] * f + params[c + "b"]))
            else:
                lo, hi = params[c + "range"]
                proba[:, class_idx] = np.interp(np.clip(f, lo, hi), params[c + "x"], params[c + "y"])
        if n_classes == 2:
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            denominator = proba.sum(axis=1)[:, None]
            proba = np.divide(proba, denominator, out=np.full_like(proba, 1 / n_classes), where=denominator != 0)
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        mean_proba += proba
    mean_proba /= n_folds
    return mean_proba


def _svc_decision(params: Mapping[str, np.ndarray], p: str, z: np.ndarray) -> np.ndarray:
    """``SVC.decision_function`` of one fold: (n,) column for 2 classes, (n, n_classes) 'ovr' scores else."""
    sv = params[p + "support_vectors"]
    coef = params[p + "dual_coef"]
    intercept = params[p + "intercept"]
    n_support = params[p + "n_support"]
    # |z|^2 - 2 z.s + |s|^2 by matrix product: rounding differs from libsvm's by far less than 1e-9.
    kernel = z @ sv.T
    kernel *= -2.0
    kernel += np.einsum("ij,ij->i", z, z)[:, None]
    kernel += np.einsum("ij,ij->i", sv, sv)
    np.maximum(kernel, 0.0, out=kernel)
    kernel *= -float(params[p + "gamma"])
    np.exp(kernel, out=kernel)
    n_cls = len(n_support)
    if n_cls == 2:
        return (kernel @ coef[0] + intercept[0])[:, None]
    bounds = np.concatenate([[0], np.cumsum(n_support)])
    ovo: list[np.ndarray] = []
    for a in range(n_cls):
        for b in range(a + 1, n_cls):
            sa, sb = slice(bounds[a], bounds[a + 1]), slice(bounds[b], bounds[b + 1])
            ovo.append(kernel[:, sa] @ coef[b - 1, sa] + kernel[:, sb] @ coef[a, sb] + intercept[len(ovo)])
    dec = np.stack(ovo, axis=1)
    # sklearn.utils.multiclass._ovr_decision_function(dec < 0, -dec, n_classes)
    votes = np.zeros((len(z), n_cls))
    confidence = np.zeros((len(z), n_cls))
    k = 0
    for a in range(n_cls):
        for b in range(a + 1, n_cls):
            confidence[:, a] -= -dec[:, k]
            confidence[:, b] += -dec[:, k]
            votes[dec[:, k] >= 0, a] += 1
            votes[dec[:, k] < 0, b] += 1
            k += 1
    return votes + confidence / (3 * (np.abs(confidence) + 1))


def _check_features(X: Any, n_features: int) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"features must have shape (n, {n_features}); got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("features hold NaN or infinite values; impute them first")
    return X


# ----------------------------------------------------------------------------------------------------------
# The bundle
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """Loaded, checked bundle of exported models: see :func:`load_bundle`.

    Attributes
    ----------
    path : pathlib.Path
        The bundle folder.
    format_version : int
        Bundle format version it was written with.
    leukoseg_version : str
        Version of leukoseg that wrote it.
    models : mapping of str to mapping of str to ndarray
        Exported arrays of each model (``'gknn'``, ``'svm'``, ``'knn'``, ``'cnn'``), read-only.
    positive_class : int or str
        The class whose probability :meth:`predict_cells` reports (``config['positive_class']``, default 1).
    feature_names : tuple of str or None
        Feature columns, in order.
    feature_medians : ndarray or None
        Replacement of each missing (NaN / inf) feature value.
    fusion : mapping or None
        ``{"inputs": [...], "coef": [...], "intercept": b, "eps": e}``.
    config, provenance : mapping
        As given to :func:`save_bundle`.
    """

    path: Path
    format_version: int
    leukoseg_version: str
    models: Mapping[str, Mapping[str, np.ndarray]]
    positive_class: Any
    feature_names: tuple[str, ...] | None
    feature_medians: np.ndarray | None
    fusion: Mapping[str, Any] | None
    config: Mapping[str, Any]
    provenance: Mapping[str, Any]

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the scores :meth:`predict_cells` returns: the models, ``'baseline'``, ``'fused'``."""
        names = [m for m in MODEL_NAMES if m in self.models]
        if "gknn" in self.models and "svm" in self.models:
            names.append("baseline")
        if self.fusion is not None:
            names.append("fused")
        return tuple(names)

    @property
    def n_features(self) -> int | None:
        """Number of feature columns the feature models take (None with only a CNN)."""
        for name in ("gknn", "svm", "knn"):
            if name in self.models:
                arrays = self.models[name]
                return len(arrays["mean"] if "mean" in arrays else arrays["fold0_mean"])
        return None if self.feature_names is None else len(self.feature_names)

    def predict_cells(
        self,
        features: Any = None,
        patches: Any = None,
        *,
        feature_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Blast probability of each cell from every model of the bundle.

        Parameters
        ----------
        features : (n, f) array-like of float, optional
            Cell features, columns in the bundle's order; NaN and inf are replaced by the bundle's medians.
            Needed when the bundle has a feature model. Not modified.
        patches : (n, H, W, 3) ndarray of uint8, optional
            Cell patches; needed when the bundle has a CNN. Not modified.
        feature_names : sequence of str, optional
            Names of the columns of `features`; must equal the bundle's.

        Returns
        -------
        dict of str to ndarray of shape (n,)
            One entry per model, plus ``'baseline'`` (mean of ``'gknn'`` and ``'svm'``, when both are
            present) and ``'fused'`` (when the bundle has a fusion): probabilities of `positive_class`.

        Raises
        ------
        ValueError
            If an input is missing or has the wrong shape, or the feature names differ.
        LeukosegError
            If a model gives scores that are not probabilities (damaged weights that passed the load checks).

        Examples
        --------
        >>> bundle = load_bundle("model")  # doctest: +SKIP
        >>> bundle.predict_cells(features, patches)["baseline"]  # doctest: +SKIP
        array([0.91, 0.07])
        """
        out: dict[str, np.ndarray] = {}
        feature_models = [m for m in MODEL_NAMES if m in self.models and m != "cnn"]
        X = None
        if feature_models:
            if features is None:
                raise ValueError(f"features are needed by {', '.join(feature_models)}")
            X = self._prepare_features(features, feature_names)
        for name in feature_models:
            arrays = self.models[name]
            predict = knn_predict_proba if _KINDS[name] == "knn" else svm_predict_proba
            out[name] = predict(arrays, X)[:, self._positive_column(name)]
        if "cnn" in self.models:
            if patches is None:
                raise ValueError("patches are needed by the CNN of this bundle")
            from ._cnn_numpy import numpy_predict_proba

            patches = np.asarray(patches)
            if X is not None and len(patches) != len(X):
                raise ValueError(f"{len(patches)} patches for {len(X)} rows of features")
            # An ensemble (the cross-fitted CNNs of train) scores a cell with its members' mean, as the
            # experiment's test cells were scored.
            proba = np.mean([numpy_predict_proba(m, patches) for m in _cnn_members(self.models["cnn"])], axis=0)
            out["cnn"] = proba[:, self._positive_column("cnn")]
        if "gknn" in out and "svm" in out:
            out["baseline"] = 0.5 * (out["gknn"] + out["svm"])
        if self.fusion is not None:
            out["fused"] = fuse_numpy(self.fusion, out)
        for name, p in out.items():  # a NaN would compare below every threshold: a silent 'normal'
            if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
                raise LeukosegError(self.path, f"its {name!r} scores are not probabilities in [0, 1] (NaN or "
                                    "out of range): the bundle's weights are damaged")  # fmt: skip
        return out

    def _prepare_features(self, features: Any, feature_names: Sequence[str] | None) -> np.ndarray:
        X = np.array(features, dtype=np.float64, copy=True)
        n_features = self.n_features
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"features must have shape (n, {n_features}); got {X.shape}")
        if feature_names is not None and self.feature_names is not None:
            names = tuple(str(n) for n in feature_names)
            if names != self.feature_names:
                bad = next((i for i, (a, b) in enumerate(zip(names, self.feature_names)) if a != b), None)
                where = (
                    f"column {bad} is {names[bad]!r}, the bundle's is {self.feature_names[bad]!r}"
                    if bad is not None
                    else f"{len(names)} names for the bundle's {len(self.feature_names)}"
                )
                raise ValueError(f"feature names differ from the bundle's: {where}")
        missing = ~np.isfinite(X)
        if missing.any():
            if self.feature_medians is None:
                raise ValueError("features hold NaN or infinite values and the bundle has no medians to replace them")
            X[missing] = np.broadcast_to(self.feature_medians, X.shape)[missing]
        return X

    def _positive_column(self, name: str) -> int:
        return _positive_column(self.models[name]["classes"], self.positive_class)


def _positive_column(classes: np.ndarray, positive: Any) -> int:
    hits = np.flatnonzero([c == positive or str(c) == str(positive) for c in classes.tolist()])
    if len(hits) != 1:
        raise ValueError(f"positive class {positive!r} is not one of the classes {classes.tolist()}")
    return int(hits[0])


def save_bundle(
    directory: str | os.PathLike[str],
    *,
    models: Mapping[str, Any],
    fusion: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    feature_names: Sequence[str] | None = None,
    feature_medians: Any = None,
    check_features: Any = None,
    check_patches: Any = None,
    overwrite: bool = False,
) -> Path:
    """Export fitted models and write them as a bundle folder, atomically.

    The bundle is written into a hidden temporary folder beside `directory`, loaded back and checked
    with :func:`load_bundle`, then renamed into place: an error or an interrupt leaves no half-written
    bundle (with `overwrite`, the old bundle is moved aside just before the rename and deleted after).

    Parameters
    ----------
    directory : str or os.PathLike
        The bundle folder to create.
    models : mapping of str to estimator or dict of ndarray
        Fitted estimators keyed ``'gknn'`` (GeneticKNNClassifier), ``'svm'`` (SVMClassifier), ``'knn'``
        (:func:`~leukoseg.classify.knn.make_knn` pipeline), ``'cnn'`` (CNNClassifier, or a list of them whose
        probabilities are averaged); or their exports.
    fusion : mapping, optional
        ``{"inputs": [names], "coef": [floats], "intercept": float, "eps": float}``: ``p_fused =
        sigmoid(intercept + sum_i coef_i * logit(clip(p_i, eps, 1 - eps)))``; inputs among the models
        and ``'baseline'``.
    config : mapping, optional
        JSON-able settings (e.g. ``positive_class``, default 1; segmentation settings the models expect).
    provenance : mapping, optional
        JSON-able record of how the models were trained (data, code version, scores).
    feature_names : sequence of str, optional
        Names of the feature columns, in order.
    feature_medians : array-like of shape (n_features,), optional
        Finite per-column replacements of missing feature values (training medians).
    check_features, check_patches : array-like, optional
        Extra rows / patches on which every export must agree with its estimator.
    overwrite : bool, optional
        Replace an existing bundle at `directory`. Only a bundle (a ``bundle.json`` of format
        ``leukoseg-bundle``) or an empty folder is ever replaced; any other folder or file is refused.

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Raises
    ------
    FileExistsError
        If `directory` exists and `overwrite` is false, or it exists and is not a bundle or an empty folder.
    ValueError, TypeError
        If a model name, the fusion, the feature arrays or the config are invalid, or `directory` is ``.`` or
        ``..``.

    Examples
    --------
    >>> save_bundle("model", models={"gknn": gknn, "svm": svm}, config={"positive_class": 1},
    ...             provenance={"dataset": "ALL-IDB1"}, feature_names=names, feature_medians=medians)  # doctest: +SKIP
    PosixPath('model')
    """
    target = Path(directory)
    _check_replaceable(target, overwrite=overwrite)
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if not models or unknown:
        raise ValueError(f"models must be keyed by some of {', '.join(MODEL_NAMES)}; got {sorted(models)}")
    config = dict(config or {})
    provenance = dict(provenance or {})
    for label, value in (("config", config), ("provenance", provenance)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{label} must be JSON-able (plain str, int, float, bool, list, dict): {exc}") from None
    positive = config.get("positive_class", 1)
    if fusion is not None:
        baseline = {"baseline"} if {"gknn", "svm"} <= set(models) else set()
        fusion = _check_fusion(fusion, available=set(models) | baseline)

    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in MODEL_NAMES:
        if name in models:
            arrays[name] = _export(name, models[name], check_features, check_patches)
            _positive_column(arrays[name]["classes"], positive)
    n_features = {
        len(a["mean"] if "mean" in a else a["fold0_mean"]) for n, a in arrays.items() if n != "cnn"
    }
    if len(n_features) > 1:
        raise ValueError(f"the feature models take different numbers of features: {sorted(n_features)}")
    features = _feature_arrays(feature_names, feature_medians, next(iter(n_features), None))
    if features is not None:
        arrays["features"] = features

    target.parent.mkdir(parents=True, exist_ok=True)
    with _staged_folder(target) as tmp:
        files: dict[str, str] = {}
        for name, content in arrays.items():
            file_name = f"{name}.npz"
            for key, array in content.items():
                if np.asarray(array).dtype.kind == "O":
                    raise TypeError(f"{name} array {key!r} holds Python objects; it cannot be saved without pickle")
            with open(tmp / file_name, "wb") as f:
                np.savez(f, **content)  # type: ignore[arg-type]  # (for mypy, a key could be savez's allow_pickle)
            files[file_name] = file_sha256(tmp / file_name)
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "leukoseg_version": __version__,
            "models": {
                name: {
                    "file": f"{name}.npz",
                    "kind": _KINDS[name],
                    "estimator": _estimator_name(models[name]),
                    "classes": arrays[name]["classes"].tolist(),
                }
                for name in MODEL_NAMES
                if name in arrays
            },
            "features": None if features is None else {"file": _FEATURES_FILE, "n_features": len(features["names"])},
            "fusion": fusion,
            "files": files,
            "config": config,
            "provenance": provenance,
        }
        write_json(tmp / _MANIFEST, manifest)
        load_bundle(tmp)  # everything readable and consistent before it takes the final name
        _replace_folder(tmp, target, overwrite=overwrite)
    logger.info("Saved model bundle %s (%s)", target, ", ".join(arrays))
    return target


def _export(name: str, model: Any, check_features: Any, check_patches: Any) -> dict[str, np.ndarray]:
    if name == "cnn" and isinstance(model, (list, tuple)):
        if not model:
            raise ValueError("the CNN ensemble given is empty")
        members = [_export(name, m, check_features, check_patches) for m in model]
        return members[0] if len(members) == 1 else _cnn_ensemble_arrays(members)
    if isinstance(model, Mapping):
        arrays = {k: np.asarray(v) for k, v in model.items()}
        if name == "cnn":
            arrays.setdefault("kind", np.array("cnn"))
        if "kind" not in arrays or str(arrays["kind"]) != _KINDS[name]:
            raise ValueError(f"the export given for {name!r} is not a {_KINDS[name]!r} export")
        return arrays
    if name == "gknn":
        return export_gknn(model, check_X=check_features)
    if name == "svm":
        return export_svm(model, check_X=check_features)
    if name == "knn":
        return export_knn(model, check_X=check_features)
    from .cnn import export_numpy, numpy_predict_proba

    arrays = dict(export_numpy(model))
    arrays["kind"] = np.array("cnn")
    if check_patches is not None:
        _verify(
            "CNNClassifier",
            model.predict_proba,
            lambda P: numpy_predict_proba(arrays, P),
            check_patches,
            _CNN_EXPORT_ATOL,
        )
    return arrays


def _estimator_name(model: Any) -> str:
    if isinstance(model, (list, tuple)):  # a CNN ensemble
        names = sorted({_estimator_name(m) for m in model})
        return f"ensemble of {len(model)} {'/'.join(names)}"
    return "export" if isinstance(model, Mapping) else type(model).__name__


def _feature_arrays(names: Sequence[str] | None, medians: Any, n_features: int | None) -> dict[str, np.ndarray] | None:
    if names is None and medians is None:
        return None
    if names is None or medians is None:
        raise ValueError("give feature_names and feature_medians together")
    names_arr = np.array([str(n) for n in names], dtype=str)
    medians_arr = np.array(medians, np.float64).reshape(-1)
    if len(set(names_arr.tolist())) != len(names_arr):
        raise ValueError("feature_names must be unique")
    if len(medians_arr) != len(names_arr) or (n_features is not None and len(names_arr) != n_features):
        raise ValueError(
            f"{len(names_arr)} feature names and {len(medians_arr)} medians for models taking {n_features} features"
        )
    if not np.isfinite(medians_arr).all():
        raise ValueError("feature_medians must be finite")
    return {"names": names_arr, "medians": medians_arr}


def _check_fusion(fusion: Mapping[str, Any], *, available: set[str]) -> dict[str, Any]:
    """A validated, JSON-ready copy of a fusion; ValueError naming the problem otherwise."""
    if not isinstance(fusion, Mapping):
        raise ValueError("fusion must be a mapping")
    missing = {"inputs", "coef", "intercept"} - set(fusion)
    if missing:
        raise ValueError(f"fusion lacks {', '.join(sorted(missing))}")
    extra = set(fusion) - {"inputs", "coef", "intercept", "eps"}
    if extra:
        raise ValueError(f"fusion has unknown keys {', '.join(sorted(extra))}")
    inputs = fusion["inputs"]
    coef = fusion["coef"]
    if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
        raise ValueError("fusion inputs must be a non-empty list of model names")
    inputs = [str(i) for i in inputs]
    if len(set(inputs)) != len(inputs) or not set(inputs) <= available:
        raise ValueError(f"fusion inputs {inputs} must be distinct, among {sorted(available)}")
    if isinstance(coef, (str, bytes)) or not isinstance(coef, Sequence) or len(coef) != len(inputs):
        raise ValueError("fusion coef must be a list with one number per input")
    numbers = [*coef, fusion["intercept"], fusion.get("eps", 1e-6)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise ValueError("fusion coef, intercept and eps must be finite numbers")
    if any(abs(v) > _FUSION_MAX_WEIGHT for v in [*coef, fusion["intercept"]]):
        raise ValueError(f"fusion coef and intercept must be at most {_FUSION_MAX_WEIGHT:g} in size")
    eps = float(fusion.get("eps", 1e-6))
    if not 0.0 < eps < 0.5:
        raise ValueError(f"fusion eps must be in (0, 0.5); got {eps}")
    return {"inputs": inputs, "coef": [float(c) for c in coef], "intercept": float(fusion["intercept"]), "eps": eps}


def _check_replaceable(target: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Whether a bundle may be written at `target`: it is absent, or `overwrite` and it is a bundle or empty.

    Parameters
    ----------
    target : str or os.PathLike
        The bundle folder to be written.
    overwrite : bool
        Whether an existing bundle may be replaced.

    Raises
    ------
    FileExistsError
        If `target` exists and `overwrite` is false, or it is a file, a link, or a folder that is neither
        empty nor a bundle (``--overwrite`` must never delete someone's other files).
    ValueError
        If `target` is ``.`` or ``..``.
    """
    target = Path(target)
    why = _own_folder_refusal(target, "bundle")
    if why is not None:
        raise ValueError(f"{target} {why}")
    if not overwrite and (target.exists() or target.is_symlink()):
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    why = _refusal_to_replace(target, _is_bundle, "valid bundle.json")
    if why is not None:
        raise FileExistsError(f"{target} exists and is not a leukoseg model bundle ({why}); not replaced")


def _is_bundle(folder: Path) -> bool:
    """Whether `folder` holds a ``bundle.json`` of format ``leukoseg-bundle`` (its content is not checked)."""
    try:
        manifest = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def _replace_folder(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if target.exists() or target.is_symlink():
        _check_replaceable(target, overwrite=overwrite)  # again: the folder may have changed while fitting
    _swap_folder(tmp, target)


# ----------------------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------------------


def load_bundle(directory: str | os.PathLike[str]) -> ModelBundle:
    """Read and check a bundle written by :func:`save_bundle`; imports NumPy only, never unpickles.

    Checks, in order: ``bundle.json`` is readable JSON with format ``leukoseg-bundle`` and a format version
    this leukoseg reads; every listed file exists and has its SHA-256; every ``.npz`` opens with
    ``allow_pickle=False`` (object arrays are refused) and holds the arrays its model needs, with
    consistent shapes and finite values (a CNN's layers are also run on one blank patch,
    :func:`~leukoseg.classify._cnn_numpy.check_params`); the fusion is valid; the classification settings
    of ``config`` that are present are usable (``_check_config``). A damaged bundle thus fails here, once,
    not on every image.

    Parameters
    ----------
    directory : str or os.PathLike
        The bundle folder.

    Returns
    -------
    ModelBundle
        The checked bundle: its models, feature columns, fusion and settings.

    Raises
    ------
    LeukosegError
        On any problem, naming the file at fault, with a one-line reason.

    Examples
    --------
    >>> bundle = load_bundle("model")  # doctest: +SKIP
    >>> sorted(bundle.models)  # doctest: +SKIP
    ['gknn', 'svm']
    """
    root = Path(directory)
    manifest_path = root / _MANIFEST
    try:
        is_dir, exists, has_manifest = root.is_dir(), root.exists(), manifest_path.is_file()
    except OSError as exc:  # e.g. a folder that may not be searched
        raise LeukosegError(root, f"cannot read this model bundle folder ({_one_line(exc)})") from None
    if not is_dir:
        raise LeukosegError(root, "is a file, not a model bundle folder" if exists else "no such model bundle folder")
    if not has_manifest:
        raise LeukosegError(manifest_path, "missing: not a leukoseg model bundle")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LeukosegError(manifest_path, f"cannot read ({_one_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise LeukosegError(manifest_path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:  # the json module recurses once per nesting level
        raise LeukosegError(manifest_path, "not a leukoseg model bundle (JSON nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise LeukosegError(
            manifest_path, f"not a leukoseg model bundle (format {_short(found)}, expected {BUNDLE_FORMAT!r})"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LeukosegError(manifest_path, f"invalid format_version {_short(version)}")
    if version > BUNDLE_FORMAT_VERSION:
        raise LeukosegError(
            manifest_path,
            f"bundle format version {_short(version)} was written by a newer leukoseg "
            f"({str(manifest.get('leukoseg_version', '?'))[:20]}); this one ({__version__}) reads up to "
            f"{BUNDLE_FORMAT_VERSION}: upgrade leukoseg",
        )

    files = _manifest_field(manifest, "files", dict, manifest_path)
    models_meta = _manifest_field(manifest, "models", dict, manifest_path)
    config = _manifest_field(manifest, "config", dict, manifest_path)
    provenance = _manifest_field(manifest, "provenance", dict, manifest_path)
    features_meta = manifest.get("features")
    if not models_meta:
        raise LeukosegError(manifest_path, "lists no models")
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or not name.endswith(".npz"):
            raise LeukosegError(manifest_path, f"invalid file name {_short(name)} in 'files' (plain .npz names only)")
        path = root / name
        if not path.is_file():
            raise LeukosegError(path, "missing from the bundle")
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise LeukosegError(path, f"cannot read ({_one_line(exc)})") from None
        if actual != digest:
            raise LeukosegError(
                path,
                f"checksum mismatch (SHA-256 {actual[:12]}..., bundle.json says {str(digest)[:12]}...): "
                "file changed or corrupt",
            )

    owners: dict[str, str] = {}

    def listed(file_name: Any, owner: str) -> Path:
        if not isinstance(file_name, str) or file_name not in files:
            raise LeukosegError(manifest_path, f"refers to {_short(file_name)}, which is not in its 'files' checksums")
        if file_name in owners:  # save_bundle gives every part its own file: one model read as another is damage
            raise LeukosegError(manifest_path, f"{owners[file_name]} and {owner} both refer to {file_name}")
        owners[file_name] = owner
        return root / file_name

    models: dict[str, Mapping[str, np.ndarray]] = {}
    for name in MODEL_NAMES:
        if name not in models_meta:
            continue
        meta = models_meta[name]
        if not isinstance(meta, dict):
            raise LeukosegError(manifest_path, f"model {name!r} entry is not an object")
        path = listed(meta.get("file"), f"model {name!r}")
        arrays: Mapping[str, np.ndarray] = _read_npz(path)
        _check_model_arrays(name, arrays, path)
        _check_model_entry(name, meta, arrays, manifest_path)
        models[name] = types.MappingProxyType(arrays)
    unknown = sorted(set(models_meta) - set(MODEL_NAMES))
    if unknown:
        raise LeukosegError(
            manifest_path, f"unknown models {_short(unknown)}; this leukoseg knows {', '.join(MODEL_NAMES)}"
        )

    # The models' probability columns are combined (baseline, fusion) by position: one set of classes.
    first = next(iter(models))
    for name, arrays in models.items():
        if not np.array_equal(arrays["classes"], models[first]["classes"]):
            raise LeukosegError(
                root / models_meta[name]["file"], f"has classes {_short(arrays['classes'].tolist())}; the "
                f"bundle's {first!r} model has {_short(models[first]['classes'].tolist())}"
            )  # fmt: skip
    class_names = [str(c) for c in models[first]["classes"].tolist()]  # as config writes them
    if "classes" in config and config["classes"] != class_names:
        raise LeukosegError(
            manifest_path, f"config classes {_short(config['classes'])} are not the models' classes "
            f"{_short(class_names)}"
        )  # fmt: skip
    if not isinstance(manifest.get("leukoseg_version", ""), str):
        raise LeukosegError(
            manifest_path, f"leukoseg_version must be a string; got {_short(manifest['leukoseg_version'])}"
        )
    n_features = {
        len(a["mean"] if "mean" in a else a["fold0_mean"]) for n, a in models.items() if n != "cnn"
    }
    if len(n_features) > 1:
        raise LeukosegError(
            manifest_path, f"its feature models take different numbers of features {sorted(n_features)}"
        )
    feature_names = feature_medians = None
    if features_meta is not None:
        if not isinstance(features_meta, dict):
            raise LeukosegError(manifest_path, "'features' is not an object")
        path = listed(features_meta.get("file"), "'features'")
        arrays = _read_npz(path)
        names, medians = arrays.get("names"), arrays.get("medians")
        if names is None or medians is None or names.dtype.kind != "U" or names.ndim != 1:
            raise LeukosegError(path, "needs a 1-D string array 'names' and a float array 'medians'")
        if medians.shape != names.shape or medians.dtype.kind != "f" or not np.isfinite(medians).all():
            raise LeukosegError(path, f"'medians' must be {len(names)} finite floats; got shape {medians.shape}")
        if n_features and len(names) not in n_features:
            raise LeukosegError(path, f"names {len(names)} features; the models take {n_features.pop()}")
        declared = features_meta.get("n_features", len(names))
        if isinstance(declared, bool) or not isinstance(declared, int) or declared != len(names):
            raise LeukosegError(
                manifest_path, f"'features' n_features {_short(declared)} is not the {len(names)} names of {path.name}"
            )
        feature_names = tuple(names.tolist())
        feature_medians = medians.astype(np.float64)
        feature_medians.setflags(write=False)

    positive = config.get("positive_class", 1)
    for name, arrays in models.items():
        try:
            _positive_column(arrays["classes"], positive)
        except ValueError as exc:
            raise LeukosegError(root / models_meta[name]["file"], _one_line(exc)) from None
    fusion = manifest.get("fusion")
    if fusion is not None:
        available = set(models) | ({"baseline"} if {"gknn", "svm"} <= set(models) else set())
        try:
            fusion = types.MappingProxyType(_check_fusion(fusion, available=available))
        except ValueError as exc:
            raise LeukosegError(manifest_path, f"invalid fusion: {_one_line(exc)}") from None
    cnn_path = root / models_meta["cnn"]["file"] if "cnn" in models else None
    _check_config(config, manifest_path, feature_names=feature_names, n_features=next(iter(n_features), None),
                  cnn=models.get("cnn"), cnn_path=cnn_path)  # fmt: skip

    return ModelBundle(
        path=root,
        format_version=version,
        leukoseg_version=str(manifest.get("leukoseg_version", "")),
        models=types.MappingProxyType(models),
        positive_class=positive,
        feature_names=feature_names,
        feature_medians=feature_medians,
        fusion=fusion,
        config=types.MappingProxyType(config),
        provenance=types.MappingProxyType(provenance),
    )


def _check_model_entry(name: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """The descriptive fields of a model's ``bundle.json`` entry, where present, must agree with its arrays.

    A hand-edited entry that contradicts the file it describes is refused (naming `path`) rather than shown,
    e.g. by ``leukoseg report``, as the truth.
    """
    kind = meta.get("kind", _KINDS[name])
    if kind != _KINDS[name]:
        raise LeukosegError(path, f"model {name!r} has kind {_short(kind)}; a {name} model is {_KINDS[name]!r}")
    if not isinstance(meta.get("estimator", ""), str):
        raise LeukosegError(path, f"model {name!r} estimator must be a string; got {_short(meta['estimator'])}")
    if "classes" in meta and meta["classes"] != arrays["classes"].tolist():
        raise LeukosegError(
            path, f"model {name!r} lists classes {_short(meta['classes'])}; its file holds "
            f"{_short(arrays['classes'].tolist())}"
        )  # fmt: skip


def _check_config(
    config: Mapping[str, Any],
    path: Path,
    *,
    feature_names: tuple[str, ...] | None,
    n_features: int | None,
    cnn: Mapping[str, np.ndarray] | None,
    cnn_path: Path | None,
) -> None:
    """Check the settings of ``config`` that ``leukoseg classify`` turns into work on every image.

    Each is optional here (:func:`save_bundle` takes any JSON-able config), but one that is present must be
    usable, so that a damaged bundle is refused once, at load, rather than failing (or exhausting memory)
    on every image: ``image_rule.top_k`` an integer from 1 to 100; ``patch`` an integer ``size`` from 8 to
    1024 pixels, the CNN's input side, and a ``um_per_px`` from 0.01 to 100; ``features`` known measurement
    names and valid texture settings that make exactly the columns of ``features.npz``. The other settings
    are checked by :func:`leukoseg.pipelines.predict.load_model`.

    Parameters
    ----------
    config : mapping
        The ``config`` of ``bundle.json``.
    path : pathlib.Path
        ``bundle.json``, named in the errors.
    feature_names : tuple of str or None
        The names of ``features.npz``.
    n_features : int or None
        Number of features the feature models take.
    cnn : mapping of str to ndarray or None
        The CNN's arrays, already checked.
    cnn_path : pathlib.Path or None
        Its file.

    Raises
    ------
    LeukosegError
        Naming `path`, or `cnn_path` for a CNN whose input is not the configured patch.
    """

    def bad(what: str) -> LeukosegError:
        return LeukosegError(path, f"invalid classification settings: {what}")  # as load_model words it

    def integer(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if "image_rule" in config:
        rule = config["image_rule"]
        top_k = rule.get("top_k") if isinstance(rule, dict) else None
        if not integer(top_k, 1, _MAX_TOP_K):
            raise bad(f"image_rule top_k must be an integer from 1 to {_MAX_TOP_K}; got {_short(top_k)}")
    if "patch" in config:
        patch = config["patch"]
        size = patch.get("size") if isinstance(patch, dict) else None
        um = patch.get("um_per_px") if isinstance(patch, dict) else None
        if not integer(size, *_PATCH_SIDE):
            raise bad(f"patch size must be an integer from {_PATCH_SIDE[0]} to {_PATCH_SIDE[1]}; got {_short(size)}")
        low, high = _PATCH_UM_PER_PX
        if isinstance(um, bool) or not isinstance(um, (int, float)) or not low <= um <= high:  # NaN fails too
            raise bad(f"patch um_per_px must be a number from {low:g} to {high:g}; got {_short(um)}")
        if cnn is not None and tuple(int(s) for s in cnn["input_shape"]) != (size, size, 3):
            raise LeukosegError(
                cnn_path, f"takes patches of shape {tuple(int(s) for s in cnn['input_shape'])}; bundle.json's "
                f"patch size {size} gives ({size}, {size}, 3)"
            )  # fmt: skip
    if "features" in config:
        try:
            columns = _feature_columns(config["features"])
        except (TypeError, ValueError) as exc:
            raise bad(f"features: {_one_line(exc)}") from None
        if feature_names is not None and tuple(columns) != feature_names:
            if len(columns) != len(feature_names):
                raise bad(f"features give {len(columns)} columns; features.npz names {len(feature_names)}")
            i = next(i for i, (a, b) in enumerate(zip(columns, feature_names)) if a != b)
            raise bad(f"features give column {i} {_short(columns[i])}; features.npz names {_short(feature_names[i])}")
        if n_features is not None and len(columns) != n_features:
            raise bad(f"features give {len(columns)} columns; the models take {n_features}")
    if "segment" in config:
        from leukoseg.segmentation import check_segment_settings

        if not isinstance(config["segment"], dict):
            raise bad(f"segment must be an object of segment() settings; got {_short(config['segment'])}")
        if "pixel_size" in config["segment"]:  # a fact about each image, given at classification
            raise bad("segment must not hold pixel_size (classify measures it, or takes --pixel-size)")
        try:
            check_segment_settings(config["segment"])
        except ValueError as exc:
            raise bad(f"segment: {_one_line(exc)}") from None


def _feature_columns(features: Any) -> list[str]:
    """Names of the columns that ``config['features']`` makes, in the order of ``feature_matrix``.

    ValueError if a setting is missing or invalid, names an unknown measurement, or puts an LBP radius or
    GLCM distance beyond 50 um.
    """
    from leukoseg.features.rows import check_context_um, check_lbp_radii, feature_names
    from leukoseg.segmentation import MEASUREMENT_COLUMNS

    if not isinstance(features, dict):
        raise ValueError("must be an object")
    missing = [k for k in ("measurement_names", "texture", "distances_um", "levels", "angles_deg") if k not in features]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    names = features["measurement_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError("measurement_names must be a list of distinct names")
    unknown = [n for n in names if n not in MEASUREMENT_COLUMNS]
    if unknown:
        raise ValueError(f"unknown measurement {_short(unknown[0])} (see leukoseg.segmentation.MEASUREMENT_COLUMNS)")
    texture, stain = features["texture"], features.get("stain", False)
    if not isinstance(texture, bool) or not isinstance(stain, bool):
        raise ValueError(f"texture and stain must be true or false; got {_short(texture)} and {_short(stain)}")
    radii = check_lbp_radii(features.get("lbp_radii_um", ()))
    context = check_context_um(features.get("context_um", 0.0))  # absent: the bare box, as before it existed
    if context > _MAX_FEATURE_UM:
        raise ValueError(f"context_um must be at most {_MAX_FEATURE_UM:g} um; got {context:g}")
    glcm = {k: features[k] for k in ("distances_um", "levels", "angles_deg")}
    columns = feature_names(names, texture=texture, stain=stain, lbp_radii_um=radii, **glcm)
    lengths = [*radii, *((float(d) for d in glcm["distances_um"]) if texture else ())]
    if lengths and max(lengths) > _MAX_FEATURE_UM:
        raise ValueError(f"LBP radii and GLCM distances must be at most {_MAX_FEATURE_UM:g} um; got {max(lengths):g}")
    return columns


def _manifest_field(manifest: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise LeukosegError(path, f"'{key}' is missing or is not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, read-only; LeukosegError for a corrupt, compressed or object (pickle) array."""
    arrays: dict[str, np.ndarray] = {}
    if not zipfile.is_zipfile(path):  # np.load would try it as .npy or as a pickle
        raise LeukosegError(path, "not a readable .npz file (not a zip archive)")
    try:
        # save_bundle writes with np.savez: members stored, not compressed, so the arrays take what the file
        # takes. A compressed member could inflate a small file to any size in memory (a zip bomb): refused.
        with zipfile.ZipFile(path) as archive:
            packed = [info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise LeukosegError(path, f"member {_short(packed[0])} is compressed; bundle files hold stored "
                                "(np.savez) arrays only")  # fmt: skip
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
                if not isinstance(arrays[key], np.ndarray):  # NpzFile returns members not named .npy as bytes
                    raise LeukosegError(path, f"not a readable .npz file (member {_short(key)} is not a .npy array)")
    except LeukosegError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            reason = "holds a pickled object array; refused (bundles hold plain arrays only)"
            raise LeukosegError(path, reason) from None
        raise LeukosegError(path, f"not a readable .npz file ({_one_line(exc)})") from None
    except MemoryError:
        raise LeukosegError(path, "not a readable .npz file (an array too large for memory)") from None
    except Exception as exc:  # zipfile and the .npy reader raise many kinds on damaged or odd files
        raise LeukosegError(path, f"not a readable .npz file ({type(exc).__name__}: {_one_line(exc)})") from None
    for value in arrays.values():
        with contextlib.suppress(ValueError):
            value.setflags(write=False)
    return arrays


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to `limit` characters: a bundle.json value quoted in a one-line error."""
    text = reprlib.repr(value)  # bounded for long strings, lists and deep nesting
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_stored_count(arrays: Mapping[str, np.ndarray], count_key: str, prefix: str, what: str, fail) -> None:
    """The declared number of ensemble members (or SVM folds), if any, must be the number stored (``prefix0_``...).

    Checked before anything loops over the declared number: a damaged count (say 10**12) would otherwise
    exhaust memory or time, and a smaller one would silently leave stored members out of the predictions.
    """
    if count_key not in arrays:
        return
    n = int(arrays[count_key])  # a 0-d integer: checked by the caller
    stored = {key.split("_", 1)[0] for key in arrays if key.startswith(prefix) and "_" in key}
    if len(stored) != n or stored != {f"{prefix}{i}" for i in range(n)}:
        fail(f"{count_key} is {n}, but it holds {len(stored)} {what}(s)")


def _check_model_arrays(name: str, arrays: Mapping[str, np.ndarray], path: Path, *, context: str = "") -> None:
    """Shapes and types of a model's arrays; LeukosegError naming `path` otherwise."""
    kind = _KINDS[name]

    def fail(reason: str):
        raise LeukosegError(path, context + reason)

    def need(key: str, kinds: str, ndim: int | None = None) -> np.ndarray:
        if key not in arrays:
            fail(f"lacks the array {key!r} of a {kind} model")
        value = arrays[key]
        if value.dtype.kind not in kinds or (ndim is not None and value.ndim != ndim):
            fail(f"array {key!r} has dtype {value.dtype} and shape {value.shape}, not what a {kind} model needs")
        return value

    stored_kind = need("kind", "U", 0) if kind != "cnn" or "kind" in arrays else np.array("cnn")
    if str(stored_kind) != kind:
        fail(f"holds a {_short(str(stored_kind))} model where the bundle expects {name!r} ({kind})")
    version = need("format_version", "iu", 0)
    classes = need("classes", "iubUf", 1)
    if len(classes) < 2:
        fail(f"has {len(classes)} class(es); at least 2 are needed")
    if kind == "cnn":
        from ._cnn_numpy import check_params  # NumPy only

        shape = need("input_shape", "iu", 1)
        if "n_members" in arrays and int(need("n_members", "iu", 0)) < 1:
            fail("is an ensemble of no CNN")
        _check_stored_count(arrays, "n_members", "member", "CNN", fail)  # before _cnn_members lists them
        members = _cnn_members(arrays)
        for i, net in enumerate(members):
            where = f"CNN {i} of the ensemble: " if "n_members" in arrays else ""
            try:  # layers, shapes and weights, and one blank patch through the network: a few ms
                check_params(net)
            except ValueError as exc:
                fail(where + _one_line(exc))
            if not np.array_equal(net["input_shape"], shape) or not np.array_equal(net["classes"], classes):
                fail(f"{where}takes other patches or classes than the bundle's CNN")
        return
    if int(version) != BUNDLE_FORMAT_VERSION:
        fail(f"arrays have format version {int(version)}; this leukoseg reads {BUNDLE_FORMAT_VERSION}")
    if kind == "knn":
        if "n_members" in arrays:
            n_members = int(need("n_members", "iu", 0))
            if n_members < 1:
                fail("is an ensemble of no kNN")
            _check_stored_count(arrays, "n_members", "member", "kNN", fail)
            for key in (f"member{i}_{k}" for i in range(n_members) for k in _MEMBER_KEYS):
                need(key, "iufU")
            for i, member in enumerate(_knn_members(arrays)):
                _check_model_arrays(name, member, path, context=f"member {i}: ")
            return
        mean = need("mean", "f", 1)
        scale = need("scale", "f", 1)
        columns = need("columns", "iu", 1)
        weights = need("feature_weights", "f", 1)
        fit_X = need("fit_X", "f", 2)
        y = need("y", "iu", 1)
        k = int(need("n_neighbors", "iu", 0))
        vote = str(need("weights", "U", 0))
        if str(need("fit_method", "U", 0)) not in ("brute", "tree"):
            fail(f"unknown fit_method {str(arrays['fit_method'])!r}")
        f = len(mean)
        if scale.shape != (f,) or weights.shape != columns.shape or fit_X.shape[1:] != columns.shape:
            fail(f"inconsistent shapes: mean {mean.shape}, scale {scale.shape}, columns {columns.shape}, "
                 f"feature_weights {weights.shape}, fit_X {fit_X.shape}")  # fmt: skip
        if len(columns) and (columns.min() < 0 or columns.max() >= f):
            fail(f"'columns' index outside the {f} features")
        if len(y) != len(fit_X) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
            fail(f"'y' must hold {len(fit_X)} class indices below {len(classes)}")
        if not 1 <= k <= len(fit_X):
            fail(f"n_neighbors {k} is not between 1 and the {len(fit_X)} training rows")
        if vote not in ("uniform", "distance", "gaussian"):
            fail(f"unknown vote weighting {vote!r}")
        if not (np.isfinite(fit_X).all() and np.isfinite(mean).all() and np.isfinite(weights).all()
                and np.isfinite(scale).all() and (scale != 0).all()):  # fmt: skip
            fail("holds non-finite values or a zero scale")
        return
    method = str(need("method", "U", 0))
    if method not in ("sigmoid", "isotonic"):
        fail(f"unknown calibration {method!r}")
    n_folds = int(need("n_folds", "iu", 0))
    if n_folds < 1:
        fail("has no folds")
    _check_stored_count(arrays, "n_folds", "fold", "calibrated SVM fold", fail)
    n_features: int | None = None
    for i in range(n_folds):
        p = f"fold{i}_"
        mean = need(p + "mean", "f", 1)
        n_features = len(mean) if n_features is None else n_features
        scale = need(p + "scale", "f", 1)
        sv = need(p + "support_vectors", "f", 2)
        coef = need(p + "dual_coef", "f", 2)
        intercept = need(p + "intercept", "f", 1)
        n_support = need(p + "n_support", "iu", 1)
        gamma = need(p + "gamma", "f", 0)
        if not float(gamma) > 0:  # an RBF kernel exp(-gamma d^2) with gamma <= 0 overflows, or ignores the rows
            fail(f"fold {i}: gamma {float(gamma)!r} is not positive")
        class_index = need(p + "class_index", "iu", 1)
        n_cls = len(n_support)
        if mean.shape != (n_features,) or scale.shape != (n_features,) or sv.shape[1:] != (n_features,):
            fail(f"fold {i}: feature arrays do not all have {n_features} columns")
        if coef.shape != (n_cls - 1, len(sv)) or int(n_support.sum()) != len(sv):
            fail(f"fold {i}: dual_coef {coef.shape} does not match {len(sv)} support vectors of {n_cls} classes")
        if intercept.shape != (n_cls * (n_cls - 1) // 2,) or len(class_index) != n_cls:
            fail(f"fold {i}: intercept {intercept.shape} or class_index {class_index.shape} wrong for {n_cls} classes")
        # LabelEncoder indices of the fold's classes: increasing, within the bundle's classes (a negative or
        # repeated index would write one class's probability into another's column, or past the last).
        index = class_index.astype(np.int64)
        if n_cls < 2 or index.min() < 0 or index.max() >= len(classes) or (np.diff(index) <= 0).any():
            fail(f"fold {i}: class_index {class_index.tolist()} is not increasing indices of {len(classes)} classes")
        if not (np.isfinite(sv).all() and np.isfinite(coef).all() and (scale != 0).all()
                and all(np.isfinite(a).all() for a in (mean, scale, intercept, arrays[p + "gamma"]))):  # fmt: skip
            fail(f"fold {i}: non-finite support vectors, coefficients, mean, scale, intercept or gamma; or zero scale")
        n_cal = 1 if n_cls == 2 else n_cls
        for j in range(n_cal):
            c = f"{p}cal{j}_"
            calibrator: tuple[np.ndarray, ...]
            if method == "sigmoid":
                calibrator = (need(c + "a", "f", 0), need(c + "b", "f", 0))
            else:
                x, yv = need(c + "x", "f", 1), need(c + "y", "f", 1)
                calibrator = (x, yv, need(c + "range", "f", 1))
                if x.shape != yv.shape or not len(x) or calibrator[2].shape != (2,):
                    fail(f"fold {i}: isotonic calibrator {j} has thresholds of shapes {x.shape} and {yv.shape}")
            if not all(np.isfinite(a).all() for a in calibrator):
                fail(f"fold {i}: calibrator {j} holds non-finite values")
