"""NumPy forward pass of the CNN exported by :func:`~leukoseg.classify.cnn.export_numpy`.

Kept apart from :mod:`.cnn` so that inference imports NumPy only: no scikit-learn, Keras or TensorFlow
(the one-image ``leukoseg classify`` must start in well under two seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .augment import dihedral_mean

__all__ = ["ACTIVATIONS", "FORMAT_VERSION", "numpy_predict_proba"]

#: Activations that :func:`~leukoseg.classify.cnn.build_thanh_cnn` accepts and :func:`numpy_predict_proba`
#: reproduces.
ACTIVATIONS = ("relu", "selu", "elu", "tanh", "sigmoid", "linear")

#: Version of the saved-model folder layout (``config.json``) and of the exported arrays.
FORMAT_VERSION = 1

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_IM2COL_FLOATS = 1 << 18  # size of the im2col block of the NumPy convolution (1 MiB of float32)


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
    """Class probabilities from the arrays of :func:`export_numpy`, with NumPy only.

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
