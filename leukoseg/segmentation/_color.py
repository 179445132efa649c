"""Stain-aware colour features.

Romanowsky stains (May-Grünwald-Giemsa, Wright, Leishman) colour DNA purple: blue much stronger than green.
Red cells (eosin, pink) and the slide background are neutral or warm, blue about equal to green. The
*blue-green excess* ``(B - G) / brightness`` is therefore the stain-aware feature used for nuclei: it is
large on nuclei, moderate on basophilic cytoplasm and near zero on red cells and background, and dividing
by the background brightness makes it independent of exposure.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_image, check_positive

__all__ = ["background_level", "stain_excess"]


def background_level(image: np.ndarray, *, channel: int = 1) -> float:
    """Estimate the slide background's brightness: a high percentile of one channel (green by default; never below 1).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    channel : int, optional
        0 red, 1 green, 2 blue.

    Returns
    -------
    float
        The 95th percentile of the channel over all pixels, at least 1.

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array or `channel` is not 0, 1 or 2.
    """
    check_image(image)
    if isinstance(channel, bool) or channel not in (0, 1, 2):
        raise ValueError(f"channel must be 0 (red), 1 (green) or 2 (blue), got {channel!r}")
    import cv2

    # Every pixel counts: a subsample (every 4th row and column, as before) picks different pixels when the
    # image is flipped, and the threshold, hence the cells found, then depended on the orientation.
    # OpenCV counts one channel of the interleaved image in place (no copy; ~2 ms for 5 megapixels).
    counts = cv2.calcHist([image], [channel], None, [256], [0, 256]).ravel().astype(np.int64)
    return float(max(_percentile_uint8(counts, 95.0), 1.0))


def _percentile_uint8(counts: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of uint8 values given as 256 counts (no sort)."""
    cum = np.cumsum(counts)
    rank = q / 100.0 * (cum[-1] - 1)
    lo = int(np.floor(rank))
    a = float(np.searchsorted(cum, lo, side="right"))  # the lo-th smallest value
    b = float(np.searchsorted(cum, min(lo + 1, int(cum[-1]) - 1), side="right"))
    t = rank - lo
    # numpy's lerp, with its choice of end for t >= 0.5
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def stain_excess(image: np.ndarray, *, background: float | None = None) -> np.ndarray:
    """Blue-green excess of a Romanowsky-stained image, scaled to the background brightness.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB image.
    background : float, optional
        Background brightness; estimated with :func:`background_level` when omitted.

    Returns
    -------
    (H, W) ndarray of float32
        ``255 * (B - G) / background``: about 0 on red cells and background, 40-120 on nuclei.

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array or `background` is not positive.

    Examples
    --------
    >>> px = np.array([[[110, 50, 160], [220, 210, 200]]], np.uint8)  # a nucleus and the background
    >>> stain_excess(px, background=210).astype(np.float64).round(1).tolist()
    [[133.6, -12.1]]
    """
    check_image(image)
    if background is not None:
        check_positive("background", background)
    bg = background_level(image) if background is None else float(background)
    b = image[..., 2].astype(np.float32)
    g = image[..., 1].astype(np.float32)
    return (b - g) * np.float32(255.0 / bg)
