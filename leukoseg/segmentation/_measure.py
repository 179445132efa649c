"""Per-cell measurements in micrometres, made at the working resolution of the segmentation.

Working at one fixed micrometres-per-pixel for every image makes the measurements comparable across
cameras and magnifications: a cell measured on a 2592x1944 and on a 1712x1368 smear is the same number of
working pixels wide.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_image, check_labels, check_positive

__all__ = ["MEASUREMENT_COLUMNS", "measure_cells"]

#: Columns of the measurement table, in order (also the columns of ``cells.csv``).
MEASUREMENT_COLUMNS = (
    "cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
    "nucleus_area_um2", "cell_area_um2", "nucleus_diameter_um", "cell_diameter_um", "nc_ratio",
    "nucleus_solidity", "nucleus_circularity", "nucleus_irregularity", "nucleus_eccentricity",
    "nucleoli_count", "nucleoli_fraction",
    "cytoplasm_basophilia", "vacuole_count", "vacuole_fraction",
    "nucleus_stain", "nucleus_r", "nucleus_g", "nucleus_b", "nucleus_texture_std",
    "cytoplasm_r", "cytoplasm_g", "cytoplasm_b",
    "touches_border", "smudge",
)  # fmt: skip

_INT_COLUMNS = {"cell_id", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "nucleoli_count", "vacuole_count"}
_BOOL_COLUMNS = {"touches_border", "smudge"}


def measure_cells(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    *,
    um_per_px: float,
    excess: np.ndarray | None = None,
    to_input: float = 1.0,
    input_shape: tuple[int, int] | None = None,
    smudge_area_um2: float = 150.0,
    smudge_solidity: float = 0.8,
    vacuole_edge_um: float = 0.5,
) -> dict[str, np.ndarray]:
    """Measure every labelled cell.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB image the labels belong to.
    nuclei, cells : (H, W) ndarray of int
        Nucleus and whole-cell labels with the same ids, 0 background.
    um_per_px : float
        Pixel size of `image`.
    excess : (H, W) ndarray of float, optional
        Blue-green excess of `image` (:func:`stain_excess`), computed when omitted.
    to_input : float, optional
        Size of the input image over that of `image`, when `input_shape` is not given.
    input_shape : (int, int), optional
        Shape of the input image; defaults to the shape of `image` times `to_input`. Centroids and boxes are
        reported in input-image pixels, exactly as the labels upscaled to this shape by nearest neighbour
        (:attr:`Segmentation.nuclei <leukoseg.segmentation.Segmentation.nuclei>`, ``nuclei.png``) show them:
        a centroid is that of the upscaled nucleus, a box the bounding box of the upscaled cell.
    smudge_area_um2, smudge_solidity : float, optional
        A nucleus larger than ``smudge_area_um2`` and less solid than ``smudge_solidity`` is flagged as
        a smudge (ruptured) cell.
    vacuole_edge_um : float, optional
        Width of the cell's outer edge where pale spots are not counted as vacuoles: the edge of a cell
        mask mixes cytoplasm with the brighter background, and a vacuole is enclosed by cytoplasm. 0 counts
        spots up to the edge.

    Returns
    -------
    dict of str to ndarray
        The columns of :data:`MEASUREMENT_COLUMNS`, one row per cell id present, in id order.

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array, `nuclei`, `cells` or `excess` do not match its
        size, the labels are not non-negative integers, or a size is not positive.
    """
    from ._color import stain_excess
    from ._ndimage import find_objects

    check_image(image)
    check_labels(nuclei, image.shape[:2], name="nuclei")
    check_labels(cells, image.shape[:2], name="cells")
    check_positive("um_per_px", um_per_px)
    check_positive("to_input", to_input)
    if excess is None:
        excess = stain_excess(image)
    elif np.shape(excess) != image.shape[:2]:
        raise ValueError(f"excess has shape {np.shape(excess)} but the image is {image.shape[:2]}; they must match")
    h, w = nuclei.shape
    if input_shape is None:
        input_shape = (round(h * to_input), round(w * to_input))
    # Input rows and columns of every working row and column, as the upscaled labels repeat them.
    edges_y, edges_x = _input_edges(h, input_shape[0]), _input_edges(w, input_shape[1])
    area_px = um_per_px**2
    rows: list[dict[str, float]] = []
    cell_boxes = find_objects(cells)
    for index, nbox in enumerate(find_objects(nuclei)):
        if nbox is None:
            continue
        lab = index + 1
        cbox = (cell_boxes[index] if index < len(cell_boxes) else None) or nbox
        r0, r1 = min(cbox[0].start, nbox[0].start), max(cbox[0].stop, nbox[0].stop)
        c0, c1 = min(cbox[1].start, nbox[1].start), max(cbox[1].stop, nbox[1].stop)
        nmask = nuclei[r0:r1, c0:c1] == lab
        cmask = (cells[r0:r1, c0:c1] == lab) | nmask
        cyto = cmask & ~_dilate(nmask)
        win_rgb = image[r0:r1, c0:c1].astype(np.float32)
        # The channel mean of the cell's window only, summed in mean()'s order (the same float32 result).
        win_gray = (win_rgb[..., 0] + win_rgb[..., 1] + win_rgb[..., 2]) / np.float32(3)
        win_exc = excess[r0:r1, c0:c1]
        n_area = float(nmask.sum())
        c_area = float(cmask.sum())
        shape = _shape(nmask)
        ys, xs = np.nonzero(nmask)
        cx, cy = _input_centroid(xs + c0, ys + r0, edges_x, edges_y)
        nucleoli_n, nucleoli_px = _spots(win_gray, _erode(nmask), um_per_px, (0.25, 6.0))
        # The outer ~0.5 um of a cell mask mixes cytoplasm with the brighter slide background: a pale spot
        # there is background seen through the edge, not a vacuole (a vacuole is enclosed by cytoplasm).
        edge = None
        if vacuole_edge_um > 0:
            edge = cmask & ~_erode(cmask, iterations=max(1, round(vacuole_edge_um / um_per_px)))
        vac_n, vac_px = _spots(win_gray, cyto, um_per_px, (0.2, 8.0), exclude=edge)
        has_cyto = bool(cyto.any())
        nuc_rgb = win_rgb[nmask].mean(axis=0)
        cyto_rgb = win_rgb[cyto].mean(axis=0) if has_cyto else nuc_rgb
        rows.append(
            {
                "cell_id": lab,
                "x": cx,
                "y": cy,
                "bbox_x0": int(edges_x[c0]),
                "bbox_y0": int(edges_y[r0]),
                "bbox_x1": int(edges_x[c1]),
                "bbox_y1": int(edges_y[r1]),
                "nucleus_area_um2": n_area * area_px,
                "cell_area_um2": c_area * area_px,
                "nucleus_diameter_um": float(np.sqrt(4 * n_area / np.pi)) * um_per_px,
                "cell_diameter_um": float(np.sqrt(4 * c_area / np.pi)) * um_per_px,
                "nc_ratio": n_area / max(c_area, 1.0),
                "nucleus_solidity": shape["solidity"],
                "nucleus_circularity": shape["circularity"],
                "nucleus_irregularity": shape["irregularity"],
                "nucleus_eccentricity": shape["eccentricity"],
                "nucleoli_count": nucleoli_n,
                "nucleoli_fraction": nucleoli_px / max(n_area, 1.0),
                # Basophilia: mean blue-green excess of the cytoplasm (deep blue cytoplasm scores high).
                "cytoplasm_basophilia": float(win_exc[cyto].mean()) if has_cyto else 0.0,
                "vacuole_count": vac_n,
                "vacuole_fraction": vac_px / max(float(cyto.sum()), 1.0),
                "nucleus_stain": float(win_exc[nmask].mean()),
                "nucleus_r": float(nuc_rgb[0]),
                "nucleus_g": float(nuc_rgb[1]),
                "nucleus_b": float(nuc_rgb[2]),
                "nucleus_texture_std": float(win_gray[nmask].std()),
                "cytoplasm_r": float(cyto_rgb[0]),
                "cytoplasm_g": float(cyto_rgb[1]),
                "cytoplasm_b": float(cyto_rgb[2]),
                "touches_border": bool(r0 == 0 or c0 == 0 or r1 == h or c1 == w),
                "smudge": bool(n_area * area_px > smudge_area_um2 and shape["solidity"] < smudge_solidity),
            }
        )
    return _columns(rows)


def _index_map(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of `n_out` samples over `n_in`: the source pixel holding the sample's centre.

    Pixel ``i`` of `n_out` spans ``[i, i + 1)``; its centre ``i + 0.5`` falls in source pixel
    ``floor((i + 0.5) * n_in / n_out)``, computed in integers (exact). This is the geometry of the area
    reduction that made the working copy (working pixel ``j`` averages input ``[j s, (j + 1) s)``); taking
    the sample's left edge instead would shift every upscaled label by half an input pixel on average.
    A centre exactly on the edge between two source pixels (ratios such as 2.5, where it happens every
    5th sample) goes to the right one for even ``i`` and to the left one for odd ``i``: successive ties
    alternate, as taking always the right one would shift the labels by a quarter of a pixel.
    """
    i = np.arange(n_out, dtype=np.int64)
    j, rest = np.divmod((2 * i + 1) * n_in, 2 * n_out)
    j -= (rest == 0) & (i % 2 == 1)  # a tie (j >= 1 there) at odd i goes left
    return j.astype(np.intp)


def _input_edges(n: int, n_input: int) -> np.ndarray:
    """First input row (or column) of each of `n` working rows, then `n_input`: shape (n + 1,).

    The labels are upscaled by nearest neighbour along :func:`_index_map` (``Segmentation._upscaled``),
    which never decreases, so working index ``j`` starts at the first input index that the map sends to
    ``j`` or beyond.
    """
    return np.searchsorted(_index_map(n_input, n), np.arange(n + 1))


def _input_centroid(
    cols: np.ndarray, rows: np.ndarray, edges_x: np.ndarray, edges_y: np.ndarray
) -> tuple[float, float]:
    """Centroid (x, y), in input pixels, of the upscaled image of the working pixels (rows, cols).

    Each working pixel stands for a block of input pixels; the centroid is the mean of the block centres
    weighted by the block sizes, exactly that of the upscaled mask.
    """
    width_x, width_y = edges_x[cols + 1] - edges_x[cols], edges_y[rows + 1] - edges_y[rows]
    weight = (width_x * width_y).astype(np.float64)
    total = weight.sum()
    mid_x = (edges_x[cols] + edges_x[cols + 1] - 1) / 2.0
    mid_y = (edges_y[rows] + edges_y[rows + 1] - 1) / 2.0
    if total == 0:  # an input smaller than the labels: no block holds a pixel of the mask
        return float(mid_x.mean()), float(mid_y.mean())
    return float((weight * mid_x).sum() / total), float((weight * mid_y).sum() / total)


def _shape(mask: np.ndarray) -> dict[str, float]:
    """Solidity, circularity, contour irregularity and eccentricity of one region, from its outer contour.

    Circularity is ``4 pi area / perimeter**2`` (1 for a disc); irregularity is how much longer the contour
    is than its convex hull (0 for a convex outline; a notched or cleft nucleus scores higher).
    """
    import cv2

    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # np.pad is slow
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(mask.sum())
    perimeter = cv2.arcLength(contour, True)
    hull = cv2.convexHull(contour)
    hull_area = cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) + 1.0  # pixel-area convention
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if m["m00"] > 0:
        mu20, mu02, mu11 = m["mu20"] / m["m00"], m["mu02"] / m["m00"], m["mu11"] / m["m00"]
        root = np.sqrt(4 * mu11**2 + (mu20 - mu02) ** 2)
        l1, l2 = (mu20 + mu02 + root) / 2, (mu20 + mu02 - root) / 2
        eccentricity = float(np.sqrt(1 - l2 / l1)) if l1 > 0 else 0.0
    else:
        eccentricity = 0.0
    hull_perimeter = cv2.arcLength(hull, True)
    return {
        "solidity": float(min(1.0, area / hull_area)),
        "circularity": float(min(1.0, 4 * np.pi * area / max(perimeter, 1e-9) ** 2)),
        "irregularity": float(max(0.0, perimeter / max(hull_perimeter, 1e-9) - 1.0)),
        "eccentricity": eccentricity,
    }


def _columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    out = {}
    for name in MEASUREMENT_COLUMNS:
        dtype = np.int64 if name in _INT_COLUMNS else bool if name in _BOOL_COLUMNS else np.float64
        out[name] = np.array([r[name] for r in rows], dtype=dtype)
    return out


def _erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    import cv2

    # Outside the window counts as background, so a region touching the window's edge is eroded there too.
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=iterations,
                     borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)  # fmt: skip


def _dilate(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _spots(
    gray: np.ndarray,
    mask: np.ndarray,
    um_per_px: float,
    area_um2: tuple[float, float],
    exclude: np.ndarray | None = None,
) -> tuple[int, float]:
    """Pale spots (nucleoli in a nucleus, vacuoles in cytoplasm): count and total area in pixels.

    A spot is a connected set of pixels of `mask` brighter than the region's median by 2.5 robust standard
    deviations (and by at least 8 grey levels), with an area within `area_um2`. Pixels of `exclude` are
    left out of the median and deviation, and a spot touching one of them does not count.
    """
    import cv2

    inner = mask & ~exclude if exclude is not None else mask
    values = gray[inner]
    if values.size < 10:
        return 0, 0.0
    med = float(np.median(values))
    sd = 1.4826 * float(np.median(np.abs(values - med)))
    bright = (gray > med + max(2.5 * sd, 8.0)) & mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] * um_per_px**2
    ok = (areas >= area_um2[0]) & (areas <= area_um2[1])
    if exclude is not None and n > 1:
        ok &= np.bincount(labels[exclude & bright], minlength=n)[1:] == 0
    return int(ok.sum()), float(stats[1:, cv2.CC_STAT_AREA][ok].sum())
