"""White-cell segmentation: nuclei by stain colour, touching nuclei split by watershed, cells around them.

The pipeline (all sizes in micrometres, converted per image; no pixel size is fixed anywhere):

1. A reduced copy of the smear gives the pixel size from its red cells (:mod:`._scale`), unless the user
   gives one; where its red cells are too small to measure well (a wide field), a finer copy of the image,
   or of its middle, measures them again.
2. The smear is resampled to a *working resolution* of ``working_um_per_px`` (0.35 um/px by default) so
   that every later step sees cells at the same size in pixels, whatever the camera and magnification,
   and the work is bounded for huge images.
3. A median filter (about 0.7 um) removes JPEG noise and platelet speckle without rounding edges.
4. Stain threshold, chosen per image on the blue-green excess (:func:`._color.stain_excess`): background
   and red cells form the dominant mode of that feature; pixels above the mode by ``stain_sigmas`` robust
   standard deviations (and at least ``min_stain_excess``) are *stained* (nuclei, basophilic cytoplasm,
   platelets). Where the red cells form a mode of their own above the glass's (a glass yellower than the
   red cells, as on the bundled ``smear_03.jpg``), the threshold is also kept ``min_stain_excess`` above the
   red cells' mode (``stain_above_red_cells``), so that the red cells beside a white cell do not become its
   cytoplasm. Nuclei are the stained pixels above a second threshold, Otsu's split of the pixels above the
   glass's threshold, kept between ``nucleus_excess_range`` (so an image made only of nuclei, or only of
   cytoplasm, still gets a sensible split), that also absorb more green than red light (purple chromatin,
   not deep blue cytoplasm; ``purple_nuclei``).
5. Nuclear lobes closer than about 1 um are joined; nuclei smaller than ``min_nucleus_area_um2``
   (platelets, debris) are dropped.
6. Touching nuclei are split by a watershed on the distance transform from markers at its maxima that are
   at least ``split_distance_um`` apart; fragments smaller than ``min_nucleus_area_um2`` merge back into
   their neighbour (so a lobed neutrophil nucleus stays one cell).
7. Each cell is its nucleus plus the stained cytoplasm around it, shared between touching cells by a
   second watershed seeded with the nuclei, and never further than ``max_cytoplasm_um`` from its nucleus.
   Before that, the stained region is opened with a disc of radius ``cytoplasm_open_um``: where a cell's
   edge runs along a neighbouring red cell, a thin stained strip follows the red cell's rim, and without
   the opening the cell's outline (and its area, diameter and N:C ratio) took it in.
"""

from __future__ import annotations

import inspect
import logging
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .._checks import check_bool, check_image, check_positive, is_real
from .._frozen import freeze_fields, read_only
from ._color import background_level, stain_excess
from ._measure import _dilate, _index_map, measure_cells
from ._ndimage import find_objects, peak_local_max, threshold_otsu, watershed
from ._scale import SCALE_FALLBACK, SCALE_GIVEN, Scale, estimate_scale

__all__ = [
    "MAX_CYTOPLASM_OPEN_UM",
    "SEGMENT_SETTING_MAX",
    "UNRECORDED_SEGMENT_SETTINGS",
    "Segmentation",
    "check_segment_settings",
    "default_segment_settings",
    "recorded_segment_settings",
    "segment",
]

log = logging.getLogger(__name__)

#: How earlier releases segmented where a setting did not exist yet: a run or model bundle that does not
#: record one of these settings was made with this value (not with today's default).
UNRECORDED_SEGMENT_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {"cytoplasm_open_um": 0.7, "stain_above_red_cells": False}
)
#: The largest cytoplasm opening taken (um): a wider disc removes all the cytoplasm of a white cell, and its
#: kernel grows with the square of the radius.
MAX_CYTOPLASM_OPEN_UM = 10.0
#: Upper bounds of segment()'s settings. Beyond them a setting describes no blood smear (a red cell of 30 um,
#: a smallest nucleus of 1000 um^2, a working pixel of 2 um, wider than a nucleolus, a nucleus threshold
#: beyond the 255 of a pure blue pixel on white glass), so a model bundle that holds one is damaged; and the
#: filters of the um settings grow with the square of their size, so a huge value exhausts the memory
#: instead of failing. ``nucleus_excess_range`` is bounded by its higher end.
SEGMENT_SETTING_MAX: Mapping[str, float] = types.MappingProxyType({
    "red_cell_diameter_um": 30.0, "fallback_nucleus_diameter_um": 30.0, "working_um_per_px": 2.0,
    "median_um": 5.0, "stain_sigmas": 100.0, "min_stain_excess": 255.0, "nucleus_excess_range": 255.0,
    "min_nucleus_area_um2": 1000.0, "split_distance_um": 30.0, "max_cytoplasm_um": 30.0,
    "cytoplasm_open_um": MAX_CYTOPLASM_OPEN_UM,
})  # fmt: skip
#: Images with a side shorter than this cannot hold a white cell: refused as bad input.
MIN_IMAGE_SIDE = 16
#: The coarse copy used for the red-cell ruler has at most this many pixels along its longer side.
_RULER_SIDE = 768
#: Red cells less than this many pixels across in the coarse copy are measured again, on a finer copy of
#: (the middle of) the image where they are _RULER_RED_CELL_PX across: in the coarse copy of a wide field (a
#: stitched image, a 20-megapixel camera) they are too small to measure well (10 px across: 4 % too large).
#: ALL-IDB1's red cells are 22.7-56.4 px across in their coarse copies, so its images are measured once.
_RULER_MIN_RED_CELL_PX = 20.0
_RULER_RED_CELL_PX = 32.0
#: The finer copy has at most this many pixels (4 coarse copies of a 4:3 smear; tens of milliseconds).
_RULER_FINE_PIXELS = 4 * 0.75 * _RULER_SIDE**2
#: With no red cells found in the coarse copy, the middle of the image is looked at this much finer.
_RULER_RETRY_ZOOM = 4.0


def _size_problem(image: np.ndarray) -> str | None:
    """Why `image` is too small to be a smear, or None; the CLI and the experiment's cache say it per file."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        return f"image too small ({w}x{h} pixels); a smear needs at least {MIN_IMAGE_SIDE} on a side"
    return None


class _Pyramid:
    """An image and its area-averaged halvings, each made once and shared by every reduced copy.

    The red-cell ruler and the working copy are both reduced from the same first halvings; sharing them
    saves full-resolution passes. A pyramid lives for one call: a :class:`Segmentation` does not keep it,
    so an overlay drawn later is reduced from the image as it is then (the caller may have changed it).
    """

    def __init__(self, image: np.ndarray) -> None:
        self._shape = image.shape[:2]
        self._levels: list[np.ndarray] = [image]
        self._float_levels: dict[int, np.ndarray] = {}

    def resize(self, factor: float) -> np.ndarray:
        """The image shrunk by `factor` (<= 1) with area averaging (no aliasing).

        Halving first takes OpenCV's fast integer path; the last, fractional step then works on a
        quarter of the pixels (3x faster for a 5-megapixel smear than one INTER_AREA step).
        """
        import cv2

        h, w = self._shape
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        k = 0
        while True:
            level = self._levels[k]
            if not (level.shape[1] >= 2 * size[0] and level.shape[0] >= 2 * size[1]):
                break
            k += 1
            if k == len(self._levels):
                half = (level.shape[1] // 2, level.shape[0] // 2)
                self._levels.append(cv2.resize(level, half, interpolation=cv2.INTER_AREA))
        level = self._levels[k]
        if (level.shape[1], level.shape[0]) == size:
            return level
        # OpenCV's fractional INTER_AREA is 2-3x faster on float32 than on uint8, and rounding its result
        # gives the uint8 answer exactly.
        if k not in self._float_levels:
            self._float_levels[k] = level.astype(np.float32)
        return cv2.convertScaleAbs(cv2.resize(self._float_levels[k], size, interpolation=cv2.INTER_AREA))


@dataclass(frozen=True, eq=False)
class Segmentation:
    """White cells found in one smear.

    The labels are made at the working resolution; the input-size label images :attr:`nuclei` and
    :attr:`cells` are built from them on first use (writing the outputs does not need them whole).

    Attributes
    ----------
    working_nuclei : (h, w) ndarray of int32
        Nucleus labels at the working resolution; 0 is background, the value is the cell id (1, 2, ...).
    working_cells : (h, w) ndarray of int32
        Whole-cell labels (nucleus + cytoplasm) at the working resolution, same ids.
    input_shape : (int, int)
        Height and width of the input image.
    um_per_px : float
        Micrometres per pixel of the input image.
    scale_source : str
        ``'red cells'``, ``'given'`` or ``'fallback'``.
    n_red_cells : int
        Red cells measured for the scale.
    working_um_per_px : float
        Resolution at which the segmentation (and every measurement) was made.
    thresholds : Mapping[str, float]
        The per-image stain thresholds (``stained``, ``nucleus``), in units of :func:`stain_excess`.
    measurements : Mapping[str, ndarray]
        One array per measurement, one row per cell in id order (see :func:`measure_cells`).
    settings : Mapping[str, Any]
        The keyword arguments of :func:`segment` that made it, defaults included (empty for one built
        by hand), so that its outputs say which outlines they hold.

    Notes
    -----
    The arrays are read-only views (copy one to edit it): the input-size labels are built from the
    working labels on first use, and the outputs are written from all of them, so an edit of one would
    silently disagree with the others.
    """

    working_nuclei: np.ndarray = field(repr=False)
    working_cells: np.ndarray = field(repr=False)
    input_shape: tuple[int, int]
    um_per_px: float
    scale_source: str
    n_red_cells: int
    working_um_per_px: float
    thresholds: Mapping[str, float]
    measurements: Mapping[str, np.ndarray] = field(repr=False)
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        freeze_fields(self, "working_nuclei", "working_cells", "measurements", "thresholds", "settings")

    @cached_property
    def nuclei(self) -> np.ndarray:
        """(H, W) ndarray of int32: nucleus labels at the input's size (nearest-neighbour upscaling)."""
        return read_only(self._upscaled(self.working_nuclei, np.int32))

    @cached_property
    def cells(self) -> np.ndarray:
        """(H, W) ndarray of int32: whole-cell labels at the input's size, same ids as :attr:`nuclei`."""
        return read_only(self._upscaled(self.working_cells, np.int32))

    @property
    def n_cells(self) -> int:
        """Number of white cells found."""
        return int(len(self.measurements.get("cell_id", ())))

    def rows(self) -> list[dict[str, float | int | bool]]:
        """Return the measurements as one dict per cell, in id order.

        Returns
        -------
        list of dict
            One dict per cell: measurement name (see :data:`~leukoseg.segmentation.MEASUREMENT_COLUMNS`) to
            Python number or bool.
        """
        names = list(self.measurements)
        columns = [self.measurements[k].tolist() for k in names]  # one conversion per column, to Python types
        return [dict(zip(names, values)) for values in zip(*columns)]

    @cached_property
    def _index_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Working-resolution row and column of every input row and column (nearest neighbour)."""
        (h, w), (H, W) = self.working_nuclei.shape, self.input_shape
        return _index_map(H, h), _index_map(W, w)

    def _upscaled(self, labels: np.ndarray, dtype: type) -> np.ndarray:
        if labels.shape == tuple(self.input_shape):
            return labels.astype(dtype)
        rows, cols = self._index_maps
        return labels.astype(dtype)[:, cols][rows]

    def _input_box(self, which: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``self.nuclei[y0:y1, x0:x1]`` (or ``cells``) without building the whole input-size image."""
        if which in self.__dict__:  # already built
            return self.__dict__[which][y0:y1, x0:x1]
        labels = self.working_nuclei if which == "nuclei" else self.working_cells
        rows, cols = self._index_maps
        rr, cc = rows[y0:y1], cols[x0:x1]
        if rr.size == 0 or cc.size == 0:
            return np.zeros((rr.size, cc.size), labels.dtype)
        # The maps are non-decreasing: repeat each source row and column as often as it is used.
        sub = labels[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
        return np.repeat(np.repeat(sub, np.bincount(rr - rr[0]), axis=0), np.bincount(cc - cc[0]), axis=1)


def segment(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    red_cell_diameter_um: float = 7.5,
    fallback_nucleus_diameter_um: float = 9.0,
    working_um_per_px: float = 0.35,
    median_um: float = 0.7,
    stain_sigmas: float = 6.0,
    min_stain_excess: float = 12.0,
    nucleus_excess_range: tuple[float, float] = (35.0, 70.0),
    min_nucleus_area_um2: float = 14.0,
    split_distance_um: float = 3.0,
    max_cytoplasm_um: float = 6.0,
    cytoplasm_open_um: float = 1.3,
    purple_nuclei: bool = True,
    stain_above_red_cells: bool = True,
) -> Segmentation:
    """Find and measure the white cells of a stained blood smear.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear (Romanowsky-type stain: May-Grünwald-Giemsa, Wright, Leishman). Not modified.
    pixel_size : float, optional
        Micrometres per pixel, when known; otherwise measured from the red cells.
    red_cell_diameter_um : float, optional
        Diameter of a normal red cell, the ruler.
    fallback_nucleus_diameter_um : float, optional
        When fewer than 8 round red cells are visible (e.g. a single-cell crop), the scale is set so that
        the median white-cell nucleus has this diameter; ``scale_source`` then says ``'fallback'``.
    working_um_per_px : float, optional
        Resolution of the segmentation; the input is never upsampled.
    median_um : float, optional
        Size of the median filter.
    stain_sigmas, min_stain_excess : float, optional
        A pixel is stained when its blue-green excess exceeds the background mode by this many robust
        standard deviations, and by at least ``min_stain_excess``.
    nucleus_excess_range : (float, float), optional
        Bounds for the per-image nucleus threshold (blue-green excess, background-normalised).
    min_nucleus_area_um2 : float, optional
        Smaller nuclei are platelets or debris and are dropped.
    split_distance_um : float, optional
        Touching nuclei whose centres are at least this far apart are split.
    max_cytoplasm_um : float, optional
        Cytoplasm is looked for at most this far from its nucleus.
    cytoplasm_open_um : float, optional
        Radius of the opening of the stained region around the nuclei: stained strips narrower than about
        twice this (the rim of a red cell that a white cell's edge runs along) are not cytoplasm. Nuclei are
        never cut; at most 10 um, and at least one working pixel (0.35 um). Earlier releases opened with 0.7
        um, which left those strips in; 0.7 gives their outlines.
    purple_nuclei : bool, optional
        A nucleus pixel must also absorb more green than red light (purple chromatin): deeply basophilic
        (deep blue) cytoplasm, as in L3 blasts, is stained past the nucleus threshold but absorbs more red,
        and stays cytoplasm instead of swelling the nucleus.
    stain_above_red_cells : bool, optional
        Keep the stain threshold at least ``min_stain_excess`` above the mode of the red cells, not only
        above the background's mode. Red cells are the pixels whose red exceeds both their green and their
        blue by ``min_stain_excess`` more than the glass's does (haemoglobin absorbs green and blue;
        pink-lilac cytoplasm is as blue as it is red), short of the nuclei, when they cover at least 1 % of
        the image. Where the glass is yellower than the red cells, a threshold measured from the glass alone
        falls among them, and those touching a white cell were taken into its cytoplasm. The threshold
        never rises above ``nucleus_excess_range[0] - min_stain_excess`` this way, and the nucleus
        threshold does not change. Cytoplasm less than ``min_stain_excess`` bluer than the red cells is
        left out with them (no threshold tells them apart). Earlier releases measured from the
        background's mode alone; False gives their outlines.

    Returns
    -------
    Segmentation
        The cell and nucleus labels (input-size label images in its ``cells`` and ``nuclei``), the pixel size
        and where it came from, the stain thresholds used, and the measurements of every cell.

    Raises
    ------
    ValueError
        If `image` is not an (H, W, 3) uint8 array, is smaller than 16 pixels on a side, or a parameter is
        out of range.

    Examples
    --------
    >>> from leukoseg.synthetic import touching_discs
    >>> image, truth = touching_discs()
    >>> segment(image, pixel_size=0.35).n_cells
    2
    """
    # The first statement on purpose: locals() holds the parameters only here.
    settings = {name: value for name, value in locals().items() if name != "image"}
    check_image(image)
    too_small = _size_problem(image)
    if too_small:
        raise ValueError(too_small)
    check_segment_settings(settings)
    height, width = image.shape[:2]
    background = background_level(image)
    pyramid = _Pyramid(image)

    # 1. Scale from the red cells, on a coarse copy (a few ms even for a 5-megapixel smear).
    coarse = min(1.0, _RULER_SIDE / max(height, width))
    small = pyramid.resize(coarse) if coarse < 1 else image
    scale: Scale | None
    if pixel_size is not None:
        scale = Scale(float(pixel_size), SCALE_GIVEN)
    else:
        scale = _red_cell_ruler(image, small, coarse, background=background, stain_cut=2 * min_stain_excess,
                                red_cell_diameter_um=red_cell_diameter_um)  # fmt: skip

    # 2. Working resolution. Without a scale yet, work at the coarse copy's resolution and rescale later.
    if scale is not None:
        factor = min(1.0, scale.um_per_px / working_um_per_px)
        work = pyramid.resize(factor) if factor < 1 else image
        um = scale.um_per_px / factor
    else:
        factor, work, um = coarse, small, None

    backgrounds = (background_level(image, channel=0), background) if purple_nuclei else None
    excess, blue, filtered = _median_excess(work, background, median_um / um if um else 1.0, backgrounds)
    t_stain, t_nucleus = _thresholds(excess, stain_sigmas, min_stain_excess, nucleus_excess_range,
                                     rgb=filtered if stain_above_red_cells else None,
                                     background=background)  # fmt: skip
    stained, nuclear = excess > t_stain, _nuclear(excess, blue, t_nucleus)

    if scale is None:
        # Fallback ruler: the median nucleus found at the coarse resolution.
        scale = _fallback_scale(nuclear, coarse, fallback_nucleus_diameter_um)
        factor = min(1.0, scale.um_per_px / working_um_per_px)
        if abs(factor - coarse) > 1e-9:
            work = pyramid.resize(factor) if factor < 1 else image
            excess, blue, _ = _median_excess(work, background, median_um * factor / scale.um_per_px, backgrounds)
            stained, nuclear = excess > t_stain, _nuclear(excess, blue, t_nucleus)
        um = scale.um_per_px / factor
        log.info("too few red cells for a ruler; fallback scale %.4f um/px from nucleus size", scale.um_per_px)

    assert um is not None  # set with the scale
    nuclei = _split_nuclei(nuclear, um, min_nucleus_area_um2, split_distance_um)
    cells = _grow_cells(nuclei, stained | (nuclei > 0), um, max_cytoplasm_um, cytoplasm_open_um)
    nuclei, cells = _relabel(nuclei, cells)

    del pyramid  # its halvings and float copies are not needed for measuring
    measurements = measure_cells(
        work, nuclei, cells, um_per_px=um, excess=excess, to_input=1.0 / factor, input_shape=(height, width)
    )
    log.debug(
        "%d cells; scale %.4f um/px (%s); thresholds %.1f / %.1f", len(measurements["cell_id"]),
        scale.um_per_px, scale.source, t_stain, t_nucleus,
    )
    return Segmentation(
        working_nuclei=nuclei,
        working_cells=cells,
        input_shape=(height, width),
        um_per_px=float(scale.um_per_px),
        scale_source=scale.source,
        n_red_cells=scale.n_red_cells,
        working_um_per_px=float(um),
        thresholds={"stained": float(t_stain), "nucleus": float(t_nucleus)},
        measurements=measurements,  # both made read-only by __post_init__
        settings=settings,
    )


def _median_excess(
    work: np.ndarray, background: float, median_px: float, backgrounds: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Blue-green excess of the median-filtered image; given the red and green background levels, its
    blue-dominant pixels: those that absorb more red than green light (optical densities); and the filtered
    image itself."""
    import cv2

    k = max(3, int(round(median_px)) | 1)
    k = min(k, 5 if min(work.shape[:2]) > 5 else 1) if k > 5 else k  # OpenCV's fast path is 3 and 5
    filtered = cv2.medianBlur(np.ascontiguousarray(work), k) if k > 1 and min(work.shape[:2]) >= k else work
    blue = None
    if backgrounds is not None:
        # -log(R / bg_r) > -log(G / bg_g)  <=>  R * bg_g < G * bg_r (no logarithm needed)
        bg_r, bg_g = backgrounds
        blue = filtered[..., 0].astype(np.float32) * np.float32(bg_g) < filtered[..., 1].astype(np.float32) * np.float32(bg_r)
    return stain_excess(filtered, background=background), blue, filtered


def _nuclear(excess: np.ndarray, blue: np.ndarray | None, t_nucleus: float) -> np.ndarray:
    """Nucleus pixels: above the nucleus threshold and, with the purple-chromatin rule, not blue-dominant."""
    nuclear = excess > t_nucleus
    return nuclear if blue is None else nuclear & ~blue


def _thresholds(
    excess: np.ndarray, sigmas: float, min_excess: float, nucleus_range: tuple[float, float], *,
    rgb: np.ndarray | None = None, background: float = 255.0,
) -> tuple[float, float]:
    """Per-image stain and nucleus thresholds on the blue-green excess; with `rgb` (the image `excess` was
    computed from, with `background`), the stain threshold is also kept `min_excess` above the red cells'
    mode."""
    sample = excess[::2, ::2].ravel()
    hist, edges = _excess_histogram(sample)
    centres = 0.5 * (edges[:-1] + edges[1:])
    # The background mode (glass and red cells) is looked for among unstained values only: where nuclei
    # cover most of the image (a tight crop around one cell), the tallest bin overall is theirs, and the
    # threshold would land above every nucleus. On ALL-IDB1 the overall mode is at most 1.5, so unchanged.
    low = centres < min_excess
    if not hist[low].any():
        # No unstained pixel at all: no background to measure stain against, so nothing is called stained.
        top = float(sample.max()) + 1.0
        return top, top
    k = int(np.argmax(np.where(low, hist, -1)))
    mode = centres[k]  # a float64 scalar: float64 arithmetic below
    below = sample[sample <= mode] - mode
    sigma = float(np.sqrt(np.mean(below**2))) if below.size > 10 else 1.0
    t_stain = mode + max(sigmas * sigma, min_excess)
    lo, hi = nucleus_range
    lo = max(lo, t_stain)
    # Otsu's split of the pixels above the glass's threshold, red cells' pixels included where they pass it:
    # the nuclei stay those of earlier releases whether or not the threshold is then raised.
    stained = sample[sample > t_stain]
    if stained.size > 50 and stained.max() > stained.min():
        t_nucleus = float(np.clip(threshold_otsu(stained), lo, max(hi, lo)))
    else:
        t_nucleus = lo
    if rgb is not None:
        glass = (sample >= edges[k]) & (sample <= edges[k + 1])  # the mode's own bin
        red_cells = _red_cell_mode(sample, rgb[::2, ::2].reshape(-1, 3), glass, min_excess, nucleus_range[0],
                                   background=background)  # fmt: skip
        if red_cells is not None:
            # Only ever raised, and never so far that no excess is left between cytoplasm and nuclei.
            t_stain = max(t_stain, min(red_cells + min_excess, nucleus_range[0] - min_excess))
    return float(t_stain), t_nucleus


def _red_cell_mode(
    excess: np.ndarray, rgb: np.ndarray, glass: np.ndarray, min_excess: float, below: float, *, background: float
) -> float | None:
    """Mode of the blue-green excess of the red cells, or None where they are too few to form one.

    Red cells are the pixels whose red exceeds both their green and their blue by `min_excess` more than the
    glass's (the `glass` pixels') do, in the units of the excess, and whose blue-green excess is below
    `below` (not nuclei). Haemoglobin absorbs green and blue; measured against the glass, a warm light or
    a yellowish slide does not make the glass count, and pink-lilac cytoplasm, as blue as it is red, does
    not either. Too few: under 1 % of the pixels (a wide field with a red cell or two keeps the glass's
    threshold).
    """
    if not glass.any():
        return None
    scale = np.float32(255.0 / background)  # the units of the excess
    r, g, b = (rgb[:, c].astype(np.float32) * scale for c in range(3))
    red_green, red_blue = r - g, r - b
    warm = ((red_green - np.median(red_green[glass]) > min_excess)
            & (red_blue - np.median(red_blue[glass]) > min_excess) & (excess < below))  # fmt: skip
    red = excess[warm]
    if red.size < max(50, 0.01 * excess.size):
        return None
    hist, edges = _excess_histogram(red)
    return float(0.5 * (edges[:-1] + edges[1:])[int(np.argmax(hist))])


def _excess_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of blue-green excess values, in the 3-unit bins whose modes the thresholds use.

    Clipped into the range: a near-black background (255 / background up to 255) can exceed any range.
    """
    return np.histogram(np.clip(values, -768.0, 768.0), bins=512, range=(-768.0, 768.0))


def _red_cell_ruler(
    image: np.ndarray, small: np.ndarray, coarse: float, *, background: float, stain_cut: float,
    red_cell_diameter_um: float,
) -> Scale | None:
    """The pixel size of `image` from its red cells, measured on `small` (`image` reduced by `coarse`).

    Where the red cells of `small` are too small to measure well, or none are found, they are measured
    again on a finer copy of the image, or of its middle where the whole would be too large, up to three
    times (a first finer look at an image whose red cells were too small to find may still see them small).
    A finer answer more than twice or less than half the one before is not taken: it comes from something
    other than red cells (fragments of very dark ones, debris), and the coarser answer is kept.
    """
    import cv2

    def measure(copy: np.ndarray, factor: float) -> Scale | None:
        stained = stain_excess(copy, background=background) > stain_cut
        found = estimate_scale(copy, stained=stained, red_cell_diameter_um=red_cell_diameter_um)
        return None if found is None else Scale(found.um_per_px * factor, found.source, found.n_red_cells)

    height, width = image.shape[:2]
    scale, factor = measure(small, coarse), coarse
    for _ in range(3):
        if factor >= 1.0:
            break
        if scale is None:
            fine = min(1.0, factor * _RULER_RETRY_ZOOM)
        else:
            red_cell_px = red_cell_diameter_um / scale.um_per_px * factor  # across, in the last copy
            if red_cell_px >= _RULER_MIN_RED_CELL_PX:
                break
            fine = min(1.0, factor * _RULER_RED_CELL_PX / red_cell_px)
        # The window has the image's shape, and as many pixels as the finer copy may have.
        shrink = min(1.0, math.sqrt(_RULER_FINE_PIXELS / fine**2 / (height * width)))
        win_h, win_w = max(1, round(height * shrink)), max(1, round(width * shrink))
        top, left = (height - win_h) // 2, (width - win_w) // 2
        window = image[top : top + win_h, left : left + win_w]
        if fine < 1.0:
            size = (max(1, round(win_w * fine)), max(1, round(win_h * fine)))
            window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
            fine = math.sqrt(size[0] / win_w * size[1] / win_h)  # the factor as rounded to whole pixels
        finer = measure(window, fine)
        if finer is None or (scale is not None and not 0.5 <= finer.um_per_px / scale.um_per_px <= 2.0):
            break
        scale, factor = finer, fine
    return scale


def _fallback_scale(nuclear: np.ndarray, coarse: float, nucleus_diameter_um: float) -> Scale:
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(nuclear.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(float)
    areas = areas[areas >= 0.1 * areas.max()] if areas.size else areas
    if areas.size == 0:
        # Nothing to measure at all: assume a typical 100x-objective camera image, only so that
        # empty images still produce (empty) outputs.
        return Scale(0.1, SCALE_FALLBACK, 0)
    d_px = np.sqrt(4 * np.median(areas) / np.pi) / coarse
    return Scale(float(nucleus_diameter_um / d_px), SCALE_FALLBACK, 0)


def _disk(radius_px: float) -> np.ndarray:
    import cv2

    r = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _split_nuclei(nuclear: np.ndarray, um: float, min_area_um2: float, split_um: float) -> np.ndarray:
    """Label nuclei, joining close lobes and splitting touching nuclei by a distance watershed."""
    import cv2

    from ._scale import _fill_holes

    mask: np.ndarray = nuclear.astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(0.5 / um))  # lobes and nucleolus gaps
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(0.5 / um))  # speckle and thin strands of debris
    min_area_px = min_area_um2 / um**2
    mask = _fill_holes(mask, max_area_px=min_area_px / 2)
    n, comp = cv2.connectedComponents(mask, connectivity=8)
    keep = np.bincount(comp.ravel(), minlength=n) >= min_area_px  # areas (cheaper than OpenCV's stats)
    keep[0] = False
    mask = keep[comp].astype(np.uint8)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    dist = cv2.GaussianBlur(dist, (0, 0), max(0.5, 0.5 / um))
    comp = np.where(mask > 0, comp, 0)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(split_um / 2 / um))), threshold_abs=1.0 / um,
                           labels=comp)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Components without a peak (thin, elongated) still become one nucleus.
    has_peak = np.zeros(n, bool)
    has_peak[comp[tuple(peaks.T)]] = True
    has_peak[0] = True
    kept_without_peak = keep & ~has_peak
    if kept_without_peak.any():
        extra = kept_without_peak[comp]
        markers[extra] = comp[extra] + len(peaks)
    labels = watershed(-dist, markers, mask > 0)
    return _merge_small(labels, min_area_px)


def _merge_small(labels: np.ndarray, min_area_px: float) -> np.ndarray:
    """Merge regions smaller than `min_area_px` into the neighbour they share the longest border with."""
    labels = labels.copy()
    for _ in range(3):
        areas = np.bincount(labels.ravel())
        small = [i for i in np.nonzero((areas > 0) & (areas < min_area_px))[0] if i != 0]
        if not small:
            break
        changed = False
        boxes = find_objects(labels)
        for lab in small:
            box = boxes[lab - 1] if lab - 1 < len(boxes) else None
            if box is None:
                continue
            r0, c0, r1, c1 = box[0].start, box[1].start, box[0].stop, box[1].stop
            r0, c0 = max(r0 - 1, 0), max(c0 - 1, 0)
            window = labels[r0 : r1 + 1, c0 : c1 + 1]
            region = window == lab
            ring = _dilate(region) & ~region
            neighbours = window[ring]
            neighbours = neighbours[(neighbours != 0) & (neighbours != lab)]
            if neighbours.size:
                window[region] = np.bincount(neighbours).argmax()
                changed = True
        if not changed:
            break
    return labels


def default_segment_settings() -> dict[str, Any]:
    """Every :func:`segment` setting but ``pixel_size`` (a fact about one image), at its default.

    Returns
    -------
    dict
        JSON-able: a model bundle records it, so that classifying segments as its training images were.

    Examples
    --------
    >>> default_segment_settings()["cytoplasm_open_um"]
    1.3
    """
    params = inspect.signature(segment).parameters
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in params.items()
        if p.default is not p.empty and name != "pixel_size"
    }


def recorded_segment_settings(recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :func:`segment` keywords that a run or model bundle recording `recorded` was made with.

    Parameters
    ----------
    recorded : mapping or None
        The settings as recorded (``settings.segment`` of a run's ``metrics.json``, ``config.segment`` of a
        bundle's ``bundle.json``); None or empty for one made before they were recorded.

    Returns
    -------
    dict
        `recorded`, plus the former value of each setting in :data:`UNRECORDED_SEGMENT_SETTINGS` that it
        lacks (those runs and bundles were made with it, not with today's default), with JSON's lists given
        back as tuples.

    Examples
    --------
    >>> recorded_segment_settings(None)
    {'cytoplasm_open_um': 0.7, 'stain_above_red_cells': False}
    >>> recorded_segment_settings({"cytoplasm_open_um": 1.3, "nucleus_excess_range": [35.0, 70.0]})
    {'cytoplasm_open_um': 1.3, 'stain_above_red_cells': False, 'nucleus_excess_range': (35.0, 70.0)}
    """
    settings = {**UNRECORDED_SEGMENT_SETTINGS, **dict(recorded or {})}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def check_segment_settings(settings: Mapping[str, Any]) -> None:
    """Refuse keyword arguments of :func:`segment` that it does not take or would refuse.

    Parameters
    ----------
    settings : mapping
        Keyword arguments of :func:`segment` (any subset; a model bundle records some).

    Raises
    ------
    ValueError
        Naming the first unknown or out-of-range setting.

    Examples
    --------
    >>> check_segment_settings({"cytoplasm_open_um": 0.7})
    >>> check_segment_settings({"opening": 0.7})
    Traceback (most recent call last):
    ...
    ValueError: segment() has no setting 'opening'
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"segmentation settings must be a mapping of segment() keywords, got {settings!r}")
    known = set(inspect.signature(segment).parameters) - {"image"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"segment() has no setting {unknown[0]!r}")
    for name, value in settings.items():
        if name == "pixel_size":
            if value is not None:
                check_positive(name, value)
        elif name == "min_stain_excess":
            check_positive(name, value, allow_zero=True)
            _check_at_most(name, value)
        elif name in ("purple_nuclei", "stain_above_red_cells"):
            check_bool(name, value)
        elif name == "nucleus_excess_range":
            if (
                not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2
                or not all(is_real(v) and np.isfinite(v) for v in value) or value[0] > value[1]
            ):  # fmt: skip
                raise ValueError(f"nucleus_excess_range must be two finite numbers (low, high), got {value!r}")
            if value[1] > SEGMENT_SETTING_MAX[name]:  # a threshold no stained pixel reaches: no cell, silently
                raise ValueError(f"nucleus_excess_range must end at most {SEGMENT_SETTING_MAX[name]:g}, got {value!r}")
        else:
            check_positive(name, value)
            _check_at_most(name, value)


_UNITS = (("_um_per_px", " um/px"), ("_um2", " um^2"), ("_um", " um"))  # by the setting's name


def _check_at_most(name: str, value: float) -> None:
    high = SEGMENT_SETTING_MAX[name]  # every numeric setting has a bound: a new one without fails every call
    if value > high:
        unit = next((u for suffix, u in _UNITS if name.endswith(suffix)), "")
        raise ValueError(f"{name} must be at most {high:g}{unit}, got {value!r}")


def _grow_cells(
    nuclei: np.ndarray, stained: np.ndarray, um: float, max_cytoplasm_um: float, open_um: float
) -> np.ndarray:
    """Cells: each nucleus plus the stained cytoplasm nearest to it, within `max_cytoplasm_um`; stained
    strips narrower than about ``2 * open_um`` (a neighbouring red cell's rim) are left out."""
    import cv2

    from ._scale import _fill_holes

    if not nuclei.any():
        return nuclei.copy()
    region: np.ndarray = cv2.morphologyEx(stained.astype(np.uint8), cv2.MORPH_CLOSE, _disk(0.5 / um))
    region = cv2.morphologyEx(region, cv2.MORPH_OPEN, _disk(open_um / um))
    region = _fill_holes(region, max_area_px=20 / um**2).astype(bool) | (nuclei > 0)
    dist_to_nucleus = cv2.distanceTransform((nuclei == 0).astype(np.uint8), cv2.DIST_L2, 5)
    region &= dist_to_nucleus <= max_cytoplasm_um / um
    return watershed(dist_to_nucleus, nuclei, region)


def _relabel(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive ids 1..n, in the order of the nuclei's current ids (the watershed markers' order, not
    raster order), the same in both label images."""
    ids = np.flatnonzero(np.bincount(nuclei.ravel()))  # the ids present, sorted (no sort needed)
    ids = ids[ids != 0]
    lut = np.zeros(int(max(nuclei.max(), cells.max())) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[nuclei], lut[cells]
