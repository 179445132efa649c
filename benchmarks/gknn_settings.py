"""GkNN settings compared on the folds of the ALL-IDB1 experiment, chosen by a nested inner cross-validation.

For each setting and each outer fold of one repeat (the experiment's folds, seeds and feature columns), the
script runs the genetic search afresh on each inner split of the training images (the experiment's inner
splits) and scores the inner test cells. A fold's **inner AUC** uses that fold's training images only, so a
choice made fold by fold is nested: the script ends with that **nested selection** (each fold takes the
setting with the best inner AUC on its own training images) and its out-of-fold cell AUC. The inner AUC
printed per setting is the mean over the folds; every image is a training image of some fold, so one
setting chosen for all folds by that mean has seen every image's label, and its outer figures are a little
optimistic. The **out-of-fold cell AUC** (GkNN fitted on all training images of the fold, as in the
experiment) is printed beside it for information; choosing by it would fit the test images. In brackets
after the inner AUC: the inner AUC of the same splits scored as the experiment scores them, by kNNs with the
weights and k that the fold's own search chose on all its training images (no search per split); the
difference is how much the experiment's inner scores, which choose its thresholds and fusion weights, flatter
the GkNN.

    python benchmarks/gknn_settings.py [--data-dir DIR] [--cache DIR] [--repeat 0] [--settings JSON]
                                       [--feature-params JSON]

``--settings`` is a JSON list of ``{"name": ..., <GeneticKNNClassifier parameters>}``; a ``gaussian_width``
entry replaces the Gaussian vote's width (2 by default: a neighbour at the k-th distance weighs
``exp(-2)``), and a ``transform`` entry (``"quantile"``: each feature mapped to a normal distribution
through its quantiles; ``"yeo-johnson"``: a power transform) reshapes skewed features before GkNN
standardises them, fitted on the cells that train each GkNN (outer or inner). Without ``--settings``, the
settings of the README's "GkNN settings" table are run (about 20 minutes on 2 cores; the segmentation
cache of an experiment run is reused).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument, nested_selection  # noqa: E402

#: The settings of the README table: the experiment's (first), then one change each.
DEFAULT_SETTINGS = [
    {"name": "experiment (5 searches)"},
    {"name": "10 searches", "n_runs": 10},
    {"name": "feature cost 0.02", "feature_cost": 0.02},
    {"name": "feature cost 0.10", "feature_cost": 0.1},
    {"name": "initial sparsity 0.8", "init_sparsity": 0.8},
    {"name": "population 50, 25 generations", "population_size": 50, "n_generations": 25},
    {"name": "Gaussian width 0.5", "gaussian_width": 0.5},
    {"name": "Gaussian width 5", "gaussian_width": 5.0},
    {"name": "fitness balanced accuracy + AUC", "fitness": "balanced_accuracy+auc"},
]


#: The feature transforms a setting may name (``"transform"``).
TRANSFORMS = ("quantile", "yeo-johnson")


def _params(setting: dict) -> dict:
    from leukoseg.classify.gknn import gaussian_vote
    from leukoseg.pipelines.experiment import GKNN_DEFAULTS

    own = ("name", "gaussian_width", "transform")
    params = {**GKNN_DEFAULTS, **{k: v for k, v in setting.items() if k not in own}}
    if "gaussian_width" in setting:
        params["vote"] = functools.partial(gaussian_vote, width=float(setting["gaussian_width"]))
    if setting.get("transform") not in (None, *TRANSFORMS):
        raise ValueError(f"transform must be one of {TRANSFORMS}; got {setting['transform']!r}")
    return params


def _transformed(setting: dict, X_fit: np.ndarray, X_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`X_fit` and `X_score` after the setting's transform (if any), fitted on `X_fit` alone."""
    from sklearn.preprocessing import PowerTransformer, QuantileTransformer

    if setting.get("transform") is None:
        return X_fit, X_score
    transform = (
        QuantileTransformer(output_distribution="normal", n_quantiles=min(200, len(X_fit)), random_state=0)
        if setting["transform"] == "quantile"
        else PowerTransformer(method="yeo-johnson")
    ).fit(X_fit)  # on the training cells only, as the GkNN's own standardisation
    return transform.transform(X_fit), transform.transform(X_score)


def _fit_score(
    setting: dict, params: dict, seed: int, X_fit: np.ndarray, y: np.ndarray, groups: np.ndarray, X_score: np.ndarray
) -> tuple[np.ndarray, object]:
    """Blast probabilities of `X_score` from a GkNN fitted on `X_fit` (after the setting's transform, if any),
    and the fitted GkNN."""
    from leukoseg.classify import GeneticKNNClassifier

    X_fit, X_score = _transformed(setting, X_fit, X_score)
    model = GeneticKNNClassifier(random_state=seed, **params).fit(X_fit, y, groups=groups)
    return model.predict_proba(X_score)[:, 1], model


def _fixed_score(setting: dict, model, X_fit: np.ndarray, y: np.ndarray, X_score: np.ndarray) -> np.ndarray:
    """Blast probabilities of `X_score` from `model`'s weights and k refitted on `X_fit`, no search run (as
    the experiment scores its inner splits)."""
    from leukoseg.pipelines import experiment as exp

    X_fit, X_score = _transformed(setting, X_fit, X_score)
    return exp._fixed_gknn(model).fit(X_fit, y).predict_proba(X_score)[:, 1]


def evaluate(
    X: np.ndarray, label: np.ndarray, image: np.ndarray, image_label: np.ndarray, image_group: np.ndarray,
    fold_of_image: np.ndarray, settings: Sequence[dict], *, seed: int, repeat: int, inner_folds: int = 3,
    columns: Callable[[np.ndarray], list[int]] | None = None, log=print,
) -> list[dict]:  # fmt: skip
    """Inner AUC and out-of-fold cell AUC of each setting on one repeat's folds, and the nested selection.

    `fold_of_image` is the repeat's fold of each image; `columns(train_mask)` the feature columns a fold
    uses (all when None). Fold seeds and inner splits are the experiment's. Each result holds ``inner_auc``
    (mean over folds), ``fold_inner_auc`` (per fold), ``fixed_inner_auc`` (the mean over folds of the inner
    AUC with the search not re-run, as in the experiment), ``cell_auc`` (out of fold) and ``p_out`` (the
    out-of-fold cell scores); the nested selection is printed last.
    """
    from sklearn.metrics import roc_auc_score

    from leukoseg.pipelines import experiment as exp

    cells = exp._Cells(image=image, label=label, rows=[], X=X, patches=np.zeros((len(label), 1, 1, 3), np.uint8),
                       n_points=0, n_matched=0)  # fmt: skip
    all_params = [_params(setting) for setting in settings]  # a bad setting fails before any work
    results = []
    for setting, params in zip(settings, all_params):
        t = time.perf_counter()
        p_out = np.full(len(label), np.nan)
        inner_auc: dict[int, float] = {}
        fixed_auc: dict[int, float] = {}  # the same inner splits scored as the experiment scores them
        for k in np.unique(fold_of_image):
            test_img = fold_of_image == k
            train, test = ~test_img[image], test_img[image]
            fold = exp._Fold(cells=cells, train=train, test=test, train_img=np.flatnonzero(~test_img),
                             image_label=image_label, image_group=image_group, K=2,
                             seed=exp._seed(seed, repeat, int(k)))  # fmt: skip
            cols = columns(train) if columns is not None else list(range(X.shape[1]))
            X_train, X_test, _ = exp._impute(X[train][:, cols], X[test][:, cols])
            y, groups = fold.y_train, image_group[fold.train_cell_img]
            p_out[test], outer = _fit_score(setting, params, fold.seed, X_train, y, groups, X_test)
            p_inner, p_fixed = np.full(len(y), np.nan), np.full(len(y), np.nan)
            for j, (a, b) in enumerate(fold.inner_splits(inner_folds, exp._seed(fold.seed, 1))):
                p_inner[b], _ = _fit_score(setting, params, exp._seed(fold.seed, 1, j), X_train[a], y[a], groups[a],
                                           X_train[b])  # fmt: skip
                p_fixed[b] = _fixed_score(setting, outer, X_train[a], y[a], X_train[b])
            done = ~np.isnan(p_inner)
            if len(np.unique(y[done])) == 2:
                inner_auc[int(k)] = float(roc_auc_score(y[done], p_inner[done]))
                fixed_auc[int(k)] = float(roc_auc_score(y[done], p_fixed[done]))
        result = {
            "name": setting.get("name", json.dumps(setting)),
            "inner_auc": float(np.mean(list(inner_auc.values()))) if inner_auc else float("nan"),
            "fold_inner_auc": inner_auc,
            "fixed_inner_auc": float(np.mean(list(fixed_auc.values()))) if fixed_auc else float("nan"),
            "cell_auc": float(roc_auc_score(label, p_out)),
            "p_out": p_out,
            "seconds": time.perf_counter() - t,
        }
        log(f"{result['name']:<34} inner AUC {result['inner_auc']:.4f} (search not re-run: "
            f"{result['fixed_inner_auc']:.4f})   out-of-fold cell AUC {result['cell_auc']:.4f}   "
            f"{result['seconds']:.0f} s")  # fmt: skip
        results.append(result)
    # Nested: each fold takes the setting whose inner AUC on its own training images is best (ties: the first).
    folds = np.unique(fold_of_image)
    inner = [[r["fold_inner_auc"].get(int(k), -np.inf) for k in folds] for r in results]
    fold_of_cell = np.searchsorted(folds, fold_of_image)[image]  # the folds' positions, whatever their labels
    best, p_nested = nested_selection(inner, [r["p_out"] for r in results], fold_of_cell)
    chosen = [results[b]["name"] for b in best]
    log(f"nested selection (setting per fold {chosen}): out-of-fold cell AUC "
        f"{roc_auc_score(label, p_nested):.4f}; the first setting {results[0]['cell_auc']:.4f}")  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_dir_argument(parser)
    parser.add_argument("--cache", type=Path, help="segmentation cache (default: ~/.cache/leukoseg)")
    parser.add_argument("--repeat", type=int, default=0, help="which repeat's folds (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the experiment whose folds to use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", type=json.loads, default=DEFAULT_SETTINGS, help="JSON list of settings")
    parser.add_argument("--feature-params", type=json.loads, default=None,
                        help="CellFeatures settings as JSON, as the experiment's, e.g. '{\"context_um\": 0}'")
    args = parser.parse_args()
    if not 0 <= args.repeat < args.repeats:
        parser.error(f"--repeat must be from 0 to {args.repeats - 1}")

    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines import experiment as exp
    from leukoseg.pipelines.cache import default_cache_dir, load_or_compute
    from leukoseg.pipelines.folds import assign_folds

    records = load_dataset("all-idb1", args.data_dir).records
    exp.check_feature_params(args.feature_params)
    entries, _ = load_or_compute([r.path for r in records], args.cache or default_cache_dir(),
                                 feature_kw=args.feature_params)  # fmt: skip
    cells = exp._cell_table(records, entries, ["0", "1"], "points", 50.0)
    image_label = np.array([int(r.label) for r in records])
    image_group = np.array([r.group for r in records])
    folds = assign_folds(image_label, image_group, n_folds=5, repeats=args.repeats, seed=args.seed)
    names = entries[0].feature_names

    def columns(train: np.ndarray) -> list[int]:
        return exp._feature_columns([cells.rows[j] for j in np.flatnonzero(train)], names, args.feature_params)[0]

    print(f"ALL-IDB1: {len(records)} images, {len(cells.label)} cells; repeat {args.repeat} of {args.repeats}, "
          f"seed {args.seed}; GkNN {exp.GKNN_DEFAULTS} plus each setting"
          + (f"; features {json.dumps(args.feature_params)}" if args.feature_params else ""))  # fmt: skip
    evaluate(cells.X, cells.label, cells.image, image_label, image_group, folds[args.repeat], args.settings,
             seed=args.seed, repeat=args.repeat, columns=columns)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
