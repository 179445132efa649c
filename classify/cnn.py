"""The convolutional neural network of Thanh et al. (2017) for lymphoblast / normal cell patches.

Reference
---------
T.T.P. Thanh, G.N. Pham, J.-H. Park, K.-S. Moon, S.-H. Lee, K.-R. Kwon, "Acute leukemia classification using
convolution neural network in clinical decision support system", CS & IT-CSCP 2017, pp. 49-53.
Companion paper: T.T.P. Thanh, C. Vununu, S. Atoev, S.-H. Lee, K.-R. Kwon, "Leukemia blood cell image
classification using convolutional neural network", IJCTE 10(2), 2018, pp. 54-58 (both as in the README).

Network
-------
:func:`build_thanh_cnn` with its defaults builds exactly these layers (channels last):

====  =========================================================  ==========  ==================================
 #    layer                                                      output      parameters
====  =========================================================  ==========  ==================================
 0    input: RGB cell patch                                      50x50x3     0
 1    ``conv1``: 5x5 convolution, stride 1, zero padding 2,      50x50x30    5*5*3*30 + 30 = 2,280
      30 maps (see note)
 2    ``conv2``: 5x5 convolution, stride 1, zero padding 2,      50x50x30    5*5*30*30 + 30 = 22,530
      30 maps
 3    ``relu2``: ReLU                                            50x50x30    0
 4    ``pool``: max-pooling 2x2, stride 2                        25x25x30    0
 5    ``flatten``                                                18750       0
 6    ``logits``: fully connected                                2           18,750*2 + 2 = 37,502
 7    ``softmax``                                                2           0
====  =========================================================  ==========  ==================================

62,312 trainable parameters in all. As in the paper, the two convolutions follow each other with no
non-linearity between them (``activate_every_conv=False``); set ``activate_every_conv=True`` to put the
activation after every convolution, which deeper variants (``filters=(32, 32, 64)``) want.

Note on the first layer: the paper gives the second convolution 30 feature maps; the number of maps of the
first convolution could not be checked against the text available to us, so 30 is used for it too
(``filters=(30, 30)``). Change it with `filters`.

Other parts
-----------
- :class:`CNNClassifier`: a scikit-learn estimator around the network: per-channel normalisation,
  augmentation of training batches only (:func:`leukoseg.classify.augment.augment_batch`), class weights,
  early stopping on a validation split of whole groups (images), or a fixed number of epochs whose weights
  may be averaged over the steps (``ema_momentum``), a cosine step-size decay, label smoothing; seeded;
  ``save``/``load`` a folder with ``model.keras`` and ``config.json``.
- :func:`export_numpy` and :func:`numpy_predict_proba`: the same forward pass in NumPy alone, for
  inference without TensorFlow (cold start, small installs).
- :func:`build_densenet121`: DenseNet121 with a new head (``CNNClassifier(architecture='densenet121')``), its
  weights random or from a file the user gives, to compare a large network with the paper's on the same folds.
- :func:`resolve_device`: 'auto' / 'cpu' / 'gpu' for the active Keras backend.

The model code uses ``keras`` and ``keras.ops`` only (no backend import outside :func:`resolve_device` and the
TensorFlow determinism switch, each guarded by the active backend's name), so it is meant to run under
``KERAS_BACKEND=tensorflow``, ``jax`` or ``torch``. TensorFlow is tested here, and torch on a GPU (README:
"On a GPU, and other Keras backends"); JAX is not tested. Importing this module does not
import Keras or any backend; they load inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from leukoseg._checks import check_fraction, check_positive_int, is_real
from leukoseg._stderr import import_keras
from leukoseg.datasets import file_sha256
from leukoseg.errors import LeukosegError
from leukoseg.io import _python_scalar, write_json

from ._cnn_numpy import (
    ACTIVATIONS,
    FORMAT_VERSION,
    _check_patches,
    _normalise,
    numpy_predict_proba,
)
from .augment import _check_max_shift, augment_batch, dihedral_mean

if TYPE_CHECKING:
    import keras

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "CNNClassifier",
    "FORMAT_VERSION",
    "augment_batch",
    "build_densenet121",
    "build_thanh_cnn",
    "export_numpy",
    "numpy_predict_proba",
    "resolve_device",
]

logger = logging.getLogger(__name__)


_FORMAT_NAME = "leukoseg-cnn"
_MODEL_FILE = "model.keras"
_CONFIG_FILE = "config.json"
_DEVICES = ("auto", "cpu", "gpu")
_PREDICT_CHUNK = 1024  # patches normalised and passed to Keras at a time


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------


def build_thanh_cnn(
    *,
    input_shape: Sequence[int] = (50, 50, 3),
    filters: Sequence[int] = (30, 30),
    kernel_size: int = 5,
    activation: str = "relu",
    pool_size: int = 2,
    dense_units: Sequence[int] = (),
    dropout: float = 0.0,
    n_classes: int = 2,
    seed: int | None = None,
    activate_every_conv: bool = False,
) -> keras.Model:
    """Build the CNN of Thanh et al. (2017), or a variant of it, as an uncompiled Keras model.

    Layers: one "same"-padded stride-1 convolution per entry of `filters`, the activation (after the last
    convolution only, as in the paper, or after each with `activate_every_conv`), max-pooling, flatten,
    optional hidden dense layers (`dense_units`, each followed by the activation), optional dropout before
    each dense layer, a dense layer to `n_classes` and a softmax. See the module docstring for the default
    layer table.

    Parameters
    ----------
    input_shape : tuple of 3 int, optional
        Patch height, width and channels.
    filters : sequence of int, optional
        Feature maps of each convolution; its length is the number of convolutions.
    kernel_size : int, optional
        Odd side of the square kernels; zero padding ``kernel_size // 2`` keeps the size.
    activation : {'relu', 'selu', 'elu', 'tanh', 'sigmoid', 'linear'}, optional
        Non-linearity. With 'selu' the kernels start LeCun-normal (self-normalising nets), otherwise
        Glorot-uniform.
    pool_size : int, optional
        Side and stride of the max-pooling window; 1 means no pooling. Where it does not divide a side of
        the patch, the last ``side % pool_size`` rows or columns of the feature maps (bottom, right) are
        dropped, so the network is no longer mirror-symmetric; a warning is logged.
    dense_units : sequence of int, optional
        Hidden fully connected layers between the pooling and the output layer (none in the paper).
    dropout : float, optional
        Dropout rate before each fully connected layer, in ``[0, 1)``; 0 (the paper) adds no dropout layer.
    n_classes : int, optional
        Outputs of the softmax.
    seed : int or None, optional
        Seed of the weight initialisers and of dropout; None draws fresh weights.
    activate_every_conv : bool, optional
        Put the activation after every convolution instead of only after the last.

    Returns
    -------
    keras.Model
        Input ``(None, *input_shape)`` float32, output ``(None, n_classes)`` class probabilities.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Examples
    --------
    >>> model = build_thanh_cnn(seed=0)
    >>> model.output_shape, model.count_params()
    ((None, 2), 62312)
    >>> tiny = build_thanh_cnn(input_shape=(16, 16, 3), filters=(4, 4), seed=0)
    """
    arch = _check_architecture(
        input_shape=input_shape,
        filters=filters,
        kernel_size=kernel_size,
        activation=activation,
        pool_size=pool_size,
        dense_units=dense_units,
        dropout=dropout,
        n_classes=n_classes,
        activate_every_conv=activate_every_conv,
    )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None; got {seed!r}")

    keras = import_keras()
    from keras import layers

    def kernel_init(offset: int):
        layer_seed = None if seed is None else int(seed) + offset
        if arch["activation"] == "selu":
            return keras.initializers.LecunNormal(seed=layer_seed)
        return keras.initializers.GlorotUniform(seed=layer_seed)

    def dropout_seed(offset: int) -> int | None:
        return None if seed is None else int(seed) + 1000 + offset

    act = arch["activation"]
    inputs = keras.Input(shape=arch["input_shape"], name="patch")
    x = inputs
    n_conv = len(arch["filters"])
    for i, maps in enumerate(arch["filters"], start=1):
        x = layers.Conv2D(
            maps,
            arch["kernel_size"],
            strides=1,
            padding="same",
            kernel_initializer=kernel_init(i),
            name=f"conv{i}",
        )(x)
        if arch["activate_every_conv"] or i == n_conv:
            x = layers.Activation(act, name=f"{act}{i}")(x)
    height, width = arch["input_shape"][:2]
    if height % arch["pool_size"] or width % arch["pool_size"]:
        logger.warning("pool_size %d does not divide the %dx%d patch: the last rows/columns of the feature maps "
                       "are dropped (bottom and right)", arch["pool_size"], height, width)  # fmt: skip
    if arch["pool_size"] > 1:
        x = layers.MaxPooling2D(arch["pool_size"], strides=arch["pool_size"], padding="valid", name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for j, units in enumerate(arch["dense_units"], start=1):
        if arch["dropout"]:
            x = layers.Dropout(arch["dropout"], seed=dropout_seed(j), name=f"dropout{j}")(x)
        x = layers.Dense(units, kernel_initializer=kernel_init(100 + j), name=f"fc{j}")(x)
        x = layers.Activation(act, name=f"fc{j}_{act}")(x)
    if arch["dropout"]:
        x = layers.Dropout(arch["dropout"], seed=dropout_seed(0), name="dropout_out")(x)
    x = layers.Dense(arch["n_classes"], kernel_initializer=kernel_init(99), name="logits")(x)
    outputs = layers.Softmax(name="softmax")(x)
    return keras.Model(inputs, outputs, name="thanh2017_cnn")


def build_densenet121(
    *,
    input_shape: Sequence[int] = (50, 50, 3),
    n_classes: int = 2,
    weights: str | os.PathLike[str] | None = None,
    dropout: float = 0.0,
    seed: int | None = None,
) -> keras.Model:
    """DenseNet121 (Huang et al. 2017) with a new softmax head, as an uncompiled Keras model.

    The convolutional part is ``keras.applications.DenseNet121(include_top=False, pooling="avg")``; its
    weights are random or read from a file the user gives (nothing is ever downloaded); optional dropout,
    then a dense layer ``logits`` to `n_classes` and a softmax. The whole network is trained (fine-tuned).

    Parameters
    ----------
    input_shape : tuple of 3 int, optional
        Patch height, width and 3 channels; each side at least 32 (the network halves it five times).
    n_classes : int, optional
        Outputs of the softmax.
    weights : path or None, optional
        A Keras weights file of the convolutional part, e.g. the ImageNet weights Keras publishes as
        ``densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5``, downloaded by the user beforehand; None
        starts from random weights. The name ``'imagenet'`` is refused: leukoseg does not download.
    dropout : float, optional
        Dropout rate before the output layer, in ``[0, 1)``.
    seed : int or None, optional
        Seed of the head's initialiser and of dropout. The convolutional part's initialisers are unseeded:
        Keras draws their seeds from Python's ``random`` stream, which :class:`CNNClassifier` seeds from its
        `random_state` for the build and puts back afterwards.

    Returns
    -------
    keras.Model
        Input ``(None, *input_shape)`` float32, output ``(None, n_classes)`` class probabilities.

    Raises
    ------
    ValueError
        If a parameter is out of range, or the weights file is missing or does not fit the network.

    Examples
    --------
    >>> model = build_densenet121(input_shape=(32, 32, 3), seed=0)  # doctest: +SKIP
    >>> model.output_shape  # doctest: +SKIP
    (None, 2)
    """
    arch = _check_densenet(input_shape=input_shape, n_classes=n_classes, dropout=dropout, weights=weights)
    keras = import_keras()
    from keras import layers

    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=tuple(arch["input_shape"]),
                                          pooling="avg")  # fmt: skip
    if weights is not None:
        try:
            with warnings.catch_warnings():
                # Keras only warns when part of the network keeps its random weights: make that an error.
                warnings.simplefilter("error", UserWarning)
                base.load_weights(os.fspath(weights))
        except Exception as exc:  # Keras raises several types for a file of another network
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(f"{os.fspath(weights)}: not DenseNet121 weights without the top ({first_line})") from None
    inputs = keras.Input(shape=tuple(arch["input_shape"]), name="patch")
    x = base(inputs)
    if arch["dropout"]:
        x = layers.Dropout(arch["dropout"], seed=None if seed is None else int(seed) + 1000, name="dropout_out")(x)
    init = keras.initializers.GlorotUniform(seed=None if seed is None else int(seed) + 99)
    x = layers.Dense(arch["n_classes"], kernel_initializer=init, name="logits")(x)
    outputs = layers.Softmax(name="softmax")(x)
    return keras.Model(inputs, outputs, name="densenet121_cnn")


def _check_densenet(*, input_shape: Sequence[int], n_classes: int, dropout: float, weights: Any) -> dict[str, Any]:
    """Validate DenseNet121 parameters; return them as plain Python values (JSON-ready)."""
    shape = _input_shape(input_shape)
    if shape[2] != 3 or min(shape[:2]) < 32:
        raise ValueError(f"DenseNet121 needs RGB patches of at least 32x32 pixels; got {tuple(shape)}")
    _check_head(dropout=dropout, n_classes=n_classes)
    if weights is not None:
        if str(weights) == "imagenet":
            raise ValueError("backbone weights 'imagenet' would be downloaded, and leukoseg never downloads: "
                             "give the path of a weights file you have (see build_densenet121)")  # fmt: skip
        if not Path(weights).is_file():
            raise ValueError(f"{os.fspath(weights)}: backbone weights file not found")
    return {"name": "densenet121", "input_shape": list(shape), "n_classes": int(n_classes),
            "dropout": float(dropout)}  # fmt: skip


def _positive_ints(name: str, value: Any, *, allow_empty: bool) -> tuple[int, ...]:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints; got {value!r}") from None
    if (not out and not allow_empty) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in out
    ):
        kind = "sequence" if allow_empty else "non-empty sequence"
        raise ValueError(f"{name} must be a {kind} of positive ints; got {value!r}")
    return tuple(int(v) for v in out)


def _input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = _positive_ints("input_shape", input_shape, allow_empty=False)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels); got {input_shape!r}")
    return shape


def _check_head(*, dropout: float, n_classes: int) -> None:
    """The checks of the output layer, the same for every network."""
    check_fraction("dropout", dropout)
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2; got {n_classes!r}")


#: Networks :class:`CNNClassifier` can train: the paper's family, and DenseNet121 for comparison.
ARCHITECTURES = ("thanh", "densenet121")


def _check_architecture(
    *,
    input_shape: Sequence[int],
    filters: Sequence[int],
    kernel_size: int,
    activation: str,
    pool_size: int,
    dense_units: Sequence[int],
    dropout: float,
    n_classes: int,
    activate_every_conv: bool,
) -> dict[str, Any]:
    """Validate architecture parameters; return them as plain Python values (JSON-ready)."""
    shape = _input_shape(input_shape)
    filt = _positive_ints("filters", filters, allow_empty=False)
    dense = _positive_ints("dense_units", dense_units, allow_empty=True)
    odd = "a positive odd int (zero padding kernel_size // 2)"
    check_positive_int("kernel_size", kernel_size, expected=odd)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be {odd}, got {kernel_size!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    check_positive_int("pool_size", pool_size)
    if shape[0] < pool_size or shape[1] < pool_size:
        raise ValueError(f"input_shape {shape} is smaller than the pooling window {pool_size}")
    _check_head(dropout=dropout, n_classes=n_classes)
    return {
        "input_shape": list(shape),
        "filters": list(filt),
        "kernel_size": int(kernel_size),
        "activation": str(activation),
        "activate_every_conv": bool(activate_every_conv),
        "pool_size": int(pool_size),
        "dense_units": list(dense),
        "dropout": float(dropout),
        "n_classes": int(n_classes),
    }


def _build(arch: Mapping[str, Any], *, seed: int | None, weights: Any = None):
    """The network of a checked architecture (from :meth:`CNNClassifier._architecture`)."""
    if arch.get("name") == "densenet121":
        return build_densenet121(input_shape=arch["input_shape"], n_classes=arch["n_classes"], weights=weights,
                                 dropout=arch["dropout"], seed=seed)  # fmt: skip
    return build_thanh_cnn(**arch, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """Choose the device for the active Keras backend.

    Only the active backend (``keras.config.backend()``) is asked about GPUs; no other backend is imported.

    Parameters
    ----------
    device : {'auto', 'cpu', 'gpu'}, optional
        'auto' picks the GPU when the backend sees one, else the CPU.

    Returns
    -------
    {'cpu', 'gpu'}
        The device to train and predict on.

    Raises
    ------
    ValueError
        If `device` is unknown, or is 'gpu' and the backend sees no GPU.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {', '.join(_DEVICES)}; got {device!r}")
    if device == "cpu":
        return "cpu"
    keras = import_keras()

    backend = keras.config.backend()
    has_gpu = _backend_sees_gpu(backend)
    if device == "gpu" and not has_gpu:
        raise ValueError(
            f"device='gpu' but the {backend} backend sees no GPU; use device='cpu' or 'auto', or install a GPU "
            "build (pip install 'leukoseg[gpu]' adds PyTorch with CUDA; then set KERAS_BACKEND=torch)"
        )
    return "gpu" if has_gpu else "cpu"


def device_scope(device: str):
    """``keras.device`` scope of a resolved device, ``'cpu'`` or ``'gpu'``.

    The CPU is named without an index: under the torch backend (Keras 3.15) ``'cpu:0'`` is not the device
    of tensors created on ``'cpu'``, so weights built in a ``'cpu:0'`` scope are copied into tensors that
    get no gradients, and training fails with "No gradients provided for any variable".

    Parameters
    ----------
    device : {'cpu', 'gpu'}

    Returns
    -------
    context manager
    """
    keras = import_keras()

    return keras.device("cpu" if device == "cpu" else f"{device}:0")


def _backend_sees_gpu(backend: str) -> bool:
    if backend == "tensorflow":
        tf = importlib.import_module("tensorflow")
        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        torch = importlib.import_module("torch")
        return bool(torch.cuda.is_available())
    if backend == "jax":
        jax = importlib.import_module("jax")
        return any(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
    return False


@contextlib.contextmanager
def _global_rngs_restored() -> Iterator[None]:
    """Put Python's, NumPy's and (when loaded) PyTorch's CPU random streams back as they were.

    The block reseeds Python's; under the torch backend, Keras's data loader draws from PyTorch's stream.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")  # never imported here
    torch_state = torch.get_rng_state() if torch is not None else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if torch is not None:
            torch.set_rng_state(torch_state)


@contextlib.contextmanager
def _op_determinism(backend: str, enabled: bool) -> Iterator[None]:
    """TensorFlow's deterministic kernels for the block, switched off again after it if they were off.

    The switch is process-wide; its query and its off switch are not in TensorFlow's public API, so where
    they are missing the switch stays on (as ``enable_op_determinism`` alone would leave it).
    """
    if not enabled or backend != "tensorflow":
        yield
        return
    tf = importlib.import_module("tensorflow")
    enable = getattr(getattr(tf.config, "experimental", None), "enable_op_determinism", None)
    try:
        private = importlib.import_module("tensorflow.python.framework.config")
    except ImportError:  # moved in a later TensorFlow: the switch then stays on
        private = None
    is_on = getattr(private, "is_op_determinism_enabled", None)
    disable = getattr(private, "disable_op_determinism", None)
    was_on = True if is_on is None or disable is None else bool(is_on())
    if enable is not None:
        enable()
    try:
        yield
    finally:
        if not was_on and disable is not None:
            disable()


# ----------------------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------------------


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """Scikit-learn classifier of cell patches with the CNN of Thanh et al. (2017).

    Parameters
    ----------
    filters : sequence of int, optional
        Feature maps of each convolution; its length is the number of convolutions. This parameter and
        the next six, up to `dropout`, are the architecture passed to :func:`build_thanh_cnn`; their
        defaults are the paper's network. With ``architecture='densenet121'`` only `dropout` applies.
    kernel_size : int, optional
        Odd side of the square convolution kernels.
    activation : {'relu', 'selu', 'elu', 'tanh', 'sigmoid', 'linear'}, optional
        Non-linearity.
    activate_every_conv : bool, optional
        Put the activation after every convolution instead of only after the last.
    pool_size : int, optional
        Side and stride of the max-pooling window; 1 means no pooling.
    dense_units : sequence of int, optional
        Hidden fully connected layers between the pooling and the output layer.
    dropout : float, optional
        Dropout rate before each fully connected layer, in ``[0, 1)`` (with ``architecture='densenet121'``,
        before the output layer).
    architecture : {'thanh', 'densenet121'}, optional
        The network: the paper's family (:func:`build_thanh_cnn`), or DenseNet121 with a new head
        (:func:`build_densenet121`), for comparison on the same folds. DenseNet121 models are trained and
        saved like the others, but a model bundle (NumPy inference) takes the paper's family only.
    backbone_weights : str or None, optional
        With ``architecture='densenet121'``: a weights file of DenseNet121 without its top (e.g. ImageNet
        weights downloaded by the user); None starts from random weights. Its SHA-256 goes into the saved
        config.
    epochs : int, optional
        Most passes over the training patches.
    batch_size : int, optional
        Patches per gradient step; prediction batches hold ``max(batch_size, 256)`` patches.
    learning_rate : float, optional
        Adam step size (the first one, with a schedule).
    lr_schedule : {'constant', 'cosine'}, optional
        'cosine' lowers the step size from `learning_rate` to 0 over the `epochs` along half a cosine
        (``keras.optimizers.schedules.CosineDecay``), so the last epochs move the weights little.
    ema_momentum : float or None, optional
        With a value in ``(0, 1)``, the trained network gets the exponential moving average of the weights
        over the training steps (Adam's ``use_ema``) instead of the last step's: the average of the last
        ``1 / (1 - ema_momentum)`` steps or so. None, the default, keeps the last step's weights. Needs
        ``validation_fraction=0`` (early stopping keeps its best epoch's weights). The average starts at the
        first step's weights, whose share at the end is ``momentum ** (steps - 1)``; it is held to at most
        `ema_max_start_share` by lowering the momentum for a short training. Only trainable weights are
        averaged (a DenseNet121's batch-normalisation statistics stay the last step's). The experiment and
        ``leukoseg train`` use 0.98 (``CNN_DEFAULTS``), about 1.5 % of the first step's weights after its
        210 steps. The momentum used is ``ema_momentum_``.
    ema_max_start_share : float or None, optional
        Largest share of the first step's weights (close to the random initial ones) in the averaged
        network, in ``(0, 1)``: over a training of ``steps`` steps, the momentum used is
        ``min(ema_momentum, ema_max_start_share ** (1 / (steps - 1)))``. The default, 0.05, leaves 0.98 as
        it is from 150 steps on (every CNN of the ALL-IDB1 experiment) and lowers it where data are few: a
        CNN of the ALL-IDB2 protocol trains for about 30 steps, over which 0.98 would keep 56 % of the
        first step's weights. None takes `ema_momentum` as given, and a warning is logged when that share
        is above 5 %.
    label_smoothing : float, optional
        Share of each training label spread over all classes, in ``[0, 1)`` (categorical cross-entropy with
        label smoothing); 0 trains on the labels as they are.
    validation_fraction : float, optional
        Share of the training data held out for early stopping, in ``[0, 1)``; whole groups when `groups` is
        given to :meth:`fit`. 0 trains for `epochs` without validation.
    patience : int, optional
        Epochs without a lower validation loss before training stops; the weights of the best epoch are kept.
    augment : bool, optional
        Augment training batches with :func:`augment_batch` (dihedral flips/turns, stain and brightness
        jitter). Validation and prediction batches are never augmented.
    stain_jitter, brightness_jitter : float, optional
        Strength of the colour augmentation (see :func:`augment_batch`).
    max_shift : int, optional
        Largest random translation of a training patch, in pixels along each axis (see
        :func:`augment_batch`); 0, the default, switches it off. The experiment and ``leukoseg train`` use 3
        (``CNN_DEFAULTS`` of :mod:`leukoseg.pipelines.experiment`).
    class_weight : 'balanced', dict or None, optional
        Loss weight of each class: 'balanced' weighs classes inversely to their training frequency.
    tta : bool, optional
        Test-time augmentation: :meth:`predict_proba` returns the mean over the 8 flips/quarter turns of each
        patch (:func:`~leukoseg.classify.augment.dihedral_mean`; 4 for non-square patches), 8 times the
        prediction cost. A cell has no orientation, and the mean ranks cells better than one view.
    device : {'auto', 'cpu', 'gpu'}, optional
        Where to train and predict (see :func:`resolve_device`).
    random_state : int or None, optional
        Seed of the split, the weights, the batch order and the augmentation. With an int, two fits on the
        same data and machine give the same model. Every layer gets a seed derived from it; Python's
        ``random`` stream, from which Keras draws the seeds of unseeded initialisers (DenseNet121's
        backbone), is seeded with it during the build and put back as it was when ``fit`` returns; under
        TensorFlow, op determinism is switched on during ``fit`` and back off afterwards if it was off.
        No other global seed (TensorFlow's, Keras's, PyTorch's) is touched.
    verbose : int, optional
        Keras progress output (0 silent). Per-epoch metrics also go to the ``logging`` logger of this module.

    Attributes
    ----------
    model_ : keras.Model
        The trained network.
    architecture_ : dict
        The network's checked settings, as saved in ``config.json`` (for DenseNet121 with the SHA-256 of the
        backbone weights file).
    classes_ : ndarray
        Class labels, sorted; column ``j`` of :meth:`predict_proba` is ``classes_[j]``.
    mean_, std_ : ndarray of float32, shape (channels,)
        Per-channel normalisation, fitted on the training part (validation part excluded).
    input_shape_ : tuple of int
        Patch shape ``(height, width, channels)`` seen in fit (the analogue of ``n_features_in_``).
    history_ : dict of str to list of float
        Per-epoch loss and accuracy (``val_`` prefixed for the validation split).
    n_iter_ : int
        Epochs run.
    best_epoch_ : int or None
        Epoch (1-based) whose weights were kept; None when loaded from a ``config.json`` that does not record it.
    train_indices_, validation_indices_ : ndarray of int
        Rows of the `X` given to fit used for training and for early stopping.
    device_ : str
        Device used: 'cpu' or 'gpu'.
    backend_ : str
        Keras backend used.
    ema_momentum_ : float or None
        Momentum of the weight average used (``ema_momentum``, lowered for a short training; see
        `ema_max_start_share`), None without averaging.
    training_data_hash_ : str or None
        SHA-256 of the patches (shape, dtype, pixels) and labels given to fit, recorded by :meth:`save` as the
        training-data hash (a caller's own hash may replace it there); after :meth:`load`, the saved one.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    >>> y = np.arange(40) % 2
    >>> clf = CNNClassifier(filters=(4, 4), epochs=1, random_state=0)
    >>> clf.fit(X, y).predict_proba(X[:3]).shape
    (3, 2)
    >>> clf.predict(X[:3]).shape
    (3,)

    Save and reload (a folder with ``model.keras`` and ``config.json``):

    >>> import tempfile
    >>> folder = clf.save(tempfile.mkdtemp(), metadata={"um_per_px": 0.12})  # doctest: +SKIP
    >>> CNNClassifier.load(folder).predict_proba(X[:3]).shape  # doctest: +SKIP
    (3, 2)
    """

    def __init__(
        self,
        *,
        filters: Sequence[int] = (30, 30),
        kernel_size: int = 5,
        activation: str = "relu",
        activate_every_conv: bool = False,
        pool_size: int = 2,
        dense_units: Sequence[int] = (),
        dropout: float = 0.0,
        architecture: str = "thanh",
        backbone_weights: str | None = None,
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        lr_schedule: str = "constant",
        ema_momentum: float | None = None,
        ema_max_start_share: float | None = 0.05,
        label_smoothing: float = 0.0,
        validation_fraction: float = 0.15,
        patience: int = 5,
        augment: bool = True,
        stain_jitter: float = 0.05,
        brightness_jitter: float = 0.1,
        max_shift: int = 0,
        class_weight: str | Mapping[Any, float] | None = "balanced",
        tta: bool = True,
        device: str = "auto",
        random_state: int | None = None,
        verbose: int = 0,
    ) -> None:
        self.filters = filters
        self.kernel_size = kernel_size
        self.activation = activation
        self.activate_every_conv = activate_every_conv
        self.pool_size = pool_size
        self.dense_units = dense_units
        self.dropout = dropout
        self.architecture = architecture
        self.backbone_weights = backbone_weights
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.ema_momentum = ema_momentum
        self.ema_max_start_share = ema_max_start_share
        self.label_smoothing = label_smoothing
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.augment = augment
        self.stain_jitter = stain_jitter
        self.brightness_jitter = brightness_jitter
        self.max_shift = max_shift
        self.class_weight = class_weight
        self.tta = tta
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is a stack of (H, W, C) patches
        return tags

    # -- fitting -------------------------------------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None) -> CNNClassifier:
        """Train the network on labelled patches.

        Parameters
        ----------
        X : (n, H, W, C) ndarray of uint8
            Cell patches, 0-255 (float arrays on that scale are accepted too).
        y : (n,) array
            Labels, at least two classes (e.g. 0 normal, 1 lymphoblast).
        groups : (n,) array or None, optional
            Group of each patch, e.g. its image id. The validation split takes whole groups, so no image
            has patches on both sides. Without groups the split is by patch (stratified by class).

        Returns
        -------
        self : CNNClassifier
            The fitted classifier.

        Raises
        ------
        ValueError
            If the inputs or parameters are invalid.
        """
        X = _check_patches(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y must be 1-D with one label per patch ({len(X)}); got shape {y.shape}")
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y has a single class ({classes.tolist()[0]!r}); at least two are needed")
        if groups is not None:
            groups = np.asarray(groups)
            if groups.ndim != 1 or len(groups) != len(X):
                raise ValueError(f"groups must be 1-D with one entry per patch ({len(X)}); got shape {groups.shape}")
        self._check_training_params(X.shape[1:])
        arch = self._architecture(X.shape[1:], len(classes))

        seed = self._seed()
        train_idx, val_idx = _validation_split(y_enc, groups, self.validation_fraction, seed)
        mean, std = _channel_stats(X, train_idx)
        weights = _class_weights(self.class_weight, classes, y_enc[train_idx])

        keras = import_keras()

        backend = keras.config.backend()
        device = resolve_device(self.device)
        logger.info(
            "training CNN on %d patches (%d held out for early stopping), %s backend on %s",
            len(train_idx),
            len(val_idx),
            backend,
            device,
        )
        with _global_rngs_restored(), _op_determinism(backend, self.random_state is not None), device_scope(device):
            # Unseeded Keras initialisers (DenseNet121's backbone) draw their seeds from Python's stream; `seed`
            # is drawn afresh when random_state is None, so such fits differ from each other.
            random.seed(seed)
            model = _build(arch, seed=seed, weights=self.backbone_weights)
            steps = self.epochs * math.ceil(len(train_idx) / self.batch_size)
            # Keras's average starts at the first step's weights, with no warm-up: a short training keeps them
            momentum = _ema_momentum(self.ema_momentum, self.ema_max_start_share, steps)
            first_share = 0.0 if momentum is None else momentum ** (steps - 1)
            if momentum is not None and self.ema_momentum is not None and momentum < self.ema_momentum:
                logger.info("ema_momentum %g lowered to %.4f over %d training steps, so that the average keeps "
                            "%.0f %% of the first step's weights", self.ema_momentum, momentum, steps,
                            100 * first_share)  # fmt: skip
            elif first_share > 0.05:
                logger.warning("ema_momentum %g over %d training steps: the average keeps %.0f %% of the first "
                               "step's weights; train longer or lower it", self.ema_momentum, steps,
                               100 * first_share)  # fmt: skip
            model.compile(
                optimizer=_optimizer(self.learning_rate, self.lr_schedule, momentum, steps),
                loss=_loss(self.label_smoothing),
                metrics=["accuracy"],
            )
            targets = _targets(y_enc, len(classes), self.label_smoothing)
            batches = _training_batches(
                X,
                targets,
                weights[y_enc].astype(np.float32),
                train_idx,
                mean,
                std,
                batch_size=self.batch_size,
                seed=seed,
                augment=self.augment,
                stain_jitter=self.stain_jitter,
                brightness_jitter=self.brightness_jitter,
                max_shift=self.max_shift,
            )
            callbacks: list[Any] = [_logging_callback()]
            validation_data = None
            if len(val_idx):
                validation_data = (_normalise(X[val_idx], mean, std), targets[val_idx])
                callbacks.append(
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=self.patience, restore_best_weights=True
                    )
                )
            fit_history = model.fit(
                batches,
                epochs=self.epochs,
                validation_data=validation_data,
                callbacks=callbacks,
                shuffle=False,  # the batches shuffle themselves, seeded
                verbose=self.verbose,
            )

        self.model_ = model
        self.architecture_ = arch
        self.classes_ = classes
        self.mean_ = mean
        self.std_ = std
        self.input_shape_ = tuple(int(s) for s in X.shape[1:])
        self.history_ = {k: [float(v) for v in vals] for k, vals in fit_history.history.items()}
        self.n_iter_ = len(self.history_.get("loss", []))
        if "val_loss" in self.history_ and self.history_["val_loss"]:
            self.best_epoch_: int | None = int(np.argmin(self.history_["val_loss"])) + 1
        else:
            self.best_epoch_ = self.n_iter_
        self.train_indices_ = train_idx
        self.validation_indices_ = val_idx
        self.device_ = device
        self.backend_ = backend
        self.ema_momentum_ = momentum
        self.training_data_hash_ = _training_data_hash(X, y)
        return self

    def _check_training_params(self, input_shape: Sequence[int] | None = None) -> None:
        """Check the training settings; with `input_shape` (H, W, C), those that depend on the patch size too."""
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("patience", self.patience, expected="an int >= 0", allow_zero=True)
        # is_real first: a string or a list would otherwise reach float() or a comparison, and a bool count as 0/1
        if not (is_real(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate!r}")
        if self.lr_schedule not in _LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(_LR_SCHEDULES)}; got {self.lr_schedule!r}")
        for name in ("validation_fraction", "label_smoothing", "stain_jitter", "brightness_jitter"):
            check_fraction(name, getattr(self, name))
        for name in ("ema_momentum", "ema_max_start_share"):
            value = getattr(self, name)
            if value is not None and not (is_real(value) and 0.0 < value < 1.0):
                raise ValueError(f"{name} must be None or in (0, 1); got {value!r}")
        if self.ema_momentum is not None and self.validation_fraction > 0:
            # early stopping would put back the last-step weights of its best epoch over the average
            raise ValueError("ema_momentum needs validation_fraction=0: early stopping keeps the weights of its "
                             "best epoch, not their average")
        _check_max_shift(self.max_shift, input_shape)  # with the shape: before Keras's loop, not at its first batch
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)}; got {self.device!r}")

    def _architecture(self, input_shape: Sequence[int], n_classes: int) -> dict[str, Any]:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got {self.architecture!r}")
        if self.architecture == "densenet121":
            arch = _check_densenet(input_shape=input_shape, n_classes=n_classes, dropout=self.dropout,
                                   weights=self.backbone_weights)  # fmt: skip
            # Provenance: which weights file the network started from (hashed once per fit, not per build).
            weights = self.backbone_weights
            return {**arch, "weights_sha256": None if weights is None else file_sha256(weights)}
        if self.backbone_weights is not None:
            raise ValueError("backbone_weights needs architecture='densenet121'")
        return _check_architecture(
            input_shape=input_shape,
            filters=self.filters,
            kernel_size=self.kernel_size,
            activation=self.activation,
            pool_size=self.pool_size,
            dense_units=self.dense_units,
            dropout=self.dropout,
            n_classes=n_classes,
            activate_every_conv=self.activate_every_conv,
        )

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:
            return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        if isinstance(rs, bool) or not isinstance(rs, (int, np.integer)) or not 0 <= rs < 2**31:
            raise ValueError(f"random_state must be None or an int in [0, 2**31); got {rs!r}")
        return int(rs)

    # -- prediction ----------------------------------------------------------------------------------------

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Predict the class probabilities of patches.

        Parameters
        ----------
        X : (n, H, W, C) ndarray of uint8
            Patches of the shape seen in :meth:`fit`.

        Returns
        -------
        (n, n_classes) ndarray of float64
            Rows sum to 1; column ``j`` is the probability of ``classes_[j]``; with `tta`, the mean over
            the flips and quarter turns of each patch.
        """
        check_is_fitted(self, "model_")
        X = self._check_predict_input(X)
        keras = import_keras()

        def one_view(batch: np.ndarray) -> np.ndarray:
            out = np.empty((len(batch), len(self.classes_)), np.float64)
            for start in range(0, len(batch), _PREDICT_CHUNK):
                chunk = _normalise(batch[start : start + _PREDICT_CHUNK], self.mean_, self.std_)
                probs = self.model_.predict(chunk, batch_size=max(int(self.batch_size), 256), verbose=0)
                out[start : start + len(chunk)] = keras.ops.convert_to_numpy(probs)
            return out

        with device_scope(self.device_):
            out = dihedral_mean(one_view, X) if self.tta and len(X) else one_view(X)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class of each patch.

        Parameters
        ----------
        X : (n, H, W, C) ndarray of uint8
            Patches of the shape seen in :meth:`fit`.

        Returns
        -------
        (n,) ndarray
            Labels from ``classes_``.
        """
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _check_predict_input(self, X: np.ndarray) -> np.ndarray:
        X = _check_patches(X, allow_empty=True)
        if tuple(X.shape[1:]) != tuple(self.input_shape_):
            raise ValueError(
                f"patches must have the shape seen in fit, {tuple(self.input_shape_)}; got {tuple(X.shape[1:])}"
            )
        return X

    # -- saving --------------------------------------------------------------------------------------------

    def save(
        self,
        path_dir: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        data_hash: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the trained model to a folder: ``model.keras`` and ``config.json``.

        Each file is written to a temporary name in the folder and moved into place; ``config.json`` comes
        last and records the SHA-256 of ``model.keras``, so a half-updated folder is detected by :meth:`load`.

        Parameters
        ----------
        path_dir : str or os.PathLike
            Folder, created if missing; existing model files in it are replaced.
        metadata : mapping, optional
            JSON-serialisable facts about the training data, e.g. ``{"um_per_px": 0.1, "dataset": "ALL-IDB1"}``;
            ``um_per_px`` is also copied to the top level of the config.
        data_hash : str, optional
            Hash of the training data, for provenance. Default: ``training_data_hash_``, the SHA-256 of the
            patches and labels that :meth:`fit` saw.
        metrics : mapping, optional
            JSON-serialisable evaluation results, e.g. cross-validated accuracy.

        Returns
        -------
        pathlib.Path
            The folder.

        Raises
        ------
        ValueError
            If `metadata` or `metrics` cannot be written as JSON.
        """
        check_is_fitted(self, "model_")
        keras = import_keras()

        folder = Path(path_dir)
        if data_hash is None:
            data_hash = getattr(self, "training_data_hash_", None)  # None only for a model loaded without one
        metadata = dict(metadata or {})
        metrics = dict(metrics or {})
        for name, value in (("metadata", metadata), ("metrics", metrics)):
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be JSON-serialisable: {exc}") from None
        folder.mkdir(parents=True, exist_ok=True)

        model_path = folder / _MODEL_FILE
        fd, tmp = tempfile.mkstemp(prefix=f".{_MODEL_FILE}.", suffix=".part.keras", dir=folder)
        os.close(fd)
        try:
            self.model_.save(tmp, overwrite=True)
            digest = file_sha256(tmp)
            os.replace(tmp, model_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

        from leukoseg import __version__

        params = self.get_params()
        if isinstance(params["class_weight"], Mapping):
            # JSON object keys are strings: a {0: 1.0, 1: 2.0} would come back keyed "0", "1". Pairs keep the type.
            params["class_weight"] = [[_python_scalar(c), float(w)] for c, w in params["class_weight"].items()]
        config = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_file": _MODEL_FILE,
            "model_sha256": digest,
            "architecture": self.architecture_,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
            "patch_size": list(self.input_shape_[:2]),
            "input_shape": list(self.input_shape_),
            "um_per_px": metadata.get("um_per_px"),
            "metadata": metadata,
            "normalisation": {"mean": [float(v) for v in self.mean_], "std": [float(v) for v in self.std_]},
            "classes": self.classes_.tolist(),
            "training_data_hash": data_hash,
            "metrics": metrics,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "ema_momentum_used": self.ema_momentum_,
            "keras_version": keras.__version__,
            "backend": self.backend_,
            "leukoseg_version": __version__,
        }
        try:
            write_json(folder / _CONFIG_FILE, config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot write {_CONFIG_FILE}: {exc}") from None
        logger.info("saved CNN model to %s", folder)
        return folder

    @classmethod
    def load(cls, path_dir: str | os.PathLike[str], *, device: str = "auto") -> CNNClassifier:
        """Read a model folder written by :meth:`save`.

        Parameters
        ----------
        path_dir : str or os.PathLike
            Folder with ``model.keras`` and ``config.json``.
        device : {'auto', 'cpu', 'gpu'}, optional
            Where to predict; becomes the estimator's `device` parameter.

        Returns
        -------
        CNNClassifier
            Fitted (``predict``/``predict_proba`` ready); ``metadata_``, ``metrics_`` and
            ``training_data_hash_`` hold what was saved. The optimizer state is not restored.

        Raises
        ------
        LeukosegError
            If the folder or a file is missing, corrupt, of another format version, or inconsistent.
        """
        folder = Path(path_dir)
        if not folder.is_dir():
            raise LeukosegError(folder, "no such model folder")
        config = _read_config(folder / _CONFIG_FILE)
        model_path = folder / _MODEL_FILE
        if not model_path.is_file():
            raise LeukosegError(model_path, "model file missing; the folder is incomplete")
        if file_sha256(model_path) != config["model_sha256"]:
            raise LeukosegError(
                model_path,
                "checksum differs from config.json: the file is corrupt or was replaced; save the model again",
            )

        params = dict(config["params"])
        params["device"] = device
        try:
            for key in ("filters", "dense_units"):
                params[key] = tuple(params[key])
            if isinstance(params.get("class_weight"), list):
                params["class_weight"] = {c: float(w) for c, w in params["class_weight"]}
            est = cls(**params)
        except (TypeError, KeyError, ValueError) as exc:
            raise LeukosegError(folder / _CONFIG_FILE, f"invalid estimator parameters ({exc})") from None

        keras = import_keras()

        resolved = resolve_device(device)
        try:
            with device_scope(resolved):
                model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
        except Exception as exc:  # keras raises many types for a damaged archive
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise LeukosegError(model_path, f"not a readable Keras model ({first_line})") from None

        shape = tuple(config["input_shape"])
        classes = np.asarray(config["classes"])
        if tuple(model.input_shape[1:]) != shape or model.output_shape[-1] != len(classes):
            raise LeukosegError(
                model_path,
                f"model shape {model.input_shape} -> {model.output_shape} does not match config.json "
                f"(input {shape}, {len(classes)} classes)",
            )
        est.model_ = model
        est.architecture_ = config.get("architecture") or est._architecture(shape, len(classes))
        est.classes_ = classes
        est.mean_ = np.asarray(config["normalisation"]["mean"], np.float32)
        est.std_ = np.asarray(config["normalisation"]["std"], np.float32)
        est.input_shape_ = shape
        est.history_ = {k: list(v) for k, v in config.get("history", {}).items()}
        est.n_iter_ = len(est.history_.get("loss", []))
        est.best_epoch_ = config.get("best_epoch")
        est.ema_momentum_ = config.get("ema_momentum_used")
        est.train_indices_ = np.empty(0, np.intp)  # not saved: they index the original training array
        est.validation_indices_ = np.empty(0, np.intp)
        est.device_ = resolved
        est.backend_ = keras.config.backend()
        est.metadata_ = config["metadata"]
        est.metrics_ = config["metrics"]
        est.training_data_hash_ = config["training_data_hash"]
        return est


def _training_data_hash(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of patches and labels: the same training data, in the same order, gives the same hash."""
    digest = hashlib.sha256(repr((X.shape, X.dtype.str, np.asarray(y).tolist())).encode())
    digest.update(np.ascontiguousarray(X).data)
    return digest.hexdigest()


def _read_config(path: Path) -> dict[str, Any]:
    """Read and validate ``config.json``; every problem becomes a one-line LeukosegError."""
    if not path.is_file():
        raise LeukosegError(path, "missing; not a leukoseg CNN model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LeukosegError(path, f"corrupt JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LeukosegError(path, f"cannot read ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT_NAME:
        raise LeukosegError(path, f"not a leukoseg CNN config (expected \"format\": \"{_FORMAT_NAME}\")")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LeukosegError(path, "missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise LeukosegError(
            path, f"format version {version} is newer than this leukoseg reads ({FORMAT_VERSION}); upgrade leukoseg"
        )
    if version < 1:
        raise LeukosegError(path, f"unknown format version {version}")
    required = {
        "model_sha256": str,
        "params": dict,
        "input_shape": list,
        "normalisation": dict,
        "classes": list,
        "metadata": dict,
        "metrics": dict,
    }
    for key, kind in required.items():
        if not isinstance(config.get(key), kind):
            raise LeukosegError(path, f"field {key!r} missing or not a {kind.__name__}")
    config.setdefault("training_data_hash", None)
    shape = config["input_shape"]
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise LeukosegError(path, f"invalid input_shape {shape!r}")
    norm = config["normalisation"]
    for key in ("mean", "std"):
        values = norm.get(key)
        if (
            not isinstance(values, list)
            or len(values) != shape[2]
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise LeukosegError(path, f"normalisation {key} must be {shape[2]} finite numbers")
    if not all(v > 0 for v in norm["std"]):
        raise LeukosegError(path, "normalisation std must be positive")
    if len(config["classes"]) < 2:
        raise LeukosegError(path, "fewer than two classes")
    unknown = set(config["params"]) - set(CNNClassifier().get_params())
    if unknown:
        raise LeukosegError(path, f"unknown parameters {sorted(unknown)}")
    return config


# ----------------------------------------------------------------------------------------------------------
# Training helpers
# ----------------------------------------------------------------------------------------------------------


def _validation_split(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the early-stopping part; whole groups when `groups` is given."""
    n = len(y)
    everything = np.arange(n)
    none = np.empty(0, np.intp)
    if fraction == 0:
        return everything, none
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedShuffleSplit

    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            logger.warning("only %d group: no validation split, training for all epochs", n_groups)
            return everything, none
        if n_groups - math.ceil(fraction * n_groups) < 1:  # scikit-learn would refuse with "n_samples" (groups)
            logger.warning("validation_fraction %g of %d groups leaves none for training: no validation split, "
                           "training for all epochs", fraction, n_groups)  # fmt: skip
            return everything, none
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        train, val = next(splitter.split(np.zeros(n), y, groups))
    else:
        if n - math.ceil(fraction * n) < 1:
            logger.warning("validation_fraction %g of %d patches leaves none for training: no validation split, "
                           "training for all epochs", fraction, n)  # fmt: skip
            return everything, none
        try:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            train, val = next(splitter.split(np.zeros(n), y))
        except ValueError:  # too few patches of a class to stratify
            splitter = ShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            train, val = next(splitter.split(np.zeros(n)))
    if len(np.unique(y[train])) < 2:
        logger.warning("the validation split would leave a single class for training; training without it")
        return everything, none
    return np.sort(train).astype(np.intp), np.sort(val).astype(np.intp)


def _channel_stats(X: np.ndarray, idx: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``X[idx]``, in float64 chunks (no full-size copy)."""
    channels = X.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(idx), chunk):
        part = X[idx[start : start + chunk]].reshape(-1, channels).astype(np.float64)
        total += part.sum(axis=0)
        total_sq += np.square(part).sum(axis=0)
        count += len(part)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel is centred, not blown up
    return mean.astype(np.float32), std.astype(np.float32)


_LR_SCHEDULES = ("constant", "cosine")


def _ema_momentum(momentum: float | None, max_start_share: float | None, steps: int) -> float | None:
    """The averaging momentum over `steps` steps: `momentum`, lowered so that the first step's weights keep at
    most `max_start_share` of the average (their share at the end is ``momentum ** (steps - 1)``)."""
    if momentum is None or max_start_share is None or steps <= 1:
        return momentum
    return min(float(momentum), float(max_start_share) ** (1.0 / (steps - 1)))


def _optimizer(learning_rate: float, schedule: str, ema_momentum: float | None, steps: int):
    """Adam with the step size of `schedule` over `steps` training steps, averaging the weights if asked."""
    keras = import_keras()
    rate: Any = float(learning_rate)
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(int(steps), 1))
    if ema_momentum is None:
        return keras.optimizers.Adam(learning_rate=rate)
    # fit() puts the averaged weights into the model when training ends (finalize_variable_values)
    return keras.optimizers.Adam(learning_rate=rate, use_ema=True, ema_momentum=float(ema_momentum))


def _loss(label_smoothing: float):
    """Cross-entropy on class indices, or on smoothed one-hot labels."""
    keras = import_keras()
    if label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=float(label_smoothing))
    return keras.losses.SparseCategoricalCrossentropy()


def _targets(y_enc: np.ndarray, n_classes: int, label_smoothing: float) -> np.ndarray:
    """Training targets in the form :func:`_loss` takes: class indices, or one-hot rows to be smoothed."""
    if label_smoothing:
        return np.eye(n_classes, dtype=np.float32)[y_enc]
    return y_enc.astype(np.int32)


def _class_weights(class_weight: Any, classes: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Loss weight per encoded class."""
    k = len(classes)
    if class_weight is None:
        return np.ones(k)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', a dict or None; got {class_weight!r}")
        counts = np.bincount(y_train, minlength=k).astype(np.float64)
        return np.where(counts > 0, len(y_train) / (k * np.maximum(counts, 1)), 1.0)
    if isinstance(class_weight, Mapping):
        missing = [c for c in classes.tolist() if c not in class_weight]
        if missing:
            raise ValueError(f"class_weight has no weight for classes {missing}")
        return np.array([float(class_weight[c]) for c in classes.tolist()])
    raise ValueError(f"class_weight must be 'balanced', a dict or None; got {class_weight!r}")


def _training_batches(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    augment: bool,
    stain_jitter: float,
    brightness_jitter: float,
    max_shift: int = 0,
):
    """A ``keras.utils.PyDataset`` of (patches, labels, sample weights) training batches.

    The batch order of epoch ``e`` and the augmentation of batch ``b`` in it depend only on
    ``(seed, e, b)``, so batches are the same whatever order or thread Keras asks for them in.
    """
    keras: Any = import_keras()  # declared: mypy takes a base class from an Any variable only

    class TrainingBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0

        def __len__(self) -> int:
            return math.ceil(len(idx) / batch_size)

        def _order(self) -> np.ndarray:
            return np.random.default_rng([seed, self.epoch]).permutation(idx)

        def __getitem__(self, b: int):
            rows = self._order()[b * batch_size : (b + 1) * batch_size]
            patches = X[rows]
            if augment:
                rng = np.random.default_rng([seed, self.epoch, b, 1])
                # looked up in this module at call time, so it can be wrapped (tests do)
                patches = augment_batch(
                    patches, rng=rng, stain_jitter=stain_jitter, brightness_jitter=brightness_jitter,
                    max_shift=max_shift,
                )
            return _normalise(patches, mean, std), y[rows], w[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return TrainingBatches()


def _logging_callback():
    keras: Any = import_keras()  # declared: mypy takes a base class from an Any variable only

    class LogEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            text = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            logger.info("epoch %d: %s", epoch + 1, text)

    return LogEpochs()


# ----------------------------------------------------------------------------------------------------------
# NumPy inference
# ----------------------------------------------------------------------------------------------------------


def export_numpy(model_or_estimator: Any) -> dict[str, np.ndarray]:
    """Export a network (or a fitted :class:`CNNClassifier`) as plain arrays for :func:`numpy_predict_proba`.

    Parameters
    ----------
    model_or_estimator : keras.Model or CNNClassifier
        A network made of the layers :func:`build_thanh_cnn` uses. A bare model gets identity normalisation
        and classes ``0..n-1``.

    Returns
    -------
    dict of str to ndarray
        ``format_version``, ``layers`` (one descriptor string per layer, e.g. ``'conv2d/linear'``,
        ``'activation/relu'``, ``'maxpool2d/2,2/2,2'``, ``'flatten'``, ``'dense/linear'``, ``'softmax'``),
        ``input_shape``, ``mean``, ``std``, ``classes``, ``tta`` (the estimator's test-time augmentation; False
        for a bare model) and ``layer{i}_kernel`` / ``layer{i}_bias``.
        No object arrays: ``np.savez`` then ``np.load(..., allow_pickle=False)`` round-trips it.

    Raises
    ------
    TypeError
        If `model_or_estimator` is neither a ``keras.Model`` nor a fitted :class:`CNNClassifier`.
    NotImplementedError
        If the network has a layer or setting the NumPy forward pass does not reproduce.

    Examples
    --------
    >>> params = export_numpy(build_thanh_cnn(seed=0))
    >>> [str(s) for s in params["layers"]]
    ['conv2d/linear', 'conv2d/linear', 'activation/relu', 'maxpool2d/2,2/2,2', 'flatten', 'dense/linear', 'softmax']
    """
    mean: np.ndarray | None
    std: np.ndarray | None
    classes: np.ndarray | None
    if isinstance(model_or_estimator, CNNClassifier):
        check_is_fitted(model_or_estimator, "model_")
        if model_or_estimator.architecture != "thanh":
            raise NotImplementedError(
                f"NumPy inference covers the paper's network family (architecture='thanh'), not "
                f"{model_or_estimator.architecture!r}: compare it in experiments, bundle a 'thanh' network"
            )
        model = model_or_estimator.model_
        mean = np.asarray(model_or_estimator.mean_, np.float32)
        std = np.asarray(model_or_estimator.std_, np.float32)
        classes = np.asarray(model_or_estimator.classes_)
        tta = bool(model_or_estimator.tta)
    else:
        model = model_or_estimator
        mean = std = classes = None
        tta = False
    if not hasattr(model, "layers") or not hasattr(model, "input_shape"):
        raise TypeError(f"expected a keras.Model or a fitted CNNClassifier; got {type(model_or_estimator).__name__}")
    input_shape = tuple(model.input_shape[1:])
    if len(input_shape) != 3 or any(s is None for s in input_shape):
        raise NotImplementedError(f"NumPy inference needs a fixed (H, W, C) input; the model takes {input_shape}")
    channels = input_shape[2]
    n_out = model.output_shape[-1]
    if mean is None or std is None or classes is None:  # a bare model: all three
        mean = np.zeros(channels, np.float32)
        std = np.ones(channels, np.float32)
        classes = np.arange(n_out)
    if classes.dtype.kind == "O":
        classes = classes.astype(str)

    out: dict[str, np.ndarray] = {}
    descriptors: list[str] = []
    for layer in model.layers:
        kind = type(layer).__name__
        cfg = layer.get_config()
        i = len(descriptors)
        if kind == "InputLayer" or kind == "Dropout":
            continue
        if kind == "Conv2D":
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise NotImplementedError(f"layer {layer.name}: only channels_last convolutions are supported")
            if cfg["padding"] != "same" or tuple(cfg["strides"]) != (1, 1) or tuple(cfg["dilation_rate"]) != (1, 1):
                raise NotImplementedError(
                    f"layer {layer.name}: only stride-1, undilated, 'same'-padded convolutions are supported"
                )
            if cfg.get("groups", 1) != 1:
                raise NotImplementedError(f"layer {layer.name}: grouped convolutions are not supported")
            descriptors.append(f"conv2d/{_activation_name(cfg['activation'], layer.name)}")
            _export_weights(layer, i, out)
        elif kind == "Dense":
            descriptors.append(f"dense/{_activation_name(cfg['activation'], layer.name)}")
            _export_weights(layer, i, out)
        elif kind == "Activation":
            descriptors.append(f"activation/{_activation_name(cfg['activation'], layer.name)}")
        elif kind == "MaxPooling2D":
            if cfg["padding"] != "valid" or cfg.get("data_format", "channels_last") != "channels_last":
                raise NotImplementedError(f"layer {layer.name}: only 'valid' channels_last max-pooling is supported")
            pool = ",".join(str(int(v)) for v in cfg["pool_size"])
            strides = ",".join(str(int(v)) for v in (cfg["strides"] or cfg["pool_size"]))
            descriptors.append(f"maxpool2d/{pool}/{strides}")
        elif kind == "Flatten":
            descriptors.append("flatten")
        elif kind == "Softmax":
            if cfg.get("axis", -1) not in (-1, [-1]):
                raise NotImplementedError(f"layer {layer.name}: softmax over axis {cfg['axis']} is not supported")
            descriptors.append("softmax")
        else:
            raise NotImplementedError(
                f"layer {layer.name} ({kind}) has no NumPy implementation; supported: Conv2D, Dense, Activation, "
                "MaxPooling2D, Flatten, Dropout, Softmax"
            )
    out["format_version"] = np.array(FORMAT_VERSION, np.int64)
    out["layers"] = np.array(descriptors, dtype=str)
    out["input_shape"] = np.array(input_shape, np.int64)
    out["mean"] = mean
    out["std"] = std
    out["classes"] = classes
    out["tta"] = np.array(tta)
    return out


def _activation_name(activation: Any, layer_name: str) -> str:
    if activation not in ACTIVATIONS:
        raise NotImplementedError(
            f"layer {layer_name}: activation {activation!r} has no NumPy implementation; "
            f"supported: {', '.join(ACTIVATIONS)}"
        )
    return str(activation)


def _export_weights(layer: Any, i: int, out: dict[str, np.ndarray]) -> None:
    weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
    out[f"layer{i}_kernel"] = weights[0]
    if len(weights) > 1:
        out[f"layer{i}_bias"] = weights[1]
