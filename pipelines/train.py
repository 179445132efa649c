"""Train every model on a whole data set and write a model bundle: ``leukoseg train``.

The bundle is what ``leukoseg classify IMAGE`` uses (:mod:`.predict`). Training follows the experiment
(:mod:`.experiment`) with all images as the training set:

- the baseline models (GkNN, SVM, kNN) are fitted on every cell; their inner out-of-fold scores (grouped by
  image) feed the fusion and the threshold;
- the CNN is cross-fitted over ``cnn_inner_folds`` parts of the images for out-of-fold scores, and the
  bundle holds these CNNs, whose mean scores new cells: the experiment scores its test cells so, and the
  fusion is fitted on their scores (with the setting ``refit``, one CNN trained on every cell instead);
- the fusion (logistic stacking of baseline and CNN) is fitted on those out-of-fold scores, and the image
  threshold maximises the balanced accuracy of the images' out-of-fold fused scores.

The bundle's ``provenance`` records the data set's fingerprint, the library versions, the settings and,
when a run folder of ``leukoseg classify --dataset`` is given, its cross-validated metrics: the honest
estimate of how the bundle performs (figures computed on the training images themselves would not be).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leukoseg.errors import LeukosegError

from . import experiment as exp
from .cache import default_cache_dir, load_or_compute
from .folds import _seed_refusal, groups_per_class
from .metrics import choose_image_rule
from .report import load_metrics

if TYPE_CHECKING:
    from leukoseg.classify.fab import FABSettings
    from leukoseg.datasets import Dataset

__all__ = ["run_setting_differences", "train_bundle"]

log = logging.getLogger(__name__)


def train_bundle(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    device: str = "auto",
    cnn: bool = True,
    top_k: int | Sequence[int] = (1, 2, 3),
    match_radius_px: float = 50.0,
    inner_folds: int = 3,
    cnn_inner_folds: int = 2,
    inner_search: bool = False,
    gknn_params: Mapping | None = None,
    svm_params: Mapping | None = None,
    knn_params: Mapping | None = None,
    cnn_params: Mapping | None = None,
    fusion_params: Mapping | None = None,
    fab_settings: FABSettings | None = None,
    feature_params: Mapping | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Fit the models on every image of an ALL-IDB1-like data set and save a model bundle.

    Parameters
    ----------
    dataset : Dataset
        ``all-idb1`` (cells labelled from annotated blast centroids).
    out_dir : path
        Bundle folder to write (atomically).
    seed : int, optional
        Seed of everything random (inner folds, genetic search, SVM, CNNs).
    cache_dir : path, optional
        Segmentation cache; default :func:`~leukoseg.pipelines.cache.default_cache_dir`.
    workers : int, optional
        Processes for segmenting images not yet cached.
    device : {'auto', 'cpu', 'gpu'}, optional
        Where the CNN and the fusion are trained (recorded in the provenance).
    cnn : bool, optional
        Train the CNN and the fusion; ``False`` gives a baseline-only bundle.
    top_k : int or sequence of int, optional
        Candidate numbers of cells averaged into the image score; one, and the image threshold, are chosen on
        out-of-fold scores of the training images.
    match_radius_px : float, optional
        Radius of the matching of annotated blast centroids to cells (the cell labels).
    inner_folds : int, optional
        Folds of the inner cross-validation that scores the training images for the image rule and the fusion.
    cnn_inner_folds : int, optional
        Parts of the CNN's cross-fitting (at least 2).
    inner_search : bool, optional
        Tune the GkNN and the SVM afresh on each inner split (see
        :func:`~leukoseg.pipelines.experiment.run_experiment`).
    gknn_params, svm_params, knn_params, cnn_params, fusion_params : mapping, optional
        Keyword arguments of the models.
    fab_settings : FABSettings, optional
        FAB cut-offs stored in the bundle (default :class:`~leukoseg.classify.FABSettings`).
    feature_params : mapping, optional
        Keyword arguments of :class:`~leukoseg.features.CellFeatures` (e.g. ``{"context_um": 4.0}``), as in
        :func:`~leukoseg.pipelines.experiment.run_experiment`; stored in the bundle, which computes the same
        features at inference.
    run_dir : path, optional
        A run folder of the experiment on the same data and with the same settings: its cross-validated
        metrics go into the provenance.
    overwrite : bool, optional
        Replace an existing bundle folder.
    progress : bool, optional
        Progress bars on stderr (only on a terminal).

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Raises
    ------
    LeukosegError
        For a data set other than ALL-IDB1-like smears, a run folder without metrics, of other data or whose
        models were trained with other settings (its figures would not be this bundle's), an existing bundle
        without `overwrite`, an existing folder that is not a bundle, or `top_k`, a CNN or feature setting
        out of range (these before any image is segmented).
    """
    from leukoseg.classify import FABSettings
    from leukoseg.classify.bundle import save_bundle
    from leukoseg.features.rows import check_lbp_radii
    from leukoseg.segmentation import default_segment_settings

    t0 = time.perf_counter()
    why = _seed_refusal(seed)
    if why:  # before segmenting anything
        raise LeukosegError(None, why)
    if exp._mode(dataset) != "points":
        raise LeukosegError(dataset.root, "train needs smears with annotated blast centroids (all-idb1)")
    exp.check_feature_params(feature_params)
    if cnn:
        exp.check_cnn_params(cnn_params)
    top_ks = exp.check_top_ks(top_k)
    # The inner cross-validations (thresholds, fusion, CNN cross-fitting) split images: two per class at least.
    exp.check_class_images(dataset, 2, what="that the inner cross-validation of train needs")
    out_dir = check_bundle_target(out_dir, overwrite=overwrite)
    settings = {"inner_folds": inner_folds, "cnn_inner_folds": cnn_inner_folds, "inner_search": bool(inner_search),
                "match_radius_px": match_radius_px,
                "gknn": {**exp.GKNN_DEFAULTS, **dict(gknn_params or {})}, "svm": dict(svm_params or {}),
                "knn": dict(knn_params or {}),
                "cnn": {**exp.CNN_DEFAULTS, **dict(cnn_params or {})} if cnn else None,
                "fusion": dict(fusion_params or {})}  # fmt: skip
    # The run folder is read before the data set is hashed (seconds): a mistyped --run fails at once.
    run_metrics = None
    if run_dir is not None:
        run_metrics = _run_metrics(run_dir, {**settings, "cnn_enabled": bool(cnn), "top_ks": top_ks,
                                             "features": dict(feature_params or {}), "segment": {}})  # fmt: skip
    fingerprint = dataset.fingerprint()  # hashes every image: once, for the run check and the provenance
    if run_dir is not None and run_metrics is not None and run_metrics["dataset_fingerprint"] != fingerprint:
        # The bundle's provenance would otherwise quote the scores of another data set.
        raise LeukosegError(Path(run_dir) / "metrics.json", "this run was made on other data (its data-set "
                            "fingerprint differs from that of the training images); pass the run of this data set")
    records = list(dataset.records)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entries, _ = load_or_compute([r.path for r in records], cache_dir, feature_kw=feature_params, workers=workers,
                                 progress=progress)  # fmt: skip
    feature_names = entries[0].feature_names
    cells = exp._cell_table(records, entries, ["0", "1"], "points", match_radius_px)
    image_label = np.array([int(r.label) for r in records])
    _check_cell_classes(dataset, cells)
    fold = exp._Fold(
        cells=cells, train=np.ones(len(cells.label), bool), test=np.zeros(len(cells.label), bool),
        train_img=np.arange(len(records)), image_label=image_label, image_group=np.array([r.group for r in records]),
        K=2, seed=exp._seed(seed),
    )  # fmt: skip
    timer = exp._Timer()
    run_info = exp._new_run_info()
    fitted: dict = {}
    _, p_inner = exp._fit_baseline(fold, feature_names, feature_params, inner_folds, gknn_params, svm_params,
                                   knn_params, timer, fitted_out=fitted, inner_search=inner_search)  # fmt: skip
    models = dict(fitted["models"])
    fusion = None
    primary = "baseline"
    if cnn:
        # The CNNs that scored the training cells out of fold also score new cells (their mean), as the
        # experiment scores its test cells: the bundle is the model the experiment measured.
        _, p_inner["cnn"] = exp._fit_cnn(fold, cnn_inner_folds, cnn_params, device, timer, run_info,
                                         fitted_out=fitted)  # fmt: skip
        models["cnn"] = fitted["cnn"]
        p_test = {m: np.zeros((0, 2)) for m in ("baseline", "cnn")}
        _, p_inner["fused"] = exp._fit_fusion(fold, p_test, p_inner, fusion_params, device, timer, run_info,
                                              fitted_out=fitted, inner_folds=inner_folds)  # fmt: skip
        fusion, primary = fitted["fusion"], "fused"

    k, threshold = choose_image_rule([p_inner[primary][cells.image == i, 1] for i in range(len(records))],
                                     image_label, top_ks=top_ks)  # fmt: skip
    extractor, columns = fitted["features"], fitted["columns"]
    config = {
        "positive_class": 1,
        "classes": ["0", "1"],
        "primary_model": primary,
        "image_rule": {"top_k": k, "threshold": threshold,
                       "description": f"mean of the {k} highest cell probabilities (missing = 0) >= threshold; k "
                       f"and threshold chosen among {list(top_ks)} on out-of-fold scores of the training images"},
        # The CellFeatures settings: inference computes exactly these columns with features.rows.feature_matrix.
        "features": {
            "measurement_names": list(extractor.measurement_names_), "texture": bool(extractor.texture),
            "stain": bool(extractor.stain), "lbp_radii_um": list(check_lbp_radii(extractor.lbp_radii_um)),
            "distances_um": [float(d) for d in extractor.distances_um], "levels": int(extractor.levels),
            "angles_deg": [float(a) for a in extractor.angles_deg], "context_um": float(extractor.context_um),
        },
        "patch": {"size": int(cells.patches.shape[1]), "um_per_px": 0.5},
        # classify segments as the training images were (a later release may change a default).
        "segment": default_segment_settings(),
        "fab": (fab_settings if fab_settings is not None else FABSettings()).to_dict(),
        "blast_cell_threshold": 0.5,
    }  # fmt: skip
    provenance = {
        "dataset": {"name": dataset.name, "fingerprint": fingerprint, "n_images": len(records),
                    "n_cells": int(len(cells.label)), "n_blast_cells": int(cells.label.sum())},
        "seed": seed,
        "settings": settings,
        "device": run_info["device"],
        "versions": exp._versions(cnn),
        "timings_s": {k: round(v, 3) for k, v in timer.items()},
        "cross_validated_metrics": run_metrics,
        "note": "Research use only; FAB is a historical morphological classification.",
    }  # fmt: skip
    X = fold.cells.X[:, [feature_names.index(c) for c in columns]][:64]
    # The check rows go through the models as inference would give them: missing features imputed (the
    # models never saw a NaN; scikit-learn's predict_proba refuses one).
    X = np.where(np.isfinite(X), X, np.asarray(fitted["medians"])[None, :])
    path = save_bundle(
        out_dir, models=models, fusion=fusion, config=config, provenance=provenance, feature_names=columns,
        feature_medians=fitted["medians"], check_features=X, check_patches=cells.patches[:16] if cnn else None,
        overwrite=overwrite,
    )  # fmt: skip
    log.info("bundle written to %s in %.1f s (threshold %.3f, %s)", path, time.perf_counter() - t0, threshold, primary)
    return path


def check_bundle_target(out_dir: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse, as one line and before any work, a bundle folder that cannot or may not be written.

    Parameters
    ----------
    out_dir : path
        The bundle folder to write.
    overwrite : bool
        Whether an existing bundle (or empty folder) may be replaced.

    Returns
    -------
    pathlib.Path
        `out_dir` as a path.

    Raises
    ------
    LeukosegError
        If a parent of `out_dir` is not a folder, `out_dir` names the current or parent folder, or it exists
        and is not a bundle or an empty folder, or (without `overwrite`) it exists at all.
    """
    from leukoseg.classify.bundle import _check_replaceable
    from leukoseg.io import _own_folder_refusal

    out_dir = Path(out_dir)
    blocking = next((p for p in out_dir.parents if os.path.lexists(p)), Path("."))
    if not blocking.is_dir():  # a file, or a broken link
        raise LeukosegError(out_dir, f"bundle folder cannot be created: {blocking} is not a folder")
    try:
        _check_replaceable(out_dir, overwrite=True)
    except ValueError:  # '.' or '..'
        raise LeukosegError(out_dir, f"{_own_folder_refusal(out_dir, 'bundle')} (e.g. --out model)") from None
    except FileExistsError:  # --overwrite would not help: never suggest it
        raise LeukosegError(out_dir, "exists and is not a leukoseg model bundle or an empty folder; not replaced, "
                            "choose another output folder") from None  # fmt: skip
    if not overwrite:  # replaceable with --overwrite (checked above): only its existence can refuse now
        try:
            _check_replaceable(out_dir, overwrite=False)
        except FileExistsError:
            raise LeukosegError(out_dir, "exists; pass --overwrite to replace it") from None
    return out_dir


def _check_cell_classes(dataset, cells) -> None:
    """Refuse, as one line, cells of a class found in fewer than two distinct images (after segmentation).

    The cell models' inner cross-validation is grouped by image: it needs blast and non-blast cells each in two
    groups of images at least. The images may be enough (:func:`.experiment.check_class_images`) while the
    cells are not, e.g. when the annotated centroids of all but one ALL image match no detected cell.
    """
    groups = np.array([r.group for r in dataset.records])
    counts = groups_per_class(cells.label, groups[cells.image], classes=(1, 0))
    for code, what in ((1, "blast cells (matched to annotated centroids)"), (0, "non-blast cells")):
        n = counts[code]
        if n < 2:
            raise LeukosegError(dataset.root, f"{what} found in {n} distinct image(s); training needs them in at "
                                              "least 2 (check the .xyc annotations, or add images)")


def _run_metrics(run_dir, training: Mapping) -> dict:
    """The summary of every model from a run folder's metrics.json, once its settings are `training`'s."""
    metrics = load_metrics(run_dir)
    dataset, settings = metrics.get("dataset"), metrics.get("settings")
    dataset, settings = (dataset if isinstance(dataset, dict) else {}), (settings if isinstance(settings, dict) else {})
    differences = run_setting_differences(settings, training)
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise LeukosegError(Path(run_dir) / "metrics.json", f"this run's models were trained with other settings "
                            f"than this bundle's ({shown}), so its figures are not the bundle's; pass a run made "
                            "with the same settings, or no run")  # fmt: skip
    return {
        "run": Path(run_dir).resolve().name,  # the folder's name: a machine's path means nothing in a shipped bundle
        "dataset_fingerprint": dataset.get("fingerprint"),
        "settings": {k: settings.get(k) for k in ("n_folds", "repeats")},
        "models": {m: v.get("summary") if isinstance(v, dict) else None for m, v in metrics["models"].items()},
    }


def run_setting_differences(run: Mapping, training: Mapping) -> list[str]:
    """The settings that an experiment run's models were trained with and a bundle's are not.

    Parameters
    ----------
    run : mapping
        The ``settings`` of the run's ``metrics.json``.
    training : mapping
        The bundle's, in the same form: ``cnn_enabled``, ``match_radius_px``, ``inner_folds``,
        ``cnn_inner_folds``, ``inner_search``, ``top_ks``, and the keyword arguments of each model
        (``gknn``, ``svm``, ``knn``, ``cnn``, ``fusion``), of the features and of the segmentation.

    Returns
    -------
    list of str
        One ``'cnn.max_shift: 0 in the run, 3 here'`` per setting that differs; empty when none does.

    Notes
    -----
    Each group of keyword arguments is compared after filling in the defaults of what it configures (e.g.
    :class:`~leukoseg.classify.CNNClassifier`), so a run that records only what differs from them and a
    bundle that records more agree; a setting that the run does not record is read as this release's
    default, except the crop context (``features.context_um``): runs made before it existed do not record
    it and had bare boxes, 0; and the segmentation settings of
    :data:`~leukoseg.segmentation.UNRECORDED_SEGMENT_SETTINGS` (the cytoplasm opening, 0.7, and
    ``stain_above_red_cells``, false, in runs that do not record them). A run without settings cannot be
    vouched for: it differs in everything.
    """
    from leukoseg.segmentation import recorded_segment_settings

    if not run:
        return ["the run records no settings"]
    defaults = _setting_defaults()
    out = []
    for key in ("cnn_enabled", "match_radius_px", "inner_folds", "cnn_inner_folds", "inner_search", "top_ks"):
        a, b = _jsonable(run.get(key, defaults[key])), _jsonable(training.get(key, defaults[key]))
        if a != b:
            out.append(f"{key}: {json.dumps(a)} in the run, {json.dumps(b)} here")
    groups: tuple[str, ...] = ("gknn", "svm", "knn", "features", "segment")
    if run.get("cnn_enabled", defaults["cnn_enabled"]) and training.get("cnn_enabled", defaults["cnn_enabled"]):
        groups += ("cnn", "fusion")
    for group in groups:
        run_kw = dict(run.get(group) or {})
        if group == "features":
            run_kw.setdefault("context_um", 0.0)  # recorded since the setting exists; bare boxes before
        if group == "segment":
            run_kw = recorded_segment_settings(run_kw)  # a setting recorded only since it exists: its former value
        a = _jsonable({**defaults[group], **run_kw})
        b = _jsonable({**defaults[group], **dict(training.get(group) or {})})
        out += [f"{group}.{k}: {_show(a, k)} in the run, {_show(b, k)} here"
                for k in sorted(set(a) | set(b)) if a.get(k, _UNSET) != b.get(k, _UNSET)]  # fmt: skip
    return out


def _setting_defaults() -> dict:
    """This release's default of every setting that :func:`run_setting_differences` compares."""
    from leukoseg.classify import CNNClassifier, GeneticKNNClassifier, StackingFusion, make_knn, make_svm
    from leukoseg.features import CellFeatures
    from leukoseg.segmentation import segment

    def keywords(func) -> dict:
        return {n: p.default for n, p in inspect.signature(func).parameters.items() if p.default is not p.empty}

    ours = keywords(train_bundle)
    return {
        "cnn_enabled": True, "top_ks": list(ours["top_k"]),
        **{k: ours[k] for k in ("match_radius_px", "inner_folds", "cnn_inner_folds", "inner_search")},
        "gknn": GeneticKNNClassifier().get_params(), "svm": keywords(make_svm), "knn": keywords(make_knn),
        "cnn": {**CNNClassifier().get_params(), "refit": False}, "fusion": StackingFusion().get_params(),
        "features": CellFeatures().get_params(), "segment": keywords(segment),
    }  # fmt: skip


_UNSET = object()


def _show(settings: Mapping, key: str) -> str:
    """One recorded setting as JSON, or ``(unset)``."""
    return json.dumps(settings[key]) if key in settings else "(unset)"


def _jsonable(value):
    """`value` as JSON gives it back (tuples as lists), so that a recorded setting equals the one it records."""
    return json.loads(json.dumps(value, default=str))
