"""NumPy forward pass of the CNN exported by :func:`~leukoseg.classify.cnn.export_numpy`.

Kept apart from :mod:`.cnn` so that inference imports NumPy only: no scikit-learn, Keras or TensorFlow
(the one-image ``leukoseg classify`` must start in well under two seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .augment import dihedral_mean

__all__ = ["ACTIVATIONS", "FORMAT_VERSION", "MAX_SIDE", "check_params", "numpy_predict_proba"]

#: Activations that :func:`~leukoseg.classify.cnn.build_thanh_cnn` accepts and :func:`numpy_predict_proba`
#: reproduces.
ACTIVATIONS = ("relu", "selu", "elu", "tanh", "sigmoid", "linear")

#: Version of the saved-model folder layout (``config.json``) and of the exported arrays.
FORMAT_VERSION = 1

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_IM2COL_FLOATS = 1 << 18  # size of the im2col block of the NumPy convolution (1 MiB of float32)

#: Largest patch height or width that :func:`check_params` accepts.
MAX_SIDE = 1024
# Values per patch of any layer's output or im2col columns that check_params accepts (64 MiB of float32):
# a network beyond it would exhaust memory on every image; the shipped one needs under 2 million.
_MAX_VALUES = 1 << 24


def _check_patches(X: Any, *, allow_empty: bool = False) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 4:
        raise ValueError(f"X must be a 4-D array of patches (n, height, width, channels); got shape {X.shape}")
    if not allow_empty and len(X) == 0:
        raise ValueError("X has no patches")
    if X.dtype.kind not in "uif":
        raise ValueError(f"X must hold numbers (uint8 0-255 expected); got dtype {X.dtype}")
    if X.dtype.kind == "f" and X.size and not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def _normalise(patches: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = patches.astype(np.float32)
    out -= mean
    out /= std
    return out


def numpy_predict_proba(
    params: Mapping[str, np.ndarray], X: np.ndarray, *, chunk: int = 64, tta: bool | None = None
) -> np.ndarray:
    """Compute class probabilities from the arrays of :func:`export_numpy`, with NumPy only.

    Same-padded convolutions run as im2col (one column block per few patches) and a float32 matrix
    product, so memory stays small and the BLAS does the work.

    Parameters
    ----------
    params : mapping of str to ndarray
        From :func:`export_numpy`, or the ``np.load`` of its ``np.savez`` file.
    X : (n, H, W, C) ndarray of uint8
        Patches of the model's input shape, 0-255, not yet normalised.
    chunk : int, optional
        Patches pushed through the network at a time.
    tta : bool or None, optional
        Average over the flips and quarter turns of each patch
        (:func:`~leukoseg.classify.augment.dihedral_mean`); None: as ``params['tta']`` says (False when
        absent), i.e. as the exported estimator predicted.

    Returns
    -------
    (n, n_classes) ndarray of float64
        Rows sum to 1; column ``j`` is the probability of ``params['classes'][j]``.

    Raises
    ------
    ValueError
        If `X` does not match the model's input shape or `params` is incomplete.
    NotImplementedError
        If `params` describes a layer or activation this function does not implement.

    Examples
    --------
    >>> from leukoseg.classify.cnn import build_thanh_cnn, export_numpy
    >>> params = export_numpy(build_thanh_cnn(input_shape=(8, 8, 3), filters=(2,), seed=0))
    >>> numpy_predict_proba(params, np.zeros((1, 8, 8, 3), np.uint8)).shape
    (1, 2)
    """
    for key in ("format_version", "layers", "input_shape", "mean", "std"):
        if key not in params:
            raise ValueError(f"params lacks {key!r}; make it with export_numpy")
    if int(params["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"params have format version {int(params['format_version'])}; this reads {FORMAT_VERSION}")
    X = _check_patches(X, allow_empty=True)
    shape = tuple(int(s) for s in params["input_shape"])
    if tuple(X.shape[1:]) != shape:
        raise ValueError(f"patches must have shape {shape}; got {tuple(X.shape[1:])}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    layers = [str(s) for s in params["layers"]]
    mean = np.asarray(params["mean"], np.float32)
    std = np.asarray(params["std"], np.float32)
    if tta is None:
        tta = bool(params["tta"]) if "tta" in params else False

    def one_view(batch: np.ndarray) -> np.ndarray:
        results = []
        for start in range(0, len(batch), chunk):
            x = _normalise(batch[start : start + chunk], mean, std)
            for i, desc in enumerate(layers):
                x = _numpy_layer(desc, x, params, i)
            results.append(x.astype(np.float64))
        if not results:
            return np.empty((0, len(params["classes"]) if "classes" in params else 0), np.float64)
        return np.concatenate(results)

    out = dihedral_mean(one_view, X) if tta and len(X) else one_view(X)
    out /= out.sum(axis=1, keepdims=True)
    return out


def check_params(params: Mapping[str, np.ndarray]) -> None:
    """Check that exported arrays make a network that :func:`numpy_predict_proba` runs, before any image.

    Walks the layers from ``input_shape`` (at most :data:`MAX_SIDE` pixels a side), checking every
    descriptor, activation, kernel and bias shape against the shape of its input, that all weights are
    finite, that no layer needs more than 2**24 values per patch, and that the network ends in one value per
    class; then runs it on one blank patch (a few milliseconds) and requires finite probabilities in [0, 1]
    that sum to 1.

    Parameters
    ----------
    params : mapping of str to ndarray
        From :func:`export_numpy`, or the ``np.load`` of its ``np.savez`` file.

    Raises
    ------
    ValueError
        On the first problem, with a one-line reason.

    Examples
    --------
    >>> from leukoseg.classify.cnn import build_thanh_cnn, export_numpy
    >>> params = export_numpy(build_thanh_cnn(input_shape=(8, 8, 3), filters=(2,), seed=0))
    >>> check_params(params)
    >>> check_params({**params, "input_shape": np.array([10, 10, 3])})
    Traceback (most recent call last):
    ...
    ValueError: layer 4 ('dense/linear'): kernel of shape (32, 2) for inputs of shape (50,)
    """
    for key in ("format_version", "layers", "input_shape", "mean", "std", "classes"):
        if key not in params:
            raise ValueError(f"lacks the array {key!r} of a CNN export")
    version = np.asarray(params["format_version"])
    if version.ndim or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        found = int(version) if not version.ndim and version.dtype.kind in "iu" else f"{version.dtype} {version.shape}"
        raise ValueError(f"CNN arrays have format version {found}; this reads {FORMAT_VERSION}")
    shape_arr = np.asarray(params["input_shape"])
    if shape_arr.shape != (3,) or shape_arr.dtype.kind not in "iu":
        raise ValueError(f"input_shape must be 3 integers (height, width, channels); got {shape_arr.dtype} "
                         f"{shape_arr.shape}")  # fmt: skip
    shape: tuple[int, ...] = tuple(int(s) for s in shape_arr)
    if not (1 <= shape[0] <= MAX_SIDE and 1 <= shape[1] <= MAX_SIDE and 1 <= shape[2] <= 4):
        raise ValueError(f"input_shape {shape} is not a patch of at most {MAX_SIDE} pixels a side and 1-4 channels")
    for key in ("mean", "std"):
        value = np.asarray(params[key])
        if value.dtype.kind not in "iuf" or value.ndim > 1 or value.size not in (1, shape[2]):
            raise ValueError(f"{key!r} must hold 1 or {shape[2]} numbers; got dtype {value.dtype}, shape {value.shape}")
        if not np.isfinite(value).all() or (key == "std" and not (value > 0).all()):
            raise ValueError(f"{key!r} must be finite{' and positive' if key == 'std' else ''}; got {value.tolist()}")
    tta = np.asarray(params.get("tta", False))
    if tta.ndim or tta.dtype.kind not in "biu":
        raise ValueError(f"'tta' must be one boolean; got dtype {tta.dtype}, shape {tta.shape}")
    layers = np.asarray(params["layers"])
    if layers.ndim != 1 or layers.dtype.kind != "U" or not len(layers):
        raise ValueError(f"'layers' must be a non-empty 1-D string array; got {layers.dtype}, shape {layers.shape}")
    input_shape = shape
    for i, desc in enumerate(layers.tolist()):
        shape = _layer_output_shape(desc, shape, params, i)
    n_classes = len(params["classes"])
    if shape != (n_classes,):
        raise ValueError(f"the network outputs shape {shape}, not one value per class ({n_classes},)")
    blank = np.zeros((1, *input_shape), np.uint8)
    try:
        with np.errstate(all="ignore"):
            proba = numpy_predict_proba(params, blank, tta=False)
    except (ArithmeticError, LookupError, TypeError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"the network fails on a blank patch: {type(exc).__name__}: {exc}") from None
    if not (np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
            and abs(float(proba.sum()) - 1.0) <= 1e-4):  # fmt: skip
        raise ValueError(f"on a blank patch the network gives {proba[0].tolist()!r:.50}, not probabilities (sum 1)")


def _layer_output_shape(
    desc: str, shape: tuple[int, ...], params: Mapping[str, np.ndarray], i: int
) -> tuple[int, ...]:
    """Shape of one patch after layer `i` (as :func:`_numpy_layer` runs it); ValueError if it cannot run."""
    op, _, arg = desc.partition("/")
    where = f"layer {i} ({desc!r:.40})"

    def weights(suffix: str) -> np.ndarray | None:
        value = params.get(f"layer{i}_{suffix}")
        if value is None:
            return None
        value = np.asarray(value)
        if value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            raise ValueError(f"{where}: {suffix} is not all finite numbers (dtype {value.dtype})")
        return value

    def activation(name: str) -> None:
        if name not in ACTIVATIONS:
            raise ValueError(f"{where}: unknown activation {name!r:.30}; supported: {', '.join(ACTIVATIONS)}")

    if op in ("conv2d", "dense"):
        activation(arg)
        kernel, bias = weights("kernel"), weights("bias")
        if kernel is None:
            raise ValueError(f"{where}: lacks the array 'layer{i}_kernel'")
        if op == "conv2d":
            ok = len(shape) == 3 and kernel.ndim == 4 and kernel.shape[2] == shape[2] and min(kernel.shape) >= 1
            out = (*shape[:2], kernel.shape[-1]) if ok else shape
            columns = shape[0] * shape[1] * kernel.shape[0] * kernel.shape[1] * shape[2] if ok else 0
        else:
            ok = len(shape) >= 1 and kernel.ndim == 2 and kernel.shape[0] == shape[-1] and kernel.shape[1] >= 1
            out = (*shape[:-1], kernel.shape[-1]) if ok else shape
            columns = 0
        if not ok:
            raise ValueError(f"{where}: kernel of shape {kernel.shape} for inputs of shape {shape}")
        if bias is not None and bias.shape != (kernel.shape[-1],):
            raise ValueError(f"{where}: bias of shape {bias.shape} for {kernel.shape[-1]} outputs")
        if columns > _MAX_VALUES:
            raise ValueError(f"{where}: needs {columns} values per patch; at most {_MAX_VALUES} are allowed")
    elif op == "activation":
        activation(arg)
        out = shape
    elif op == "maxpool2d":
        pool, _, strides = arg.partition("/")
        try:
            ph, pw = (int(v) for v in pool.split(","))
            sh, sw = (int(v) for v in strides.split(","))
        except ValueError:
            raise ValueError(f"{where}: expected 'maxpool2d/PH,PW/SH,SW'") from None
        if len(shape) != 3 or min(ph, pw, sh, sw) < 1 or ph > shape[0] or pw > shape[1]:
            raise ValueError(f"{where}: pool ({ph}, {pw}), strides ({sh}, {sw}) for inputs of shape {shape}")
        out = ((shape[0] - ph) // sh + 1, (shape[1] - pw) // sw + 1, shape[2])
    elif op == "flatten" and not arg:
        out = (math.prod(shape),)
    elif op == "softmax" and not arg:
        out = shape
    else:
        raise ValueError(f"{where}: unknown layer; supported: conv2d, dense, activation, maxpool2d, flatten, softmax")
    if math.prod(out) > _MAX_VALUES:
        raise ValueError(f"{where}: outputs {out}, more than {_MAX_VALUES} values per patch")
    return out


def _numpy_layer(desc: str, x: np.ndarray, params: Mapping[str, np.ndarray], i: int) -> np.ndarray:
    op, _, arg = desc.partition("/")
    if op == "conv2d":
        x = _conv2d_same(x, np.asarray(params[f"layer{i}_kernel"], np.float32), params.get(f"layer{i}_bias"))
        return _numpy_activation(arg, x)
    if op == "dense":
        x = x @ np.asarray(params[f"layer{i}_kernel"], np.float32)
        bias = params.get(f"layer{i}_bias")
        if bias is not None:
            x += np.asarray(bias, np.float32)
        return _numpy_activation(arg, x)
    if op == "activation":
        return _numpy_activation(arg, x)
    if op == "maxpool2d":
        pool, _, strides = arg.partition("/")
        return _maxpool2d(x, tuple(int(v) for v in pool.split(",")), tuple(int(v) for v in strides.split(",")))
    if op == "flatten":
        return x.reshape(len(x), -1)
    if op == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise NotImplementedError(f"layer {i} ({desc!r}) has no NumPy implementation")


def _numpy_activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0, out=x)
    if name == "selu":
        return (_SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0)))).astype(np.float32)
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0))).astype(np.float32)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        from scipy.special import expit

        return expit(x)
    raise NotImplementedError(f"activation {name!r} has no NumPy implementation; supported: {', '.join(ACTIVATIONS)}")


def _conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Stride-1 'same' convolution (Keras/TensorFlow padding) of channels-last `x` with a (kh, kw, cin, cout) kernel."""
    from numpy.lib.stride_tricks import as_strided

    n, height, width, cin = x.shape
    kh, kw, kcin, cout = kernel.shape
    if kcin != cin:
        raise ValueError(f"kernel expects {kcin} input channels; the layer gets {cin}")
    top, left = (kh - 1) // 2, (kw - 1) // 2  # TensorFlow puts the odd extra pixel at the end
    padded = np.zeros((n, height + kh - 1, width + kw - 1, cin), np.float32)
    padded[:, top : top + height, left : left + width] = x
    depth = kh * kw * cin
    weights = kernel.reshape(depth, cout)
    # The window of output pixel (y, x) is kh rows of kw * cin contiguous values of `padded`: a strided view
    # lists them in the (dy, dx, c) order of the reshaped kernel, and one copy per block makes the columns.
    s_n, s_y, s_x, s_c = padded.strides
    windows = as_strided(
        padded, shape=(n, height, width, kh, kw * cin), strides=(s_n, s_y, s_x, s_y, s_c), writeable=False
    )
    block = max(1, min(n, _IM2COL_FLOATS // (height * width * depth)))  # patches per column block
    cols = np.empty((block, height, width, kh, kw * cin), np.float32)
    out = np.empty((n, height, width, cout), np.float32)
    for s in range(0, n, block):
        m = min(block, n - s)
        np.copyto(cols[:m], windows[s : s + m])
        np.matmul(cols[:m].reshape(-1, depth), weights, out=out[s : s + m].reshape(-1, cout))
    if bias is not None:
        out += np.asarray(bias, np.float32)
    return out


def _maxpool2d(x: np.ndarray, pool: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    n, height, width, channels = x.shape
    ph, pw = pool
    sh, sw = strides
    if (ph, pw) == (sh, sw):
        oh, ow = height // ph, width // pw
        out = x[:, 0 : oh * ph : ph, 0 : ow * pw : pw].copy()
        for dy in range(ph):
            for dx in range(pw):
                if dy or dx:
                    np.maximum(out, x[:, dy : oh * ph : ph, dx : ow * pw : pw], out=out)
        return out
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(x, (ph, pw), axis=(1, 2))[:, ::sh, ::sw]
    return windows.max(axis=(-2, -1))
