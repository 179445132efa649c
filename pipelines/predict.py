"""Classify new smears with a model bundle: ``leukoseg classify IMAGE...``.

Per image: segment, measure, compute the features and 50x50 patches of every cell, score each cell with
the bundle's models (NumPy only: no scikit-learn, Keras or TensorFlow is imported, so one smear is classified
a few seconds after the command starts; see ``benchmarks/cold_start.py``), turn the cell scores into the
image's probability of ALL with the bundle's image rule and threshold, and score the FAB subtype of an image
called ALL from its predicted blasts.

The default bundle ships inside the package (``leukoseg/models/default``); it was trained by
``leukoseg train --dataset all-idb1`` on ALL-IDB1 (see its ``bundle.json`` provenance for the data,
versions and cross-validated metrics). Research use only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from leukoseg._checks import check_image
from leukoseg._frozen import freeze_fields

if TYPE_CHECKING:
    from leukoseg.classify.bundle import ModelBundle
    from leukoseg.segmentation import Segmentation

__all__ = [
    "Classification",
    "blast_colors",
    "classify_image",
    "default_model_dir",
    "load_model",
    "write_classification",
]

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """Return the folder of the bundled default model.

    Returns
    -------
    pathlib.Path
        ``leukoseg/models/default`` in the installed package.
    """
    from importlib import resources

    return Path(str(resources.files("leukoseg") / "models" / "default"))


def load_model(path: str | os.PathLike[str] | None = None) -> ModelBundle:
    """Load a model bundle (default: the bundled one), checked for version and integrity.

    Parameters
    ----------
    path : path, optional
        A bundle folder written by ``leukoseg train``.

    Returns
    -------
    ModelBundle
        The bundle's models, image rule, thresholds and settings, ready for :func:`classify_image`.

    Raises
    ------
    LeukosegError
        If the folder is not a valid bundle (missing, corrupt, incompatible), or its configuration lacks
        or garbles a setting that classification reads.
    """
    from leukoseg.classify.bundle import load_bundle

    bundle = load_bundle(default_model_dir() if path is None else path)
    _check_config(bundle)
    return bundle


def _check_config(bundle) -> None:
    """Check, once at load time, the settings of ``bundle.json`` that :func:`classify_image` reads.

    :func:`~leukoseg.classify.load_bundle` already checked the values of ``image_rule.top_k``, ``patch`` and
    ``features`` where present (a bundle may be saved without them); here they must be present, and the
    settings only classification reads are checked. A damaged setting is then one error naming the file,
    not a failure of every image (or, for the FAB settings, of the first image called ALL).
    """
    import math

    from leukoseg.classify.fab import FABSettings

    from ..errors import LeukosegError

    where = Path(bundle.path) / "bundle.json"
    config = bundle.config

    def bad(what: str):
        return LeukosegError(where, f"invalid classification settings: {what}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    primary = config.get("primary_model")
    if primary not in bundle.outputs:
        raise bad(f"primary_model {primary!r} is not one of the bundle's scores {list(bundle.outputs)}")
    rule = config.get("image_rule")
    if not isinstance(rule, Mapping) or not number(rule.get("threshold")):
        raise bad("image_rule needs an integer top_k >= 1 and a finite number threshold")
    if not 0 <= rule["threshold"] <= 1:  # image scores are probabilities: outside, every call is the same
        raise bad(f"image_rule threshold must be a number in [0, 1]; got {rule['threshold']!r}")
    cell_threshold = config.get("blast_cell_threshold", 0.5)
    if not number(cell_threshold) or not 0 <= cell_threshold <= 1:
        raise bad(f"blast_cell_threshold must be a number in [0, 1]; got {cell_threshold!r}")
    if not isinstance(config.get("patch"), Mapping):
        raise bad("patch needs an integer size >= 8 and a positive um_per_px")
    if not isinstance(config.get("features"), Mapping):
        raise bad("features: the feature settings are missing")
    try:
        FABSettings(**config["fab"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"fab: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Classification:
    """The verdict on one smear.

    Attributes
    ----------
    p_all : float
        Image score: probability-like score of ALL (the bundle's image rule over cell blast probabilities).
    decision : str
        ``'ALL'`` or ``'normal'`` (``p_all >= threshold``).
    threshold : float
        The bundle's image threshold.
    n_cells, n_blasts : int
        Cells found, and cells with a blast probability of at least the bundle's cell threshold (0.5).
    p_blast : ndarray of shape (n_cells,)
        Blast probability of every cell (the bundle's primary model), in ``cell_id`` order.
    p_blast_models : Mapping[str, ndarray]
        Every model's cell probabilities.
    fab : Mapping
        FAB result (``fab_subtype``, ``fab_score``, ``fab_pct_<criterion>``...) for an image called ALL;
        empty otherwise. FAB is a historical morphological classification, for research only.
    model : str
        Name of the primary model (``'fused'`` or ``'baseline'``).
    """

    p_all: float
    decision: str
    threshold: float
    n_cells: int
    n_blasts: int
    p_blast: np.ndarray = field(repr=False)
    p_blast_models: Mapping[str, np.ndarray] = field(repr=False)
    fab: Mapping[str, Any] = field(repr=False)
    model: str

    def __post_init__(self) -> None:
        freeze_fields(self, "p_blast", "p_blast_models", "fab")

    def to_dict(self) -> dict[str, Any]:
        """Return the image-level fields as plain JSON-able data.

        Returns
        -------
        dict
            ``p_all``, ``decision``, ``threshold``, ``model``, ``n_cells``, ``n_blasts`` and the entries of
            `fab` (none for an image called normal).
        """
        return {
            "p_all": round(float(self.p_all), 6),
            "decision": self.decision,
            "threshold": round(float(self.threshold), 6),
            "model": self.model,
            "n_cells": self.n_cells,
            "n_blasts": self.n_blasts,
            **{k: v for k, v in self.fab.items()},
        }


def classify_image(
    image: np.ndarray, model: ModelBundle, *, seg: Segmentation | None = None, pixel_size: float | None = None
) -> tuple[Segmentation, Classification]:
    """Segment one smear and classify it.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    model : ModelBundle
        From :func:`load_model`.
    seg : Segmentation, optional
        A segmentation of `image` already made (otherwise it is made with the segmentation settings the
        bundle was trained on, ``bundle.json``'s ``config.segment``).
    pixel_size : float, optional
        Micrometres per pixel, if known (default: measured from the red cells); with `seg`, give it to
        ``segment`` instead.

    Returns
    -------
    seg : Segmentation
        The segmentation (`seg` itself when given).
    result : Classification
        Cell blast probabilities, the image verdict and, for an image called ALL, its FAB subtype.

    Raises
    ------
    ValueError
        If `image` is not an RGB uint8 image, `seg` was made from an image of another size, or both `seg`
        and `pixel_size` are given.
    """
    from leukoseg.classify.fab import FABSettings, blast_mask, fab_classify
    from leukoseg.features.rows import feature_matrix
    from leukoseg.segmentation import extract_patches, recorded_segment_settings, segment

    from .cache import _cells_for_features
    from .metrics import image_score

    check_image(image)
    if seg is not None and pixel_size is not None:
        raise ValueError("give pixel_size to segment(), not with a segmentation already made (seg)")
    if seg is not None and tuple(seg.input_shape) != image.shape[:2]:
        raise ValueError(f"seg was made from an image of {seg.input_shape[1]}x{seg.input_shape[0]} pixels; "
                         f"this one has {image.shape[1]}x{image.shape[0]}")  # fmt: skip
    config = model.config
    if seg is None:
        # As the bundle's training images were segmented (an older bundle: as its release did).
        seg = segment(image, pixel_size=pixel_size, **recorded_segment_settings(config.get("segment")))
    m = seg.measurements
    feats = config["features"]
    patch = config["patch"]
    # A bundle from before the crop context had none: its cells are cut as it was trained, on bare boxes.
    cells = _cells_for_features(image, seg, context_um=float(feats.get("context_um", 0.0)))
    X = feature_matrix(
        cells, feats["measurement_names"], texture=feats["texture"],
        stain=bool(feats.get("stain", False)), lbp_radii_um=feats.get("lbp_radii_um", ()),
        distances_um=feats["distances_um"], levels=feats["levels"], angles_deg=feats["angles_deg"],
    )  # fmt: skip
    patches = extract_patches(image, m["x"], m["y"], um_per_px=seg.um_per_px, patch_size=int(patch["size"]),
                              patch_um_per_px=float(patch["um_per_px"]))  # fmt: skip
    scores = model.predict_cells(X if model.n_features is not None else None,
                                 patches if "cnn" in model.models else None)  # fmt: skip
    primary = config["primary_model"]
    p = np.asarray(scores[primary], np.float64)
    rule = config["image_rule"]
    p_all = image_score(p, top_k=int(rule["top_k"]))
    threshold = float(rule["threshold"])
    decision = "ALL" if p_all >= threshold else "normal"
    cell_threshold = float(config.get("blast_cell_threshold", 0.5))
    fab: dict[str, Any] = {}
    if decision == "ALL" and len(p):
        fab = fab_classify(m, blasts=blast_mask(p, threshold=cell_threshold),
                           settings=FABSettings(**config["fab"])).to_dict()  # fmt: skip
    result = Classification(
        p_all=float(p_all), decision=decision, threshold=threshold, n_cells=int(len(p)),
        n_blasts=int((p >= cell_threshold).sum()), p_blast=p, p_blast_models=dict(scores), fab=fab, model=primary,
    )  # fmt: skip
    return seg, result


def blast_colors(cell_ids: Iterable[int], p_blast: Iterable[float]) -> dict[int, tuple[int, int, int]]:
    """Overlay colour of every cell from its blast probability: blue (0) through yellow to red (1).

    Parameters
    ----------
    cell_ids : sequence of int
        The cells' ids (``cell_id`` of ``cells.csv``).
    p_blast : sequence of float in [0, 1]
        Each cell's blast probability, in the order of `cell_ids` (clipped to [0, 1]).

    Returns
    -------
    dict of int to (r, g, b)
        Each cell id's colour, 0-255 per channel.

    Examples
    --------
    >>> blast_colors([1, 2], [0.0, 1.0])
    {1: (40, 120, 255), 2: (230, 20, 20)}
    """
    stops = np.array([[40, 120, 255], [250, 210, 30], [230, 20, 20]], np.float64)
    out: dict[int, tuple[int, int, int]] = {}
    for cid, p in zip(cell_ids, p_blast):
        t = float(np.clip(p, 0, 1)) * 2
        i = min(int(t), 1)
        rgb = stops[i] + (stops[i + 1] - stops[i]) * (t - i)
        out[int(cid)] = cast(tuple[int, int, int], tuple(int(round(v)) for v in rgb))  # rgb has 3 entries
    return out


def write_classification(
    out_dir: str | os.PathLike[str],
    image: np.ndarray,
    seg: Segmentation,
    result: Classification,
    *,
    crops: bool = True,
    summary: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> Path:
    """Write the segmentation outputs of one image plus its classification, atomically.

    ``cells.csv`` and ``cells.geojson`` gain ``p_blast`` (the primary model) and ``p_blast_<model>``
    columns; ``overlay.jpg`` colours each cell by its blast probability (blue 0, yellow 0.5, red 1);
    ``classification.json`` holds the image-level verdict and FAB subtype.

    Parameters
    ----------
    out_dir : path
        The image's output folder (replaced).
    image : (H, W, 3) ndarray of uint8
        The RGB smear.
    seg : Segmentation
        Its segmentation.
    result : Classification
        :func:`classify_image`'s result for it.
    crops : bool, optional
        Write ``crops/`` too.
    summary : mapping, optional
        Extra entries for ``classification.json`` (e.g. the input path, timings).
    threads : int, optional
        Image-encoding threads.

    Returns
    -------
    pathlib.Path
        The folder written (`out_dir`).
    """
    from leukoseg.segmentation import write_segmentation

    ids = np.asarray(seg.measurements["cell_id"])
    columns = {"p_blast": result.p_blast}
    columns.update({f"p_blast_{k}": v for k, v in sorted(result.p_blast_models.items())})
    verdict = {**dict(summary or {}), **result.to_dict(),
               "note": "Research use only, not a diagnosis. FAB is a historical morphological classification."}
    return write_segmentation(
        out_dir, image, seg, crops=crops, threads=threads, cell_columns=columns,
        colors=blast_colors(ids, result.p_blast), extra_json={"classification.json": verdict},
    )  # fmt: skip
