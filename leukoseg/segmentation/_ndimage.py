"""The few image operations of the segmentation that would otherwise come from SciPy and scikit-image.

Importing ``scipy.ndimage`` (and with it most of scikit-image) costs about 0.4 s per process, more than
segmenting several smears: these numpy/OpenCV versions give the same answers (the tests compare them with
scikit-image's) and keep ``leukoseg segment``'s start-up light.
"""

from __future__ import annotations

from typing import cast

import numpy as np

__all__ = ["find_objects", "peak_local_max", "threshold_otsu", "watershed"]


def threshold_otsu(values: np.ndarray) -> float:
    """Otsu's threshold, as ``skimage.filters.threshold_otsu(values)`` computes it.

    Integer values get one histogram bin per integer, floating-point values 256 bins over their range.

    Parameters
    ----------
    values : ndarray
        Samples (any shape, flattened).

    Returns
    -------
    float
        Values above it form the brighter class.
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        raise ValueError("threshold_otsu needs at least one value")
    first = values[0]
    if np.all(values == first):
        return float(first)
    if np.issubdtype(values.dtype, np.integer):
        lo, hi = int(values.min()), int(values.max())
        counts = np.bincount((values.astype(np.int64) - lo), minlength=hi - lo + 1)
        centers = np.arange(lo, hi + 1)
    else:
        counts, edges = np.histogram(values, bins=256)
        centers = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(np.float32)  # scikit-image sums in float32: the same rounding, the same answer
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[np.argmax(variance12)])


def find_objects(labels: np.ndarray) -> list[tuple[slice, slice] | None]:
    """Bounding boxes of the labels 1..max of a 2-D label image, as ``scipy.ndimage.find_objects``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Non-negative labels, 0 background.

    Returns
    -------
    list of (slice, slice) or None
        Entry ``i`` is the box of label ``i + 1``, None where that label is absent.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    n = int(labels.max()) if labels.size else 0
    if n <= 0:
        return []
    import cv2

    h, w = labels.shape
    if labels.dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        # OpenCV lists the nonzero pixels (in raster order) four times faster than np.nonzero.
        points = cv2.findNonZero(np.ascontiguousarray(labels)).reshape(-1, 2)
        xs, ys = points[:, 0].astype(np.intp), points[:, 1].astype(np.intp)
    else:
        ys, xs = np.nonzero(labels)
    lab = labels[ys, xs].astype(np.intp)
    if (n + 1) * max(h, w) <= 1 << 25:
        # Which rows and columns each label touches, from two small histograms (no sorting).
        in_row = np.bincount(lab * h + ys, minlength=(n + 1) * h).reshape(n + 1, h) > 0
        in_col = np.bincount(lab * w + xs, minlength=(n + 1) * w).reshape(n + 1, w) > 0
        present = cast(np.ndarray, in_row.any(axis=1))  # numpy's stubs allow a scalar: not for a 2-D array
        r0, r1 = in_row.argmax(axis=1), h - in_row[:, ::-1].argmax(axis=1)
        c0, c1 = in_col.argmax(axis=1), w - in_col[:, ::-1].argmax(axis=1)
    else:  # very many labels: per-label extremes directly
        big = np.iinfo(np.intp).max
        r0, c0 = np.full(n + 1, big, np.intp), np.full(n + 1, big, np.intp)
        r1, c1 = np.zeros(n + 1, np.intp), np.zeros(n + 1, np.intp)
        np.minimum.at(r0, lab, ys)
        np.maximum.at(r1, lab, ys + 1)
        np.minimum.at(c0, lab, xs)
        np.maximum.at(c1, lab, xs + 1)
        present = r1 > 0
    r0, r1, c0, c1, present = r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), present.tolist()
    return [(slice(r0[i], r1[i]), slice(c0[i], c1[i])) if present[i] else None for i in range(1, n + 1)]


def peak_local_max(
    image: np.ndarray, *, min_distance: int, threshold_abs: float, labels: np.ndarray
) -> np.ndarray:
    """Local maxima of `image` within each label, as ``skimage.feature.peak_local_max`` finds them.

    The same as ``peak_local_max(image, min_distance=min_distance, threshold_abs=threshold_abs,
    labels=labels, exclude_border=False)``: per label, the pixels equal to the maximum of their
    ``2 * min_distance + 1`` square (other labels masked out) and above the threshold, highest first,
    thinned so that no two are closer than `min_distance` (Chebyshev distance).

    Parameters
    ----------
    image : (H, W) ndarray of float32
        The landscape (e.g. a distance transform).
    min_distance : int
        Minimum spacing of peaks, in pixels (at least 1).
    threshold_abs : float
        Peaks must be above this.
    labels : (H, W) ndarray of int
        Objects; peaks are looked for in each separately.

    Returns
    -------
    (N, 2) ndarray of int
        Row, column of each peak.
    """
    import cv2

    min_distance = max(1, int(min_distance))
    size = 2 * min_distance + 1
    footprint = np.ones((size, size), np.uint8)
    bg = np.finfo(np.float32).min
    image = np.asarray(image, np.float32)
    found = []
    for index, roi in enumerate(find_objects(labels)):
        if roi is None:
            continue
        mask = labels[roi] == index + 1
        obj = np.where(mask, image[roi], bg)
        # A maximum filter whose window is clipped at the edges: the same as SciPy's mode='nearest'.
        peaks = obj == cv2.dilate(obj, footprint, borderType=cv2.BORDER_CONSTANT, borderValue=float(bg))
        if np.all(peaks[mask]):
            # A flat object: SciPy's rule, its isolated pixels (gone after an opening) are the peaks.
            cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
            padded = np.pad(mask.astype(np.uint8), 1)  # binary_opening's outside is background
            opened = cv2.dilate(cv2.erode(padded, cross), cross)[1:-1, 1:-1].astype(bool)
            peaks = mask & ~opened
        peaks &= obj > threshold_abs
        rr, cc = np.nonzero(peaks)
        order = np.argsort(-obj[rr, cc], kind="stable")
        coords = np.c_[rr[order], cc[order]]
        if min_distance > 1:
            coords = _ensure_spacing(coords, min_distance)
        found.append(coords + (roi[0].start, roi[1].start))
    return np.vstack(found).astype(np.intp) if found else np.empty((0, 2), np.intp)


def _ensure_spacing(coords: np.ndarray, spacing: int) -> np.ndarray:
    """Greedy thinning, best first: drop points closer than `spacing` (Chebyshev) to a kept one."""
    keep = []
    rejected = np.zeros(len(coords), bool)
    for i in range(len(coords)):
        if rejected[i]:
            continue
        keep.append(i)
        rejected |= np.abs(coords - coords[i]).max(axis=1) < spacing
    return coords[keep]


def watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker-based watershed, 4-connected: ``skimage.segmentation.watershed(image, markers, mask=mask)``.

    Runs scikit-image's compiled flooding directly; its Python wrapper imports SciPy (about 0.4 s). Falls
    back to the wrapper if the compiled function is not where this version expects it.

    Parameters
    ----------
    image : (H, W) ndarray
        Landscape; low values are flooded first.
    markers : (H, W) ndarray of int32
        Seeds, 0 elsewhere.
    mask : (H, W) ndarray of bool
        Only these pixels are labelled.

    Returns
    -------
    (H, W) ndarray of int32
        Labels.
    """
    try:
        from skimage.segmentation._watershed_cy import watershed_raveled
    except ImportError:  # pragma: no cover - another scikit-image layout
        from skimage.segmentation import watershed as skimage_watershed

        return skimage_watershed(image, markers, mask=mask)
    mask = np.asarray(mask, bool)
    result = np.zeros(mask.shape, np.int32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return result
    # Only the mask's bounding box is flooded (the same answer: nothing outside the mask is labelled, and
    # the raster order of seeds and neighbours is kept).
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    mask_box = mask[box]
    # Padding keeps the flood off the edges (the compiled code does not check bounds).
    h, w = mask_box.shape
    flat_image = np.zeros((h + 2, w + 2), np.float64)
    flat_image[1:-1, 1:-1] = image[box]
    output = np.zeros((h + 2, w + 2), np.int32)
    output[1:-1, 1:-1] = np.where(mask_box, markers[box], 0)
    flat_mask = np.zeros((h + 2, w + 2), np.int8)
    flat_mask[1:-1, 1:-1] = mask_box
    flat_mask = flat_mask.ravel()
    width = output.shape[1]
    neighbours = np.array([-width, -1, 1, width], np.intp)
    strides = np.array([width, 1], np.intp)
    watershed_raveled(flat_image.ravel(), np.flatnonzero(output), neighbours, flat_mask, strides, 0.0,
                      output.ravel(), False)
    result[box] = output[1:-1, 1:-1]
    return result
