"""Feature rows of segmented cells for a fixed column list, with NumPy and scikit-image only.

:class:`~leukoseg.features.CellFeatures` (a scikit-learn transformer) fixes the columns when fitted and
calls :func:`feature_matrix` to compute them; inference with a saved model calls :func:`feature_matrix`
directly, so the one-image ``leukoseg classify`` never imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leukoseg._checks import is_real

from .glcm import _DEFAULT_ANGLES_DEG, _DEFAULT_DISTANCES_UM, cell_texture_features, texture_feature_names
from .stain import _LBP_RADII_UM, STAIN_FEATURE_NAMES, cell_stain_features, lbp_feature_names, nucleus_lbp_features

__all__ = ["CELL_KEYS", "LBP_RADII_UM", "check_lbp_radii", "feature_matrix", "feature_names"]

#: Default radii (um) of the nucleus LBP histograms.
LBP_RADII_UM = _LBP_RADII_UM

#: Keys every cell mapping must have.
CELL_KEYS = ("image", "nucleus", "cell", "um_per_px", "measurements")


def feature_names(
    measurement_names: Sequence[str],
    *,
    texture: bool = True,
    stain: bool = False,
    lbp_radii_um: Sequence[float] = (),
    distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
    levels: int = 32,
    angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
) -> list[str]:
    """Return the names of the columns of :func:`feature_matrix` with the same settings, in order.

    Parameters
    ----------
    measurement_names : sequence of str
        Measurement columns, in order.
    texture : bool, optional
        Append the names of the nucleus and cytoplasm GLCM texture columns.
    stain : bool, optional
        Put the names of :data:`~leukoseg.features.stain.STAIN_FEATURE_NAMES` after the measurements.
    lbp_radii_um : sequence of float, optional
        Radii (um) of the nucleus LBP histograms, after the stain columns; ``()`` for none.
    distances_um : sequence of float, optional
        Pixel-pair distances of the GLCM texture, in micrometres.
    levels : int, optional
        Number of grey levels of the GLCM texture (checked; does not change the names).
    angles_deg : sequence of float, optional
        Pixel-pair directions of the GLCM texture, in degrees (checked; does not change the names).

    Returns
    -------
    list of str
        The measurement names, then the stain, nucleus LBP, nucleus GLCM (``nuc_``) and cytoplasm GLCM
        (``cyto_``) feature names.

    Raises
    ------
    ValueError
        If the LBP radii or the texture settings are invalid.

    Examples
    --------
    >>> feature_names(["area"], texture=False, lbp_radii_um=(1.0,))[:3]
    ['area', 'nuc_lbp_r1um_0', 'nuc_lbp_r1um_1']
    """
    radii = check_lbp_radii(lbp_radii_um)
    columns = [*measurement_names, *(STAIN_FEATURE_NAMES if stain else ()), *lbp_feature_names(radii)]
    if texture:
        glcm_kw: dict[str, Any] = {"distances_um": distances_um, "levels": levels, "angles_deg": angles_deg}
        columns += texture_feature_names(prefix="nuc_", **glcm_kw) + texture_feature_names(prefix="cyto_", **glcm_kw)
    return columns


def feature_matrix(
    cells: Sequence[Mapping],
    measurement_names: Sequence[str],
    *,
    texture: bool = True,
    stain: bool = False,
    lbp_radii_um: Sequence[float] = (),
    distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
    levels: int = 32,
    angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
) -> np.ndarray:
    """The feature matrix of cells: measurements, stain features, nucleus LBP, then GLCM texture.

    Parameters
    ----------
    cells : sequence of mapping
        Cells with the keys of :data:`CELL_KEYS` (see :class:`~leukoseg.features.CellFeatures`).
    measurement_names : sequence of str
        Measurement columns, in order (booleans become 0 and 1).
    texture : bool, optional
        Append the texture columns (:func:`~leukoseg.features.glcm.cell_texture_features`).
    stain : bool, optional
        Put the columns of :func:`~leukoseg.features.stain.cell_stain_features` after the measurements.
        Off by default here, so that a model saved before these columns existed keeps its columns; the
        column list of :class:`~leukoseg.features.CellFeatures` turns it on.
    lbp_radii_um : sequence of float, optional
        Radii (um) of the nucleus LBP histograms (:func:`~leukoseg.features.stain.nucleus_lbp_features`),
        after the stain columns; ``()`` for none.
    distances_um : sequence of float, optional
        Pixel-pair distances of the GLCM texture, in micrometres.
    levels : int, optional
        Grey levels of the GLCM texture.
    angles_deg : sequence of float, optional
        Pixel-pair directions of the GLCM texture, in degrees; all three as in
        :func:`~leukoseg.features.glcm.glcm_features`.

    Returns
    -------
    (n_cells, n_features) ndarray of float64
        One row per cell, columns as in :func:`feature_names` with the same settings.

    Raises
    ------
    ValueError
        If a cell lacks a key or a measurement, or its arrays are invalid; the message names the cell's index.

    Examples
    --------
    >>> feature_matrix([{"measurements": {"area": 3.0}}], ["area"], texture=False)
    array([[3.]])
    """
    cells = _as_cells(cells)
    names = list(measurement_names)
    radii = check_lbp_radii(lbp_radii_um)
    glcm_kw: dict[str, Any] = {"distances_um": distances_um, "levels": levels, "angles_deg": angles_deg}
    n_columns = len(feature_names(names, texture=texture, stain=stain, lbp_radii_um=radii, **glcm_kw))
    out = np.empty((len(cells), n_columns), dtype=np.float64)
    for i, cell in enumerate(cells):
        row = _measurement_row(_measurements_of(cell, i), names, i)
        if stain or radii or texture:
            for key in ("image", "nucleus", "cell", "um_per_px"):
                if key not in cell:
                    raise ValueError(f"cell {i} has no {key!r}; every cell needs the keys {CELL_KEYS}")
            image, nucleus, whole, um_per_px = cell["image"], cell["nucleus"], cell["cell"], cell["um_per_px"]
            try:
                if stain:
                    row += cell_stain_features(image, nucleus, whole, um_per_px=um_per_px).values()
                if radii:
                    row += nucleus_lbp_features(image, nucleus, um_per_px=um_per_px, radii_um=radii).values()
                if texture:
                    row += cell_texture_features(image, nucleus, whole, um_per_px=um_per_px, **glcm_kw).values()
            except ValueError as error:
                raise ValueError(f"cell {i}: {error}") from None
        out[i] = row
    return out


def check_context_um(context_um) -> float:
    """The crop context of :class:`~leukoseg.features.CellFeatures` as a float.

    Parameters
    ----------
    context_um : float
        Micrometres around the cell's bounding box.

    Returns
    -------
    float
        The context.

    Raises
    ------
    ValueError
        If `context_um` is not a finite number >= 0 (a bool is refused).
    """
    if isinstance(context_um, bool) or not is_real(context_um) or not 0 <= float(context_um) < np.inf:
        raise ValueError(f"context_um must be a finite number of micrometres >= 0; got {context_um!r}")
    return float(context_um)


def check_lbp_radii(radii_um) -> tuple[float, ...]:
    """The LBP radii as a tuple of distinct positive floats.

    Parameters
    ----------
    radii_um : sequence of float
        Radii in micrometres.

    Returns
    -------
    tuple of float
        The radii, in the order given.

    Raises
    ------
    ValueError
        If `radii_um` is not a sequence of distinct, finite, positive numbers.
    """
    if isinstance(radii_um, (str, bytes)):
        raise ValueError(f"lbp_radii_um must be a sequence of radii in um; got {radii_um!r}")
    try:
        radii = tuple(float(r) for r in radii_um)
    except (TypeError, ValueError):
        raise ValueError(f"lbp_radii_um must be a sequence of radii in um; got {radii_um!r}") from None
    if not all(np.isfinite(r) and r > 0 for r in radii) or len({f"{r:g}" for r in radii}) != len(radii):
        raise ValueError(f"lbp_radii_um must be distinct positive numbers; got {radii_um!r}")
    return radii


def _as_cells(X) -> list:
    if isinstance(X, Mapping) or isinstance(X, (str, bytes)) or not isinstance(X, (Sequence, np.ndarray)):
        raise ValueError(
            f"X must be a sequence of cell mappings (keys {CELL_KEYS}); got {type(X).__name__}"
        )
    cells = list(X)
    for i, cell in enumerate(cells):
        if not isinstance(cell, Mapping):
            raise ValueError(f"cell {i} must be a mapping with the keys {CELL_KEYS}; got {type(cell).__name__}")
    return cells


def _measurements_of(cell: Mapping, index: int) -> Mapping:
    measurements = cell.get("measurements")
    if not isinstance(measurements, Mapping):
        raise ValueError(
            f"cell {index} has no 'measurements' mapping (name -> number); got {type(measurements).__name__}"
        )
    return measurements


def _measurement_row(measurements: Mapping, names: Sequence[str], index: int) -> list[float]:
    row = []
    for name in names:
        if name not in measurements:
            raise ValueError(
                f"cell {index} has no measurement {name!r}; it has {sorted(measurements)}. "
                "Pass measurements=[...] to choose the columns, or drop cells measured differently"
            )
        value = measurements[name]
        if not (is_real(value) or _is_bool(value)):
            raise ValueError(f"measurement {name!r} of cell {index} is not a number: {value!r}")
        row.append(float(value))
    return row


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))
