"""The cross-validated experiment on ALL-IDB1: out-of-fold image and cell figures of every model, timings.

Runs :func:`leukoseg.pipelines.experiment.run_experiment` (5 image folds, seed 0; the CNN and the fusion
unless ``--no-cnn``) and prints the metrics table, the timings per stage, the device, and the CNN's
training throughput (patches per second) for the TensorFlow backend and, where installed, the torch and
jax backends, each measured in this run on the same patches. Reference lines say what the number of
detected cells alone does on the same folds (ALL smears hold more white cells). The segmentation cache
makes a second run skip segmentation; ``--cold`` times a run with an empty cache.

    python benchmarks/experiment.py [--data-dir DIR] [--out RUN] [--repeats N] [--no-cnn] [--device D] [--cold]
                                    [--inner-search] [--feature-params JSON] [--cnn-params JSON]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cell_count_reference, data_dir_argument, metrics_table  # noqa: E402

_THROUGHPUT = """
import json, os, sys, time
import numpy as np
from leukoseg.classify import CNNClassifier
X = np.load(sys.argv[1])["patches"]; y = np.load(sys.argv[1])["labels"]
clf = CNNClassifier(epochs=1, validation_fraction=0.0, random_state=0, device=sys.argv[2]).fit(X[:64], y[:64])
t = time.perf_counter()
clf = CNNClassifier(epochs=2, validation_fraction=0.0, random_state=0, device=sys.argv[2]).fit(X, y)
dt = time.perf_counter() - t
print(json.dumps({"backend": clf.backend_, "device": clf.device_, "patches_per_s": 2 * len(X) / dt}))
"""


def _throughput(patches_file: Path, device: str) -> list[str]:
    """Training patches per second of each installed Keras backend, each in a fresh process."""
    lines = []
    for backend, module in (("tensorflow", "tensorflow"), ("torch", "torch"), ("jax", "jax")):
        if importlib.util.find_spec(module) is None:
            lines.append(f"  {backend:10}: not installed")
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, "-c", _THROUGHPUT, str(patches_file), device], env=env,
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            lines.append(f"  {backend:10}: failed ({out.stderr.strip().splitlines()[-1:]})")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(f"  {backend:10}: {r['patches_per_s']:7.0f} patches/s on {r['device']}")
    return lines


def _f4(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=None, help="segmentation cache (default: ~/.cache/leukoseg)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--no-cnn", dest="cnn", action="store_false", help="baseline models only")
    parser.add_argument("--feature-params", type=json.loads, default=None,
                        help="CellFeatures settings as JSON, e.g. '{\"context_um\": 4}'")
    parser.add_argument("--segment-params", type=json.loads, default=None,
                        help="segment() settings as JSON, e.g. '{\"stain_above_red_cells\": false}' (the outlines "
                        "of runs r37 and r38; with '\"cytoplasm_open_um\": 0.7' too, of the runs before)")
    parser.add_argument("--cnn-params", type=json.loads, default=None,
                        help="CNNClassifier settings over the experiment's as JSON, e.g. '{\"epochs\": 10}'")
    parser.add_argument("--inner-search", action="store_true",
                        help="tune GkNN and SVM afresh on each inner split (run_experiment(inner_search=True))")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false",
                        help="skip the per-backend CNN throughput probe")
    parser.add_argument("--cold", action="store_true", help="use an empty cache (times the segmentation too)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np

    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines.cache import load_or_compute
    from leukoseg.pipelines.experiment import run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        cache = Path(tmp) / "cache" if args.cold else args.cache
        start = time.perf_counter()
        dataset = load_dataset("all-idb1", args.data_dir)
        result = run_experiment(dataset, out, repeats=args.repeats, seed=args.seed, cache_dir=cache,
                                workers=args.workers, cnn=args.cnn, device=args.device,
                                inner_search=args.inner_search, feature_params=args.feature_params,
                                segment_params=args.segment_params, cnn_params=args.cnn_params)  # fmt: skip
        wall = time.perf_counter() - start
        m = result.metrics
        count_lines = cell_count_reference(out)
        speed = []
        if args.cnn and args.throughput:
            entries, _ = load_or_compute([r.path for r in dataset.records], cache or Path.home() / ".cache/leukoseg",
                                         segment_kw=args.segment_params, feature_kw=args.feature_params)
            patches = np.concatenate([e.patches for e in entries])[:1024]
            np.savez(Path(tmp) / "patches.npz", patches=patches, labels=np.arange(len(patches)) % 2)
            speed = _throughput(Path(tmp) / "patches.npz", args.device)

    d = m["dataset"]
    print(f"ALL-IDB1: {d['n_images']} images ({d['n_images_all']} ALL), {d['n_cells']} cells, "
          f"{d['n_blast_cells']} blast cells ({d['n_points_matched']} of {d['n_annotated_points']} annotated "
          f"points matched); {m['settings']['n_folds']} folds x {args.repeats} repeat(s), seed {args.seed}"
          + ("; GkNN and SVM tuned afresh on each inner split" if args.inner_search else "")
          + (f"; segmentation {json.dumps(args.segment_params)}" if args.segment_params else "")
          + (f"; features {json.dumps(args.feature_params)}" if args.feature_params else "")
          + (f"; CNN {json.dumps(args.cnn_params)}" if args.cnn_params else ""))
    for stratum, title in (("all", "all 108 images"), ("one_camera", "one-camera stratum Im034-Im108")):
        print(f"\nOut-of-fold, {title} (mean +- std over repeats; Wilson 95 % CI of repeat 0)")
        print("\n".join(metrics_table(m, stratum)))
    print("\n'clean': cell AUC of annotated blasts vs the cells of healthy images only (no unannotated blasts); "
          "'whole': cells not cut by the image border (the annotators marked few of those)")
    inner = {name: res["inner_cell_auc"] for name, res in m["models"].items() if res.get("inner_cell_auc")}
    if inner:
        print("\nInner cell AUC (each fold's training cells, their inner out-of-fold scores; mean over folds, then "
              "over repeats; a choice of settings may look at it; optimistic for the feature models, whose "
              "search saw those cells):")
        for name, v in inner.items():
            reps = ", ".join(_f4(x) for x in v["per_repeat"])
            print(f"  {name:9} {_f4(v['mean'])}" + (f" +- {v['std']:.4f}" if v["std"] is not None else "")
                  + f"  (repeats: {reps})")
    print("\nReference: ALL smears hold more white cells than healthy ones")
    print("\n".join(count_lines))
    t = m["timings_s"]
    base = sum(t.get(k, 0) for k in ("fit_gknn", "fit_svm", "fit_knn", "inner_baseline"))
    cnn = sum(t.get(k, 0) for k in ("fit_cnn", "predict_cnn", "fusion"))
    print("\nTimings (s): " + "; ".join(f"{k} {v:.1f}" for k, v in t.items()))
    seg = t.get("segment_and_features", 0.0)
    print(f"Baseline part (GA + SVM + kNN + inner scores, features cached): {base:.1f} s, {base + seg:.1f} s with the "
          f"segmentation and features of the run ({seg:.1f} s); CNN + fusion: {cnn:.1f} s; "
          f"whole run {wall:.1f} s ({wall / 60:.2f} min); cache: {m['cache']['computed']} images segmented, "
          f"{m['cache']['reused']} reused")
    if "cnn" in m:
        print(f"Device: {m['device']}; CNN training in the run: {m['cnn']['train_patches_per_s']:.0f} patches/s")
    if speed:
        print("CNN training throughput, 2 epochs on 1024 ALL-IDB1 patches, measured now:")
        print("\n".join(speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
