"""The cross-validated experiment behind ``leukoseg classify --dataset``: cell classifiers, the CNN, their
fusion, image decisions and the FAB subtype.

Data sets and what is classified
--------------------------------
Every image is segmented once (:func:`~leukoseg.segmentation.segment`); every cell becomes a
:class:`~leukoseg.features.CellFeatures` row and a 50x50 scale-normalised patch. Both are cached by image
content and settings (:mod:`.cache`), so re-runs skip them. Three kinds of data set share the machinery:

``all-idb1`` (whole smears, blast centroids annotated)
    ALL-IDB1 annotates blasts by their centroids only (``xyc/ImXXX_Y.xyc``). A detected cell is a **blast**
    when it is matched to an annotated centroid: points and cell centroids (the nucleus centroid, ``x, y``
    of the measurements) are matched one-to-one by the Hungarian algorithm on their distances, and a pair
    counts only within ``match_radius_px`` (50 px). Every other cell is a **non-blast**: all cells of
    healthy images, and the cells of ALL images matched to no point. These labels are noisy:

    - blasts that the annotators did not mark become negatives (ALL-IDB1's annotations are not exhaustive);
    - a blast split into two cells gives one positive and one negative; two blasts merged into one cell
      give one positive and leave a point unmatched;
    - the 50 px radius is in pixels of images from two cameras and several magnifications (about 2-7 um);
      a point near two cells goes to the nearer one in the global assignment, not necessarily the right one;
    - annotated blasts that the segmentation missed have no cell and are not scored at all.

    Cell-level figures therefore measure agreement with these labels, not with the truth; the image-level
    figures (ALL / healthy, from the file name) are exact. An image's score is the mean of its ``k``
    highest cell blast probabilities, missing cells counting as 0 (:func:`.metrics.image_score`); an image
    without cells scores 0 instead of being dropped. ``k`` is learnt with the threshold, on the training
    images of the fold only, among ``top_k`` (1, 2, 3; :func:`.metrics.choose_image_rule`): the maximum
    catches an ALL smear with a single blast, a mean of three resists one false-positive cell, and the
    training images decide which matters more for each model.

``all-idb2`` (single-cell crops, label = blast or not)
    Each crop is one image with one cell: the detected cell nearest the crop's centre, labelled with the
    crop's label; other (partial) cells at the crop's border are ignored. The image score is that cell's
    blast probability (a crop where no cell was found scores 0).

``folder:PATH`` (one subfolder per class, any number of classes)
    Every cell of an image inherits the image's class (a weak label: a smear of a class also holds normal
    cells); the cell models are multi-class, an image's class probabilities are the mean of its cells'
    (an image without cells gets the training images' class frequencies) and the prediction is the most
    probable class.

Folds
-----
Images, not cells, are split: :func:`.folds.assign_folds` (stratified by image label, grouped by
identical images, shuffled with ``seed + repeat``). Every model sees the same assignment (``folds.csv``).
Everything learnt (feature columns, GA weights and k, SVM C and gamma and its calibration, kNN, the CNN and
its normalisation, the fusion weights, the image threshold) is learnt from the training images of the fold
only; inner cross-validations are grouped by image too. The code asserts that no cell of a test image is in
a training set; augmentation happens inside :class:`~leukoseg.classify.CNNClassifier` training batches only.

Models and scores
-----------------
Per fold, on the same cells:

- ``knn``: the plain kNN of :func:`~leukoseg.classify.make_knn` (reference row);
- ``gknn``: :class:`~leukoseg.classify.GeneticKNNClassifier`, with :data:`GKNN_DEFAULTS` (the votes of five
  independent genetic searches averaged);
- ``svm``: :class:`~leukoseg.classify.SVMClassifier`;
- ``baseline``: the mean of the GkNN and SVM probabilities (a local vote and a smooth margin average out
  each other's errors);
- ``cnn``: the network of Thanh et al. (:class:`~leukoseg.classify.CNNClassifier`) on the patches,
  **cross-fitted**: the fold's training images are split into ``cnn_inner_folds`` (2) grouped stratified
  parts; one CNN is trained on the other parts for each part and scores that part's cells (out of fold),
  and the test cells get the mean of these CNNs (an ensemble; ``train`` ships the same). This costs about one
  CNN fit per fold and gives every training cell an honest CNN score for the fusion (the setting ``refit``
  scores the test cells with one more CNN, fitted on all the training cells, instead). Each CNN prediction
  is the mean over the 8 flips and quarter turns of the patch (test-time augmentation,
  ``CNNClassifier(tta=True)``);
- ``fused``: :class:`~leukoseg.classify.StackingFusion`, a logistic stacking of the baseline and CNN
  probabilities in ``keras.ops`` (on the GPU when there is one), fitted on the training cells' inner
  out-of-fold scores; its own scores of the training cells (for the image rule) are cross-fitted over the
  same inner folds, so they are out of fold too.

Image thresholds (binary data sets) are chosen on the training images only, maximising the balanced
accuracy (:func:`.metrics.choose_threshold`) of *inner out-of-fold* image scores: the training images are
split again into ``inner_folds`` folds, on which models with the fold's hyper-parameters (GkNN weights and
k of every search, SVM C and gamma; the search is not re-run, which keeps the cost low) are refitted and
score the held-out training images. Those GkNN and SVM scores are a little optimistic, as the search saw
the held-out images; the bias stays in the training images but shapes what they choose: the thresholds,
and the fusion weights, which it may tilt towards the baseline (its inner scores look a little better
than they are, the CNN's are cross-fitted honestly). ``inner_search=True`` runs the search and the grid
again on each inner split instead (about three more searches per fold). Scoring training images with the
outer model itself would be optimistic: a kNN remembers its training cells. The CNN's inner scores are those of the one
cross-fitted CNN that did not train on the cell, while a test cell gets the mean of all of them, a little
smoother: the thresholds are chosen on scores of nearly, not exactly, the kind they are applied to.

The primary model, whose decision is ``pred`` in ``images.csv``, is ``fused`` (``baseline`` without CNN).

FAB subtype
-----------
For every image called ALL by the primary model, the cells with a blast probability of at least 0.5 (at
least its most probable cell) are scored with :func:`~leukoseg.classify.fab_classify` (FAB L1 / L2 / L3 of
Bennett et al. 1981 from the micrometre measurements). FAB is a historical morphological classification,
reported for research only.

Outputs (under the run folder, written atomically; the CSVs are byte-identical for the same seed, data,
device, library versions and segmentation cache: features computed afresh agree to about 1e-7, float32 sums
depending on threads and memory alignment, which can move SVM probabilities by about 1e-4): ``folds.csv``,
``cells.csv``, ``images.csv``, ``scores.npz`` (every cell's out-of-fold scores at full precision and each
fold's inner out-of-fold scores of its training cells, plain arrays that ``numpy.load`` reads without
pickle: ``image``, ``cell_id``, ``test_<model>`` (repeats, cells, classes), ``inner_<model>`` (repeats,
folds, cells, classes), NaN on each fold's test cells, 1/K on training cells that no inner split scored;
``inner_<model>`` is as large as ``test_<model>`` times the number of folds),
``metrics.json``. Each row of
``images.csv`` ends with the image's pixel size (``um_per_px``) and where it came from (``scale_source``):
``fallback`` marks an image with too few whole red cells for the ruler, measured as if its median nucleus
were 9 um across (every crop of ALL-IDB2, whose 257-pixel crops hold few whole red cells); the run logs a
warning with their number, and ``metrics.json`` counts them (``dataset.n_images_per_scale_source``).
For binary data sets ``metrics.json`` also gives each model's inner cell AUC (``models.<m>.inner_cell_auc``,
per fold ``repeats[r].inner_cell_auc_folds``): the AUC of those inner out-of-fold scores of the training cells,
which a choice among settings may look at without touching a test image (optimistic for the feature models,
as said above).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import re
import sys
import time
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from leukoseg.errors import LeukosegError
from leukoseg.io import _python_scalar

from .cache import default_cache_dir, load_or_compute
from .folds import _seed_refusal, assign_folds, check_no_leak, groups_per_class
from .metrics import binary_metrics, choose_image_rule, image_score, multiclass_metrics, roc_auc

if TYPE_CHECKING:
    from leukoseg.classify.fab import FABSettings
    from leukoseg.datasets import Dataset

__all__ = ["MODELS", "ExperimentResult", "match_blasts", "run_experiment"]

log = logging.getLogger(__name__)

#: Models, in output order; ``cnn`` and ``fused`` only when the CNN is on.
MODELS = ("knn", "gknn", "svm", "baseline", "cnn", "fused")
_BASELINE_MODELS = ("knn", "gknn", "svm", "baseline")

_ONE_CAMERA_FIRST = 34  # Im034-Im108: one camera; Im001-Im033 another one, all ALL
_IMAGE_NUMBER = re.compile(r"Im(\d+)_")

#: CNN training settings of the experiment (the paper's architecture; see CNNClassifier for each). A fixed 30
#: epochs on all the training images, without an early-stopping split: a split of a cross-fitting half is
#: about six images of noisy labels, and training on all of them, and then twice as long, ranked the training
#: cells' cross-fitted scores better in every repeat (README, "CNN variants"). Training patches are moved by up
#: to 3 pixels (1.5 um): a centroid is only known to a pixel or two, and the shifts ranked the training cells'
#: cross-fitted scores better in every repeat too. The trained weights are the moving average of the last 50
#: steps or so (``ema_momentum``; a CNN of a cross-fitting takes about 7 steps an epoch): the last step's weights
#: of a small network on a few hundred noisy labels depend on its last few batches, and the average ranked the
#: training cells' cross-fitted scores better in every repeat. Where a CNN trains for fewer than 150 steps
#: (ALL-IDB2's CNNs, about 30), CNNClassifier lowers the momentum (``ema_max_start_share``, default 0.05):
#: 0.98 would leave them half their random first step's weights.
CNN_DEFAULTS: Mapping[str, Any] = types.MappingProxyType(
    {"epochs": 30, "validation_fraction": 0.0, "batch_size": 64, "learning_rate": 1e-3, "max_shift": 3,
     "ema_momentum": 0.98})  # fmt: skip
#: GkNN settings of the experiment (updated by ``gknn_params``): five genetic searches, their votes averaged
#: (steadier than one search, whose weights depend on its draw of inner folds).
GKNN_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({"n_runs": 5})


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


def match_blasts(points: ArrayLike, xs: ArrayLike, ys: ArrayLike, *, radius: float = 50.0) -> np.ndarray:
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
        True for the cells matched to an annotated point within `radius`.

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
    return m is not None and int(m.group(1)) >= _ONE_CAMERA_FIRST


def _fallback_diameter(segment_params: Mapping | None) -> float:
    """The nucleus diameter (um) that the segmentation assumes for an image without a red-cell ruler."""
    from leukoseg.segmentation import default_segment_settings

    default = default_segment_settings()["fallback_nucleus_diameter_um"]
    return float(dict(segment_params or {}).get("fallback_nucleus_diameter_um", default))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class _Timer(dict):
    def add(self, stage: str, seconds: float) -> None:
        self[stage] = self.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class _Cells:
    """The cell table of a data set: one row per classified cell."""

    image: np.ndarray  # (n,) index of the cell's image
    label: np.ndarray  # (n,) class code
    rows: list  # (n,) dict of measurements
    X: np.ndarray  # (n, f) features
    patches: np.ndarray  # (n, 50, 50, 3) uint8
    n_points: int
    n_matched: int


def _mode(dataset) -> str:
    """'points' (ALL-IDB1-like smears), 'crop' (ALL-IDB2-like crops) or 'classes' (folder of classes)."""
    if dataset.name == "all-idb1":
        return "points"
    if dataset.name == "all-idb2":
        return "crop"
    return "classes"


def _cell_table(records, entries, classes, mode, match_radius_px) -> _Cells:
    image, label, X, patches = [], [], [], []
    rows: list[dict[str, Any]] = []
    n_points = n_matched = 0
    for i, (r, e) in enumerate(zip(records, entries)):
        m = e.measurements
        take = np.arange(e.n_cells)
        if mode == "points":
            y = (match_blasts(r.points, m["x"], m["y"], radius=match_radius_px) if r.label == "1"
                 else np.zeros(e.n_cells, bool)).astype(int)  # fmt: skip
            n_matched += int(y.sum())
            n_points += len(r.points)
        else:
            if mode == "crop" and e.n_cells:
                take = _central_cell(e, r)
            y = np.full(len(take), classes.index(r.label))
        image.append(np.full(len(take), i))
        label.append(y[take] if mode == "points" else y)
        rows.extend({k: m[k][j] for k in m} for j in take)
        X.append(e.features[take])
        patches.append(e.patches[take])
    n_features = entries[0].features.shape[1] if entries else 0
    return _Cells(
        np.concatenate(image) if image else np.zeros(0, int),
        np.concatenate(label).astype(int) if label else np.zeros(0, int),
        rows,
        np.concatenate(X) if X else np.zeros((0, n_features)),
        np.concatenate(patches) if patches else np.zeros((0, 50, 50, 3), np.uint8),
        n_points,
        n_matched,
    )


def _central_cell(entry, record) -> np.ndarray:
    """Index of the cell nearest the crop's centre (ALL-IDB2 crops are centred on their cell)."""
    from PIL import Image

    with Image.open(record.path) as im:
        w, h = im.size
    m = entry.measurements
    d = np.hypot(np.asarray(m["x"], float) - (w - 1) / 2, np.asarray(m["y"], float) - (h - 1) / 2)
    return np.array([int(np.argmin(d))])


def run_experiment(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    *,
    n_folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    cnn: bool = True,
    device: str = "auto",
    match_radius_px: float = 50.0,
    top_k: int | Sequence[int] = (1, 2, 3),
    inner_folds: int = 3,
    cnn_inner_folds: int = 2,
    inner_search: bool = False,
    gknn_params: Mapping | None = None,
    svm_params: Mapping | None = None,
    knn_params: Mapping | None = None,
    cnn_params: Mapping | None = None,
    fusion_params: Mapping | None = None,
    fab_settings: FABSettings | None = None,
    segment_params: Mapping | None = None,
    feature_params: Mapping | None = None,
    progress: bool = False,
) -> ExperimentResult:
    """Run the cross-validated experiment on a data set and write its outputs.

    Parameters
    ----------
    dataset : Dataset
        From :func:`~leukoseg.datasets.load_dataset`: ``all-idb1``, ``all-idb2`` or ``folder:PATH``.
    out_dir : path
        Run folder (created).
    n_folds, repeats, seed : int, optional
        Outer folds, repeats (repeat ``r`` shuffles with ``seed + r``) and the seed of everything random.
    cache_dir : path, optional
        Segmentation cache; default :func:`.cache.default_cache_dir`.
    workers : int, optional
        Processes for segmenting images not yet cached.
    cnn : bool, optional
        Train the CNN and the fusion (``False``: the baseline models only, a minute or two a
        repeat on 2 CPU cores).
    device : {'auto', 'cpu', 'gpu'}, optional
        Where the CNN and the fusion run (recorded in ``metrics.json``).
    match_radius_px : float, optional
        Radius of the blast matching (``all-idb1``).
    top_k : int or sequence of int, optional
        Candidate numbers of cells averaged into the image score (``all-idb1``); one is chosen per model and
        fold on the training images.
    inner_folds : int, optional
        Folds of the inner cross-validation that scores the training images for the thresholds and the fusion.
    cnn_inner_folds : int, optional
        Parts of the CNN's cross-fitting (at least 2).
    inner_search : bool, optional
        Run the GkNN's genetic search and the SVM's grid again on each inner split, so that the inner scores
        (thresholds, image rule, fusion weights) come from models tuned without the images they score. The
        default (False) refits the fold's own choices on each split, which is cheaper and a little
        optimistic (see the module's notes).
    gknn_params, svm_params, knn_params, cnn_params, fusion_params : mapping, optional
        Keyword arguments of the models (e.g. small settings in tests); ``cnn_params`` update
        :data:`CNN_DEFAULTS`, ``gknn_params`` :data:`GKNN_DEFAULTS`.
    fab_settings : FABSettings, optional
        Cut-offs of the FAB scoring (default: :class:`~leukoseg.classify.FABSettings`).
    segment_params, feature_params : mapping, optional
        Keyword arguments of ``segment`` and ``CellFeatures`` (part of the cache key).
    progress : bool, optional
        Progress bars on stderr (only on a terminal).

    Returns
    -------
    ExperimentResult
        The run folder, the metrics written to its ``metrics.json``, and the files written.

    Raises
    ------
    LeukosegError
        If the data set is too small for the folds or a fold has training cells of one class only, or
        `top_k`, a CNN, feature or segmentation setting is unknown or out of range (before any image is
        segmented).
    """
    from tqdm import tqdm

    from leukoseg.features import CellFeatures

    timer = _Timer()
    t0 = time.perf_counter()
    records = list(dataset.records)
    mode = _mode(dataset)
    binary = mode in ("points", "crop")
    if binary and set(r.label for r in records) - {"0", "1"}:
        raise LeukosegError(dataset.root, "labels must be '0' / '1'")
    classes = ["0", "1"] if binary else [str(c) for c in dataset.classes]
    # Before segmenting anything; assign_folds checks the same later.
    why = _seed_refusal(seed, int(repeats) if isinstance(repeats, (int, np.integer)) and repeats >= 1 else 1)
    if why:
        raise LeukosegError(None, why)
    if isinstance(n_folds, (int, np.integer)) and not isinstance(n_folds, bool) and n_folds >= 2:
        # Before segmenting anything; assign_folds checks the same later, with class codes instead of labels.
        check_class_images(dataset, int(n_folds), what="folds", fewer="use at most {n} folds (--folds)")
        # Each fold's training images are split again (the inner cross-validation of the GA, the SVM grid and
        # the thresholds), which needs 2 distinct images of every class there: 4 images for 2 folds.
        need = _images_for_inner_splits(int(n_folds))
        if need > n_folds:
            check_class_images(dataset, need, what=f"that {n_folds}-fold cross-validation needs (2 in the training "
                                                   "images of every fold, for its inner splits)")  # fmt: skip
    if cnn_inner_folds < 2:
        raise LeukosegError(None, f"cnn_inner_folds must be at least 2; got {cnn_inner_folds}")
    top_ks = (1,) if mode == "crop" else check_top_ks(top_k)  # a crop holds one cell
    if cnn:
        check_cnn_params(cnn_params)
    check_feature_params(feature_params)
    _check_segment_params(segment_params)
    models = MODELS if cnn else _BASELINE_MODELS
    primary = "fused" if cnn else "baseline"
    out_dir = Path(out_dir)
    _check_run_folder(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeukosegError(out_dir, f"cannot create the run folder ({exc.strerror or exc})") from None
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # 1. Segmentation, features and patches, cached.
    t = time.perf_counter()
    entries, cache_info = load_or_compute(
        [r.path for r in records], cache_dir, segment_kw=segment_params, feature_kw=feature_params,
        workers=workers, progress=progress,
    )  # fmt: skip
    timer.add("segment_and_features", time.perf_counter() - t)
    timer["segment_and_features_compute_cpu"] = cache_info["compute_seconds"]
    from leukoseg.segmentation import SCALE_FALLBACK, UNRECORDED_SEGMENT_SETTINGS, default_segment_settings

    scale_sources = dict(sorted(Counter(e.scale_source for e in entries).items()))
    n_fallback = scale_sources.get(SCALE_FALLBACK, 0)
    if n_fallback:
        # Measurements (and the patches' field of view) of these images rest on an assumed nucleus size.
        log.warning("%d of %d images hold too few whole red cells for the micrometre ruler and take the fallback "
                    "scale (median nucleus %s um); pass the pixel size (--pixel-size) if it is known",
                    n_fallback, len(entries), _fallback_diameter(segment_params))  # fmt: skip

    # 2. The cell table.
    t = time.perf_counter()
    names = [r.name for r in records]
    image_label = np.array([classes.index(r.label) for r in records])
    image_group = np.array([r.group for r in records])
    feature_names = entries[0].feature_names if entries else ()
    if any(e.feature_names != feature_names for e in entries):
        raise LeukosegError(cache_dir, "cache entries with different feature columns; clear the cache folder")
    cells = _cell_table(records, entries, classes, mode, match_radius_px)
    cell_image, cell_label = cells.image, cells.label
    cell_id = np.array([int(row["cell_id"]) for row in cells.rows], dtype=int)
    timer.add("labels", time.perf_counter() - t)
    log.info("%d images, %d cells (%s)", len(records), len(cell_label),
             ", ".join(f"{c}: {int((cell_label == j).sum())}" for j, c in enumerate(classes)))  # fmt: skip

    # 3. Folds.
    try:
        folds = assign_folds(image_label, image_group, n_folds=n_folds, repeats=repeats, seed=seed)
    except ValueError as exc:
        raise LeukosegError(dataset.root, str(exc)) from None

    # 4. Cross-validation.
    K = len(classes)
    cell_p = {m: np.full((repeats, len(cell_label), K), np.nan) for m in models}
    img_p = {m: np.full((repeats, len(records), K), np.nan) for m in models}
    img_pred = {m: np.zeros((repeats, len(records)), dtype=int) for m in models}
    thresholds = {m: np.full((repeats, n_folds), np.nan) for m in models}
    rule_k = {m: np.ones((repeats, n_folds), dtype=int) for m in models}
    # AUC of each fold's inner out-of-fold training-cell scores: a figure that a choice among settings may
    # look at without touching the fold's test images (binary tasks).
    inner_auc = {m: np.full((repeats, n_folds), np.nan) for m in models}
    # The inner out-of-fold scores of each fold's training cells (NaN for its test cells), written to
    # scores.npz: the image rule and thresholds can then be studied again without refitting a model.
    inner_p = {m: np.full((repeats, n_folds, len(cell_label), K), np.nan) for m in models}
    run_info = _new_run_info()
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
                # An explicit check, not an assert: `python -O` must not remove it.
                if set(zip(cell_image[train_cells], cell_id[train_cells])) & set(
                        zip(cell_image[test_cells], cell_id[test_cells])):  # fmt: skip
                    raise RuntimeError(f"repeat {r} fold {k}: a cell is both in training and in test")
                y_train = cell_label[train_cells]
                if len(np.unique(y_train)) < K:
                    raise LeukosegError(dataset.root, f"repeat {r} fold {k}: training cells lack a class")
                fold = _Fold(
                    cells=cells, train=train_cells, test=test_cells, train_img=np.flatnonzero(~test_img),
                    image_label=image_label, image_group=image_group, K=K, seed=_seed(seed, r, k),
                )  # fmt: skip
                p_test, p_inner = _fit_baseline(fold, feature_names, feature_params, inner_folds, gknn_params,
                                                svm_params, knn_params, timer, inner_search=inner_search)
                if cnn:
                    p_test["cnn"], p_inner["cnn"] = _fit_cnn(fold, cnn_inner_folds, cnn_params, device, timer,
                                                             run_info)
                    p_test["fused"], p_inner["fused"] = _fit_fusion(fold, p_test, p_inner, fusion_params, device,
                                                                    timer, run_info, inner_folds=inner_folds)
                for m in models:
                    cell_p[m][r, test_cells] = p_test[m]
                    inner_p[m][r, k, train_cells] = p_inner[m]
                    if binary:
                        auc = roc_auc(y_train, p_inner[m][:, 1])
                        inner_auc[m][r, k] = np.nan if auc is None else auc

                # Image scores, thresholds from the inner out-of-fold scores of the training images.
                t = time.perf_counter()
                prior = np.bincount(image_label[fold.train_img], minlength=K) / len(fold.train_img)
                for m in models:
                    if binary:
                        rule_k[m][r, k], thresholds[m][r, k] = fold.image_rule(p_inner[m][:, 1], top_ks)
                    for i in np.flatnonzero(test_img):
                        img_p[m][r, i] = _image_proba(cell_p[m][r, cell_image == i], binary, rule_k[m][r, k], prior)
                    if binary:
                        img_pred[m][r, test_img] = img_p[m][r, test_img, 1] >= thresholds[m][r, k]
                    else:
                        img_pred[m][r, test_img] = np.argmax(img_p[m][r, test_img], axis=1)
                timer.add("thresholds", time.perf_counter() - t)
                bar.update()
    finally:
        bar.close()

    # 5. FAB subtype of the images called ALL.
    t = time.perf_counter()
    fab = _fab(cells, img_pred[primary], cell_p[primary], len(records), fab_settings) if mode == "points" else None
    timer.add("fab", time.perf_counter() - t)

    # 6. Metrics and outputs.
    t = time.perf_counter()
    stratum = np.array([_one_camera(n) for n in names]) if mode == "points" else None
    metrics: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "classes": classes,
        "primary_model": primary,
        "dataset": {
            "name": dataset.name, "root": str(dataset.root), "fingerprint": dataset.fingerprint(),
            "n_images": len(records), "n_images_per_class": {c: int((image_label == j).sum())
                                                              for j, c in enumerate(classes)},
            "n_cells": int(len(cell_label)), "n_cells_per_class": {c: int((cell_label == j).sum())
                                                                   for j, c in enumerate(classes)},
            "n_images_per_scale_source": scale_sources,
        },  # fmt: skip
        "seed": seed,
        "settings": _settings(
            mode, top_ks, len(feature_names),
            {"n_folds": n_folds, "repeats": repeats, "cnn_enabled": bool(cnn), "device": device,
             "match_radius_px": match_radius_px, "inner_folds": inner_folds, "cnn_inner_folds": cnn_inner_folds,
             "inner_search": bool(inner_search)},
            {"gknn": {**GKNN_DEFAULTS, **dict(gknn_params or {})}, "svm": svm_params, "knn": knn_params,
             "cnn": {**CNN_DEFAULTS, **dict(cnn_params or {})} if cnn else cnn_params, "fusion": fusion_params,
             # The settings whose defaults changed always: a run must say which outlines it had.
             "segment": {**{k: v for k, v in default_segment_settings().items() if k in UNRECORDED_SEGMENT_SETTINGS},
                         **dict(segment_params or {})},
             # Every CellFeatures setting that is not its default, and the crop context always (its default
             # changed: a run must say which crops it had).
             "features": {"context_um": CellFeatures(**dict(feature_params or {})).context_um,
                          **dict(feature_params or {})}},
        ),  # fmt: skip
        "models": {},
        "device": run_info["device"],
        "timings_s": {},
        "cache": {"folder": str(cache_dir), "computed": cache_info["computed"], "reused": cache_info["reused"]},
        "versions": _versions(cnn),
    }
    if mode == "points":
        assert stratum is not None
        metrics["dataset"].update({
            "n_images_all": int(image_label.sum()), "n_blast_cells": int(cell_label.sum()),
            "n_annotated_points": cells.n_points, "n_points_matched": cells.n_matched,
            "n_images_one_camera": int(stratum.sum()),
        })  # fmt: skip
    border = np.array([bool(row.get("touches_border", False)) for row in cells.rows], dtype=bool)
    for m in models:
        per_repeat = []
        for r in range(repeats):
            entry: dict[str, Any] = {"repeat": r}
            strata = [("all", np.ones(len(records), bool))] + ([("one_camera", stratum)] if stratum is not None else [])
            for key, mask in strata:
                if binary:
                    res = binary_metrics(image_label[mask], img_pred[m][r, mask], img_p[m][r, mask, 1])
                    cmask = mask[cell_image]
                    res["cell_auc"] = roc_auc(cell_label[cmask], cell_p[m][r, cmask, 1])
                    if mode == "points":
                        # Against clean negatives only: blasts vs the cells of healthy images.
                        clean = cmask & ((cell_label == 1) | (image_label[cell_image] == 0))
                        res["cell_auc_clean"] = roc_auc(cell_label[clean], cell_p[m][r, clean, 1])
                        # Whole cells only: the annotators marked few of the cells that the image border cuts
                        # (6 % of those in ALL smears, against 61 % of the others), so the border flag, a
                        # feature, partly predicts the labels rather than the cells.
                        whole = cmask & ~border
                        res["cell_auc_whole"] = roc_auc(cell_label[whole], cell_p[m][r, whole, 1])
                else:
                    res = multiclass_metrics(np.array(classes)[image_label[mask]],
                                             np.array(classes)[img_pred[m][r, mask]], classes)  # fmt: skip
                entry[key] = res
            if binary:
                entry["thresholds"] = [float(v) for v in thresholds[m][r]]
                entry["image_rule_top_k"] = [int(v) for v in rule_k[m][r]]
                entry["inner_cell_auc_folds"] = [None if np.isnan(v) else float(v) for v in inner_auc[m][r]]
            per_repeat.append(entry)
        metrics["models"][m] = {"repeats": per_repeat, "summary": _summary(per_repeat)}
        if binary:
            metrics["models"][m]["inner_cell_auc"] = _inner_summary(inner_auc[m])
    if cnn and timer.get("fit_cnn"):
        metrics["cnn"] = {
            "settings": {**CNN_DEFAULTS, **dict(cnn_params or {})},
            "architecture": run_info.get("cnn_architecture"),
            "train_patches_per_s": round(run_info["cnn_patch_epochs"] / timer["fit_cnn"], 1),
            "patch_epochs": run_info["cnn_patch_epochs"],
            # the weight average's momentum the CNNs used, lowest and highest; null without averaging
            "ema_momentum_used": ([round(min(used), 6), round(max(used), 6)]
                                  if (used := run_info["cnn_ema_momentum"]) else None),
        }
        metrics["fusion"] = run_info["fusion"]
    if fab is not None:
        metrics["fab"] = fab["summary"]

    # The run's files are written together into a new folder that then replaces the run folder: a failure
    # or an interrupt leaves the earlier run whole, never its metrics beside another run's tables.
    from leukoseg.io import _staged_folder, _swap_folder, write_json

    with _staged_folder(out_dir) as tmp:
        names_written = [p.name for p in _write_outputs(tmp, names, classes, binary, image_label, folds, cells,
                                                        cell_p, img_p, img_pred, thresholds, models, primary, fab,
                                                        entries)]  # fmt: skip
        names_written.append(_write_scores(tmp / "scores.npz", names, cells, cell_p, inner_p).name)
        timer.add("write", time.perf_counter() - t)
        timer["total"] = time.perf_counter() - t0
        metrics["timings_s"] = {k: round(v, 3) for k, v in timer.items()}
        write_json(tmp / "metrics.json", metrics)
        _check_run_folder(out_dir)  # again: the folder may have changed during the run
        _swap_folder(tmp, out_dir)
    files = tuple(out_dir / name for name in [*names_written, "metrics.json"])
    return ExperimentResult(out_dir, metrics, files)


def _is_run_folder(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def _check_run_folder(out_dir: Path) -> None:
    """Refuse a run folder that leukoseg did not write (a file, or a folder of other files without metrics.json),
    and '.' or '..', which cannot be replaced by a folder staged beside them."""
    from leukoseg.io import _own_folder_refusal, _refusal_to_replace

    own = _own_folder_refusal(out_dir, "run")
    if own is not None:
        raise LeukosegError(out_dir, f"{own} (e.g. --out run1)")
    why = _refusal_to_replace(out_dir, _is_run_folder, "metrics.json")
    if why is not None:
        raise LeukosegError(out_dir, f"exists and is not a leukoseg run folder ({why}); not replaced (choose "
                                     "another --out)")  # fmt: skip


@dataclass(frozen=True)
class _Fold:
    """One outer fold: which cells train and test, and what the inner splits need."""

    cells: _Cells
    train: np.ndarray  # bool over cells
    test: np.ndarray  # bool over cells
    train_img: np.ndarray  # indices of the training images
    image_label: np.ndarray
    image_group: np.ndarray
    K: int
    seed: int

    @property
    def y_train(self) -> np.ndarray:
        return self.cells.label[self.train]

    @property
    def train_cell_img(self) -> np.ndarray:
        return self.cells.image[self.train]

    def image_rule(self, p_inner_blast: np.ndarray, top_ks=(1, 2, 3)) -> tuple[int, float]:
        """Top-k and threshold of the image rule, learnt on the training images' inner out-of-fold scores."""
        cell_img = self.train_cell_img
        return choose_image_rule([p_inner_blast[cell_img == i] for i in self.train_img],
                                 self.image_label[self.train_img], top_ks=top_ks)  # fmt: skip

    def inner_splits(self, n: int, seed: int):
        """Grouped stratified splits of the training images: (inner-train cells, inner-test cells) masks."""
        from sklearn.model_selection import StratifiedGroupKFold

        labels, groups = self.image_label[self.train_img], self.image_group[self.train_img]
        n = min(n, *(len(np.unique(groups[labels == c])) for c in np.unique(labels)))
        if n < 2:
            return []
        splitter = StratifiedGroupKFold(n, shuffle=True, random_state=seed)
        out = []
        for tr, te in splitter.split(np.zeros((len(self.train_img), 1)), labels, groups):
            out.append((np.isin(self.train_cell_img, self.train_img[tr]), np.isin(self.train_cell_img, self.train_img[te])))
        return out


def _image_proba(p: np.ndarray, binary: bool, top_k: int, prior: np.ndarray) -> np.ndarray:
    """Image class probabilities from its cells' (n, K): the top-k rule (binary) or the cell mean."""
    if binary:
        s = image_score(p[:, 1], top_k=top_k)
        return np.array([1.0 - s, s])
    return p.mean(axis=0) if len(p) else prior


def _fit_baseline(fold: _Fold, feature_names, feature_params, inner_folds, gknn_params, svm_params, knn_params,
                  timer, fitted_out: dict | None = None, *, inner_search: bool = False) -> tuple[dict, dict]:
    """GkNN, SVM, kNN and their mean on the fold: test probabilities and inner out-of-fold training ones.

    `fitted_out`, when given, receives the fitted models, the feature columns, the imputation medians and the
    fitted CellFeatures (its settings compute the same columns at inference). With `inner_search`, each inner
    split's models are tuned afresh (genetic search, SVM grid) on its training part instead of refitted
    with the fold's choices.
    """
    cells = fold.cells
    cols, extractor = _feature_columns([cells.rows[j] for j in np.flatnonzero(fold.train)], feature_names,
                                       feature_params)  # fmt: skip
    X_train, X_test, medians = _impute(cells.X[fold.train][:, cols], cells.X[fold.test][:, cols])
    y_train, g_train = fold.y_train, fold.image_group[fold.train_cell_img]
    fitted = _fit_models(X_train, y_train, g_train, fold.seed, gknn_params, svm_params, knn_params, timer)
    if fitted_out is not None:
        fitted_out.update(models=fitted, columns=[feature_names[c] for c in cols], medians=medians, features=extractor)
    p_test = _predict(fitted, X_test, fold.K)
    t = time.perf_counter()
    p_inner = {m: np.full((len(y_train), fold.K), 1.0 / fold.K) for m in _BASELINE_MODELS}
    splits = fold.inner_splits(inner_folds, _seed(fold.seed, 1))
    if not splits:
        log.warning("too few training images for an inner split; image thresholds from uninformed scores")
    for j, (tr, te) in enumerate(splits):
        if not te.any():
            continue
        try:
            if inner_search:
                # Their fit times go to a timer of their own: `inner_baseline` counts them once.
                models = _fit_models(X_train[tr], y_train[tr], g_train[tr], _seed(fold.seed, 1, j), gknn_params,
                                     svm_params, knn_params, _Timer())  # fmt: skip
            else:
                models = _fixed_models(fitted, _seed(fold.seed, 1, j), knn_params)
                models["gknn"].fit(X_train[tr], y_train[tr])
                models["svm"].fit(X_train[tr], y_train[tr], groups=g_train[tr])
                models["knn"].fit(X_train[tr], y_train[tr])
            p = _predict(models, X_train[te], fold.K)
        except ValueError as exc:  # a tiny inner training set: one class only, fewer cells than k
            log.warning("inner fold %d skipped (%s)", j, exc)
            continue
        for m in _BASELINE_MODELS:
            p_inner[m][te] = p[m]
    timer.add("inner_baseline", time.perf_counter() - t)
    return p_test, p_inner


def _images_for_inner_splits(n_folds: int) -> int:
    """Distinct images a class needs so that every fold's training images hold 2 of it (a stratified split
    puts ceil(n / n_folds) of n in the largest test fold)."""
    n = n_folds
    while n - -(-n // n_folds) < 2:
        n += 1
    return n


def check_top_ks(top_k: int | Sequence[int]) -> tuple[int, ...]:
    """The candidate k of the image rule as a tuple of int, or a one-line LeukosegError before any work.

    Parameters
    ----------
    top_k : int or sequence of int
        One k, or the candidates among which each fold chooses (:func:`.metrics.choose_image_rule`).

    Returns
    -------
    tuple of int

    Raises
    ------
    LeukosegError
        If `top_k` is empty, or one of its values is not an integer of at least 1.
    """
    values: list[Any] = [top_k] if np.ndim(top_k) == 0 else np.ravel(np.asarray(top_k, dtype=object)).tolist()
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise LeukosegError(None, f"top_k must be an integer >= 1 or a non-empty sequence of them; got {top_k!r}")
    return tuple(int(k) for k in values)


def check_class_images(dataset, minimum: int, *, what: str, fewer: str | None = None) -> None:
    """Refuse, before any image is segmented, a class in fewer than `minimum` distinct images (one-line error).

    Identical images (one group) count once: they always fall on the same side of a split. Every class of
    the data set is checked, one without images too (a run on one class would report a meaningless perfect
    accuracy); the rarest one is named.

    Parameters
    ----------
    dataset : Dataset
        The data set (its records' labels and groups).
    minimum : int
        Distinct images that every class needs.
    what : str
        Ends "fewer than the {minimum} ...", e.g. ``'folds'``.
    fewer : str, optional
        The advice when the class has at least two distinct images, e.g. ``'use at most {n} folds (--folds)'``
        (``{n}``: its number of distinct images); otherwise, or when not given, the advice is to add images.

    Raises
    ------
    LeukosegError
        Naming the data set's folder, the class (its plain label) and its number of distinct images.
    """
    counts = groups_per_class([str(r.label) for r in dataset.records], [int(r.group) for r in dataset.records],
                              classes=[str(c) for c in getattr(dataset, "classes", ())])  # fmt: skip
    from leukoseg.datasets import CLASS_NAMES

    meaning: Mapping[str, str] = CLASS_NAMES.get(getattr(dataset, "name", ""), {})
    for n, label in sorted((n, label) for label, n in counts.items()):  # the rarest class first
        if n < minimum:
            name = f"{label!r} ({meaning[label]})" if label in meaning else repr(label)
            advice = fewer.format(n=n) if fewer and n >= 2 else "add distinct images of that class"
            raise LeukosegError(dataset.root, f"class {name} has {n} distinct image(s) (identical copies count once), "
                                              f"fewer than the {minimum} {what}; {advice}")


def check_cnn_params(cnn_params: Mapping | None, *, patch_shape=(50, 50, 3)) -> None:
    """Refuse CNN settings the experiment cannot use before any work starts (one-line LeukosegError).

    Parameters
    ----------
    cnn_params : mapping or None
        :class:`~leukoseg.classify.CNNClassifier` parameters over :data:`CNN_DEFAULTS`; `device` and
        `random_state` are the experiment's own.
    patch_shape : tuple of int, optional
        Shape of the cell patches.

    Raises
    ------
    LeukosegError
        If a key is neither a CNNClassifier parameter nor ``refit`` (a boolean: score the test cells with one
        CNN fitted on all training cells, and ship that one with ``train``, instead of the mean of the
        cross-fitted CNNs), is set by the experiment, or a value is out of range, or the DenseNet121 weights
        file given does not fit the network.
    """
    from leukoseg.classify import CNNClassifier

    params = dict(cnn_params or {})
    own = sorted({"device", "random_state"} & set(params))
    if own:
        raise LeukosegError(None, f"CNN settings {own} are the experiment's own (use --device and --seed)")
    unknown = sorted(set(params) - set(CNNClassifier().get_params()) - {"refit"})
    if unknown:
        raise LeukosegError(None, f"unknown CNN settings {unknown}; see leukoseg.classify.CNNClassifier")
    if not isinstance(params.pop("refit", False), bool):
        raise LeukosegError(None, "invalid CNN settings: refit must be true or false")
    try:
        est = CNNClassifier(**{**CNN_DEFAULTS, **params})
        est._check_training_params(patch_shape)
        est._architecture(patch_shape, 2)
        if est.architecture == "densenet121" and est.backbone_weights is not None:
            from leukoseg.classify.cnn import build_densenet121

            # Seconds to read the file now, rather than a refusal after the segmentation and the baseline.
            build_densenet121(input_shape=patch_shape, weights=est.backbone_weights)
    except (TypeError, ValueError) as exc:
        raise LeukosegError(None, f"invalid CNN settings: {exc}") from None


def check_feature_params(feature_params: Mapping | None) -> None:
    """Refuse feature settings before any work starts (one-line LeukosegError).

    Parameters
    ----------
    feature_params : mapping or None
        :class:`~leukoseg.features.CellFeatures` parameters.

    Raises
    ------
    LeukosegError
        If a key is not a CellFeatures parameter or a value is out of range.
    """
    from leukoseg.features import CellFeatures

    from .cache import _feature_names_without_cells

    params = dict(feature_params or {})
    unknown = sorted(set(params) - set(CellFeatures().get_params()))
    if unknown:
        raise LeukosegError(None, f"unknown feature settings {unknown}; see leukoseg.features.CellFeatures")
    try:  # CellFeatures checks its settings when fitted: on the dummy cell of an image without cells
        _feature_names_without_cells(params)
    except (TypeError, ValueError) as exc:
        raise LeukosegError(None, f"invalid feature settings: {exc}") from None


def _check_segment_params(segment_params: Mapping | None) -> None:
    """Refuse segmentation settings before any image is segmented (one-line LeukosegError)."""
    from leukoseg.segmentation import check_segment_settings

    try:
        check_segment_settings(segment_params if segment_params is not None else {})
    except ValueError as exc:
        raise LeukosegError(None, f"invalid segmentation settings: {exc}") from None


def _new_run_info() -> dict[str, Any]:
    """What the model fits of a run record as they go: devices, CNN patch-epochs and momenta, fusion weights."""
    return {"device": {}, "cnn_patch_epochs": 0, "cnn_ema_momentum": [], "fusion": []}


def _fit_cnn(fold: _Fold, n_parts, cnn_params, device, timer, run_info,
             fitted_out: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted CNNs: out-of-fold probabilities of the training cells, ensemble mean on the test cells.

    With the setting ``refit`` (an experiment setting, not a CNNClassifier one), the test cells are scored by
    one CNN fitted on all the training cells instead. `fitted_out`, when given, receives under ``'cnn'`` the
    list of the CNNs that score new cells (what ``train`` ships).
    """
    from leukoseg.classify import CNNClassifier

    cells = fold.cells
    X_train, X_test = cells.patches[fold.train], cells.patches[fold.test]
    y_train, g_train = fold.y_train, fold.image_group[fold.train_cell_img]
    p_inner = np.full((len(y_train), fold.K), 1.0 / fold.K)
    p_test = np.zeros((len(X_test), fold.K))
    splits = fold.inner_splits(n_parts, _seed(fold.seed, 2))
    if not splits:
        raise LeukosegError(None, "too few training images to cross-fit the CNN; use fewer folds or --no-cnn")
    settings = {**CNN_DEFAULTS, **dict(cnn_params or {})}
    refit = bool(settings.pop("refit", False))

    def fit(mask, j):
        t = time.perf_counter()
        params = {**settings, "device": device, "random_state": _seed(fold.seed, 2, j)}
        model = CNNClassifier(**params).fit(X_train[mask], y_train[mask], groups=g_train[mask])
        timer.add("fit_cnn", time.perf_counter() - t)
        run_info["cnn_patch_epochs"] += len(model.train_indices_) * model.n_iter_
        if model.ema_momentum_ is not None:  # as used: lowered for a short training (ema_max_start_share)
            run_info["cnn_ema_momentum"].append(model.ema_momentum_)
        run_info["device"].update({"cnn": model.device_, "backend": model.backend_})
        run_info["cnn_architecture"] = model.architecture_  # with the SHA-256 of a DenseNet121 weights file
        return model

    def predict(model, X):
        t = time.perf_counter()
        p = _columns(model, model.predict_proba(X), fold.K)
        timer.add("predict_cnn", time.perf_counter() - t)
        return p

    models = []
    for j, (tr, te) in enumerate(splits):
        models.append(fit(tr, j))
        p_inner[te] = predict(models[-1], X_train[te])
    if refit and (len(X_test) or fitted_out is not None):
        models = [fit(np.ones(len(y_train), bool), len(splits))]
    if len(X_test):
        p_test = np.mean([predict(model, X_test) for model in models], axis=0)
    if fitted_out is not None:
        fitted_out["cnn"] = models
    return p_test, p_inner


def _fit_fusion(fold: _Fold, p_test, p_inner, fusion_params, device, timer, run_info, fitted_out=None, *,
                inner_folds: int = 3):
    """Logistic stacking of the baseline and the CNN, fitted on the training cells' inner out-of-fold scores.

    Its own scores of the training cells, which choose the image rule, are cross-fitted as well: the
    baseline's inner folds are scored by fusions fitted on the other inner folds, so that the fused model's
    top-k and threshold, like every other model's, are learnt on out-of-fold scores.
    """
    from leukoseg.classify import StackingFusion

    t = time.perf_counter()
    inputs = ("baseline", "cnn")
    kw = {"n_inputs": len(inputs), "device": device, **dict(fusion_params or {})}
    X_inner, y = np.hstack([p_inner[m] for m in inputs]), fold.y_train
    fusion = StackingFusion(**kw).fit(X_inner, y)
    fused_inner = fusion.predict_proba(X_inner)  # kept only where an inner fold lacks a class
    for tr, te in fold.inner_splits(inner_folds, _seed(fold.seed, 1)):
        if len(np.unique(y[tr])) == fold.K and te.any():
            fused_inner[te] = StackingFusion(**kw).fit(X_inner[tr], y[tr]).predict_proba(X_inner[te])
    fused_test = (fusion.predict_proba(np.hstack([p_test[m] for m in inputs])) if len(p_test["cnn"])
                  else np.zeros((0, fold.K)))  # fmt: skip
    run_info["device"]["fusion"] = fusion.device_
    run_info["fusion"].append(fusion.to_dict(list(inputs)))
    if fitted_out is not None:
        fitted_out["fusion"] = fusion.to_dict(list(inputs))
    timer.add("fusion", time.perf_counter() - t)
    return fused_test, fused_inner


def _columns(model, proba: np.ndarray, K: int) -> np.ndarray:
    """Probabilities in class-code order 0..K-1 (a model may have seen fewer classes)."""
    out = np.zeros((len(proba), K))
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out


def _feature_columns(train_rows, feature_names, feature_params) -> tuple[list[int], Any]:
    """Fit CellFeatures on the training cells (it only fixes the columns) and find them in the cache.

    Returns the columns' indices in the cached matrix, and the fitted CellFeatures.
    """
    from leukoseg.features import CellFeatures

    cells = [{"measurements": {k: _python_scalar(v) for k, v in row.items()}}
             for row in train_rows]
    extractor = CellFeatures(**dict(feature_params or {})).fit(cells)
    wanted = [str(n) for n in extractor.get_feature_names_out()]
    missing = [n for n in wanted if n not in feature_names]
    if missing:
        raise LeukosegError(None, f"cached features lack columns {missing[:3]}; clear the cache folder")
    return [feature_names.index(n) for n in wanted], extractor


def _impute(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-finite values -> the training median of the column (0 when the column has none); and the medians."""
    X_train, X_test = X_train.copy(), X_test.copy()
    X_train[~np.isfinite(X_train)] = np.nan
    X_test[~np.isfinite(X_test)] = np.nan
    with np.errstate(all="ignore"):
        med = np.array([np.median(c[~np.isnan(c)]) if (~np.isnan(c)).any() else 0.0 for c in X_train.T])
    for X in (X_train, X_test):
        rows, cols = np.nonzero(np.isnan(X))
        X[rows, cols] = med[cols]
    return X_train, X_test, med


def _fit_models(X, y, groups, seed, gknn_params, svm_params, knn_params, timer) -> dict:
    from leukoseg.classify import GeneticKNNClassifier, make_knn, make_svm

    out = {}
    t = time.perf_counter()
    params = {"random_state": seed, **GKNN_DEFAULTS, **dict(gknn_params or {})}
    out["gknn"] = GeneticKNNClassifier(**params).fit(X, y, groups=groups)
    timer.add("fit_gknn", time.perf_counter() - t)
    t = time.perf_counter()
    out["svm"] = make_svm(**{"random_state": seed, **dict(svm_params or {})}).fit(X, y, groups=groups)
    timer.add("fit_svm", time.perf_counter() - t)
    t = time.perf_counter()
    out["knn"] = make_knn(**dict(knn_params or {})).fit(X, y)
    timer.add("fit_knn", time.perf_counter() - t)
    return out


def _predict(models: Mapping, X, K: int) -> dict[str, np.ndarray]:
    p = {m: (_columns(models[m], models[m].predict_proba(X), K) if len(X) else np.zeros((0, K)))
         for m in ("gknn", "svm", "knn")}  # fmt: skip
    p["baseline"] = (p["gknn"] + p["svm"]) / 2
    return p


def _fixed_models(fitted: Mapping, seed: int, knn_params) -> dict:
    """Unfitted models with the hyper-parameters already chosen on the fold's training set.

    Refitted on each inner split to give the inner out-of-fold scores (image rule, threshold, fusion). The
    hyper-parameters were chosen on the whole training set, inner-test images included, so those scores are
    slightly optimistic; a new search per split (``inner_search``) costs three times the GA and grid. Test
    images are never involved either way.
    """
    from leukoseg.classify import SVMClassifier, make_knn

    s = fitted["svm"]
    svm = SVMClassifier(C_grid=(s.best_params_["svc__C"],), gamma_grid=(s.best_params_["svc__gamma"],),
                        inner_cv=s.inner_cv, scoring=s.scoring, calibration=s.calibration, random_state=seed)
    return {"gknn": _fixed_gknn(fitted["gknn"]), "svm": svm, "knn": make_knn(**dict(knn_params or {}))}


def _fixed_gknn(gknn: Any) -> Any:
    """An unfitted kNN with the feature weights and k that a fitted GkNN's genetic searches chose.

    Its fit standardises the features on the cells it is given and keeps each search's weighted kNN; with
    several searches, :meth:`predict_proba` is the mean of their votes, as the GkNN's. No search is run:
    this is how the experiment scores its inner splits (and what ``benchmarks/gknn_settings.py`` compares
    with scores of searches re-run on each split).
    """
    from sklearn.ensemble import VotingClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    searches = []
    for run in gknn.runs_:  # each genetic search's weights and k; with several, the mean of their votes
        support, weights = run["support"].copy(), run["weights"][run["support"]].copy()
        searches.append(Pipeline([
            ("scale", StandardScaler()),
            ("weight", FunctionTransformer(lambda Z, s=support, w=weights: Z[:, s] * w)),
            ("knn", KNeighborsClassifier(n_neighbors=run["k"], weights=gknn.vote, algorithm="brute")),
        ]))  # fmt: skip
    if len(searches) == 1:
        return searches[0]
    return VotingClassifier([(f"search{i}", p) for i, p in enumerate(searches)], voting="soft")


def _fab(cells: _Cells, pred: np.ndarray, cell_p: np.ndarray, n_images: int, settings) -> dict:
    """FAB subtype of every image called ALL, per repeat, from its predicted blasts' measurements."""
    from leukoseg.classify.fab import FABSettings, blast_mask, fab_classify

    settings = settings if settings is not None else FABSettings()
    per_image: dict[tuple[int, int], dict] = {}
    counts: dict[str, int] = {}
    n_low = 0
    for r in range(pred.shape[0]):
        for i in np.flatnonzero(pred[r] == 1):
            in_image = np.flatnonzero(cells.image == i)
            if not len(in_image):
                continue
            p = cell_p[r, in_image, 1]
            blasts = in_image[blast_mask(p)]
            table = {k: np.array([cells.rows[j][k] for j in blasts]) for k in cells.rows[blasts[0]]}
            res = fab_classify(table, settings=settings).to_dict()
            per_image[(r, int(i))] = res
            if r == 0:
                counts[str(res["fab_subtype"])] = counts.get(str(res["fab_subtype"]), 0) + 1
                n_low += bool(res["fab_low_count"])
    return {
        "per_image": per_image,
        "summary": {
            "settings": settings.to_dict(),
            "distribution_repeat0": dict(sorted(counts.items())),
            # Subtypes scored on fewer than settings.min_scored_blasts blasts: one cell weighs too much there.
            "low_count_repeat0": n_low,
            "note": "FAB (Bennett et al. 1981) is a historical morphological classification; research use only.",
        },
    }


def _settings(mode: str, top_ks: tuple[int, ...], n_features: int, plain: Mapping, params: Mapping) -> dict:
    """The run's settings for metrics.json: plain values, each model's keyword arguments, the protocol."""
    out = dict(plain)
    out.update({name: dict(kw or {}) for name, kw in params.items()})
    out.update({
        "top_ks": list(top_ks),
        "n_features": n_features,
        "image_score": (f"mean of the k highest cell blast probabilities, missing cells = 0; k among "
                        f"{list(top_ks)} and the threshold chosen on inner out-of-fold scores of the training images"
                        if mode == "points" else "the probability of the cell nearest the centre"
                        if mode == "crop" else "mean of the cells' class probabilities"),
        "baseline": "mean of the gknn and svm cell probabilities",
        "cnn_protocol": "cross-fitted over the training images; test cells get the mean of the fold's CNNs; "
                        "every prediction is the mean over the 8 flips/quarter turns of the patch",
        "fusion_protocol": "logistic stacking of baseline and cnn, fitted on inner out-of-fold training scores "
                           "(keras.ops); its training-cell scores for the image rule cross-fitted over the inner "
                           "folds",
        "threshold": "maximises balanced accuracy of inner out-of-fold scores of the training images",
    })  # fmt: skip
    return out


def _summary(per_repeat: list[dict]) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for stratum in [s for s in ("all", "one_camera") if s in per_repeat[0]]:
        out[stratum] = {}
        keys = [k for k, v in per_repeat[0][stratum].items()
                if k != "n" and (v is None or isinstance(v, (int, float)))]  # fmt: skip
        for key in keys:
            values = [e[stratum][key] for e in per_repeat if e[stratum].get(key) is not None]
            # a repeat without the figure (e.g. AUC of one class) is left out
            out[stratum][key] = {**_mean_and_spread(values), "n_repeats": len(values)}
    return out


def _mean_and_spread(values: list[float]) -> dict[str, float | None]:
    """Mean of per-repeat values and their sample standard deviation: undefined (None) for a single value."""
    return {
        "mean": float(np.mean(values)) if values else None,
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }


def _inner_summary(auc: np.ndarray) -> dict[str, Any]:
    """Inner cell AUC of a model: per repeat the mean over its folds, then mean and spread over repeats."""
    per_repeat = [float(np.mean(row[~np.isnan(row)])) if (~np.isnan(row)).any() else None for row in auc]
    return {**_mean_and_spread([v for v in per_repeat if v is not None]), "per_repeat": per_repeat}


def _versions(cnn: bool) -> dict:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    dists = [("leukoseg", "leukoseg"), ("numpy", "numpy"), ("scipy", "scipy"), ("scikit-learn", "scikit-learn"),
             ("scikit-image", "scikit-image"), ("opencv", "opencv-python-headless"), ("deap", "deap")]
    if cnn:
        dists += [("keras", "keras"), ("tensorflow", "tensorflow-cpu"), ("tensorflow", "tensorflow"),
                  ("torch", "torch")]  # fmt: skip
    for label, dist in dists:
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.setdefault(label, None)
    return out


def _fmt(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.6f}"


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_outputs(out_dir, names, classes, binary, image_label, folds, cells: _Cells, cell_p, img_p, img_pred,
                   thresholds, models: Sequence[str], primary: str, fab, entries) -> list[Path]:
    from leukoseg.io import write_text

    repeats = folds.shape[0]
    cls = np.array(classes)
    order = sorted(range(len(names)), key=lambda i: names[i])
    fold_rows = [[names[i], r, int(folds[r, i])] for r in range(repeats) for i in order]
    write_text(out_dir / "folds.csv", _csv(["image", "repeat", "fold"], fold_rows))

    cell_image = cells.image
    cell_order = sorted(range(len(cells.label)), key=lambda j: (names[cell_image[j]], int(cells.rows[j]["cell_id"])))
    if binary:
        header = ["image", "cell_id", "x", "y", "repeat", "fold", "label", *(f"p_blast_{m}" for m in models)]
    else:
        header = ["image", "cell_id", "x", "y", "repeat", "fold", "label", *(f"p_{c}" for c in classes),
                  *(f"pred_{m}" for m in models)]  # fmt: skip
    rows = []
    for r in range(repeats):
        for j in cell_order:
            i, row = cell_image[j], cells.rows[j]
            head = [names[i], int(row["cell_id"]), f"{float(row['x']):.2f}", f"{float(row['y']):.2f}", r,
                    int(folds[r, i])]  # fmt: skip
            if binary:
                rows.append([*head, int(cells.label[j]), *(_fmt(cell_p[m][r, j, 1]) for m in models)])
            else:
                rows.append([*head, cls[cells.label[j]], *(_fmt(v) for v in cell_p[primary][r, j]),
                             *(cls[int(np.argmax(cell_p[m][r, j]))] for m in models)])  # fmt: skip
    write_text(out_dir / "cells.csv", _csv(header, rows))

    fab_cols = sorted({k for res in (fab["per_image"].values() if fab else []) for k in res}
                      - {"fab_subtype", "fab_score"})  # fmt: skip
    fab_cols = ["fab_subtype", "fab_score", *fab_cols] if fab else []
    if binary:
        header = ["image", "label", "repeat", "fold", "n_cells"]
        for m in models:
            header += [f"p_{m}", f"pred_{m}"]
        header += ["pred", "n_blasts_predicted", "threshold", *fab_cols]
    else:
        header = ["image", "label", "repeat", "fold", "n_cells", *(f"p_{c}" for c in classes), "pred",
                  *(f"pred_{m}" for m in models)]  # fmt: skip
    header += ["um_per_px", "scale_source"]
    rows = []
    for r in range(repeats):
        for i in order:
            in_image = cell_image == i
            head = [names[i], cls[image_label[i]] if not binary else int(image_label[i]), r, int(folds[r, i]),
                    int(in_image.sum())]  # fmt: skip
            if binary:
                row = head[:]
                for m in models:
                    row += [_fmt(img_p[m][r, i, 1]), int(img_pred[m][r, i])]
                res = fab["per_image"].get((r, i), {}) if fab else {}
                row += [int(img_pred[primary][r, i]), int((cell_p[primary][r, in_image, 1] >= 0.5).sum()),
                        _fmt(thresholds[primary][r, folds[r, i]]),
                        *(_fab_value(c, res.get(c)) for c in fab_cols)]  # fmt: skip
            else:
                row = [*head, *(_fmt(v) for v in img_p[primary][r, i]), cls[img_pred[primary][r, i]],
                       *(cls[img_pred[m][r, i]] for m in models)]  # fmt: skip
            rows.append([*row, _fmt(entries[i].um_per_px), entries[i].scale_source])
    write_text(out_dir / "images.csv", _csv(header, rows))
    return [out_dir / "folds.csv", out_dir / "cells.csv", out_dir / "images.csv"]


def _write_scores(path: Path, names, cells: _Cells, cell_p, inner_p) -> Path:
    """Every cell score of the run at full precision, as plain arrays (no pickle), for later study.

    ``image`` and ``cell_id`` name the cells (the rows of ``cells.csv`` in another order); ``test_<model>``
    (repeats, cells, classes) holds the out-of-fold scores of ``cells.csv``; ``inner_<model>`` (repeats,
    folds, cells, classes) the inner out-of-fold scores of each fold's training cells, from which the fold's
    image rule was chosen, NaN for the fold's test cells (1/K, as in the fit, for training cells that no inner
    split scored, when a fold has too few training images to split).
    """
    arrays: dict[str, np.ndarray] = {
        "image": np.array([names[i] for i in cells.image], dtype=str),
        "cell_id": np.array([int(row["cell_id"]) for row in cells.rows], dtype=np.int64),
    }
    for m in cell_p:
        arrays[f"test_{m}"] = cell_p[m]
        arrays[f"inner_{m}"] = inner_p[m]
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def _fab_value(name: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        # Percentages to 0.1 point; the size CV is a fraction (L3 needs at most 0.15): to 6 decimals, as the scores.
        return f"{v:.1f}" if name.startswith("fab_pct_") else _fmt(v)
    return str(v)
