"""The micrometre ruler: red cells.

Normal red cells are close to 7.5 um across in any smear, whatever the microscope and camera, so the
median red-cell diameter in pixels gives the pixel size of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_image, check_mask, check_positive, check_positive_int

__all__ = ["SCALE_FALLBACK", "SCALE_GIVEN", "SCALE_RED_CELLS", "Scale", "estimate_scale"]

#: :attr:`Scale.source` of a pixel size measured on the red cells.
SCALE_RED_CELLS = "red cells"
#: :attr:`Scale.source` of a pixel size given by the user.
SCALE_GIVEN = "given"
#: :attr:`Scale.source` of a guess: too few red cells, the median white-cell nucleus taken as a known size.
SCALE_FALLBACK = "fallback"

#: Green levels below this fraction of the background's (the 95th percentile of the unstained pixels) are
#: not smear but black: borders, vignettes, masks. They take no part in finding the red cells.
_LIT_FRACTION = 0.25


@dataclass(frozen=True)
class Scale:
    """Pixel size of an image and where it came from.

    Attributes
    ----------
    um_per_px : float
        Micrometres per pixel of the image it was estimated on.
    source : str
        ``'red cells'`` (measured), ``'given'`` (by the user) or ``'fallback'`` (too few red cells were
        seen; the value is then a guess from the white-cell nuclei, or the default).
    n_red_cells : int
        Isolated, round red cells that were measured.
    """

    um_per_px: float
    source: str
    n_red_cells: int = 0


def estimate_scale(
    image: np.ndarray,
    *,
    stained: np.ndarray | None = None,
    red_cell_diameter_um: float = 7.5,
    min_red_cells: int = 8,
) -> Scale | None:
    """Measure the pixel size of a smear from its red cells.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear, at any resolution (a reduced copy is fine: the answer is for the array given).
    stained : (H, W) ndarray of bool, optional
        Pixels of white cells, excluded from the red-cell search.
    red_cell_diameter_um : float, optional
        Diameter of a normal red cell.
    min_red_cells : int, optional
        Fewer isolated round red cells than this and no scale is returned.

    Returns
    -------
    Scale or None
        None when too few red cells are visible (a single-cell crop, a thick area).

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array, `stained` not a boolean mask of its size, or a
        setting is out of range.

    Notes
    -----
    The green channel, blurred a little, is thresholded by Otsu's method over the pixels that are neither
    `stained` nor black: pixels darker than a quarter of the background's green (the 95th percentile of the
    others) are a black border, a field stop's vignette or a mask, not smear, and take no part; a white-cell
    nucleus that dark, if not in `stained`, is left out with them. Round, isolated, filled components away
    from the image's edge are red cells; the answer is `red_cell_diameter_um` over their median diameter.
    """
    import cv2

    from ._ndimage import threshold_otsu

    check_image(image)
    if stained is not None:
        check_mask(stained, image.shape[:2], name="stained")
    check_positive("red_cell_diameter_um", red_cell_diameter_um)
    check_positive_int("min_red_cells", min_red_cells)
    green = cv2.GaussianBlur(image[..., 1], (0, 0), 1.0)
    candidates = green if stained is None else green[~stained]
    if candidates.size == 0:
        return None
    # Only light that came through the smear counts: a black border, a field stop's vignette or a masked
    # corner would form a class of its own and take Otsu's split from the red cells (a 20-pixel black
    # border on a smear lost all of its 152 red cells). A red cell passes far more than this of the light
    # that the background passes.
    lit_from = _LIT_FRACTION * float(np.percentile(candidates, 95))
    candidates = candidates[candidates >= lit_from]
    if candidates.size == 0 or candidates.max() == candidates.min():
        return None
    # Red cells absorb green light (haemoglobin): darker than the background in the green channel. The
    # threshold ignores white cells, which are darker still and would otherwise take Otsu's split.
    foreground: np.ndarray = ((green < threshold_otsu(candidates)) & (green >= lit_from)).astype(np.uint8)
    if stained is not None:
        foreground[cv2.dilate(stained.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] = 0
    foreground = _fill_holes(foreground)  # central pallor
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    h, w = foreground.shape
    x, y, bw, bh, area = (stats[1:, i].astype(float) for i in range(5))
    inside = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (area >= 20)
    # Isolated discs only: a disc fills pi/4 of its square box; clumps and overlaps are elongated or
    # fill their box differently.
    extent = area / np.maximum(bw * bh, 1)
    aspect = np.minimum(bw, bh) / np.maximum(np.maximum(bw, bh), 1)
    round_ = inside & (aspect > 0.85) & (extent > 0.70) & (extent < 0.86)
    diameters = np.sqrt(4 * area[round_] / np.pi)
    if len(diameters) < min_red_cells:
        return None
    d = np.asarray(diameters)
    med = np.median(d)
    d = d[(d > 0.6 * med) & (d < 1.5 * med)]  # drop platelets clumps and giant overlaps
    if len(d) < min_red_cells:
        return None
    return Scale(float(red_cell_diameter_um / np.median(d)), SCALE_RED_CELLS, int(len(d)))


def _fill_holes(mask: np.ndarray, max_area_px: float | None = None) -> np.ndarray:
    """Fill holes of a uint8 mask (what a flood fill from the border does not reach).

    With `max_area_px`, only holes up to that area are filled: a nucleolus is a hole to fill, the gap
    between four touching nuclei is not.
    """
    import cv2

    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 1)
    holes: np.ndarray = (1 - flood)[1:-1, 1:-1]
    if max_area_px is not None and holes.any():
        # Areas by counting labels: OpenCV's per-component statistics cost twice the labelling itself.
        n, lab = cv2.connectedComponents(holes, connectivity=4)
        small = (np.bincount(lab.ravel(), minlength=n) <= max_area_px).astype(np.uint8)
        small[0] = 0
        holes = small[lab]
    return mask.astype(np.uint8) | holes
