"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def data_dir_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("LEUKOSEG_DATA")
    parser.add_argument(
        "--data-dir", type=Path,
        default=Path(default) / "ALL_IDB1" if default else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ALL_IDB1",
        help="ALL-IDB1 folder (default: $LEUKOSEG_DATA/ALL_IDB1 or ../shared/datasets/ALL_IDB1)",
    )


def _f(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def metrics_table(metrics: dict, stratum: str = "all") -> list[str]:
    """A run's out-of-fold figures per model on `stratum`: accuracy (mean +- std over repeats, Wilson 95 % CI
    of repeat 0), sensitivity, specificity, image AUC, cell AUC and clean cell AUC (``-`` where absent)."""
    lines = [f"{'model':9} {'img acc':>7} {'+-':>6} {'95% CI':>15} {'sens':>6} {'spec':>6} {'img AUC':>7} "
             f"{'cell AUC':>8} {'clean':>6}"]
    for model, res in metrics["models"].items():
        s = res["summary"][stratum]
        ci = res["repeats"][0][stratum]["accuracy_ci"]
        mean = {k: (s.get(k) or {}).get("mean") for k in ("cell_auc", "cell_auc_clean")}
        lines.append(f"{model:9} {_f(s['accuracy']['mean']):>7} {_f(s['accuracy']['std'])} [{ci[0]:.3f}, {ci[1]:.3f}] "
                     f"{_f(s['sensitivity']['mean'])} {_f(s['specificity']['mean'])} {_f(s['auc']['mean']):>7} "
                     f"{_f(mean['cell_auc']):>8} {_f(mean['cell_auc_clean'])}")
    return lines
