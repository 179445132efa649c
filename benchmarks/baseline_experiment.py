"""Baseline ALL detection on ALL-IDB1: out-of-fold image and cell figures of GkNN, SVM, kNN and baseline.

Runs :func:`leukoseg.pipelines.experiment.run_experiment` (5 image folds, seed 0) and prints the metrics
table and the timings per stage. The segmentation cache makes a second run skip segmentation; pass
``--cold`` to time a run with an empty cache.

    python benchmarks/baseline_experiment.py [--data-dir DIR] [--out RUN] [--repeats N] [--cold]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402


def _f(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=None, help="segmentation cache (default: ~/.cache/leukoseg)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="use an empty cache (times the segmentation too)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines.experiment import MODELS, run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        cache = Path(tmp) / "cache" if args.cold else args.cache
        start = time.perf_counter()
        dataset = load_dataset("all-idb1", args.data_dir)
        load_s = time.perf_counter() - start
        result = run_experiment(dataset, out, repeats=args.repeats, seed=args.seed, cache_dir=cache,
                                workers=args.workers)
        m = result.metrics

    d = m["dataset"]
    print(f"ALL-IDB1: {d['n_images']} images ({d['n_images_all']} ALL), {d['n_cells']} cells, "
          f"{d['n_blast_cells']} blast cells ({d['n_points_matched']} of {d['n_annotated_points']} annotated "
          f"points matched); 5 folds x {args.repeats} repeat(s), seed {args.seed}")
    for stratum, title in (("all", "all 108 images"), ("one_camera", "one-camera stratum Im034-Im108")):
        print(f"\nOut-of-fold, {title} (mean over repeats; Wilson 95 % CI of repeat 0)")
        print(f"{'model':9} {'img acc':>7} {'95% CI':>15} {'sens':>6} {'spec':>6} {'img AUC':>7} "
              f"{'cell AUC':>8} {'clean':>6}")
        for model in MODELS:
            s = m["models"][model]["summary"][stratum]
            r0 = m["models"][model]["repeats"][0][stratum]
            ci = r0["accuracy_ci"]
            print(f"{model:9} {_f(s['accuracy']['mean']):>7} [{ci[0]:.3f}, {ci[1]:.3f}] "
                  f"{_f(s['sensitivity']['mean'])} {_f(s['specificity']['mean'])} {_f(s['auc']['mean']):>7} "
                  f"{_f(s['cell_auc']['mean']):>8} {_f(s['cell_auc_clean']['mean'])}")
    print("\n'clean': cell AUC of annotated blasts vs the cells of healthy images only (no unannotated blasts)")
    t = m["timings_s"]
    base = t.get("fit_gknn", 0) + t.get("fit_svm", 0) + t.get("fit_knn", 0) + t.get("thresholds", 0)
    print(f"\nTimings (s): data set check {load_s:.1f}; "
          + "; ".join(f"{k} {v:.1f}" for k, v in t.items()))
    print(f"Baseline part (features cached, GA + SVM + kNN + thresholds over the folds): {base:.1f} s; "
          f"cache: {m['cache']['computed']} images segmented, {m['cache']['reused']} reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
