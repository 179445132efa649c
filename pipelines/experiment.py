"""Cross-validated ALL detection on ALL-IDB1: cell classifiers (GkNN, SVM, kNN) and image decisions.

The experiment behind ``leukoseg classify --dataset all-idb1``.

Cells
-----
Every image is segmented once (:func:`~leukoseg.segmentation.segment`) and every cell turned into a
:class:`~leukoseg.features.CellFeatures` row; both are cached by image content and settings
(:mod:`.cache`), so re-runs skip them.

Cell labels
-----------
ALL-IDB1 annotates blasts by their centroids only (``xyc/ImXXX_Y.xyc``). A detected cell is a **blast**
when it is matched to an annotated centroid: annotated points and cell centroids (the nucleus centroid,
``x, y`` of the measurements) are matched one-to-one by the Hungarian algorithm on their distances, and a
pair counts only within ``match_radius_px`` (50 px). Every other cell is a **non-blast**: all cells of
healthy images, and the cells of ALL images matched to no point. These labels are noisy:

- blasts that the annotators did not mark become negatives (ALL-IDB1's annotations are not exhaustive);
- a blast split into two cells gives one positive and one negative; two blasts merged into one cell give
  one positive and leave a point unmatched;
- the 50 px radius is in pixels of images from two cameras and several magnifications (about 2-7 um);
  a point near two cells goes to the nearer one in the global assignment, not necessarily the right one;
- annotated blasts that the segmentation missed have no cell and are not scored at all.

Cell-level figures therefore measure agreement with these labels, not with the truth; the image-level
figures (ALL / healthy, from the file name) are exact.

Folds
-----
Images, not cells, are split: :func:`.folds.assign_folds` (stratified by image label, grouped by
identical images, shuffled with ``seed + repeat``). Every model sees the same assignment (``folds.csv``).
Everything learnt (feature columns, GA weights and k, SVM C and gamma and its calibration, kNN, the image
threshold) is learnt from the training images of the fold only; the classifiers' own inner
cross-validations get the image group of every cell, so they are grouped too. The code asserts that no
cell of a test image is in a training set.

Models and scores
-----------------
Per fold: :class:`~leukoseg.classify.GeneticKNNClassifier` (``gknn``), :class:`~leukoseg.classify.SVMClassifier`
(``svm``) and the plain kNN of :func:`~leukoseg.classify.make_knn` (``knn``), on the same feature matrix
(missing values filled with the training median). The **baseline** cell score is the mean of the GkNN and
SVM blast probabilities (``p_blast_baseline``): two different learners, a local vote and a smooth margin,
average out each other's errors.

An image's score is the mean of its three highest cell scores, missing cells counting as 0
(:func:`.metrics.image_score`): robust to one false-positive cell, and an image without cells scores 0
(healthy) instead of being dropped. It is called ALL when the score reaches a threshold chosen on the
training images only: the threshold maximising their balanced accuracy
(:func:`.metrics.choose_threshold`), computed on *inner out-of-fold* scores. For that, the training
images are split again into ``inner_folds`` stratified grouped folds; on each, models with the
hyper-parameters already chosen for the fold (GkNN weights and k, SVM C and gamma; the search is not
re-run, which keeps the cost low and biases the threshold very slightly) are refitted on the inner
training images and score the cells of the inner held-out images. Scoring training images with the
outer model itself would be optimistic: a kNN remembers its training cells.

Outputs (under the run folder, written atomically; the CSVs are byte-identical for the same seed, data
and library versions): ``folds.csv``, ``cells.csv``, ``images.csv``, ``metrics.json``.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukoseg.errors import LeukosegError

from .cache import default_cache_dir, load_or_compute
from .folds import assign_folds, check_no_leak
from .metrics import binary_metrics, choose_threshold, image_score, roc_auc

__all__ = ["MODELS", "ExperimentResult", "match_blasts", "run_experiment"]

log = logging.getLogger(__name__)

#: Cell models, in output order; ``baseline`` is the mean of ``gknn`` and ``svm``.
MODELS = ("gknn", "svm", "knn", "baseline")

_ONE_CAMERA_FIRST = 34  # Im034-Im108: one camera; Im001-Im033 another one, all ALL
_IMAGE_NUMBER = re.compile(r"Im(\d+)_")


@dataclass(frozen=True)
class ExperimentResult:
    """What :func:`run_experiment` wrote and found.

    Attributes
    ----------
    out_dir : Path
        The run folder.
    metrics : Mapping
        The contents of ``metrics.json``.
    files : tuple of Path
        The files written.
    """

    out_dir: Path
    metrics: Mapping = field(repr=False)
    files: tuple[Path, ...]


def match_blasts(points, xs, ys, *, radius: float = 50.0) -> np.ndarray:
    """Which cells are annotated blasts: one-to-one Hungarian matching of points to cell centroids.

    Parameters
    ----------
    points : (n_points, 2) array-like
        Annotated blast centroids ``(x, y)`` in pixels.
    xs, ys : (n_cells,) array-like
        Cell centroids in pixels.
    radius : float, optional
        A matched pair farther apart than this does not count.

    Returns
    -------
    (n_cells,) ndarray of bool

    Examples
    --------
    >>> match_blasts([[10, 10]], [12, 30, 11], [10, 10, 11]).tolist()
    [False, False, True]
    """
    from scipy.optimize import linear_sum_assignment

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cells = np.column_stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)])
    out = np.zeros(len(cells), dtype=bool)
    if len(points) == 0 or len(cells) == 0:
        return out
    dist = np.hypot(points[:, None, 0] - cells[None, :, 0], points[:, None, 1] - cells[None, :, 1])
    # Pairs beyond the radius get a cost that no assignment prefers over leaving them out.
    cost = np.where(dist <= radius, dist, 1e6 + dist)
    rows, cols = linear_sum_assignment(cost)
    ok = dist[rows, cols] <= radius
    out[cols[ok]] = True
    return out


def _one_camera(name: str) -> bool:
    m = _IMAGE_NUMBER.search(name)
    return bool(m) and int(m.group(1)) >= _ONE_CAMERA_FIRST


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class _Timer(dict):
    def add(self, stage: str, seconds: float) -> None:
        self[stage] = self.get(stage, 0.0) + seconds


def run_experiment(
    dataset,
    out_dir,
    *,
    n_folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    cache_dir=None,
    workers: int = 1,
    match_radius_px: float = 50.0,
    top_k: int = 3,
    inner_folds: int = 3,
    gknn_params: Mapping | None = None,
    svm_params: Mapping | None = None,
    knn_params: Mapping | None = None,
    segment_params: Mapping | None = None,
    feature_params: Mapping | None = None,
    progress: bool = False,
) -> ExperimentResult:
    """Run the cross-validated experiment on an ALL-IDB1-like data set and write its outputs.

    Parameters
    ----------
    dataset : Dataset
        From :func:`~leukoseg.datasets.load_dataset` (``'all-idb1'``: image labels ``'0'``/``'1'`` and
        annotated blast points).
    out_dir : path
        Run folder (created).
    n_folds, repeats, seed : int, optional
        Outer folds, repeats (repeat ``r`` shuffles with ``seed + r``) and the seed of everything random.
    cache_dir : path, optional
        Segmentation cache; default :func:`.cache.default_cache_dir`.
    workers : int, optional
        Processes for segmenting images not yet cached.
    match_radius_px : float, optional
        Radius of the blast matching.
    top_k : int, optional
        Cells averaged into the image score.
    inner_folds : int, optional
        Folds of the inner cross-validation that gives the training images' scores for the threshold.
    gknn_params, svm_params, knn_params : mapping, optional
        Keyword arguments of the classifiers (e.g. small GA settings in tests).
    segment_params, feature_params : mapping, optional
        Keyword arguments of ``segment`` and ``CellFeatures`` (part of the cache key).
    progress : bool, optional
        Progress bars on stderr (only on a terminal).

    Returns
    -------
    ExperimentResult

    Raises
    ------
    LeukosegError
        If the data set is not an image data set with labels ``'0'``/``'1'``, or too small for the folds.
    """
    from tqdm import tqdm

    timer = _Timer()
    t0 = time.perf_counter()
    records = list(dataset.records)
    if getattr(dataset, "unit", "image") != "image" or set(r.label for r in records) - {"0", "1"}:
        raise LeukosegError(dataset.root, "the experiment needs whole smears labelled '0' / '1' (all-idb1)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeukosegError(out_dir, f"cannot create the run folder ({exc.strerror or exc})") from None
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # 1. Segmentation and features, cached.
    t = time.perf_counter()
    entries, cache_info = load_or_compute(
        [r.path for r in records], cache_dir, segment_kw=segment_params, feature_kw=feature_params,
        workers=workers, progress=progress,
    )  # fmt: skip
    timer.add("segment_and_features", time.perf_counter() - t)
    timer["segment_and_features_compute_cpu"] = cache_info["compute_seconds"]

    # 2. The cell table.
    t = time.perf_counter()
    names = [r.name for r in records]
    image_label = np.array([int(r.label) for r in records])
    image_group = np.array([r.group for r in records])
    feature_names = entries[0].feature_names
    if any(e.feature_names != feature_names for e in entries):
        raise LeukosegError(cache_dir, "cache entries with different feature columns; clear the cache folder")
    cell_image, cell_label, cell_rows, n_matched, n_points = [], [], [], 0, 0
    for i, (r, e) in enumerate(zip(records, entries)):
        m = e.measurements
        blast = match_blasts(r.points, m["x"], m["y"], radius=match_radius_px) if r.label == "1" else np.zeros(
            e.n_cells, bool)
        n_matched += int(blast.sum())
        n_points += len(r.points)
        cell_image.append(np.full(e.n_cells, i))
        cell_label.append(blast.astype(int))
        cell_rows.extend({k: m[k][j] for k in m} for j in range(e.n_cells))
    cell_image = np.concatenate(cell_image) if cell_image else np.zeros(0, int)
    cell_label = np.concatenate(cell_label) if cell_label else np.zeros(0, int)
    X_all = np.concatenate([e.features for e in entries]) if entries else np.zeros((0, len(feature_names)))
    cell_id = np.array([int(row["cell_id"]) for row in cell_rows], dtype=int)
    timer.add("labels", time.perf_counter() - t)
    log.info("%d images, %d cells, %d blast cells (%d of %d annotated points matched)",
             len(records), len(cell_label), int(cell_label.sum()), n_matched, n_points)

    # 3. Folds.
    try:
        folds = assign_folds(image_label, image_group, n_folds=n_folds, repeats=repeats, seed=seed)
    except ValueError as exc:
        raise LeukosegError(dataset.root, str(exc)) from None

    # 4. Cross-validation.
    scores = {m: np.full((repeats, len(cell_label)), np.nan) for m in MODELS}
    img_scores = {m: np.full((repeats, len(records)), np.nan) for m in MODELS}
    img_pred = {m: np.zeros((repeats, len(records)), dtype=int) for m in MODELS}
    thresholds = {m: np.full((repeats, n_folds), np.nan) for m in MODELS}
    bar = tqdm(total=repeats * n_folds, unit="fold", desc="classify", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()))
    try:
        for r in range(repeats):
            for k in range(n_folds):
                test_img = folds[r] == k
                train_cells = ~test_img[cell_image]
                test_cells = test_img[cell_image]
                # The guard: no cell of a test image, nor of a copy of it, is in the training set.
                check_no_leak(
                    [names[i] for i in cell_image[train_cells]], [names[i] for i in cell_image[test_cells]],
                    image_group[cell_image[train_cells]], image_group[cell_image[test_cells]],
                )  # fmt: skip
                assert not set(zip(cell_image[train_cells], cell_id[train_cells])) & set(
                    zip(cell_image[test_cells], cell_id[test_cells]))
                cols = _feature_columns([cell_rows[j] for j in np.flatnonzero(train_cells)], feature_names,
                                        feature_params)
                X_train, X_test = _impute(X_all[train_cells][:, cols], X_all[test_cells][:, cols])
                y_train = cell_label[train_cells]
                g_train = image_group[cell_image[train_cells]]
                if len(np.unique(y_train)) < 2:
                    raise LeukosegError(dataset.root, f"repeat {r} fold {k}: training cells of one class only")
                fold_seed = _seed(seed, r, k)
                fitted = _fit_models(X_train, y_train, g_train, fold_seed, gknn_params, svm_params, knn_params,
                                     timer)
                p = _predict(fitted, X_test)
                for m in MODELS:
                    scores[m][r, test_cells] = p[m]

                # Thresholds from inner out-of-fold scores of the training images.
                t = time.perf_counter()
                train_img = np.flatnonzero(~test_img)
                inner = _inner_oof(fitted, X_train, y_train, cell_image[train_cells], train_img, image_label,
                                   image_group, inner_folds, _seed(seed, r, k, 1), knn_params)
                for m in MODELS:
                    s = [image_score(inner[m][cell_image[train_cells] == i], top_k) for i in train_img]
                    thresholds[m][r, k] = choose_threshold(s, image_label[train_img])
                    for i in np.flatnonzero(test_img):
                        img_scores[m][r, i] = image_score(scores[m][r, cell_image == i], top_k)
                        img_pred[m][r, i] = int(img_scores[m][r, i] >= thresholds[m][r, k])
                timer.add("thresholds", time.perf_counter() - t)
                bar.update()
    finally:
        bar.close()

    # 5. Outputs.
    t = time.perf_counter()
    stratum = np.array([_one_camera(n) for n in names])
    metrics = {
        "dataset": {
            "name": dataset.name, "fingerprint": dataset.fingerprint(), "n_images": len(records),
            "n_images_all": int(image_label.sum()), "n_cells": int(len(cell_label)),
            "n_blast_cells": int(cell_label.sum()), "n_annotated_points": n_points,
            "n_points_matched": n_matched, "n_images_one_camera": int(stratum.sum()),
        },
        "seed": seed,
        "settings": {
            "n_folds": n_folds, "repeats": repeats, "match_radius_px": match_radius_px, "top_k": top_k,
            "inner_folds": inner_folds, "gknn": dict(gknn_params or {}), "svm": dict(svm_params or {}),
            "knn": dict(knn_params or {}), "segment": dict(segment_params or {}),
            "features": dict(feature_params or {}), "n_features": len(feature_names),
            "image_score": f"mean of the {top_k} highest cell probabilities, missing cells = 0",
            "baseline": "mean of the gknn and svm cell probabilities",
            "threshold": "maximises balanced accuracy of inner out-of-fold scores of the training images",
        },
        "models": {},
        "timings_s": {},
        "cache": {"folder": str(cache_dir), "computed": cache_info["computed"], "reused": cache_info["reused"]},
        "versions": _versions(),
    }
    for m in MODELS:
        per_repeat = []
        for r in range(repeats):
            entry = {"repeat": r}
            for key, mask in (("all", np.ones(len(records), bool)), ("one_camera", stratum)):
                res = binary_metrics(image_label[mask], img_pred[m][r, mask], img_scores[m][r, mask])
                cmask = mask[cell_image]
                res["cell_auc"] = roc_auc(cell_label[cmask], scores[m][r, cmask])
                # Against clean negatives only: blasts vs the cells of healthy images (no unannotated blasts).
                clean = cmask & ((cell_label == 1) | (image_label[cell_image] == 0))
                res["cell_auc_clean"] = roc_auc(cell_label[clean], scores[m][r, clean])
                entry[key] = res
            entry["thresholds"] = [float(v) for v in thresholds[m][r]]
            per_repeat.append(entry)
        metrics["models"][m] = {"repeats": per_repeat, "summary": _summary(per_repeat)}

    files = _write_outputs(out_dir, names, image_label, folds, cell_image, cell_rows, cell_label, scores,
                           img_scores, img_pred, thresholds, top_k)
    timer.add("write", time.perf_counter() - t)
    timer["total"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 3) for k, v in timer.items()}
    from leukoseg.io import write_json

    write_json(out_dir / "metrics.json", metrics)
    files.append(out_dir / "metrics.json")
    return ExperimentResult(out_dir, metrics, tuple(files))


def _feature_columns(train_rows, feature_names, feature_params) -> list[int]:
    """Fit CellFeatures on the training cells (it only fixes the columns) and find them in the cache."""
    from leukoseg.features import CellFeatures

    cells = [{"measurements": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}}
             for row in train_rows]
    extractor = CellFeatures(**dict(feature_params or {})).fit(cells)
    wanted = [str(n) for n in extractor.get_feature_names_out()]
    missing = [n for n in wanted if n not in feature_names]
    if missing:
        raise LeukosegError(None, f"cached features lack columns {missing[:3]}; clear the cache folder")
    return [feature_names.index(n) for n in wanted]


def _impute(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-finite values -> the training median of the column (0 when the column has none)."""
    X_train, X_test = X_train.copy(), X_test.copy()
    X_train[~np.isfinite(X_train)] = np.nan
    X_test[~np.isfinite(X_test)] = np.nan
    if np.isnan(X_train).any() or np.isnan(X_test).any():
        with np.errstate(all="ignore"):
            med = np.array([np.median(c[~np.isnan(c)]) if (~np.isnan(c)).any() else 0.0 for c in X_train.T])
        for X in (X_train, X_test):
            rows, cols = np.nonzero(np.isnan(X))
            X[rows, cols] = med[cols]
    return X_train, X_test


def _fit_models(X, y, groups, seed, gknn_params, svm_params, knn_params, timer) -> dict:
    from leukoseg.classify import GeneticKNNClassifier, make_knn, make_svm

    out = {}
    t = time.perf_counter()
    out["gknn"] = GeneticKNNClassifier(**{"random_state": seed, **dict(gknn_params or {})}).fit(X, y, groups=groups)
    timer.add("fit_gknn", time.perf_counter() - t)
    t = time.perf_counter()
    out["svm"] = make_svm(**{"random_state": seed, **dict(svm_params or {})}).fit(X, y, groups=groups)
    timer.add("fit_svm", time.perf_counter() - t)
    t = time.perf_counter()
    out["knn"] = make_knn(**dict(knn_params or {})).fit(X, y)
    timer.add("fit_knn", time.perf_counter() - t)
    return out


def _blast_proba(model, X) -> np.ndarray:
    if len(X) == 0:
        return np.zeros(0)
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def _predict(models: Mapping, X) -> dict[str, np.ndarray]:
    p = {m: _blast_proba(models[m], X) for m in ("gknn", "svm", "knn")}
    p["baseline"] = (p["gknn"] + p["svm"]) / 2
    return p


def _fixed_models(fitted: Mapping, seed: int, knn_params) -> dict:
    """Unfitted models with the hyper-parameters already chosen on the fold's training set."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from leukoseg.classify import SVMClassifier, make_knn

    g = fitted["gknn"]
    support, weights = g.support_.copy(), g.weights_[g.support_].copy()
    gknn = Pipeline([
        ("scale", StandardScaler()),
        ("weight", FunctionTransformer(lambda Z: Z[:, support] * weights)),
        ("knn", KNeighborsClassifier(n_neighbors=g.k_, weights=g.vote, algorithm="brute")),
    ])  # fmt: skip
    s = fitted["svm"]
    svm = SVMClassifier(C_grid=(s.best_params_["svc__C"],), gamma_grid=(s.best_params_["svc__gamma"],),
                        inner_cv=s.inner_cv, scoring=s.scoring, calibration=s.calibration, random_state=seed)
    return {"gknn": gknn, "svm": svm, "knn": make_knn(**dict(knn_params or {}))}


def _inner_oof(fitted, X, y, cell_img, train_img, image_label, image_group, inner_folds, seed, knn_params):
    """Inner out-of-fold cell scores of the training cells (NaN where no inner model could be fitted)."""
    from sklearn.model_selection import StratifiedGroupKFold

    out = {m: np.zeros(len(y)) for m in MODELS}
    labels, groups = image_label[train_img], image_group[train_img]
    n = min(inner_folds, *(len(np.unique(groups[labels == c])) for c in np.unique(labels)))
    if n < 2:
        log.warning("too few training images for an inner split; image threshold 0.5")
        return {m: np.full(len(y), 0.5) for m in MODELS}
    splitter = StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    for j, (tr, te) in enumerate(splitter.split(np.zeros((len(train_img), 1)), labels, groups)):
        tr_cells = np.isin(cell_img, train_img[tr])
        te_cells = np.isin(cell_img, train_img[te])
        if not te_cells.any():
            continue
        models = _fixed_models(fitted, _seed(seed, j), knn_params)
        try:
            models["gknn"].fit(X[tr_cells], y[tr_cells])
            models["svm"].fit(X[tr_cells], y[tr_cells], groups=image_group[cell_img[tr_cells]])
            models["knn"].fit(X[tr_cells], y[tr_cells])
        except ValueError as exc:  # e.g. one class only in a tiny inner training set
            log.warning("inner fold %d skipped (%s)", j, exc)
            for m in MODELS:
                out[m][te_cells] = 0.5
            continue
        p = _predict(models, X[te_cells])
        for m in MODELS:
            out[m][te_cells] = p[m]
    return out


def _summary(per_repeat: list[dict]) -> dict:
    out = {}
    for stratum in ("all", "one_camera"):
        out[stratum] = {}
        for key in ("accuracy", "sensitivity", "specificity", "auc", "cell_auc", "cell_auc_clean"):
            values = [e[stratum][key] for e in per_repeat if e[stratum][key] is not None]
            out[stratum][key] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values)) if values else None,
            }
    return out


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for label, dist in (("leukoseg", "leukoseg"), ("numpy", "numpy"), ("scipy", "scipy"),
                        ("scikit-learn", "scikit-learn"), ("scikit-image", "scikit-image"),
                        ("opencv", "opencv-python-headless"), ("deap", "deap")):  # fmt: skip
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = None
    return out


def _fmt(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.6f}"


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_outputs(out_dir, names, image_label, folds, cell_image, cell_rows, cell_label, scores, img_scores,
                   img_pred, thresholds, top_k) -> list[Path]:
    from leukoseg.io import write_text

    repeats = folds.shape[0]
    order = sorted(range(len(names)), key=lambda i: names[i])
    fold_rows = [[names[i], r, int(folds[r, i])] for r in range(repeats) for i in order]
    write_text(out_dir / "folds.csv", _csv(["image", "repeat", "fold"], fold_rows))

    cell_order = sorted(range(len(cell_label)), key=lambda j: (names[cell_image[j]], int(cell_rows[j]["cell_id"])))
    rows = []
    for r in range(repeats):
        for j in cell_order:
            i = cell_image[j]
            row = cell_rows[j]
            rows.append([names[i], int(row["cell_id"]), f"{float(row['x']):.2f}", f"{float(row['y']):.2f}", r,
                         int(folds[r, i]), int(cell_label[j]), *(_fmt(scores[m][r, j]) for m in MODELS)])
    write_text(out_dir / "cells.csv", _csv(
        ["image", "cell_id", "x", "y", "repeat", "fold", "label", *(f"p_blast_{m}" for m in MODELS)], rows))

    rows = []
    for r in range(repeats):
        for i in order:
            in_image = cell_image == i
            p = scores["baseline"][r, in_image]
            rows.append([names[i], int(image_label[i]), r, int(folds[r, i]), _fmt(img_scores["baseline"][r, i]),
                         int(img_pred["baseline"][r, i]), int(in_image.sum()), int((p >= 0.5).sum()),
                         _fmt(thresholds["baseline"][r, folds[r, i]])])
    write_text(out_dir / "images.csv", _csv(
        ["image", "label", "repeat", "fold", "p_baseline", "pred", "n_cells", "n_blasts_predicted", "threshold"],
        rows))
    return [out_dir / "folds.csv", out_dir / "cells.csv", out_dir / "images.csv"]
