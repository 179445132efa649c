"""Feature rows of segmented cells for a fixed column list, with NumPy and scikit-image only.

:class:`~leukoseg.features.CellFeatures` (a scikit-learn transformer) fixes the columns when fitted and
calls :func:`feature_matrix` to compute them; inference with a saved model calls :func:`feature_matrix`
directly, so the one-image ``leukoseg classify`` never imports scikit-learn.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from .glcm import _DEFAULT_ANGLES_DEG, _DEFAULT_DISTANCES_UM, cell_texture_features, texture_feature_names

__all__ = ["CELL_KEYS", "feature_matrix"]

#: Keys every cell mapping must have.
CELL_KEYS = ("image", "nucleus", "cell", "um_per_px", "measurements")


def feature_matrix(
    cells: Sequence[Mapping],
    measurement_names: Sequence[str],
    *,
    texture: bool = True,
    distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
    levels: int = 32,
    angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
) -> np.ndarray:
    """The feature matrix of cells: the named measurements, then nucleus and cytoplasm GLCM texture.

    Parameters
    ----------
    cells : sequence of mapping
        Cells with the keys of :data:`CELL_KEYS` (see :class:`~leukoseg.features.CellFeatures`).
    measurement_names : sequence of str
        Measurement columns, in order.
    texture : bool, optional
        Append the texture columns (:func:`~leukoseg.features.glcm.cell_texture_features`).
    distances_um, levels, angles_deg
        Texture settings.

    Returns
    -------
    (n_cells, n_features) ndarray of float64

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
    n_meas = len(names)
    rows = []
    glcm_kw = {"distances_um": distances_um, "levels": levels, "angles_deg": angles_deg}
    for i, cell in enumerate(cells):
        row = _measurement_row(_measurements_of(cell, i), names, i)
        if texture:
            for key in ("image", "nucleus", "cell", "um_per_px"):
                if key not in cell:
                    raise ValueError(f"cell {i} has no {key!r}; every cell needs the keys {CELL_KEYS}")
            try:
                values = cell_texture_features(
                    cell["image"], cell["nucleus"], cell["cell"], um_per_px=cell["um_per_px"], **glcm_kw
                )
            except ValueError as error:
                raise ValueError(f"cell {i}: {error}") from None
            row += list(values.values())
        rows.append(row)
    if not rows:
        n_texture = 2 * len(texture_feature_names(prefix="", **glcm_kw)) if texture else 0  # nucleus + cytoplasm
        return np.zeros((0, n_meas + n_texture), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


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
        if not _is_real(value):
            raise ValueError(f"measurement {name!r} of cell {index} is not a number: {value!r}")
        row.append(float(value))
    return row


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
