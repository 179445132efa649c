"""Blast recall of `leukoseg segment` on ALL-IDB1.

Each of the 510 annotated blast centroids (xyc files) is matched one-to-one (Hungarian algorithm) to a
detected cell centroid within 50 px. Prints recall, detections per healthy image, merged blasts (two or
more annotations whose nearest detection is the same cell, of which only one can be matched) and split
blasts (an annotation with two or more detections within 50 px), and the plain-threshold baseline
(threshold + connected components) for comparison.

    python benchmarks/segmentation_recall.py [--data-dir DIR] [--every K] [--no-purple-nuclei]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

RADIUS = 50.0


def match(points: np.ndarray, detections: np.ndarray, cells: np.ndarray | None = None) -> tuple[int, int, int]:
    """(matched, merged, split) for one image.

    merged: annotations left unmatched that lie inside a detected cell (from the `cells` label image) holding
    another annotation too: two or more blasts segmented as one cell. split: detections left unmatched
    although an annotation lies within the radius (an extra fragment of an annotated blast).
    """
    if len(points) == 0 or len(detections) == 0:
        return 0, 0, 0
    d = cdist(points, detections)
    rows, cols = linear_sum_assignment(d)
    ok = d[rows, cols] <= RADIUS
    matched_points = set(rows[ok].tolist())
    merged = 0
    if cells is not None:
        h, w = cells.shape
        rr = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
        cc = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
        inside = cells[rr, cc]
        for i, cid in enumerate(inside):
            if i not in matched_points and cid != 0 and (inside == cid).sum() >= 2:
                merged += 1
    close = d <= RADIUS
    split = sum(1 for j in range(len(detections)) if j not in {int(c) for c in cols[ok]} and close[:, j].any())
    return int(ok.sum()), merged, split


def plain_threshold(image: np.ndarray) -> np.ndarray:
    """The naive baseline: Otsu on the blue-green excess, connected components, no splitting."""
    import cv2
    from skimage.filters import threshold_otsu

    excess = image[..., 2].astype(np.float32) - image[..., 1]
    mask = (excess > threshold_otsu(excess)).astype(np.uint8)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    keep = stats[1:, cv2.CC_STAT_AREA] >= 200
    return centroids[1:][keep]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--every", type=int, default=1, help="use every K-th image (quick look)")
    parser.add_argument("--no-purple-nuclei", action="store_true",
                        help="segment without the purple-chromatin rule (segment(purple_nuclei=False)), to compare")
    args = parser.parse_args()

    from leukoseg.datasets import load_dataset
    from leukoseg.io import read_image
    from leukoseg.segmentation import segment

    ds = load_dataset("all-idb1", args.data_dir)
    records = ds.records[:: args.every]
    totals = dict(points=0, matched=0, merged=0, split=0, base=0)
    healthy, misses, seconds = [], [], []
    for r in records:
        image = read_image(r.path)
        t = time.perf_counter()
        seg = segment(image, purple_nuclei=not args.no_purple_nuclei)
        seconds.append(time.perf_counter() - t)
        det = np.c_[seg.measurements["x"], seg.measurements["y"]]
        m, merged, split = match(r.points, det, seg.cells)
        totals["points"] += len(r.points)
        totals["matched"] += m
        totals["merged"] += merged
        totals["split"] += split
        totals["base"] += match(r.points, plain_threshold(image))[0]
        if r.label == "0":
            healthy.append(len(det))
        if m < len(r.points):
            misses.append(f"{r.path.stem} {len(r.points) - m}/{len(r.points)}")
    n = totals["points"]
    print(f"images: {len(records)}  annotated blasts: {n}")
    print(f"blast recall (Hungarian, <= {RADIUS:.0f} px): {totals['matched'] / n:.4f} ({totals['matched']}/{n})")
    print(f"plain threshold + connected components:  {totals['base'] / n:.4f} ({totals['base']}/{n})")
    print(f"merged (blast unmatched, inside one cell with other blasts): {totals['merged']}  "
          f"split (extra detection beside a matched blast): {totals['split']}")
    print(f"detections per healthy image: mean {np.mean(healthy):.2f}, median {np.median(healthy):.0f}, "
          f"max {np.max(healthy)} ({len(healthy)} images)")
    print(f"segment() seconds per image: median {np.median(seconds):.3f}")
    print("images with missed blasts: " + (", ".join(misses) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
