"""Tests of leukoseg.classify.bundle: exporters, NumPy predictors, and the pickle-free bundle on disk.

Agreement with scikit-learn is checked to 1e-9 (absolute, on probabilities); the CNN (float32) to 1e-5.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras loads TensorFlow

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from leukoseg.classify import bundle as B
from leukoseg.datasets import file_sha256
from leukoseg.errors import LeukosegError

ATOL = 1e-9
CNN_ATOL = 1e-5
N_FEATURES = 5


def _blobs(n=90, n_features=N_FEATURES, n_classes=2, seed=0):
    """Overlapping Gaussian classes: continuous features, no exact ties."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(size=(n, n_features)) + 1.2 * y[:, None] * rng.normal(size=n_features)
    return X, y


def _tied(n_distinct=12, n=150, n_features=3, seed=0):
    """Few distinct rows repeated with conflicting labels: many exact distance and vote ties."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(n_distinct, n_features)).astype(float)
    X = base[rng.integers(n_distinct, size=n)]
    y = rng.integers(0, 2, size=n)
    queries = np.vstack([base, base[:4] + 0.5, rng.integers(-2, 3, size=(20, n_features)) * 0.5])
    return X, y, queries


def _queries(n_features=N_FEATURES, seed=1):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(size=(60, n_features)) * 2, rng.normal(size=(3, n_features)) * 100])


def _patches(y, size=16, seed=0):
    """Discs on a pink background, large and purple for class 1, small and dark for class 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((len(y), size, size, 3))
    for i, label in enumerate(y):
        radius, colour = ((6.0, (170, 90, 200)), (2.5, (60, 30, 70)))[1 - int(label)]
        out[i] = (235, 205, 215)
        out[i][(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2] = colour
    out += rng.normal(0, 6, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data():
    X, y = _blobs()
    return X, y, _patches(y)


@pytest.fixture(scope="module")
def fitted(data):
    from leukoseg.classify import GeneticKNNClassifier, SVMClassifier, make_knn

    X, y, _ = data
    return {
        "gknn": GeneticKNNClassifier(population_size=6, n_generations=2, random_state=0).fit(X, y),
        "svm": SVMClassifier(C_grid=(1.0, 10.0), gamma_grid=("scale", 0.3), random_state=0).fit(X, y),
        "knn": make_knn(n_neighbors=5).fit(X, y),
    }


@pytest.fixture(scope="module")
def cnn_model(data):
    pytest.importorskip("keras")
    from leukoseg.classify import CNNClassifier

    _, y, patches = data
    return CNNClassifier(filters=(4, 4), epochs=1, random_state=0, device="cpu").fit(patches, y)


FUSION = {"inputs": ["baseline", "cnn"], "coef": [1.5, 0.5], "intercept": -0.25, "eps": 1e-6}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, fitted, cnn_model):
    """A bundle with all four models, the fusion, feature names and medians."""
    path = tmp_path_factory.mktemp("bundles") / "model"
    B.save_bundle(
        path,
        models={**fitted, "cnn": cnn_model},
        fusion=FUSION,
        config={"positive_class": 1, "patch_size": 16},
        provenance={"dataset": "synthetic", "seed": 0},
        feature_names=[f"f{i}" for i in range(N_FEATURES)],
        feature_medians=np.arange(N_FEATURES, dtype=float) / 10,
    )
    return path


@pytest.fixture(scope="module")
def saved_features_only(tmp_path_factory, fitted):
    path = tmp_path_factory.mktemp("bundles") / "features_only"
    B.save_bundle(path, models=fitted, config={}, provenance={})
    return path


def _copy(src, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(path, edit):
    manifest = json.loads((path / "bundle.json").read_text())
    edit(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest))


def _fix_checksum(path, name):
    _rewrite_manifest(path, lambda m: m["files"].__setitem__(name, file_sha256(path / name)))


# ----------------------------------------------------------------------------------------------------------
# Exporters and NumPy predictors against scikit-learn
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("algorithm", ["brute", "auto"])
@pytest.mark.parametrize("n", [40, 300])
def test_knn_matches_sklearn_on_random_data(weights, algorithm, n):
    from leukoseg.classify import make_knn

    X, y = _blobs(n=n, seed=n)
    pipe = make_knn(n_neighbors=7, weights=weights).set_params(knn__algorithm=algorithm).fit(X, y)
    params = B.export_knn(pipe)
    for queries in (_queries(), X, X[:1]):
        assert_allclose(B.knn_predict_proba(params, queries), pipe.predict_proba(queries), rtol=0, atol=ATOL)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_sklearn_with_ties(weights, k):
    # Duplicated rows with conflicting labels: distance ties across the k-th neighbour (kept as
    # scikit-learn's heap keeps them), vote ties (even k), and queries at distance 0 (distance votes).
    from leukoseg.classify import make_knn

    X, y, queries = _tied()
    pipe = make_knn(n_neighbors=k, weights=weights).set_params(knn__algorithm="brute").fit(X, y)
    params = B.export_knn(pipe)
    proba, ambiguous = B._knn_proba(params, queries)
    assert ambiguous.any()  # the test does exercise ties at the k-th neighbour
    assert_allclose(proba, pipe.predict_proba(queries), rtol=0, atol=ATOL)
    assert_allclose(B.knn_predict_proba(params, X), pipe.predict_proba(X), rtol=0, atol=ATOL)


def test_knn_export_refuses_what_it_cannot_reproduce():
    from sklearn.neighbors import KNeighborsClassifier

    X, y = _blobs()
    with pytest.raises(NotImplementedError, match="metric"):
        B.export_knn(KNeighborsClassifier(metric="manhattan").fit(X, y))
    with pytest.raises(NotImplementedError, match="weights"):
        B.export_knn(KNeighborsClassifier(weights=lambda d: 1 / (1 + d)).fit(X, y))


@pytest.mark.parametrize("vote", ["uniform", "distance", "gaussian"])
def test_gknn_matches_sklearn(vote):
    from leukoseg.classify import GeneticKNNClassifier
    from leukoseg.classify.gknn import gaussian_vote

    X, y = _blobs(seed=3)
    weighting = gaussian_vote if vote == "gaussian" else vote
    clf = GeneticKNNClassifier(population_size=6, n_generations=2, vote=weighting, random_state=0).fit(X, y)
    params = B.export_gknn(clf)
    assert_array_equal(params["columns"], np.flatnonzero(clf.support_))
    assert int(params["n_neighbors"]) == clf.k_ and str(params["weights"]) == vote
    for queries in (_queries(), X):
        assert_allclose(B.knn_predict_proba(params, queries), clf.predict_proba(queries), rtol=0, atol=ATOL)


@pytest.mark.parametrize("vote", ["uniform", "distance", "gaussian"])
def test_gknn_matches_sklearn_with_ties(vote):
    from leukoseg.classify import GeneticKNNClassifier
    from leukoseg.classify.gknn import gaussian_vote

    X, y, queries = _tied(seed=2)
    weighting = gaussian_vote if vote == "gaussian" else vote
    clf = GeneticKNNClassifier(population_size=6, n_generations=2, vote=weighting, random_state=1).fit(X, y)
    params = B.export_gknn(clf)
    for q in (queries, X):
        assert_allclose(B.knn_predict_proba(params, q), clf.predict_proba(q), rtol=0, atol=ATOL)


def test_gknn_export_refuses_another_callable_vote():
    from leukoseg.classify import GeneticKNNClassifier

    X, y = _blobs(seed=3)
    clf = GeneticKNNClassifier(population_size=4, n_generations=1, vote=lambda d: 1 / (1 + d), random_state=0)
    with pytest.raises(NotImplementedError, match="vote"):
        B.export_gknn(clf.fit(X, y))


def test_gknn_export_catches_a_changed_predict_proba(fitted):
    # A GkNN whose scoring differs from its knn_ (e.g. kernel-weighted votes) must not be exported as if
    # it were a plain kNN: the exporter's own check refuses it.
    from leukoseg.classify import GeneticKNNClassifier

    class KernelVotes(GeneticKNNClassifier):
        def predict_proba(self, X):
            proba = super().predict_proba(X)
            return 0.9 * proba + 0.1 / proba.shape[1]

    changed = KernelVotes(population_size=4, n_generations=1, random_state=0).fit(*_blobs())
    with pytest.raises(ValueError, match="does not reproduce"):
        B.export_gknn(changed)


@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_svm_matches_sklearn(calibration, n_classes):
    from leukoseg.classify import SVMClassifier

    X, y = _blobs(n=120, n_classes=n_classes, seed=n_classes)
    clf = SVMClassifier(C_grid=(1.0, 10.0), gamma_grid=("scale", 0.3), calibration=calibration, random_state=0)
    clf.fit(X, y)
    params = B.export_svm(clf)
    assert int(params["n_folds"]) == len(clf.calibrated_.calibrated_classifiers_) == 3
    for queries in (_queries(), X):  # _queries() has rows far outside the calibration range (clipping)
        assert_allclose(B.svm_predict_proba(params, queries), clf.predict_proba(queries), rtol=0, atol=ATOL)


def test_svm_export_refuses_other_kernels():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    X, y = _blobs()
    with pytest.raises(NotImplementedError, match="kernel"):
        B.export_svm(CalibratedClassifierCV(SVC(kernel="linear"), cv=3).fit(X, y))


def test_predictors_do_not_modify_inputs(fitted):
    X = _queries()
    before = X.copy()
    B.knn_predict_proba(B.export_gknn(fitted["gknn"]), X)
    B.svm_predict_proba(B.export_svm(fitted["svm"]), X)
    assert_array_equal(X, before)


def test_predictors_take_no_rows(fitted):
    params = B.export_knn(fitted["knn"])
    assert B.knn_predict_proba(params, np.empty((0, N_FEATURES))).shape == (0, 2)
    assert B.svm_predict_proba(B.export_svm(fitted["svm"]), np.empty((0, N_FEATURES))).shape == (0, 2)


# ----------------------------------------------------------------------------------------------------------
# The bundle: round trip
# ----------------------------------------------------------------------------------------------------------


def test_manifest_layout(saved):
    manifest = json.loads((saved / "bundle.json").read_text())
    assert manifest["format"] == "leukoseg-bundle"
    assert manifest["format_version"] == B.BUNDLE_FORMAT_VERSION
    assert isinstance(manifest["leukoseg_version"], str)
    assert sorted(manifest["files"]) == ["cnn.npz", "features.npz", "gknn.npz", "knn.npz", "svm.npz"]
    assert sorted(p.name for p in saved.iterdir()) == ["bundle.json", *sorted(manifest["files"])]
    for name, digest in manifest["files"].items():
        assert file_sha256(saved / name) == digest
        with np.load(saved / name, allow_pickle=False) as npz:  # no object arrays anywhere
            assert all(npz[key].dtype.kind != "O" for key in npz.files)
    assert manifest["config"] == {"positive_class": 1, "patch_size": 16}
    assert manifest["provenance"] == {"dataset": "synthetic", "seed": 0}
    assert manifest["fusion"] == FUSION
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_round_trip_predictions(saved, data, fitted, cnn_model):
    from leukoseg.classify.cnn import export_numpy, numpy_predict_proba

    X, _, patches = data
    X, patches = X[:40], patches[:40]
    bundle = B.load_bundle(saved)
    assert sorted(bundle.models) == ["cnn", "gknn", "knn", "svm"]
    assert bundle.feature_names == tuple(f"f{i}" for i in range(N_FEATURES))
    out = bundle.predict_cells(X, patches, feature_names=bundle.feature_names)
    assert sorted(out) == ["baseline", "cnn", "fused", "gknn", "knn", "svm"]
    for name in ("gknn", "svm", "knn"):
        assert_allclose(out[name], fitted[name].predict_proba(X)[:, 1], rtol=0, atol=ATOL)
    assert_allclose(out["cnn"], numpy_predict_proba(export_numpy(cnn_model), patches)[:, 1], rtol=0, atol=1e-12)
    assert_allclose(out["cnn"], cnn_model.predict_proba(patches)[:, 1], rtol=0, atol=CNN_ATOL)
    assert_allclose(out["baseline"], (out["gknn"] + out["svm"]) / 2, rtol=0, atol=1e-15)

    def logit(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    z = -0.25 + 1.5 * logit(out["baseline"]) + 0.5 * logit(out["cnn"])
    assert_allclose(out["fused"], 1 / (1 + np.exp(-z)), rtol=1e-12, atol=1e-15)


def test_missing_features_take_the_medians_and_inputs_are_not_modified(saved, data):
    X, _, patches = data
    X, patches = X[:10].copy(), patches[:10].copy()
    X[0, 1], X[3, 4], X[5, 0] = np.nan, np.inf, -np.inf
    X_before, patches_before = X.copy(), patches.copy()
    bundle = B.load_bundle(saved)
    out = bundle.predict_cells(X, patches)
    assert_array_equal(X, X_before)
    assert_array_equal(patches, patches_before)
    imputed = X.copy()
    for i, j in ((0, 1), (3, 4), (5, 0)):
        imputed[i, j] = bundle.feature_medians[j]
    expected = bundle.predict_cells(imputed, patches)
    for name in out:
        assert_allclose(out[name], expected[name], rtol=0, atol=0)


def test_scores_that_are_not_probabilities_are_refused(saved, data, monkeypatch):
    """Damage the load checks cannot see (here: a kNN giving NaN) is an error, never a NaN read as 'normal'."""
    X, _, patches = data
    bundle = B.load_bundle(saved)
    monkeypatch.setattr(B, "knn_predict_proba", lambda arrays, X: np.full((len(X), 2), np.nan))
    with pytest.raises(LeukosegError, match=r"its 'gknn' scores are not probabilities in \[0, 1\]") as info:
        bundle.predict_cells(X[:5], patches[:5])
    assert info.value.path == str(saved)


def test_a_bundle_in_the_current_folder_is_refused_before_any_work(fitted, tmp_path, monkeypatch):
    # It is staged beside its folder, which for '.' would be inside it.
    monkeypatch.chdir(tmp_path)
    for target in (".", "sub/.."):
        with pytest.raises(ValueError, match="names the current or parent folder"):
            B.save_bundle(target, models=fitted, config={}, provenance={})
    assert not list(tmp_path.iterdir())


def test_feature_order_is_checked(saved, data):
    bundle = B.load_bundle(saved)
    X, _, patches = data
    names = list(bundle.feature_names)
    names[1], names[2] = names[2], names[1]
    with pytest.raises(ValueError, match="column 1"):
        bundle.predict_cells(X[:2], patches[:2], feature_names=names)
    with pytest.raises(ValueError, match="shape"):
        bundle.predict_cells(X[:2, :3], patches[:2])
    with pytest.raises(ValueError, match="patches"):
        bundle.predict_cells(X[:2])


def test_loaded_arrays_are_read_only(saved):
    bundle = B.load_bundle(saved)
    with pytest.raises(ValueError):
        bundle.models["gknn"]["fit_X"][0, 0] = 1.0
    with pytest.raises(TypeError):
        bundle.models["gknn"]["fit_X"] = None


def test_features_only_bundle(saved_features_only, data, fitted):
    X, _, _ = data
    out = B.load_bundle(saved_features_only).predict_cells(X[:5])
    assert sorted(out) == ["baseline", "gknn", "knn", "svm"]
    with pytest.raises(ValueError, match="medians"):
        B.load_bundle(saved_features_only).predict_cells(np.full((1, N_FEATURES), np.nan))


def test_string_positive_class(tmp_path):
    from leukoseg.classify import make_knn

    X, y = _blobs()
    labels = np.array(["normal", "blast"])[y]
    pipe = make_knn(n_neighbors=5).fit(X, labels)
    path = B.save_bundle(tmp_path / "m", models={"knn": pipe}, config={"positive_class": "blast"})
    out = B.load_bundle(path).predict_cells(X[:7])
    assert_allclose(out["knn"], pipe.predict_proba(X[:7])[:, list(pipe.classes_).index("blast")], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="positive class"):
        B.save_bundle(tmp_path / "m2", models={"knn": pipe}, config={"positive_class": 1})


def test_save_is_atomic_and_does_not_overwrite(tmp_path, fitted):
    path = B.save_bundle(tmp_path / "m", models={"knn": fitted["knn"]})
    with pytest.raises(FileExistsError):
        B.save_bundle(path, models={"knn": fitted["knn"]})
    with pytest.raises(ValueError, match="fusion"):  # fails after nothing was written
        B.save_bundle(tmp_path / "bad", models={"knn": fitted["knn"]}, fusion={**FUSION})
    with pytest.raises(TypeError, match="JSON"):
        B.save_bundle(tmp_path / "bad", models={"knn": fitted["knn"]}, provenance={"when": object()})
    B.save_bundle(path, models={"svm": fitted["svm"]}, overwrite=True)
    assert sorted(B.load_bundle(path).models) == ["svm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    # overwrite replaces a bundle or an empty folder, never a folder of other files, nor a file.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("keep me")
    (tmp_path / "notes.txt").write_text("keep me too")
    for target in (tmp_path / "docs", tmp_path / "notes.txt"):
        with pytest.raises(FileExistsError, match="not"):
            B.save_bundle(target, models={"knn": fitted["knn"]}, overwrite=True)
    assert (tmp_path / "docs" / "thesis.txt").is_file() and (tmp_path / "notes.txt").is_file()
    (tmp_path / "empty").mkdir()
    assert sorted(B.load_bundle(B.save_bundle(tmp_path / "empty", models={"knn": fitted["knn"]},
                                              overwrite=True)).models) == ["knn"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# The bundle: every corruption is a one-line LeukosegError naming the file
# ----------------------------------------------------------------------------------------------------------


def _truncate(path):
    data = (path / "svm.npz").read_bytes()
    (path / "svm.npz").write_bytes(data[: len(data) // 2])
    return "svm.npz", "checksum mismatch"


def _truncate_with_checksum(path):
    _truncate(path)
    _fix_checksum(path, "svm.npz")
    return "svm.npz", "not a readable .npz"


def _flip_byte(path):
    data = bytearray((path / "gknn.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "gknn.npz").write_bytes(bytes(data))
    return "gknn.npz", "checksum mismatch"


def _newer_version(path):
    _rewrite_manifest(path, lambda m: m.__setitem__("format_version", B.BUNDLE_FORMAT_VERSION + 1))
    return "bundle.json", "newer leukoseg"


def _bad_version(path):
    _rewrite_manifest(path, lambda m: m.__setitem__("format_version", "1"))
    return "bundle.json", "invalid format_version"


def _wrong_format(path):
    _rewrite_manifest(path, lambda m: m.__setitem__("format", "something-else"))
    return "bundle.json", "not a leukoseg model bundle"


def _bad_json(path):
    (path / "bundle.json").write_text('{"format": "leukoseg-bundle", ')
    return "bundle.json", "not valid JSON"


def _remove_file(path):
    (path / "knn.npz").unlink()
    return "knn.npz", "missing"


def _remove_manifest(path):
    (path / "bundle.json").unlink()
    return "bundle.json", "missing"


def _pickled_object_array(path):
    with np.load(path / "gknn.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["classes"] = np.array([0, 1], dtype=object)
    np.savez(path / "gknn.npz", **arrays)  # np.savez pickles object arrays
    _fix_checksum(path, "gknn.npz")
    return "gknn.npz", "pickled object array"


def _unlisted_file(path):
    _rewrite_manifest(path, lambda m: m["files"].pop("svm.npz"))
    return "bundle.json", "not in its 'files'"


def _path_traversal(path):
    _rewrite_manifest(path, lambda m: m["files"].__setitem__("../evil.npz", "0" * 64))
    return "bundle.json", "invalid file name"


def _wrong_shape(path):
    with np.load(path / "knn.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["y"] = arrays["y"][:-1]
    np.savez(path / "knn.npz", **arrays)
    _fix_checksum(path, "knn.npz")
    return "knn.npz", "'y' must hold"


def _missing_array(path):
    with np.load(path / "svm.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files if key != "fold1_dual_coef"}
    np.savez(path / "svm.npz", **arrays)
    _fix_checksum(path, "svm.npz")
    return "svm.npz", "lacks the array 'fold1_dual_coef'"


def _not_a_zip(path):
    (path / "knn.npz").write_bytes(b"PK\x03\x04 this is no zip file")
    _fix_checksum(path, "knn.npz")
    return "knn.npz", "not a readable .npz"


def _zip_of_other_files(path):
    # np.load returns the bytes of a member not named .npy, which is no array.
    with zipfile.ZipFile(path / "knn.npz", "w") as zf:
        zf.writestr("a.txt", "hello")
    _fix_checksum(path, "knn.npz")
    return "knn.npz", "member 'a.txt' is not a .npy array"


def _deeply_nested_json(path):
    depth = 100_000  # far beyond the recursion limit of the json module
    (path / "bundle.json").write_text('{"format": "leukoseg-bundle", "x": ' + "[" * depth + "]" * depth + "}")
    return "bundle.json", "nested too deeply"


def _long_format(path):
    _rewrite_manifest(path, lambda m: m.__setitem__("format", "x" * 10_000))  # quoted, but cut short
    return "bundle.json", "not a leukoseg model bundle (format 'xxx"


def _rewrite_npz(path, name, edit):
    with np.load(path / name, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    edit(arrays)
    np.savez(path / name, **arrays)
    _fix_checksum(path, name)


def _nonfinite_svm_intercept(path):
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("fold0_intercept", a["fold0_intercept"] * np.nan))
    return "svm.npz", "non-finite"


def _nonfinite_svm_calibrator(path):
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("fold1_cal0_a", np.array(np.inf)))
    return "svm.npz", "calibrator 0 holds non-finite values"


def _entry_kind_contradicts_file(path):
    _rewrite_manifest(path, lambda m: m["models"]["svm"].__setitem__("kind", "cnn"))
    return "bundle.json", "model 'svm' has kind 'cnn'; a svm model is 'svm'"


def _entry_estimator_not_a_string(path):
    _rewrite_manifest(path, lambda m: m["models"]["svm"].__setitem__("estimator", 5))
    return "bundle.json", "model 'svm' estimator must be a string; got 5"


def _entry_classes_contradict_file(path):
    _rewrite_manifest(path, lambda m: m["models"]["svm"].__setitem__("classes", ["a", "b"]))
    return "bundle.json", "model 'svm' lists classes ['a', 'b']; its file holds [0, 1]"


def _models_with_other_classes(path):
    # The file and its entry agree, but the models do not: their probability columns would be mixed up.
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("classes", np.array([0, 2])))
    _rewrite_manifest(path, lambda m: m["models"]["svm"].__setitem__("classes", [0, 2]))
    return "svm.npz", "has classes [0, 2]; the bundle's 'gknn' model has [0, 1]"


def _config_classes_contradict_models(path):
    _rewrite_manifest(path, lambda m: m["config"].__setitem__("classes", 5))
    return "bundle.json", "config classes 5 are not the models' classes ['0', '1']"


def _version_not_a_string(path):
    _rewrite_manifest(path, lambda m: m.__setitem__("leukoseg_version", 5))
    return "bundle.json", "leukoseg_version must be a string; got 5"


def _svm_negative_class_index(path):
    # Would write one class's probability into no column: every cell's blast probability silently 0.
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("fold0_class_index", np.array([-1, 0])))
    return "svm.npz", "fold 0: class_index [-1, 0] is not increasing indices of 2 classes"


def _svm_repeated_class_index(path):
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("fold0_class_index", np.array([1, 1])))
    return "svm.npz", "fold 0: class_index [1, 1] is not increasing indices of 2 classes"


def _svm_negative_gamma(path):
    # Finite, so no non-finite check catches it; the kernel would overflow into NaN scores, read as 'normal'.
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("fold0_gamma", np.array(-0.5)))
    return "svm.npz", "fold 0: gamma -0.5 is not positive"


def _svm_huge_fold_count(path):
    # Checked against the folds stored before anything loops over the declared number.
    _rewrite_npz(path, "svm.npz", lambda a: a.__setitem__("n_folds", np.array(10**12)))
    return "svm.npz", "n_folds is 1000000000000, but it holds"


def _compressed_member(path):
    # A few compressed bytes may inflate to any size in memory; save_bundle never compresses.
    with np.load(path / "knn.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    np.savez_compressed(path / "knn.npz", **arrays)
    _fix_checksum(path, "knn.npz")
    return "knn.npz", "is compressed; bundle files hold stored (np.savez) arrays only"


def _two_models_one_file(path):
    # The kNN would score with the GkNN's weights while the manifest names a plain kNN.
    _rewrite_manifest(path, lambda m: m["models"]["knn"].__setitem__("file", m["models"]["gknn"]["file"]))
    return "bundle.json", "both refer to gknn.npz"


CORRUPTIONS = [
    _svm_negative_class_index,
    _svm_repeated_class_index,
    _svm_negative_gamma,
    _svm_huge_fold_count,
    _compressed_member,
    _two_models_one_file,
    _entry_kind_contradicts_file,
    _entry_estimator_not_a_string,
    _entry_classes_contradict_file,
    _models_with_other_classes,
    _config_classes_contradict_models,
    _version_not_a_string,
    _truncate,
    _truncate_with_checksum,
    _flip_byte,
    _newer_version,
    _bad_version,
    _wrong_format,
    _bad_json,
    _remove_file,
    _remove_manifest,
    _pickled_object_array,
    _unlisted_file,
    _path_traversal,
    _wrong_shape,
    _missing_array,
    _not_a_zip,
    _zip_of_other_files,
    _deeply_nested_json,
    _long_format,
    _nonfinite_svm_intercept,
    _nonfinite_svm_calibrator,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_bundle_is_refused_naming_the_file(saved_features_only, tmp_path, corrupt):
    path = _copy(saved_features_only, tmp_path)
    name, reason = corrupt(path)
    with pytest.raises(LeukosegError) as info:
        B.load_bundle(path)
    err = info.value
    assert err.path == str(path / name)
    assert reason in err.reason
    assert "\n" not in str(err)
    assert len(err.reason) < 200


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(LeukosegError, match="no such model bundle"):
        B.load_bundle(tmp_path / "nowhere")
    (tmp_path / "model.npz").write_bytes(b"")
    with pytest.raises(LeukosegError, match="is a file, not a model bundle folder"):
        B.load_bundle(tmp_path / "model.npz")


def test_unreadable_file_is_refused_naming_it(saved_features_only, tmp_path, monkeypatch):
    # As for a file of mode 000 (which root would still read).
    path = _copy(saved_features_only, tmp_path)
    readable = B.file_sha256

    def no_permission(file):
        if file.name == "svm.npz":
            raise PermissionError(13, "Permission denied", str(file))
        return readable(file)

    monkeypatch.setattr(B, "file_sha256", no_permission)
    err = _refusal(path)
    assert err.path == str(path / "svm.npz")
    assert err.reason.startswith("cannot read ([Errno 13] Permission denied")


def _refusal(path) -> LeukosegError:
    """The one-line, short LeukosegError of loading a damaged bundle."""
    with pytest.raises(LeukosegError) as info:
        B.load_bundle(path)
    assert "\n" not in str(info.value)
    assert len(info.value.reason) < 200
    return info.value


def _last_kernel(arrays):
    return max((k for k in arrays if k.endswith("_kernel")), key=lambda k: int(k[5:].partition("_")[0]))


def _nan_weight(arrays):
    key = _last_kernel(arrays)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda a: a.__setitem__("layer0_kernel", np.zeros((3, 3, 3, 7), np.float32)), "bias of shape (4,) for 7"),
        (lambda a: a.__setitem__("layers", np.array(["bogus"] * len(a["layers"]))), "0 ('bogus'): unknown layer"),
        (lambda a: a.__setitem__("layer1_kernel", np.zeros((5, 5, 3, 4), np.float32)),
         "layer 1 ('conv2d/linear'): kernel of shape (5, 5, 3, 4) for inputs of shape (16, 16, 4)"),
        (lambda a: a.__setitem__("layers", np.char.replace(a["layers"], "relu", "swish")), "unknown activation"),
        (lambda a: a.pop("layer0_kernel"), "lacks the array 'layer0_kernel'"),
        (_nan_weight, "kernel is not all finite"),
        (lambda a: a.__setitem__("input_shape", a["input_shape"] + [2, 2, 0]), "kernel of shape"),
        (lambda a: a.__setitem__("input_shape", np.array([100_000, 100_000, 3])), "at most 1024 pixels a side"),
        (lambda a: a.__setitem__("input_shape", np.array([16, 16])), "input_shape must be 3 integers"),
        (lambda a: a.__setitem__("std", np.zeros(3, np.float32)), "'std' must be finite and positive"),
        (lambda a: a.__setitem__("tta", np.array([True, False])), "'tta' must be one boolean"),
        (lambda a: a.__setitem__("format_version", np.array(2)), "format version 2"),
        (lambda a: a.__setitem__("classes", np.arange(3)), "not one value per class (3,)"),
        # Finite weights whose output is not: the blank patch run catches what shapes alone cannot.
        (lambda a: a.__setitem__("std", np.full(3, 1e-38, np.float32)), "blank patch"),
    ],
)
def test_damaged_cnn_is_refused_at_load(saved, tmp_path, edit, reason):
    path = _copy(saved, tmp_path)
    _rewrite_npz(path, "cnn.npz", edit)
    err = _refusal(path)
    assert err.path == str(path / "cnn.npz")
    assert reason in err.reason


@pytest.fixture(scope="module")
def saved_ensemble(tmp_path_factory, data, cnn_model):
    """A CNN-only bundle whose CNN is two networks averaged (as train ships its cross-fitted CNNs)."""
    from leukoseg.classify import CNNClassifier

    _, y, patches = data
    other = CNNClassifier(filters=(4, 4), epochs=1, random_state=1, device="cpu").fit(patches[:60], y[:60])
    path = tmp_path_factory.mktemp("bundles") / "ensemble"
    B.save_bundle(path, models={"cnn": [cnn_model, other]}, check_patches=patches[:8])
    return path, (cnn_model, other)


def test_cnn_ensemble_scores_cells_with_the_mean_of_its_networks(saved_ensemble, data):
    path, members = saved_ensemble
    patches = data[2][:30]
    with np.load(path / "cnn.npz", allow_pickle=False) as npz:
        assert int(npz["n_members"]) == 2 and "member1_layer0_kernel" in npz.files
    out = B.load_bundle(path).predict_cells(patches=patches)
    expected = np.mean([m.predict_proba(patches)[:, 1] for m in members], axis=0)
    assert_allclose(out["cnn"], expected, rtol=0, atol=CNN_ATOL)
    assert np.abs(members[0].predict_proba(patches)[:, 1] - expected).max() > 10 * CNN_ATOL  # two networks differ


def _drop_member(arrays):
    for key in [k for k in arrays if k.startswith("member1_")]:
        del arrays[key]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_drop_member, "n_members is 2, but it holds 1 CNN(s)"),
        (lambda a: a.__setitem__("n_members", np.array(0)), "is an ensemble of no CNN"),
        (lambda a: a.__setitem__("member1_classes", np.array([0, 2])), "CNN 1 of the ensemble: takes other patches or"),
        (lambda a: a.__setitem__("member0_std", np.zeros(3, np.float32)), "CNN 0 of the ensemble: 'std' must be finite"),
    ],
)
def test_damaged_cnn_ensemble_is_refused_at_load(saved_ensemble, tmp_path, edit, reason):
    path = _copy(saved_ensemble[0], tmp_path)
    _rewrite_npz(path, "cnn.npz", edit)
    err = _refusal(path)
    assert err.path == str(path / "cnn.npz")
    assert reason in err.reason


def test_save_bundle_refuses_an_ensemble_of_unlike_networks(tmp_path, data, cnn_model):
    from leukoseg.classify.cnn import export_numpy

    other = dict(export_numpy(cnn_model))
    other["classes"] = np.array([0, 2])
    with pytest.raises(ValueError, match="CNN 1 of the ensemble takes other patches or classes than CNN 0"):
        B.save_bundle(tmp_path / "m", models={"cnn": [cnn_model, other]})
    with pytest.raises(ValueError, match="the CNN ensemble given is empty"):
        B.save_bundle(tmp_path / "m", models={"cnn": []})
    assert not (tmp_path / "m").exists()


def test_bundle_names_the_estimator_of_each_model(saved, saved_ensemble):
    manifest = json.loads((saved / "bundle.json").read_text())
    assert {n: e["estimator"] for n, e in manifest["models"].items()} == {
        "gknn": "GeneticKNNClassifier", "svm": "SVMClassifier", "knn": "Pipeline", "cnn": "CNNClassifier"}
    ensemble = json.loads((saved_ensemble[0] / "bundle.json").read_text())["models"]["cnn"]
    assert ensemble["estimator"] == "ensemble of 2 CNNClassifier"


MEASUREMENTS = ["nucleus_area_um2", "cell_area_um2", "nc_ratio", "nucleus_solidity", "nucleus_circularity"]
SETTINGS = {
    "image_rule": {"top_k": 3, "threshold": 0.5},
    "patch": {"size": 16, "um_per_px": 0.5},
    "features": {"measurement_names": MEASUREMENTS, "texture": False, "stain": False, "lbp_radii_um": [],
                 "distances_um": [1.0], "levels": 32, "angles_deg": [0, 90]},
}  # fmt: skip


def _with_settings(path, edit=None):
    def change(manifest):
        manifest["config"].update(json.loads(json.dumps(SETTINGS)))
        if edit is not None:
            edit(manifest["config"])

    _rewrite_manifest(path, change)
    return path


def test_valid_classification_settings_load(saved_features_only, tmp_path):
    bundle = B.load_bundle(_with_settings(_copy(saved_features_only, tmp_path)))
    assert bundle.config["patch"] == SETTINGS["patch"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: c["image_rule"].update(top_k=10**30), "top_k must be an integer from 1 to 100; got 1000"),
        (lambda c: c["image_rule"].update(top_k=2.0), "top_k must be an integer"),
        (lambda c: c["image_rule"].update(top_k=True), "top_k must be an integer"),
        (lambda c: c.update(image_rule=[3]), "top_k must be an integer"),
        (lambda c: c["patch"].update(size=100_000), "patch size must be an integer from 8 to 1024"),
        (lambda c: c["patch"].update(size="16"), "patch size must be an integer"),
        (lambda c: c["patch"].update(um_per_px=1e-9), "patch um_per_px must be a number from 0.01 to 100"),
        (lambda c: c["patch"].update(um_per_px=float("nan")), "patch um_per_px"),
        (lambda c: c["patch"].update(um_per_px="0.5"), "patch um_per_px"),
        (lambda c: c["features"]["measurement_names"].__setitem__(0, "bogus"), "unknown measurement 'bogus'"),
        (lambda c: c["features"]["measurement_names"].pop(), "features give 4 columns; the models take 5"),
        (lambda c: c["features"].update(lbp_radii_um=[1000.0]), "at most 50 um; got 1000"),
        (lambda c: c["features"].update(texture=True, distances_um=[1.0, 500.0]), "at most 50 um; got 500"),
        (lambda c: c["features"].update(texture=True, levels="32"), "levels must be an integer"),
        (lambda c: c["features"].update(stain="yes"), "texture and stain must be true or false"),
        (lambda c: c["features"].pop("angles_deg"), "lacks angles_deg"),
        (lambda c: c.update(features=[]), "features: must be an object"),
        # Values a segmentation can take that describe no smear: all cells dropped, or the memory exhausted.
        (lambda c: c.update(segment={"split_distance_um": 1e9}), "split_distance_um must be at most 30 um"),
        (lambda c: c.update(segment={"working_um_per_px": 100}), "working_um_per_px must be at most 2 um/px"),
        (lambda c: c.update(segment={"min_nucleus_area_um2": 1e9}), "min_nucleus_area_um2 must be at most 1000 um^2"),
        (lambda c: c.update(segment={"red_cell_diameter_um": 1e6}), "red_cell_diameter_um must be at most 30 um"),
        (lambda c: c.update(segment={"nucleus_excess_range": [9000, 9999]}), "nucleus_excess_range must end at most"),
    ],
)
def test_unusable_classification_settings_are_refused_at_load(saved_features_only, tmp_path, edit, reason):
    path = _with_settings(_copy(saved_features_only, tmp_path), edit)
    err = _refusal(path)
    assert err.path == str(path / "bundle.json")
    assert err.reason.startswith("invalid classification settings: ")
    assert reason in err.reason


@pytest.mark.parametrize(
    ("fusion", "reason"),
    [
        ({"intercept": 1e300}, "fusion coef and intercept must be at most 1000 in size"),  # every smear ALL
        ({"coef": [1e308, -1e308]}, "fusion coef and intercept must be at most 1000 in size"),  # overflows
        ({"coef": [float("nan"), 0.5]}, "fusion coef, intercept and eps must be finite numbers"),
    ],
)
def test_damaged_fusion_weights_are_refused_at_load(saved, tmp_path, fusion, reason):
    path = _copy(saved, tmp_path)
    _rewrite_manifest(path, lambda m: m["fusion"].update(fusion))
    err = _refusal(path)
    assert err.path == str(path / "bundle.json")
    assert reason in err.reason


def test_cnn_input_must_be_the_configured_patch(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _rewrite_manifest(path, lambda m: m["config"].update(patch={"size": 32, "um_per_px": 0.5}))
    err = _refusal(path)
    assert err.path == str(path / "cnn.npz")
    assert "takes patches of shape (16, 16, 3); bundle.json's patch size 32 gives (32, 32, 3)" in err.reason


@pytest.mark.parametrize("n_features", ["abc", 4, True, None])
def test_features_entry_must_count_the_names(saved, tmp_path, n_features):
    path = _copy(saved, tmp_path)
    _rewrite_manifest(path, lambda m: m["features"].update(n_features=n_features))
    err = _refusal(path)
    assert err.path == str(path / "bundle.json")
    assert f"'features' n_features {n_features!r} is not the {N_FEATURES} names of features.npz" in err.reason


def test_settings_must_make_the_bundles_feature_columns(tmp_path):
    # The shipped bundle, with two measurements swapped in its settings: known names, wrong order.
    import shutil

    from leukoseg.pipelines.predict import default_model_dir

    path = tmp_path / "model"
    shutil.copytree(default_model_dir(), path)
    names = json.loads((path / "bundle.json").read_text())["config"]["features"]["measurement_names"]

    def swap(manifest):
        measured = manifest["config"]["features"]["measurement_names"]
        measured[0], measured[1] = measured[1], measured[0]

    _rewrite_manifest(path, swap)
    err = _refusal(path)
    assert err.path == str(path / "bundle.json")
    assert f"features give column 0 {names[1]!r}; features.npz names {names[0]!r}" in err.reason


def test_pickle_is_never_loaded(saved_features_only, tmp_path, monkeypatch):
    # An object array is refused before anything is unpickled.
    import pickle

    path = _copy(saved_features_only, tmp_path)
    _pickled_object_array(path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(LeukosegError, match="pickled object array"):
        B.load_bundle(path)


# ----------------------------------------------------------------------------------------------------------
# Inference imports NumPy only
# ----------------------------------------------------------------------------------------------------------

_COLD_START = textwrap.dedent(
    """
    import sys, time
    t = time.perf_counter()
    import numpy as np
    from leukoseg.classify.bundle import load_bundle
    bundle = load_bundle(sys.argv[1])
    X = np.load(sys.argv[2])
    patches = np.load(sys.argv[3]) if len(sys.argv) > 3 else None
    out = bundle.predict_cells(X, patches)
    heavy = sorted(m for m in ("sklearn", "keras", "tensorflow") if m in sys.modules)
    print(f"{sorted(out)} {heavy} {time.perf_counter() - t:.2f}s")
    assert not heavy, heavy
    """
)


def _cold_start(bundle_path, tmp_path, data, with_patches):
    X, _, patches = data
    np.save(tmp_path / "X.npy", X[:20])
    np.save(tmp_path / "P.npy", patches[:20])
    args = [str(bundle_path), str(tmp_path / "X.npy")] + ([str(tmp_path / "P.npy")] if with_patches else [])
    return subprocess.run(
        [sys.executable, "-c", _COLD_START, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_inference_imports_no_sklearn_keras_or_tensorflow(saved_features_only, tmp_path, data):
    result = _cold_start(saved_features_only, tmp_path, data, with_patches=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "['baseline', 'gknn', 'knn', 'svm'] []" in result.stdout


def test_cnn_inference_imports_no_sklearn_keras_or_tensorflow(saved, tmp_path, data):
    result = _cold_start(saved, tmp_path, data, with_patches=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bundle_files_hold_no_pickles(saved):
    # Independent of numpy.load: no member of any .npz is a pickle stream (protocol 2+ starts with 0x80).
    files = sorted(saved.glob("*.npz"))
    assert [f.name for f in files] == ["cnn.npz", "features.npz", "gknn.npz", "knn.npz", "svm.npz"]
    for npz_path in files:
        with zipfile.ZipFile(npz_path) as zf:
            assert zf.namelist(), npz_path.name
            for member in zf.namelist():
                raw = zf.read(member)
                header_len = int.from_bytes(raw[8:10], "little") + 10  # .npy v1 header
                assert b"'descr': '|O'" not in raw[:header_len], (npz_path.name, member)
                # And numpy agrees: it reads the member without pickle, as a plain array.
                assert np.load(io.BytesIO(raw), allow_pickle=False).dtype != object, (npz_path.name, member)
