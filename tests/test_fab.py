"""Tests of the FAB L1/L2/L3 scoring of an image's blasts (classify/fab.py).

Two kinds of test: rules checked on hand-made measurement tables (each criterion, its thresholds at the
boundaries, the score's share rules, exclusions, validation), and end to end: synthetic smears drawn,
segmented by :func:`leukoseg.segmentation.segment` and scored. The L1 and L2 smears come from
:func:`leukoseg.synthetic.make_smear`. L3 smears are drawn here by :func:`_draw_blasts`, with vacuoles
placed well inside the cytoplasm, so that the count of vacuoles is known (make_smear's L3 blasts do land in L3
at stain_jitter 0.1, seeds 0-2, but ``segment`` finds 0-7 of their vacuoles).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from leukoseg.classify.fab import FAB_CRITERIA, FABResult, FABSettings, fab_classify

# --------------------------------------------------------------------------------------------------
# Hand-made measurement tables
# --------------------------------------------------------------------------------------------------

# A typical L1 blast, as segment() measures one: small, scanty cytoplasm, no nucleolus, round nucleus.
_L1_ROW = {
    "cell_id": 1,
    "x": 10.0,
    "y": 10.0,
    "nucleus_area_um2": 60.0,
    "cell_area_um2": 85.0,
    "nucleus_diameter_um": 8.7,
    "cell_diameter_um": 10.5,
    "nc_ratio": 0.70,
    "nucleus_solidity": 0.97,
    "nucleus_circularity": 0.9,
    "nucleus_irregularity": 0.03,
    "nucleus_eccentricity": 0.3,
    "nucleoli_count": 0,
    "nucleoli_fraction": 0.0,
    "cytoplasm_basophilia": 12.0,
    "vacuole_count": 0,
    "vacuole_fraction": 0.0,
    "nucleus_stain": 120.0,
    "touches_border": False,
    "smudge": False,
}

# A typical L3 blast: 14 um, deep blue cytoplasm (basophilia 0.33 of the nucleus's), four vacuoles.
_L3_ROW = dict(
    _L1_ROW,
    cell_diameter_um=14.0,
    nc_ratio=0.45,
    nucleus_area_um2=69.0,
    nucleoli_count=2,
    nucleoli_fraction=0.05,
    cytoplasm_basophilia=40.0,
    vacuole_count=4,
    vacuole_fraction=0.08,
)

_INT = {"cell_id", "nucleoli_count", "vacuole_count"}
_BOOL = {"touches_border", "smudge"}


def _table(n: int = 4, row: dict | None = None, **columns) -> dict[str, np.ndarray]:
    """``n`` copies of ``row`` (default: the L1 blast) as a measurement table, with columns replaced."""
    row = _L1_ROW if row is None else row
    out = {}
    for name, value in row.items():
        dtype = np.int64 if name in _INT else bool if name in _BOOL else np.float64
        out[name] = np.full(n, value, dtype=dtype)
    for name, values in columns.items():
        values = np.asarray(values)
        assert values.shape == (n,), name
        out[name] = values.astype(out[name].dtype)
    return out


def _mean_area_table(areas_um2, counts) -> dict[str, np.ndarray]:
    """Blasts whose nucleoli have the given mean areas (um^2), via nucleoli_fraction * nucleus area."""
    areas = np.asarray(areas_um2, float)
    counts = np.asarray(counts)
    nucleus = _L1_ROW["nucleus_area_um2"]
    return _table(len(areas), nucleoli_count=counts, nucleoli_fraction=areas * np.maximum(counts, 1) / nucleus)


def test_typical_l1_scores_plus_two():
    result = fab_classify(_table())
    assert result.subtype == "L1"
    assert result.score == 2
    assert (result.n_blasts, result.n_scored) == (4, 4)
    assert result.percent == {
        "high_nc_ratio": 100.0, "low_nc_ratio": 0.0, "small_nucleoli": 100.0, "prominent_nucleoli": 0.0,
        "irregular_membrane": 0.0, "large_cells": 0.0, "basophilic": 0.0, "vacuolated": 0.0, "l3_like": 0.0,
    }  # fmt: skip
    assert result.size_cv == pytest.approx(0.0, abs=1e-12)


def test_all_l2_features_score_minus_four():
    table = _table(
        4,
        nc_ratio=[0.40] * 4,
        nucleoli_count=[2] * 4,
        nucleoli_fraction=[0.05] * 4,  # 2 nucleoli of 1.5 um^2 in a 60 um^2 nucleus
        nucleus_irregularity=[0.2] * 4,
        cell_diameter_um=[16.0, 17.0, 18.0, 19.0],
    )
    result = fab_classify(table)
    assert (result.subtype, result.score) == ("L2", -4)
    assert result.percent["low_nc_ratio"] == 100.0
    assert result.percent["prominent_nucleoli"] == 100.0


# N:C ratio: high is >= 0.60 per cell, low is < 0.50; +1 when >= 75 % high, -1 when >= 25 % low.


@pytest.mark.parametrize(
    ("nc", "pct_high", "pct_low"),
    [(0.60, 100.0, 0.0), (0.5999, 0.0, 0.0), (0.50, 0.0, 0.0), (0.4999, 0.0, 100.0)],
)
def test_nc_ratio_cell_thresholds(nc, pct_high, pct_low):
    result = fab_classify(_table(2, nc_ratio=[nc, nc]))
    assert result.percent["high_nc_ratio"] == pct_high
    assert result.percent["low_nc_ratio"] == pct_low


@pytest.mark.parametrize(
    ("n_high", "n_low", "points"),
    [
        (4, 0, +1),  # 100 % high
        (3, 0, +1),  # 75 % high, the 4th in between: +1 exactly at the boundary
        (2, 0, 0),  # 50 % high: no point
        (3, 1, 0),  # 75 % high and 25 % low: +1 - 1
        (2, 1, -1),  # 25 % low: -1 exactly at the boundary
        (0, 4, -1),
    ],
)
def test_nc_ratio_shares(n_high, n_low, points):
    nc = [0.7] * n_high + [0.4] * n_low + [0.55] * (4 - n_high - n_low)
    result = fab_classify(_table(4, nc_ratio=nc))
    # The other rules give +1 (no prominent nucleolus) and nothing else.
    assert result.score == 1 + points


def test_shares_are_exact_for_many_cells():
    # 74 of 100 high is below 75 %: no point; 75 of 100 is +1. 24 of 100 low is below 25 %.
    assert fab_classify(_table(100, nc_ratio=[0.7] * 74 + [0.55] * 26)).score == 1
    assert fab_classify(_table(100, nc_ratio=[0.7] * 75 + [0.55] * 25)).score == 2
    assert fab_classify(_table(100, nc_ratio=[0.7] * 76 + [0.4] * 24)).score == 2
    assert fab_classify(_table(100, nc_ratio=[0.7] * 75 + [0.4] * 25)).score == 1
    # 2 of 8 is exactly 25 %.
    assert fab_classify(_table(8, nc_ratio=[0.7] * 6 + [0.4] * 2)).score == 1


# Nucleoli: prominent when at least one, of mean area >= 1 um^2.


@pytest.mark.parametrize(
    ("area", "count", "prominent"),
    [(1.0, 1, True), (0.999, 1, False), (1.0, 3, True), (0.999, 3, False), (0.0, 0, False), (4.0, 2, True)],
)
def test_prominent_nucleolus_cell_threshold(area, count, prominent):
    result = fab_classify(_mean_area_table([area], [count]))
    assert result.percent["prominent_nucleoli"] == (100.0 if prominent else 0.0)
    small = not prominent and count <= 1  # the paper's "0-1, small"
    assert result.percent["small_nucleoli"] == (100.0 if small else 0.0)


@pytest.mark.parametrize(("max_small", "counts", "small_pct", "points"),
                         [(1, [0, 1, 1, 1], 100.0, +1), (1, [0, 1, 1, 2], 75.0, +1), (1, [0, 1, 2, 3], 50.0, 0),
                          (3, [0, 1, 2, 3], 100.0, +1), (0, [0, 0, 0, 1], 75.0, +1), (0, [0, 0, 1, 1], 50.0, 0)])
def test_small_nucleoli_are_at_most_max_small_nucleoli(max_small, counts, small_pct, points):
    # Bennett et al.'s +1 rule is "0-1 nucleoli, small": a blast with more small ones meets neither rule.
    table = _mean_area_table([0.5] * 4, counts)  # all small (mean area 0.5 um^2 < 1)
    settings = FABSettings(max_small_nucleoli=max_small)
    result = fab_classify(table, settings=settings)
    assert result.percent["small_nucleoli"] == small_pct and result.percent["prominent_nucleoli"] == 0.0
    # The rest of the L1 row: +1 for the high N:C ratio, nothing else.
    assert result.score == 1 + points


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None])
def test_max_small_nucleoli_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match=f"max_small_nucleoli must be an integer >= 0, got {re.escape(repr(bad))}"):
        FABSettings(max_small_nucleoli=bad)


def test_nucleoli_without_count_are_not_prominent():
    # A fraction without any counted spot (impossible from segment, possible in a hand-made table).
    result = fab_classify(_table(1, nucleoli_count=[0], nucleoli_fraction=[0.5]))
    assert result.percent["prominent_nucleoli"] == 0.0


@pytest.mark.parametrize(("n_prominent", "points"), [(0, +1), (1, 0), (2, -1), (4, -1)])
def test_nucleoli_shares(n_prominent, points):
    # One prominent of four: 75 % small (+1) and 25 % prominent (-1).
    table = _mean_area_table([2.0] * n_prominent + [0.3] * (4 - n_prominent), [1] * 4)
    result = fab_classify(table)
    assert result.score == 1 + points  # +1 from the high N:C ratio


# Nuclear membrane: irregular when irregularity >= 0.10 or solidity < 0.90; -1 when >= 25 %.


@pytest.mark.parametrize(
    ("irregularity", "solidity", "irregular"),
    [(0.10, 0.97, True), (0.0999, 0.97, False), (0.03, 0.8999, True), (0.03, 0.90, False)],
)
def test_irregular_membrane_cell_thresholds(irregularity, solidity, irregular):
    result = fab_classify(_table(1, nucleus_irregularity=[irregularity], nucleus_solidity=[solidity]))
    assert result.percent["irregular_membrane"] == (100.0 if irregular else 0.0)


@pytest.mark.parametrize(("n_irregular", "points"), [(0, 0), (1, -1), (4, -1)])
def test_irregular_membrane_share(n_irregular, points):
    table = _table(4, nucleus_irregularity=[0.2] * n_irregular + [0.03] * (4 - n_irregular))
    assert fab_classify(table).score == 2 + points


def test_solidity_test_can_be_disabled():
    table = _table(1, nucleus_solidity=[0.5])
    assert fab_classify(table).percent["irregular_membrane"] == 100.0
    assert fab_classify(table, settings=FABSettings(irregular_solidity=0.0)).percent["irregular_membrane"] == 0.0


# Cell size: large when the diameter is more than 2 x 7.5 um; -1 when >= 50 %.


@pytest.mark.parametrize(("diameter", "large"), [(15.0, False), (15.001, True), (12.0, False)])
def test_large_cell_threshold(diameter, large):
    result = fab_classify(_table(1, cell_diameter_um=[diameter]))
    assert result.percent["large_cells"] == (100.0 if large else 0.0)


def test_large_cell_threshold_follows_the_lymphocyte_size():
    table = _table(1, cell_diameter_um=[15.0])
    settings = FABSettings(small_lymphocyte_um=7.0)
    assert fab_classify(table, settings=settings).percent["large_cells"] == 100.0


@pytest.mark.parametrize(("n_large", "points"), [(1, 0), (2, -1), (3, -1)])
def test_large_cell_share(n_large, points):
    # Sizes within 15 % CV are irrelevant here: the blasts are not basophilic, so never L3.
    table = _table(4, cell_diameter_um=[16.0] * n_large + [14.0] * (4 - n_large))
    assert fab_classify(table).score == 2 + points


@pytest.mark.parametrize(("score", "subtype"), [(2, "L1"), (1, "L1"), (0, "L1"), (-1, "L2"), (-2, "L2")])
def test_score_to_subtype_boundary(score, subtype):
    # Start from +2 and add -1 rules one by one: low N:C in 1 of 4 (-1), then large cells in 2 of 4 (-1),
    # irregular membrane in 1 of 4 (-1), prominent nucleoli in 1 of 4 (-1 and the +1 stays).
    steps = 2 - score
    nc = [0.7, 0.7, 0.7, 0.4] if steps >= 1 else [0.7] * 4
    diam = [16.0, 16.0, 14.0, 14.0] if steps >= 2 else [10.5] * 4
    irregularity = [0.2, 0.03, 0.03, 0.03] if steps >= 3 else [0.03] * 4
    count = [1, 0, 0, 0] if steps >= 4 else [0] * 4
    fraction = [2.0 / 60.0, 0.0, 0.0, 0.0] if steps >= 4 else [0.0] * 4  # one 2 um^2 nucleolus
    table = _table(
        4, nc_ratio=nc, cell_diameter_um=diam, nucleus_irregularity=irregularity, nucleoli_count=count,
        nucleoli_fraction=fraction,
    )  # fmt: skip
    result = fab_classify(table)
    assert (result.score, result.subtype) == (score, subtype)


# L3: >= 50 % of blasts large enough, deeply basophilic and vacuolated, and homogeneous sizes.


def test_typical_l3():
    result = fab_classify(_table(4, row=_L3_ROW))
    assert result.subtype == "L3"
    assert result.percent["l3_like"] == 100.0
    # The L1/L2 score is still reported: low N:C (-1), prominent nucleoli (-1).
    assert result.score == -2


@pytest.mark.parametrize(
    ("column", "value", "l3_like"),
    [
        ("cytoplasm_basophilia", 30.0, True),  # exactly 0.25 x the nucleus's 120
        ("cytoplasm_basophilia", 29.99, False),
        ("vacuole_count", 2, True),
        ("vacuole_count", 1, False),
        ("cell_diameter_um", 11.25, True),  # exactly 1.5 x 7.5 um
        ("cell_diameter_um", 11.24, False),
    ],
)
def test_l3_cell_thresholds(column, value, l3_like):
    result = fab_classify(_table(1, row=_L3_ROW, **{column: [value]}))
    assert result.percent["l3_like"] == (100.0 if l3_like else 0.0)
    assert (result.subtype == "L3") is l3_like


@pytest.mark.parametrize(("n_l3", "subtype"), [(2, "L3"), (1, "L2")])
def test_l3_share(n_l3, subtype):
    # Four blasts of one size (CV 0); the first n_l3 are vacuolated.
    table = _table(4, row=_L3_ROW, vacuole_count=[4] * n_l3 + [0] * (4 - n_l3))
    assert fab_classify(table).subtype == subtype


def test_l3_needs_homogeneous_sizes():
    # Diameters 12 and 18: CV 0.2 > 0.15. Diameters 13.5 and 16.5: CV 0.1.
    assert fab_classify(_table(2, row=_L3_ROW, cell_diameter_um=[12.0, 18.0])).subtype == "L2"
    result = fab_classify(_table(2, row=_L3_ROW, cell_diameter_um=[13.5, 16.5]))
    assert result.subtype == "L3"
    assert result.size_cv == pytest.approx(0.1, abs=1e-12)
    relaxed = FABSettings(l3_max_size_cv=0.25)
    assert fab_classify(_table(2, row=_L3_ROW, cell_diameter_um=[12.0, 18.0]), settings=relaxed).subtype == "L3"


# Which blasts are scored.


def test_no_rows_gives_none():
    result = fab_classify(_table(0))
    assert (result.subtype, result.score, result.n_blasts, result.n_scored, result.size_cv) == (None, None, 0, 0, None)
    assert set(result.percent) == set(FAB_CRITERIA)
    assert all(math.isnan(v) for v in result.percent.values())


def test_no_blasts_selected_gives_none():
    result = fab_classify(_table(3), blasts=np.zeros(3, bool))
    assert (result.subtype, result.score, result.n_blasts, result.n_scored) == (None, None, 0, 0)


def test_blasts_mask_chooses_rows():
    # Rows 0-1 are L1 blasts, rows 2-3 L2-like cells that are not blasts (e.g. other white cells).
    table = _table(4, nc_ratio=[0.7, 0.7, 0.4, 0.4], cell_diameter_um=[10.0, 10.0, 17.0, 17.0])
    # All rows: high N:C in 50 % (0), low in 50 % (-1), no nucleoli (+1), large in 50 % (-1).
    assert fab_classify(table).score == -1
    result = fab_classify(table, blasts=[True, True, False, False])
    assert (result.subtype, result.score, result.n_blasts, result.n_scored) == ("L1", 2, 2, 2)


def test_border_and_smudge_cells_are_left_out():
    # Two whole L1 blasts; a large low-N:C cell cut by the border and a smudge cell.
    table = _table(
        4,
        nc_ratio=[0.7, 0.7, 0.4, 0.4],
        cell_diameter_um=[10.0, 10.0, 17.0, 17.0],
        touches_border=[False, False, True, False],
        smudge=[False, False, False, True],
    )
    result = fab_classify(table)
    assert (result.subtype, result.score, result.n_blasts, result.n_scored) == ("L1", 2, 4, 2)
    kept = fab_classify(table, settings=FABSettings(exclude_border=False, exclude_smudge=False))
    assert (kept.subtype, kept.score, kept.n_scored) == ("L2", -1, 4)
    # Without the exclusions the two columns are not needed.
    del table["touches_border"], table["smudge"]
    assert fab_classify(table, settings=FABSettings(exclude_border=False, exclude_smudge=False)).n_scored == 4


def test_all_blasts_left_out_gives_none():
    result = fab_classify(_table(2, touches_border=[True, True]))
    assert (result.subtype, result.score, result.n_blasts, result.n_scored) == (None, None, 2, 0)


def test_non_finite_rows_are_left_out():
    table = _table(3, nc_ratio=[0.7, np.nan, 0.7], cell_diameter_um=[10.0, 10.0, np.inf])
    result = fab_classify(table)
    assert (result.n_blasts, result.n_scored, result.subtype) == (3, 1, "L1")


# Input handling and validation.


def test_input_not_mutated_and_read_only_input_accepted():
    table = _table(4, row=_L3_ROW, touches_border=[False, False, False, True])
    for v in table.values():
        v.setflags(write=False)
    before = copy.deepcopy(table)
    mask = np.array([True, True, True, False])
    result = fab_classify(types.MappingProxyType(table), blasts=mask)
    assert result.subtype == "L3"
    assert list(table) == list(before)
    for name in before:
        assert table[name].dtype == before[name].dtype
        assert_array_equal(table[name], before[name])
    assert_array_equal(mask, [True, True, True, False])


def test_lists_are_accepted():
    table = {k: v.tolist() for k, v in _table(2).items()}
    assert fab_classify(table).subtype == "L1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("nc_ratio"), "lack column.*nc_ratio"),
        (lambda t: t.pop("touches_border"), "lack column.*touches_border"),
        (lambda t: t.__setitem__("nc_ratio", np.zeros(3)), "differ in length"),
        (lambda t: t.__setitem__("nc_ratio", np.zeros((2, 2))), "'nc_ratio' must be 1-D"),
        (lambda t: t.__setitem__("nc_ratio", np.array(["a", "b"])), "'nc_ratio' must be numeric"),
    ],
)
def test_bad_tables_raise(change, message):
    table = _table(2)
    change(table)
    with pytest.raises(ValueError, match=message):
        fab_classify(table)


@pytest.mark.parametrize("blasts", [[True], np.array([1, 0]), ["yes", "no"], np.ones((2, 1), bool)])
def test_bad_blasts_mask_raises(blasts):
    with pytest.raises(ValueError, match="blasts must be a boolean array of 2 rows"):
        fab_classify(_table(2), blasts=blasts)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="settings must be a FABSettings"):
        fab_classify(_table(2), settings={"high_nc_ratio": 0.6})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="measurements must be a mapping"):
        fab_classify([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fab_classify(_table(2), None, FABSettings())  # type: ignore[call-arg]  # keyword-only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"high_nc_ratio": 1.2}, r"high_nc_ratio must be a finite number in \[0, 1\]"),
        ({"low_nc_ratio": -0.1}, r"low_nc_ratio must be a finite number in \[0, 1\]"),
        ({"low_nc_ratio": 0.7}, r"low_nc_ratio \(0.7\) must not exceed high_nc_ratio \(0.6\)"),
        ({"prominent_nucleolus_um2": 0.0}, r"prominent_nucleolus_um2 must be a finite number in \(0, inf\)"),
        ({"small_lymphocyte_um": float("nan")}, "small_lymphocyte_um must be a finite number"),
        ({"small_lymphocyte_um": float("inf")}, "small_lymphocyte_um must be a finite number"),
        ({"large_factor": -2.0}, "large_factor must be a finite number"),
        ({"l3_min_diameter_factor": 0}, "l3_min_diameter_factor must be a finite number"),
        ({"irregular_irregularity": -0.1}, r"irregular_irregularity must be a finite number in \[0, inf\)"),
        ({"irregular_solidity": 1.5}, "irregular_solidity must be a finite number"),
        ({"basophilic_ratio": -1.0}, "basophilic_ratio must be a finite number"),
        ({"l3_max_size_cv": -0.1}, "l3_max_size_cv must be a finite number"),
        ({"l3_min_fraction": 0.0}, r"l3_min_fraction must be a finite number in \(0, 1\]"),
        ({"l3_min_fraction": 1.01}, "l3_min_fraction must be a finite number"),
        ({"vacuolated_min_count": 0}, "vacuolated_min_count must be an integer >= 1"),
        ({"vacuolated_min_count": 1.5}, "vacuolated_min_count must be an integer >= 1"),
        ({"vacuolated_min_count": True}, "vacuolated_min_count must be an integer >= 1"),
        ({"min_scored_blasts": 0}, "min_scored_blasts must be an integer >= 1"),
        ({"high_nc_ratio": "0.6"}, "high_nc_ratio must be a number"),
        ({"high_nc_ratio": True}, "high_nc_ratio must be a number"),
        ({"exclude_border": "yes"}, "exclude_border must be True or False"),
        ({"exclude_smudge": 1}, "exclude_smudge must be True or False"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FABSettings(**kwargs)


def test_settings_round_trip_and_json():
    settings = FABSettings(high_nc_ratio=0.55, low_nc_ratio=0.55, vacuolated_min_count=3, exclude_smudge=False)
    d = settings.to_dict()
    assert FABSettings(**json.loads(json.dumps(d))) == settings
    assert d["high_nc_ratio"] == 0.55 and d["vacuolated_min_count"] == 3 and d["exclude_smudge"] is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.high_nc_ratio = 0.7  # type: ignore[misc]


def test_equal_nc_thresholds_make_a_dichotomy():
    settings = FABSettings(high_nc_ratio=0.55, low_nc_ratio=0.55)
    result = fab_classify(_table(4, nc_ratio=[0.56, 0.55, 0.5499, 0.3]), settings=settings)
    assert (result.percent["high_nc_ratio"], result.percent["low_nc_ratio"]) == (50.0, 50.0)


# The result.


_KEYS = [
    "fab_subtype", "fab_score", "fab_n_blasts", "fab_n_scored", "fab_low_count", "fab_size_cv",
    *(f"fab_pct_{c}" for c in FAB_CRITERIA),
]  # fmt: skip


def test_result_to_dict_is_flat_and_json_ready():
    d = fab_classify(_table(3, nc_ratio=[0.7, 0.7, 0.4])).to_dict()
    assert list(d) == _KEYS
    assert d["fab_subtype"] == "L1" and d["fab_score"] == 0
    assert d["fab_pct_low_nc_ratio"] == pytest.approx(100 / 3, abs=1e-9)
    assert all(isinstance(v, (str, int, float)) and not isinstance(v, np.generic) for v in d.values())
    json.dumps(d, allow_nan=False)


def test_empty_result_to_dict_has_the_same_keys_and_no_nan():
    d = fab_classify(_table(0)).to_dict()
    assert list(d) == _KEYS
    assert d["fab_n_blasts"] == 0 and d["fab_n_scored"] == 0
    assert d["fab_low_count"] is True
    assert all(d[k] is None for k in _KEYS if k not in ("fab_n_blasts", "fab_n_scored", "fab_low_count"))
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize(("n", "minimum", "low"), [(1, 10, True), (9, 10, True), (10, 10, False), (1, 1, False)])
def test_few_scored_blasts_are_flagged_not_hidden(n, minimum, low):
    result = fab_classify(_table(n), settings=FABSettings(min_scored_blasts=minimum))
    assert result.subtype == "L1"  # still given
    assert result.low_count is low and result.to_dict()["fab_low_count"] is low


def test_result_is_frozen():
    result = fab_classify(_table(2))
    assert isinstance(result, FABResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.subtype = "L2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.percent["large_cells"] = 100.0  # type: ignore[index]


def test_docstrings_say_research_only():
    doc = " ".join((fab_classify.__doc__ or "").split())
    assert "historical" in doc and "not a diagnosis" in doc and "research only" in doc


def test_lazy_export_and_numpy_only():
    import leukoseg.classify as classify

    assert classify.fab_classify is fab_classify
    assert classify.FABSettings is FABSettings and classify.FABResult is FABResult
    code = (
        "import sys, leukoseg.classify as c; c.fab_classify; "
        "bad = [m for m in ('sklearn', 'keras', 'tensorflow', 'torch') if m in sys.modules]; "
        "sys.exit(f'loaded {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------------
# End to end: draw, segment, score
# --------------------------------------------------------------------------------------------------


def _segment(image: np.ndarray, um_per_px: float):
    from leukoseg.segmentation import segment

    return segment(image, pixel_size=um_per_px).measurements


@pytest.mark.parametrize("seed", [0, 1])
def test_make_smear_l1_blasts_with_a_lymphocyte(seed):
    from leukoseg.synthetic import make_smear

    kinds = ("blast_L1",) * 5 + ("lymphocyte",)
    smear = make_smear(
        shape=(480, 640), um_per_px=0.3, kinds=kinds, n_touching_pairs=0, n_platelets=4, stain_jitter=0.1, seed=seed
    )
    m = _segment(smear.image, 0.3)
    # The blasts: segmented cells whose nucleus centroid lies on a true blast nucleus.
    ids = smear.nuclei[np.rint(m["y"]).astype(int), np.rint(m["x"]).astype(int)]
    blasts = np.array([i > 0 and smear.white_cells[i - 1].is_blast for i in ids])
    assert blasts.sum() == 5
    result = fab_classify(m, blasts=blasts)
    assert (result.subtype, result.n_blasts, result.n_scored) == ("L1", 5, 5)
    assert 0 <= result.score <= 2
    assert result.percent["high_nc_ratio"] >= 75.0
    assert result.percent["large_cells"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_make_smear_l2_blasts(seed):
    from leukoseg.synthetic import make_smear

    smear = make_smear(
        shape=(480, 640), um_per_px=0.3, kinds=("blast_L2",) * 6, n_touching_pairs=0, n_platelets=4,
        stain_jitter=0.1, seed=seed,
    )  # fmt: skip
    result = fab_classify(_segment(smear.image, 0.3))
    assert (result.subtype, result.n_scored) == ("L2", 6)
    assert -4 <= result.score <= -2  # low N:C and prominent nucleoli at least
    assert result.percent["low_nc_ratio"] >= 25.0
    assert result.percent["prominent_nucleoli"] >= 25.0
    assert result.percent["basophilic"] == 0.0


# A small renderer of round blasts with chosen sizes, nucleoli and vacuoles, in flat stain colours (RGB
# chosen for their blue-green excess over a background of green 214: nucleus about 95, deep blue cytoplasm
# about 33, pale cytoplasm about 19), slightly blurred, with seeded noise.
_BACKGROUND = (222.0, 214.0, 200.0)
_NUCLEUS = (120.0, 70.0, 150.0)
_NUCLEOLUS = (165.0, 130.0, 185.0)
_CYTOPLASM = {"pale": (190.0, 186.0, 202.0), "deep": (88.0, 118.0, 150.0)}
_VACUOLE = (212.0, 208.0, 204.0)


def _draw_blasts(
    cells: list[dict], *, um_per_px: float = 0.3, seed: int = 0, columns: int = 3, pitch_um: float = 26.0
) -> np.ndarray:
    """RGB image of round blasts on a grid, one per ``pitch_um`` square.

    Each cell is a dict: ``cell_d`` and ``nucleus_d`` (um), optional ``cytoplasm`` ('pale' or 'deep'),
    ``nucleoli`` (count) with ``nucleolus_d``, ``vacuoles`` (count) with ``vacuole_d``: clear discs in a
    ring just outside the nucleus, clear of the cell's edge.
    """
    import cv2

    rng = np.random.default_rng(seed)
    rows = math.ceil(len(cells) / columns)
    h, w = round(rows * pitch_um / um_per_px), round(columns * pitch_um / um_per_px)
    image = np.empty((h, w, 3), np.float32)
    image[...] = _BACKGROUND
    yy, xx = (np.mgrid[:h, :w].astype(np.float32) + 0.5) * um_per_px
    for i, c in enumerate(cells):
        dx = xx - (i % columns + 0.5) * pitch_um
        dy = yy - (i // columns + 0.5) * pitch_um
        image[np.hypot(dx, dy) <= c["cell_d"] / 2] = _CYTOPLASM[c.get("cytoplasm", "pale")]
        rn = c["nucleus_d"] / 2
        image[np.hypot(dx, dy) <= rn] = _NUCLEUS
        n = c.get("nucleoli", 0)
        for k in range(n):
            a = 2 * np.pi * k / n + rng.uniform(0, 1)
            x0, y0 = 0.4 * rn * math.cos(a), 0.4 * rn * math.sin(a)
            image[np.hypot(dx - x0, dy - y0) <= c["nucleolus_d"] / 2] = _NUCLEOLUS
        n = c.get("vacuoles", 0)
        for k in range(n):
            a = 2 * np.pi * k / n + rng.uniform(0, 0.3)
            r = rn + 0.45 + c["vacuole_d"] / 2
            image[np.hypot(dx - r * math.cos(a), dy - r * math.sin(a)) <= c["vacuole_d"] / 2] = _VACUOLE
    image = cv2.GaussianBlur(image, (0, 0), 0.25 / um_per_px)
    image += rng.normal(0.0, 2.0, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _l3_cells(rng: np.random.Generator, *, low: float = 14.0, high: float = 16.0, **changes) -> list[dict]:
    """Six L3 blasts: nucleus 64 % of the diameter (N:C 0.41), two nucleoli, deep blue, four vacuoles."""
    cell = dict(cytoplasm="deep", nucleoli=2, nucleolus_d=1.4, vacuoles=4, vacuole_d=1.2)
    cell.update(changes)
    return [dict(cell, cell_d=d, nucleus_d=0.64 * d) for d in rng.uniform(low, high, 6)]


def test_drawn_l1_blasts():
    # 9.5-12 um, nucleus 86 % of the diameter (N:C 0.74), no nucleoli, pale scanty cytoplasm.
    rng = np.random.default_rng(1)
    image = _draw_blasts([dict(cell_d=d, nucleus_d=0.86 * d) for d in rng.uniform(9.5, 12.0, 6)])
    m = _segment(image, 0.3)
    result = fab_classify(m)
    assert (result.subtype, result.score, result.n_scored) == ("L1", 2, 6)
    # The measurement sees the drawn N:C ratio, a little lower (the cell mask takes the blurred edge).
    np.testing.assert_allclose(m["nc_ratio"], 0.74, atol=0.06)


def test_drawn_l2_blasts():
    # 15.5-19 um, nucleus 66 % of the diameter (N:C 0.44), two 1.6 um nucleoli (2 um^2), pale cytoplasm.
    rng = np.random.default_rng(2)
    cells = [dict(cell_d=d, nucleus_d=0.66 * d, nucleoli=2, nucleolus_d=1.6) for d in rng.uniform(15.5, 19.0, 6)]
    result = fab_classify(_segment(_draw_blasts(cells), 0.3))
    assert (result.subtype, result.n_scored) == ("L2", 6)
    assert result.score == -3  # low N:C, prominent nucleoli, large cells (round nuclei: regular membrane)
    assert result.percent["low_nc_ratio"] == 100.0
    assert result.percent["prominent_nucleoli"] == 100.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drawn_l3_blasts(seed):
    m = _segment(_draw_blasts(_l3_cells(np.random.default_rng(seed)), seed=seed), 0.3)
    result = fab_classify(m)
    assert (result.subtype, result.n_scored) == ("L3", 6)
    assert result.percent["basophilic"] == 100.0
    assert result.percent["l3_like"] >= 50.0
    assert result.size_cv <= 0.15
    assert np.all(m["vacuole_count"] <= 4)  # no spurious vacuoles on these cells


def test_drawn_deep_blue_blasts_without_vacuoles_are_not_l3():
    m = _segment(_draw_blasts(_l3_cells(np.random.default_rng(0), vacuoles=0)), 0.3)
    result = fab_classify(m)
    assert result.percent["basophilic"] == 100.0
    assert result.percent["vacuolated"] == 0.0
    assert result.subtype == "L2"


def test_drawn_pale_vacuolated_blasts_are_not_l3():
    m = _segment(_draw_blasts(_l3_cells(np.random.default_rng(0), cytoplasm="pale")), 0.3)
    result = fab_classify(m)
    assert result.percent["basophilic"] == 0.0
    assert result.subtype == "L2"


def test_drawn_heterogeneous_l3_like_blasts_are_not_l3():
    # Deep blue and vacuolated, but 11.5 to 19 um across: CV above 0.15.
    cells = [
        dict(cell_d=d, nucleus_d=0.64 * d, cytoplasm="deep", vacuoles=4, vacuole_d=1.2)
        for d in (11.5, 12.0, 13.0, 17.0, 18.5, 19.0)
    ]
    result = fab_classify(_segment(_draw_blasts(cells), 0.3))
    assert result.size_cv > 0.15
    assert result.subtype != "L3"


def test_blast_mask_takes_predicted_blasts_or_the_most_probable_cell():
    from leukoseg.classify.fab import blast_mask

    assert blast_mask([0.2, 0.7, 0.9]).tolist() == [False, True, True]
    assert blast_mask([0.2, 0.4, 0.3]).tolist() == [False, True, False]
    assert blast_mask([0.2, 0.4], threshold=0.3).tolist() == [False, True]
    assert blast_mask([]).tolist() == []
