"""Writing a segmentation to disk: the per-image output folder that other tools read.

``OUT/<image stem>/`` holds

- ``cells.csv``: one row per cell, the columns of :data:`MEASUREMENT_COLUMNS`;
- ``nuclei.png``, ``cells.png``: uint16 label images at the input's size, 0 background, value = cell_id;
- ``overlay.jpg``: outlines and ids drawn on the smear (halved until its longer side is at most 2000 px);
- ``cells.geojson``: QuPath cell objects (cell polygon as geometry, ``nucleusGeometry``, measurements), outlined
  along the pixel edges of the label images;
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_image, check_positive_int
from .._version import __version__
from ..errors import LeukosegError
from ..io import _RESULT_MARKER, _own_folder_refusal, _refusal_to_replace, _staged_folder, _swap_folder, encode_image
from ._crops import extract_patch
from ._measure import MEASUREMENT_COLUMNS
from ._png import label_png
from ._segment import Segmentation

__all__ = ["OVERLAY_MAX_SIDE", "cells_csv", "cells_geojson", "draw_overlay", "write_segmentation"]

#: The overlay's longer side is at most this many pixels (enough to read ids; quick to write).
OVERLAY_MAX_SIDE = 2000


def cells_csv(seg: Segmentation) -> str:
    """The measurement table as CSV text (header + one row per cell).

    Parameters
    ----------
    seg : Segmentation
        A result of :func:`~leukoseg.segmentation.segment`.

    Returns
    -------
    str
    """
    return _cells_csv(seg.rows())


def _cells_csv(rows: list[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    columns = [*MEASUREMENT_COLUMNS, *extra]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_fmt(row[c]) for c in columns] for row in rows)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.6g}"
    return str(v)


def _outlines(seg: Segmentation, rows: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """Per cell, the outer contours of the cell and of its nucleus, in input pixels relative to its box (the
    overlay's outlines)."""
    import cv2

    out = []
    for row in rows:
        cid = row["cell_id"]
        x0, y0, x1, y1 = row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]
        pair = []
        for which in ("cells", "nuclei"):
            mask = (seg._input_box(which, y0, y1, x0, x1) == cid).astype(np.uint8)
            pair.append(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])
        out.append((pair[0], pair[1]))
    return out


def _rings(seg: Segmentation) -> list[tuple[list[list[float]] | None, list[list[float]] | None]]:
    """Per cell (id order), the outlines of the cell and of its nucleus in ``cells.png`` and ``nuclei.png``.

    Each is a closed GeoJSON ring along the pixel edges of the input-size label image (pixel ``(row r, column
    c)`` is the square ``[c, c+1] x [r, r+1]``), or None. Traced at the working resolution and mapped through
    the upscaling, which repeats each working row and column over a run of input rows and columns: the same
    outline as tracing the input-size label image, at a fraction of the cost.
    """
    from ._measure import _input_edges
    from ._ndimage import find_objects

    (h, w), (H, W) = seg.working_nuclei.shape, seg.input_shape
    # Input edge of every working edge, as the measurements' centroids and boxes use them.
    edges_x, edges_y = _input_edges(w, W), _input_edges(h, H)
    out: list[list[Any]] = [[None, None] for _ in range(seg.n_cells)]
    index = {int(cid): i for i, cid in enumerate(seg.measurements["cell_id"])} if seg.n_cells else {}
    for k, labels in enumerate((seg.working_cells, seg.working_nuclei)):
        for lab, box in enumerate(find_objects(labels), start=1):
            if box is None or lab not in index:
                continue
            corners = _pixel_outline(labels[box] == lab)
            if corners is None:
                continue
            ring = np.stack([edges_x[corners[:, 0] + box[1].start], edges_y[corners[:, 1] + box[0].start]], axis=1)
            out[index[lab]][k] = _closed_ring(ring)
    return [(cell, nucleus) for cell, nucleus in out]


def _pixel_outline(mask: np.ndarray) -> np.ndarray | None:
    """The outer boundary of the largest 8-connected region of `mask` along pixel edges: its corners (x, y).

    OpenCV traces the centres of the boundary pixels; on the mask with every pixel doubled, those centres
    lie just inside the pixel edges, ``ceil(u / 2)`` moves them onto the edges, and a one-pixel spur or neck
    becomes two distinct edges instead of a contour that runs out and back over itself.
    """
    import cv2

    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    doubled = np.repeat(np.repeat(padded, 2, axis=0), 2, axis=1)
    contours = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return None
    rings = [(c[:, 0, :] + 1) // 2 - 1 for c in contours]  # ceil(u / 2), less the padding
    corners = rings[0] if len(rings) == 1 else max(rings, key=lambda r: abs(_twice_area(r)))
    corners = corners[(corners != corners[np.arange(len(corners)) - 1]).any(axis=1)]  # diagonal steps collapse
    n = len(corners)
    before, after = corners - corners[np.arange(n) - 1], corners[(np.arange(n) + 1) % n] - corners
    straight = (before[:, 0] * after[:, 1] == before[:, 1] * after[:, 0]) & ((before * after).sum(axis=1) > 0)
    corners = corners[~straight]
    return corners if len(corners) >= 4 else None


def _twice_area(ring: np.ndarray) -> float:
    """Twice the signed area of a ring of (x, y) points (positive: counterclockwise with y upwards)."""
    x, y = ring[:, 0], ring[:, 1]
    nxt = (np.arange(len(ring)) + 1) % len(ring)
    return float((x * y[nxt] - x[nxt] * y).sum())


def _closed_ring(ring: np.ndarray, cut: float = 0.25) -> list[list[float]]:
    """A ring of pixel corners as a valid, closed GeoJSON ring, counterclockwise as RFC 7946 asks.

    A corner visited twice is where two pixels of the region touch only diagonally; the ring would touch
    itself there (invalid for GIS tools), so each visit cuts the background pixel's corner by `cut` px.
    """
    ring = ring.astype(np.float64)
    keys = ring[:, 0] * (2.0 * ring[:, 1].max() + 3) + ring[:, 1]  # one number per corner
    ordered = np.sort(keys)
    if (ordered[1:] == ordered[:-1]).any():
        twice = np.isin(keys, ordered[1:][ordered[1:] == ordered[:-1]])
        points = []
        for i, v in enumerate(ring):
            if twice[i]:
                for u in (ring[i - 1], ring[(i + 1) % len(ring)]):
                    points.append(v + cut * (u - v) / np.hypot(*(u - v)))
            else:
                points.append(v)
        ring = np.array(points)
    if _twice_area(ring) < 0:
        ring = ring[::-1]
    closed = ring.tolist()
    return closed + [closed[0]]  # GeoJSON rings are closed


def cells_geojson(seg: Segmentation) -> dict[str, Any]:
    """The cells as a GeoJSON FeatureCollection of QuPath cell objects (pixel coordinates of the input).

    Parameters
    ----------
    seg : Segmentation
        A result of :func:`~leukoseg.segmentation.segment`.

    Returns
    -------
    dict
        Ready for ``json.dumps``: each feature's ``geometry`` is the cell outline, ``nucleusGeometry``
        the nucleus outline, and ``properties["measurements"]`` the cell's measurements. The outlines run
        along the pixel edges of the label images :attr:`~Segmentation.cells` and :attr:`~Segmentation.nuclei`
        (x = column, y = row; pixel ``(r, c)`` is the square ``[c, c+1] x [r, r+1]``, as in QuPath), so a
        polygon's area is its label's pixel count.
    """
    return _cells_geojson(seg.rows(), _rings(seg))


def _cells_geojson(rows: list[dict[str, Any]], rings: list[tuple[Any, Any]]) -> dict[str, Any]:
    features = []
    for row, (cell, nucleus) in zip(rows, rings):
        cid = row["cell_id"]
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
    """Draw outlines of cells (green, or `colors` per id) and nuclei (dark blue) with ids, on a copy of the smear.

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

    Raises
    ------
    ValueError
        If `image` is not a non-empty (H, W, 3) uint8 array of the segmented image's size, or `max_side` is
        not a positive int.
    """
    _check_segmented_image(image, seg)
    check_positive_int("max_side", max_side)
    rows = seg.rows()
    return _draw_overlay(image, seg, rows, _outlines(seg, rows), max_side=max_side, colors=colors)


def _draw_overlay(image: np.ndarray, seg: Segmentation, rows: list[dict[str, Any]],
                  outlines: list[tuple[Any, Any]], *, max_side: int,
                  colors: Mapping[int, tuple[int, int, int]] | None) -> np.ndarray:
    import cv2

    from ._segment import _Pyramid

    h, w = image.shape[:2]
    halvings = max(0, int(np.ceil(np.log2(max(h, w) / max_side)))) if max(h, w) > max_side else 0
    if halvings:
        canvas = _Pyramid(image).resize(0.5**halvings)
    else:
        canvas = image.copy()
    f = canvas.shape[1] / w
    thick = max(1, round(max(canvas.shape[:2]) / 800))
    for row, (cell_contours, nucleus_contours) in zip(rows, outlines):
        cid = row["cell_id"]
        x0, y0, x1 = row["bbox_x0"], row["bbox_y0"], row["bbox_x1"]
        color = (0, 200, 0) if colors is None else tuple(int(c) for c in colors.get(cid, (0, 200, 0)))
        for contours, col in ((cell_contours, color), (nucleus_contours, (20, 20, 120))):
            scaled = [np.round((c.astype(float) + (x0, y0)) * f).astype(np.int32) for c in contours]
            cv2.drawContours(canvas, scaled, -1, col, thick, lineType=cv2.LINE_AA)
        label = str(cid) + ("*" if row["smudge"] else "")
        org = (min(int(x1 * f) + 2, canvas.shape[1] - 12 * thick), max(14 * thick, int(y0 * f) + 14 * thick))
        scale = 0.55 * thick
        cv2.putText(canvas, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(canvas, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return canvas


_MAX_LABEL = 2**16 - 1  # the largest cell id a 16-bit label PNG holds


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
    cell_columns: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write the output folder of one image (see the module docstring), atomically.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The image's folder, e.g. ``OUT/smear``. An earlier result folder there (one holding a
        ``segmentation.json``) or an empty folder is replaced; anything else is left alone.
    image : (H, W, 3) ndarray of uint8
        The smear that was segmented.
    seg : Segmentation
        Its segmentation.
    crops : bool, optional
        Write ``crops/`` too.
    patch_size : int, optional
        Side of the scale-normalised patches, in pixels.
    patch_um_per_px : float, optional
        Their pixel size, in micrometres.
    summary : mapping, optional
        Extra entries for ``segmentation.json`` (e.g. the input path and timings).
    threads : int, optional
        Threads that encode the images (PNG and JPEG encoding runs outside Python's lock).
    cell_columns : mapping of str to sequence or 1-D ndarray of float, optional
        Extra per-cell columns (one value per cell, in id order) appended to ``cells.csv`` and to the
        GeoJSON measurements, e.g. ``{"p_blast": ...}``.
    colors : mapping of int to (r, g, b), optional
        Overlay outline colour per cell id (default green).
    extra_json : mapping of str to mapping, optional
        More JSON files for the folder, by file name (e.g. ``{"classification.json": {...}}``).

    Returns
    -------
    pathlib.Path
        The folder written.

    Raises
    ------
    LeukosegError
        If `out_dir` exists and is a file, or a folder that is neither empty nor an earlier result, or a parent
        of it is a file; or if `seg` has more cells than the 16-bit label images can number (65,535).
    ValueError
        If `image` is not an RGB uint8 array of the segmentation's height and width.
    """
    out_dir = Path(out_dir)
    _check_segmented_image(image, seg)
    if seg.n_cells > _MAX_LABEL:
        # The label PNGs store cell ids as 16-bit values: more cells would wrap around and alias ids.
        raise LeukosegError(None, f"{seg.n_cells:,} cells found, more than the {_MAX_LABEL:,} that the 16-bit "
                                  "label images (nuclei.png, cells.png) can number; is this a blood smear?")
    extra_json = dict(extra_json or {})
    for name in extra_json:
        if (Path(name).name != name or name == _RESULT_MARKER or not name.endswith(".json")
                or name.startswith(".")):  # fmt: skip
            raise ValueError(f"extra_json names a plain new .json file of the folder; got {name!r}")
    _check_replaceable(out_dir)  # before the work, and again at the swap
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LeukosegError(out_dir, "output folder cannot be created: a parent of it is a file") from None
    with _staged_folder(out_dir) as tmp:
        rows = seg.rows()
        for name, values in (cell_columns or {}).items():
            if len(values) != len(rows):
                raise ValueError(f"cell column {name!r} has {len(values)} values for {len(rows)} cells")
            for row, v in zip(rows, values):
                row[name] = float(v)
        index_rows, index_cols = seg._index_maps
        # Encoding releases the GIL: a few threads overlap it with the drawing and the text outputs.
        # Files are written plainly: the whole folder is renamed into place only when complete.
        with ThreadPoolExecutor(max(1, threads)) as pool:
            pending = [
                pool.submit(_write_bytes, tmp / name, label_png, labels, index_rows, index_cols)
                for name, labels in (("nuclei.png", seg.working_nuclei), ("cells.png", seg.working_cells))
            ]
            outlines = _outlines(seg, rows)
            overlay = _draw_overlay(image, seg, rows, outlines, max_side=OVERLAY_MAX_SIDE, colors=colors)
            pending.append(pool.submit(_write_bytes, tmp / "overlay.jpg", encode_image, overlay, ".jpg"))
            if crops:
                (tmp / "crops").mkdir()
                for row in rows:
                    cid = row["cell_id"]
                    box = image[row["bbox_y0"] : row["bbox_y1"], row["bbox_x0"] : row["bbox_x1"]]
                    patch = extract_patch(image, row["x"], row["y"], um_per_px=seg.um_per_px,
                                          patch_size=patch_size, patch_um_per_px=patch_um_per_px)
                    pending += [pool.submit(_write_bytes, tmp / "crops" / f"cell_{cid:04d}.png", encode_image, box,
                                            ".png"),
                                pool.submit(_write_bytes, tmp / "crops" / f"cell_{cid:04d}_patch.png", encode_image,
                                            patch, ".png")]
            _write_text(tmp / "cells.csv", _cells_csv(rows, list(cell_columns or {})))
            _write_text(tmp / "cells.geojson",
                        json.dumps(_cells_geojson(rows, _rings(seg)), separators=(",", ":")) + "\n")
            info = {
                "n_cells": seg.n_cells,
                "um_per_px": seg.um_per_px,
                "scale_source": seg.scale_source,
                "n_red_cells": seg.n_red_cells,
                "working_um_per_px": seg.working_um_per_px,
                "thresholds": dict(seg.thresholds),
                "image_shape": list(image.shape),
                "patch": {"size": patch_size, "um_per_px": patch_um_per_px},
                # Which outlines these are: a later release may segment otherwise by default.
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in seg.settings.items()},
                "leukoseg_version": __version__,
            }
            info.update(summary or {})
            _write_text(tmp / _RESULT_MARKER, json.dumps(info, indent=2, sort_keys=False, allow_nan=False) + "\n")
            for name, content in extra_json.items():
                _write_text(tmp / name, json.dumps(dict(content), indent=2, allow_nan=False) + "\n")
            for future in pending:
                future.result()
        _swap_into_place(tmp, out_dir)
    return out_dir


def _check_segmented_image(image: np.ndarray, seg: Segmentation) -> None:
    check_image(image)
    if image.shape[:2] != tuple(seg.input_shape):
        raise ValueError(f"image is {image.shape[:2]} but the segmentation is of a {tuple(seg.input_shape)} image")


def _write_bytes(path: Path, encode: Callable[..., bytes], *args: Any) -> None:
    """Encode (in a worker thread) and write one file of the temporary folder."""
    data = encode(*args)
    with open(path, "wb") as f:
        f.write(data)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace what leukoseg did not write (a file, or a folder of someone else's files), and '.'."""
    own = _own_folder_refusal(folder, "result")
    if own is not None:
        raise LeukosegError(folder, f"output folder {folder} {own}")
    why = _refusal_to_replace(folder, lambda f: (f / _RESULT_MARKER).is_file(), _RESULT_MARKER)
    if why is not None:
        # The reason names the folder: the CLI prints it after the input image's name.
        raise LeukosegError(folder, f"output folder {folder} exists and is not a leukoseg result folder ({why}); "
                                    "not replaced (choose another --out)")  # fmt: skip


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an older result is moved aside first, then removed."""
    _check_replaceable(final)  # again: the folder may have changed while the image was processed
    _swap_folder(tmp, final)
