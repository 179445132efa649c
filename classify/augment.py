"""Training-time augmentation of cell patches, in plain NumPy.

Used by :class:`leukoseg.classify.cnn.CNNClassifier` on training batches only; validation and prediction
batches are never augmented. Every random draw comes from the `rng` passed in, so a seeded generator gives
the same batch every time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from leukoseg._checks import check_fraction, check_positive_int

__all__ = ["DIHEDRAL_SQUARE", "DIHEDRAL_RECT", "augment_batch", "dihedral", "dihedral_mean"]

#: The 8 symmetries of a square as (quarter turns, flip left-right): rotations by 0/90/180/270 degrees, each
#: with and without a mirror.
DIHEDRAL_SQUARE: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))

#: The 4 symmetries that keep a non-square patch's shape: identity, mirror, 180 degree turn, both.
DIHEDRAL_RECT: tuple[tuple[int, bool], ...] = ((0, False), (0, True), (2, False), (2, True))


def dihedral(patches: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate patches by `k` quarter turns (counter-clockwise), after an optional left-right mirror.

    Parameters
    ----------
    patches : (n, H, W, C) ndarray
        A batch of patches.
    k : int
        Quarter turns, 0 to 3. Odd `k` swaps H and W.
    flip : bool
        Mirror left-right before turning.

    Returns
    -------
    (n, H, W, C) or (n, W, H, C) ndarray
        A view where possible (no copy is promised either way); the input is not modified.

    Examples
    --------
    >>> x = np.arange(4).reshape(1, 2, 2, 1)
    >>> dihedral(x, 1, False)[0, :, :, 0]
    array([[1, 3],
           [0, 2]])
    """
    out = patches[:, :, ::-1] if flip else patches
    return np.rot90(out, k=k, axes=(1, 2))


def dihedral_mean(predict: Callable[[np.ndarray], ArrayLike], patches: np.ndarray) -> np.ndarray:
    """Test-time augmentation: the mean of `predict` over the shape-keeping dihedral views of the patches.

    A cell has no preferred orientation on a smear, so a classifier's output should not depend on how the
    patch is turned; averaging over the 8 symmetries of a square patch (4 of a non-square one) removes
    what remains of that dependence and smooths the probabilities, which ranks cells better (cell AUC).

    Parameters
    ----------
    predict : callable
        Maps an (n, H, W, C) batch to an (n, ...) array (e.g. class probabilities).
    patches : (n, H, W, C) ndarray
        The batch; not modified.

    Returns
    -------
    ndarray of float64
        The mean of ``predict(view)`` over the views.

    Examples
    --------
    >>> x = np.arange(8.0).reshape(2, 2, 2, 1)
    >>> dihedral_mean(lambda b: b[:, 0, 0, 0], x)  # the mean corner value
    array([1.5, 5.5])
    """
    symmetries = DIHEDRAL_SQUARE if patches.shape[1] == patches.shape[2] else DIHEDRAL_RECT
    total = None
    for k, flip in symmetries:
        out = np.asarray(predict(np.ascontiguousarray(dihedral(patches, k, flip))), np.float64)
        total = out if total is None else total + out
    assert total is not None  # both symmetry groups are non-empty
    return total / len(symmetries)


def _check_max_shift(max_shift: int, patch_shape: Sequence[int] | None = None) -> None:
    """Raise ValueError unless `max_shift` is an int >= 0, and less than the patch's shorter side when
    `patch_shape` (H, W, ...) is given."""
    check_positive_int("max_shift", max_shift, expected="an int >= 0", allow_zero=True)
    side = None if patch_shape is None else min(patch_shape[:2])
    if side is not None and max_shift >= side:
        raise ValueError(f"max_shift must be less than the patch's shorter side ({side}); got {max_shift}")


def augment_batch(
    patches: np.ndarray,
    *,
    rng: np.random.Generator,
    stain_jitter: float = 0.05,
    brightness_jitter: float = 0.1,
    max_shift: int = 0,
) -> np.ndarray:
    """Randomly flip/rotate each patch, jitter its stain colour and brightness, and optionally shift it.

    Each patch independently gets one of the 8 dihedral symmetries (4 when the patch is not square), each
    colour channel multiplied by a factor drawn uniformly from ``[1 - stain_jitter, 1 + stain_jitter]``
    (a mild change of stain hue and strength), then a brightness offset drawn uniformly from
    ``[-brightness_jitter, brightness_jitter] * 255`` added to all channels; values are clipped to
    ``[0, 255]``. With `max_shift`, each patch is then moved by whole pixels drawn uniformly from
    ``[-max_shift, max_shift]`` along each axis, its edge pixels repeated into the uncovered margin (a cell's
    centroid, and so its patch centre, is only known to a pixel or two). The shifts are drawn after the colour,
    so ``max_shift=0`` gives the batches of a generator that never drew them.

    Parameters
    ----------
    patches : (n, H, W, C) ndarray
        Patches on the 0-255 scale (uint8 or float).
    rng : numpy.random.Generator
        Source of every random draw.
    stain_jitter : float, optional
        Largest relative change of each channel, in ``[0, 1)``. 0 switches it off.
    brightness_jitter : float, optional
        Largest brightness offset as a fraction of 255, in ``[0, 1)``. 0 switches it off.
    max_shift : int, optional
        Largest translation in pixels along each axis, less than the patch's shorter side. 0 (the default)
        switches it off.

    Returns
    -------
    (n, H, W, C) ndarray of float32
        A new array; `patches` is not modified.

    Raises
    ------
    ValueError
        If `patches` is not 4-D, or a jitter or `max_shift` is out of range.

    Examples
    --------
    >>> x = np.full((2, 4, 4, 3), 100, np.uint8)
    >>> y = augment_batch(x, rng=np.random.default_rng(0), stain_jitter=0.0, brightness_jitter=0.0)
    >>> y.dtype, bool((y == 100).all())
    (dtype('float32'), True)
    """
    patches = np.asarray(patches)
    if patches.ndim != 4:
        raise ValueError(f"patches must be a 4-D array (n, H, W, C); got shape {patches.shape}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, e.g. np.random.default_rng(0); got {type(rng)}")
    for name, value in (("stain_jitter", stain_jitter), ("brightness_jitter", brightness_jitter)):
        check_fraction(name, value)
    n, height, width, channels = patches.shape
    _check_max_shift(max_shift, (height, width))
    ops = DIHEDRAL_SQUARE if height == width else DIHEDRAL_RECT
    choice = rng.integers(0, len(ops), size=n)
    out = np.empty(patches.shape, np.float32)
    for i, (k, flip) in enumerate(ops):
        sel = np.flatnonzero(choice == i)
        if sel.size:
            out[sel] = dihedral(patches[sel], k, flip)
    if stain_jitter or brightness_jitter:
        gain = rng.uniform(1.0 - stain_jitter, 1.0 + stain_jitter, size=(n, 1, 1, channels)).astype(np.float32)
        offset = rng.uniform(-brightness_jitter, brightness_jitter, size=(n, 1, 1, 1)).astype(np.float32) * 255
        out *= gain
        out += offset
        np.clip(out, 0.0, 255.0, out=out)
    if max_shift:
        shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
        m = int(max_shift)
        padded = np.pad(out, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
        for i, (dy, dx) in enumerate(shifts):
            out[i] = padded[i, m + dy : m + dy + height, m + dx : m + dx + width]
    return out
