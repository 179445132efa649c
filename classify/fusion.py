"""Score fusion: logistic stacking of the baseline and CNN cell probabilities, computed with ``keras.ops``.

The fusion is a small multinomial logistic regression whose inputs are the class probabilities of other
models (for two classes: the logit of each model's positive-class probability; for more: each model's
log-probabilities). It is learnt by full-batch gradient descent written in ``keras.ops`` only, so the same
code runs on whatever device the Keras backend uses: the GPU when one is visible (TensorFlow, or PyTorch with
``KERAS_BACKEND=torch``), the CPU otherwise. With a handful of parameters the problem is convex and tiny;
the point of the GPU path is that fusion of a large batch of cells never leaves the device the CNN ran on.

In the experiment the fusion is fitted on *inner out-of-fold* scores of the training images only
(:mod:`leukoseg.pipelines.experiment`), never on scores of the images it will fuse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from leukoseg._stderr import import_keras

from ._cv import checked_training_data
from ._fusion_numpy import fuse_numpy
from ._fusion_numpy import stack_inputs as _stack_inputs

__all__ = ["StackingFusion", "fuse_numpy"]

log = logging.getLogger(__name__)


class StackingFusion(ClassifierMixin, BaseEstimator):
    """Logistic stacking of the class probabilities of several models, fitted and applied with ``keras.ops``.

    Parameters
    ----------
    n_inputs : int, optional
        Number of models whose probabilities are stacked. ``X`` has ``n_inputs * n_classes`` columns: the
        probabilities of model 0 for every class (in the order of ``classes_``), then of model 1, and so on.
    l2 : float, optional
        Ridge penalty on the weights of the standardised inputs (not on the intercepts).
    n_iter : int, optional
        Gradient-descent steps (full batch).
    eps : float, optional
        Probabilities are clipped to ``[eps, 1 - eps]`` before the logit / log.
    class_weight : {'balanced', None}, optional
        'balanced' weighs each class inversely to its frequency, as the other cell models do.
    device : {'auto', 'cpu', 'gpu'}, optional
        Where the Keras backend computes (see :func:`~leukoseg.classify.cnn.resolve_device`).

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    coef_ : ndarray of shape (n_inputs, n_classes) or (n_inputs * n_classes, n_classes)
        Weights of the raw inputs (for two classes one logit per model, for more the log-probabilities of
        every model and class), standardisation folded in.
    intercept_ : ndarray of shape (n_classes,)
        Intercepts.
    device_ : str
        'cpu' or 'gpu': where the fit ran.
    backend_ : str
        Keras backend used.
    n_features_in_ : int
        Columns of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.arange(200) % 2
    >>> good = np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.2, 200), 0.01, 0.99)
    >>> noise = rng.uniform(0.01, 0.99, 200)
    >>> X = np.column_stack([1 - good, good, 1 - noise, noise])
    >>> fusion = StackingFusion(device="cpu").fit(X, y)
    >>> fusion.coef_.shape
    (2, 2)
    >>> bool(abs(fusion.binary_coef()[0]) > abs(fusion.binary_coef()[1]))
    True
    """

    def __init__(
        self,
        *,
        n_inputs: int = 2,
        l2: float = 1e-2,
        n_iter: int = 300,
        eps: float = 1e-6,
        class_weight: str | None = "balanced",
        device: str = "auto",
    ) -> None:
        self.n_inputs = n_inputs
        self.l2 = l2
        self.n_iter = n_iter
        self.eps = eps
        self.class_weight = class_weight
        self.device = device

    def fit(self, X: ArrayLike, y: ArrayLike) -> StackingFusion:
        """Learn the stacking weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs * n_classes)
            Probabilities of the stacked models, finite, in ``[0, 1]``.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : StackingFusion
            The fitted fusion.

        Raises
        ------
        ValueError
            If `y` holds fewer than two classes, `X` has not ``n_inputs * n_classes`` finite columns, or a
            setting is out of range.
        """
        keras = import_keras()
        from keras import ops

        from .cnn import device_scope, resolve_device

        X, y, classes, codes = checked_training_data(self, X, y)  # classes_ is set with the weights, after the checks
        n_classes = len(classes)
        if self.n_inputs < 1 or X.shape[1] != self.n_inputs * n_classes:
            raise ValueError(
                f"X must have n_inputs * n_classes = {self.n_inputs} * {n_classes} columns; got {X.shape[1]}"
            )
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None; got {self.class_weight!r}")
        if self.l2 < 0 or self.n_iter < 1 or not 0 < self.eps < 0.5:
            raise ValueError("need l2 >= 0, n_iter >= 1 and 0 < eps < 0.5")

        F = self._inputs(X, n_classes)
        mean = F.mean(axis=0)
        std = F.std(axis=0)
        std[std < 1e-12] = 1.0  # a constant input carries no information; keep it finite
        Z = (F - mean) / std
        counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
        w_class = len(codes) / (n_classes * counts) if self.class_weight == "balanced" else np.ones(n_classes)
        sample_w = w_class[codes] / w_class[codes].sum()
        onehot = np.eye(n_classes)[codes]
        # Step 1/L for the softmax loss on standardised inputs: its Hessian is below 0.5 * trace(Z'WZ) + l2.
        step = 1.0 / (0.5 * (Z.shape[1] + 1) + self.l2)

        self.device_ = resolve_device(self.device)
        self.backend_ = keras.config.backend()
        with device_scope(self.device_):
            z = ops.convert_to_tensor(Z.astype(np.float32))
            t = ops.convert_to_tensor(onehot.astype(np.float32))
            sw = ops.convert_to_tensor(sample_w.astype(np.float32)[:, None])
            W = ops.zeros((Z.shape[1], n_classes), dtype="float32")
            b = ops.zeros((n_classes,), dtype="float32")
            for _ in range(self.n_iter):
                grad = (ops.softmax(ops.matmul(z, W) + b, axis=-1) - t) * sw  # d loss / d logits
                W = W - step * (ops.matmul(ops.transpose(z), grad) + self.l2 * W)
                b = b - step * ops.sum(grad, axis=0)
            W = ops.convert_to_numpy(W).astype(np.float64)
            b = ops.convert_to_numpy(b).astype(np.float64)
        # Fold the standardisation into the weights of the raw inputs.
        self.classes_ = classes
        self.coef_ = W / std[:, None]
        self.intercept_ = b - mean @ self.coef_
        log.info("fusion on %s (%s): coef %s", self.device_, self.backend_, np.round(self.binary_coef(), 3)
                 if n_classes == 2 else self.coef_.shape)  # fmt: skip
        return self

    def _inputs(self, X: np.ndarray, n_classes: int) -> np.ndarray:
        return _stack_inputs(X, n_classes, self.n_inputs, self.eps)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Fused class probabilities, computed with ``keras.ops`` on the fit's device (the CPU where it is missing).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs * n_classes)
            Probabilities of the stacked models, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Fused probabilities; column ``j`` is the probability of ``classes_[j]``.
        """
        from keras import ops

        from .cnn import device_scope, resolve_device

        check_is_fitted(self, "coef_")  # not classes_ or n_features_in_: a refused fit may leave them
        X = cast(np.ndarray, validate_data(self, X, dtype=np.float64, reset=False))
        F = self._inputs(X, len(self.classes_))
        # A fusion fitted on a GPU and unpickled where the backend sees none predicts on the CPU.
        device = "cpu" if self.device_ == "cpu" else resolve_device("auto")
        with device_scope(device):
            # Every operand a tensor: a NumPy intercept added to a GPU tensor fails under the torch backend.
            logits = ops.add(ops.matmul(ops.convert_to_tensor(F), ops.convert_to_tensor(self.coef_)),
                             ops.convert_to_tensor(self.intercept_))  # fmt: skip
            return ops.convert_to_numpy(ops.softmax(logits, axis=-1)).astype(np.float64)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs * n_classes)
            Probabilities of the stacked models, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,)
            The label from ``classes_`` with the highest fused probability.
        """
        proba = self.predict_proba(X)  # first: it checks that the fusion is fitted, before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]

    def binary_coef(self) -> np.ndarray:
        """For two classes: the weight of each input model's logit in the fused logit.

        Returns
        -------
        ndarray of shape (n_inputs,)
            ``coef_[:, 1] - coef_[:, 0]``: the weight of each model's logit in the fused log-odds of
            ``classes_[1]``.

        Raises
        ------
        ValueError
            If the fusion was fitted on more than two classes.
        """
        check_is_fitted(self, "coef_")  # not classes_ or n_features_in_: a refused fit may leave them
        if len(self.classes_) != 2:
            raise ValueError("binary_coef needs two classes")
        return self.coef_[:, 1] - self.coef_[:, 0]

    def to_dict(self, inputs: Sequence[str]) -> dict[str, Any]:
        """The fitted fusion as plain JSON-able data (read by :func:`fuse_numpy` and the model bundle).

        Parameters
        ----------
        inputs : sequence of str
            Names of the stacked models, in column order.

        Returns
        -------
        dict
            For two classes ``{"inputs", "coef", "intercept", "eps"}`` meaning
            ``p = sigmoid(intercept + sum_i coef_i * logit(clip(p_i, eps, 1 - eps)))``; for more classes also
            ``"classes"`` and a ``coef`` matrix over the log-probabilities, with a softmax.

        Raises
        ------
        ValueError
            If `inputs` does not name ``n_inputs`` models.
        """
        check_is_fitted(self, "coef_")  # not classes_ or n_features_in_: a refused fit may leave them
        if len(inputs) != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} input names; got {len(inputs)}")
        if len(self.classes_) == 2:
            return {"inputs": list(inputs), "coef": self.binary_coef().tolist(),
                    "intercept": float(self.intercept_[1] - self.intercept_[0]), "eps": float(self.eps)}  # fmt: skip
        return {"inputs": list(inputs), "classes": [str(c) for c in self.classes_], "coef": self.coef_.tolist(),
                "intercept": self.intercept_.tolist(), "eps": float(self.eps)}  # fmt: skip
