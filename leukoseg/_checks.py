"""Input checks shared by the stages: an actionable ``ValueError`` before any work, as scikit-image does.

Every public stage that takes an ``image`` (H, W, 3) uint8 RGB, a ``mask`` (bool) or ``labels`` (int, 0 the
background) calls these first, so a float, grey-level, RGBA, 16-bit or empty array is refused with a message
that says what was expected, instead of failing deep inside OpenCV or giving a wrong answer.
"""

from __future__ import annotations

import numbers
from typing import TypeGuard

import numpy as np

__all__ = [
    "check_bool", "check_fraction", "check_image", "check_labels", "check_mask", "check_positive",
    "check_positive_int", "is_real",
]


def is_real(value: object) -> TypeGuard[int | float | np.integer | np.floating]:
    """Whether `value` is a real number; a bool is not (True as a size in micrometres is a mistake, not 1.0)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise ValueError unless `value` is a finite positive (or, with `allow_zero`, non-negative) number."""
    if not (is_real(value) and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        sign = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {sign} number, got {value!r}")


def check_fraction(name: str, value: object) -> None:
    """Raise ValueError unless `value` is a real number in ``[0, 1)`` (a rate, share or jitter strength)."""
    if not (is_real(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1); got {value!r}")


def check_positive_int(name: str, value: object, *, expected: str = "a positive int", allow_zero: bool = False) -> None:
    """Raise ValueError unless `value` is an int (a NumPy one too, a bool not) of at least 1 (0 with `allow_zero`).

    `expected` words the requirement in the message (``"{name} must be {expected}, got ..."``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ValueError unless `value` is True or False (a NumPy bool too): ``"no"`` is a true string."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_image(image: object, *, name: str = "image") -> None:
    """Raise ValueError unless `image` is a non-empty (H, W, 3) uint8 RGB array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = (" (a grey-level image lacks the stain colours; RGBA: drop the alpha channel)"
                if image.ndim in (2, 3) else "")
        raise ValueError(f"{name} must be (H, W, 3) RGB, got shape {image.shape}{hint}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype} (convert with skimage.util.img_as_ubyte)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty, shape {image.shape}")


def check_mask(mask: object, shape: tuple[int, ...], *, name: str = "mask") -> None:
    """Raise ValueError unless `mask` is a boolean array of the given shape."""
    if not isinstance(mask, np.ndarray) or mask.dtype != bool:
        dtype = getattr(mask, "dtype", type(mask).__name__)
        raise ValueError(f"{name} must be a boolean array; got {dtype} (use mask.astype(bool) or labels == i)")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape} but the image is {tuple(shape)}; they must match")


def check_labels(labels: object, shape: tuple[int, ...], *, name: str = "labels") -> None:
    """Raise ValueError unless `labels` is a non-negative integer label image (0 the background) of `shape`."""
    if not isinstance(labels, np.ndarray) or labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        dtype = getattr(labels, "dtype", type(labels).__name__)
        raise ValueError(f"{name} must be an integer label image (0 the background); got {dtype}")
    if labels.shape != tuple(shape):
        raise ValueError(f"{name} has shape {labels.shape} but the image is {tuple(shape)}; they must match")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} holds negative labels; 0 is the background and cells are 1, 2, ...")
