"""A stand-in for ALL-IDB2 cut from ALL-IDB1, and the experiment's ALL-IDB2 protocol run on it.

ALL-IDB2 (Labati, Piuri, Scotti, ICIP 2011) is a set of single-cell crops cut from ALL-IDB1's smears, half
of them centred on a blast. It is given out on request and is not on the machines this project is built
on, so this script makes a stand-in from ALL-IDB1 in ALL-IDB2's layout (``img/ImXXX_Y.tif``, Y = 1 blast,
0 not; blasts numbered first) and runs the experiment's ``all-idb2`` path on it with that data set's
default protocol (10 repeats of 2-fold cross-validation), so the path is exercised on real smear pixels.
The figures are not ALL-IDB2's. How the stand-in differs, and so how to read them:

- blast crops are centred on ALL-IDB1's annotated blast centroids (xyc files); non-blast crops on the
  white cells that leukoseg itself finds in the healthy smears (ALL-IDB1 marks no other cell), so every
  non-blast crop holds a cell that leukoseg segments;
- only windows wholly inside their smear are cut (a window shifted at the border would put another cell in
  the centre), one smear of a byte-identical pair is used (Im108_0 is Im093_0), and both classes get as many
  crops, at most ``--n-per-class`` (the healthy smears hold fewer whole cells than ALL-IDB2's 130);
- the protocol's folds are drawn over crops, so crops of one smear land on both sides, as in published work
  on ALL-IDB2; ``--grouped`` adds a run whose folds keep each smear's crops together.

It also says where each crop's pixel size came from: a crop of a few hundred pixels holds too few red cells
for the red-cell ruler, so segment() sets the scale from a median nucleus of 9 um (``'fallback'``), and each
crop's scale is compared with that of its whole smear.

``--known-scale UM`` adds a run on the same cells resampled to UM micrometres per pixel (from each smear's
red-cell scale), the experiment being given that pixel size: what knowing the crops' scale is worth.

    python benchmarks/all_idb2_proxy.py [--data-dir DIR] [--out DIR] [--n-per-class 130] [--size 257]
        [--repeats 10] [--folds 2] [--seed 0] [--cache DIR] [--no-cnn] [--grouped] [--known-scale UM]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument, metrics_table  # noqa: E402

MANIFEST = "proxy.csv"


def _window(x: float, y: float, side: int, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Top-left corner of the `side` window centred on pixel (x, y), or None if it leaves the image."""
    x0, y0 = int(round(x)) - side // 2, int(round(y)) - side // 2
    if x0 < 0 or y0 < 0 or x0 + side > shape[1] or y0 + side > shape[0]:
        return None
    return x0, y0


def _side(size: int, um_per_px: float | None, smear_um_per_px: float) -> int:
    """Side in smear pixels of a crop of `size` pixels at `um_per_px` (the smear's own pixels when None)."""
    return size if um_per_px is None else int(round(size * um_per_px / smear_um_per_px))


def make_proxy(
    data_dir, out, *, n_per_class: int = 130, size: int = 257, um_per_px: float | None = None,
    fit_um_per_px: float | None = None, seed: int = 0, cache=None, workers: int = 1,
) -> list[dict]:  # fmt: skip
    """Cut ALL-IDB2-like crops from ALL-IDB1 into ``out/img`` and list them in ``out/proxy.csv``.

    Parameters
    ----------
    data_dir : path
        ALL-IDB1's folder.
    out : path
        Folder of the stand-in (created; must not hold an ``img`` folder yet).
    n_per_class : int, optional
        Crops per class, at most; both classes get as many (the healthy smears have fewer cells).
    size : int, optional
        Side of the square crops, in pixels.
    um_per_px : float, optional
        Resample every crop to this pixel size, from its smear's red-cell scale (default: the smear's own
        pixels, as ALL-IDB2).
    fit_um_per_px : float, optional
        Take only cells whose window also fits at this pixel size, so that stand-ins made with and without
        `um_per_px` hold the same cells.
    seed : int, optional
        Seed of the draw among the candidates.
    cache : path, optional
        Segmentation cache of the experiment (the healthy smears' cells come from it).
    workers : int, optional
        Processes for segmenting smears missing from the cache.

    Returns
    -------
    list of dict
        One row per crop: ``crop``, ``label``, ``source`` (the smear's path in ALL-IDB1), ``group`` (its group id),
        ``x``, ``y`` (the crop's centre pixel in the smear), ``smear_um_per_px``, ``um_per_px`` (the
        crop's).
    """
    import cv2
    from PIL import Image

    from leukoseg.datasets import load_dataset
    from leukoseg.io import read_image
    from leukoseg.pipelines.cache import default_cache_dir, load_or_compute

    ds = load_dataset("all-idb1", data_dir)
    seen, records = set(), []
    for r in ds.records:  # one smear of each group of identical ones
        if r.group not in seen:
            seen.add(r.group)
            records.append(r)
    entries, _ = load_or_compute([r.path for r in records], cache or default_cache_dir(), workers=workers)
    shapes = {}
    candidates: dict[str, list[tuple[int, float, float]]] = {"1": [], "0": []}
    for i, (r, e) in enumerate(zip(records, entries)):
        with Image.open(r.path) as im:  # the size only: the crops are cut below
            shapes[i] = (im.height, im.width)
        sides = {_side(size, um, e.um_per_px) for um in (None, um_per_px, fit_um_per_px)}
        points = r.points if r.label == "1" else np.column_stack([e.measurements["x"], e.measurements["y"]])
        for x, y in np.asarray(points, float).reshape(-1, 2):
            if all(_window(x, y, side, shapes[i]) is not None for side in sides):
                candidates[r.label].append((i, float(x), float(y)))
    n = min(n_per_class, *(len(c) for c in candidates.values()))
    rng = np.random.default_rng(seed)
    chosen = {label: [cands[j] for j in sorted(rng.choice(len(cands), size=n, replace=False))]
              for label, cands in candidates.items()}  # fmt: skip
    img_dir = Path(out) / "img"
    img_dir.mkdir(parents=True)
    rows, number, smear, smear_index = [], 0, None, -1
    for label in ("1", "0"):  # ALL-IDB2 numbers its blasts first
        for i, x, y in chosen[label]:
            if i != smear_index:
                smear, smear_index = read_image(records[i].path), i
            side = _side(size, um_per_px, entries[i].um_per_px)
            x0, y0 = _window(x, y, side, shapes[i])  # type: ignore[misc]  (candidates fit by construction)
            crop = smear[y0 : y0 + side, x0 : x0 + side]
            if side != size:
                crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
            number += 1
            name = f"Im{number:03d}_{label}.tif"
            Image.fromarray(crop).save(img_dir / name)
            rows.append({"crop": f"img/{name}", "label": label, "source": records[i].name, "group": records[i].group,
                         "x": int(round(x)), "y": int(round(y)), "smear_um_per_px": entries[i].um_per_px,
                         "um_per_px": entries[i].um_per_px * side / size})  # fmt: skip
    with open(Path(out) / MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    logging.getLogger(__name__).info("%d crops per class (candidates: %d blasts, %d other cells)", n,
                                     len(candidates["1"]), len(candidates["0"]))  # fmt: skip
    return rows


def scale_report(out, rows: list[dict]) -> list[str]:
    """Where each crop's pixel size came from, and how far it is from its smear's, per class."""
    from leukoseg.io import read_image
    from leukoseg.segmentation import segment

    ratio: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        seg = segment(read_image(Path(out) / row["crop"]))
        ratio.setdefault((row["label"], seg.scale_source), []).append(seg.um_per_px / row["um_per_px"])
    lines = ["Pixel size that segment() finds in each crop, against the crop's true one (its smear's red-cell scale):"]
    for (label, source), r in sorted(ratio.items()):
        q = np.percentile(r, [10, 50, 90])
        kind = "blast" if label == "1" else "non-blast"
        lines.append(f"  {kind:9} crops, scale from {source:9}: {len(r):3d}; crop / smear pixel size: median "
                     f"{q[1]:.2f} (10-90 %: {q[0]:.2f}-{q[2]:.2f})")  # fmt: skip
    return lines


def _dataset_grouped_by_smear(dataset, rows: list[dict]):
    """The same crops, each with its source smear's group id (folds then keep a smear's crops together)."""
    source_group = {r["crop"]: int(r["group"]) for r in rows}
    records = tuple(dataclasses.replace(r, group=source_group[r.name]) for r in dataset.records)
    return dataclasses.replace(dataset, records=records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the stand-in and the runs (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=None, help="segmentation cache (default: ~/.cache/leukoseg)")
    parser.add_argument("--n-per-class", type=int, default=130)
    parser.add_argument("--size", type=int, default=257, help="crop side in pixels (default: 257)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--no-cnn", dest="cnn", action="store_false", help="feature models only")
    parser.add_argument("--grouped", action="store_true", help="also run with folds grouped by source smear")
    parser.add_argument("--known-scale", type=float, default=None, metavar="UM",
                        help="also run on the same cells resampled to UM micrometres per pixel, the experiment "
                        "being told that pixel size (what a known scale is worth)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines.experiment import run_experiment

    with tempfile.TemporaryDirectory(prefix="leukoseg-idb2-") as tmp:
        out = args.out or Path(tmp)
        common = dict(n_per_class=args.n_per_class, size=args.size, fit_um_per_px=args.known_scale,
                      seed=args.seed, cache=args.cache, workers=args.workers)  # fmt: skip
        rows = make_proxy(args.data_dir, out / "ALL_IDB2", **common)
        n = sum(r["label"] == "1" for r in rows)
        print(f"Stand-in for ALL-IDB2 from {args.data_dir}: {n} blast and {len(rows) - n} non-blast crops of "
              f"{args.size}x{args.size} pixels from {len({r['source'] for r in rows})} smears, in {out}")
        print("\n".join(scale_report(out / "ALL_IDB2", rows)))
        dataset = load_dataset("all-idb2", out / "ALL_IDB2")
        runs = [("run", "crop folds (ALL-IDB2's protocol), scale found in each crop", dataset, None)]
        if args.grouped:
            runs.append(("run-grouped", "folds grouped by source smear, scale found in each crop",
                         _dataset_grouped_by_smear(dataset, rows), None))  # fmt: skip
        if args.known_scale:
            scaled = make_proxy(args.data_dir, out / "ALL_IDB2-scaled", um_per_px=args.known_scale, **common)
            assert [(r["source"], r["x"], r["y"]) for r in scaled] == [(r["source"], r["x"], r["y"]) for r in rows]
            runs.append(("run-scaled", f"crop folds, crops at {args.known_scale} um per pixel and told so",
                         load_dataset("all-idb2", out / "ALL_IDB2-scaled"), {"pixel_size": args.known_scale}))
        for folder, title, ds, segment_params in runs:
            t0 = time.perf_counter()
            result = run_experiment(ds, out / folder, n_folds=args.folds, repeats=args.repeats, seed=args.seed,
                                    cache_dir=args.cache, workers=args.workers, cnn=args.cnn, device=args.device,
                                    segment_params=segment_params)  # fmt: skip
            print(f"\n{args.repeats} x {args.folds}-fold CV, {title}: crop accuracy (mean +- std over repeats; "
                  f"Wilson 95 % CI of repeat 0), {(time.perf_counter() - t0) / 60:.1f} min")
            print("\n".join(metrics_table(result.metrics)))
            print(f"device: {json.dumps(result.metrics['device'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
