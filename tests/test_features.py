"""Tests of leukoseg.features: GLCM texture on hand-made images and the CellFeatures transformer."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from leukoseg.features import (
    GLCM_PROPERTIES,
    STAIN_FEATURE_NAMES,
    CellFeatures,
    cell_stain_features,
    cell_texture_features,
    glcm_features,
    texture_feature_names,
)
from leukoseg.errors import LeukosegError
from leukoseg.features.stain import lbp_feature_names, nucleus_lbp_features

# 4x4 image, two grey levels in vertical stripes two pixels wide. With levels=2 the fixed bins put 0 in
# level 0 and 255 in level 1.
STRIPES = np.array([[0, 0, 255, 255]] * 4, dtype=np.uint8)
FULL = np.ones((4, 4), dtype=bool)
ONE_PX: dict[str, Any] = {"um_per_px": 1.0, "distances_um": (1.0,), "levels": 2}


def _props(p: np.ndarray) -> dict[str, float]:
    """Properties of a normalised 2x2 symmetric GLCM, written out by hand."""
    i, j = np.indices(p.shape)
    mean = (i * p).sum()
    var = ((i - mean) ** 2 * p).sum()
    nz = p[p > 0]
    return {
        "contrast": ((i - j) ** 2 * p).sum(),
        "dissimilarity": (abs(i - j) * p).sum(),
        "homogeneity": (p / (1 + (i - j) ** 2)).sum(),
        "asm": (p**2).sum(),
        "energy": math.sqrt((p**2).sum()),
        "correlation": ((i - mean) * (j - mean) * p).sum() / var,
        "entropy": -(nz * np.log(nz)).sum(),
    }


def test_glcm_horizontal_pairs_by_hand():
    # Horizontal pairs in each row: (0,0), (0,1), (1,1). Four rows, symmetric: [[8, 4], [4, 8]] / 24.
    f = glcm_features(STRIPES, FULL, angles_deg=(0,), **ONE_PX)
    assert_allclose(f["glcm_contrast_d1.0um"], 1 / 3, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_dissimilarity_d1.0um"], 1 / 3, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_homogeneity_d1.0um"], 2 / 3 + 1 / 6, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_asm_d1.0um"], 2 / 9 + 2 / 36, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_energy_d1.0um"], math.sqrt(5 / 18), rtol=0, atol=1e-12)
    assert_allclose(f["glcm_correlation_d1.0um"], 1 / 3, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_entropy_d1.0um"], (2 / 3) * math.log(3) + (1 / 3) * math.log(6), rtol=0, atol=1e-12)


def test_glcm_angles_pool_counts():
    # Vertical pairs: columns are constant, 6 (0,0) and 6 (1,1) pairs -> symmetric [[12, 0], [0, 12]].
    # Pooled with the horizontal [[8, 4], [4, 8]]: [[20, 4], [4, 20]] / 48.
    f = glcm_features(STRIPES, FULL, angles_deg=(0, 90), **ONE_PX)
    expected = _props(np.array([[20, 4], [4, 20]]) / 48)
    assert_allclose(expected["contrast"], 1 / 6, rtol=0, atol=1e-12)
    assert_allclose(expected["homogeneity"], 11 / 12, rtol=0, atol=1e-12)
    assert_allclose(expected["asm"], 13 / 36, rtol=0, atol=1e-12)
    for prop in GLCM_PROPERTIES:
        assert_allclose(f[f"glcm_{prop}_d1.0um"], expected[prop], rtol=0, atol=1e-12)


def test_glcm_counts_only_pairs_inside_mask():
    mask = FULL.copy()
    mask[:, 3] = False
    # Columns 0, 0, 255: per row (0,0) and (0,1) -> symmetric [[8, 4], [4, 0]] / 16.
    f = glcm_features(STRIPES, mask, angles_deg=(0,), **ONE_PX)
    assert_allclose(f["glcm_contrast_d1.0um"], 1 / 2, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_homogeneity_d1.0um"], 3 / 4, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_asm_d1.0um"], 3 / 8, rtol=0, atol=1e-12)
    assert_allclose(f["glcm_entropy_d1.0um"], 1.5 * math.log(2), rtol=0, atol=1e-12)


def test_glcm_ignores_pixels_outside_mask():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    yy, xx = np.mgrid[:30, :40]
    mask = (yy - 15) ** 2 + (xx - 20) ** 2 < 12**2
    other = gray.copy()
    other[~mask] = rng.integers(0, 256, np.count_nonzero(~mask), dtype=np.uint8)
    assert glcm_features(gray, mask, um_per_px=0.5) == glcm_features(other, mask, um_per_px=0.5)


def _smooth_pattern(um_per_px: float, size_um: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """The same continuous texture sampled at pixel centres, and a disk mask, at a given pixel size."""
    n = round(size_um / um_per_px)
    centres = (np.arange(n) + 0.5) * um_per_px
    y, x = np.meshgrid(centres, centres, indexing="ij")
    value = 128 + 60 * np.sin(2 * np.pi * x / 6.0) * np.cos(2 * np.pi * y / 7.0)
    value += 50 * np.sin(2 * np.pi * (x + y) / 9.0)
    gray = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return gray, np.hypot(x - size_um / 2, y - size_um / 2) < 0.45 * size_um


def test_glcm_distances_scale_with_pixel_size():
    # 1 and 2 um are 4 and 8 px at 0.25 um/px, 2 and 4 px at 0.5 um/px. Axis-aligned angles only: at
    # 45 degrees the offsets round differently. Distance-dependent properties agree within 6% (measured
    # differences: at most 5.6% for homogeneity, 2.1% for contrast); ASM, energy and entropy also depend on
    # the number of pairs and are not compared.
    kw = {"distances_um": (1.0, 2.0), "angles_deg": (0, 90)}
    fine = glcm_features(*_smooth_pattern(0.25), um_per_px=0.25, **kw)
    coarse = glcm_features(*_smooth_pattern(0.5), um_per_px=0.5, **kw)
    wrong_scale = glcm_features(*_smooth_pattern(0.5), um_per_px=0.25, **kw)
    for prop in ("contrast", "dissimilarity", "homogeneity", "correlation"):
        for d in ("1.0", "2.0"):
            name = f"glcm_{prop}_d{d}um"
            assert_allclose(coarse[name], fine[name], rtol=0.06, atol=0.002, err_msg=name)
    # Had the distances stayed in pixels, the features would differ far more.
    assert abs(wrong_scale["glcm_contrast_d1.0um"] / fine["glcm_contrast_d1.0um"] - 1) > 1


def test_glcm_small_regions_give_zeros_without_warnings():
    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    empty = np.zeros((10, 10), dtype=bool)
    single = empty.copy()
    single[5, 5] = True
    line = empty.copy()
    line[5, 2:5] = True  # three pixels: pairs at 1 px, none at 4 px
    for mask in (empty, single):
        f = glcm_features(gray, mask, um_per_px=0.5)
        assert len(f) == len(texture_feature_names()) and all(v == 0.0 for v in f.values())
    f = glcm_features(gray, line, um_per_px=0.5, distances_um=(0.5, 2.0))
    assert len(f) == 2 * len(GLCM_PROPERTIES) and all(math.isfinite(v) for v in f.values())
    assert all(f[f"glcm_{p}_d2.0um"] == 0.0 for p in GLCM_PROPERTIES)
    assert f["glcm_homogeneity_d0.5um"] > 0


def test_glcm_uniform_region():
    gray = np.full((8, 8), 77, dtype=np.uint8)
    f = glcm_features(gray, np.ones((8, 8), dtype=bool), um_per_px=0.5, distances_um=(1.0,))
    assert f["glcm_contrast_d1.0um"] == 0.0
    assert f["glcm_asm_d1.0um"] == 1.0
    assert f["glcm_entropy_d1.0um"] == 0.0
    assert f["glcm_correlation_d1.0um"] == 1.0  # graycoprops' convention for zero variance


def test_glcm_levels_256_and_fixed_bins():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    mask = np.ones((20, 20), dtype=bool)
    f256 = glcm_features(gray, mask, um_per_px=1.0, distances_um=(1.0,), levels=256)
    assert all(math.isfinite(v) for v in f256.values())
    # Fixed 0-255 bins: a dark image is not stretched to the full range.
    dark = (gray // 8).astype(np.uint8)  # 0..31 -> one level of 8 when levels=8
    f = glcm_features(dark, mask, um_per_px=1.0, distances_um=(1.0,), levels=8)
    assert f["glcm_asm_d1.0um"] == 1.0


def test_glcm_inputs_not_modified():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    mask = rng.random((16, 16)) > 0.3
    gray_copy, mask_copy = gray.copy(), mask.copy()
    glcm_features(gray, mask, um_per_px=0.3)
    assert_array_equal(gray, gray_copy)
    assert_array_equal(mask, mask_copy)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image_copy = image.copy()
    cell_texture_features(image, mask & (rng.random((16, 16)) > 0.5), mask, um_per_px=0.3)
    assert_array_equal(image, image_copy)
    assert_array_equal(mask, mask_copy)


GOOD_GRAY = np.zeros((5, 5), dtype=np.uint8)
GOOD_MASK = np.ones((5, 5), dtype=bool)


@pytest.mark.parametrize(
    ("gray", "mask", "kw", "match"),
    [
        (GOOD_GRAY.astype(float), GOOD_MASK, {}, "uint8"),
        (np.zeros((5, 5, 3), np.uint8), GOOD_MASK, {}, "2-D"),
        (GOOD_GRAY, GOOD_MASK.astype(np.uint8), {}, "boolean"),
        (GOOD_GRAY, np.ones((5, 4), dtype=bool), {}, "shape"),
        (GOOD_GRAY, GOOD_MASK, {"um_per_px": 0.0}, "um_per_px"),
        (GOOD_GRAY, GOOD_MASK, {"um_per_px": float("nan")}, "um_per_px"),
        (GOOD_GRAY, GOOD_MASK, {"um_per_px": "0.5"}, "um_per_px"),
        (GOOD_GRAY, GOOD_MASK, {"levels": 1}, "levels"),
        (GOOD_GRAY, GOOD_MASK, {"levels": 257}, "levels"),
        (GOOD_GRAY, GOOD_MASK, {"levels": 8.0}, "levels"),
        (GOOD_GRAY, GOOD_MASK, {"distances_um": ()}, "distances_um"),
        (GOOD_GRAY, GOOD_MASK, {"distances_um": (1.0, -1.0)}, "distances_um"),
        (GOOD_GRAY, GOOD_MASK, {"distances_um": (1.0, 1.00001)}, "same feature name"),
        (GOOD_GRAY, GOOD_MASK, {"angles_deg": (0, float("nan"))}, "angles_deg"),
    ],
)
def test_glcm_bad_inputs(gray, mask, kw, match):
    kw = {"um_per_px": 0.5, **kw}
    with pytest.raises(ValueError, match=match):
        glcm_features(gray, mask, **kw)


def test_cell_texture_bad_inputs():
    mask = np.ones((6, 6), dtype=bool)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        cell_texture_features(np.zeros((6, 6), np.uint8), mask, mask, um_per_px=0.5)
    with pytest.raises(ValueError, match="uint8"):
        cell_texture_features(np.zeros((6, 6, 3)), mask, mask, um_per_px=0.5)
    with pytest.raises(ValueError, match="cell_mask"):
        cell_texture_features(np.zeros((6, 6, 3), np.uint8), mask, mask[:5], um_per_px=0.5)


def test_texture_feature_names_match_glcm_features():
    kw = {"distances_um": (0.5, 1.5), "levels": 16, "angles_deg": (0, 90)}
    names = texture_feature_names(**kw)
    rng = np.random.default_rng(3)
    f = glcm_features(rng.integers(0, 256, (9, 9), dtype=np.uint8), np.ones((9, 9), bool), um_per_px=0.5, **kw)
    assert list(f) == names
    assert len(names) == len(GLCM_PROPERTIES) * 2
    assert names[0] == "glcm_contrast_d0.5um" and names[-1] == "glcm_entropy_d1.5um"
    assert texture_feature_names(distances_um=(2,), prefix="nuc_")[0] == "nuc_glcm_contrast_d2.0um"


def test_cell_texture_uses_green_and_separates_cytoplasm():
    rng = np.random.default_rng(4)
    image = np.full((20, 20, 3), 150, dtype=np.uint8)
    cell = np.zeros((20, 20), dtype=bool)
    cell[2:18, 2:18] = True
    nucleus = np.zeros((20, 20), dtype=bool)
    nucleus[6:14, 6:14] = True
    image[..., 0] = rng.integers(0, 256, (20, 20))  # texture in red only: invisible in green
    image[6:14, 6:14, 1] = rng.integers(0, 256, (8, 8))  # texture in the green of the nucleus only
    f = cell_texture_features(image, nucleus, cell, um_per_px=0.5, distances_um=(0.5,))
    assert list(f) == texture_feature_names(distances_um=(0.5,), prefix="nuc_") + texture_feature_names(
        distances_um=(0.5,), prefix="cyto_"
    )
    assert f["nuc_glcm_contrast_d0.5um"] > 10
    assert f["cyto_glcm_contrast_d0.5um"] == 0.0  # the cytoplasm excludes the nucleus
    assert f["cyto_glcm_asm_d0.5um"] == 1.0


# CellFeatures -------------------------------------------------------------------------------------------


def _cell(rng: np.random.Generator, size: int = 24, **measurements) -> dict:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    defaults = {"cell_id": 7, "x": 3.0, "nc_ratio": 0.5, "nucleus_area_um2": 40.0, "smudge": False}
    return {
        "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "nucleus": r < size * 0.25,
        "cell": r < size * 0.45,
        "um_per_px": 0.35,
        "measurements": {**defaults, **measurements},
    }


KW: dict[str, Any] = {"distances_um": (0.5, 1.0)}


def test_cell_features_columns_are_stable_and_named():
    rng = np.random.default_rng(5)
    cells = [_cell(rng) for _ in range(3)]
    features = CellFeatures(**KW)
    assert features.fit(cells) is features  # scikit-learn's contract: fit returns the estimator
    names = features.get_feature_names_out()
    # Default measurements: numeric or bool (0/1), not bookkeeping (cell_id, x), sorted; then stain, LBP, texture.
    texture = texture_feature_names(prefix="nuc_", **KW) + texture_feature_names(prefix="cyto_", **KW)
    lbp = lbp_feature_names((0.5, 1.0, 2.0))
    assert list(names) == ["nc_ratio", "nucleus_area_um2", "smudge", *STAIN_FEATURE_NAMES, *lbp, *texture]
    bare = CellFeatures(stain=False, lbp_radii_um=(), texture=False).fit(cells)
    assert list(bare.get_feature_names_out()) == ["nc_ratio", "nucleus_area_um2", "smudge"]
    assert list(CellFeatures(**KW).fit(cells[::-1]).get_feature_names_out()) == list(names)
    chosen = CellFeatures(measurements=["nucleus_area_um2", "cell_id"], texture=False, stain=False, lbp_radii_um=())
    chosen.fit(cells)
    assert list(chosen.get_feature_names_out()) == ["nucleus_area_um2", "cell_id"]


def test_cell_features_transform_matches_columns():
    rng = np.random.default_rng(6)
    cells = [_cell(rng, nc_ratio=i / 4) for i in range(4)]
    features = CellFeatures(**KW).fit(cells)
    X = features.transform(cells)
    names = list(features.get_feature_names_out())
    assert X.shape == (4, len(names)) and X.dtype == np.float64
    assert_array_equal(X[:, names.index("nc_ratio")], [0.0, 0.25, 0.5, 0.75])
    assert_array_equal(X[:, names.index("smudge")], [0.0, 0.0, 0.0, 0.0])
    assert_array_equal(features.transform([_cell(rng, smudge=True)])[:, names.index("smudge")], [1.0])
    c = cells[2]
    tex = cell_texture_features(c["image"], c["nucleus"], c["cell"], um_per_px=0.35, **KW)
    assert_array_equal(X[2, -len(tex) :], list(tex.values()))
    stain = cell_stain_features(c["image"], c["nucleus"], c["cell"], um_per_px=0.35)
    assert_array_equal(X[2, 3 : 3 + len(stain)], list(stain.values()))
    lbp = nucleus_lbp_features(c["image"], c["nucleus"], um_per_px=0.35)
    assert_array_equal(X[2, 3 + len(stain) : 3 + len(stain) + len(lbp)], list(lbp.values()))
    # Columns follow the fitted list whatever the order of the measurement keys of new cells.
    reordered = dict(cells[1], measurements=dict(reversed(list(cells[1]["measurements"].items()))))
    assert_array_equal(features.transform([reordered]), X[1:2])
    assert_array_equal(features.fit_transform(cells), X)


def test_feature_matrix_reproduces_cell_features_from_its_settings():
    """Inference (features.rows, no scikit-learn) computes the fitted transformer's columns from its settings."""
    from leukoseg.features.rows import feature_matrix

    rng = np.random.default_rng(8)
    cells = [_cell(rng, nc_ratio=i / 3) for i in range(3)]
    for kw in ({}, {"stain": False}, {"lbp_radii_um": ()}, {"lbp_radii_um": (1.0,), "texture": False}):
        features = CellFeatures(**{**KW, **kw}).fit(cells)
        X = feature_matrix(
            cells, features.measurement_names_, texture=features.texture, stain=features.stain,
            lbp_radii_um=features.lbp_radii_um, distances_um=features.distances_um, levels=features.levels,
            angles_deg=features.angles_deg,
        )  # fmt: skip
        assert X.shape == (3, len(features.get_feature_names_out()))
        assert_array_equal(X, features.transform(cells))
    assert feature_matrix([], ["a"], stain=True, lbp_radii_um=(1.0,), texture=False).shape == (0, 1 + 23 + 10)
    with pytest.raises(ValueError, match="lbp_radii_um"):
        feature_matrix(cells, [], lbp_radii_um=(1.0, 1.0))


def test_cell_features_missing_measurement_is_an_error():
    rng = np.random.default_rng(7)
    features = CellFeatures(**KW).fit([_cell(rng)])
    broken = _cell(rng)
    del broken["measurements"]["nc_ratio"]
    with pytest.raises(ValueError, match=r"cell 1 has no measurement 'nc_ratio'"):
        features.transform([_cell(rng), broken])
    with pytest.raises(ValueError, match="nc_ratio"):
        CellFeatures(**KW).fit([_cell(rng), broken])
    with pytest.raises(ValueError, match="no 'image'"):
        features.transform([{k: v for k, v in _cell(rng).items() if k != "image"}])
    with pytest.raises(ValueError, match="not a number"):
        features.transform([_cell(rng, nc_ratio="high")])
    with pytest.raises(ValueError, match="cell 0: .*uint8"):
        features.transform([dict(_cell(rng), image=_cell(rng)["image"].astype(float))])


def test_cell_features_fit_and_api_errors():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        CellFeatures().transform([])
    with pytest.raises(ValueError, match="at least one cell"):
        CellFeatures().fit([])
    with pytest.raises(ValueError, match="sequence of cell mappings"):
        CellFeatures().fit({"image": None})
    with pytest.raises(ValueError, match="not the string"):
        CellFeatures(measurements="nc_ratio").fit([_cell(np.random.default_rng(8))])
    with pytest.raises(ValueError, match="levels"):
        CellFeatures(levels=1).fit([_cell(np.random.default_rng(8))])
    params = CellFeatures(measurements=("a",), levels=16).get_params()
    assert clone(CellFeatures(**params)).get_params() == params


def test_cell_features_in_a_pipeline():
    from sklearn.pipeline import make_pipeline

    from leukoseg.classify import make_knn

    rng = np.random.default_rng(9)
    cells = [_cell(rng, nc_ratio=float(i % 2)) for i in range(12)]
    y = np.arange(12) % 2
    extractor = CellFeatures(measurements=["nc_ratio"], texture=False, stain=False, lbp_radii_um=())
    model = make_pipeline(extractor, make_knn(n_neighbors=3))
    assert_array_equal(model.fit(cells, y).predict(cells), y)


def test_packages_import_light():
    code = (
        "import sys, leukoseg.features, leukoseg.classify; "
        "heavy = [m for m in ('sklearn', 'skimage', 'deap') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Stain and LBP features ----------------------------------------------------------------------------------


def _stained_cell(brightness: float = 1.0, size: int = 40):
    """A round cell: dark granular nucleus, blue cytoplasm, pale background; `brightness` scales the light."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    nucleus, cell = r < size * 0.25, r < size * 0.4
    image = np.empty((size, size, 3))
    image[:] = (210, 200, 215)
    image[cell] = (150, 150, 200)
    image[nucleus] = (90, 40, 130)
    image[nucleus] *= rng.uniform(0.8, 1.2, (int(nucleus.sum()), 1))
    return np.clip(image * brightness, 0, 255).astype(np.uint8), nucleus, cell


def test_stain_features_are_relative_to_the_background():
    image, nucleus, cell = _stained_cell()
    f = cell_stain_features(image, nucleus, cell, um_per_px=0.25)
    assert list(f) == list(STAIN_FEATURE_NAMES)
    assert all(np.isfinite(v) for v in f.values())
    assert f["nucleus_od_g_mean"] > f["cytoplasm_od_g_mean"] > 0  # the nucleus absorbs most
    assert 1.5 <= f["cytoplasm_rim_um"] <= 1.8  # radii 10 and 16 px: the outline lies ~6.5 px (1.6 um) from the edge
    assert_allclose(f["cytoplasm_area_um2"], (cell & ~nucleus).sum() * 0.0625)
    dim = cell_stain_features(*_stained_cell(0.8), um_per_px=0.25)
    # A dimmer photo of the same cell: raw colours change by 20 %, optical densities much less.
    assert abs(dim["nucleus_od_g_mean"] - f["nucleus_od_g_mean"]) < 0.05
    assert abs(dim["cytoplasm_od_b_mean"] - f["cytoplasm_od_b_mean"]) < 0.05


def test_stain_features_edge_cases_and_errors():
    image, nucleus, cell = _stained_cell()
    f = cell_stain_features(image, nucleus, nucleus, um_per_px=0.25)  # no cytoplasm
    assert np.isnan(f["cytoplasm_od_g_mean"]) and f["cytoplasm_area_um2"] == 0.0
    empty = np.zeros_like(nucleus)
    g = cell_stain_features(image, empty, cell, um_per_px=0.25)
    assert g["nucleus_od_r_mean"] == 0.0 and g["cytoplasm_rim_um"] == 0.0 and g["chromatin_band_1um"] == 0.0
    with pytest.raises(ValueError, match="uint8"):
        cell_stain_features(image.astype(float), nucleus, cell, um_per_px=0.25)
    with pytest.raises(ValueError, match="nucleus_mask"):
        cell_stain_features(image, nucleus.astype(int), cell, um_per_px=0.25)
    with pytest.raises(ValueError, match="um_per_px"):
        cell_stain_features(image, nucleus, cell, um_per_px=0.0)


def test_nucleus_lbp_histograms():
    image, nucleus, _ = _stained_cell()
    f = nucleus_lbp_features(image, nucleus, um_per_px=0.25, radii_um=(0.5, 1.0))
    assert list(f) == lbp_feature_names((0.5, 1.0))
    for r in ("0.5", "1"):
        assert_allclose(sum(v for k, v in f.items() if k.startswith(f"nuc_lbp_r{r}um_")), 1.0)
    empty = nucleus_lbp_features(image, np.zeros_like(nucleus), um_per_px=0.25)
    assert list(empty) == lbp_feature_names((0.5, 1.0, 2.0)) and all(v == 0.0 for v in empty.values())
    with pytest.raises(ValueError, match="lbp_radii_um"):
        CellFeatures(lbp_radii_um=(1.0, -1.0)).fit([_cell(np.random.default_rng(0))])


def test_stain_morphology_matches_scipy_ndimage():
    """The OpenCV forms in features.stain give SciPy's results (they replace scipy.ndimage to start faster)."""
    from scipy import ndimage as ndi

    from leukoseg.features import stain

    rng = np.random.default_rng(12)
    for trial in range(20):
        h, w = rng.integers(5, 40, size=2)
        mask = ndi.binary_opening(rng.random((h, w)) < 0.6)
        if trial % 5 == 0:
            mask[0, :] = True  # touching the edge
        for it in (1, 2, 3):
            assert_array_equal(stain._dilate(mask, it), ndi.binary_dilation(mask, iterations=it))
            assert_array_equal(stain._erode(mask, it), ndi.binary_erosion(mask, iterations=it))
        if not mask.all():
            assert_allclose(stain._distance_to_background(mask), ndi.distance_transform_edt(mask), rtol=1e-6)
        values = rng.random((h, w)) * 255
        for sigma in (0.7, 1.9, 4.2):
            assert_allclose(stain._gaussian(values, sigma), ndi.gaussian_filter(values, sigma), rtol=0, atol=1e-6)


# --- the crop's context ---------------------------------------------------------------------------------


def test_context_lets_the_nucleus_lbp_see_the_smear_around_the_box():
    """With the bare bounding box, LBP circles of nucleus pixels near its edge fall outside the crop (read as
    0); a context wider than the largest radius (2 um) plus a pixel gives the histogram of the cell in its
    smear, the same for any wider context."""
    from leukoseg.features import CellFeatures
    from leukoseg.pipelines.cache import _cells_for_features
    from leukoseg.segmentation import segment
    from leukoseg.synthetic import make_smear

    smear = make_smear(shape=(300, 400), kinds=("blast_L1", "lymphocyte"), n_touching_pairs=0, seed=4)
    seg = segment(smear.image)
    inside = ~np.asarray(seg.measurements["touches_border"], bool)
    assert inside.any()

    def lbp(context_um: float) -> np.ndarray:
        cells = _cells_for_features(smear.image, seg, context_um=context_um)
        features = CellFeatures(measurements=(), texture=False, stain=False, context_um=context_um).fit(cells)
        return features.transform(cells)[inside]

    pad = 2.0 + 2 * seg.um_per_px  # the largest radius, and a pixel to spare
    np.testing.assert_array_equal(lbp(pad), lbp(pad + 5.0))
    assert CellFeatures().context_um == 4.0 > pad  # the default holds the circles at the working scale
    assert np.abs(lbp(0.0) - lbp(pad)).max() > 0.01  # the bare box reads zeros beyond its edge
    # The crop grows by ceil(context / pixel size) pixels a side, within the image.
    m = seg.measurements
    bare, wide = (_cells_for_features(smear.image, seg, context_um=c) for c in (0.0, pad))
    n = int(np.ceil(pad / seg.um_per_px))
    for i in np.flatnonzero(inside):
        h, w = bare[i]["image"].shape[:2]
        assert (h, w) == (m["bbox_y1"][i] - m["bbox_y0"][i], m["bbox_x1"][i] - m["bbox_x0"][i])
        top, left = min(n, m["bbox_y0"][i]), min(n, m["bbox_x0"][i])
        assert wide[i]["image"].shape[0] == min(300, m["bbox_y1"][i] + n) - (m["bbox_y0"][i] - top)
        assert np.array_equal(wide[i]["cell"][top:top + h, left:left + w], bare[i]["cell"])
        assert wide[i]["cell"].sum() == bare[i]["cell"].sum()  # the margin holds no pixel of this cell


@pytest.mark.parametrize("context", [-1.0, float("nan"), float("inf"), True, "2"])
def test_context_must_be_a_finite_number_of_micrometres(context):
    from leukoseg.features import CellFeatures
    from leukoseg.pipelines.experiment import check_feature_params

    cell = {"image": np.full((8, 8, 3), 200, np.uint8), "nucleus": np.ones((8, 8), bool),
            "cell": np.ones((8, 8), bool), "um_per_px": 0.5, "measurements": {}}  # fmt: skip
    with pytest.raises(ValueError, match="context_um must be a finite number of micrometres >= 0"):
        CellFeatures(context_um=context).fit([cell])
    with pytest.raises(LeukosegError, match="invalid feature settings: context_um must be"):
        check_feature_params({"context_um": context})



def test_feature_settings_are_all_checked_before_any_work():
    """check_feature_params refuses what CellFeatures would refuse when fitted, not only the crop context."""
    from leukoseg.pipelines.experiment import check_feature_params

    check_feature_params({"context_um": 0, "levels": 16})
    for params, message in (({"levels": 1}, "levels must be an integer from 2 to 256"),
                            ({"distances_um": (-1,)}, "distances_um must all be positive"),
                            ({"lbp_radii_um": (0,)}, "lbp_radii_um must be distinct positive numbers")):  # fmt: skip
        with pytest.raises(LeukosegError, match=f"invalid feature settings: {message}"):
            check_feature_params(params)


def test_a_cell_that_fills_its_crop_has_a_missing_rim_not_an_infinite_one():
    """No pixel outside the cell: the rim cannot be measured; NaN (imputed later), without a warning."""
    from leukoseg.features.stain import cell_stain_features

    image = np.full((20, 20, 3), 150, np.uint8)
    cell = np.ones((20, 20), bool)
    nucleus = np.zeros((20, 20), bool)
    nucleus[5:15, 5:15] = True
    f = cell_stain_features(image, nucleus, cell, um_per_px=0.5)  # pytest turns a RuntimeWarning into an error
    assert math.isnan(f["cytoplasm_rim_um"]) and math.isnan(f["cytoplasm_rim_p10_um"])
    cell[0, 0] = False  # one pixel outside: measurable again, finite
    f = cell_stain_features(image, nucleus, cell, um_per_px=0.5)
    assert math.isfinite(f["cytoplasm_rim_um"]) and math.isfinite(f["cytoplasm_rim_p10_um"])
