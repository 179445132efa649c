"""Tests of the synthetic smear generator: determinism, exact ground truth, scale, samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage as ndi

from leukoseg.io import find_images, read_image
from leukoseg.synthetic import (
    KINDS,
    SyntheticCell,
    main,
    make_smear,
    render_cell,
    touching_discs,
)

SMALL: dict[str, Any] = dict(shape=(256, 320), um_per_px=0.3, n_platelets=4)
EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def smear():
    return make_smear(
        shape=(384, 512),
        kinds=("blast_L1", "blast_L2", "blast_L3", "neutrophil", "lymphocyte", "blast_L1"),
        n_touching_pairs=2,
        seed=3,
    )


def _arrays(s):
    return (s.image, s.nuclei, s.cells, s.red_cells, s.platelets)


def test_same_seed_is_byte_identical():
    a = make_smear(**SMALL, seed=7)
    b = make_smear(**SMALL, seed=7)
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert a.white_cells == b.white_cells
    assert a.touching_pairs == b.touching_pairs


def test_other_seed_differs():
    a = make_smear(**SMALL, seed=7)
    b = make_smear(**SMALL, seed=8)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.cells, b.cells)


def test_generator_seed():
    a = make_smear(**SMALL, seed=np.random.default_rng(11))
    b = make_smear(**SMALL, seed=np.random.default_rng(11))
    assert_array_equal(a.image, b.image)
    rng = np.random.default_rng(11)
    c, d = make_smear(**SMALL, seed=rng), make_smear(**SMALL, seed=rng)  # the generator advances
    assert not np.array_equal(c.image, d.image)


def test_types_and_shapes(smear):
    h, w = 384, 512
    assert smear.image.shape == (h, w, 3) and smear.image.dtype == np.uint8
    assert smear.nuclei.shape == smear.cells.shape == (h, w)
    assert smear.nuclei.dtype == smear.cells.dtype == np.int32
    assert smear.red_cells.dtype == smear.platelets.dtype == bool
    assert smear.um_per_px == 0.3
    assert all(isinstance(c, SyntheticCell) for c in smear.white_cells)
    assert [c.cell_id for c in smear.white_cells] == list(range(1, 7))
    assert [c.is_blast for c in smear.white_cells] == [c.kind.startswith("blast") for c in smear.white_cells]


def test_the_ground_truth_is_read_only(smear):
    for name in ("image", "nuclei", "cells", "red_cells", "platelets"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(smear, name)[0, 0] = 1


def test_label_ids_match_records(smear):
    ids = {c.cell_id for c in smear.white_cells}
    assert set(np.unique(smear.nuclei)) - {0} == ids
    assert set(np.unique(smear.cells)) - {0} == ids


def test_centroids_and_diameters_from_masks(smear):
    px = smear.um_per_px
    for c in smear.white_cells:
        rr, cc = np.nonzero(smear.nuclei == c.cell_id)
        assert_allclose([c.x, c.y], [cc.mean(), rr.mean()], rtol=0, atol=1e-9)
        n_cell = np.count_nonzero(smear.cells == c.cell_id)
        assert_allclose(c.nucleus_diameter_um, 2 * np.sqrt(rr.size / np.pi) * px, rtol=0, atol=1e-9)
        assert_allclose(c.cell_diameter_um, 2 * np.sqrt(n_cell / np.pi) * px, rtol=0, atol=1e-9)
        assert c.nucleus_diameter_um < c.cell_diameter_um


def test_nuclei_inside_their_cells(smear):
    inside = smear.nuclei > 0
    assert_array_equal(smear.cells[inside], smear.nuclei[inside])


def test_white_cells_on_top(smear):
    white = smear.cells > 0
    assert not (smear.red_cells & white).any()
    assert not (smear.platelets & white).any()
    assert smear.red_cells.mean() > 0.25  # red_cell_density 0.45 by default
    assert smear.platelets.any()


def test_no_white_cell_touches_border(smear):
    c = smear.cells
    assert not (c[0].any() or c[-1].any() or c[:, 0].any() or c[:, -1].any())


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndi.binary_dilation(a, EIGHT) & b).any())


def test_touching_pairs_touch_and_others_do_not(smear):
    assert smear.touching_pairs == ((1, 2), (3, 4))
    ids = [c.cell_id for c in smear.white_cells]
    paired = {frozenset(p) for p in smear.touching_pairs}
    for i in ids:
        for j in ids:
            if i >= j:
                continue
            a, b = smear.cells == i, smear.cells == j
            assert not (a & b).any()
            assert _touch(a, b) == (frozenset((i, j)) in paired), (i, j)
            # Nuclei are separate: never 8-adjacent, even inside a touching pair.
            assert not _touch(smear.nuclei == i, smear.nuclei == j), (i, j)


def test_each_label_is_one_piece(smear):
    for c in smear.white_cells:
        _, n = ndi.label(smear.cells == c.cell_id, EIGHT)
        assert n == 1


def test_colours_look_stained(smear):
    img = smear.image.astype(float)
    background = (smear.cells == 0) & ~smear.red_cells & ~smear.platelets
    bg = np.median(img[background], axis=0)
    rbc = np.median(img[ndi.binary_erosion(smear.red_cells, iterations=2)], axis=0)
    nuc = np.median(img[ndi.binary_erosion(smear.nuclei > 0, iterations=2)], axis=0)
    assert bg.min() > 180 and bg[0] >= bg[2]  # pale beige
    assert rbc[0] > rbc[1] + 20 and rbc[0] < bg[0] + 3  # pinkish red cells
    assert nuc[2] > nuc[1] + 50 and nuc[0] > nuc[1] and nuc.sum() < rbc.sum() - 150  # purple nuclei


def test_sizes_scale_with_um_per_px():
    kinds = ("blast_L2", "lymphocyte", "neutrophil", "blast_L1")
    coarse = make_smear(shape=(200, 260), um_per_px=0.4, kinds=kinds, n_touching_pairs=1, seed=5)
    fine = make_smear(shape=(400, 520), um_per_px=0.2, kinds=kinds, n_touching_pairs=1, seed=5)
    assert [c.kind for c in coarse.white_cells] == [c.kind for c in fine.white_cells] == list(kinds)
    for a, b in zip(coarse.white_cells, fine.white_cells):
        assert_allclose(a.cell_diameter_um, b.cell_diameter_um, rtol=0.05)
        assert_allclose(a.nucleus_diameter_um, b.nucleus_diameter_um, rtol=0.05)
        # Same position in µm (pixel centres at (k + 0.5) * um_per_px).
        um_a = ((a.x + 0.5) * 0.4, (a.y + 0.5) * 0.4)
        assert_allclose(um_a, ((b.x + 0.5) * 0.2, (b.y + 0.5) * 0.2), atol=0.4)
    assert_allclose(coarse.red_cells.mean(), fine.red_cells.mean(), atol=0.03)


def test_stain_and_illumination_change_colours_only():
    plain = make_smear(**SMALL, seed=2)
    varied = make_smear(**SMALL, seed=2, stain_jitter=1.0, illumination=1.0)
    assert_array_equal(plain.nuclei, varied.nuclei)
    assert_array_equal(plain.cells, varied.cells)
    assert_array_equal(plain.red_cells, varied.red_cells)
    assert plain.white_cells == varied.white_cells
    assert np.abs(plain.image.astype(int) - varied.image.astype(int)).mean() > 3


@pytest.mark.parametrize(
    ("kind", "cell_range", "nc_range"),
    [
        ("lymphocyte", (6.5, 9.5), (0.78, 0.95)),
        ("neutrophil", (9.5, 13.0), (0.2, 0.7)),
        ("blast_L1", (8.5, 12.5), (0.75, 0.95)),
        ("blast_L2", (11.0, 20.0), (0.5, 0.85)),
        ("blast_L3", (11.0, 18.0), (0.55, 0.85)),
    ],
)
def test_render_cell_sizes(kind, cell_range, nc_range):
    for seed in range(3):
        crop = render_cell(kind, seed=seed)
        (cell,) = crop.white_cells
        assert cell.cell_id == 1 and cell.kind == kind
        assert cell_range[0] <= cell.cell_diameter_um <= cell_range[1]
        assert nc_range[0] <= cell.nucleus_diameter_um / cell.cell_diameter_um <= nc_range[1]
        h, w = crop.cells.shape
        assert h == w and crop.image.shape == (h, w, 3)
        rr, cc = np.nonzero(crop.cells == 1)
        assert abs(rr.mean() - (h - 1) / 2) < 0.1 * h and abs(cc.mean() - (w - 1) / 2) < 0.1 * w
        assert crop.cells[0].sum() == crop.cells[-1].sum() == 0  # the whole cell is in the crop
        if kind == "blast_L3":
            assert cell.n_vacuoles >= 3 and cell.n_nucleoli >= 1
        elif kind == "blast_L2":
            assert cell.n_nucleoli >= 1 and cell.n_vacuoles == 0
        elif kind in ("lymphocyte", "neutrophil"):
            assert cell.n_nucleoli == cell.n_vacuoles == 0
    assert_array_equal(render_cell(kind, seed=1).image, render_cell(kind, seed=1).image)


def test_render_cell_size_and_scale():
    crop = render_cell("blast_L1", um_per_px=0.15, size=200, seed=0)
    assert crop.image.shape == (200, 200, 3)
    same = render_cell("blast_L1", um_per_px=0.3, size=100, seed=0)
    assert_allclose(crop.white_cells[0].cell_diameter_um, same.white_cells[0].cell_diameter_um, rtol=0.05)


def test_neutrophil_nucleus_is_lobed():
    for seed in range(3):
        nuc = render_cell("neutrophil", um_per_px=0.15, seed=seed).nuclei == 1
        # Lobes are joined by thin strands: an opening removes the strands and leaves 3-5 lobes.
        opened = ndi.binary_opening(nuc, structure=np.ones((5, 5), bool))
        _, n = ndi.label(opened)
        assert 3 <= n <= 5


@pytest.mark.parametrize("overlap", [0, 1, 4, 10])
def test_touching_discs(overlap):
    image, labels = touching_discs(shape=(64, 96), radius=14, overlap=overlap)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    a, b = labels == 1, labels == 2
    assert _touch(a, b)
    for m in (a, b):
        assert ndi.label(m)[1] == 1
        assert abs(m.sum() - np.pi * 14**2) < 0.25 * np.pi * 14**2
    assert_array_equal(image[labels == 0], np.broadcast_to([225, 215, 200], ((labels == 0).sum(), 3)))
    assert_array_equal(image[labels > 0], np.broadcast_to([110, 50, 150], ((labels > 0).sum(), 3)))
    # The discs share a longer border the more they overlap.
    assert (ndi.binary_dilation(a, EIGHT) & b).sum() >= 1 + overlap


def test_touching_discs_default_and_errors():
    image, labels = touching_discs()
    assert labels.shape == (64, 96)
    with pytest.raises(ValueError, match="too small"):
        touching_discs(shape=(20, 40), radius=14)
    with pytest.raises(ValueError, match="overlap"):
        touching_discs(overlap=-1)
    with pytest.raises(ValueError, match="radius"):
        touching_discs(radius=1)


def test_inputs_not_mutated():
    kinds = ["blast_L1", "lymphocyte"]
    shape = [128, 160]
    make_smear(shape=shape, kinds=kinds, seed=0)
    assert kinds == ["blast_L1", "lymphocyte"] and shape == [128, 160]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(kinds=("monocyte",)), r"unknown white-cell kind\(s\) \['monocyte'\]"),
        (dict(kinds="blast_L1"), "kinds must be a sequence of kind names, not a single string"),
        (dict(kinds=("blast_L1",), n_touching_pairs=1), r"n_touching_pairs must be in \[0, 0\] for 1 white cells"),
        (dict(n_touching_pairs=-1), r"n_touching_pairs must be in \[0, 2\]"),
        (dict(red_cell_density=0.9), "red_cell_density must be in"),
        (dict(stain_jitter=1.5), "stain_jitter must be in"),
        (dict(illumination=-0.1), "illumination must be in"),
        (dict(n_platelets=-1), "n_platelets must be >= 0"),
        (dict(um_per_px=0.0), "um_per_px must be in"),
        (dict(shape=(8, 8)), "shape must be at least 16x16 pixels"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_smear(**kwargs)


def test_bad_seed_type_and_kind():
    with pytest.raises(TypeError, match="seed must be an int or a numpy.random.Generator, got float"):
        make_smear(seed=1.5)
    with pytest.raises(ValueError, match="unknown"):
        render_cell("myeloblast")


def test_crowded_field_leaves_cells_out(caplog):
    s = make_smear(shape=(64, 64), kinds=("blast_L2",) * 6, n_touching_pairs=0, seed=0)
    assert 1 <= len(s.white_cells) < 6
    assert set(np.unique(s.cells)) - {0} == {c.cell_id for c in s.white_cells}
    assert "left out" in caplog.text


def test_a_cell_the_border_must_cut_is_warned_about(caplog):
    """Where no place clear of the border is left, a cell is placed where the border cuts it, and says so."""
    s = make_smear(shape=(96, 96), kinds=("blast_L2",) * 4, n_touching_pairs=0, red_cell_density=0, n_platelets=0,
                   seed=0)  # fmt: skip
    c = s.cells
    cut = set(np.unique(np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]]))) - {0}
    assert cut  # this field is too small for four blasts clear of the border
    assert "clear of the image border; placed where the border may cut them" in caplog.text


def test_write_samples_round_trip(tmp_path):
    folder = tmp_path / "samples"
    assert main([str(folder), "--seed", "0"]) == 0
    names = sorted(p.name for p in folder.iterdir())
    expected = [f"smear_0{k}{ext}" for k in (1, 2, 3) for ext in (".jpg", ".truth.json", ".truth.npz")]
    assert names == sorted([*expected, "README.md"])
    assert [p.name for p in find_images([folder])] == ["smear_01.jpg", "smear_02.jpg", "smear_03.jpg"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_500_000
    # The bundled sample_images/README.md is the generator's own: regenerating must not change it.
    bundled = Path(__file__).resolve().parents[1] / "sample_images" / "README.md"
    assert (folder / "README.md").read_text(encoding="utf-8") == bundled.read_text(encoding="utf-8")
    kinds_seen = set()
    for k in (1, 2, 3):
        truth = json.loads((folder / f"smear_0{k}.truth.json").read_text(encoding="utf-8"))
        image = read_image(folder / f"smear_0{k}.jpg")
        assert image.shape == (768, 1024, 3)
        with np.load(folder / f"smear_0{k}.truth.npz", allow_pickle=False) as npz:
            nuclei, cells = npz["nuclei"], npz["cells"]
            assert npz["red_cells"].dtype == bool
        assert nuclei.shape == cells.shape == image.shape[:2] and nuclei.dtype == np.int32
        ids = [c["id"] for c in truth["cells"]]
        assert set(np.unique(nuclei)) - {0} == set(ids) == set(np.unique(cells)) - {0}
        for c in truth["cells"]:
            rr, cc = np.nonzero(nuclei == c["id"])
            assert_allclose([c["x"], c["y"]], [cc.mean(), rr.mean()], atol=1e-9)
            kinds_seen.add(c["kind"])
        assert 0.2 <= truth["um_per_px"] <= 0.4
        assert truth["image"] == f"smear_0{k}.jpg"
        if k == 2:
            assert not any(c["is_blast"] for c in truth["cells"])
        else:
            assert truth["touching_pairs"]
    assert kinds_seen == set(KINDS)
    assert "synthetic" in (folder / "README.md").read_text(encoding="utf-8")


def test_spots_cut_away_with_their_cell_are_not_counted():
    # A nucleolus or vacuole is counted in a cell's record only where it was drawn: a touching neighbour or
    # the image's edge can cut part of the cell away, and the spots in that part with it.
    from leukoseg.synthetic import _n_spots_inside

    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # the right half of the cell's box went to a neighbour
    spots = np.array([[2.0, 0.0, 0.5],  # column 7: in the half cut away
                      [-2.0, 0.0, 0.5],  # column 3: kept
                      [-2.0, -6.0, 0.5],  # row -1: beyond the box (the image's edge)
                      [-2.0, 5.0, 0.5]])  # row 10: beyond the box
    # 1 um per pixel, the cell's centre at (5, 5) um from the box's top-left corner.
    assert _n_spots_inside(spots, (5.0, 5.0), 1.0, mask, (0, 0)) == 1
    assert _n_spots_inside(spots, (9.0, 7.0), 1.0, mask, (4, 2)) == 1  # the same, the box elsewhere
    assert _n_spots_inside(spots * 2.0, (10.0, 10.0), 2.0, mask, (0, 0)) == 1  # 2 um per pixel
    assert _n_spots_inside(spots[:0], (5.0, 5.0), 1.0, mask, (0, 0)) == 0
    assert _n_spots_inside(spots[:2], (5.0, 5.0), 1.0, np.ones((10, 10), bool), (0, 0)) == 2


def test_a_touching_neighbour_cuts_a_vacuole_away_from_the_count():
    # Cell 2 of this smear is drawn with 9 vacuoles; its touching neighbour (cell 1) takes the part of the
    # cell that holds one of them, so 8 are in the cell and 8 are counted.
    smear = make_smear(shape=(400, 500), kinds=("blast_L3", "blast_L3", "blast_L2", "blast_L3"), n_touching_pairs=2,
                       seed=4)  # fmt: skip
    assert (1, 2) in smear.touching_pairs
    assert [(c.cell_id, c.n_vacuoles) for c in smear.white_cells] == [(1, 6), (2, 8), (3, 0), (4, 5)]

