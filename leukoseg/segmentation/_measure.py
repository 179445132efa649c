"""Per-cell measurements in micrometres, made at the working resolution of the segmentation.

Working at one fixed micrometres-per-pixel for every image makes the measurements comparable across
cameras and magnifications: a cell measured on a 2592x1944 and on a 1712x1368 smear is the same number of
working pixels wide.
"""

from __future__ import annotations

import numpy as np

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
        Factor from these pixel coordinates to the input image's (centroids and boxes are reported in
        input-image pixels).
    input_shape : (int, int), optional
        Shape of the input image, for box clipping; defaults to the scaled shape of `image`.
    smudge_area_um2, smudge_solidity : float, optional
        A nucleus larger than ``smudge_area_um2`` and less solid than ``smudge_solidity`` is flagged as
        a smudge (ruptured) cell.

    Returns
    -------
    dict of str to ndarray
        The columns of :data:`MEASUREMENT_COLUMNS`, one row per cell id present, in id order.
    """
    from skimage.measure import regionprops

    from ._color import stain_excess

    if excess is None:
        excess = stain_excess(image)
    h, w = nuclei.shape
    if input_shape is None:
        input_shape = (round(h * to_input), round(w * to_input))
    gray = image.astype(np.float32).mean(axis=2)
    area_px = um_per_px**2
    rows: list[dict[str, float]] = []
    cell_props = {p.label: p for p in regionprops(cells)}
    for nuc in regionprops(nuclei):
        lab = nuc.label
        cell = cell_props.get(lab)
        r0, c0, r1, c1 = cell.bbox if cell is not None else nuc.bbox
        nmask = nuclei[r0:r1, c0:c1] == lab
        cmask = (cells[r0:r1, c0:c1] == lab) | nmask
        cyto = cmask & ~_dilate(nmask)
        win_rgb = image[r0:r1, c0:c1].astype(np.float32)
        win_gray = gray[r0:r1, c0:c1]
        win_exc = excess[r0:r1, c0:c1]
        n_area = float(nmask.sum())
        c_area = float(cmask.sum())
        perim = max(float(nuc.perimeter), 1e-9)
        hull_perim = _convex_perimeter(nuc)
        cy, cx = nuc.centroid
        nucleoli_n, nucleoli_px = _spots(win_gray, _erode(nmask), um_per_px, (0.25, 6.0))
        vac_n, vac_px = _spots(win_gray, cyto, um_per_px, (0.2, 8.0))
        cyto_rgb = win_rgb[cyto].mean(axis=0) if cyto.any() else np.full(3, np.nan)
        nuc_rgb = win_rgb[nmask].mean(axis=0)
        solidity = float(nuc.solidity)
        rows.append(
            {
                "cell_id": lab,
                "x": (cx + 0.5) * to_input - 0.5,
                "y": (cy + 0.5) * to_input - 0.5,
                "bbox_x0": int(np.floor(c0 * to_input)),
                "bbox_y0": int(np.floor(r0 * to_input)),
                "bbox_x1": min(int(np.ceil(c1 * to_input)), input_shape[1]),
                "bbox_y1": min(int(np.ceil(r1 * to_input)), input_shape[0]),
                "nucleus_area_um2": n_area * area_px,
                "cell_area_um2": c_area * area_px,
                "nucleus_diameter_um": float(np.sqrt(4 * n_area / np.pi)) * um_per_px,
                "cell_diameter_um": float(np.sqrt(4 * c_area / np.pi)) * um_per_px,
                "nc_ratio": n_area / max(c_area, 1.0),
                "nucleus_solidity": solidity,
                "nucleus_circularity": float(min(1.0, 4 * np.pi * n_area / perim**2)),
                "nucleus_irregularity": float(max(0.0, perim / max(hull_perim, 1e-9) - 1.0)),
                "nucleus_eccentricity": float(nuc.eccentricity),
                "nucleoli_count": nucleoli_n,
                "nucleoli_fraction": nucleoli_px / max(n_area, 1.0),
                # Basophilia: blue-green excess of the cytoplasm relative to that of the nucleus.
                "cytoplasm_basophilia": float(win_exc[cyto].mean()) if cyto.any() else 0.0,
                "vacuole_count": vac_n,
                "vacuole_fraction": vac_px / max(float(cyto.sum()), 1.0),
                "nucleus_stain": float(win_exc[nmask].mean()),
                "nucleus_r": float(nuc_rgb[0]),
                "nucleus_g": float(nuc_rgb[1]),
                "nucleus_b": float(nuc_rgb[2]),
                "nucleus_texture_std": float(win_gray[nmask].std()),
                "cytoplasm_r": float(cyto_rgb[0]) if cyto.any() else float(nuc_rgb[0]),
                "cytoplasm_g": float(cyto_rgb[1]) if cyto.any() else float(nuc_rgb[1]),
                "cytoplasm_b": float(cyto_rgb[2]) if cyto.any() else float(nuc_rgb[2]),
                "touches_border": bool(r0 == 0 or c0 == 0 or r1 == h or c1 == w),
                "smudge": bool(n_area * area_px > smudge_area_um2 and solidity < smudge_solidity),
            }
        )
    return _columns(rows)


def _columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    out = {}
    for name in MEASUREMENT_COLUMNS:
        dtype = np.int64 if name in _INT_COLUMNS else bool if name in _BOOL_COLUMNS else np.float64
        out[name] = np.array([r[name] for r in rows], dtype=dtype)
    return out


def _convex_perimeter(region) -> float:
    from skimage.measure import perimeter

    return float(perimeter(np.pad(region.image_convex, 1)))


def _erode(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _spots(gray: np.ndarray, mask: np.ndarray, um_per_px: float, area_um2: tuple[float, float]) -> tuple[int, float]:
    """Pale spots (nucleoli in a nucleus, vacuoles in cytoplasm): count and total area in pixels.

    A spot is a connected set of pixels brighter than the region's median by 2.5 robust standard deviations
    (and by at least 8 grey levels), with an area within `area_um2`.
    """
    import cv2

    values = gray[mask]
    if values.size < 10:
        return 0, 0.0
    med = float(np.median(values))
    sd = 1.4826 * float(np.median(np.abs(values - med)))
    bright = (gray > med + max(2.5 * sd, 8.0)) & mask
    n, _, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] * um_per_px**2
    ok = (areas >= area_um2[0]) & (areas <= area_um2[1])
    return int(ok.sum()), float(stats[1:, cv2.CC_STAT_AREA][ok].sum())
