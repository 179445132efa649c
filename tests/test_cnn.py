"""Tests of leukoseg.classify.cnn (the CNN of Thanh et al. 2017) and leukoseg.classify.augment.

A tiny network (4 + 4 feature maps) on 16x16 synthetic patches keeps the file fast; only the shape,
parameter-count and NumPy-equivalence tests build the full-size 50x50 network.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras loads TensorFlow

import json
import re
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from leukoseg.classify import cnn
from leukoseg.classify.augment import DIHEDRAL_SQUARE, augment_batch, dihedral
from leukoseg.datasets import file_sha256
from leukoseg.errors import LeukosegError

keras = pytest.importorskip("keras")

TINY: dict[str, Any] = dict(filters=(4, 4), kernel_size=5)

# Keras 3.15 saving under TensorFlow 2.21 with NumPy 2 calls np.array(tf.Variable), which NumPy warns about;
# the warning is theirs (keras/src/backend/tensorflow/core.py, convert_to_numpy), not leukoseg's.
KERAS_SAVE_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _disc_patches(n_per_class=40, size=16, n_images=10, seed=0):
    """Bright purple large discs (class 1) and small dark discs (class 0) on a pink background, with noise.

    Every patch is distinct (noise), so a patch identifies its row. Patches of the same image share a group.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    X, y = [], []
    for label, radius, colour in ((1, 6.0, (170, 90, 200)), (0, 2.5, (60, 30, 70))):
        for _ in range(n_per_class):
            cy, cx = size / 2 - 0.5 + rng.uniform(-1.5, 1.5, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            patch = np.empty((size, size, 3))
            patch[:] = (235, 205, 215)
            patch[disc] = colour
            patch += rng.normal(0, 6, patch.shape)
            X.append(np.clip(patch, 0, 255).astype(np.uint8))
            y.append(label)
    X, y = np.stack(X), np.array(y)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    groups = np.arange(len(y)) % n_images
    return X, y, groups


def _row_lookup(X):
    lookup = {patch.tobytes(): i for i, patch in enumerate(X)}
    assert len(lookup) == len(X)  # every patch distinct
    return lookup


@pytest.fixture(scope="module")
def discs():
    return _disc_patches()


@pytest.fixture(scope="module")
def trained(discs):
    """A tiny CNN fitted with groups, recording every batch that went through augment_batch."""
    X, y, groups = discs
    received = []
    original = cnn.augment_batch

    def recording(patches, **kwargs):
        received.append(np.array(patches, copy=True))
        return original(patches, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cnn, "augment_batch", recording)
        clf = cnn.CNNClassifier(
            **TINY,
            epochs=15,
            batch_size=16,
            learning_rate=1e-2,
            validation_fraction=0.2,
            patience=5,
            random_state=0,
            device="cpu",
        ).fit(X, y, groups=groups)
    return clf, received


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------


def test_default_network_layer_shapes_and_parameter_count():
    model = cnn.build_thanh_cnn(seed=0)
    table = [(layer.name, tuple(layer.output.shape[1:]), layer.count_params()) for layer in model.layers]
    assert table == [
        ("patch", (50, 50, 3), 0),
        ("conv1", (50, 50, 30), 5 * 5 * 3 * 30 + 30),
        ("conv2", (50, 50, 30), 5 * 5 * 30 * 30 + 30),
        ("relu2", (50, 50, 30), 0),
        ("pool", (25, 25, 30), 0),
        ("flatten", (25 * 25 * 30,), 0),
        ("logits", (2,), 25 * 25 * 30 * 2 + 2),
        ("softmax", (2,), 0),
    ]
    assert model.count_params() == 2280 + 22530 + 37502 == 62312
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    for conv in (conv1, conv2):
        assert conv.kernel_size == (5, 5) and conv.strides == (1, 1) and conv.padding == "same"
    assert model.get_layer("pool").pool_size == (2, 2) and model.get_layer("pool").strides == (2, 2)


def test_variants_need_no_new_code_path():
    model = cnn.build_thanh_cnn(
        input_shape=(20, 20, 3),
        filters=(6, 8, 8),
        activation="selu",
        activate_every_conv=True,
        dense_units=(16,),
        dropout=0.25,
        n_classes=3,
        seed=1,
    )
    names = [layer.name for layer in model.layers]
    assert names == [
        "patch", "conv1", "selu1", "conv2", "selu2", "conv3", "selu3", "pool", "flatten",
        "dropout1", "fc1", "fc1_selu", "dropout_out", "logits", "softmax",
    ]  # fmt: skip
    assert model.output_shape == (None, 3)
    assert model.get_layer("pool").output.shape[1:] == (10, 10, 8)
    assert type(model.get_layer("conv1").kernel_initializer).__name__ == "LecunNormal"


# DenseNet121, for comparison (weights from a user's file, never downloaded). TensorFlow's variables warn
# (NumPy 2 copy keyword) when Keras converts DenseNet's batch-normalisation state to arrays.
_TF_COPY_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


@pytest.fixture(scope="module")
def densenet_weights(tmp_path_factory):
    """A weights file of DenseNet121 without its top, as a user would give (random here: no download)."""
    model = cnn.build_densenet121(input_shape=(32, 32, 3), seed=0)
    path = tmp_path_factory.mktemp("weights") / "densenet121_notop.weights.h5"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        model.get_layer("densenet121").save_weights(path)
    return path, model.get_layer("densenet121").get_weights()


@_TF_COPY_WARNING
def test_densenet121_reads_the_backbone_weights_from_the_given_file(densenet_weights):
    path, expected = densenet_weights
    model = cnn.build_densenet121(input_shape=(32, 32, 3), weights=path, dropout=0.2, seed=1)
    assert [layer.name for layer in model.layers] == ["patch", "densenet121", "dropout_out", "logits", "softmax"]
    assert model.output_shape == (None, 2)
    got = model.get_layer("densenet121").get_weights()
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


@_TF_COPY_WARNING
def test_densenet121_refuses_downloads_missing_and_foreign_weights(densenet_weights, tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        cnn.build_densenet121(input_shape=(32, 32, 3), weights="imagenet")
    with pytest.raises(ValueError, match="not found"):
        cnn.build_densenet121(input_shape=(32, 32, 3), weights=tmp_path / "missing.h5")
    foreign = tmp_path / "thanh.weights.h5"
    cnn.build_thanh_cnn(input_shape=(32, 32, 3), seed=0).save_weights(foreign)
    with pytest.raises(ValueError, match="not DenseNet121 weights"):
        cnn.build_densenet121(input_shape=(32, 32, 3), weights=foreign)
    with pytest.raises(ValueError, match="at least 32x32"):
        cnn.build_densenet121(input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="needs architecture='densenet121'"):
        cnn.CNNClassifier(backbone_weights=str(densenet_weights[0]))._architecture((50, 50, 3), 2)
    with pytest.raises(ValueError, match="architecture must be one of"):
        cnn.CNNClassifier(architecture="resnet")._architecture((50, 50, 3), 2)


@pytest.mark.slow
@_TF_COPY_WARNING
def test_densenet121_trains_saves_and_loads_through_the_same_estimator(densenet_weights, tmp_path):
    path, _ = densenet_weights
    X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    clf = cnn.CNNClassifier(architecture="densenet121", backbone_weights=str(path), epochs=1, batch_size=8,
                            validation_fraction=0, tta=False, random_state=0, device="cpu").fit(X, y)  # fmt: skip
    assert clf.architecture_["name"] == "densenet121"
    assert clf.architecture_["weights_sha256"] == file_sha256(path)
    p = clf.predict_proba(X)
    assert p.shape == (8, 2)
    assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    folder = clf.save(tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["architecture"] == clf.architecture_
    assert_allclose(cnn.CNNClassifier.load(folder, device="cpu").predict_proba(X), p, atol=1e-6)
    with pytest.raises(NotImplementedError, match="architecture='thanh'"):
        cnn.export_numpy(clf)  # a bundle's NumPy inference covers the paper's family only


def test_same_seed_same_weights():
    a = cnn.build_thanh_cnn(input_shape=(8, 8, 3), filters=(2,), seed=3).get_weights()
    b = cnn.build_thanh_cnn(input_shape=(8, 8, 3), filters=(2,), seed=3).get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filters": ()}, "filters must be a non-empty sequence"),
        ({"filters": (0, 3)}, "filters must be a non-empty sequence of positive ints"),
        ({"kernel_size": 4}, "kernel_size must be a positive odd int"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"pool_size": 0}, "pool_size must be a positive int"),
        ({"pool_size": True}, "pool_size must be a positive int, got True"),  # a bool is not a size
        ({"kernel_size": True}, r"kernel_size must be a positive odd int \(zero padding kernel_size // 2\), got True"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": "0.5"}, r"dropout must be in \[0, 1\); got '0.5'"),  # refused in words, not by Keras later
        ({"dropout": True}, r"dropout must be in \[0, 1\); got True"),
        ({"n_classes": 1}, "n_classes must be an int >= 2"),
        ({"input_shape": (50, 50)}, r"input_shape must be \(height, width, channels\)"),
        ({"input_shape": (1, 1, 3)}, "smaller than the pooling window"),
    ],
)
def test_build_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cnn.build_thanh_cnn(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------------------


def test_tiny_cnn_learns_separable_patches(trained, discs):
    clf, _ = trained
    X, y, _ = discs
    assert np.mean(clf.predict(X) == y) >= 0.95
    assert clf.device_ == "cpu"
    assert clf.backend_ == keras.config.backend()
    assert 1 <= clf.best_epoch_ <= clf.n_iter_ <= 15
    assert set(clf.history_) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert clf.input_shape_ == (16, 16, 3)
    assert clf.classes_.tolist() == [0, 1]


def test_predict_proba_rows_sum_to_one(trained, discs):
    clf, _ = trained
    X, _, _ = discs
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    assert proba.min() >= 0.0 and proba.max() <= 1.0
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert_allclose(clf.predict_proba(X[:0]).shape, (0, 2))


def test_normalisation_is_fitted_on_training_part_only(trained, discs):
    clf, _ = trained
    X, _, _ = discs
    part = X[clf.train_indices_].reshape(-1, 3).astype(np.float64)
    assert_allclose(clf.mean_, part.mean(axis=0), rtol=0, atol=1e-3)
    assert_allclose(clf.std_, part.std(axis=0), rtol=0, atol=1e-3)
    assert len(clf.validation_indices_) > 0


def test_validation_split_keeps_groups_whole(trained, discs):
    clf, _ = trained
    _, _, groups = discs
    train, val = clf.train_indices_, clf.validation_indices_
    assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(groups)))


@pytest.mark.parametrize("seed", range(20))
def test_validation_split_never_puts_a_group_on_both_sides(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    groups = rng.integers(0, int(rng.integers(2, 15)), n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    train, val = cnn._validation_split(y, groups, 0.2, seed)
    assert not set(groups[train]) & set(groups[val])
    assert len(train) + len(val) == n


@pytest.mark.parametrize(("fraction", "groups"), [(0.6, [0, 0, 0, 1, 1, 1]), (0.9, None)])
def test_a_validation_split_that_leaves_no_training_data_is_skipped(caplog, fraction, groups):
    # Not scikit-learn's "n_samples=2 ... train set will be empty", where its samples are our groups.
    y = np.array([0, 1, 0, 1, 0, 1])
    train, val = cnn._validation_split(y, None if groups is None else np.array(groups), fraction, 0)
    assert_array_equal(train, np.arange(6))
    assert len(val) == 0
    assert f"validation_fraction {fraction:g} of " in caplog.text and "leaves none for training" in caplog.text


def test_augmentation_sees_only_training_patches(trained, discs):
    clf, received = trained
    X, _, _ = discs
    lookup = _row_lookup(X)
    seen = {lookup[patch.tobytes()] for batch in received for patch in batch}
    assert seen == set(clf.train_indices_.tolist())  # every training patch, nothing else
    assert not seen & set(clf.validation_indices_.tolist())


def test_prediction_is_never_augmented(trained, discs, monkeypatch):
    clf, _ = trained
    X, _, _ = discs
    calls = []
    monkeypatch.setattr(cnn, "augment_batch", lambda *a, **k: calls.append(1))
    clf.predict_proba(X)
    clf.predict(X[:5])
    assert calls == []


def test_class_weights():
    classes = np.array([0, 1])
    assert_allclose(cnn._class_weights("balanced", classes, np.array([0, 0, 0, 1])), [4 / 6, 2.0], rtol=1e-12)
    assert_allclose(cnn._class_weights(None, classes, np.array([0, 1])), [1.0, 1.0])
    assert_allclose(cnn._class_weights({0: 1.0, 1: 3.0}, classes, np.array([0, 1])), [1.0, 3.0])
    with pytest.raises(ValueError, match="no weight"):
        cnn._class_weights({0: 1.0}, classes, np.array([0, 1]))


def test_same_random_state_same_model(discs):
    X, y, _ = discs
    kwargs = dict(**TINY, epochs=2, batch_size=32, validation_fraction=0.0, random_state=7, device="cpu")
    p1 = cnn.CNNClassifier(**kwargs).fit(X, y).predict_proba(X)
    p2 = cnn.CNNClassifier(**kwargs).fit(X, y).predict_proba(X)
    assert_allclose(p1, p2, rtol=0, atol=1e-6)


def test_fit_leaves_python_and_numpy_global_streams_alone(discs):
    import random

    X, y, _ = discs
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    cnn.CNNClassifier(**TINY, epochs=1, validation_fraction=0.0, random_state=7, device="cpu").fit(X, y)
    assert (random.random(), np.random.random()) == expected


def test_fit_leaves_the_backends_global_random_state_alone(discs):
    # A user's own keras.random stream goes on after a seeded fit as if the fit had not run, and TensorFlow's
    # op determinism is off again afterwards.
    X, y, _ = discs

    def second_draw(fit):
        keras.utils.set_random_seed(1)
        keras.random.uniform((2,))
        if fit:
            cnn.CNNClassifier(**TINY, epochs=1, validation_fraction=0.0, random_state=7, device="cpu").fit(X, y)
        return keras.ops.convert_to_numpy(keras.random.uniform((2,)))

    assert np.array_equal(second_draw(False), second_draw(True))
    if keras.config.backend() == "tensorflow":
        from tensorflow.python.framework import config

        assert not config.is_op_determinism_enabled()


@pytest.mark.slow
@_TF_COPY_WARNING
def test_unseeded_densenet_fits_start_from_different_weights(monkeypatch):
    # random_state=None: the backbone's unseeded initialisers must not replay the same Python stream each fit.
    # Each fit stops once its network is built: the starting weights are the point, and training a DenseNet121
    # twice would cost two minutes.
    first_kernels = []
    build = cnn._build

    class Built(Exception):
        pass

    def recording(arch, **kwargs):
        model = build(arch, **kwargs)
        first_kernels.append(model.get_layer("densenet121").get_weights()[0].copy())
        raise Built

    monkeypatch.setattr(cnn, "_build", recording)
    X = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for _ in range(2):
        with pytest.raises(Built):
            cnn.CNNClassifier(architecture="densenet121", epochs=1, batch_size=4, validation_fraction=0.0, tta=False,
                              device="cpu").fit(X, np.arange(4) % 2)  # fmt: skip
    assert len(first_kernels) == 2
    assert not np.array_equal(*first_kernels)


def test_fit_returns_the_estimator(discs):
    # scikit-learn's contract (pipelines and `clf = Model().fit(...)` chains rely on it).
    X, y, groups = discs
    clf = cnn.CNNClassifier(**TINY, epochs=1, validation_fraction=0.0, random_state=0, device="cpu")
    assert clf.fit(X, y, groups=groups) is clf
    assert clf.predict_proba(X[:2]).shape == (2, 2)


@pytest.mark.parametrize(
    "X, y, groups, match",
    [
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], None, "X must be a 4-D array"),
        (np.zeros((4, 8, 8, 3), np.uint8), [1, 1, 1, 1], None, "y has a single class"),
        (np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0], None, r"y must be 1-D with one label per patch \(4\)"),
        (np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], [0, 1], r"groups must be 1-D with one entry per patch \(4\)"),
        (np.full((4, 8, 8, 3), np.nan), [0, 1, 0, 1], None, "X contains NaN or infinite values"),
    ],
)
def test_fit_rejects_bad_input(X, y, groups, match):
    with pytest.raises(ValueError, match=match):
        cnn.CNNClassifier(**TINY).fit(X, y, groups=groups)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive int, got 0"),
        ({"epochs": True}, "epochs must be a positive int, got True"),
        ({"batch_size": 2.0}, "batch_size must be a positive int, got 2.0"),
        ({"patience": -1}, "patience must be an int >= 0, got -1"),
        ({"patience": False}, "patience must be an int >= 0, got False"),
        ({"max_shift": -1}, "max_shift must be an int >= 0, got -1"),
        ({"max_shift": 8}, r"max_shift must be less than the patch's shorter side \(8\); got 8"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine; got 'step'"),
        ({"ema_momentum": 1.0, "validation_fraction": 0.0}, r"ema_momentum must be None or in \(0, 1\); got 1.0"),
        ({"ema_momentum": 0.9}, "ema_momentum needs validation_fraction=0: early stopping keeps"),
        ({"ema_max_start_share": 0.0}, r"ema_max_start_share must be None or in \(0, 1\); got 0.0"),
        ({"ema_max_start_share": True}, r"ema_max_start_share must be None or in \(0, 1\); got True"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\); got 1.0"),
        ({"label_smoothing": None}, r"label_smoothing must be in \[0, 1\); got None"),
        ({"ema_momentum": "0.5", "validation_fraction": 0.0}, r"ema_momentum must be None or in \(0, 1\); got '0.5'"),
        ({"ema_momentum": 0.9, "validation_fraction": 1.5}, r"validation_fraction must be in \[0, 1\); got 1.5"),
        ({"learning_rate": "1e-3"}, "learning_rate must be > 0; got '1e-3'"),
    ],
)
def test_fit_rejects_bad_training_parameters(kwargs, match):
    X, y = np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1]
    with pytest.raises(ValueError, match=match):
        cnn.CNNClassifier(**TINY, **kwargs).fit(X, y)


class _WeightsPerStep:
    """Stands in for the per-epoch logging callback and records the weights after every training step."""

    def __init__(self):
        self.steps: list[list[np.ndarray]] = []

    def __call__(self):
        steps = self.steps

        class Recorder(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                steps.append([np.array(w) for w in self.model.get_weights()])

        return Recorder()


def test_ema_momentum_gives_the_moving_average_of_the_step_weights(discs, monkeypatch, caplog):
    # The network keeps the exponential moving average of the weights its own steps walked (the first step's
    # taken as they are); without the setting, the last step's.
    X, y, _ = discs
    settings = dict(**TINY, epochs=2, batch_size=16, validation_fraction=0.0, augment=False, random_state=0,
                    device="cpu")  # fmt: skip
    recorder = _WeightsPerStep()
    monkeypatch.setattr(cnn, "_logging_callback", recorder)
    plain = cnn.CNNClassifier(**settings).fit(X, y)
    n_steps = 2 * int(np.ceil(len(X) / 16))
    assert len(recorder.steps) == n_steps
    for last, walked in zip(plain.model_.get_weights(), recorder.steps[-1]):
        assert_array_equal(last, walked)
    # As given (no cap): 0.8 ** 9 = 13 % of the first step's weights, with a warning; with the default cap of
    # 5 %, the momentum is lowered to 0.05 ** (1 / 9) = 0.7169 and the same recurrence holds with it.
    for cap, momentum in ((None, 0.8), (0.05, 0.05 ** (1 / 9))):
        caplog.clear()
        with caplog.at_level("INFO", logger=cnn.logger.name):
            averaged = cnn.CNNClassifier(**settings, ema_momentum=0.8, ema_max_start_share=cap).fit(X, y)
        warned = "over 10 training steps: the average keeps 13 % of the first step's weights" in caplog.text
        assert warned is (cap is None)
        assert ("ema_momentum 0.8 lowered to 0.7169 over 10 training steps" in caplog.text) is (cap is not None)
        assert averaged.ema_momentum_ == pytest.approx(momentum, rel=1e-12)
        own = recorder.steps[-n_steps:]
        assert len(recorder.steps) % n_steps == 0
        expected = own[0]
        for weights in own[1:]:
            expected = [momentum * a + (1 - momentum) * w for a, w in zip(expected, weights)]
        for got, want in zip(averaged.model_.get_weights(), expected):
            assert_allclose(got, want, rtol=0, atol=1e-6)
        assert any(not np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(averaged.model_.get_weights(), own[-1]))
    assert plain.ema_momentum_ is None


@pytest.mark.parametrize(
    ("momentum", "cap", "steps", "used"),
    [
        (0.98, 0.05, 210, 0.98),  # an ALL-IDB1 CNN: 0.98 ** 209 = 1.5 %, as given
        (0.98, 0.05, 150, 0.98),  # 0.98 ** 149 = 4.9 %: the fewest steps that keep 0.98
        (0.98, 0.05, 149, 0.05 ** (1 / 148)),
        (0.98, 0.05, 30, 0.05 ** (1 / 29)),  # an ALL-IDB2 CNN: 0.98 would keep 56 % of the first step
        (0.98, None, 30, 0.98),
        (0.98, 0.05, 1, 0.98),  # one step: the average is that step's weights whatever the momentum
        (None, 0.05, 30, None),
    ],
)
def test_ema_momentum_is_lowered_only_where_the_first_step_would_keep_too_large_a_share(momentum, cap, steps, used):
    got = cnn._ema_momentum(momentum, cap, steps)
    assert got == (None if used is None else pytest.approx(used, rel=1e-12))
    if got is not None and cap is not None and steps > 1:
        assert got ** (steps - 1) <= cap * (1 + 1e-9)


def test_ema_momentum_warns_only_when_training_is_too_short_to_forget_the_first_step(discs, caplog):
    X, y, _ = discs
    for epochs, warned in ((1, True), (8, False)):  # 5 steps an epoch: 0.5 ** 4 = 6 %, 0.5 ** 39 = 2e-12
        caplog.clear()
        with caplog.at_level("WARNING", logger=cnn.logger.name):
            cnn.CNNClassifier(**TINY, epochs=epochs, batch_size=16, validation_fraction=0.0, ema_momentum=0.5,
                              ema_max_start_share=None, random_state=0).fit(X, y)  # fmt: skip
        assert ("ema_momentum 0.5 over 5 training steps: the average keeps 6 %" in caplog.text) is warned
        assert ("the average keeps" in caplog.text) is warned


def test_cosine_schedule_decays_over_every_training_step(discs):
    X, y, groups = discs
    settings = dict(**TINY, epochs=3, batch_size=16, learning_rate=1e-2, validation_fraction=0.0, random_state=0)
    steps = 3 * int(np.ceil(len(X) / 16))
    for schedule, last in (("constant", 1e-2), ("cosine", 0.0)):
        optimizer = cnn.CNNClassifier(**settings, lr_schedule=schedule).fit(X, y).model_.optimizer
        assert int(optimizer.iterations) == steps
        assert_allclose(float(optimizer.learning_rate), last, rtol=0, atol=1e-9)  # the rate after the last step
    rate = optimizer.get_config()["learning_rate"]  # the cosine schedule, serialised
    assert rate["class_name"] == "CosineDecay"
    assert rate["config"]["decay_steps"] == steps and rate["config"]["initial_learning_rate"] == 1e-2
    # With an early-stopping split, the steps are those of the training part alone.
    clf = cnn.CNNClassifier(**{**settings, "validation_fraction": 0.3}, lr_schedule="cosine").fit(X, y, groups=groups)
    assert 0 < len(clf.train_indices_) < len(X)
    rate = clf.model_.optimizer.get_config()["learning_rate"]
    assert rate["config"]["decay_steps"] == 3 * int(np.ceil(len(clf.train_indices_) / 16))


def test_label_smoothing_trains_on_smoothed_one_hot_targets(discs):
    y = np.array([0, 1, 1])
    assert_array_equal(cnn._targets(y, 2, 0.0), y)
    assert cnn._targets(y, 2, 0.0).dtype == np.int32
    assert_array_equal(cnn._targets(y, 2, 0.1), [[1, 0], [0, 1], [0, 1]])
    # Keras smooths the one-hot rows: with 0.2 over 2 classes the targets are 0.9 / 0.1.
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], np.float32)
    smoothed = np.where(cnn._targets(y, 2, 0.2) == 1, 0.9, 0.1)
    expected = -np.mean(np.sum(smoothed * np.log(probs), axis=1))
    assert_allclose(float(cnn._loss(0.2)(cnn._targets(y, 2, 0.2), probs)), expected, rtol=1e-6)
    X, labels, _ = discs
    clf = cnn.CNNClassifier(**TINY, epochs=1, label_smoothing=0.1, validation_fraction=0.2, random_state=0)
    proba = clf.fit(X, labels).predict_proba(X[:4])
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)


@KERAS_SAVE_WARNING
def test_training_settings_survive_save_load_and_numpy_export(discs, tmp_path):
    X, y, _ = discs
    settings = {"lr_schedule": "cosine", "ema_momentum": 0.9, "ema_max_start_share": 0.1, "label_smoothing": 0.1}
    clf = cnn.CNNClassifier(**TINY, epochs=2, validation_fraction=0.0, random_state=0, **settings).fit(X, y)
    loaded = cnn.CNNClassifier.load(clf.save(tmp_path / "model"))
    assert {k: loaded.get_params()[k] for k in settings} == settings
    steps = 2 * int(np.ceil(len(X) / 64))  # so few that the momentum is lowered
    assert loaded.ema_momentum_ == clf.ema_momentum_ == pytest.approx(0.1 ** (1 / (steps - 1)), rel=1e-12)
    assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-5)
    assert_allclose(cnn.numpy_predict_proba(cnn.export_numpy(clf), X), clf.predict_proba(X), rtol=0, atol=1e-5)


def test_estimator_clones_and_checks_fitted():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    clf = cnn.CNNClassifier(filters=(4, 4), activation="selu", random_state=3)
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((1, 16, 16, 3), np.uint8))


def test_resolve_device():
    assert cnn.resolve_device("cpu") == "cpu"
    assert cnn.resolve_device("auto") in ("cpu", "gpu")
    with pytest.raises(ValueError, match="device must be"):
        cnn.resolve_device("tpu")
    if cnn.resolve_device("auto") == "cpu":
        with pytest.raises(ValueError, match="sees no GPU"):
            cnn.resolve_device("gpu")


# ----------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------


@KERAS_SAVE_WARNING
def test_config_records_the_hash_of_the_training_data(trained, discs, tmp_path):
    # Without a caller's hash, config.json records the SHA-256 of the patches and labels fit saw.
    clf, _ = trained
    X, y, _ = discs
    assert clf.training_data_hash_ == cnn._training_data_hash(X, np.asarray(y))
    assert re.fullmatch(r"[0-9a-f]{64}", clf.training_data_hash_)
    flipped = np.asarray(y).copy()
    flipped[0] = 1 - flipped[0]
    assert cnn._training_data_hash(X, flipped) != clf.training_data_hash_
    assert cnn._training_data_hash(X[::-1], np.asarray(y)[::-1]) != clf.training_data_hash_  # order counts
    folder = clf.save(tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["training_data_hash"] == clf.training_data_hash_
    assert cnn.CNNClassifier.load(folder).training_data_hash_ == clf.training_data_hash_


@KERAS_SAVE_WARNING
def test_save_load_gives_identical_predictions(trained, discs, tmp_path):
    clf, _ = trained
    X, _, _ = discs
    folder = clf.save(
        tmp_path / "model",
        metadata={"um_per_px": 0.12, "dataset": "synthetic"},
        data_hash="abc123",
        metrics={"acc": 1.0},
    )
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.keras"]  # no temporary files left
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == cnn.FORMAT_VERSION
    assert config["um_per_px"] == 0.12 and config["training_data_hash"] == "abc123"
    assert config["patch_size"] == [16, 16] and config["classes"] == [0, 1]
    assert config["architecture"]["filters"] == [4, 4]
    assert config["keras_version"] == keras.__version__ and config["backend"] == keras.config.backend()

    loaded = cnn.CNNClassifier.load(folder)
    # Float32 round-off only (torch's CPU convolutions, unlike TensorFlow's, vary with the memory layout).
    assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-5)
    assert_allclose(loaded.mean_, clf.mean_, rtol=0, atol=0)
    assert loaded.get_params()["filters"] == (4, 4)
    assert loaded.metadata_["um_per_px"] == 0.12 and loaded.metrics_ == {"acc": 1.0}


@KERAS_SAVE_WARNING
def test_save_load_keeps_a_class_weight_dict(discs, tmp_path):
    # JSON keys are strings: the dict must come back keyed by the classes themselves, or refitting fails.
    X, y, _ = discs
    weights = {np.int64(0): 1.0, 1: 2.0}
    clf = cnn.CNNClassifier(**TINY, epochs=1, validation_fraction=0.0, class_weight=weights, random_state=0,
                            device="cpu").fit(X, y)  # fmt: skip
    loaded = cnn.CNNClassifier.load(clf.save(tmp_path / "model"))
    assert loaded.get_params()["class_weight"] == {0: 1.0, 1: 2.0}
    loaded.set_params(epochs=1).fit(X, y)


def _corrupt(folder, how):
    config_path, model_path = folder / "config.json", folder / "model.keras"
    config = json.loads(config_path.read_text())
    if how == "model bytes":
        data = bytearray(model_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model_path.write_bytes(bytes(data))
    elif how == "model not keras":  # consistent checksum, so Keras itself must reject it
        model_path.write_bytes(b"not a zip archive")
        config["model_sha256"] = file_sha256(model_path)
        config_path.write_text(json.dumps(config))
    elif how == "model missing":
        model_path.unlink()
    elif how == "config truncated":
        config_path.write_text(config_path.read_text()[:50])
    elif how == "config missing":
        config_path.unlink()
    elif how == "newer version":
        config["format_version"] = cnn.FORMAT_VERSION + 1
        config_path.write_text(json.dumps(config))
    elif how == "bad normalisation":
        config["normalisation"]["std"] = [1.0]
        config_path.write_text(json.dumps(config))
    elif how == "folder missing":
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


@KERAS_SAVE_WARNING
@pytest.mark.parametrize(
    "how",
    [
        "model bytes",
        "model not keras",
        "model missing",
        "config truncated",
        "config missing",
        "newer version",
        "bad normalisation",
        "folder missing",
    ],
)
def test_load_broken_folder_raises_leukoseg_error(trained, tmp_path, how):
    clf, _ = trained
    folder = clf.save(tmp_path / "model")
    _corrupt(folder, how)
    with pytest.raises(LeukosegError) as info:
        cnn.CNNClassifier.load(folder)
    assert "\n" not in str(info.value) and info.value.reason


@KERAS_SAVE_WARNING
def test_load_refuses_a_model_that_carries_code(trained, tmp_path):
    # Safe mode: a Lambda layer's Python code would run on load. The checksum is made consistent, so only
    # Keras's safe mode stands between the file and the code.
    clf, _ = trained
    folder = clf.save(tmp_path / "model")
    inputs = keras.Input(shape=clf.input_shape_)
    x = keras.layers.Lambda(lambda t: t * 1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(folder / "model.keras")
    config = json.loads((folder / "config.json").read_text())
    config["model_sha256"] = file_sha256(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LeukosegError, match="not a readable Keras model .*Lambda") as info:
        cnn.CNNClassifier.load(folder)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------


def test_augment_batch_is_seeded_and_leaves_input_alone():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8)
    before = x.copy()
    a = augment_batch(x, rng=np.random.default_rng(1), stain_jitter=0.05, brightness_jitter=0.1)
    b = augment_batch(x, rng=np.random.default_rng(1), stain_jitter=0.05, brightness_jitter=0.1)
    c = augment_batch(x, rng=np.random.default_rng(2), stain_jitter=0.05, brightness_jitter=0.1)
    assert np.array_equal(x, before)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255


def test_augment_batch_geometry_is_dihedral():
    x = np.random.default_rng(0).integers(0, 256, (200, 5, 5, 3), dtype=np.uint8)
    out = augment_batch(x, rng=np.random.default_rng(0), stain_jitter=0.0, brightness_jitter=0.0)
    used = set()
    for i in range(len(x)):
        matches = [op for op in DIHEDRAL_SQUARE if np.array_equal(out[i], dihedral(x[i : i + 1], *op)[0])]
        assert matches
        used.update(matches)
    assert used == set(DIHEDRAL_SQUARE)  # all 8 symmetries occur


def test_augment_batch_colour_jitter_is_bounded():
    x = np.full((500, 2, 2, 3), 128, np.uint8)
    out = augment_batch(x, rng=np.random.default_rng(0), stain_jitter=0.05, brightness_jitter=0.1)
    assert np.all(np.abs(out - 128) <= 128 * 0.05 + 255 * 0.1 + 1e-3)
    assert out.std() > 1  # it does jitter


def test_augment_batch_keeps_non_square_shape():
    x = np.zeros((50, 4, 6, 3), np.uint8)
    assert augment_batch(x, rng=np.random.default_rng(0)).shape == x.shape


def test_augment_batch_shift_moves_each_patch_by_at_most_max_shift():
    x = np.random.default_rng(0).integers(0, 256, (300, 7, 7, 3), dtype=np.uint8)
    plain = augment_batch(x, rng=np.random.default_rng(3), stain_jitter=0.0, brightness_jitter=0.0)
    out = augment_batch(x, rng=np.random.default_rng(3), stain_jitter=0.0, brightness_jitter=0.0, max_shift=2)
    padded = np.pad(plain, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    seen = set()
    for i in range(len(x)):
        # the same flip or turn as without the shift (drawn first), then one of the 25 shifts of at most 2 px
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(out[i], padded[i, 2 + dy : 9 + dy, 2 + dx : 9 + dx])]  # fmt: skip
        assert found, i
        seen.update(found)
    assert len(seen) == 25 and (0, 0) in seen


def test_augment_batch_without_shift_draws_nothing_more():
    # max_shift=0 must leave the batches of every run made before the option existed unchanged
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = augment_batch(x, rng=rng_a)
    b = augment_batch(x, rng=rng_b, max_shift=0)
    assert np.array_equal(a, b) and rng_a.random() == rng_b.random()


@pytest.mark.parametrize(
    "patches, kwargs, match",
    [
        (np.zeros((4, 4, 3)), {}, "patches must be a 4-D array"),
        (np.zeros((1, 4, 4, 3)), {"max_shift": 4}, r"max_shift must be less than the patch's shorter side \(4\)"),
        (np.zeros((1, 4, 4, 3)), {"max_shift": 1.5}, r"max_shift must be an int >= 0, got 1.5"),
        (np.zeros((1, 4, 4, 3)), {"max_shift": -1}, r"max_shift must be an int >= 0, got -1"),
        (np.zeros((1, 4, 4, 3)), {"stain_jitter": 1.5}, r"stain_jitter must be in \[0, 1\); got 1.5"),
        (np.zeros((1, 4, 4, 3)), {"brightness_jitter": -0.1}, r"brightness_jitter must be in \[0, 1\); got -0.1"),
        (np.zeros((1, 4, 4, 3)), {"stain_jitter": None}, r"stain_jitter must be in \[0, 1\); got None"),
    ],
)
def test_augment_batch_rejects_bad_input(patches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        augment_batch(patches, rng=np.random.default_rng(0), **kwargs)


# ----------------------------------------------------------------------------------------------------------
# NumPy inference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch",
    [
        {},  # the paper's network, 50x50, random weights
        {"filters": (6, 8), "activation": "selu", "activate_every_conv": True, "dense_units": (5,), "dropout": 0.1},
        {"filters": (3, 4, 5), "activation": "tanh", "activate_every_conv": True, "pool_size": 3},
        {"filters": (5,), "activation": "elu", "kernel_size": 3, "dense_units": (4, 3)},
        {"filters": (4, 4), "activation": "sigmoid", "pool_size": 1, "n_classes": 3},
    ],
)
def test_numpy_forward_matches_keras(arch, tmp_path):
    shape = (50, 50, 3) if not arch else (15, 15, 3)
    # On the CPU: a GPU may compute convolutions in TF32 (torch's default), about 1e-4 off float32.
    with cnn.device_scope("cpu"):
        model = cnn.build_thanh_cnn(input_shape=shape, seed=0, **arch)
        X = np.random.default_rng(1).integers(0, 256, (8, *shape), dtype=np.uint8)
        params = cnn.export_numpy(model)
        params["mean"] = np.array([180.0, 140.0, 170.0], np.float32)
        params["std"] = np.array([60.0, 70.0, 50.0], np.float32)
        expected = model.predict((X - params["mean"]) / params["std"], verbose=0)
    assert 0.001 < expected.max(axis=1).min() < 0.999  # not saturated: the comparison means something

    np.savez(tmp_path / "cnn.npz", **params)
    with np.load(tmp_path / "cnn.npz", allow_pickle=False) as f:
        reloaded = dict(f)
    assert_allclose(cnn.numpy_predict_proba(reloaded, X), expected, rtol=0, atol=1e-5)


def test_numpy_forward_of_fitted_estimator(trained, discs):
    clf, _ = trained
    X, _, _ = discs
    params = cnn.export_numpy(clf)
    assert params["classes"].tolist() == [0, 1]
    assert_allclose(cnn.numpy_predict_proba(params, X), clf.predict_proba(X), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        cnn.numpy_predict_proba(params, np.zeros((1, 8, 8, 3), np.uint8))


def test_tta_is_the_mean_over_the_dihedral_views_and_turn_invariant(trained, discs):
    from leukoseg.classify.augment import DIHEDRAL_SQUARE, dihedral

    clf, _ = trained
    # Noise patches: the discs are classified with near certainty in every view, noise is not.
    X = np.random.default_rng(5).integers(0, 256, (20, *discs[0].shape[1:]), dtype=np.uint8)
    assert clf.tta  # the default
    p = clf.predict_proba(X)
    views = [np.ascontiguousarray(dihedral(X, k, f)) for k, f in DIHEDRAL_SQUARE]
    try:
        clf.set_params(tta=False)
        plain = [clf.predict_proba(v) for v in views]
    finally:
        clf.set_params(tta=True)
    # Compared in relative terms: the tiny network is nearly certain, so differences are in the small class.
    # rtol: float32 round-off of the views' batches (exact with TensorFlow, 5e-8 with torch).
    assert_allclose(p, np.mean(plain, axis=0), rtol=1e-6, atol=0)
    assert not np.allclose(plain[0], p, rtol=1e-2, atol=0)  # the views do differ on their own
    for v in views:  # a turned or mirrored cell gets the same probability
        assert_allclose(clf.predict_proba(v), p, rtol=1e-9, atol=0)
    params = cnn.export_numpy(clf)
    assert bool(params["tta"])
    assert_allclose(cnn.numpy_predict_proba(params, X), p, rtol=1e-3, atol=1e-6)
    assert_allclose(cnn.numpy_predict_proba(params, X, tta=False), plain[0], rtol=1e-3, atol=1e-6)
    assert cnn.numpy_predict_proba(params, X[:0]).shape == (0, 2)


@pytest.mark.parametrize("layer", ["batchnorm", "gelu", "valid conv"])
def test_numpy_export_refuses_what_it_cannot_compute(layer):
    inputs = keras.Input((8, 8, 3))
    if layer == "batchnorm":
        x = keras.layers.BatchNormalization()(inputs)
    elif layer == "gelu":
        x = keras.layers.Conv2D(2, 3, padding="same", activation="gelu")(inputs)
    else:
        x = keras.layers.Conv2D(2, 3, padding="valid")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    with pytest.raises(NotImplementedError):
        cnn.export_numpy(keras.Model(inputs, outputs))


def test_import_does_not_load_keras_or_a_backend():
    code = (
        "import sys, leukoseg.classify.cnn, leukoseg.classify.augment\n"
        "heavy = [m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
