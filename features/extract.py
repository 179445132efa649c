"""Feature matrix of segmented cells: measurements from the segmentation, stain density, LBP and GLCM texture."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from leukoseg._checks import is_real

from .glcm import _DEFAULT_ANGLES_DEG, _DEFAULT_DISTANCES_UM
from .rows import (
    CELL_KEYS, LBP_RADII_UM, _as_cells, _is_bool, _measurement_row, _measurements_of, check_context_um,
    check_lbp_radii, feature_matrix, feature_names,
)  # fmt: skip

__all__ = ["BOOKKEEPING_MEASUREMENTS", "CELL_KEYS", "CellFeatures"]

log = logging.getLogger(__name__)

#: Numeric measurements that identify or locate a cell rather than describe it; never chosen by default.
BOOKKEEPING_MEASUREMENTS = frozenset({"cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"})


class CellFeatures(TransformerMixin, BaseEstimator):
    """Turn segmented cells into a feature matrix with named columns.

    Each row holds a cell's chosen measurements (morphometry, colour and flags from the segmentation),
    then its background-relative stain density, chromatin granularity and cytoplasm rim
    (:func:`~leukoseg.features.stain.cell_stain_features`), then the local-binary-pattern histogram of its
    nucleus (:func:`~leukoseg.features.stain.nucleus_lbp_features`), then the GLCM texture of its nucleus
    (``nuc_...``) and of its cytoplasm (``cyto_...``), computed on the green channel by
    :func:`~leukoseg.features.glcm.cell_texture_features`.

    The transformer learns nothing from the data except which columns to produce: ``fit`` fixes the
    column list, and ``transform`` produces exactly these columns, in this order, for any cells.

    Parameters
    ----------
    measurements : sequence of str or None, optional
        Measurement names to include, in this order. ``None`` (default): every real-valued or boolean
        measurement of the first cell passed to ``fit``, sorted by name, except the bookkeeping columns
        of :data:`BOOKKEEPING_MEASUREMENTS` (ids, centroids, boxes). Booleans become 0/1 columns: e.g.
        ``touches_border`` (a cell cut by the image edge: half a cell, which annotators of ALL-IDB1 do
        not mark as a blast) and ``smudge``. ``()`` for image features only.
    texture : bool, optional
        Include the GLCM texture of nucleus and cytoplasm.
    stain : bool, optional
        Include the stain, chromatin and rim features of
        :func:`~leukoseg.features.stain.cell_stain_features` (names in
        :data:`~leukoseg.features.stain.STAIN_FEATURE_NAMES`).
    lbp_radii_um : sequence of float, optional
        Radii (um) of the nucleus LBP histograms (``nuc_lbp_r{r}um_{code}``, 10 columns per radius);
        ``()`` for none.
    distances_um : sequence of float, optional
        Pixel-pair distances of the GLCM texture, in micrometres
        (:func:`~leukoseg.features.glcm.glcm_features`).
    levels : int, optional
        Number of grey levels of the GLCM texture, 2 to 256.
    angles_deg : sequence of float, optional
        Pixel-pair directions of the GLCM texture, in degrees.
    context_um : float, optional
        Micrometres of the smear that each cell's crop holds around the cell's bounding box. The crops are
        cut by the caller (the experiment, ``leukoseg train`` and ``leukoseg classify`` read this setting
        in ``leukoseg.pipelines.cache``); the transformer records it, so that a saved model's crops at
        inference are those it was trained on. The default, 4, exceeds the largest LBP radius (2 um), so
        the nucleus LBP, the chromatin bands and the background of the optical densities see the smear
        around the cell. 0 is the bare box, the former default (bundles trained before this setting read
        as 0): the LBP then samples zeros beyond the crop's edge and the chromatin bands mirror the cell
        at it.

    Attributes
    ----------
    measurement_names_ : list of str
        Measurement columns, in order.
    feature_names_out_ : ndarray of str
        All columns, in order: measurements, then stain features, then nucleus LBP, then nucleus GLCM
        texture, then cytoplasm GLCM texture.

    Notes
    -----
    The input is a sequence of cells, each a mapping with the keys of :data:`CELL_KEYS`:

    - ``image``: (h, w, 3) uint8 RGB crop around the cell;
    - ``nucleus``, ``cell``: (h, w) bool masks;
    - ``um_per_px``: pixel size of the crop, in micrometres;
    - ``measurements``: mapping of measurement name to number.

    Measurements are copied as floats (booleans as 0 and 1); a NaN measurement or stain feature stays NaN
    (impute it or drop the cell before a classifier that rejects NaN).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((12, 12, 3), 180, dtype=np.uint8)
    >>> cell = np.zeros((12, 12), dtype=bool); cell[1:11, 1:11] = True
    >>> nucleus = np.zeros((12, 12), dtype=bool); nucleus[3:9, 3:9] = True
    >>> cells = [dict(image=image, nucleus=nucleus, cell=cell, um_per_px=0.35,
    ...               measurements={"cell_id": 1, "nc_ratio": 0.36, "nucleus_area_um2": 4.4})]
    >>> features = CellFeatures(distances_um=(1.0,)).fit(cells)
    >>> list(features.get_feature_names_out()[:3])
    ['nc_ratio', 'nucleus_area_um2', 'nucleus_od_r_mean']
    >>> features.transform(cells).shape
    (1, 69)
    """

    def __init__(
        self,
        *,
        measurements: Sequence[str] | None = None,
        texture: bool = True,
        stain: bool = True,
        lbp_radii_um: Sequence[float] = LBP_RADII_UM,
        distances_um: Sequence[float] = _DEFAULT_DISTANCES_UM,
        levels: int = 32,
        angles_deg: Sequence[float] = _DEFAULT_ANGLES_DEG,
        context_um: float = 4.0,
    ) -> None:
        self.measurements = measurements
        self.texture = texture
        self.stain = stain
        self.lbp_radii_um = lbp_radii_um
        self.distances_um = distances_um
        self.levels = levels
        self.angles_deg = angles_deg
        self.context_um = context_um

    def fit(self, X: Sequence[Mapping], y: object = None) -> CellFeatures:
        """Fix the columns.

        Parameters
        ----------
        X : sequence of mapping
            Cells (see Notes of the class). With ``measurements=None`` the first cell chooses the
            measurement columns; every cell must have them.
        y : ignored
            Not used; present for scikit-learn API compatibility.

        Returns
        -------
        self : CellFeatures
            The fitted transformer.

        Raises
        ------
        ValueError
            If `X` is empty, a cell lacks a key or a chosen measurement, or a setting is invalid.
        """
        check_context_um(self.context_um)
        cells = _as_cells(X)
        if not cells:
            raise ValueError("CellFeatures.fit needs at least one cell; got an empty sequence")
        if self.measurements is None:
            first = _measurements_of(cells[0], 0)
            names = sorted(
                name for name, value in first.items()
                if (is_real(value) or _is_bool(value)) and name not in BOOKKEEPING_MEASUREMENTS
            )  # fmt: skip
        else:
            if isinstance(self.measurements, str):
                raise ValueError(f"measurements must be a sequence of names, not the string {self.measurements!r}")
            names = list(self.measurements)
            if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
                raise ValueError(f"measurements must be distinct names (str); got {self.measurements!r}")
        for i, cell in enumerate(cells):
            _measurement_row(_measurements_of(cell, i), names, i)
        columns = feature_names(
            names, texture=self.texture, stain=self.stain, lbp_radii_um=self._lbp_radii(),
            distances_um=self.distances_um, levels=self.levels, angles_deg=self.angles_deg,
        )  # fmt: skip
        self.measurement_names_ = names
        self.feature_names_out_ = np.asarray(columns, dtype=object)
        log.debug("CellFeatures: %d measurement columns of %d", len(names), len(columns))
        return self

    def transform(self, X: Sequence[Mapping]) -> np.ndarray:
        """Compute the feature matrix.

        Parameters
        ----------
        X : sequence of mapping
            Cells (see Notes of the class).

        Returns
        -------
        (n_cells, n_features) ndarray of float64
            Columns as in :meth:`get_feature_names_out`.

        Raises
        ------
        ValueError
            If a cell lacks a key or a measurement, or its arrays are invalid; the message names the
            cell's index.
        """
        check_is_fitted(self, "feature_names_out_")
        return feature_matrix(
            X, self.measurement_names_, texture=self.texture, stain=self.stain, lbp_radii_um=self._lbp_radii(),
            distances_um=self.distances_um, levels=self.levels, angles_deg=self.angles_deg,
        )  # fmt: skip

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """Return the names of the output columns.

        Parameters
        ----------
        input_features : ignored
            Present for scikit-learn API compatibility (the input is cells, not columns).

        Returns
        -------
        ndarray of str
            A copy of `feature_names_out_`: the columns of :meth:`transform`, in order.
        """
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.dict = True
        return tags

    def _lbp_radii(self) -> tuple[float, ...]:
        return check_lbp_radii(self.lbp_radii_um)

