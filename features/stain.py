"""Stain, chromatin and cytoplasm-rim features of one cell, normalised to its local background; nucleus LBP.

The colour measurements of the segmentation (``nucleus_r``, ...) are raw RGB means, which shift with the
camera, the illumination and the staining of each smear. The features here are measured in *optical
density* relative to the cell's own surroundings instead: ``od = -ln(I / I_background)`` per channel,
where ``I_background`` is the median colour of the crop pixels around the cell (plasma, red cells). Optical
density is proportional to the amount of stain (Beer-Lambert), so a pale and a dark photo of the same
cell give about the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leukoseg._checks import check_image
from leukoseg._frozen import read_only

__all__ = [
    "STAIN_FEATURE_NAMES", "cell_stain_features", "lbp_feature_names", "nucleus_lbp_features", "stain_feature_names",
]  # fmt: skip

_CHANNELS = ("r", "g", "b")
#: Scales (um) of the band-pass chromatin energies: fine grain to coarse clumps.
_BAND_SCALES_UM = (0.25, 0.5, 1.0, 2.0)
_BACKGROUND_MARGIN_PX = 3  # pixels this close to the cell are not background
_MIN_BACKGROUND_PX = 20
_FALLBACK_BACKGROUND = 200.0  # a typical smear background when a crop has no pixel around the cell
_LBP_RADII_UM = (0.5, 1.0, 2.0)
_LBP_POINTS = 8


def stain_feature_names() -> list[str]:
    """Return the names of the features of :func:`cell_stain_features`, in order.

    Returns
    -------
    list of str
        Nucleus optical densities, cytoplasm optical densities, cytoplasm area and rim, chromatin bands,
        then ``nucleus_box_fraction``.

    Examples
    --------
    >>> stain_feature_names()[:2]
    ['nucleus_od_r_mean', 'nucleus_od_r_std']
    """
    names = []
    for ch in _CHANNELS:
        names += [f"nucleus_od_{ch}_mean", f"nucleus_od_{ch}_std", f"nucleus_od_{ch}_p10", f"nucleus_od_{ch}_p90"]
    names += [f"cytoplasm_od_{ch}_mean" for ch in _CHANNELS]
    names += ["cytoplasm_area_um2", "cytoplasm_rim_um", "cytoplasm_rim_p10_um"]
    names += [f"chromatin_band_{s:g}um" for s in _BAND_SCALES_UM]
    names += ["nucleus_box_fraction"]
    return names


#: The names of :func:`stain_feature_names`.
STAIN_FEATURE_NAMES = tuple(stain_feature_names())


def cell_stain_features(
    image: np.ndarray, nucleus_mask: np.ndarray, cell_mask: np.ndarray, *, um_per_px: float
) -> dict[str, float]:
    """Background-relative stain density, chromatin granularity and cytoplasm rim of one cell.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB crop around the cell (its bounding box).
    nucleus_mask, cell_mask : (H, W) ndarray of bool
        The nucleus and the whole cell (the nucleus is counted as part of the cell).
    um_per_px : float
        Pixel size, in micrometres.

    Returns
    -------
    dict of str to float
        In the order of :func:`stain_feature_names`:

        - ``nucleus_od_{r,g,b}_{mean,std,p10,p90}``: optical density of the nucleus pixels per channel
          (mean, standard deviation, 10th and 90th percentiles): chromatin density and its spread;
        - ``cytoplasm_od_{r,g,b}_mean``: mean optical density of the cytoplasm (basophilia); NaN
          without cytoplasm pixels;
        - ``cytoplasm_area_um2``: cell minus nucleus area; ``cytoplasm_rim_um`` and
          ``cytoplasm_rim_p10_um``: median and 10th percentile, over the nucleus outline, of the distance
          to the cell's edge (lymphoblasts have a scant rim, lymphocytes and monocytes a wider one),
          measured from the outline pixels' centres to the first pixel outside the cell (about a pixel
          more than the rim); NaN when the cell fills the crop, leaving no pixel outside it;
        - ``chromatin_band_{s}um``: standard deviation of the green channel of the (eroded) nucleus
          band-passed between successive Gaussian scales (0.25, 0.5, 1 and 2 um, in micrometres
          whatever the pixel size): fine, even chromatin (blasts) against coarse clumps (mature
          lymphocytes);
        - ``nucleus_box_fraction``: nucleus pixels over the pixels of the crop.

    Raises
    ------
    ValueError
        If `image` is not an (H, W, 3) uint8 array, a mask not a boolean (H, W) array, or `um_per_px`
        not a positive number.

    Notes
    -----
    The background is the per-channel median of the crop pixels more than 3 pixels away from the cell;
    when fewer than 20 such pixels exist, of all pixels outside the cell, and without any, 200 (a
    typical background). Densities use ``max(I, 1)``; a region without pixels gives 0 (NaN for the
    cytoplasm density, which a classifier pipeline imputes).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((20, 20, 3), 200, dtype=np.uint8)
    >>> cell = np.zeros((20, 20), dtype=bool); cell[3:17, 3:17] = True
    >>> nucleus = np.zeros((20, 20), dtype=bool); nucleus[6:14, 6:14] = True
    >>> image[nucleus] = (100, 50, 150)
    >>> f = cell_stain_features(image, nucleus, cell, um_per_px=0.5)
    >>> round(f["nucleus_od_g_mean"], 4), f["cytoplasm_od_g_mean"], f["cytoplasm_rim_um"]
    (1.3863, 0.0, 2.0)
    """
    from .glcm import _check_cell_crop, _check_um_per_px

    _check_cell_crop(image, nucleus_mask, cell_mask)
    um_per_px = _check_um_per_px(um_per_px)
    nucleus = nucleus_mask
    cell = cell_mask | nucleus
    rgb = np.asarray(image, dtype=np.float64)
    out: dict[str, float] = {}

    around = ~_dilate(cell, _BACKGROUND_MARGIN_PX)
    if np.count_nonzero(around) < _MIN_BACKGROUND_PX:
        around = ~cell
    background = np.median(rgb[around], axis=0) if around.any() else np.full(3, _FALLBACK_BACKGROUND)
    od = -np.log(np.maximum(rgb, 1.0) / np.maximum(background, 1.0))

    nuc_od = od[nucleus]
    for c, ch in enumerate(_CHANNELS):
        v = nuc_od[:, c]
        if v.size:
            p10, p90 = np.percentile(v, (10, 90))
            out.update({f"nucleus_od_{ch}_mean": v.mean(), f"nucleus_od_{ch}_std": v.std(),
                        f"nucleus_od_{ch}_p10": p10, f"nucleus_od_{ch}_p90": p90})  # fmt: skip
        else:
            out.update({f"nucleus_od_{ch}_{s}": 0.0 for s in ("mean", "std", "p10", "p90")})
    cytoplasm = cell & ~nucleus
    cyto_od = od[cytoplasm]
    for c, ch in enumerate(_CHANNELS):
        out[f"cytoplasm_od_{ch}_mean"] = float(cyto_od[:, c].mean()) if cyto_od.size else float("nan")

    out["cytoplasm_area_um2"] = float(np.count_nonzero(cytoplasm)) * um_per_px**2
    outline = nucleus & ~_erode(nucleus, 1)
    to_edge = _distance_to_background(cell)[outline]
    if to_edge.size and np.isinf(to_edge).all():
        # The cell fills its crop: no background pixel to measure the rim to. Missing, not infinite (the
        # experiment imputes it; an infinite value would swamp a standardised distance).
        out["cytoplasm_rim_um"] = out["cytoplasm_rim_p10_um"] = float("nan")
    elif to_edge.size:
        out["cytoplasm_rim_um"] = float(np.median(to_edge)) * um_per_px
        out["cytoplasm_rim_p10_um"] = float(np.percentile(to_edge, 10)) * um_per_px
    else:
        out["cytoplasm_rim_um"] = out["cytoplasm_rim_p10_um"] = 0.0

    green = rgb[:, :, 1]
    inner = _erode(nucleus, 2) if np.count_nonzero(nucleus) > 50 else nucleus
    previous = green
    for s in _BAND_SCALES_UM:
        smooth = _gaussian(green, s / um_per_px)
        out[f"chromatin_band_{s:g}um"] = float((previous - smooth)[inner].std()) if inner.any() else 0.0
        previous = smooth
    out["nucleus_box_fraction"] = float(np.count_nonzero(nucleus)) / max(nucleus.size, 1)
    return {name: float(out[name]) for name in STAIN_FEATURE_NAMES}


# OpenCV forms of the scipy.ndimage operations these features were first written with (same results, see
# the tests): importing scipy.ndimage would add a third of a second to every one-image `leukoseg classify`.
_CROSS = read_only(np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))  # scipy's default structuring element


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndi.binary_dilation(mask, iterations=...)``: outside the array counts as background."""
    import cv2

    return cv2.dilate(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)  # fmt: skip


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndi.binary_erosion(mask, iterations=...)``: outside the array counts as background, so it erodes."""
    import cv2

    return cv2.erode(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                     borderValue=0).astype(bool)  # fmt: skip


def _distance_to_background(mask: np.ndarray) -> np.ndarray:
    """``ndi.distance_transform_edt(mask)``: exact Euclidean distance to the nearest background pixel."""
    import cv2

    padded = np.pad(mask, 1, constant_values=True)  # the array's edge is not background, as in SciPy
    if padded.all():
        return np.full(mask.shape, np.inf)
    dist = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1].astype(np.float64)


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """``ndi.gaussian_filter(values, sigma)`` of a float64 image: mirrored edges, kernel cut at 4 sigma."""
    import cv2

    size = 2 * int(4.0 * sigma + 0.5) + 1
    return cv2.GaussianBlur(values, (size, size), sigma, borderType=cv2.BORDER_REFLECT)


def lbp_feature_names(radii_um: Sequence[float] = _LBP_RADII_UM, *, points: int = _LBP_POINTS) -> list[str]:
    """Return the names of the features of :func:`nucleus_lbp_features`, in order.

    Parameters
    ----------
    radii_um : sequence of float, optional
        LBP radii in micrometres, as given to :func:`nucleus_lbp_features`.
    points : int, optional
        Sampling points per circle; each radius has ``points + 2`` uniform-pattern bins.

    Returns
    -------
    list of str
        ``f"nuc_lbp_r{r:g}um_{code}"`` for every radius (outer loop) and every code from 0 to
        ``points + 1`` (inner loop).

    Examples
    --------
    >>> lbp_feature_names((1.0,))[:2]
    ['nuc_lbp_r1um_0', 'nuc_lbp_r1um_1']
    """
    return [f"nuc_lbp_r{r:g}um_{i}" for r in radii_um for i in range(points + 2)]


def nucleus_lbp_features(
    image: np.ndarray, nucleus_mask: np.ndarray, *, um_per_px: float, radii_um: Sequence[float] = _LBP_RADII_UM,
    points: int = _LBP_POINTS,
) -> dict[str, float]:  # fmt: skip
    """Histogram of rotation-invariant uniform local binary patterns of the nucleus (green channel).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB crop around the cell.
    nucleus_mask : (H, W) ndarray of bool
        The nucleus; the histogram counts its pixels only (their circle neighbours may lie outside it).
    um_per_px : float
        Pixel size, in micrometres.
    radii_um : sequence of float, optional
        Circle radii, in micrometres (converted to ``max(1, r / um_per_px)`` pixels).
    points : int, optional
        Sampling points on the circle.

    Returns
    -------
    dict of str to float
        For every radius, the fraction of nucleus pixels with each of the ``points + 2`` pattern codes of
        :func:`skimage.feature.local_binary_pattern` (``method="uniform"``: codes ``0..points`` count the
        neighbours at least as bright as the centre in one contiguous arc, i.e. spots, edges and flat
        areas of the chromatin; ``points + 1`` collects the non-uniform patterns). Names as in
        :func:`lbp_feature_names`. An empty nucleus gives zeros.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((12, 12, 3), 90, dtype=np.uint8)
    >>> nucleus = np.zeros((12, 12), dtype=bool); nucleus[3:9, 3:9] = True
    >>> f = nucleus_lbp_features(image, nucleus, um_per_px=0.5, radii_um=(1.0,))
    >>> f["nuc_lbp_r1um_8"]  # a flat region: every neighbour >= the centre
    1.0
    """
    from skimage.feature import local_binary_pattern

    from .glcm import _check_gray_and_mask, _check_um_per_px

    check_image(image)
    green = image[:, :, 1]
    _check_gray_and_mask(green, nucleus_mask, name="image")
    um_per_px = _check_um_per_px(um_per_px)
    n = int(np.count_nonzero(nucleus_mask))
    out = []
    for r in radii_um:
        if n == 0:
            out += [0.0] * (points + 2)
            continue
        codes = local_binary_pattern(green, points, max(1.0, float(r) / um_per_px), method="uniform")
        hist = np.bincount(codes[nucleus_mask].astype(np.intp), minlength=points + 2)[: points + 2]
        out += (hist / n).tolist()
    return dict(zip(lbp_feature_names(radii_um, points=points), out, strict=True))
