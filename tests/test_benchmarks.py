"""The benchmark scripts whose output is quoted in README and issues, on tiny synthetic inputs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from leukoseg.pipelines.folds import assign_folds

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Import a script of benchmarks/ as a module (it is not part of the package).

    The script puts benchmarks/ on sys.path itself and imports `_common` from there: both are undone, so no
    other test can import a benchmark helper by accident.
    """
    saved_path, saved_common = sys.path[:], sys.modules.get("_common")
    sys.path.insert(0, str(BENCHMARKS))  # for its `_common` import
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        if saved_common is None:
            sys.modules.pop("_common", None)
        else:
            sys.modules["_common"] = saved_common
    return module


def _tiny_cell_table(path: Path, *, repeats: int) -> Path:
    """What ``cnn_device.py --export`` writes, for 12 images of 4 cells with 12x12 patches."""
    rng = np.random.default_rng(0)
    n_images, per_image = 12, 4
    image_label = np.arange(n_images) % 2
    image = np.repeat(np.arange(n_images), per_image)
    # Blasts (in ALL images only) are dark patches, other cells light ones.
    label = ((image_label[image] == 1) & (np.arange(len(image)) % 2 == 0)).astype(int)
    patches = rng.integers(150, 256, (len(image), 12, 12, 3)).astype(np.uint8)
    patches[label == 1] //= 3
    groups = np.arange(n_images)
    folds = assign_folds(image_label, groups, n_folds=3, repeats=repeats, seed=0)
    np.savez_compressed(path, patches=patches, label=label, image=image, image_label=image_label,
                        image_group=groups, folds=folds, run_scores=rng.random((len(image), 2)),
                        seed=np.array(0))  # fmt: skip
    return path


def test_cnn_device_variants_print_inner_auc_and_nested_selection(tmp_path, monkeypatch, capsys):
    cells = _tiny_cell_table(tmp_path / "cells.npz", repeats=2)
    tiny = {"filters": [2], "epochs": 1, "batch_size": 16}
    variants = [tiny, {**tiny, "pool_size": 4}]
    script = _load("cnn_device")
    monkeypatch.setattr(sys, "argv", ["cnn_device.py", "--cells", str(cells), "--device", "cpu", "--repeat", "1",
                                      "--variants", json.dumps(variants)])  # fmt: skip
    assert script.main() == 0
    out = capsys.readouterr().out
    assert out.count("CNN settings") == 2
    inner = re.findall(r"inner cross-fitted cell AUC, mean over folds (\d\.\d{4})", out)
    assert len(inner) == 2 and all(0 <= float(a) <= 1 for a in inner)
    chosen = re.search(r"nested selection by inner AUC \(variant per fold (\[[\d, ]+\])\)", out)
    assert chosen is not None
    assert len(json.loads(chosen.group(1))) == 3  # one choice per fold, each a variant index
    assert set(json.loads(chosen.group(1))) <= {0, 1}
    assert "fusion on cpu" in out


def test_cnn_device_refuses_a_repeat_the_export_lacks(tmp_path, monkeypatch):
    cells = _tiny_cell_table(tmp_path / "cells.npz", repeats=1)
    path_before, common_before = sys.path[:], sys.modules.get("_common")
    script = _load("cnn_device")
    assert sys.path == path_before and sys.modules.get("_common") is common_before  # the import left nothing behind
    monkeypatch.setattr(sys, "argv", ["cnn_device.py", "--cells", str(cells), "--repeat", "2"])
    with pytest.raises(SystemExit, match="holds the folds of 1 repeat"):
        script.main()


def test_cold_start_keras_path_runs_on_the_bundled_model():
    """The Keras comparison of cold_start.py rebuilds every CNN of the bundled model and predicts."""
    pytest.importorskip("keras")
    import os
    import subprocess

    script = _load("cold_start")._KERAS
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) > 0


def test_gknn_settings_prints_inner_auc_of_each_setting_and_a_nested_choice(capsys):
    """benchmarks/gknn_settings.py on a tiny feature table: one line per setting, then the nested choice."""
    rng = np.random.default_rng(0)
    n_images, per_image = 12, 8
    image_label = np.arange(n_images) % 2
    image = np.repeat(np.arange(n_images), per_image)
    label = ((image_label[image] == 1) & (np.arange(len(image)) % 2 == 0)).astype(int)
    X = rng.normal(size=(len(image), 4))
    X[:, 0] += 2.0 * label  # one informative feature, three of noise
    groups = np.arange(n_images)
    folds = assign_folds(image_label, groups, n_folds=3, repeats=1, seed=0)[0]
    script = _load("gknn_settings")
    tiny = {"population_size": 4, "n_generations": 1, "n_runs": 1, "k_max": 5}
    settings = [{"name": "a", **tiny}, {"name": "b", **tiny, "gaussian_width": 5.0}]
    results = script.evaluate(X, label, image, image_label, groups, folds, settings, seed=0, repeat=0)
    out = capsys.readouterr().out.splitlines()
    assert [r["name"] for r in results] == ["a", "b"] and len(out) == 3
    assert all(0.5 < r["inner_auc"] <= 1 and 0.5 < r["cell_auc"] <= 1 for r in results)
    assert out[2].startswith("nested selection (setting per fold [")
    for r, line in zip(results, out):  # beside each inner AUC, the experiment's way of scoring inner splits
        assert 0.5 < r["fixed_inner_auc"] <= 1
        assert f"inner AUC {r['inner_auc']:.4f} (search not re-run: {r['fixed_inner_auc']:.4f})" in line
    # Each fold takes the setting with its best inner AUC; its test cells get that setting's scores.
    from sklearn.metrics import roc_auc_score

    p = np.full(len(label), np.nan)
    for k in range(3):
        best = max(results, key=lambda r: r["fold_inner_auc"][k])
        p[folds[image] == k] = best["p_out"][folds[image] == k]
    assert f"out-of-fold cell AUC {roc_auc_score(label, p):.4f};" in out[2]
    # The width reweighs neighbours: the nearest (distance 0) weighs 1, the k-th exp(-width).
    from leukoseg.classify.gknn import gaussian_vote

    w = gaussian_vote(np.array([[0.0, 1.0, 2.0]]), width=5.0)
    np.testing.assert_allclose(w, [[1.0, np.exp(-1.25), np.exp(-5.0)]], rtol=1e-12)
    np.testing.assert_array_equal(gaussian_vote(np.array([[0.0, 1.0, 2.0]])),
                                  gaussian_vote(np.array([[0.0, 1.0, 2.0]]), width=2.0))


def test_fixed_gknn_refitted_on_the_same_cells_is_the_gknn():
    """The experiment's inner-split model (the searches' weights and k, no search) reproduces the GkNN when
    refitted on the GkNN's own training cells: only the cells it is fitted on differ in the inner splits."""
    from leukoseg.classify import GeneticKNNClassifier
    from leukoseg.pipelines.experiment import _fixed_gknn

    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int)
    for n_runs in (1, 3):  # one search: a plain pipeline; several: the mean of their votes
        gknn = GeneticKNNClassifier(population_size=6, n_generations=2, n_runs=n_runs, k_max=9, random_state=0)
        gknn.fit(X, y)
        fixed = _fixed_gknn(gknn).fit(X, y)
        np.testing.assert_allclose(fixed.predict_proba(X), gknn.predict_proba(X), rtol=0, atol=1e-6)


def test_gknn_settings_transform_reshapes_features_on_training_cells_only():
    """A setting's ``transform`` is fitted on the cells that train each GkNN; an unknown one fails before work."""
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.default_rng(1)
    n_images, per_image = 12, 8
    image_label = np.arange(n_images) % 2
    image = np.repeat(np.arange(n_images), per_image)
    label = ((image_label[image] == 1) & (np.arange(len(image)) % 2 == 0)).astype(int)
    X = np.exp(rng.normal(size=(len(image), 3)))  # skewed, as areas and GLCM contrasts are
    X[:, 0] *= 1.0 + 3.0 * label
    script = _load("gknn_settings")
    tiny = {"population_size": 4, "n_generations": 1, "n_runs": 1, "k_max": 5}
    # Out of fold: the transform learnt from the training rows, applied to the test rows.
    train, test = image < 8, image >= 8
    y, groups = label[train], image[train]
    p, model = script._fit_score({"transform": "quantile"}, tiny, 0, X[train], y, groups, X[test])
    q = QuantileTransformer(output_distribution="normal", n_quantiles=64, random_state=0).fit(X[train])
    expected, _ = script._fit_score({}, tiny, 0, q.transform(X[train]), y, groups, q.transform(X[test]))
    np.testing.assert_array_equal(p, expected)
    # The search-free refit (the experiment's inner scoring) takes the same transform of its own cells.
    refit = script._fixed_score({"transform": "quantile"}, model, X[train], y, X[test])
    np.testing.assert_allclose(refit, expected, rtol=0, atol=1e-6)
    folds = assign_folds(image_label, np.arange(n_images), n_folds=3, repeats=1, seed=0)[0]
    settings = [{"name": "q", **tiny, "transform": "quantile"}, {"name": "yj", **tiny, "transform": "yeo-johnson"}]
    results = script.evaluate(X, label, image, image_label, np.arange(n_images), folds, settings, seed=0, repeat=0,
                              log=lambda line: None)  # fmt: skip
    assert all(0.5 < r["inner_auc"] <= 1 and 0.5 < r["cell_auc"] <= 1 for r in results)
    calls = []
    with pytest.raises(ValueError, match="transform must be one of"):
        script.evaluate(X, label, image, image_label, np.arange(n_images), folds,
                        [{"name": "ok", **tiny}, {"name": "bad", "transform": "log"}], seed=0, repeat=0,
                        log=calls.append)  # fmt: skip
    assert calls == []  # refused before the first setting ran


def test_all_idb2_proxy_cuts_centred_crops_in_all_idb2_layout(fake_all_idb1, fake_cache, tmp_path):
    """benchmarks/all_idb2_proxy.py on the fake ALL-IDB1: crops centred on blasts and on healthy smears' cells."""
    from PIL import Image

    from leukoseg.datasets import load_dataset
    from leukoseg.io import read_image

    script = _load("all_idb2_proxy")
    size = 61
    rows = script.make_proxy(fake_all_idb1, tmp_path / "ALL_IDB2", n_per_class=4, size=size, seed=0, cache=fake_cache)
    labels = [r["label"] for r in rows]
    assert labels == ["1"] * 4 + ["0"] * 4  # both classes alike, blasts numbered first, as ALL-IDB2
    assert [r["crop"] for r in rows] == [f"img/Im{i + 1:03d}_{y}.tif" for i, y in enumerate(labels)]
    copy = sorted((fake_all_idb1 / "im").glob("*.jpg"))[-1].name  # the byte copy of Im031_0 is not cut twice
    assert "im/Im031_0.jpg" != f"im/{copy}" and f"im/{copy}" not in {r["source"] for r in rows}
    xyc = {}
    for r in rows:
        crop = read_image(tmp_path / "ALL_IDB2" / r["crop"])
        assert crop.shape == (size, size, 3)
        # The crop's centre pixel is the cell's pixel in its smear (a lossless TIFF of the smear's pixels).
        smear = read_image(fake_all_idb1 / r["source"])
        np.testing.assert_array_equal(crop[size // 2, size // 2], smear[r["y"], r["x"]])
        assert r["um_per_px"] == r["smear_um_per_px"]
        if r["label"] == "1":  # centred on an annotated blast
            stem = Path(r["source"]).stem
            xyc.setdefault(stem, np.loadtxt(fake_all_idb1 / "xyc" / f"{stem}.xyc", ndmin=2))
            assert np.min(np.hypot(*(xyc[stem] - [r["x"], r["y"]]).T)) <= 0.5 * np.sqrt(2)
    dataset = load_dataset("all-idb2", tmp_path / "ALL_IDB2")
    assert [rec.label for rec in dataset.records] == labels
    grouped = script._dataset_grouped_by_smear(dataset, rows)
    assert [rec.group for rec in grouped.records] == [r["group"] for r in rows]
    # Resampled to a given pixel size: the same cells, crops of the same size, the pixel size recorded.
    scaled = script.make_proxy(fake_all_idb1, tmp_path / "scaled", n_per_class=4, size=size, seed=0,
                               cache=fake_cache, um_per_px=0.2, fit_um_per_px=0.2)  # fmt: skip
    again = script.make_proxy(fake_all_idb1, tmp_path / "again", n_per_class=4, size=size, seed=0,
                              cache=fake_cache, fit_um_per_px=0.2)  # fmt: skip
    assert [(r["source"], r["x"], r["y"]) for r in scaled] == [(r["source"], r["x"], r["y"]) for r in again]
    assert all(abs(r["um_per_px"] - 0.2) < 0.2 / size * 2 for r in scaled)
    with Image.open(tmp_path / "scaled" / scaled[0]["crop"]) as im:
        assert im.size == (size, size)
    lines = script.scale_report(tmp_path / "ALL_IDB2", rows)
    assert len(lines) >= 2 and sum(int(line.split(":")[1].split(";")[0]) for line in lines[1:]) == len(rows)


def test_metrics_table_marks_figures_a_run_lacks():
    """The benchmarks' shared table: one row per model; a single-cell run has no 'clean' nor 'whole' cell AUC,
    shown as -."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _common import metrics_table
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("_common", None)
    figure = {"mean": 0.9, "std": 0.01}
    summary = {k: figure for k in ("accuracy", "sensitivity", "specificity", "auc", "cell_auc")}
    metrics = {"models": {"fused": {"summary": {"all": summary}, "repeats": [{"all": {"accuracy_ci": [0.8, 0.95]}}]}}}
    header, row = metrics_table(metrics)
    assert header.split()[:3] == ["model", "img", "acc"]
    assert row.split() == ["fused", "0.900", "0.010", "[0.800,", "0.950]", "0.900", "0.900", "0.900", "0.900", "-",
                           "-"]


def test_cell_count_reference_thresholds_the_count_on_training_folds(tmp_path):
    """Images Im030-Im037, two folds: the count separates the classes except in one ALL smear of few cells."""
    names = [f"im/Im{i:03d}_{label}.jpg" for i, label in zip(range(30, 38), (1, 1, 0, 0, 1, 1, 0, 0))]
    labels = [int(n[-5]) for n in names]
    counts = [20, 3, 2, 1, 30, 25, 4, 2]  # Im031_1 holds 3 cells: below a healthy smear's 4
    folds = [0, 1, 0, 1, 0, 1, 0, 1]
    (tmp_path / "images.csv").write_text("image,label,repeat,fold,n_cells\n" + "".join(
        f"{n},{y},0,{k},{c}\n" for n, y, k, c in zip(names, labels, folds, counts)))
    # The fused model's highest cell ranks every ALL smear first; Im036_0 has no cell (scored 0).
    top = [0.9, 0.8, 0.1, 0.2, 0.95, 0.7, None, 0.3]
    (tmp_path / "cells.csv").write_text("image,cell_id,repeat,p_blast_fused\n" + "".join(
        f"{n},1,0,{p}\n" for n, p in zip(names, top) if p is not None))
    lines = _load("experiment").cell_count_reference(tmp_path)
    # Fold 0 tests on training fold 1's counts {3, 1, 25, 2} (labels 1, 0, 1, 0): threshold 2.5, and
    # Im036_0 (4 cells) is called ALL. Fold 1 tests on fold 0's {20, 2, 30, 4}: threshold 12, and Im031_1
    # (3 cells) is called normal. 6 of 8 right.
    assert lines[0].startswith("cell count alone, all images: image accuracy 0.750 (threshold")
    assert "AUC of the count 0.938" in lines[0]  # Im031_1's 3 cells rank below Im036_0's 4: 15 of 16 pairs
    assert lines[0].endswith("fused model's highest cell probability, which ignores the count, 1.000")
    # One camera: Im034-Im037 only; Im036_0 is the one error of four.
    assert "one camera (Im034-Im108): image accuracy 0.750" in lines[1]


def test_fab_settings_compares_subtypes_and_score_moves():
    from leukoseg.classify import FABSettings

    fab_settings = _load("fab_settings")
    n = 4
    row = {"cell_id": np.arange(1, n + 1), "cell_diameter_um": np.full(n, 10.0), "nucleus_area_um2": np.full(n, 50.0),
           "nc_ratio": np.full(n, 0.7), "nucleus_solidity": np.full(n, 0.97), "nucleus_irregularity": np.full(n, 0.03),
           "nucleoli_count": np.zeros(n, int), "nucleoli_fraction": np.zeros(n),
           "cytoplasm_basophilia": np.full(n, 10.0), "nucleus_stain": np.full(n, 100.0),
           "vacuole_count": np.zeros(n, int), "touches_border": np.zeros(n, bool),
           "smudge": np.zeros(n, bool)}  # fmt: skip
    # Image b: every blast has two small nucleoli (0.5 um^2 each): "0-1 small" fails, no count limit passes.
    two_small = {**row, "nucleoli_count": np.full(n, 2), "nucleoli_fraction": np.full(n, 1.0 / 50.0)}
    p = np.array([0.9, 0.8, 0.7, 0.1])  # three blasts, one other cell
    called = [("a", row, p), ("b", two_small, p), ("c", row, np.array([]))]  # c: no cell, not scored
    lines = []
    results = fab_settings.compare(called, [{"name": "no limit", "max_small_nucleoli": 1000}], log=lines.append)
    assert fab_settings.subtypes(called, FABSettings()) == {"a": ("L1", 2), "b": ("L1", 1)}
    assert lines[0] == "default settings: {'L1': 2} (2 images called ALL)"
    assert lines[1] == "no limit: {'L1': 2}; subtypes changed 0; scores changed 1, +1 -> +2: 1"
    assert results[0]["subtypes"] == {"a": ("L1", 2), "b": ("L1", 2)} and results[0]["moves"] == {(1, 2): 1}


def test_ruler_robustness_prints_the_change_of_each_framing_and_tiling(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from leukoseg.synthetic import make_smear

    (tmp_path / "im").mkdir()
    Image.fromarray(make_smear(shape=(480, 640), um_per_px=0.2, seed=0).image).save(tmp_path / "im" / "Im001_1.jpg")
    module = _load("ruler_robustness")
    monkeypatch.setattr(sys, "argv", ["ruler_robustness.py", "--data-dir", str(tmp_path), "--images", "Im001_1",
                                      "--tiles", "2"])  # fmt: skip
    assert module.main() == 0
    out = capsys.readouterr().out
    assert re.search(r"^Im001_1 640x480: 0\.\d{4} um/px \(red cells, \d+ red cells\)$", out, re.M)
    changes = dict(re.findall(r"^  (border|box|stop|tiles 2x2) +([+-]\d+\.\d\d)%", out, re.M))
    assert list(changes) == ["border", "box", "stop", "tiles 2x2"]
    assert all(abs(float(v)) < 3.0 for v in changes.values()), out  # a synthetic smear keeps its pixel size
    assert out.strip().splitlines()[-1].startswith("Largest |change| of um_per_px: border ")


def _tiny_run(folder: Path, preds: dict[str, list[list[int]]], *, inner: bool, fold_shift: int = 0) -> Path:
    """A run folder with what compare_runs reads: 4 images, 2 repeats; `preds[model][repeat]` per image."""
    import csv

    folder.mkdir()
    labels = [1, 1, 0, 0]
    names = [f"im/Im00{i + 1}_{y}.jpg" for i, y in enumerate(labels)]
    with open(folder / "folds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "repeat", "fold"])
        w.writerows([n, r, (i + r + fold_shift) % 2] for r in range(2) for i, n in enumerate(names))
    with open(folder / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "repeat", *[f"pred_{m}" for m in preds]])
        w.writerows([n, labels[i], r, *[preds[m][r][i] for m in preds]] for r in range(2) for i, n in enumerate(names))
    models = {}
    for m, per_rep in preds.items():
        acc = [sum(p == y for p, y in zip(rep, labels)) / 4 for rep in per_rep]
        models[m] = {
            "repeats": [{"repeat": r, "all": {"cell_auc": 0.9 + r / 100}} for r in range(2)],
            "summary": {"all": {k: {"mean": sum(acc) / 2} for k in ("accuracy", "sensitivity", "specificity")}},
        }
        if inner:
            models[m]["inner_cell_auc"] = {"mean": 0.85, "std": 0.0, "per_repeat": [0.85, 0.85]}
    (folder / "metrics.json").write_text(json.dumps({"primary_model": "fused", "models": models}))
    return folder


def test_compare_runs_pairs_the_decisions_of_two_runs_on_the_same_folds(tmp_path, capsys):
    compare = _load("compare_runs")
    a = _tiny_run(tmp_path / "a", {"fused": [[1, 1, 0, 0], [1, 0, 0, 0]]}, inner=False)
    b = _tiny_run(tmp_path / "b", {"fused": [[1, 1, 0, 1], [1, 1, 0, 0]]}, inner=True)
    assert compare.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "the same folds" in out
    assert "a  images right 4, 3; cell AUC 0.9000, 0.9100; inner cell AUC -, -;" in out  # no inner AUC recorded
    assert "b  images right 3, 4; cell AUC 0.9000, 0.9100; inner cell AUC 0.8500, 0.8500;" in out
    assert "repeat 0: only a: im/Im004_0.jpg; only b: none" in out
    assert "repeat 1: only a: none; only b: im/Im002_1.jpg" in out
    # Other folds: figures side by side, no pairing.
    c = _tiny_run(tmp_path / "c", {"fused": [[1, 1, 0, 0], [1, 1, 0, 0]]}, inner=True, fold_shift=1)
    assert compare.main([str(a), str(c)]) == 0
    out = capsys.readouterr().out
    assert "different folds" in out and "only a" not in out
    assert compare.main([str(a), str(tmp_path / "missing")]) == 2
    assert "missing: not a finished run" in capsys.readouterr().err


def test_image_rules_gives_back_the_run_s_decisions_and_others(fast, fake_all_idb1, fake_cache, tmp_path, capsys):
    from leukoseg.datasets import load_dataset
    from leukoseg.pipelines.experiment import run_experiment

    rules = _load("image_rules")
    run = tmp_path / "run"
    run_experiment(load_dataset("all-idb1", fake_all_idb1), run, n_folds=3, repeats=2, cnn=False, seed=3,
                   cache_dir=fake_cache, **fast)  # fmt: skip
    assert rules.main([str(run), "--models", "baseline,svm", "--rules", "1", "3", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "candidate sets of k: 1,2,3; 1; 3" in out  # the run's own set first, each set once
    assert out.count("the run's own candidates: its decisions given back, every one") == 2
    assert out.count("top_k among ") == 6 and out.count("    wrong: ") == 6
    assert "    k chosen: 1 in 6 folds" in out and "    k chosen: 3 in 6 folds" in out  # one candidate: every fold
    # Refusals: one line on stderr, exit status 2. A model the run did not have; a run of another task;
    # a corrupt scores.npz; a run made before scores.npz was written.
    assert rules.main([str(run), "--models", "cnn"]) == 2
    assert "no scores of cnn in scores.npz" in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "task": "multiclass"}))
    assert rules.main([str(run)]) == 2
    assert "not a binary run (task 'multiclass')" in capsys.readouterr().err
    (run / "scores.npz").write_bytes(b"PK\x03\x04 cut short")
    assert rules.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "unreadable run files" in err and len(err.strip().splitlines()) == 1
    (run / "scores.npz").unlink()
    assert rules.main([str(run)]) == 2
    assert "scores.npz: not found" in capsys.readouterr().err


def test_cnn_speed_prints_each_mode_and_its_ratio_to_plain_keras(monkeypatch, capsys):
    speed = _load("cnn_speed")
    fake = {"experiment": iter([300.0, 320.0, 310.0]), "keras": iter([400.0, 400.0, 420.0]),
            "xla": iter([100.0, 120.0, 105.0])}

    def measure(mode, device, patches, epochs):
        assert (device, patches, epochs) == ("cpu", 64, 2)
        if mode == "bf16":
            return {"error": "RuntimeError: no bfloat16 here"}
        return {"backend": "tensorflow", "device": "cpu", "patches_per_s": next(fake[mode])}

    monkeypatch.setattr(speed, "measure", measure)
    speed.main(["--device", "cpu", "--patches", "64", "--epochs", "2", "--rounds", "3",
                "--modes", "experiment", "keras", "xla", "bf16"])  # fmt: skip
    out = capsys.readouterr().out
    assert "Keras backend tensorflow, device cpu" in out
    # median patches/s, then the median of the per-round ratios to keras (experiment 0.75, 0.80, 0.738;
    # xla 0.25, 0.30, 0.25)
    assert re.search(r"experiment\s+310\s+0\.75\s+300, 320, 310", out), out
    assert re.search(r"keras\s+400\s+1\.00", out), out
    assert re.search(r"xla\s+105\s+0\.25", out), out
    assert "bf16       failed: RuntimeError: no bfloat16 here" in out


def test_cnn_speed_times_the_experiment_s_training_and_plain_keras_in_fresh_processes():
    speed = _load("cnn_speed")
    for mode in ("experiment", "keras"):
        r = speed.measure(mode, "cpu", 8, 1)
        assert r.get("patches_per_s", 0) > 0 and r["device"] == "cpu", r
