"""Training a model bundle (`leukoseg train`) and classifying single smears with it (`leukoseg classify IMAGE`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leukoseg.datasets import load_dataset
from leukoseg.errors import LeukosegError
from leukoseg.pipelines.predict import blast_colors, classify_image, default_model_dir, load_model
from leukoseg.pipelines.train import train_bundle
from leukoseg.synthetic import make_smear


def _train(fast, fake_all_idb1, fake_cache, out: Path, **kw) -> Path:
    dataset = load_dataset("all-idb1", fake_all_idb1)
    return train_bundle(dataset, out, cache_dir=fake_cache, seed=3, **fast, **kw)


def test_train_then_classify_a_smear(fast, fake_all_idb1, fake_cache, tmp_path):
    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model")
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["config"]["primary_model"] == "fused"
    assert set(manifest["models"]) == {"gknn", "svm", "knn", "cnn"}
    assert manifest["provenance"]["dataset"]["fingerprint"] == load_dataset("all-idb1", fake_all_idb1).fingerprint()
    assert 0 < manifest["config"]["image_rule"]["threshold"] < 1
    # The bundle's CNN is the experiment's: the two cross-fitted CNNs, averaged.
    with np.load(path / "cnn.npz", allow_pickle=False) as npz:
        assert int(npz["n_members"]) == 2

    model = load_model(path)
    image = make_smear(shape=(360, 480), kinds=("blast_L1", "blast_L2", "lymphocyte"), n_touching_pairs=0,
                       seed=4242).image  # fmt: skip
    before = image.copy()
    seg, result = classify_image(image, model)
    assert np.array_equal(image, before)
    assert result.n_cells == seg.n_cells == len(result.p_blast)
    assert set(result.p_blast_models) >= {"gknn", "svm", "knn", "cnn", "baseline", "fused"}
    assert np.all((result.p_blast >= 0) & (result.p_blast <= 1))
    assert result.decision == ("ALL" if result.p_all >= result.threshold else "normal")
    assert result.n_blasts == int((result.p_blast >= 0.5).sum())
    assert bool(result.fab) == (result.decision == "ALL")
    d = result.to_dict()
    assert {"p_all", "decision", "threshold", "n_cells", "n_blasts", "model"} <= set(d)
    json.dumps(d, allow_nan=False)


def test_train_keeps_the_feature_context_and_classify_cuts_the_same_crops(fast, fake_all_idb1, fake_cache, tmp_path,
                                                                          monkeypatch):
    """A bundle trained on crops with context (CellFeatures(context_um=...)) is given such crops at inference."""
    import leukoseg.pipelines.cache as cache

    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model", cnn=False, feature_params={"context_um": 3.0})
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["config"]["features"]["context_um"] == 3.0
    contexts = []
    real = cache._cells_for_features

    def recording(image, seg, **kwargs):
        contexts.append(kwargs.get("context_um", 0.0))
        return real(image, seg, **kwargs)

    monkeypatch.setattr(cache, "_cells_for_features", recording)
    image = make_smear(shape=(360, 480), kinds=("blast_L1", "lymphocyte"), n_touching_pairs=0, seed=4242).image
    classify_image(image, load_model(path))
    assert contexts == [3.0]
    with pytest.raises(LeukosegError, match=r"unknown feature settings \['context'\]"):  # before any work
        _train(fast, fake_all_idb1, tmp_path / "no-cache", tmp_path / "m2", cnn=False, feature_params={"context": 3})
    assert not (tmp_path / "no-cache").exists()


def test_a_bundle_segments_as_its_training_images_were(fast, fake_all_idb1, fake_cache, tmp_path, monkeypatch):
    """classify segments with the settings the bundle records (a later default must not change its input);
    a bundle from before they were recorded gets the segmentation of its release (0.7 um opening)."""
    import shutil

    import leukoseg.segmentation as segmentation
    from leukoseg.segmentation import default_segment_settings

    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model", cnn=False)
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["config"]["segment"] == default_segment_settings()
    assert manifest["config"]["segment"]["cytoplasm_open_um"] == 1.3 and "pixel_size" not in default_segment_settings()
    calls = []
    real = segmentation.segment

    def recording(image, **kwargs):
        calls.append(kwargs)
        return real(image, **kwargs)

    monkeypatch.setattr(segmentation, "segment", recording)
    image = make_smear(shape=(360, 480), kinds=("blast_L1", "lymphocyte"), n_touching_pairs=0, seed=4242).image
    classify_image(image, load_model(path), pixel_size=0.2)
    old = tmp_path / "old"
    shutil.copytree(path, old)
    del manifest["config"]["segment"]
    (old / "bundle.json").write_text(json.dumps(manifest))
    classify_image(image, load_model(old))
    assert [(c["cytoplasm_open_um"], c["stain_above_red_cells"]) for c in calls] == [(1.3, True), (0.7, False)]
    assert calls[0]["pixel_size"] == 0.2 and calls[1]["pixel_size"] is None
    assert calls[0]["nucleus_excess_range"] == (35.0, 70.0)  # JSON's list given back as the tuple it was


def test_train_checks_its_export_on_imputed_rows(fast, fake_all_idb1, fake_cache, tmp_path, monkeypatch):
    """A missing feature among the first cells (a cell without cytoplasm has no cytoplasm density) is imputed
    before the exported models are checked against scikit-learn, as the models and inference see it; the raw
    NaN made scikit-learn refuse the check at the very end of training."""
    import leukoseg.pipelines.experiment as exp

    real = exp._cell_table

    def with_a_gap(*args, **kwargs):
        cells = real(*args, **kwargs)
        cells.X[0, 0] = np.nan
        return cells

    monkeypatch.setattr(exp, "_cell_table", with_a_gap)
    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model", cnn=False)
    image = make_smear(shape=(360, 480), kinds=("blast_L1", "lymphocyte"), n_touching_pairs=0, seed=4242).image
    _, result = classify_image(image, load_model(path))
    assert np.all(np.isfinite(result.p_blast))


def test_train_refuses_to_overwrite_and_records_run_metrics(fast, fake_all_idb1, fake_cache, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(LeukosegError, match="exists"):
        _train(fast, fake_all_idb1, fake_cache, tmp_path / "model")
    # --overwrite replaces a bundle or an empty folder, never a folder of other files.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("keep me")
    for overwrite in (True, False):  # and it is not suggested where it would not help
        with pytest.raises(LeukosegError, match="not a leukoseg model bundle") as info:
            _train(fast, fake_all_idb1, fake_cache, tmp_path / "notes", overwrite=overwrite)
        assert "--overwrite" not in str(info.value)
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "keep me"
    run = tmp_path / "run"
    run.mkdir()
    fast = {**fast, "cnn": False}
    fast.pop("cnn_params"), fast.pop("fusion_params")
    settings = _run_settings(fast)
    # A run of other data is refused: its scores would be quoted as this bundle's.
    (run / "metrics.json").write_text(json.dumps({"dataset": {"fingerprint": "0" * 64}, "settings": settings,
                                                  "models": {"fused": {"summary": {"all": {}}}}}))
    with pytest.raises(LeukosegError, match="other data"):
        _train(fast, fake_all_idb1, fake_cache, tmp_path / "model", run_dir=run, overwrite=True)
    fingerprint = load_dataset("all-idb1", fake_all_idb1).fingerprint()
    (run / "metrics.json").write_text(json.dumps({"dataset": {"fingerprint": fingerprint}, "settings": settings,
                                                  "models": {"fused": {"summary": {"all": {}}}}}))
    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model", run_dir=run, overwrite=True)
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["config"]["primary_model"] == "baseline" and "cnn" not in manifest["models"]
    assert manifest["provenance"]["cross_validated_metrics"]["models"] == {"fused": {"all": {}}}
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(LeukosegError, match="metrics"):
        _train(fast, fake_all_idb1, fake_cache, tmp_path / "other", run_dir=run)


def _run_settings(fast: dict) -> dict:
    """The settings that an experiment run with `fast`'s models records in its metrics.json."""
    from leukoseg.pipelines.experiment import CNN_DEFAULTS, GKNN_DEFAULTS

    cnn = fast.get("cnn", True)
    return {"n_folds": 5, "repeats": 1, "cnn_enabled": cnn, "inner_folds": 3, "cnn_inner_folds": 2,
            "match_radius_px": 50.0, "inner_search": False, "top_ks": [1, 2, 3], "features": {"context_um": 4.0},
            "gknn": {**GKNN_DEFAULTS, **fast["gknn_params"]}, "svm": fast["svm_params"], "knn": None,
            "cnn": {**CNN_DEFAULTS, **fast["cnn_params"]} if cnn else None, "fusion": fast.get("fusion_params"),
            "segment": {"cytoplasm_open_um": 1.3, "stain_above_red_cells": True}}  # fmt: skip


def test_train_refuses_a_run_of_other_settings_before_reading_the_data(fast, fake_all_idb1, tmp_path, monkeypatch):
    # A run's figures are quoted as the bundle's: they must be of models trained the bundle's way.
    run = tmp_path / "run"
    run.mkdir()
    settings = _run_settings(fast)
    settings["cnn"] = {**settings["cnn"], "max_shift": 0}
    settings["features"] = {}  # a run made before the crop context was recorded: bare boxes
    settings["segment"] = None  # and before the segmentation settings were: 0.7 um, the glass's threshold
    (run / "metrics.json").write_text(json.dumps({"dataset": {"fingerprint": "0" * 64}, "settings": settings,
                                                  "models": {"fused": {"summary": {"all": {}}}}}))
    dataset = load_dataset("all-idb1", fake_all_idb1)
    monkeypatch.setattr(type(dataset), "fingerprint", lambda self: pytest.fail("the data set was read"))
    with pytest.raises(LeukosegError) as info:
        train_bundle(dataset, tmp_path / "m", cache_dir=tmp_path / "cache", seed=3, run_dir=run, **fast)
    assert info.value.path == str(run / "metrics.json")
    assert "this run's models were trained with other settings than this bundle's (features.context_um: 0.0 in " \
           "the run, 4.0 here; segment.cytoplasm_open_um: 0.7 in the run, 1.3 here; segment.stain_above_red_cells: " \
           "false in the run, true here; and 1 more)" in str(info.value)
    assert not (tmp_path / "m").exists() and not (tmp_path / "cache").exists()


def test_run_setting_differences_fill_in_defaults_and_compare_as_recorded():
    from leukoseg.pipelines.experiment import CNN_DEFAULTS
    from leukoseg.pipelines.train import run_setting_differences

    training = {"cnn_enabled": True, "top_ks": (1, 2, 3), "gknn": {"n_runs": 5}, "features": {},
                "cnn": {**CNN_DEFAULTS, "filters": (8, 30)}}
    # What a run records: lists for tuples, the context always, and nothing for a model it was given nothing.
    run = {"cnn_enabled": True, "top_ks": [1, 2, 3], "gknn": {"n_runs": 5}, "features": {"context_um": 4.0},
           "cnn": {**CNN_DEFAULTS, "filters": [8, 30]}, "svm": None,
           "segment": {"cytoplasm_open_um": 1.3, "stain_above_red_cells": True}}
    assert run_setting_differences(run, training) == []
    # A run that does not record the cytoplasm opening was made before it was 1.3 um: 0.7; one that does not
    # record stain_above_red_cells, before the threshold was kept above the red cells (r37's, for one).
    assert run_setting_differences({**run, "segment": {}}, training) == [
        "segment.cytoplasm_open_um: 0.7 in the run, 1.3 here",
        "segment.stain_above_red_cells: false in the run, true here"]
    assert run_setting_differences({**run, "segment": {"cytoplasm_open_um": 1.3}}, training) == [
        "segment.stain_above_red_cells: false in the run, true here"]
    # A setting left out counts as the estimator's default: an old run without max_shift had none (0).
    old = {**run, "cnn": {k: v for k, v in run["cnn"].items() if k != "max_shift"}}
    assert run_setting_differences(old, {**training, "cnn": {**training["cnn"], "max_shift": 0}}) == []
    assert run_setting_differences(old, training) == ["cnn.max_shift: 0 in the run, 3 here"]
    # Runs before the weight averaging (r40's, for one) do not record it: their CNNs kept the last step's weights.
    before = {**run, "cnn": {k: v for k, v in run["cnn"].items() if k != "ema_momentum"}}
    assert run_setting_differences(before, training) == ["cnn.ema_momentum: null in the run, 0.98 here"]
    run.update(top_ks=[3], inner_search=True, cnn_enabled=False)
    assert run_setting_differences(run, training) == [
        "cnn_enabled: false in the run, true here", "inner_search: true in the run, false here",
        "top_ks: [3] in the run, [1, 2, 3] here"]  # fmt: skip
    assert run_setting_differences({}, training) == ["the run records no settings"]


def test_train_with_refit_ships_one_cnn_fitted_on_every_cell(fast, fake_all_idb1, fake_cache, tmp_path):
    fast["cnn_params"]["refit"] = True
    path = _train(fast, fake_all_idb1, fake_cache, tmp_path / "model")
    with np.load(path / "cnn.npz", allow_pickle=False) as npz:
        assert "n_members" not in npz.files and "layers" in npz.files
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["provenance"]["settings"]["cnn"]["refit"] is True


def _subset(src: Path, dst: Path, stems) -> Path:
    """A copy of some images of a fake ALL-IDB1 (with their annotations)."""
    import shutil

    for sub, ext in (("im", ".jpg"), ("xyc", ".xyc")):
        (dst / sub).mkdir(parents=True)
        for stem in stems:
            shutil.copy(src / sub / f"{stem}{ext}", dst / sub / f"{stem}{ext}")
    return dst


def test_cli_train_refuses_a_class_in_one_image_before_any_work(fake_all_idb1, tmp_path, capsys):
    from leukoseg.cli import main

    data = _subset(fake_all_idb1, tmp_path / "three", ["Im031_0", "Im032_1", "Im033_0"])  # one ALL image
    rc = main(["train", "--dataset", "all-idb1", "--data-dir", str(data), "--out", str(tmp_path / "m"), "--no-cnn",
               "--cache", str(tmp_path / "cache"), "--workers", "1"])  # fmt: skip
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "internal error" not in line
    assert line.startswith(f"leukoseg: error: {data}: class '1' (ALL) has 1 distinct image(s)"), line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "m").exists()  # nothing was segmented


@pytest.mark.parametrize("out", [".", ".."])
def test_cli_train_refuses_the_current_folder_before_any_work(fake_all_idb1, tmp_path, monkeypatch, capsys, out):
    from leukoseg.cli import main

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    rc = main(["train", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", out, "--no-cnn",
               "--cache", str(tmp_path / "cache"), "--workers", "1"])  # fmt: skip
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert line == f"leukoseg: error: {out}: names the current or parent folder; give the bundle a folder of its own " \
                   "(e.g. --out model)"
    assert not (tmp_path / "cache").exists()  # nothing was segmented


def test_cli_train_checks_run_and_out_before_reading_the_data(fake_all_idb1, tmp_path, monkeypatch, capsys):
    import leukoseg.datasets
    from leukoseg.cli import main

    def no_reading(*args, **kw):
        raise AssertionError("the data set was read")

    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    base = ["train", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--no-cnn", "--cache",
            str(tmp_path / "cache"), "--workers", "1"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(leukoseg.datasets, "load_dataset", no_reading)
        # The same words as `leukoseg report` for a missing run, before the images are hashed (seconds).
        assert main([*base, "--out", str(tmp_path / "m"), "--run", str(tmp_path / "nonexist")]) == 2
        assert _one_line_error(capsys.readouterr().err) == f"leukoseg: error: {tmp_path / 'nonexist'}: no such run folder"
        for out in (blocker / "x", blocker / "x" / "y"):  # the bundle folder, not its parent, is named
            assert main([*base, "--out", str(out)]) == 2
            line = _one_line_error(capsys.readouterr().err)
            assert line == f"leukoseg: error: {out}: bundle folder cannot be created: {blocker} is not a folder"
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "notes.txt").write_text("not a bundle")
        assert main([*base, "--out", str(tmp_path / "m")]) == 2
        assert "exists and is not a leukoseg model bundle" in _one_line_error(capsys.readouterr().err)
        (tmp_path / "m" / "notes.txt").unlink()
        assert main([*base, "--out", str(tmp_path / "m")]) == 2  # an empty folder: replaceable, with --overwrite
        assert _one_line_error(capsys.readouterr().err).endswith("exists; pass --overwrite to replace it")
        (tmp_path / "m").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no cache, no bundle


def test_train_refuses_blast_cells_of_one_image(fast, fake_all_idb1, fake_cache, tmp_path):
    # Enough ALL images, but the annotations of all but one match no cell: the cell models cannot be tuned.
    import shutil

    data = shutil.copytree(fake_all_idb1, tmp_path / "data")
    for xyc in sorted((data / "xyc").glob("*_1.xyc"))[1:]:
        xyc.write_text("")
    with pytest.raises(LeukosegError, match=r"blast cells \(matched to annotated centroids\) found in 1 distinct"):
        train_bundle(load_dataset("all-idb1", data), tmp_path / "m", cache_dir=fake_cache, **{**fast, "cnn": False})


def test_train_refuses_run_metrics_nested_too_deeply(fast, fake_all_idb1, fake_cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(LeukosegError, match="nested too deeply") as info:
        _train(fast, fake_all_idb1, fake_cache, tmp_path / "m", run_dir=run)
    assert info.value.path == str(run / "metrics.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no metrics.json here"), ("{", "is not valid JSON"), ('{"models": {}}', 'no "models" results')],
)
def test_train_reads_run_metrics_as_the_report_does(fast, fake_all_idb1, fake_cache, tmp_path, content, message):
    # One reader (pipelines.report.load_metrics) for both commands: the same file gets the same message.
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.json").write_text(content)
    with pytest.raises(LeukosegError, match=message) as info:
        _train(fast, fake_all_idb1, fake_cache, tmp_path / "m", run_dir=run)
    assert info.value.path == str(run / "metrics.json")
    assert not (tmp_path / "m").exists()


def test_blast_colors_run_blue_to_red():
    colors = blast_colors([1, 2, 3], [0.0, 0.5, 1.0])
    assert colors[1][2] > colors[1][0] and colors[3][0] > colors[3][2] and colors[2][1] > 150


def test_default_model_is_bundled_and_loads():
    model = load_model()
    assert default_model_dir().is_dir()
    assert model.config["primary_model"] in ("fused", "baseline")
    assert model.provenance["dataset"]["name"] == "all-idb1"


def test_default_model_was_trained_with_this_release_s_settings():
    # A default changed without retraining the bundle (e.g. the CNN's training) would ship a model that the
    # README's figures and the cross-validated metrics in its provenance are not of.
    from leukoseg.pipelines.experiment import CNN_DEFAULTS, GKNN_DEFAULTS
    from leukoseg.pipelines.train import run_setting_differences

    model = load_model()
    recorded = {**model.provenance["settings"], "cnn_enabled": True,
                "features": {"context_um": model.config["features"]["context_um"]},
                "segment": model.config.get("segment", {})}  # fmt: skip
    now = {"cnn_enabled": True, "features": {}, "gknn": dict(GKNN_DEFAULTS), "cnn": dict(CNN_DEFAULTS)}
    assert run_setting_differences(recorded, now) == []
    assert model.provenance["cross_validated_metrics"]["run"]


def test_default_model_inference_imports_no_sklearn_keras_or_tensorflow(tmp_path):
    """The one-image path must start fast: NumPy, OpenCV and scikit-image only."""
    code = (
        "import sys\n"
        "from leukoseg.synthetic import make_smear\n"
        "from leukoseg.pipelines.predict import classify_image, load_model\n"
        "image = make_smear(shape=(300, 400), kinds=('blast_L1', 'neutrophil'), n_touching_pairs=0, seed=1).image\n"
        "seg, result = classify_image(image, load_model())\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'keras', 'tensorflow', 'torch'))\n"
        "print(result.n_cells, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout


# --- command line ----------------------------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("leukoseg: error:") and "Traceback" not in err
    return lines[0]


def test_cli_classify_images_with_the_default_model(tmp_path, capsys):
    from leukoseg.cli import main

    bad = tmp_path / "in" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    sample = sorted(SAMPLES.glob("*.png")) + sorted(SAMPLES.glob("*.jpg"))
    rc = main(["classify", str(sample[0]), str(bad), "--out", str(tmp_path / "out"), "--json", "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 1  # one bad file; the good one is still classified
    results = [json.loads(line) for line in captured.out.splitlines()]
    good = [r for r in results if "error" not in r]
    assert len(good) == 1 and good[0]["decision"] in ("ALL", "normal")
    assert "broken.jpg" in _one_line_error(captured.err)
    folder = Path(good[0]["output"])
    verdict = json.loads((folder / "classification.json").read_text())
    assert verdict["decision"] == good[0]["decision"] and "research" in verdict["note"].lower()
    header = (folder / "cells.csv").read_text().splitlines()[0].split(",")
    assert "p_blast" in header and "p_blast_fused" in header
    assert (folder / "overlay.jpg").is_file() and (folder / "cells.png").is_file()


def test_cli_classify_says_when_a_smear_has_no_white_cell(tmp_path, capsys):
    # Scored 0 by the image rule and so called normal; the line says that rests on no cell.
    from leukoseg.cli import main
    from leukoseg.io import write_image

    blank = tmp_path / "blank.png"
    write_image(blank, np.full((300, 300, 3), (230, 200, 210), np.uint8))
    rc = main(["classify", str(blank), str(sorted(SAMPLES.glob("*.jpg"))[0]), "--out", str(tmp_path / "out"),
               "--workers", "1"])  # fmt: skip
    lines = {line.split(":")[0]: line for line in capsys.readouterr().err.splitlines()}
    assert rc == 0
    assert "normal (p_all 0.000), 0 of 0 cells blasts; no white cells found" in lines[str(blank)]
    assert "no white cells" not in "".join(v for k, v in lines.items() if k != str(blank))


@pytest.mark.usefixtures("elsewhere")  # two calls below name no --out or --cache
def test_cli_classify_refuses_a_corrupt_model_and_mixed_modes(tmp_path, capsys):
    from leukoseg.cli import main

    # A regression past the checks writes under tmp_path, not here.
    model = tmp_path / "model"
    model.mkdir()
    (model / "bundle.json").write_text("{broken")
    sample = str(sorted(SAMPLES.glob("*.jpg"))[0])  # a readable smear: only the model can be refused
    assert main(["classify", sample, "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "bundle.json" in _one_line_error(capsys.readouterr().err)
    assert main(["classify", sample, "--dataset", "all-idb1"]) == 2
    _one_line_error(capsys.readouterr().err)
    assert main(["classify"]) == 2
    _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no output folder, no cache


def test_cli_train_then_classify_and_report(fake_all_idb1, fake_cache, tmp_path, capsys):
    from leukoseg.cli import main

    rc = main(["train", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(tmp_path / "m"),
               "--no-cnn", "--cache", str(fake_cache), "--workers", "1", "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert main(["train", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--out", str(tmp_path / "m"),
                 "--no-cnn", "--cache", str(fake_cache)]) == 2  # fmt: skip
    assert "exists" in _one_line_error(capsys.readouterr().err)
    image = next((fake_all_idb1 / "im").glob("*_1.jpg"))
    assert main(["classify", str(image), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "-q"]) == 0
    assert (tmp_path / "o" / image.stem / "classification.json").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _one_line_error(capsys.readouterr().err)


def test_cli_device_gpu_without_a_gpu_is_a_one_line_error(fake_all_idb1, tmp_path, capsys):
    from leukoseg.classify.cnn import resolve_device
    from leukoseg.cli import main

    if resolve_device("auto") == "gpu":
        pytest.skip("a GPU is visible")
    rc = main(["classify", "--dataset", "all-idb1", "--data-dir", str(fake_all_idb1), "--device", "gpu",
               "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])  # fmt: skip
    assert rc == 2
    assert "GPU" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()  # refused before any image was segmented


def _damaged_copy(tmp_path: Path, change) -> Path:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    manifest = json.loads((model / "bundle.json").read_text())
    change(manifest)
    (model / "bundle.json").write_text(json.dumps(manifest))
    return model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["config"].pop("image_rule"), "image_rule"),
        (lambda m: m["config"]["image_rule"].update(top_k=0), "image_rule"),
        (lambda m: m["config"]["image_rule"].update(threshold="abc"), "image_rule"),
        # Outside [0, 1] every smear gets the same call (all ALL, or all normal), silently.
        (lambda m: m["config"]["image_rule"].update(threshold=-1), r"threshold must be a number in \[0, 1\]"),
        (lambda m: m["config"]["image_rule"].update(threshold=5.0), r"threshold must be a number in \[0, 1\]"),
        (lambda m: m.update(fusion=None), "primary_model 'fused'"),
        (lambda m: m["config"].update(primary_model="nope"), "primary_model"),
        (lambda m: m["config"]["fab"].update(bogus=1), "fab"),
        (lambda m: m["config"]["features"].update(levels="many"), "features"),
        (lambda m: m["config"]["features"].update(texture=False), "columns"),
        (lambda m: m["config"]["features"].update(context_um=-1.0), "context_um must be a finite number"),
        (lambda m: m["config"]["features"].update(context_um=True), "context_um must be a finite number"),
        (lambda m: m["config"]["features"].update(context_um=60.0), "context_um must be at most 50 um"),
        (lambda m: m["config"]["patch"].update(size=0), "patch"),
        (lambda m: m["config"].update(blast_cell_threshold=2), "blast_cell_threshold"),
        (lambda m: m["config"].update(segment={"cytoplasm_open_um": -1.0}), "segment: cytoplasm_open_um must be"),
        (lambda m: m["config"].update(segment={"opening": 1.3}), "segment: segment.. has no setting 'opening'"),
        (lambda m: m["config"].update(segment=[1.3]), "segment must be an object"),
        # classify passes the pixel size itself: a recorded one would clash with it, image by image.
        (lambda m: m["config"].update(segment={"pixel_size": 0.1}), "segment must not hold pixel_size"),
    ],
)
def test_damaged_bundle_settings_are_one_error_at_load(tmp_path, capsys, change, message):
    """A bad setting in bundle.json is refused before any image is read, not met image by image."""
    from leukoseg.cli import main

    model = _damaged_copy(tmp_path, change)
    with pytest.raises(LeukosegError, match=message):
        load_model(model)
    sample = str(sorted(SAMPLES.glob("*.jpg"))[0])  # a readable smear: the model is refused, not the image
    assert main(["classify", sample, "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "bundle.json: invalid classification settings" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_classify_image_checks_the_segmentation_it_is_given_and_returns_read_only_results():
    from leukoseg.segmentation import segment

    model = load_model()  # the bundled default model
    image = make_smear(shape=(300, 400), kinds=("blast_L1", "lymphocyte"), n_touching_pairs=0, seed=7).image
    seg = segment(image)
    assert seg.n_cells > 0
    _, result = classify_image(image, model, seg=seg)
    assert np.array_equal(result.p_blast, classify_image(image, model)[1].p_blast)
    with pytest.raises(ValueError, match="read-only"):
        result.p_blast[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        result.p_blast_models["fused"][0] = 1.0
    with pytest.raises(TypeError):
        result.p_blast_models["fused"] = np.zeros(1)  # type: ignore[index]
    with pytest.raises(TypeError):
        result.fab["fab_subtype"] = "L1"  # type: ignore[index]
    with pytest.raises(ValueError, match=r"seg was made from an image of 400x300 pixels; this one has 400x290"):
        classify_image(image[:290], model, seg=seg)
    with pytest.raises(ValueError, match="give pixel_size to segment"):
        classify_image(image, model, seg=seg, pixel_size=0.2)
