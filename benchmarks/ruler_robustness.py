"""How well the red-cell ruler keeps an image's pixel size when the image is framed or widened.

Each ALL-IDB1 smear is measured as it is, then changed in ways that leave its true pixel size alone, and
the relative change of ``um_per_px`` is printed (with the scale's source, and the number of red cells
measured):

- ``border``: a black band 20 px wide down the left edge;
- ``box``: a black box over 2 % of the image, in the bottom-right corner;
- ``stop``: a circular black field stop leaving the middle (radius 0.9 of the half-diagonal; 2 % masked);
- ``tiles KxK``: the smear tiled K x K times (a wide field: a stitched image, a large sensor).

    python benchmarks/ruler_robustness.py [--data-dir DIR] [--images Im001_1,Im050_1,...] [--tiles 2,3,4]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

DEFAULT_IMAGES = "Im001_1,Im020_1,Im034_0,Im050_1,Im080_0,Im094_0"


def _border(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[:, :20] = 0
    return out


def _box(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    h, w = image.shape[:2]
    side = np.sqrt(0.02)
    out[h - round(h * side):, w - round(w * side):] = 0
    return out


def _stop(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    h, w = image.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    out[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (0.9 * np.hypot(h, w) / 2) ** 2] = 0
    return out


def _tiles(k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda image: np.tile(image, (k, k, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="comma-separated image names")
    parser.add_argument("--tiles", default="2,3,4", help="comma-separated tilings K (K x K)")
    args = parser.parse_args()

    from leukoseg.io import read_image
    from leukoseg.segmentation import segment

    changes: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        ("border", _border), ("box", _box), ("stop", _stop),
        *((f"tiles {k}x{k}", _tiles(k)) for k in (int(v) for v in args.tiles.split(","))),
    ]  # fmt: skip
    worst: dict[str, float] = {}
    for name in args.images.split(","):
        image = read_image(args.data_dir / "im" / f"{name}.jpg")
        ref = segment(image)
        print(f"{name} {image.shape[1]}x{image.shape[0]}: {ref.um_per_px:.4f} um/px ({ref.scale_source}, "
              f"{ref.n_red_cells} red cells)")  # fmt: skip
        for label, change in changes:
            changed = change(image)
            seg = segment(changed)
            rel = seg.um_per_px / ref.um_per_px - 1
            worst[label] = max(worst.get(label, 0.0), abs(rel))
            print(f"  {label:10} {rel:+7.2%}  ({seg.scale_source}, {seg.n_red_cells} red cells)")
            del changed, seg
    print("Largest |change| of um_per_px: " + "; ".join(f"{k} {v:.2%}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
