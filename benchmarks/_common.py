"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
from pathlib import Path

from leukoseg.datasets import resolve_data_dir


def data_dir_argument(parser: argparse.ArgumentParser) -> None:
    # Where the CLI looks ($LEUKOSEG_DATA, else ~/.leukoseg/data), else beside the checkout (CI's layout).
    default = resolve_data_dir("ALL_IDB1")
    if not (default / "im").is_dir():
        default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ALL_IDB1"
    parser.add_argument(
        "--data-dir", type=Path, default=default,
        help="ALL-IDB1 folder (default: $LEUKOSEG_DATA/ALL_IDB1, else ~/.leukoseg/data/ALL_IDB1 if it exists, else "
             "../shared/datasets/ALL_IDB1)",
    )


def _f(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def metrics_table(metrics: dict, stratum: str = "all") -> list[str]:
    """A run's out-of-fold figures per model on `stratum`: accuracy (mean +- std over repeats, Wilson 95 % CI
    of repeat 0), sensitivity, specificity, image AUC, cell AUC, clean cell AUC and the cell AUC of whole
    cells (``-`` where absent)."""
    lines = [f"{'model':9} {'img acc':>7} {'+-':>6} {'95% CI':>15} {'sens':>6} {'spec':>6} {'img AUC':>7} "
             f"{'cell AUC':>8} {'clean':>6} {'whole':>6}"]
    for model, res in metrics["models"].items():
        s = res["summary"][stratum]
        ci = res["repeats"][0][stratum]["accuracy_ci"]
        mean = {k: (s.get(k) or {}).get("mean") for k in ("cell_auc", "cell_auc_clean", "cell_auc_whole")}
        lines.append(f"{model:9} {_f(s['accuracy']['mean']):>7} {_f(s['accuracy']['std'])} [{ci[0]:.3f}, {ci[1]:.3f}] "
                     f"{_f(s['sensitivity']['mean'])} {_f(s['specificity']['mean'])} {_f(s['auc']['mean']):>7} "
                     f"{_f(mean['cell_auc']):>8} {_f(mean['cell_auc_clean'])} {_f(mean['cell_auc_whole'])}")
    return lines


def nested_selection(inner_auc, p_out, fold_of_cell):
    """Each fold's choice among options by its own inner AUC, and the out-of-fold cell scores it gives.

    `inner_auc` is (n_options, n_folds), -inf where a fold has none; `p_out` (n_options, n_cells) the
    options' out-of-fold scores; `fold_of_cell` the outer fold of each cell. Ties go to the first option.
    The test cells of a fold never take part in its choice. Returns (option per fold, scores).
    """
    import numpy as np

    best = np.asarray(inner_auc).argmax(axis=0)
    p_sel = np.full(np.shape(p_out)[1], np.nan)
    for k, option in enumerate(best):
        p_sel[fold_of_cell == k] = p_out[option][fold_of_cell == k]
    return best, p_sel


def cell_count_reference(run_dir: Path) -> list[str]:
    """What the number of detected cells alone does on a run's folds: a reference row for the image figures.

    For each repeat and fold, the smear is called ALL when its cell count reaches a threshold chosen on that
    fold's training images (maximum balanced accuracy, as the models' thresholds), read from the run's
    ``images.csv``. ALL smears of ALL-IDB1 hold more white cells than healthy ones, so a model's image
    accuracy is best read beside this, and beside the image AUC of the model's highest cell probability
    (``cells.csv``; 0 for a smear without cells), a score that does not count cells.
    """
    import csv

    import numpy as np

    from leukoseg.pipelines.metrics import choose_threshold, roc_auc

    with open(Path(run_dir) / "images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(Path(run_dir) / "cells.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    model = "fused" if cells and "p_blast_fused" in cells[0] else "baseline"
    top: dict[tuple[str, str], float] = {}  # (repeat, image): the model's highest cell probability
    for c in cells:
        key = (c["repeat"], c["image"])
        top[key] = max(top.get(key, 0.0), float(c[f"p_blast_{model}"]))
    # Per repeat, once: the count's calls (thresholds from all training images) and the scores.
    per_repeat = []
    for r in sorted({row["repeat"] for row in rows}, key=int):
        rep = [row for row in rows if row["repeat"] == r]
        n = np.array([int(row["n_cells"]) for row in rep], dtype=float)
        y = np.array([int(row["label"]) for row in rep])
        fold = np.array([int(row["fold"]) for row in rep])
        pred = np.zeros(len(rep), dtype=int)
        for k in np.unique(fold):
            pred[fold == k] = n[fold == k] >= choose_threshold(n[fold != k], y[fold != k])
        p_top = np.array([top.get((r, row["image"]), 0.0) for row in rep])  # no cell: 0
        one_camera = np.array([int(Path(row["image"]).stem[2:5]) >= 34 for row in rep])
        per_repeat.append((n, y, pred, p_top, one_camera))
    lines = []
    for stratum in ("all images", "one camera (Im034-Im108)"):
        acc, auc, auc_top = [], [], []
        for n, y, pred, p_top, one_camera in per_repeat:
            mask = one_camera if stratum != "all images" else np.ones(len(y), dtype=bool)
            acc.append(float(np.mean(pred[mask] == y[mask])))
            auc.append(roc_auc(y[mask], n[mask]))
            auc_top.append(roc_auc(y[mask], p_top[mask]))
        spread = f" +- {np.std(acc, ddof=1):.3f}" if len(acc) > 1 else ""
        lines.append(f"cell count alone, {stratum}: image accuracy {np.mean(acc):.3f}{spread} (threshold from "
                     f"each fold's training images), AUC of the count {np.mean(auc):.3f}; AUC of the {model} "
                     f"model's highest cell probability, which ignores the count, {np.mean(auc_top):.3f}")
    return lines
