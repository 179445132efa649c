"""Segmentation and feature cache of an experiment: every image is segmented and measured once.

Each image gets one ``.npz`` file (``allow_pickle=False``, never a pickle) named after the SHA-256 of its
bytes and of the settings that produced it, so a changed image, a changed segmentation parameter or a new
leukoseg version give a new entry and a stale one is never read. Entries are written atomically.

An entry holds:

- ``um_per_px`` (scalar), ``scale_source`` (where it came from: ``'red cells'``, ``'given'`` or
  ``'fallback'``, as :attr:`~leukoseg.segmentation.Segmentation.scale_source`) and ``columns`` (the
  measurement names, str);
- ``m_<column>`` for each measurement column of :data:`~leukoseg.segmentation.MEASUREMENT_COLUMNS`, one
  row per cell in id order;
- ``features`` (n_cells, n_features) float64 and ``feature_names``: the :class:`~leukoseg.features.CellFeatures`
  rows of the cells.
- ``patches`` (n_cells, 50, 50, 3) uint8: the scale-normalised patch of every cell (0.5 um per pixel,
  centred on the nucleus; :func:`~leukoseg.segmentation.extract_patches`), the input of the CNN. ``CellFeatures.transform`` is a function of one cell alone (its ``fit`` only fixes the
  column list), so a row computed once serves every fold.

The crops themselves (native-resolution box, nucleus and cell masks) are used to compute the texture
features and then dropped: at 0.08 um/px they would take hundreds of megabytes for ALL-IDB1.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from .._frozen import freeze_fields
from ..datasets import file_sha256
from ..errors import LeukosegError
from ..io import _check_writable_folder, _python_scalar

__all__ = ["CachedImage", "cache_key", "default_cache_dir", "load_or_compute"]

log = logging.getLogger(__name__)

#: Bump when the layout of a cache entry or the way it is computed changes.
#: 12: the same, with the red cells measured against the glass (11 took them from the red-green difference
#: alone, which a warm light or warm cytoplasm fooled; Im094_0's threshold differs);
#: 11: the stain threshold stays ``min_stain_excess`` above the red cells' mode too
#: (``segment(stain_above_red_cells=True)``): 3 cells of 2 of ALL-IDB1's 108 images get other outlines;
#: 10: cells leave out stained strips along neighbouring red cells (``segment(cytoplasm_open_um=1.3)``,
#: 0.7 before), which changes cell areas, N:C ratios and features;
#: 9: an input pixel centred exactly on the edge of two working pixels goes to either side in turn (always
#: the right one shifted centroids of tied rows or columns by a quarter pixel; 8 of ALL-IDB1's 108 images tie);
#: 8: input pixels map to the working pixel under their centre (centroids were +0.5 px off), background
#: level from every pixel (a subsample made it depend on the orientation);
#: 7: the red-cell ruler leaves black pixels out and measures wide fields again on a finer copy;
#: 6: scale_source stored; 5: centroids and boxes exactly those of the upscaled label images.
CACHE_FORMAT = 12


@dataclass(frozen=True)
class CachedImage:
    """The cells of one image, as the experiment needs them.

    Attributes
    ----------
    um_per_px : float
        Pixel size found by the segmentation.
    scale_source : str
        Where it came from: ``'red cells'`` (the ruler), ``'given'`` or ``'fallback'`` (too few red cells;
        the median nucleus taken as the segmentation's fallback diameter).
    measurements : Mapping[str, ndarray]
        One array per measurement column, one row per cell.
    features : (n_cells, n_features) ndarray of float64
        CellFeatures rows.
    feature_names : tuple of str
        Their columns.
    patches : (n_cells, 50, 50, 3) ndarray of uint8
        Scale-normalised cell patches, the CNN's input.
    """

    um_per_px: float
    scale_source: str
    measurements: Mapping[str, np.ndarray] = field(repr=False)
    features: np.ndarray = field(repr=False)
    feature_names: tuple[str, ...]
    patches: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        freeze_fields(self, "measurements", "features", "patches")

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.features.shape[0])


def default_cache_dir() -> Path:
    """Return the default cache folder: ``$XDG_CACHE_HOME/leukoseg``, else ``~/.cache/leukoseg``.

    Returns
    -------
    pathlib.Path
        The folder; it is created by the first run that writes to it.
    """
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "leukoseg"


def _settings(segment_kw: Mapping, feature_kw: Mapping) -> dict:
    from leukoseg import __version__
    from leukoseg.features import CellFeatures
    from leukoseg.segmentation import segment

    defaults = {
        name: p.default for name, p in inspect.signature(segment).parameters.items() if p.default is not p.empty
    }
    defaults.update(segment_kw)
    # Every CellFeatures setting, defaults included: a changed default (context_um) must not reuse entries.
    features = {**CellFeatures().get_params(), **feature_kw}
    return {
        "format": CACHE_FORMAT,
        "leukoseg": __version__,
        "segment": {k: defaults[k] for k in sorted(defaults)},
        "features": {k: features[k] for k in sorted(features)},
    }


def cache_key(content_hash: str, *, segment_kw: Mapping | None = None, feature_kw: Mapping | None = None) -> str:
    """Name the cache entry of an image: a hash of its content hash and of all settings.

    Parameters
    ----------
    content_hash : str
        SHA-256 of the image file's bytes.
    segment_kw, feature_kw : mapping, optional
        Keyword arguments given to :func:`~leukoseg.segmentation.segment` and
        :class:`~leukoseg.features.CellFeatures` (defaults filled in for both).

    Returns
    -------
    str
        32 hexadecimal digits; it changes with the image, any setting, the cache format or leukoseg's version.
    """
    settings = _settings(segment_kw or {}, feature_kw or {})
    text = json.dumps([content_hash, settings], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cells_for_features(image: np.ndarray, seg, *, context_um: float) -> list[dict]:
    """The CellFeatures input of every cell: crop, masks, pixel size, measurements.

    The crop is the cell's bounding box widened by `context_um` (``CellFeatures.context_um``) on every
    side, within the image.
    """
    m = seg.measurements
    pad = math.ceil(float(context_um) / seg.um_per_px - 1e-9)  # 0 for no context
    height, width = image.shape[:2]
    cells = []
    for i in range(seg.n_cells):
        cid = int(m["cell_id"][i])
        x0, y0, x1, y1 = (int(m[k][i]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
        x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)
        cells.append({
            "image": image[y0:y1, x0:x1],
            "nucleus": seg.nuclei[y0:y1, x0:x1] == cid,
            "cell": seg.cells[y0:y1, x0:x1] == cid,
            "um_per_px": seg.um_per_px,
            "measurements": {k: _python_scalar(v[i]) for k, v in m.items()},
        })  # fmt: skip
    return cells


def _compute(path: Path, segment_kw: Mapping, feature_kw: Mapping) -> CachedImage:
    from leukoseg.features import CellFeatures
    from leukoseg.features.rows import check_context_um
    from leukoseg.io import read_image
    from leukoseg.segmentation import MEASUREMENT_COLUMNS, extract_patches, segment
    from leukoseg.segmentation._segment import _size_problem

    image = read_image(path)
    too_small = _size_problem(image)
    if too_small:  # one line naming the file, as for an unreadable one
        raise LeukosegError(path, too_small)
    seg = segment(image, **segment_kw)
    measurements = {k: np.asarray(seg.measurements[k]) for k in MEASUREMENT_COLUMNS}
    extractor = CellFeatures(**feature_kw)
    cells = _cells_for_features(image, seg, context_um=check_context_um(extractor.context_um))
    if cells:
        extractor.fit(cells)
        features = extractor.transform(cells)
        names = tuple(str(n) for n in extractor.get_feature_names_out())
    else:
        names = _feature_names_without_cells(feature_kw)
        features = np.zeros((0, len(names)))
    patches = extract_patches(image, measurements["x"], measurements["y"], um_per_px=seg.um_per_px)
    return CachedImage(float(seg.um_per_px), str(seg.scale_source), measurements, features, names, patches)


def _feature_names_without_cells(feature_kw: Mapping) -> tuple[str, ...]:
    """Columns CellFeatures would give, for an image with no cell (fit needs one cell: a dummy)."""
    from leukoseg.features import BOOKKEEPING_MEASUREMENTS, CellFeatures
    from leukoseg.segmentation import MEASUREMENT_COLUMNS

    dummy = {k: (True if k in ("touches_border", "smudge") else 0.0) for k in MEASUREMENT_COLUMNS}
    extractor = CellFeatures(**feature_kw).fit([{"measurements": dummy}])
    names = tuple(str(n) for n in extractor.get_feature_names_out())
    assert not set(names) & BOOKKEEPING_MEASUREMENTS
    return names


def _save(path: Path, entry: CachedImage) -> None:
    from leukoseg.io import atomic_write

    arrays: dict[str, np.ndarray | np.generic] = {
        "um_per_px": np.float64(entry.um_per_px),
        "scale_source": np.array(entry.scale_source, dtype=str),
        "columns": np.array(list(entry.measurements), dtype=str),
        "features": entry.features,
        "feature_names": np.array(entry.feature_names, dtype=str),
        "patches": entry.patches,
    }
    for k, v in entry.measurements.items():
        arrays[f"m_{k}"] = v
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # (for mypy, a key could be savez's allow_pickle)


def _load(path: Path) -> CachedImage:
    with np.load(path, allow_pickle=False) as z:
        columns = [str(c) for c in z["columns"]]
        return CachedImage(
            float(z["um_per_px"]),
            str(z["scale_source"]),
            {c: z[f"m_{c}"] for c in columns},
            z["features"].astype(np.float64),
            tuple(str(n) for n in z["feature_names"]),
            z["patches"],
        )


def _task(args: tuple[str, str, dict, dict]) -> tuple[str, float]:
    """Worker: compute and store one entry; returns the entry path and the seconds it took."""
    import time

    src, dst, segment_kw, feature_kw = args
    start = time.perf_counter()
    _save(Path(dst), _compute(Path(src), segment_kw, feature_kw))
    return dst, time.perf_counter() - start


def load_or_compute(
    paths: Sequence[str | os.PathLike[str]], cache_dir: str | os.PathLike[str], *,
    segment_kw: Mapping | None = None, feature_kw: Mapping | None = None, workers: int = 1, progress: bool = False,
) -> tuple[list[CachedImage], dict[str, float]]:  # fmt: skip
    """Segment and measure images, reusing cached entries.

    Parameters
    ----------
    paths : sequence of path
        Image files.
    cache_dir : path
        Folder of the entries (created).
    segment_kw, feature_kw : mapping, optional
        Settings of :func:`~leukoseg.segmentation.segment` and :class:`~leukoseg.features.CellFeatures`.
    workers : int, optional
        Processes for the missing entries.
    progress : bool, optional
        Show a progress bar on stderr (only on a terminal).

    Returns
    -------
    entries : list of CachedImage
        One per path, in order.
    info : dict
        ``computed``, ``reused`` (counts) and ``compute_seconds`` (summed worker seconds).
    """
    import sys

    from tqdm import tqdm

    segment_kw, feature_kw = dict(segment_kw or {}), dict(feature_kw or {})
    cache_dir = Path(cache_dir).expanduser()
    _check_writable_folder(cache_dir, what="cache folder", hint="; pass --cache DIR")
    targets = [cache_dir / f"{cache_key(file_sha256(Path(p)), segment_kw=segment_kw, feature_kw=feature_kw)}.npz" for p in paths]
    entries = [_try_load(t) if t.is_file() else None for t in targets]
    todo = [i for i, e in enumerate(entries) if e is None]
    missing = [(str(paths[i]), str(targets[i]), segment_kw, feature_kw) for i in todo]
    seconds = 0.0
    if missing:
        log.info("segmenting %d of %d images (cache %s)", len(missing), len(targets), cache_dir)
        bar = tqdm(total=len(missing), unit="image", desc="segment", file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()))
        try:
            if workers <= 1 or len(missing) == 1:
                results = map(_task, missing)
                for _, s in results:
                    seconds += s
                    bar.update()
            else:
                from leukoseg._workers import process_pool

                with process_pool(min(workers, len(missing))) as pool:  # an interrupt stops the workers
                    for _, s in pool.map(_task, missing):
                        seconds += s
                        bar.update()
        finally:
            bar.close()
            from leukoseg.io import _remove_staged_leftovers

            _remove_staged_leftovers(targets[i] for i in todo)  # what stopped workers were writing
    for i in todo:
        entries[i] = _load(targets[i])
    loaded = cast(list[CachedImage], entries)  # every None was loaded above
    return loaded, {"computed": len(missing), "reused": len(targets) - len(missing), "compute_seconds": seconds}


def _try_load(path: Path) -> CachedImage | None:
    """A cached entry, or None when it cannot be read (a damaged entry is computed again, not fatal)."""
    try:
        return _load(path)
    except Exception as exc:  # zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError: all mean "recompute"
        log.warning("cache entry %s is unreadable (%s: %s); computing it again", path, type(exc).__name__, exc)
        return None
