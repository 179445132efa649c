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
