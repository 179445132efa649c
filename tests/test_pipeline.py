"""The cross-validated experiment: folds, leak guard, reproducibility, metrics, image scores, CLI."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image

from leukoseg.cli import main
from leukoseg.datasets import load_dataset
from leukoseg.errors import LeukosegError
from leukoseg.pipelines.experiment import match_blasts, run_experiment
from leukoseg.pipelines.folds import assign_folds, check_no_leak
from leukoseg.pipelines.metrics import (
    binary_metrics, choose_image_rule, choose_threshold, image_score, roc_auc, wilson_interval,
)  # fmt: skip
from leukoseg.synthetic import make_smear

ALL_MODELS = ("knn", "gknn", "svm", "baseline", "cnn", "fused")

# --- metrics and rules on hand-made numbers -------------------------------------------------------------


def test_wilson_interval_known_value():
    # 8 of 10: the textbook Wilson 95 % interval is (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert_allclose([low, high], [0.4902, 0.9433], rtol=0, atol=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + 1.96**2), abs=1e-12)  # all successes: n / (n + z^2)
    # Exactly 1 and 0 at n and 0 successes, whatever n (the formula's rounding left 1 - 2e-16 at n = 108).
    assert all(wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0 for n in range(1, 200))
    with pytest.raises(ValueError, match=r"0 <= successes <= n; got successes=3, n=2"):
        wilson_interval(3, 2)


def test_image_score_rule():
    # The score is rounded to 12 decimals (stable CSV output): 1e-12 is the rounding, nothing more.
    assert image_score([0.9, 0.1, 0.8, 0.7, 0.2]) == pytest.approx(0.8, abs=1e-12)
    assert image_score([0.9]) == pytest.approx(0.3, abs=1e-12)  # missing cells count as 0
    assert image_score([]) == 0.0  # an image without cells is scored, not dropped
    assert image_score([1.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 3, abs=1e-12)  # one false positive is damped
    assert image_score([0.6, 0.2], top_k=1) == pytest.approx(0.6, abs=1e-12)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        image_score([0.5], top_k=0)
    with pytest.raises(ValueError, match="cell_scores must not be NaN"):  # it would sort last, unseen
        image_score([float("nan"), 0.9, 0.8])


def test_choose_image_rule_learns_k_and_threshold():
    from leukoseg.pipelines.metrics import choose_image_rule

    # Separable by every k: the most robust (largest) k wins the tie.
    assert choose_image_rule([[0.9, 0.1, 0.1], [0.2, 0.1], [0.95, 0.9, 0.8]], [1, 0, 1]) == (3, 0.233333333333)
    # A single-blast ALL image beside a healthy image with three doubtful cells: only the maximum separates.
    assert choose_image_rule([[0.9], [0.6, 0.6, 0.6], [0.95, 0.9, 0.8]], [1, 0, 1]) == (1, 0.75)
    assert choose_image_rule([[0.9], [0.6, 0.6, 0.6]], [1, 0], top_ks=(3,))[0] == 3
    with pytest.raises(ValueError, match="top_ks is empty"):
        choose_image_rule([[0.5]], [1], top_ks=())


def test_choose_threshold_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="same length; got 3 scores and 2 labels"):
        choose_threshold([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="same length"):
        choose_image_rule([[0.9], [0.1]], [1, 0, 1])


def _balanced_accuracy(scores, labels, t) -> float:
    pred, labels = np.asarray(scores) >= t, np.asarray(labels)
    return 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())


def test_choose_threshold_is_never_worse_than_a_constant_call():
    # Scores ranked against the labels: every cut between them is worse than calling all (or none) positive.
    t = choose_threshold([0.2, 0.4, 0.6, 0.8], [1, 1, 0, 0])
    assert _balanced_accuracy([0.2, 0.4, 0.6, 0.8], [1, 1, 0, 0], t) == 0.5
    # Against brute force over every cut (below all, between, above all), on small random cases.
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 9))
        scores = np.round(rng.random(n), 1)  # rounded: ties between scores too
        labels = rng.permutation(np.arange(n) % 2)
        cuts = np.concatenate([[scores.min(), scores.max() + 1.0], np.unique(scores)])
        best = max(_balanced_accuracy(scores, labels, c) for c in cuts)
        assert _balanced_accuracy(scores, labels, choose_threshold(scores, labels)) == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="scores must not be NaN"):
        choose_threshold([0.2, float("nan")], [0, 1])


def test_choose_threshold_one_class_is_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="leukoseg.pipelines.metrics"):
        assert choose_threshold([0.2, 0.3], [1, 1]) == 0.5
        assert choose_threshold([], []) == 0.5
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 2
    assert "one class (1)" in caplog.records[0].getMessage()
    assert "no class" in caplog.records[1].getMessage()
    assert choose_image_rule([[0.9], [0.8]], [1, 1]) == (1, 0.5)


def test_choose_threshold_maximises_balanced_accuracy():
    assert choose_threshold([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == pytest.approx(0.25, abs=1e-12)  # 12-decimal rounding
    assert choose_threshold([0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1]) == 0.5  # ties: the candidate nearest 0.5
    # Imbalanced: 1 positive among 5; balanced accuracy, not accuracy, decides.
    t = choose_threshold([0.1, 0.2, 0.3, 0.35, 0.32], [0, 0, 0, 1, 0])
    assert 0.32 < t <= 0.35
    assert choose_threshold([0.2, 0.3], [1, 1]) == 0.5  # one class: no information


def test_binary_metrics():
    m = binary_metrics([1, 1, 0, 0], [1, 0, 0, 0], [0.9, 0.4, 0.3, 0.1])
    assert (m["accuracy"], m["sensitivity"], m["specificity"], m["auc"]) == (0.75, 0.5, 1.0, 1.0)
    assert_allclose(m["accuracy_ci"], wilson_interval(3, 4))
    assert binary_metrics([0, 0], [0, 1])["sensitivity"] is None


def test_match_blasts_is_one_to_one_within_radius():
    points = [[100, 100], [104, 100], [500, 500]]
    xs, ys = [101, 300, 103], [100, 300, 101]
    # Two points near two cells: each gets one; the far point and the far cell stay unmatched.
    assert match_blasts(points, xs, ys, radius=50).tolist() == [True, False, True]
    assert match_blasts(points[:1], xs[:1], ys[:1], radius=0.5).tolist() == [False]
    assert match_blasts(np.zeros((0, 2)), xs, ys).tolist() == [False] * 3


def test_roc_auc_by_hand():
    assert roc_auc([1, 1, 1], [0.1, 0.2, 0.3]) is None  # one class: no curve
    assert roc_auc([], []) is None
    assert roc_auc([0, 1, 0, 1], [0.3] * 4) == 0.5  # all tied: no ranking at all
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ranked right.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75, abs=1e-12)
    # A positive tied with a negative counts half a pair: (0.5 + 1 + 1 + 1) / 4.
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875, abs=1e-12)
    assert (roc_auc([1, 0], [0.9, 0.1]), roc_auc([1, 0], [0.1, 0.9])) == (1.0, 0.0)


# --- folds -----------------------------------------------------------------------------------------------


def test_folds_keep_groups_together_and_stratify():
    labels = np.array([1] * 40 + [0] * 30)
    groups = np.arange(70)
    groups[[50, 51, 52]] = 500  # three identical healthy images
    folds = assign_folds(labels, groups, n_folds=5, repeats=3, seed=7)
    assert folds.shape == (3, 70) and folds.min() == 0 and folds.max() == 4
    for r in range(3):
        assert len(set(folds[r, [50, 51, 52]])) == 1
        for g in np.unique(groups):
            assert len(set(folds[r, groups == g])) == 1
        for k in range(5):
            frac = labels[folds[r] == k].mean()
            assert abs(frac - labels.mean()) < 0.15
    assert not np.array_equal(folds[0], folds[1])  # repeats reshuffle
    assert np.array_equal(folds, assign_folds(labels, groups, n_folds=5, repeats=3, seed=7))
    with pytest.raises(ValueError, match="fewer than"):
        assign_folds([0, 0, 1, 1], [0, 1, 2, 3], n_folds=3)
    # Repeat r shuffles with seed + r, which NumPy's legacy generator takes from 0 to 2**32 - 1.
    top = 2**32 - 1
    assert assign_folds(labels, groups, n_folds=5, repeats=3, seed=top - 2).shape == (3, 70)
    # A NumPy seed adds the repeat as a Python int: no wrap-around of a narrow integer type.
    big = np.int32(2**31 - 1)
    np.testing.assert_array_equal(assign_folds(labels, groups, n_folds=5, repeats=2, seed=big),
                                  assign_folds(labels, groups, n_folds=5, repeats=2, seed=2**31 - 1))
    refused = [(-1, 1, f"from 0 to {top}; got -1"), (top + 1, 1, f"from 0 to {top}; got"),
               (top - 1, 3, f"from 0 to {top - 2} \\(with 3 repeats"), (1.5, 1, f"from 0 to {top}; got 1.5"),
               (True, 1, f"from 0 to {top}; got True")]  # fmt: skip
    for seed, repeats, message in refused:
        with pytest.raises(ValueError, match=f"seed must be a whole number {message}"):
            assign_folds(labels, groups, n_folds=5, repeats=repeats, seed=seed)


def test_check_no_leak():
    check_no_leak(["a", "a", "b"], ["c"], [0, 0, 1], [2])
    with pytest.raises(AssertionError, match="test images"):
        check_no_leak(["a", "c"], ["c"], [0, 2], [2])
    with pytest.raises(AssertionError, match="identical"):
        check_no_leak(["a"], ["b"], [3], [3])


# --- the experiment on synthetic smears ------------------------------------------------------------------


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_experiment_outputs_reproducible_and_leak_free(fast, fake_all_idb1, fake_cache, tmp_path):
    dataset = load_dataset("all-idb1", fake_all_idb1)
    a = run_experiment(dataset, tmp_path / "a", n_folds=3, repeats=2, seed=1, cache_dir=fake_cache, **fast)
    b = run_experiment(dataset, tmp_path / "b", n_folds=3, repeats=2, seed=1, cache_dir=fake_cache, **fast)
    assert b.metrics["cache"]["reused"] == len(dataset)  # the second run segments nothing
    assert b.metrics["cache"]["computed"] == 0
    for name in ("folds.csv", "cells.csv", "images.csv"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name

    folds = _read(a.out_dir / "folds.csv")
    images = _read(a.out_dir / "images.csv")
    cells = _read(a.out_dir / "cells.csv")
    assert len(folds) == len(images) == 2 * len(dataset)
    # Identical images (the copy) share a fold in every repeat.
    fold_of = {(f["image"], f["repeat"]): f["fold"] for f in folds}
    copy = sorted(f["image"] for f in folds)[-1]
    for r in ("0", "1"):
        assert fold_of[(copy, r)] == fold_of[("im/Im031_0.jpg", r)]
    # Every cell scored out of fold, in the fold of its image; blasts only in ALL images.
    label_of = {i["image"]: i["label"] for i in images}
    for c in cells:
        assert c["fold"] == fold_of[(c["image"], c["repeat"])]
        assert all(c[f"p_blast_{m}"] != "" for m in ALL_MODELS)
        p = [float(c[f"p_blast_{m}"]) for m in ("gknn", "svm", "baseline")]
        assert p[2] == pytest.approx((p[0] + p[1]) / 2, abs=2e-6)
        if c["label"] == "1":
            assert label_of[c["image"]] == "1"
    assert sum(c["label"] == "1" for c in cells) > 0
    metrics = json.loads((a.out_dir / "metrics.json").read_text())
    assert set(metrics["models"]) == set(ALL_MODELS)
    # scores.npz: the scores of cells.csv at full precision, and each fold's inner scores of its training
    # cells (NaN exactly on its test cells), from which the fold's image rule was chosen.
    from leukoseg.pipelines.metrics import choose_image_rule

    with np.load(a.out_dir / "scores.npz", allow_pickle=False) as z:
        saved = {name: z[name] for name in z.files}
    n_cells = len(saved["cell_id"])
    assert n_cells == len(cells) // 2 and saved["image"].shape == (n_cells,)
    fold_of_cell = np.array([[int(fold_of[(img, str(r))]) for img in saved["image"]] for r in range(2)])
    csv_p = {(c["image"], int(c["cell_id"]), int(c["repeat"])): float(c["p_blast_fused"]) for c in cells}
    for m in ALL_MODELS:
        assert saved[f"test_{m}"].shape == (2, n_cells, 2) and saved[f"inner_{m}"].shape == (2, 3, n_cells, 2)
        for r in range(2):
            for k in range(3):
                assert np.array_equal(np.isnan(saved[f"inner_{m}"][r, k, :, 1]), fold_of_cell[r] == k)
    for j in range(n_cells):
        for r in range(2):
            key = (str(saved["image"][j]), int(saved["cell_id"][j]), r)
            assert saved["test_fused"][r, j, 1] == pytest.approx(csv_p[key], abs=5e-7)
    for r in range(2):
        for k in range(3):
            train = sorted({img for img in label_of if fold_of[(img, str(r))] != str(k)})
            inner = saved["inner_fused"][r, k, :, 1]
            rule = choose_image_rule([inner[saved["image"] == img] for img in train],
                                     [int(label_of[img]) for img in train])  # fmt: skip
            entry = metrics["models"]["fused"]["repeats"][r]
            assert rule == (entry["image_rule_top_k"][k], entry["thresholds"][k])
    assert metrics["primary_model"] == "fused" and metrics["task"] == "binary"
    assert metrics["device"] == {"cnn": "cpu", "fusion": "cpu", "backend": metrics["device"]["backend"]}
    assert metrics["cnn"]["train_patches_per_s"] > 0
    assert metrics["cnn"]["architecture"]["filters"] == [4, 4]  # the network that ran, as its saved config says
    from leukoseg.pipelines.experiment import CNN_DEFAULTS, GKNN_DEFAULTS

    # Two epochs of a few steps: the weight average's 0.98 is lowered, so the first step keeps at most 5 %.
    low, high = metrics["cnn"]["ema_momentum_used"]
    assert 0 < low <= high < CNN_DEFAULTS["ema_momentum"]
    # The settings record what ran: the defaults updated by the keyword arguments.

    assert metrics["settings"]["cnn"] == json.loads(json.dumps({**CNN_DEFAULTS, **fast["cnn_params"]}))
    assert metrics["settings"]["gknn"] == json.loads(json.dumps({**GKNN_DEFAULTS, **fast["gknn_params"]}))
    assert metrics["settings"]["cnn_enabled"] is True
    # The segmentation settings whose defaults changed, always: a run must say which outlines it had.
    assert metrics["settings"]["segment"] == {"cytoplasm_open_um": 1.3, "stain_above_red_cells": True}
    assert len(metrics["fusion"]) == 2 * 3  # one fitted fusion per fold and repeat
    # images.csv: every model's score and decision; pred is the fused one; FAB only for images called ALL.
    for i in images:
        assert i["pred"] == i["pred_fused"]
        assert all(i[f"p_{m}"] != "" for m in ALL_MODELS)
        assert (i["fab_subtype"] in ("L1", "L2", "L3")) == (i["pred"] == "1" and int(i["n_cells"]) > 0)
    from leukoseg.classify.fab import FABSettings

    assert metrics["fab"]["settings"] == FABSettings().to_dict()  # no fab_settings given: the defaults ran
    assert "research" in metrics["fab"]["note"]
    # Subtypes resting on fewer than 10 scored blasts are flagged, per image and counted for repeat 0.
    scored0 = [i for i in images if i["fab_subtype"] and i["repeat"] == "0"]
    assert all(i["fab_low_count"] == str(int(i["fab_n_scored"]) < 10) for i in scored0)
    assert metrics["fab"]["low_count_repeat0"] == sum(i["fab_low_count"] == "True" for i in scored0)
    top_ks = metrics["models"]["fused"]["repeats"][0]["image_rule_top_k"]
    assert len(top_ks) == 3 and set(top_ks) <= {1, 2, 3}  # one learnt k per fold
    # The inner cell AUC of every model: one per fold, their mean per repeat, and mean and spread over repeats.
    for m in ALL_MODELS:
        inner = metrics["models"][m]["inner_cell_auc"]
        folds_auc = [e["inner_cell_auc_folds"] for e in metrics["models"][m]["repeats"]]
        assert [len(f) for f in folds_auc] == [3, 3] and all(0 <= v <= 1 for f in folds_auc for v in f)
        assert inner["per_repeat"] == pytest.approx([sum(f) / 3 for f in folds_auc], abs=1e-12)
        assert inner["mean"] == pytest.approx(sum(inner["per_repeat"]) / 2, abs=1e-12) and inner["std"] >= 0
    base = metrics["models"]["baseline"]["repeats"][0]["all"]
    assert base["n"] == len(dataset) and len(base["accuracy_ci"]) == 2
    assert 0 <= base["cell_auc_whole"] <= 1  # the cells not cut by the border
    assert metrics["dataset"]["fingerprint"] == dataset.fingerprint()
    assert {"numpy", "scikit-learn", "scikit-image", "opencv", "deap"} <= set(metrics["versions"])
    assert metrics["models"]["baseline"]["repeats"][0]["one_camera"]["n"] == sum(
        int(Path(i["image"]).stem[2:5]) >= 34 for i in images if i["repeat"] == "0")
    # Every image says its pixel size and where it came from; metrics.json counts the sources.
    sources = {i["image"]: (i["um_per_px"], i["scale_source"]) for i in images}
    assert len(sources) == len(dataset)  # one value per image, the same in every repeat
    assert all(float(um) > 0 and src in ("red cells", "fallback") for um, src in sources.values())
    counts = metrics["dataset"]["n_images_per_scale_source"]
    assert sum(counts.values()) == len(dataset)
    assert counts == {s: sum(src == s for _, src in sources.values()) for s in counts}


@pytest.mark.parametrize("refit", [False, True])
def test_test_cells_are_scored_by_the_cnns_that_train_ships(fast, refit):
    """Default: the mean of the cross-fitted CNNs; ``refit``: one CNN fitted on every training cell."""
    from leukoseg.pipelines import experiment as exp

    rng = np.random.default_rng(0)
    n_images, per_image = 8, 6
    image = np.repeat(np.arange(n_images), per_image)
    image_label = np.arange(n_images) % 2
    label = image_label[image] * (np.arange(len(image)) % 2)  # blasts only in ALL images
    patches = rng.integers(0, 256, (len(image), 16, 16, 3), dtype=np.uint8)
    patches[label == 1, 4:12, 4:12] = (150, 60, 190)
    cells = exp._Cells(image=image, label=label, rows=[], X=np.zeros((len(label), 0)), patches=patches,
                       n_points=0, n_matched=0)  # fmt: skip
    test_image = np.isin(np.arange(n_images), [0, 1])
    fold = exp._Fold(cells=cells, train=~test_image[image], test=test_image[image],
                     train_img=np.flatnonzero(~test_image), image_label=image_label,
                     image_group=np.arange(n_images), K=2, seed=0)  # fmt: skip
    fitted: dict = {}
    info = exp._new_run_info()
    p_test, p_inner = exp._fit_cnn(fold, 2, {**fast["cnn_params"], "refit": refit}, "cpu", exp._Timer(), info,
                                   fitted_out=fitted)  # fmt: skip
    models = fitted["cnn"]
    n_train = int(fold.train.sum())
    if refit:
        assert len(models) == 1 and len(models[0].train_indices_) == n_train
    else:
        assert len(models) == 2 and sum(len(m.train_indices_) for m in models) == n_train  # the two halves
    expected = np.mean([m.predict_proba(patches[fold.test]) for m in models], axis=0)
    np.testing.assert_allclose(p_test, expected, rtol=0, atol=1e-6)
    assert p_inner.shape == (n_train, 2) and np.all(p_inner.sum(axis=1) > 0.999)


def test_experiment_guard_catches_a_leak(fast, fake_all_idb1, fake_cache, tmp_path, monkeypatch):
    """The in-code guard fires when folds put a copy of a test image in training."""
    import leukoseg.pipelines.experiment as experiment

    def leaky(labels, groups, **kw):
        folds = np.arange(len(labels))[None, :] % kw["n_folds"]
        folds[0, -1] = (folds[0, -1] + 1) % kw["n_folds"]  # the copy goes to another fold than its original
        same = np.flatnonzero(groups == groups[-1])
        folds[0, same[0]] = (folds[0, -1] + 1) % kw["n_folds"]
        return folds

    monkeypatch.setattr(experiment, "assign_folds", leaky)
    dataset = load_dataset("all-idb1", fake_all_idb1)
    with pytest.raises(AssertionError, match="identical"):
        run_experiment(dataset, tmp_path / "run", n_folds=3, cache_dir=fake_cache, **fast)


def test_experiment_never_replaces_a_folder_it_did_not_write(fake_all_idb1, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cells.csv").write_text("precious\n")
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(mine),
               "--cache", str(tmp_path / "cache"), "--no-cnn"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"leukoseg: error: {mine}: exists and is not a leukoseg run folder (other files, "
                               "no metrics.json); not replaced (choose another --out)"]
    assert (mine / "cells.csv").read_text() == "precious\n" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("out", [".", ".."])
def test_experiment_refuses_the_current_folder_before_any_work(fake_all_idb1, tmp_path, monkeypatch, capsys, out):
    # The run is staged beside its folder and renamed into place: for '.' or '..' that rename fails, which
    # used to come after the whole experiment.
    (tmp_path / "run1").mkdir()
    monkeypatch.chdir(tmp_path / "run1")
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", out,
               "--cache", str(tmp_path / "cache"), "--no-cnn"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"leukoseg: error: {out}: names the current or parent folder; give the run a folder "
                               "of its own (e.g. --out run1)"]  # fmt: skip
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "run1").iterdir())


def test_a_failed_experiment_leaves_the_earlier_run_whole(fast, fake_all_idb1, fake_cache, tmp_path, monkeypatch):
    """The run's files replace the folder together: a failure while writing them changes nothing."""
    import leukoseg.io

    fast = {k: v for k, v in fast.items() if k not in ("cnn_params", "fusion_params")}
    dataset = load_dataset("all-idb1", fake_all_idb1)
    run = tmp_path / "run"
    run_experiment(dataset, run, n_folds=3, cnn=False, cache_dir=fake_cache, seed=1, **fast)
    (run / "report.md").write_text("the report of that run\n")  # what `classify --dataset` adds
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(leukoseg.io, "write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_experiment(dataset, run, n_folds=3, cnn=False, cache_dir=fake_cache, seed=2, **fast)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind
    monkeypatch.undo()
    result = run_experiment(dataset, run, n_folds=3, cnn=False, cache_dir=fake_cache, seed=2, **fast)
    # A finished run replaces the whole folder: no stale report of the earlier run beside the new tables.
    assert sorted(p.name for p in run.iterdir()) == ["cells.csv", "folds.csv", "images.csv", "metrics.json",
                                                     "scores.npz"]  # fmt: skip
    assert [p.name for p in result.files] == ["folds.csv", "cells.csv", "images.csv", "scores.npz", "metrics.json"]


def test_experiment_without_cnn(fast, fake_all_idb1, fake_cache, tmp_path, monkeypatch):
    import leukoseg.classify.fab as fab

    computed = []

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        computed.append(result.to_dict())
        return result

    real = fab.fab_classify
    monkeypatch.setattr(fab, "fab_classify", recording)
    dataset = load_dataset("all-idb1", fake_all_idb1)
    fast = {k: v for k, v in fast.items() if k not in ("cnn_params", "fusion_params")}
    result = run_experiment(dataset, tmp_path / "run", n_folds=3, cnn=False, cache_dir=fake_cache, **fast)
    assert set(result.metrics["models"]) == {"knn", "gknn", "svm", "baseline"}
    assert result.metrics["primary_model"] == "baseline"
    images = _read(tmp_path / "run" / "images.csv")
    assert all(i["pred"] == i["pred_baseline"] for i in images)
    assert "p_cnn" not in images[0]
    # The FAB values as computed: percentages to 0.1 point, the size CV (a fraction that L3 needs at most
    # 0.15 of) unrounded, not to one decimal (0.149 and 0.151 both read 0.1 and 0.2 then).
    scored = [i for i in images if i["fab_subtype"]]
    assert len(scored) == len(computed) > 0
    for key, tol in (("fab_size_cv", 1e-6), ("fab_pct_high_nc_ratio", 0.05)):
        written = sorted(float(i[key]) for i in scored if i[key] != "")
        assert written == pytest.approx(sorted(d[key] for d in computed if d[key] is not None), abs=tol), key


def test_inner_search_tunes_each_inner_split_and_leaves_the_test_scores_alone(fast, fake_all_idb1, fake_cache,
                                                                                tmp_path, monkeypatch):
    """inner_search=True runs the genetic search again on each inner split (on its training part only); the
    outer models, and so every test cell's probability, are the same as without it."""
    from leukoseg.classify import GeneticKNNClassifier

    fits: list[int] = []
    real_fit = GeneticKNNClassifier.fit

    def counting_fit(self, X, y, **kwargs):
        fits.append(len(X))
        return real_fit(self, X, y, **kwargs)

    monkeypatch.setattr(GeneticKNNClassifier, "fit", counting_fit)
    dataset = load_dataset("all-idb1", fake_all_idb1)
    fast = {k: v for k, v in fast.items() if k not in ("cnn_params", "fusion_params")}
    runs = {}
    for search in (False, True):
        fits.clear()
        result = run_experiment(dataset, tmp_path / f"run{search}", n_folds=3, cnn=False, cache_dir=fake_cache,
                                inner_search=search, **fast)  # fmt: skip
        assert result.metrics["settings"]["inner_search"] is search
        runs[search] = (list(fits), _read(tmp_path / f"run{search}" / "cells.csv"))
    (outer, cells_fixed), (with_inner, cells_search) = runs[False], runs[True]
    assert len(outer) == 3  # one search per fold
    assert len(with_inner) == 3 * (1 + 3)  # and one per inner split (3 inner folds)
    # Each fold's searches: the outer one on all its training cells, the inner ones on parts of them.
    for k in range(3):
        fold_fits = with_inner[4 * k: 4 * k + 4]
        assert fold_fits[0] == outer[k] and all(n < outer[k] for n in fold_fits[1:])
    assert cells_fixed == cells_search  # test cells' probabilities untouched


@pytest.mark.parametrize(
    ("cnn_params", "message"),
    [
        ('{"architecture": "resnet"}', "invalid CNN settings: architecture must be one of"),
        ('{"filters": [0]}', "invalid CNN settings: filters must be"),
        ('{"no_such": 1}', "unknown CNN settings ['no_such']"),
        ('{"refit": "yes"}', "invalid CNN settings: refit must be true or false"),
        ('{"max_shift": 50}', "invalid CNN settings: max_shift must be less than the patch's shorter side (50); got 50"),
        ('{"random_state": 3}', "the experiment's own"),
        ('{"validation_fraction": 0.15}', "invalid CNN settings: ema_momentum needs validation_fraction=0"),
        ('{"lr_schedule": "step"}', "invalid CNN settings: lr_schedule must be one of constant, cosine"),
        ('{"architecture": "densenet121", "backbone_weights": "imagenet"}', "never downloads"),
    ],
)
def test_experiment_refuses_bad_cnn_settings_before_any_work(fake_all_idb1, tmp_path, capsys, cnn_params, message):
    out = tmp_path / "run"
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(out),
               "--cache", str(tmp_path / "cache"), "--cnn-params", cnn_params])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "cache").exists()  # nothing was segmented


@pytest.mark.parametrize(
    ("segment_params", "message"),
    [
        ({"opening": 1.3}, "invalid segmentation settings: segment() has no setting 'opening'"),
        ({"cytoplasm_open_um": 0}, "invalid segmentation settings: cytoplasm_open_um must be a finite positive"),
        ({"cytoplasm_open_um": 1e6}, "invalid segmentation settings: cytoplasm_open_um must be at most 10 um"),
        ({"nucleus_excess_range": {0: 35, 1: 70}}, "nucleus_excess_range must be two finite numbers"),
        ([1.3], "invalid segmentation settings: segmentation settings must be a mapping"),
    ],
)
def test_experiment_refuses_bad_segmentation_settings_before_any_work(fake_all_idb1, tmp_path, segment_params,
                                                                       message):
    with pytest.raises(LeukosegError) as info:
        run_experiment(load_dataset("all-idb1", fake_all_idb1), tmp_path / "run", cache_dir=tmp_path / "cache",
                       segment_params=segment_params)  # fmt: skip
    assert message in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing was segmented


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--segment-params", '{"opening": 1.3}'], "invalid segmentation settings: segment() has no setting 'opening'"),
        (["--segment-params", '{"pixel_size": 0.1}'], "give the pixel size as --pixel-size, not in --segment-params"),
        (["--segment-params", '{"cytoplasm_open_um": -1}', "--pixel-size", "0.1"], "cytoplasm_open_um must be"),
    ],
)
def test_cli_experiment_refuses_bad_segmentation_settings_before_any_work(fake_all_idb1, tmp_path, capsys, argv,
                                                                           message):
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(tmp_path / "run"),
               "--cache", str(tmp_path / "cache"), *argv])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "cache").exists()
    # With image PATHs the bundle's own segmentation settings apply: the option is refused, not ignored.
    image = tmp_path / "smear.png"
    Image.fromarray(make_smear(shape=(64, 64), seed=0).image).save(image)
    assert main(["classify", str(image), "--segment-params", '{"cytoplasm_open_um": 0.7}', "--out",
                 str(tmp_path / "o")]) != 0  # fmt: skip
    assert "--segment-params applies to --dataset, not to image PATHs" in capsys.readouterr().err

@pytest.mark.parametrize(("folds", "message"), [
    ("5", "class '1' (ALL) has 1 distinct image(s) (identical copies count once), fewer than the 5 folds; add "),
    ("2", "class '1' (ALL) has 1 distinct image(s) (identical copies count once), fewer than the 2 folds; add "),
])  # fmt: skip
def test_experiment_refuses_a_class_in_too_few_images_before_any_work(fake_all_idb1, tmp_path, capsys, folds,
                                                                      message):
    import shutil

    data = tmp_path / "three"
    for sub, ext in (("im", ".jpg"), ("xyc", ".xyc")):
        (data / sub).mkdir(parents=True)
        for stem in ("Im031_0", "Im032_1", "Im033_0"):  # one ALL image, two healthy
            shutil.copy(fake_all_idb1 / sub / f"{stem}{ext}", data / sub / f"{stem}{ext}")
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(data), "--folds", folds, "--no-cnn",
               "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0] == f"leukoseg: error: {data}: {message}distinct images of that class"
    assert not (tmp_path / "cache").exists()  # nothing was segmented
    # Plain labels, never NumPy's scalar reprs; fewer folds are suggested when they would do.
    dataset = load_dataset("all-idb1", fake_all_idb1)
    with pytest.raises(LeukosegError, match=r"^.*class '0' \(normal\) has 5 distinct image\(s\) .*fewer than the "
                                            r"6 folds; use at most 5 folds \(--folds\)$") as info:  # fmt: skip
        run_experiment(dataset, tmp_path / "run6", n_folds=6, cache_dir=tmp_path / "cache")
    assert "np." not in str(info.value) and info.value.path == str(fake_all_idb1)


@pytest.mark.parametrize("argv", [
    ["classify", "--seed", "-5"], ["classify", "--seed", "4294967296"], ["train", "--seed", "-1"],
    ["classify", "--seed", "4294967295", "--repeats", "2"]])  # fmt: skip
def test_a_bad_seed_is_refused_before_any_work(fake_all_idb1, tmp_path, capsys, argv):
    # It was an internal error (train) or an error blamed on the data folder, after segmenting every image.
    command, *options = argv
    rc = main([command, "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--no-cnn",
               "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *options])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--seed: must be a whole number from 0 to 4294967295" in err[0] or err[0] == (
        "leukoseg: error: seed must be a whole number from 0 to 4294967294 (with 2 repeats: repeat r uses seed + r, "
        "at most 4294967295); got 4294967295")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_two_folds_need_four_images_of_each_class_for_the_inner_splits(fake_all_idb1, tmp_path, capsys):
    """2 ALL and 2 healthy smears, 2 folds: each fold would train on one image of a class, too few to split
    again. Refused before any work, naming the data set (it was an internal error after segmenting)."""
    import shutil

    data = tmp_path / "four"
    for sub, ext in (("im", ".jpg"), ("xyc", ".xyc")):
        (data / sub).mkdir(parents=True)
        for stem in ("Im031_0", "Im032_1", "Im033_0", "Im034_1"):
            shutil.copy(fake_all_idb1 / sub / f"{stem}{ext}", data / sub / f"{stem}{ext}")
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(data), "--folds", "2", "--no-cnn",
               "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        f"leukoseg: error: {data}: class '0' (normal) has 2 distinct image(s) (identical copies count once), fewer "
        "than the 4 that 2-fold cross-validation needs (2 in the training images of every fold, for its inner "
        "splits); add distinct images of that class"]
    assert not (tmp_path / "cache").exists()
    from leukoseg.pipelines.experiment import _images_for_inner_splits

    assert [_images_for_inner_splits(k) for k in (2, 3, 5, 10)] == [4, 3, 5, 10]


@pytest.mark.usefixtures("elsewhere")
def test_cli_cnn_params_must_be_a_json_object(capsys):
    # No --out or --cache: a regression that got past the check would write under tmp_path, not here or ~/.cache.
    assert main(["classify", "--dataset", "all-idb1", "--cnn-params", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def _write_class_folder(root: Path) -> Path:
    """Three classes of synthetic smears in subfolders (one with a space in its name)."""
    kinds = {"blasts": ("blast_L1", "blast_L2", "blast_L1"), "lymph ocytes": ("lymphocyte",) * 3,
             "neutrophils": ("neutrophil",) * 3}  # fmt: skip
    for c, (name, k) in enumerate(kinds.items()):
        (root / name).mkdir(parents=True)
        for i in range(4):
            smear = make_smear(shape=(300, 400), kinds=k, n_touching_pairs=0, seed=500 + 10 * c + i)
            Image.fromarray(smear.image).save(root / name / f"s{i}.png")
    return root


def test_experiment_on_a_folder_of_classes(fast, tmp_path):
    root = _write_class_folder(tmp_path / "three")
    dataset = load_dataset(f"folder:{root}")
    result = run_experiment(dataset, tmp_path / "run", n_folds=2, cache_dir=tmp_path / "cache", **fast)
    m = result.metrics
    assert m["task"] == "multiclass" and m["classes"] == ["blasts", "lymph ocytes", "neutrophils"]
    fused = m["models"]["fused"]["repeats"][0]["all"]
    assert set(fused["recall"]) == set(m["classes"])
    assert np.array(fused["confusion"]).shape == (3, 3) and np.sum(fused["confusion"]) == 12
    images = _read(tmp_path / "run" / "images.csv")
    assert len(images) == 12
    for i in images:
        assert i["image"].split("/")[0] == i["label"]  # the path starts with the class folder
        assert i["pred"] in m["classes"]
        assert sum(float(i[f"p_{c}"]) for c in m["classes"]) == pytest.approx(1.0, abs=1e-5)
    # The three kinds of cell are easy: the baseline gets most images right even with tiny models.
    assert m["models"]["baseline"]["summary"]["all"]["accuracy"]["mean"] >= 0.75


def test_experiment_on_single_cell_crops(fast, tmp_path, caplog):
    """ALL-IDB2 layout: img/ImXXX_Y.tif crops; one cell (the central one) per image."""
    root = tmp_path / "ALL_IDB2" / "img"
    root.mkdir(parents=True)
    for i in range(12):
        label = i % 2
        crop = make_smear(shape=(200, 200), kinds=("blast_L2",) if label else ("neutrophil",), n_touching_pairs=0,
                          seed=700 + i).image  # fmt: skip
        Image.fromarray(crop).save(root / f"Im{i + 1:03d}_{label}.tif")
    dataset = load_dataset("all-idb2", root.parent)
    with caplog.at_level(logging.WARNING, logger="leukoseg.pipelines.experiment"):
        result = run_experiment(dataset, tmp_path / "run", n_folds=2, cache_dir=tmp_path / "cache", **fast)
    # A small crop may hold too few whole red cells for the ruler (here the drawn red cells are small, and
    # most crops have enough): the run counts and names the fallback, and says how to avoid it.
    counts = result.metrics["dataset"]["n_images_per_scale_source"]
    assert sum(counts.values()) == 12 and counts.get("fallback", 0) >= 1
    message = f"{counts['fallback']} of 12 images hold too few whole red cells"
    assert any(message in r.getMessage() and "--pixel-size" in r.getMessage() for r in caplog.records)
    cells = _read(tmp_path / "run" / "cells.csv")
    per_image = {}
    for c in cells:
        per_image[c["image"]] = per_image.get(c["image"], 0) + 1
    assert max(per_image.values()) == 1  # never more than one cell per crop
    assert result.metrics["task"] == "binary" and "one_camera" not in result.metrics["models"]["fused"]["summary"]
    images = _read(tmp_path / "run" / "images.csv")
    assert {i["label"] for i in images} == {"0", "1"} and {i["pred"] for i in images} <= {"0", "1"}
    repeats = result.metrics["settings"]["repeats"]
    assert sum(i["scale_source"] == "fallback" for i in images) == counts["fallback"] * repeats


# --- command line ----------------------------------------------------------------------------------------


def test_cli_classify(fake_all_idb1, fake_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(fake_cache))
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--workers", "1", "--no-cnn"])
    assert rc == 0, capsys.readouterr().err
    for name in ("cells.csv", "images.csv", "metrics.json", "folds.csv"):
        assert (tmp_path / "leukoseg-classify" / name).is_file()
    assert not list((tmp_path / "leukoseg-classify").glob(".*.part"))


def test_cli_classify_bad_layout(tmp_path, capsys):
    (tmp_path / "nothing-here").mkdir()
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(tmp_path / "nothing-here"),
               "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("leukoseg: error:") and "ALL-IDB1" in lines[0]


# --- the real data set -----------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.slow
def test_all_idb1_experiment(all_idb1_dir, tmp_path_factory):
    """End to end on ALL-IDB1 without the CNN, cold cache (about 70 s on 2 cores)."""
    dataset = load_dataset("all-idb1", all_idb1_dir)
    out = tmp_path_factory.mktemp("run")
    result = run_experiment(dataset, out, cache_dir=tmp_path_factory.mktemp("cache"), workers=2, cnn=False)
    base = result.metrics["models"]["baseline"]["summary"]
    assert base["all"]["accuracy"]["mean"] >= 0.93
    assert abs(base["one_camera"]["accuracy"]["mean"] - base["all"]["accuracy"]["mean"]) <= 0.05
    assert result.metrics["dataset"]["n_points_matched"] >= 450


def test_cache_recomputes_a_damaged_entry_and_refuses_an_unusable_folder(tmp_path, caplog):
    from leukoseg.errors import LeukosegError
    from leukoseg.pipelines.cache import load_or_compute

    image = make_smear(shape=(200, 260), kinds=("lymphocyte",), n_touching_pairs=0, seed=7).image
    Image.fromarray(image).save(tmp_path / "s.png")
    cache = tmp_path / "cache"
    (first,), info = load_or_compute([tmp_path / "s.png"], cache)
    assert info["computed"] == 1
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip")  # e.g. a run killed by a full disk, or a copy gone wrong
    with caplog.at_level("WARNING", logger="leukoseg"):
        (again,), info = load_or_compute([tmp_path / "s.png"], cache)
    assert info["computed"] == 1 and "unreadable" in caplog.text
    np.testing.assert_array_equal(again.features, first.features)  # the same computation, bit for bit
    for entry_read in (first, again):  # computed, and read back: frozen all the way down
        for array in (entry_read.features, entry_read.patches, entry_read.measurements["x"]):
            with pytest.raises(ValueError, match="read-only"):
                array[0] = 0
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(LeukosegError, match="cache folder cannot be created: a parent of it is a file"):
        load_or_compute([tmp_path / "s.png"], blocker / "cache")


def test_cache_names_an_image_too_small_to_segment(tmp_path):
    """A data set's tiny image is one line naming the file (as on the command line), not an internal error."""
    from leukoseg.errors import LeukosegError
    from leukoseg.pipelines.cache import load_or_compute

    Image.fromarray(np.full((10, 40, 3), 200, np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(LeukosegError, match=r"image too small \(40x10 pixels\)") as info:
        load_or_compute([tmp_path / "tiny.png"], tmp_path / "cache")
    assert info.value.path == str(tmp_path / "tiny.png")


def test_cache_key_changes_with_every_setting_and_only_then(monkeypatch):
    import inspect

    import leukoseg
    import leukoseg.pipelines.cache as cache
    from leukoseg.pipelines.cache import cache_key
    from leukoseg.segmentation import segment

    h = "0" * 64
    key = cache_key(h)
    assert len(key) == 32 and set(key) <= set("0123456789abcdef")  # a hex file name
    # Same settings, same key: given explicitly or left to their defaults (segment's are filled in).
    default_excess = inspect.signature(segment).parameters["min_stain_excess"].default
    assert cache_key(h) == key == cache_key(h, segment_kw={}, feature_kw={})
    assert cache_key(h, segment_kw={"min_stain_excess": default_excess}) == key
    assert cache_key(h, feature_kw={"levels": 16}) == cache_key(h, feature_kw={"levels": 16})
    # Anything that changes what an entry holds gives a new key.
    keys = {
        key,
        cache_key("1" * 64),
        cache_key(h, segment_kw={"min_stain_excess": default_excess + 1}),
        cache_key(h, segment_kw={"purple_nuclei": False}),
        cache_key(h, feature_kw={"levels": 16}),
        cache_key(h, feature_kw={"levels": 16, "stain": False}),
    }
    monkeypatch.setattr(leukoseg, "__version__", "999.0")
    keys.add(cache_key(h))
    monkeypatch.undo()
    monkeypatch.setattr(cache, "CACHE_FORMAT", cache.CACHE_FORMAT + 1)
    keys.add(cache_key(h))
    assert len(keys) == 8


@pytest.mark.parametrize("top_k", [0, (), (1, 0), 2.0, True, "3"])
def test_experiment_and_train_refuse_a_bad_top_k_before_any_work(fake_all_idb1, tmp_path, top_k):
    from leukoseg.pipelines.train import train_bundle

    dataset = load_dataset("all-idb1", fake_all_idb1)
    for run in (lambda: run_experiment(dataset, tmp_path / "run", cache_dir=tmp_path / "cache", top_k=top_k),
                lambda: train_bundle(dataset, tmp_path / "model", cache_dir=tmp_path / "cache", top_k=top_k)):
        with pytest.raises(LeukosegError, match="top_k must be an integer >= 1 or a non-empty sequence"):
            run()
        assert not (tmp_path / "cache").exists()  # nothing was segmented


def test_top_k_takes_any_integer_type():
    from leukoseg.pipelines.experiment import check_top_ks

    assert check_top_ks(np.int64(2)) == (2,)
    assert check_top_ks(np.array([1, 3])) == (1, 3)
    assert check_top_ks([1, 2, 3]) == (1, 2, 3)


def test_a_file_that_is_not_densenet_weights_is_refused_before_any_work(fake_all_idb1, tmp_path, capsys):
    from leukoseg.pipelines.train import train_bundle

    junk = tmp_path / "notop.h5"
    junk.write_bytes(b"not an HDF5 file")
    params = {"architecture": "densenet121", "backbone_weights": str(junk)}
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(tmp_path / "run"),
               "--cache", str(tmp_path / "cache"), "--cnn-params", json.dumps(params)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"invalid CNN settings: {junk}: not DenseNet121 weights without the top" in err[0]
    with pytest.raises(LeukosegError, match="not DenseNet121 weights without the top"):
        train_bundle(load_dataset("all-idb1", fake_all_idb1), tmp_path / "model", cache_dir=tmp_path / "cache",
                     cnn_params=params)  # fmt: skip
    assert not (tmp_path / "cache").exists()  # nothing was segmented
