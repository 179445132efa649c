"""Score fusion: logistic stacking in keras.ops, its NumPy twin, and the estimator contract."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from leukoseg.classify import StackingFusion, fuse_numpy


def _two_models(n: int = 400, seed: int = 0):
    """Model A informative, model B noise: the fusion must lean on A."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    a = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, n), 0.001, 0.999)
    b = rng.uniform(0.001, 0.999, n)
    return np.column_stack([1 - a, a, 1 - b, b]), y


def test_fusion_weights_the_informative_model_and_beats_it():
    from sklearn.metrics import roc_auc_score

    X, y = _two_models()
    fusion = StackingFusion(device="cpu").fit(X, y)
    coef = fusion.binary_coef()
    assert coef[0] > 5 * abs(coef[1])
    p = fusion.predict_proba(X)
    assert p.shape == (len(y), 2)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    # Stacking a noise input costs at most a sliver of ranking quality.
    assert roc_auc_score(y, p[:, 1]) >= roc_auc_score(y, X[:, 1]) - 0.005
    assert fusion.device_ == "cpu" and fusion.backend_ in ("tensorflow", "torch", "jax", "numpy")


def test_fusion_matches_sklearn_logistic_regression():
    """Gradient descent in keras.ops converges to the penalised maximum-likelihood solution."""
    from sklearn.linear_model import LogisticRegression

    X, y = _two_models(seed=1)
    fusion = StackingFusion(device="cpu", n_iter=3000, l2=1e-2, class_weight=None).fit(X, y)
    F = np.log(np.clip(X[:, [1, 3]], 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(X[:, [1, 3]], 1e-6, 1 - 1e-6))
    mean, std = F.mean(0), F.std(0)
    # Same objective: mean log-loss + l2/2 (|W0|^2 + |W1|^2) = l2/4 |w|^2 with w = W1 - W0 at the optimum.
    ref = LogisticRegression(C=2 / (1e-2 * len(y)), tol=1e-10, max_iter=10000).fit((F - mean) / std, y)
    assert_allclose(fusion.predict_proba(X)[:, 1], ref.predict_proba((F - mean) / std)[:, 1], atol=0.01)


def test_to_dict_and_fuse_numpy_agree_with_keras():
    X, y = _two_models(seed=2)
    fusion = StackingFusion(device="cpu").fit(X, y)
    saved = fusion.to_dict(["baseline", "cnn"])
    assert set(saved) == {"inputs", "coef", "intercept", "eps"}
    p = fuse_numpy(saved, {"baseline": X[:, 1], "cnn": X[:, 3]})
    assert_allclose(p, fusion.predict_proba(X)[:, 1], atol=1e-6)


def test_a_refused_fit_leaves_the_fusion_unfitted():
    from sklearn.exceptions import NotFittedError

    X, y = _two_models(20)
    fusion = StackingFusion(device="cpu")
    with pytest.raises(ValueError, match="at least 2 classes"):
        fusion.fit(X, np.zeros_like(y))
    with pytest.raises(NotFittedError):
        fusion.predict_proba(X)


def test_a_fusion_fitted_on_a_gpu_predicts_where_there_is_none():
    X, y = _two_models(40)
    fusion = StackingFusion(device="cpu").fit(X, y)
    expected = fusion.predict_proba(X)
    fusion.device_ = "gpu"  # as unpickled from a machine with a GPU
    assert_allclose(fusion.predict_proba(X), expected, rtol=0, atol=1e-12)


def test_fuse_numpy_saturates_without_overflow():
    # Large coefficients on confident inputs: logits far beyond exp's float64 range in either direction.
    saved = {"inputs": ["a"], "coef": [1e4], "intercept": 0.0, "eps": 1e-6}
    assert_array_equal(fuse_numpy(saved, {"a": np.array([1e-9, 0.5, 1 - 1e-9])}), [0.0, 0.5, 1.0])


def test_multiclass_fusion():
    rng = np.random.default_rng(3)
    y = np.arange(300) % 3
    good = np.eye(3)[y] * 0.7 + rng.dirichlet(np.ones(3), 300) * 0.3
    noise = rng.dirichlet(np.ones(3), 300)
    X = np.hstack([good, noise])
    fusion = StackingFusion(device="cpu").fit(X, y)
    assert (fusion.predict(X) == y).mean() > 0.9
    saved = fusion.to_dict(["a", "b"])
    assert_allclose(fuse_numpy(saved, {"a": good, "b": noise}), fusion.predict_proba(X), atol=1e-6)


def test_fusion_validates_and_does_not_mutate():
    X, y = _two_models(n=40)
    before = X.copy()
    StackingFusion(device="cpu", n_iter=5).fit(X, y)
    assert_allclose(X, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="columns"):
        StackingFusion(n_inputs=3, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="2 classes"):
        StackingFusion(device="cpu").fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="class_weight"):
        StackingFusion(class_weight="auto", device="cpu").fit(X, y)


def _three_models_three_classes(n: int = 150, seed: int = 0):
    """String labels of three classes; model A informative, models B and C noise (n_inputs=3, 9 columns)."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % 3
    good = np.eye(3)[codes] * 0.6 + rng.dirichlet(np.ones(3), n) * 0.4
    X = np.hstack([good, rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(3), n)])
    return X, np.array(["blast", "lymphocyte", "other"])[codes]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fusion_estimator_contract(n_classes):
    """What the expected failures of scikit-learn's checks (tests/test_classifiers.py) leave unchecked.

    Those checks feed X of another number of columns than ``n_inputs * n_classes``, so they say nothing of
    StackingFusion; here the same contract is checked on inputs of its layout.
    """
    import pickle

    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if n_classes == 2:
        X, y = _two_models(n=120, seed=4)
        fusion = StackingFusion(n_iter=50, l2=0.1, device="cpu")
    else:
        X, y = _three_models_three_classes(seed=4)
        fusion = StackingFusion(n_inputs=3, n_iter=50, l2=0.1, class_weight=None, device="cpu")
    params = fusion.get_params()

    # Not fitted: check_is_fitted and the predictions refuse.
    with pytest.raises(NotFittedError):
        check_is_fitted(fusion)
    with pytest.raises(NotFittedError):
        fusion.predict_proba(X)

    # get_params / set_params round trip.
    other = StackingFusion()
    assert other.set_params(**params) is other
    assert other.get_params() == params
    assert StackingFusion(**params).get_params() == params

    # fit returns self, and changes neither the parameters nor the input arrays.
    X_before, y_before = X.copy(), y.copy()
    assert fusion.fit(X, y) is fusion
    check_is_fitted(fusion)
    assert fusion.get_params() == params
    assert_array_equal(X, X_before)
    assert_array_equal(y, y_before)
    assert_array_equal(fusion.classes_, np.unique(y))
    proba = fusion.predict_proba(X)
    assert proba.shape == (len(y), n_classes)

    # clone: a new, unfitted estimator with equal parameters; the fitted one is left as it was.
    unfitted = clone(fusion)
    assert unfitted is not fusion
    assert unfitted.get_params() == params
    with pytest.raises(NotFittedError):
        check_is_fitted(unfitted)
    assert_array_equal(fusion.predict_proba(X), proba)

    # A pickle round trip (in memory) predicts identically.
    restored = pickle.loads(pickle.dumps(fusion))
    assert restored.get_params() == params
    assert_array_equal(restored.classes_, fusion.classes_)
    assert_array_equal(restored.predict_proba(X), proba)
    assert_array_equal(restored.predict(X), fusion.predict(X))


@pytest.mark.gpu
def test_fusion_on_the_gpu_matches_the_cpu():
    """The keras.ops path on a GPU (run on a GPU machine, e.g. KERAS_BACKEND=torch): same fit, same fused scores."""
    from leukoseg.classify.cnn import resolve_device

    if resolve_device("auto") != "gpu":
        pytest.skip("no GPU visible to the Keras backend")
    X, y = _two_models(seed=2)
    on_gpu = StackingFusion(device="gpu").fit(X, y)
    on_cpu = StackingFusion(device="cpu").fit(X, y)
    assert on_gpu.device_ == "gpu" and on_cpu.device_ == "cpu"
    assert_allclose(on_gpu.coef_, on_cpu.coef_, rtol=1e-4, atol=1e-5)  # float32 on both, other kernels
    assert_allclose(on_gpu.predict_proba(X), on_cpu.predict_proba(X), atol=1e-5)
