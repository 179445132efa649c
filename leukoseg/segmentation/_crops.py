"""Cell crops: native-resolution boxes and scale-normalised square patches for the CNN."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._checks import check_image, check_positive_int, is_real

__all__ = ["extract_patch", "extract_patches"]


def extract_patch(
    image: np.ndarray,
    x: float,
    y: float,
    *,
    um_per_px: float,
    patch_size: int = 50,
    patch_um_per_px: float = 0.5,
) -> np.ndarray:
    """A square patch centred on ``(x, y)`` at a fixed micrometres per pixel.

    Every patch shows the same physical field (``patch_size * patch_um_per_px`` um, 25 um by default:
    room for the largest blasts), whatever the camera and magnification of the smear.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    x, y : float
        Centre in image pixels (x = column, y = row).
    um_per_px : float
        Pixel size of `image`.
    patch_size : int, optional
        Side of the patch in pixels.
    patch_um_per_px : float, optional
        Pixel size of the patch.

    Returns
    -------
    (patch_size, patch_size, 3) ndarray of uint8
        Borders beyond the image are filled by reflection; a patch shrunk from a window that lies wholly
        outside the image (a centre far off the image) is black.

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array, the centre is not finite, or a size is not
        positive.

    Examples
    --------
    >>> image = np.zeros((100, 100, 3), np.uint8)
    >>> extract_patch(image, 50, 50, um_per_px=0.25).shape
    (50, 50, 3)
    """
    check_image(image)
    _check_patch_settings(um_per_px, patch_size, patch_um_per_px)
    return _extract_patch(image, x, y, um_per_px=um_per_px, patch_size=patch_size, patch_um_per_px=patch_um_per_px)


def _check_patch_settings(um_per_px: float, patch_size: int, patch_um_per_px: float) -> None:
    if not (is_real(um_per_px) and is_real(patch_um_per_px) and np.isfinite(um_per_px)
            and np.isfinite(patch_um_per_px) and um_per_px > 0 and patch_um_per_px > 0):  # fmt: skip
        raise ValueError(f"um_per_px and patch_um_per_px must be positive, got {um_per_px!r} and {patch_um_per_px!r}")
    check_positive_int("patch_size", patch_size)


def _extract_patch(image: np.ndarray, x: float, y: float, *, um_per_px: float, patch_size: int,
                   patch_um_per_px: float) -> np.ndarray:
    """:func:`extract_patch` of an image and settings already checked."""
    import cv2

    if not (is_real(x) and is_real(y) and np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"the patch centre must be finite numbers, got x={x!r}, y={y!r}")
    s = um_per_px / patch_um_per_px  # patch pixels per image pixel
    c = (patch_size - 1) / 2.0
    # Affine map from image to patch: scale about (x, y), then move (x, y) to the patch centre.
    m = np.array([[s, 0.0, c - s * x], [0.0, s, c - s * y]])
    if s >= 1:
        return cv2.warpAffine(image, m, (patch_size, patch_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # warpAffine has no area filter: shrink a window around the centre with INTER_AREA first (no
    # aliasing), then place it with a pure translation (pixel centres: u' = s * (u + 0.5) - 0.5).
    half = int(np.ceil(patch_size / s / 2)) + 2
    x0, y0 = int(np.floor(x)) - half, int(np.floor(y)) - half
    window = _window(image, x0, y0, 2 * half, 2 * half)
    # OpenCV's fractional INTER_AREA is faster on float32; rounding back gives the uint8 answer exactly.
    small = cv2.resize(window.astype(np.float32), None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    small = cv2.convertScaleAbs(small)
    shift = np.array([[1.0, 0.0, c - (s * (x - x0 + 0.5) - 0.5)], [0.0, 1.0, c - (s * (y - y0 + 0.5) - 0.5)]])
    return cv2.warpAffine(small, shift, (patch_size, patch_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _window(image: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """``image[y0:y0+h, x0:x0+w]``, reflected where it leaves the image."""
    import cv2

    H, W = image.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + h - H), max(0, x0 + w - W)
    inner = image[max(0, y0) : min(H, y0 + h), max(0, x0) : min(W, x0 + w)]
    if top or left or bottom or right:
        if inner.size == 0:
            return np.zeros((h, w, 3), image.dtype)
        inner = cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_REFLECT)
    return inner


def extract_patches(
    image: np.ndarray,
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    *,
    um_per_px: float,
    patch_size: int = 50,
    patch_um_per_px: float = 0.5,
) -> np.ndarray:
    """Cut scale-normalised patches around many centres (:func:`extract_patch` for each).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    xs, ys : (N,) array-like of float
        Centres in image pixels (x = column, y = row), as many of one as of the other.
    um_per_px : float
        Pixel size of `image`.
    patch_size : int, optional
        Side of the patches in pixels.
    patch_um_per_px : float, optional
        Pixel size of the patches.

    Returns
    -------
    (N, patch_size, patch_size, 3) ndarray of uint8
        One patch per centre, in the order of `xs` and `ys`.

    Raises
    ------
    ValueError
        As :func:`extract_patch`, or if `xs` and `ys` differ in length.
    """
    check_image(image)
    _check_patch_settings(um_per_px, patch_size, patch_um_per_px)
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    out = np.zeros((len(xs), patch_size, patch_size, 3), np.uint8)
    for i, (x, y) in enumerate(zip(xs, ys)):
        out[i] = _extract_patch(image, x, y, um_per_px=um_per_px, patch_size=patch_size,
                                patch_um_per_px=patch_um_per_px)
    return out
