"""The CNN part of the ALL-IDB1 experiment on another device or Keras backend (a GPU machine without the data).

The GPU machine lent to a developer session has PyTorch but neither TensorFlow nor the data set. This
script splits the work:

1. here, ``--export FILE`` writes what the CNN part needs: the cells' patches, labels, images and image
   groups, the folds of repeat 0 or of ``--repeats N`` (the experiment's own assignment), and the
   out-of-fold baseline and CNN scores of a finished run (``--run``, for the fusion check);
2. there, ``--cells FILE`` runs, for the 5 folds of repeat 0 (or ``--repeat R`` of an export made with
   ``--repeats``), exactly the experiment's CNN step
   (``pipelines.experiment._fit_cnn``: CNNs cross-fitted over the training images, test-time augmentation)
   on the active Keras backend and the chosen device, and prints the wall time, the training throughput,
   the out-of-fold cell AUC and the image accuracy of the CNN (image rule and threshold learnt on the
   training images, as in the experiment). It then fits the fusion (:class:`~leukoseg.classify.StackingFusion`,
   ``keras.ops``) on the run's out-of-fold baseline and CNN scores on that device and on the CPU, and prints
   where each ran and their largest difference.

    python benchmarks/cnn_device.py --export cells.npz --run RUN [--data-dir DIR] [--cache DIR]
    KERAS_BACKEND=torch python benchmarks/cnn_device.py --cells cells.npz --device gpu [--cnn-params JSON]

``--cnn-params`` compares variants of the network (filters, activation, dense layers, DenseNet121...) or of
the experiment's use of it (``{"refit": true}``: test cells scored by one CNN fitted on all the training
cells, not by the mean of the cross-fitted ones) on the same folds; ``--variants '[{...}, {...}]'`` runs
several in one go, prints each one's inner cell AUC (of the
cross-fitted scores of the training cells) and adds a nested selection among them (each fold takes the
variant whose inner AUC on its own training cells is best); ``--cnn-inner-folds`` the parts of the
cross-fitting; ``--export ... --patches VARIANT`` other patches (cells alone on the background,
white-balanced, finer pixels).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument, nested_selection  # noqa: E402


def export(args) -> int:
    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines import experiment as exp
    from leukoseg.pipelines.cache import default_cache_dir, load_or_compute
    from leukoseg.pipelines.folds import assign_folds

    ds = load_dataset("all-idb1", args.data_dir)
    records = ds.records
    entries, _ = load_or_compute([r.path for r in records], args.cache or default_cache_dir())
    cells = exp._cell_table(records, entries, ["0", "1"], "points", 50.0)
    image_label = np.array([int(r.label) for r in records])
    image_group = np.array([r.group for r in records])
    folds = assign_folds(image_label, image_group, n_folds=5, repeats=args.repeats, seed=args.seed)
    names = [r.name for r in records]
    cell_id = np.array([int(row["cell_id"]) for row in cells.rows])
    # The run's out-of-fold scores of repeat 0, in the order of the cell table.
    scores = {}
    with open(Path(args.run) / "cells.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["repeat"] == "0":
                scores[(Path(row["image"]).name, int(row["cell_id"]))] = (float(row["p_blast_baseline"]),
                                                                          float(row["p_blast_cnn"]))  # fmt: skip
    run_scores = np.array([scores[(Path(names[i]).name, c)] for i, c in zip(cells.image, cell_id)])
    patches = cells.patches
    if args.patches != "plain":
        patches = np.concatenate([_variant_patches(r.path, e, args.patches) for r, e in zip(records, entries)])
        assert len(patches) == len(cells.label)
    np.savez_compressed(
        args.export, patches=patches, label=cells.label, image=cells.image, image_label=image_label,
        image_group=image_group, folds=folds, run_scores=run_scores, seed=np.array(args.seed),
    )  # fmt: skip
    print(f"{args.export}: {len(cells.label)} cells of {len(records)} images, folds of {args.repeats} repeat(s) "
          f"(seed {args.seed})")  # fmt: skip
    return 0


def _variant_patches(path, entry, variant: str) -> np.ndarray:
    """The cells' patches of one image, made another way than the experiment's (for comparisons only).

    - ``cell-only``: outside the cell's mask (dilated 1 um) the patch shows the slide background colour, so
      neighbouring cells cannot sway the label of the cell in the middle (needs the segmentation again);
    - ``white-balanced``: each channel scaled so the image's background is 235 (camera colour cast removed);
    - ``fine``: 0.35 um per pixel (a 17.5 um field) instead of 0.5, for finer chromatin texture.
    """
    import cv2

    from leukoseg.io import read_image
    from leukoseg.segmentation import background_level, extract_patches, segment

    image = read_image(path)
    x, y, um = entry.measurements["x"], entry.measurements["y"], entry.um_per_px
    if variant == "fine":
        return extract_patches(image, x, y, um_per_px=um, patch_um_per_px=0.35)
    plain = extract_patches(image, x, y, um_per_px=um)
    background = np.array([background_level(image, channel=c) for c in range(3)])
    if variant == "white-balanced":
        return np.clip(plain * (235.0 / background), 0, 255).round().astype(np.uint8)
    seg = segment(image)
    assert len(seg.measurements["x"]) == len(x), "the cache was made with other segmentation settings"
    s = seg.working_um_per_px / seg.um_per_px  # input pixels per working pixel
    r = max(1, round(1.0 / seg.working_um_per_px))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    out = np.empty_like(plain)
    for i in range(len(x)):
        mask = cv2.dilate((seg.working_cells == i + 1).astype(np.uint8) * 255, disc)
        alpha = extract_patches(np.repeat(mask[:, :, None], 3, axis=2), x[i : i + 1] / s, y[i : i + 1] / s,
                                um_per_px=seg.working_um_per_px)[0, :, :, :1] / 255.0  # fmt: skip
        out[i] = np.clip(alpha * plain[i] + (1 - alpha) * background, 0, 255).round().astype(np.uint8)
    return out


def run(args) -> int:
    import keras

    from leukoseg.classify import StackingFusion
    from leukoseg.pipelines import experiment as exp
    from leukoseg.pipelines.metrics import image_score, roc_auc

    d = np.load(args.cells, allow_pickle=False)
    image, label = d["image"], d["label"]
    all_folds = np.atleast_2d(d["folds"])  # (repeats, images); older exports hold repeat 0 alone
    if not 0 <= args.repeat < len(all_folds):
        raise SystemExit(f"{args.cells}: holds the folds of {len(all_folds)} repeat(s); no repeat {args.repeat}")
    folds = all_folds[args.repeat]
    image_label, image_group, seed = d["image_label"], d["image_group"], int(d["seed"])
    cells = exp._Cells(image=image, label=label, rows=[], X=np.zeros((len(label), 0)), patches=d["patches"],
                       n_points=0, n_matched=0)  # fmt: skip
    variants = args.variants or [args.cnn_params or {}]
    n_folds = int(folds.max()) + 1
    # Per variant: out-of-fold cell scores, per-fold test-image decisions, per-fold inner AUC, timings.
    p_cnn = np.full((len(variants), len(label)), np.nan)
    correct = np.zeros((len(variants), len(image_label)), dtype=bool)
    inner_auc = np.zeros((len(variants), n_folds))
    timers = [exp._Timer() for _ in variants]
    infos = [exp._new_run_info() for _ in variants]
    walls = np.zeros(len(variants))
    for k in range(n_folds):
        test_img = folds == k
        fold = exp._Fold(cells=cells, train=~test_img[image], test=test_img[image],
                         train_img=np.flatnonzero(~test_img), image_label=image_label, image_group=image_group,
                         K=2, seed=exp._seed(seed, args.repeat, k))  # fmt: skip
        for v, params in enumerate(variants):
            t0 = time.perf_counter()
            p_test, p_inner = exp._fit_cnn(fold, args.cnn_inner_folds, params, args.device, timers[v], infos[v])
            walls[v] += time.perf_counter() - t0
            p_cnn[v, fold.test] = p_test[:, 1]
            # The training cells' cross-fitted scores: what a nested selection may look at.
            inner_auc[v, k] = roc_auc(fold.y_train, p_inner[:, 1])
            top_k, threshold = fold.image_rule(p_inner[:, 1])
            for i in np.flatnonzero(test_img):
                correct[v, i] = (image_score(p_cnn[v, image == i], top_k=top_k) >= threshold) == bool(image_label[i])
        print(f"  fold {k}: {walls.sum():.1f} s", flush=True)
    print(f"backend {keras.config.backend()}, device {infos[0]['device']}")
    for v, params in enumerate(variants):
        settings = json.dumps({**exp.CNN_DEFAULTS, **params}) if len(variants) == 1 else json.dumps(params)
        print(f"CNN settings {settings}")
        tta = "test-time augmentation" if params.get("tta", True) else "no test-time augmentation"
        print(f"  CNN part, {n_folds} folds (cross-fitted CNNs, {tta}): wall {walls[v]:.1f} s "
              f"(fit {timers[v]['fit_cnn']:.1f} s, predict {timers[v]['predict_cnn']:.1f} s); "
              f"training {infos[v]['cnn_patch_epochs'] / timers[v]['fit_cnn']:.0f} patches/s")  # fmt: skip
        print(f"  CNN out-of-fold: cell AUC {roc_auc(label, p_cnn[v]):.4f}, image accuracy {correct[v].mean():.4f} "
              f"({int(correct[v].sum())}/{len(image_label)}); inner cross-fitted cell AUC, mean over folds "
              f"{inner_auc[v].mean():.4f}")  # fmt: skip
    if len(variants) > 1:
        # Nested selection: each fold takes the variant whose cross-fitted scores of its training cells rank
        # best; the test images never take part in the choice.
        best, p_sel = nested_selection(inner_auc, p_cnn, folds[image])
        ok = np.zeros(len(image_label), dtype=bool)
        for k in range(n_folds):
            ok[folds == k] = correct[best[k], folds == k]
        print(f"nested selection by inner AUC (variant per fold {best.tolist()}): cell AUC "
              f"{roc_auc(label, p_sel):.4f}, image accuracy {ok.mean():.4f} ({int(ok.sum())}/{len(ok)})")  # fmt: skip

    X, y = d["run_scores"], label
    inputs = np.column_stack([1 - X[:, 0], X[:, 0], 1 - X[:, 1], X[:, 1]])
    fits = {}
    for device in (args.device, "cpu"):
        t = time.perf_counter()
        fusion = StackingFusion(n_inputs=2, device=device).fit(inputs, y)
        p = fusion.predict_proba(inputs)[:, 1]
        fits[device] = (fusion.device_, fusion.backend_, p, time.perf_counter() - t)
    (dev_a, be_a, p_a, t_a), (dev_b, be_b, p_b, t_b) = fits[args.device], fits["cpu"]
    print(f"fusion on {dev_a} ({be_a}) {t_a:.2f} s, on {dev_b} ({be_b}) {t_b:.2f} s; fused cell AUC "
          f"{roc_auc(y, p_a):.4f}; largest probability difference {np.max(np.abs(p_a - p_b)):.2e}")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--export", type=Path, help="write the cell table here (needs the data set)")
    parser.add_argument("--run", type=Path, help="finished run folder whose cells.csv gives the fusion inputs")
    parser.add_argument("--cache", type=Path, help="segmentation cache (default: ~/.cache/leukoseg)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patches", choices=("plain", "cell-only", "white-balanced", "fine"), default="plain",
                        help="with --export: the experiment's patches (plain), or a variant to compare (see "
                        "_variant_patches)")
    parser.add_argument("--repeats", type=int, default=1, help="with --export: repeats whose folds are written")
    parser.add_argument("--repeat", type=int, default=0,
                        help="with --cells: the repeat whose folds (and seeds) the CNN part uses; the fusion "
                        "check always uses the run's repeat 0")
    parser.add_argument("--cells", type=Path, help="run the CNN part on a cell table written by --export")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--cnn-params", type=json.loads, default=None,
                        help='CNNClassifier settings over the experiment\'s, as JSON, e.g. \'{"activation": "selu"}\'')
    parser.add_argument("--variants", type=json.loads, default=None,
                        help="a JSON list of CNN settings to compare on the same folds, with a nested selection "
                        "(per fold, the variant whose cross-fitted training-cell scores rank best)")
    parser.add_argument("--cnn-inner-folds", type=int, default=2,
                        help="parts of the CNN's cross-fitting (the experiment's cnn_inner_folds; default 2)")
    args = parser.parse_args()
    if args.export:
        if not args.run:
            parser.error("--export needs --run")
        return export(args)
    if args.cells:
        return run(args)
    parser.error("give --export FILE or --cells FILE")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
