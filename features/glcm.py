"""Grey-level co-occurrence (GLCM) texture of one image region, in physical units.

Texture is measured on a region given by a boolean mask (a nucleus, a cytoplasm), never on its bounding
box: only pixel pairs whose *both* pixels lie inside the mask are counted. Distances are given in
micrometres and converted to pixels with the image's pixel size, so that images taken at different
magnifications give comparable features.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from leukoseg._checks import check_image, check_mask

__all__ = ["GLCM_PROPERTIES", "cell_texture_features", "glcm_features", "texture_feature_names"]

#: Texture properties, in the order in which they appear in the feature names.
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "asm", "energy", "correlation", "entropy")

# Property name in the features -> name understood by skimage.feature.graycoprops.
_GRAYCOPROPS = {
    "contrast": "contrast",
    "dissimilarity": "dissimilarity",
    "homogeneity": "homogeneity",
    "asm": "ASM",
    "energy": "energy",
    "correlation": "correlation",
}

_DEFAULT_DISTANCES_UM = (0.5, 1.0, 2.0)
_DEFAULT_ANGLES_DEG = (0, 45, 90, 135)


def texture_feature_names(
    *,
    distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
    levels: int = 32,
    angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
    prefix: str = "",
) -> list[str]:
    """Return the names of the features that :func:`glcm_features` returns, in order.

    Parameters
    ----------
    distances_um : sequence of float, optional
        Pixel-pair distances, in micrometres, as in :func:`glcm_features`; one name per property and
        distance.
    levels : int, optional
        Number of grey levels, as in :func:`glcm_features`; checked, but does not change the names.
    angles_deg : sequence of float, optional
        Pair directions, in degrees, as in :func:`glcm_features`; checked, but does not change the names.
    prefix : str, optional
        Put before every name, e.g. ``"nuc_"``.

    Returns
    -------
    list of str
        ``f"{prefix}glcm_{property}_d{distance}um"`` for every property of :data:`GLCM_PROPERTIES` (outer
        loop) and every distance (inner loop), e.g. ``"glcm_contrast_d1.0um"``.

    Raises
    ------
    ValueError
        If a setting is invalid, or two distances give the same name.

    Examples
    --------
    >>> texture_feature_names(distances_um=(1.0,))[:3]
    ['glcm_contrast_d1.0um', 'glcm_dissimilarity_d1.0um', 'glcm_homogeneity_d1.0um']
    """
    distances, _, _ = _check_settings(distances_um, levels, angles_deg)
    labels = [_format_um(d) for d in distances]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"distances_um={tuple(distances_um)!r} contains distances that give the same feature name; "
            "pass distinct distances (names use 4 significant digits)"
        )
    return [f"{prefix}glcm_{prop}_d{label}um" for prop in GLCM_PROPERTIES for label in labels]


def glcm_features(
    gray: np.ndarray,
    mask: np.ndarray,
    *,
    um_per_px: float,
    distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
    levels: int = 32,
    angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
) -> dict[str, float]:
    """Haralick texture of the pixels of `gray` inside `mask`.

    Parameters
    ----------
    gray : (H, W) ndarray of uint8
        Grey-value image (a crop around the region).
    mask : (H, W) ndarray of bool
        The region. Only pixel pairs with both pixels inside it are counted.
    um_per_px : float
        Pixel size of `gray`, in micrometres.
    distances_um : sequence of float, optional
        Pixel-pair distances, in micrometres. Each is converted to ``max(1, round(d / um_per_px))``
        pixels (halves round up).
    levels : int, optional
        Number of grey levels, 2 to 256. Quantisation uses fixed bins over the full 0-255 range,
        ``q = gray * levels // 256``, not the range of the region, so that a feature means the same in
        every image (a pale and a dark nucleus differ).
    angles_deg : sequence of float, optional
        Pair directions, in degrees (0 = to the right, 90 = up, as in
        :func:`skimage.feature.graycomatrix`). The co-occurrence *counts* of all angles are pooled into one
        matrix per distance before normalising (equivalently, the matrices are averaged with weights
        proportional to their pair counts), which is rotation invariant when the angles cover
        0-135 degrees.

    Returns
    -------
    dict of str to float
        For every property and distance (names as in :func:`texture_feature_names`): ``contrast``,
        ``dissimilarity``, ``homogeneity``, ``asm``, ``energy`` and ``correlation`` from
        :func:`skimage.feature.graycoprops` (correlation is 1 for a region of a single grey level, as
        there), and ``entropy`` ``= -sum(p * ln p)`` of the normalised matrix (natural logarithm).

        A region with no pixel pair at a distance (empty, or too thin) gets 0 for every property at that
        distance: defined, finite values, and no warning.

    Raises
    ------
    ValueError
        If `gray` is not a 2-D uint8 array, `mask` not a boolean array of the same shape, or a setting
        is out of range.

    Notes
    -----
    The co-occurrence matrix of a masked region is computed in one call to
    :func:`skimage.feature.graycomatrix`: quantised values are shifted to ``1..levels``, pixels outside the
    mask are set to 0, the matrix is computed with ``levels + 1`` levels (symmetric), and row and column 0
    (every pair touching the outside) are dropped before normalising. Inputs are not modified.

    Physical distances make contrast, dissimilarity, homogeneity and correlation comparable across pixel
    sizes. Two limits remain: at 45 and 135 degrees the pixel offset is rounded per axis (as in
    ``graycomatrix``), so its length matches the distance only roughly when the distance is a few pixels;
    and ASM, energy and entropy also depend on the number of pixel pairs in the region, so they shift with
    the pixel size even for the same tissue.

    Examples
    --------
    Two grey levels in vertical stripes two pixels wide; horizontal pairs at one pixel:

    >>> import numpy as np
    >>> gray = np.array([[0, 0, 255, 255]] * 4, dtype=np.uint8)
    >>> mask = np.ones(gray.shape, dtype=bool)
    >>> f = glcm_features(gray, mask, um_per_px=1.0, distances_um=(1.0,), levels=2, angles_deg=(0,))
    >>> round(f["glcm_contrast_d1.0um"], 6), round(f["glcm_homogeneity_d1.0um"], 6)
    (0.333333, 0.833333)
    """
    from skimage.feature import graycomatrix, graycoprops

    _check_gray_and_mask(gray, mask, name="gray")
    um_per_px = _check_um_per_px(um_per_px)
    names = texture_feature_names(distances_um=distances_um, levels=levels, angles_deg=angles_deg)
    distances, levels, angles = _check_settings(distances_um, levels, angles_deg)
    distances_px = np.array([max(1, math.floor(d / um_per_px + 0.5)) for d in distances], dtype=np.intp)
    unique_px, which = np.unique(distances_px, return_inverse=True)

    values = np.zeros((len(GLCM_PROPERTIES), len(unique_px)), dtype=np.float64)
    rows, cols = np.nonzero(mask)
    if rows.size >= 2:
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = mask[r0:r1, c0:c1]
        dtype = np.uint8 if levels < 255 else np.uint16
        # Fixed bins over 0-255, shifted by one so that 0 marks "outside the mask".
        shifted = ((gray[r0:r1, c0:c1].astype(np.uint16) * levels) >> 8).astype(dtype) + 1
        shifted[~box] = 0
        counts = graycomatrix(shifted, unique_px, np.deg2rad(angles), levels=levels + 1, symmetric=True)
        pooled = counts[1:, 1:].sum(axis=3, keepdims=True, dtype=np.float64)  # (L, L, n_distances, 1)
        totals = pooled.sum(axis=(0, 1))[:, 0]
        has_pairs = totals > 0
        if has_pairs.any():
            pooled = pooled[:, :, has_pairs]
            for i, prop in enumerate(GLCM_PROPERTIES[:-1]):
                values[i, has_pairs] = graycoprops(pooled, _GRAYCOPROPS[prop])[:, 0]
            p = pooled[:, :, :, 0] / totals[has_pairs]
            logp = np.log(p, where=p > 0, out=np.zeros_like(p))
            values[-1, has_pairs] = -(p * logp).sum(axis=(0, 1))
    flat = values[:, which].ravel()  # property-major, distance-minor, as in texture_feature_names
    return {name: float(v) for name, v in zip(names, flat, strict=True)}


def cell_texture_features(
    image: np.ndarray,
    nucleus_mask: np.ndarray,
    cell_mask: np.ndarray,
    *,
    um_per_px: float,
    **glcm_kw: Any,
) -> dict[str, float]:
    """GLCM texture of the nucleus and of the cytoplasm of one cell.

    Texture is measured on the green channel. In Romanowsky-type stains (May-Gruenwald-Giemsa, Wright)
    the violet chromatin and the blue cytoplasm absorb most strongly in green, so the green channel has
    the highest nucleus/cytoplasm/background contrast of the three channels and shows chromatin
    structure best; unlike the luminance, it is not diluted by the weakly absorbing red channel.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB crop around the cell.
    nucleus_mask : (H, W) ndarray of bool
        The nucleus.
    cell_mask : (H, W) ndarray of bool
        The whole cell; the cytoplasm is ``cell_mask & ~nucleus_mask``.
    um_per_px : float
        Pixel size of `image`, in micrometres.
    **glcm_kw
        `distances_um`, `levels`, `angles_deg` of :func:`glcm_features`.

    Returns
    -------
    dict of str to float
        The features of :func:`glcm_features` with prefix ``nuc_`` (nucleus), then with prefix ``cyto_``
        (cytoplasm).

    Raises
    ------
    ValueError
        If `image` is not an (H, W, 3) uint8 array, a mask not a boolean (H, W) array, or a setting is
        out of range.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((9, 9, 3), 200, dtype=np.uint8)
    >>> cell = np.zeros((9, 9), dtype=bool); cell[1:8, 1:8] = True
    >>> nucleus = np.zeros((9, 9), dtype=bool); nucleus[3:6, 3:6] = True
    >>> f = cell_texture_features(image, nucleus, cell, um_per_px=0.5, distances_um=(0.5,))
    >>> f["nuc_glcm_contrast_d0.5um"], f["cyto_glcm_asm_d0.5um"]
    (0.0, 1.0)
    """
    _check_cell_crop(image, nucleus_mask, cell_mask)
    green = image[:, :, 1]
    nucleus = glcm_features(green, nucleus_mask, um_per_px=um_per_px, **glcm_kw)
    cytoplasm = glcm_features(green, cell_mask & ~nucleus_mask, um_per_px=um_per_px, **glcm_kw)
    out = {f"nuc_{name}": value for name, value in nucleus.items()}
    out.update({f"cyto_{name}": value for name, value in cytoplasm.items()})
    return out


def _format_um(d: float) -> str:
    text = f"{d:.4g}"
    return text if ("." in text or "e" in text) else text + ".0"


def _check_um_per_px(um_per_px: float) -> float:
    if isinstance(um_per_px, bool) or not isinstance(um_per_px, numbers.Real):
        raise ValueError(f"um_per_px must be a positive number of micrometres per pixel; got {um_per_px!r}")
    value = float(um_per_px)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"um_per_px must be a positive, finite number of micrometres per pixel; got {value}")
    return value


def _check_settings(
    distances_um: Sequence[float], levels: int, angles_deg: Sequence[float]
) -> tuple[np.ndarray, int, np.ndarray]:
    distances = _as_float_vector(distances_um, "distances_um")
    if not np.all(distances > 0):
        raise ValueError(f"distances_um must all be positive; got {tuple(distances.tolist())}")
    angles = _as_float_vector(angles_deg, "angles_deg")
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or not 2 <= levels <= 256:
        raise ValueError(f"levels must be an integer from 2 to 256; got {levels!r}")
    return distances, int(levels), angles


def _as_float_vector(values: Sequence[float], name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers; got {values!r}") from None
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers; got {values!r}")
    return array


def _check_cell_crop(image: np.ndarray, nucleus_mask: np.ndarray, cell_mask: np.ndarray) -> None:
    """An (H, W, 3) uint8 crop with boolean nucleus and cell masks of its size; ValueError otherwise."""
    check_image(image)
    check_mask(nucleus_mask, image.shape[:2], name="nucleus_mask")
    check_mask(cell_mask, image.shape[:2], name="cell_mask")


def _check_gray_and_mask(gray: np.ndarray, mask: np.ndarray, *, name: str) -> None:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array; got shape {getattr(gray, 'shape', None)}")
    if gray.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8; got {gray.dtype} (convert with skimage.util.img_as_ubyte)")
    check_mask(mask, gray.shape, name="mask")
