"""FAB L1 / L2 / L3 morphological subtype of an image's leukaemic blasts, from the segmentation's measurements.

The French-American-British (FAB) group divided acute lymphoblastic leukaemia (ALL) into three
morphological types (Bennett et al. 1976, Br J Haematol 33:451-458) and later proposed a scoring system
that separates L1 from L2 reproducibly (Bennett et al. 1981, "The morphological classification of acute
lymphoblastic leukaemia: concordance among observers and clinical correlations", Br J Haematol
47:553-561). This module applies that score to the blasts of one image, with each per-cell judgement of
the observer replaced by a threshold on a measurement of :func:`leukoseg.segmentation.segment`.

.. warning::
   FAB is a **historical** morphological classification, replaced by the WHO classification (immunophenotype
   and genetics). This implementation is for **research only**: it is not a diagnosis, has not been
   validated against haematologists, and its per-cell thresholds are choices documented below, not values
   from the paper.

The score (Bennett et al. 1981)
-------------------------------
Over the blasts of a case, each rule adds or subtracts one point:

=============================================  =================  ======
feature                                        blasts             points
=============================================  =================  ======
high nucleus-to-cytoplasm (N:C) ratio          >= 75 %            +1
low N:C ratio                                  >= 25 %            -1
0-1 nucleoli, small (inconspicuous)           >= 75 %            +1
one or more prominent nucleoli                 >= 25 %            -1
irregular nuclear membrane                     >= 25 %            -1
large cells (> twice a small lymphocyte)       >= 50 %            -1
=============================================  =================  ======

A score of 0 to +2 is L1, -1 to -4 is L2 (the score cannot leave -4..+2). The paper scores L1 versus L2
only; L3 (Burkitt type) is recognised from its own features, which this module checks first (see below).

Per-cell thresholds (not in the paper: chosen here, all in :class:`FABSettings`)
---------------------------------------------------------------------------------
The paper leaves each cell's judgement to the observer. The defaults below were chosen from the
definitions of the measurements (``leukoseg/segmentation/_measure.py``) and textbook morphology, then
checked on the synthetic cells of :mod:`leukoseg.synthetic` (not fitted to any real data):

- **N:C ratio** (``nc_ratio``: nucleus area / cell area). *High* when ``>= 0.60`` (the nucleus spans at
  least 77 % of the cell's diameter: a thin rim of scanty cytoplasm, as in L1); *low* when ``< 0.50`` (the
  nucleus spans less than 71 % of the diameter: the cytoplasm rim is wider than 15 % of the diameter on
  each side, "moderately abundant" as in L2). Cells in between count as neither; set both thresholds equal
  to make the two classes complementary. *Deviation:* the per-cell definition usually quoted with the
  paper's table is area-based, high when the cytoplasm is less than about 20 % of the cell's area (N:C above
  0.80), low otherwise, with no band in between; the defaults here follow the synthetic cells, whose measured
  N:C runs 0.61-0.73 for L1 and 0.37-0.58 for L2 blasts. On ALL-IDB1 photographs ``segment`` measures the
  annotated blasts at 0.75-1.00 (median 0.88, 73 blasts of 8 images): every one is *high* and none *low* at
  the defaults, so there the N:C rules always add +1 and never subtract.
- **Prominent nucleolus**: at least one pale nuclear spot (``nucleoli_count >= 1``, spots of 0.25-6 um^2)
  whose mean area, ``nucleoli_fraction * nucleus_area_um2 / nucleoli_count``, is ``>= 1.0 um^2`` (a disc
  of about 1.1 um across, several pixels at the working resolution of 0.35 um/px, plainly visible with an
  oil-immersion objective). The mean is used because the table keeps no per-spot areas; as the mean never
  exceeds the largest spot, the rule errs towards "small".
- **Small nucleoli** (the paper's "0-1, small, inconspicuous"): no prominent nucleolus and at most
  ``max_small_nucleoli`` = 1 pale nuclear spot. A blast with two or more small spots meets neither nucleoli
  rule, as in the paper's table. On ALL-IDB1 ``segment`` finds two or more spots in 44 % of the annotated
  blasts (220 of 501), partly chromatin texture; on the 49 images called ALL in repeat 0 of an experiment
  run, the count limit lowers 13 scores by one (+2 to +1 in 9 images, +1 to 0 in 4) and changes no subtype
  (43 L1, 6 L2), against counting every blast without a prominent nucleolus as small
  (``benchmarks/fab_settings.py``).
  *Limit of the measurement:* a measured spot is about 1.5 times the drawn nucleolus's area (the blurred
  rim passes the brightness test), and spots above 6 um^2 are not counted at all, so a nucleolus more than
  about 2.3 um across is missed and its blast counts as *absent or small*.
- **Irregular nuclear membrane**: ``nucleus_irregularity >= 0.10`` (the outline is at least 10 % longer
  than its convex hull: a cleft or fold about 15 % of the nucleus's diameter deep; a round nucleus scores
  0.02-0.05 from pixel steps alone) or ``nucleus_solidity < 0.90`` (a smooth but deep indentation, e.g. a
  kidney-shaped nucleus, that adds little length to the outline). *Limit of the measurement:* ``segment``
  closes a narrow cleft: a groove 0.6 um wide and 15-25 % of the nuclear diameter deep measures an
  irregularity of 0.06-0.07 (0.13-0.20 on the drawn outline), so in practice only a groove about 1 um wide,
  or a smooth indentation about 30 % of the diameter deep (solidity < 0.90), is called irregular.
- **Large cell**: ``cell_diameter_um`` more than twice (the paper's factor) the diameter of a small
  lymphocyte, taken as **7.5 um**: small lymphocytes measure about 7-8 um, about the size of a red cell,
  and 7.5 um is also the red-cell diameter that :func:`~leukoseg.segmentation.segment` uses as its ruler, so
  "large" is "more than two red cells across" (15 um) whatever the camera.

L3 (Burkitt type)
-----------------
The FAB description of L3 (1976): large, homogeneous cells with round or oval nuclei, prominent nucleoli,
and moderately abundant, deeply basophilic cytoplasm with prominent vacuolation. An image is L3 when

- at least ``l3_min_fraction`` (default 50 %) of its blasts are each *L3-like*: at least
  ``l3_min_diameter_factor`` (1.5) small-lymphocyte diameters across (11.25 um; Burkitt cells are often
  called medium-sized, so the 2x rule of the score would miss many), *deeply basophilic* (cytoplasm at
  least ``basophilic_ratio`` = 0.25 times as blue as the cell's own nucleus, on the blue-green stain excess:
  ``cytoplasm_basophilia >= 0.25 * nucleus_stain``; a ratio cancels stain strength and exposure; pale L1/L2
  and lymphocyte cytoplasm measures 0.05-0.22 on synthetic smears) and *vacuolated* (at least
  ``vacuolated_min_count`` = 2 clear cytoplasmic vacuoles: "prominent vacuolation", and one pale spot may
  be a gap or noise);
- and the blasts are homogeneous in size: the coefficient of variation (standard deviation / mean, ddof 0)
  of their cell diameters is at most ``l3_max_size_cv`` = 0.15 (a uniform spread of +-26 % around the mean
  has a CV of 0.15).

Otherwise the score decides between L1 and L2. The score is reported for L3 images too.

Which blasts are scored
-----------------------
Every row is a blast (or pass ``blasts=`` to choose rows). By default, blasts cut by the image border
(``touches_border``: diameter and N:C ratio are wrong) and smudge cells (``smudge``: ruptured) are left
out, as are rows with a non-finite value in a column used; ``n_scored`` counts the blasts that remain, and
every percentage is of those.

Few blasts
----------
The paper's shares (25 %, 50 %, 75 %) were judged by observers over the many blasts of a marrow or blood
film. An image may hold a single blast (7 of the 49 ALL images of ALL-IDB1 have one annotated blast, 14 have
three or fewer): the subtype is still given, but one cell then decides every rule (a lone L3-like blast is
L3, a lone lymphocyte-like cell scores +2). ``low_count`` (``fab_low_count``) is True when fewer than
``min_scored_blasts`` (default 10, so that one cell weighs at most 10 %; a choice, not the paper's) blasts
were scored: read such a subtype as anecdotal. An image called ALL with no cell at the blast threshold is
scored on its most probable cell (:func:`blast_mask`), which is then flagged too.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from leukoseg._checks import check_bool, check_positive_int

__all__ = ["FAB_CRITERIA", "FABResult", "FABSettings", "blast_mask", "fab_classify"]

#: The per-blast criteria whose percentage of scored blasts :class:`FABResult` reports, in order.
FAB_CRITERIA = (
    "high_nc_ratio",
    "low_nc_ratio",
    "small_nucleoli",
    "prominent_nucleoli",
    "irregular_membrane",
    "large_cells",
    "basophilic",
    "vacuolated",
    "l3_like",
)

# Bennett et al. 1981: (criterion, minimum share of blasts as a fraction num/den, points).
# Shares are compared exactly on integer counts: count * den >= num * n.
_SCORE_RULES = (
    ("high_nc_ratio", (3, 4), +1),
    ("low_nc_ratio", (1, 4), -1),
    ("small_nucleoli", (3, 4), +1),
    ("prominent_nucleoli", (1, 4), -1),
    ("irregular_membrane", (1, 4), -1),
    ("large_cells", (1, 2), -1),
)

_L1_SCORES = range(0, 3)  # 0 .. +2; -1 .. -4 is L2


@dataclass(frozen=True)
class FABSettings:
    """Per-cell thresholds of the FAB scoring (see the module's documentation for the reasons).

    Parameters
    ----------
    high_nc_ratio : float, optional
        A blast has a high N:C ratio when ``nc_ratio >= high_nc_ratio`` (nucleus / cell area).
    low_nc_ratio : float, optional
        A blast has a low N:C ratio when ``nc_ratio < low_nc_ratio``; at most `high_nc_ratio`.
    prominent_nucleolus_um2 : float, optional
        A blast has a prominent nucleolus when it has at least one nucleolus and their mean area is at
        least this, in um^2.
    irregular_irregularity : float, optional
        A nuclear membrane is irregular when ``nucleus_irregularity >= irregular_irregularity`` ...
    irregular_solidity : float, optional
        ... or ``nucleus_solidity < irregular_solidity`` (0 disables this test).
    small_lymphocyte_um : float, optional
        Diameter of a small lymphocyte, in um.
    large_factor : float, optional
        A blast is large when ``cell_diameter_um > large_factor * small_lymphocyte_um`` (2 in the paper).
    l3_min_diameter_factor : float, optional
        An L3-like blast is at least ``l3_min_diameter_factor * small_lymphocyte_um`` across.
    basophilic_ratio : float, optional
        Deeply basophilic cytoplasm: ``cytoplasm_basophilia >= basophilic_ratio * nucleus_stain``.
    vacuolated_min_count : int, optional
        A vacuolated blast has at least this many cytoplasmic vacuoles.
    l3_min_fraction : float, optional
        Share of scored blasts, in (0, 1], that must be L3-like for L3.
    l3_max_size_cv : float, optional
        Largest coefficient of variation of the blasts' cell diameters for L3 (homogeneous size).
    exclude_border : bool, optional
        Leave out blasts that touch the image border.
    exclude_smudge : bool, optional
        Leave out smudge (ruptured) cells.
    min_scored_blasts : int, optional
        Fewer scored blasts than this set :attr:`FABResult.low_count` (the subtype is still given).
    max_small_nucleoli : int, optional
        A blast without a prominent nucleolus counts as having small nucleoli when it has at most this many
        (the paper's "0-1"; 0: only blasts without any).

    Raises
    ------
    ValueError
        If a value is out of range or of the wrong type.

    Examples
    --------
    >>> FABSettings().to_dict()["small_lymphocyte_um"]
    7.5
    >>> FABSettings(low_nc_ratio=0.7)
    Traceback (most recent call last):
    ...
    ValueError: low_nc_ratio (0.7) must not exceed high_nc_ratio (0.6)
    """

    high_nc_ratio: float = 0.60
    low_nc_ratio: float = 0.50
    prominent_nucleolus_um2: float = 1.0
    irregular_irregularity: float = 0.10
    irregular_solidity: float = 0.90
    small_lymphocyte_um: float = 7.5
    large_factor: float = 2.0
    l3_min_diameter_factor: float = 1.5
    basophilic_ratio: float = 0.25
    vacuolated_min_count: int = 2
    l3_min_fraction: float = 0.5
    l3_max_size_cv: float = 0.15
    exclude_border: bool = True
    exclude_smudge: bool = True
    min_scored_blasts: int = 10
    max_small_nucleoli: int = 1  # last: positional construction of earlier releases' fields keeps working

    def __post_init__(self) -> None:
        for name in ("high_nc_ratio", "low_nc_ratio", "irregular_solidity"):
            _check_number(name, getattr(self, name), low=0.0, high=1.0)
        for name in ("prominent_nucleolus_um2", "small_lymphocyte_um", "large_factor", "l3_min_diameter_factor"):
            _check_number(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("irregular_irregularity", "basophilic_ratio", "l3_max_size_cv"):
            _check_number(name, getattr(self, name), low=0.0)
        _check_number("l3_min_fraction", self.l3_min_fraction, low=0.0, high=1.0, low_open=True)
        if self.low_nc_ratio > self.high_nc_ratio:
            raise ValueError(
                f"low_nc_ratio ({self.low_nc_ratio}) must not exceed high_nc_ratio ({self.high_nc_ratio})"
            )
        for name in ("vacuolated_min_count", "min_scored_blasts"):
            check_positive_int(name, getattr(self, name), expected="an integer >= 1")
        check_positive_int("max_small_nucleoli", self.max_small_nucleoli, expected="an integer >= 0", allow_zero=True)
        for name in ("exclude_border", "exclude_smudge"):
            check_bool(name, getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain Python values, for JSON.

        Returns
        -------
        dict of str to object
            Every field, by name, with NumPy scalars turned into Python numbers.
        """
        out = asdict(self)
        from leukoseg.io import _python_scalar

        return {k: _python_scalar(v) for k, v in out.items()}


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v) or v < low or (low_open and v == low) or (high is not None and v > high)
    if bad:
        interval = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


@dataclass(frozen=True)
class FABResult:
    """FAB subtype of one image's blasts (research only, not a diagnosis).

    Attributes
    ----------
    subtype : {'L1', 'L2', 'L3'} or None
        None when no blast could be scored.
    score : int or None
        The L1/L2 score of Bennett et al. (1981), -4 to +2; also given when `subtype` is L3. None when no
        blast could be scored.
    n_blasts : int
        Blasts given.
    n_scored : int
        Blasts scored (without those left out: border, smudge, non-finite values).
    percent : mapping of str to float
        Percentage (0-100) of scored blasts meeting each criterion of :data:`FAB_CRITERIA`; NaN when
        `n_scored` is 0.
    size_cv : float or None
        Coefficient of variation of the scored blasts' cell diameters (None without scored blasts, or when
        their mean diameter is 0).
    low_count : bool
        Fewer than :attr:`FABSettings.min_scored_blasts` blasts were scored: the subtype rests on a few cells.
    """

    subtype: str | None
    score: int | None
    n_blasts: int
    n_scored: int
    percent: Mapping[str, float] = field(default_factory=dict)
    size_cv: float | None = None
    low_count: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a flat, JSON-ready dict (one CSV row).

        The keys are the same for every result; a missing value (no scored blast) is None, never NaN.

        Returns
        -------
        dict of str to object
            ``fab_subtype``, ``fab_score``, ``fab_n_blasts``, ``fab_n_scored``, ``fab_low_count``,
            ``fab_size_cv``, then
            ``fab_pct_<criterion>`` for every criterion of :data:`FAB_CRITERIA`, in order.
        """
        out: dict[str, Any] = {
            "fab_subtype": self.subtype,
            "fab_score": self.score,
            "fab_n_blasts": self.n_blasts,
            "fab_n_scored": self.n_scored,
            "fab_low_count": bool(self.low_count),
            "fab_size_cv": self.size_cv,
        }
        for name in FAB_CRITERIA:
            value = self.percent.get(name, math.nan)
            out[f"fab_pct_{name}"] = float(value) if math.isfinite(value) else None
        return out


def _required_columns(settings: FABSettings) -> tuple[str, ...]:
    cols: tuple[str, ...] = (
        "nc_ratio", "cell_diameter_um", "nucleus_area_um2", "nucleoli_count", "nucleoli_fraction",
        "nucleus_irregularity", "nucleus_solidity", "cytoplasm_basophilia", "nucleus_stain", "vacuole_count",
    )  # fmt: skip
    if settings.exclude_border:
        cols += ("touches_border",)
    if settings.exclude_smudge:
        cols += ("smudge",)
    return cols


def blast_mask(p_blast: ArrayLike, *, threshold: float = 0.5) -> np.ndarray:
    """The cells of an image called ALL whose morphology FAB scores: its predicted blasts.

    Cells with a blast probability of at least `threshold`; when there is none, the single most probable
    cell (an image called ALL has at least one blast).

    Parameters
    ----------
    p_blast : (n_cells,) array-like of float
        Blast probability of each cell of the image.
    threshold : float, optional
        Smallest probability at which a cell is a blast.

    Returns
    -------
    (n_cells,) ndarray of bool
        True for the cells taken as blasts; all False only when there are no cells.

    Examples
    --------
    >>> blast_mask([0.2, 0.7, 0.9]).tolist(), blast_mask([0.2, 0.4, 0.3]).tolist()
    ([False, True, True], [False, True, False])
    """
    p = np.asarray(p_blast, dtype=np.float64)
    mask = p >= threshold
    if len(p) and not mask.any():
        mask[int(np.argmax(p))] = True
    return mask


def fab_classify(
    measurements: Mapping[str, ArrayLike],
    *,
    blasts: ArrayLike | None = None,
    settings: FABSettings = FABSettings(),
) -> FABResult:
    """FAB L1/L2/L3 morphological subtype of an image's blasts (Bennett et al. 1976, 1981).

    FAB is a historical morphological classification of acute lymphoblastic leukaemia. The result is for
    research only and is **not a diagnosis**. The rules and the thresholds chosen for them are given in
    the module's documentation (:mod:`leukoseg.classify.fab`).

    Parameters
    ----------
    measurements : mapping of str to 1-D array
        Measurement table of :func:`leukoseg.segmentation.segment` (``Segmentation.measurements``): one
        row per blast, or per cell with `blasts` choosing the rows. Only the columns used are needed
        (``touches_border`` and ``smudge`` only when the settings exclude them). Not modified.
    blasts : (n,) array of bool, optional
        Which rows are blasts; all rows by default.
    settings : FABSettings, optional
        Per-cell thresholds.

    Returns
    -------
    FABResult
        The subtype, the score, the blast counts and the percentage of scored blasts meeting each criterion.

    Raises
    ------
    ValueError
        If a column is missing, not 1-D or not numeric, the columns differ in length, or `blasts` is not a
        boolean array of that length.

    Examples
    --------
    Four small blasts with scanty cytoplasm and no prominent nucleolus, the last one cut by the image border
    (so left out):

    >>> table = {
    ...     "nc_ratio": [0.72, 0.70, 0.68, 0.65], "cell_diameter_um": [10.5, 11.0, 10.0, 12.0],
    ...     "nucleus_area_um2": [62.0, 66.0, 53.0, 73.0], "nucleoli_count": [0, 0, 1, 0],
    ...     "nucleoli_fraction": [0.0, 0.0, 0.008, 0.0], "nucleus_irregularity": [0.03, 0.04, 0.03, 0.05],
    ...     "nucleus_solidity": [0.97, 0.97, 0.96, 0.97], "cytoplasm_basophilia": [12.0, 10.0, 14.0, 11.0],
    ...     "nucleus_stain": [118.0, 120.0, 117.0, 119.0], "vacuole_count": [0, 0, 0, 0],
    ...     "touches_border": [False, False, False, True], "smudge": [False, False, False, False],
    ... }
    >>> result = fab_classify(table)
    >>> result.subtype, result.score, result.n_blasts, result.n_scored
    ('L1', 2, 4, 3)
    >>> result.to_dict()["fab_pct_high_nc_ratio"]
    100.0
    >>> fab_classify(table, blasts=[False] * 4).to_dict()["fab_subtype"] is None
    True
    """
    if not isinstance(settings, FABSettings):
        raise ValueError(f"settings must be a FABSettings, got {type(settings).__name__}")
    if not isinstance(measurements, Mapping):
        raise ValueError(f"measurements must be a mapping of column name to array, got {type(measurements).__name__}")
    columns = _required_columns(settings)
    missing = [c for c in columns if c not in measurements]
    if missing:
        raise ValueError(f"measurements lack column(s) {', '.join(missing)} (see segmentation.MEASUREMENT_COLUMNS)")
    table: dict[str, np.ndarray] = {}
    for name in columns:
        # A float copy: the caller's arrays are never touched.
        try:
            values = np.array(measurements[name], dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} must be numeric or boolean: {exc}") from None
        if values.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {values.shape}")
        table[name] = values
    n_rows = {len(v) for v in table.values()}
    if len(n_rows) > 1:
        lengths = ", ".join(f"{k}={len(v)}" for k, v in table.items())
        raise ValueError(f"measurement columns differ in length: {lengths}")
    n = n_rows.pop()
    if blasts is None:
        chosen = np.ones(n, bool)
    else:
        chosen = np.asarray(blasts)
        if chosen.shape != (n,) or not (chosen.dtype == bool or chosen.size == 0):
            raise ValueError(f"blasts must be a boolean array of {n} rows, got {chosen.dtype} of shape {chosen.shape}")
        chosen = chosen.astype(bool)
    n_blasts = int(chosen.sum())

    keep = chosen & np.all([np.isfinite(v) for v in table.values()], axis=0)
    if settings.exclude_border:
        keep &= table["touches_border"] == 0
    if settings.exclude_smudge:
        keep &= table["smudge"] == 0
    t = {k: v[keep] for k, v in table.items()}
    n_scored = int(keep.sum())
    if n_scored == 0:
        return FABResult(
            subtype=None,
            score=None,
            n_blasts=n_blasts,
            n_scored=0,
            percent=types.MappingProxyType(dict.fromkeys(FAB_CRITERIA, math.nan)),
            size_cv=None,
            low_count=True,
        )

    flags = _criteria(t, settings)
    counts = {name: int(flags[name].sum()) for name in FAB_CRITERIA}
    score = sum(points for name, (num, den), points in _SCORE_RULES if counts[name] * den >= num * n_scored)
    diameters = t["cell_diameter_um"]
    mean_d = float(diameters.mean())
    size_cv = float(diameters.std() / mean_d) if mean_d > 0 else math.inf
    is_l3 = counts["l3_like"] >= settings.l3_min_fraction * n_scored - 1e-9 and size_cv <= settings.l3_max_size_cv
    subtype = "L3" if is_l3 else ("L1" if score in _L1_SCORES else "L2")
    return FABResult(
        subtype=subtype,
        score=int(score),
        n_blasts=n_blasts,
        n_scored=n_scored,
        percent=types.MappingProxyType({k: 100.0 * counts[k] / n_scored for k in FAB_CRITERIA}),
        size_cv=size_cv if math.isfinite(size_cv) else None,
        low_count=n_scored < settings.min_scored_blasts,
    )


def _criteria(t: Mapping[str, np.ndarray], s: FABSettings) -> dict[str, np.ndarray]:
    """Per-blast booleans of every criterion of :data:`FAB_CRITERIA`."""
    nc = t["nc_ratio"]
    count = t["nucleoli_count"]
    mean_nucleolus_um2 = t["nucleoli_fraction"] * t["nucleus_area_um2"] / np.maximum(count, 1.0)
    prominent = (count >= 1) & (mean_nucleolus_um2 >= s.prominent_nucleolus_um2)
    irregular = (t["nucleus_irregularity"] >= s.irregular_irregularity) | (
        t["nucleus_solidity"] < s.irregular_solidity
    )
    diameter = t["cell_diameter_um"]
    basophilic = t["cytoplasm_basophilia"] >= s.basophilic_ratio * t["nucleus_stain"]
    vacuolated = t["vacuole_count"] >= s.vacuolated_min_count
    l3_sized = diameter >= s.l3_min_diameter_factor * s.small_lymphocyte_um
    return {
        "high_nc_ratio": nc >= s.high_nc_ratio,
        "low_nc_ratio": nc < s.low_nc_ratio,
        "small_nucleoli": ~prominent & (count <= s.max_small_nucleoli),
        "prominent_nucleoli": prominent,
        "irregular_membrane": irregular,
        "large_cells": diameter > s.large_factor * s.small_lymphocyte_um,
        "basophilic": basophilic,
        "vacuolated": vacuolated,
        "l3_like": l3_sized & basophilic & vacuolated,
    }
