"""Accuracy of the per-cell FAB measurements of `leukoseg segment` against synthetic truth.

Synthetic smears (:func:`leukoseg.synthetic.make_smear`) know every white cell's kind, diameters, nucleoli
and vacuoles. Each is matched to the nearest detected cell; the script prints, per kind, the true and the
measured vacuole and nucleoli counts, the share of cells measured "vacuolated" (2 or more vacuoles, the FAB
L3 cut-off), the mean relative error of the cell diameter, the mean absolute error of the N:C area ratio
(truth: the squared ratio of the drawn nucleus and cell diameters) and the mean intersection over union of
the detected cell with the drawn one (its outline); then the same outline figures on the bundled
``sample_images/`` (also drawn, with truth files, at other scales and with touching cells). With
ALL-IDB1 present it also prints the vacuole counts of the cells of its healthy images (lymphocytes and
neutrophils, which have no vacuoles: every vacuole found there is spurious).

    python benchmarks/measurement_accuracy.py [--smears 12] [--data-dir DIR] [--every K] [--no-purple-nuclei]
        [--cytoplasm-open-um UM] [--no-stain-above-red-cells]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

KINDS = ("blast_L1", "blast_L2", "blast_L3", "lymphocyte", "blast_L3", "neutrophil")
MATCH_RADIUS_PX = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--smears", type=int, default=12, help="synthetic smears (seeds 0..N-1)")
    parser.add_argument("--every", type=int, default=1, help="use every K-th healthy ALL-IDB1 image")
    parser.add_argument("--no-purple-nuclei", action="store_true",
                        help="segment without the purple-chromatin rule (segment(purple_nuclei=False)), to compare")
    parser.add_argument("--cytoplasm-open-um", type=float, default=None,
                        help="segment(cytoplasm_open_um=...), to compare (0.7: the outlines of earlier releases)")
    parser.add_argument("--no-stain-above-red-cells", action="store_true",
                        help="the stain threshold from the glass alone (segment(stain_above_red_cells=False)), as "
                             "in earlier releases, to compare")
    args = parser.parse_args()
    kw = {"purple_nuclei": not args.no_purple_nuclei, "stain_above_red_cells": not args.no_stain_above_red_cells}
    if args.cytoplasm_open_um is not None:
        kw["cytoplasm_open_um"] = args.cytoplasm_open_um

    from leukoseg.segmentation import segment
    from leukoseg.synthetic import make_smear

    rows = defaultdict(list)
    missed: defaultdict[str, int] = defaultdict(int)
    for seed in range(args.smears):
        smear = make_smear(shape=(512, 640), kinds=KINDS, n_touching_pairs=0, seed=seed)
        seg = segment(smear.image, **kw)
        m = seg.measurements
        for cell in smear.white_cells:
            d = np.hypot(m["x"] - cell.x, m["y"] - cell.y)
            if d.size == 0 or d.min() > MATCH_RADIUS_PX:
                missed[cell.kind] += 1
                continue
            i = int(np.argmin(d))
            rows[cell.kind].append((
                cell.n_vacuoles, m["vacuole_count"][i], cell.n_nucleoli, m["nucleoli_count"][i],
                m["cell_diameter_um"][i] / cell.cell_diameter_um - 1.0,
                m["nc_ratio"][i] - (cell.nucleus_diameter_um / cell.cell_diameter_um) ** 2,
                _iou(seg.cells == m["cell_id"][i], smear.cells == cell.cell_id),
            ))  # fmt: skip

    print(f"Synthetic smears: {args.smears} (seeds 0-{args.smears - 1}), cells matched within {MATCH_RADIUS_PX:g} px")
    print(f"{'kind':<11}{'cells':>6}{'missed':>7}{'vac true':>9}{'vac meas':>9}{'>=2 meas':>9}"
          f"{'nucl true':>10}{'nucl meas':>10}{'diam err':>9}{'N:C err':>8}{'IoU':>6}")  # fmt: skip
    for kind in sorted(rows):
        a = np.array(rows[kind], dtype=np.float64)
        print(f"{kind:<11}{len(a):>6}{missed[kind]:>7}{a[:, 0].mean():>9.2f}{a[:, 1].mean():>9.2f}"
              f"{(a[:, 1] >= 2).mean():>9.2f}{a[:, 2].mean():>10.2f}{a[:, 3].mean():>10.2f}"
              f"{np.abs(a[:, 4]).mean():>9.3f}{np.abs(a[:, 5]).mean():>8.3f}{a[:, 6].mean():>6.3f}")  # fmt: skip

    _samples(kw)

    if args.data_dir.is_dir():
        from leukoseg.datasets import load_dataset
        from leukoseg.io import read_image

        ds = load_dataset("all-idb1", args.data_dir)
        healthy = [r for r in ds.records if r.label == "0"][:: args.every]
        counts = np.concatenate([segment(read_image(r.path), **kw).measurements["vacuole_count"] for r in healthy])
        print(f"\nALL-IDB1 healthy images: {len(healthy)}, {len(counts)} cells; vacuoles per cell "
              f"{counts.mean():.3f}; cells with >= 1: {(counts >= 1).mean():.3f}, >= 2: {(counts >= 2).mean():.3f}")  # fmt: skip
    else:
        print(f"\nALL-IDB1 not found at {args.data_dir}: healthy-cell vacuole counts skipped")
    return 0


def _samples(kw: dict) -> None:
    """Outline IoU and cell-diameter error of the bundled samples' white cells, against their truth files."""
    import json
    from pathlib import Path

    from leukoseg.io import read_image
    from leukoseg.segmentation import segment

    folder = Path(__file__).resolve().parent.parent / "sample_images"
    rows = []
    for path in sorted(folder.glob("*.jpg")):
        truth = json.loads(path.with_suffix(".truth.json").read_text())
        with np.load(path.with_suffix(".truth.npz"), allow_pickle=False) as npz:
            cells = npz["cells"]
        seg = segment(read_image(path), **kw)
        m = seg.measurements
        for cell in truth["cells"]:
            d = np.hypot(m["x"] - cell["x"], m["y"] - cell["y"])
            if d.size == 0 or d.min() > MATCH_RADIUS_PX:
                continue  # missed: the README names the one drawn cell segment does not find
            i = int(np.argmin(d))
            rows.append((_iou(seg.cells == m["cell_id"][i], cells == cell["id"]),
                         m["cell_diameter_um"][i] / cell["cell_diameter_um"] - 1.0))  # fmt: skip
    a = np.array(rows)
    print(f"\nBundled samples ({folder.name}/, {len(a)} matched cells): outline IoU mean {a[:, 0].mean():.3f}, "
          f"lowest {a[:, 0].min():.3f}; cell diameter error mean {a[:, 1].mean():+.3f}, largest {a[:, 1].max():+.3f}")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


if __name__ == "__main__":
    raise SystemExit(main())
