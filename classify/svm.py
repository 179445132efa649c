"""RBF support vector machine with tuned C and gamma and calibrated probabilities."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cv import checked_training_data, inner_cv_splits, own_random_state

__all__ = ["SVMClassifier", "make_svm"]

log = logging.getLogger(__name__)

_C_GRID = (0.1, 1.0, 10.0, 100.0)
_GAMMA_GRID = ("scale", 0.003, 0.03, 0.3)


class SVMClassifier(ClassifierMixin, BaseEstimator):
    """RBF SVM on standardised features, C and gamma tuned and probabilities calibrated by inner CV.

    Parameters
    ----------
    C_grid : sequence of float, default=(0.1, 1.0, 10.0, 100.0)
        Values of the SVM's C to try.
    gamma_grid : sequence of float or "scale", default=("scale", 0.003, 0.03, 0.3)
        Values of the RBF kernel's gamma to try (on standardised features; ``"scale"`` is
        ``1 / n_features``).
    inner_cv : int, default=3
        Folds of the inner (stratified; with ``groups`` stratified-grouped) cross-validation, used for
        both tuning and calibration. Lowered when the smallest class is smaller.
    scoring : str, default="balanced_accuracy"
        Score maximised by the grid search (any scikit-learn scorer name, e.g. ``"roc_auc"`` for two
        classes).
    calibration : {"sigmoid", "isotonic"}, default="sigmoid"
        Calibration of the decision values into probabilities (Platt scaling or isotonic regression).
    n_jobs : int or None, default=None
        Parallel jobs of the grid search.
    random_state : int, RandomState instance or None, default=None
        Seeds the inner folds.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of str
        Feature names, when ``X`` had them.
    search_ : :class:`~sklearn.model_selection.GridSearchCV`
        The grid search (``best_params_``, ``cv_results_``); not refitted.
    best_params_ : dict
        The chosen ``{"svc__C": ..., "svc__gamma": ...}``.
    calibrated_ : :class:`~sklearn.calibration.CalibratedClassifierCV`
        The calibrated ensemble that predicts.

    Notes
    -----
    The model is ``StandardScaler -> SVC(kernel="rbf", class_weight="balanced")``; class weights
    compensate class imbalance. Fitting:

    1. draw the inner folds once (:class:`~sklearn.model_selection.StratifiedKFold`, or
       :class:`~sklearn.model_selection.StratifiedGroupKFold` when ``groups`` is passed, so that the cells of
       one image stay together);
    2. choose C and gamma by :class:`~sklearn.model_selection.GridSearchCV` on these folds;
    3. with the chosen C and gamma, fit :class:`~sklearn.calibration.CalibratedClassifierCV` on the same
       folds (``ensemble=True``): one SVM per fold, each calibrated on decision values of the fold it did
       not see, and probabilities averaged over the folds.

    Calibration on held-out folds is what ``SVC(probability=True)`` approximates with an internal,
    ungrouped 5-fold Platt scaling; here the folds respect ``groups``. Reusing the tuning folds for
    calibration biases the calibration a little towards the chosen hyper-parameters; an outer
    cross-validation of the whole estimator stays unbiased.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=90, n_features=5, random_state=0)
    >>> clf = SVMClassifier(C_grid=(1.0,), gamma_grid=("scale",), random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    """

    def __init__(
        self,
        *,
        C_grid: Sequence[float] = _C_GRID,
        gamma_grid: Sequence[float | str] = _GAMMA_GRID,
        inner_cv: int = 3,
        scoring: str = "balanced_accuracy",
        calibration: str = "sigmoid",
        n_jobs: int | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.C_grid = C_grid
        self.gamma_grid = gamma_grid
        self.inner_cv = inner_cv
        self.scoring = scoring
        self.calibration = calibration
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: ArrayLike, *, groups: ArrayLike | None = None) -> SVMClassifier:
        """Tune, then fit the calibrated SVMs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features, finite.
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), optional
            Group of each sample (e.g. its image), kept within one inner fold.

        Returns
        -------
        self : SVMClassifier
            The fitted classifier.

        Raises
        ------
        ValueError
            If `calibration` or a grid is invalid, `X` is not finite, or `y` holds fewer than two classes.
        """
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import GridSearchCV

        # Settings and labels are checked before anything is stored: a refused fit leaves no half-fitted state.
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError(f"calibration must be 'sigmoid' or 'isotonic'; got {self.calibration!r}")
        grid = {"svc__C": list(self.C_grid), "svc__gamma": list(self.gamma_grid)}
        if not grid["svc__C"] or not grid["svc__gamma"]:
            raise ValueError("C_grid and gamma_grid must each hold at least one value")
        X, y, classes, _ = checked_training_data(self, X, y)
        seed = int(own_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        folds = inner_cv_splits(y, groups, self.inner_cv, seed)

        search = GridSearchCV(
            _svm_pipeline(), grid, scoring=self.scoring, cv=folds, refit=False, n_jobs=self.n_jobs
        ).fit(X, y)
        best = _svm_pipeline().set_params(**search.best_params_)
        calibrated = CalibratedClassifierCV(best, method=self.calibration, cv=folds, ensemble=True).fit(X, y)
        self.classes_, self.search_, self.best_params_ = classes, search, dict(search.best_params_)
        self.calibrated_ = calibrated
        log.info(
            "SVM: C=%s gamma=%s, inner %s %.3f",
            self.best_params_["svc__C"], self.best_params_["svc__gamma"], self.scoring, self.search_.best_score_,
        )  # fmt: skip
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Calibrated class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature rows of the cells to score, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of `classes_`; rows sum to 1.
        """
        check_is_fitted(self, "calibrated_")
        X = cast(np.ndarray, validate_data(self, X, dtype=np.float64, reset=False))
        return self.calibrated_.predict_proba(X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature rows of the cells to classify, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,)
            The label from `classes_` with the highest calibrated probability.
        """
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[np.argmax(proba, axis=1)]


def make_svm(
    *,
    random_state: int | np.random.RandomState | None = None,
    C_grid: Sequence[float] = _C_GRID,
    gamma_grid: Sequence[float | str] = _GAMMA_GRID,
    inner_cv: int = 3,
    scoring: str = "balanced_accuracy",
) -> SVMClassifier:
    """The SVM classifier of the experiments: an unfitted :class:`SVMClassifier`.

    Parameters
    ----------
    random_state : int, RandomState instance or None, default=None
        Seeds the inner folds, as in :class:`SVMClassifier`.
    C_grid : sequence of float, default=(0.1, 1.0, 10.0, 100.0)
        Values of the SVM's C to try.
    gamma_grid : sequence of float or "scale", default=("scale", 0.003, 0.03, 0.3)
        Values of the RBF kernel's gamma to try.
    inner_cv : int, default=3
        Folds of the inner cross-validation, for both tuning and calibration.
    scoring : str, default="balanced_accuracy"
        Score maximised by the grid search.

    Returns
    -------
    SVMClassifier
        Unfitted, with these settings and the defaults of the other parameters.

    Examples
    --------
    >>> make_svm(random_state=0, C_grid=(1.0, 10.0))
    SVMClassifier(C_grid=(1.0, 10.0), random_state=0)
    """
    return SVMClassifier(
        C_grid=C_grid, gamma_grid=gamma_grid, inner_cv=inner_cv, scoring=scoring, random_state=random_state
    )


def _svm_pipeline() -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    # random_state: unused by an RBF SVC without probability=True, but unset it draws from NumPy's global generator.
    svc = SVC(kernel="rbf", class_weight="balanced", random_state=0)
    return Pipeline([("scale", StandardScaler()), ("svc", svc)])
