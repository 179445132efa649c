"""Writing a segmentation to disk: the per-image output folder that other tools read.

``OUT/<image stem>/`` holds

- ``cells.csv``: one row per cell, the columns of :data:`MEASUREMENT_COLUMNS`;
- ``nuclei.png``, ``cells.png``: uint16 label images at the input's size, 0 background, value = cell_id;
- ``overlay.jpg``: outlines and ids drawn on the smear (halved until its longer side is at most 2000 px);
- ``cells.geojson``: QuPath cell objects (cell polygon as geometry, ``nucleusGeometry``, measurements);
- ``segmentation.json``: scale, its source, thresholds, counts, timings;
- ``crops/cell_NNNN.png`` (native resolution box) and ``crops/cell_NNNN_patch.png`` (the scale-normalised
  patch the CNN sees).

The folder is assembled under a temporary name beside its final place and renamed into place when
complete, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io import _umask, write_image, write_json, write_text
from ._crops import extract_patch
from ._measure import MEASUREMENT_COLUMNS
from ._segment import Segmentation

__all__ = ["OVERLAY_MAX_SIDE", "cells_csv", "cells_geojson", "draw_overlay", "write_segmentation"]

#: The overlay's longer side is at most this many pixels (enough to read ids; quick to write).
OVERLAY_MAX_SIDE = 2000


def cells_csv(seg: Segmentation) -> str:
    """The measurement table as CSV text (header + one row per cell)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MEASUREMENT_COLUMNS)
    for row in seg.rows():
        writer.writerow([_fmt(row[c]) for c in MEASUREMENT_COLUMNS])
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.6g}"
    return str(v)


def _polygon(mask: np.ndarray, x0: int, y0: int) -> list[list[float]] | None:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)[:, 0, :].astype(float)
    if len(c) < 3:
        return None
    ring = [[float(x + x0), float(y + y0)] for x, y in c]
    return ring + [ring[0]]  # GeoJSON rings are closed


def cells_geojson(seg: Segmentation) -> dict[str, Any]:
    """The cells as a GeoJSON FeatureCollection of QuPath cell objects (pixel coordinates of the input)."""
    features = []
    for row in seg.rows():
        cid = row["cell_id"]
        x0, y0, x1, y1 = row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]
        cell = _polygon(seg.cells[y0:y1, x0:x1] == cid, x0, y0)
        nucleus = _polygon(seg.nuclei[y0:y1, x0:x1] == cid, x0, y0)
        if cell is None or nucleus is None:
            continue
        measurements = {k: (float(v) if not isinstance(v, bool) else int(v)) for k, v in row.items()}
        features.append(
            {
                "type": "Feature",
                "id": f"cell-{cid}",
                "geometry": {"type": "Polygon", "coordinates": [cell]},
                "nucleusGeometry": {"type": "Polygon", "coordinates": [nucleus]},
                "properties": {"objectType": "cell", "name": f"cell {cid}", "measurements": measurements},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def draw_overlay(image: np.ndarray, seg: Segmentation, *, max_side: int = OVERLAY_MAX_SIDE,
                 colors: Mapping[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """Outlines of cells (green, or `colors` per id) and nuclei (dark blue) with ids, on a copy of the smear.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        The smear.
    seg : Segmentation
        Its segmentation.
    max_side : int, optional
        The overlay is reduced so that its longer side is at most this.
    colors : mapping of int to (r, g, b), optional
        Outline colour per cell id (e.g. by blast probability).

    Returns
    -------
    ndarray of uint8
        RGB overlay.
    """
    import cv2

    from ._segment import _resize

    h, w = image.shape[:2]
    halvings = max(0, int(np.ceil(np.log2(max(h, w) / max_side)))) if max(h, w) > max_side else 0
    canvas = _resize(image, 0.5**halvings) if halvings else image.copy()  # halving: OpenCV's fast path
    f = canvas.shape[1] / w
    thick = max(1, round(max(canvas.shape[:2]) / 800))
    for row in seg.rows():
        cid = row["cell_id"]
        x0, y0, x1, y1 = row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]
        color = (0, 200, 0) if colors is None else tuple(int(c) for c in colors.get(cid, (0, 200, 0)))
        for labels, col in ((seg.cells, color), (seg.nuclei, (20, 20, 120))):
            contours, _ = cv2.findContours((labels[y0:y1, x0:x1] == cid).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            scaled = [np.round((c.astype(float) + (x0, y0)) * f).astype(np.int32) for c in contours]
            cv2.drawContours(canvas, scaled, -1, col, thick, lineType=cv2.LINE_AA)
        label = str(cid) + ("*" if row["smudge"] else "")
        org = (min(int(x1 * f) + 2, canvas.shape[1] - 12 * thick), max(14 * thick, int(y0 * f) + 14 * thick))
        scale = 0.55 * thick
        cv2.putText(canvas, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(canvas, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return canvas


def write_segmentation(
    out_dir: str | os.PathLike[str],
    image: np.ndarray,
    seg: Segmentation,
    *,
    crops: bool = True,
    patch_size: int = 50,
    patch_um_per_px: float = 0.5,
    summary: Mapping[str, Any] | None = None,
    threads: int = 2,
) -> Path:
    """Write the output folder of one image (see the module docstring), atomically.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The image's folder, e.g. ``OUT/smear``; replaced if it exists.
    image : (H, W, 3) ndarray of uint8
        The smear that was segmented.
    seg : Segmentation
        Its segmentation.
    crops : bool, optional
        Write ``crops/`` too.
    patch_size, patch_um_per_px : optional
        Size and pixel size of the scale-normalised patches.
    summary : mapping, optional
        Extra entries for ``segmentation.json`` (e.g. the input path and timings).
    threads : int, optional
        Threads that encode the images (PNG and JPEG encoding runs outside Python's lock).

    Returns
    -------
    pathlib.Path
        The folder written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        images: list[tuple[Path, np.ndarray]] = [
            (tmp / "nuclei.png", seg.nuclei.astype(np.uint16)),
            (tmp / "cells.png", seg.cells.astype(np.uint16)),
            (tmp / "overlay.jpg", draw_overlay(image, seg)),
        ]
        if crops:
            (tmp / "crops").mkdir()
            for row in seg.rows():
                cid = row["cell_id"]
                box = image[row["bbox_y0"] : row["bbox_y1"], row["bbox_x0"] : row["bbox_x1"]]
                patch = extract_patch(image, row["x"], row["y"], um_per_px=seg.um_per_px, patch_size=patch_size,
                                      patch_um_per_px=patch_um_per_px)
                images += [(tmp / "crops" / f"cell_{cid:04d}.png", box),
                           (tmp / "crops" / f"cell_{cid:04d}_patch.png", patch)]
        # Encoding releases the GIL: a few threads overlap it with the text outputs below.
        with ThreadPoolExecutor(max(1, threads)) as pool:
            pending = [pool.submit(write_image, path, array) for path, array in images]
            write_text(tmp / "cells.csv", cells_csv(seg))
            write_text(tmp / "cells.geojson", json.dumps(cells_geojson(seg), separators=(",", ":")) + "\n")
            info = {
                "n_cells": seg.n_cells,
                "um_per_px": seg.um_per_px,
                "scale_source": seg.scale_source,
                "n_red_cells": seg.n_red_cells,
                "working_um_per_px": seg.working_um_per_px,
                "thresholds": dict(seg.thresholds),
                "image_shape": list(image.shape),
                "patch": {"size": patch_size, "um_per_px": patch_um_per_px},
            }
            info.update(summary or {})
            write_json(tmp / "segmentation.json", info)
            for future in pending:
                future.result()
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an older result is moved aside first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
