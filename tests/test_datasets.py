"""Data-set layouts, annotation parsing, identical-image groups and layout errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoseg.datasets import load_dataset, parse_xyc, resolve_data_dir
from leukoseg.errors import LeukosegError


def _jpg(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture
def fake_idb1(tmp_path) -> Path:
    root = tmp_path / "ALL_IDB1"
    for i, (name, xyc) in enumerate(
        [("Im001_1", b"3\t4\r\n\r\n10 12\r\n"), ("Im002_0", b""), ("Im003_0", b"\n"), ("Im004_1", b" 5  6 \n")]
    ):
        _jpg(root / "im" / f"{name}.jpg", seed=i)
        (root / "xyc").mkdir(exist_ok=True)
        (root / "xyc" / f"{name}.xyc").write_bytes(xyc)
    # A byte copy, as ALL-IDB1's Im108_0 is of Im093_0.
    shutil.copy(root / "im" / "Im002_0.jpg", root / "im" / "Im005_0.jpg")
    (root / "xyc" / "Im005_0.xyc").write_bytes(b"")
    return root


def test_parse_xyc_tolerant(tmp_path):
    p = tmp_path / "a.xyc"
    p.write_bytes(b"\r\n12\t34\r\n  56   78  \n\n9.5 10\n")
    np.testing.assert_array_equal(parse_xyc(p), [[12, 34], [56, 78], [9.5, 10]])
    p.write_bytes(b"")
    assert parse_xyc(p).shape == (0, 2)


def test_parse_xyc_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.xyc"
    p.write_text("1\t2\nthree four\n")
    with pytest.raises(LeukosegError, match="line 2") as info:
        parse_xyc(p)
    assert "bad.xyc" in str(info.value)


@pytest.mark.parametrize("line", ["nan\tnan", "1\tinf", "-Infinity 3"])
def test_parse_xyc_refuses_non_finite_points(tmp_path, line):
    """float() reads 'nan' and 'inf'; the blast matching cannot use them, so the file is refused up front."""
    p = tmp_path / "odd.xyc"
    p.write_text(f"1\t2\n{line}\n")
    with pytest.raises(LeukosegError, match="odd.xyc: line 2: .*finite"):
        parse_xyc(p)


def test_all_idb1_layout(fake_idb1):
    ds = load_dataset("all-idb1", fake_idb1)
    assert [r.name for r in ds.records] == [f"im/Im00{i}_{y}.jpg" for i, y in [(1, 1), (2, 0), (3, 0), (4, 1), (5, 0)]]
    assert list(ds.labels) == ["1", "0", "0", "1", "0"]
    np.testing.assert_array_equal(ds.records[0].points, [[3, 4], [10, 12]])
    assert ds.records[1].points.shape == (0, 2)
    assert ds.unit == "image" and ds.classes == ("0", "1")
    # A macOS resource fork ('._' file) beside the images is not an image of the data set.
    (fake_idb1 / "im" / "._Im001_1.jpg").write_bytes(b"\0\5\26\7")
    assert [r.name for r in load_dataset("all-idb1", fake_idb1).records] == [r.name for r in ds.records]


def test_identical_images_share_a_group(fake_idb1):
    groups = load_dataset("all-idb1", fake_idb1).groups
    assert groups[1] == groups[4]  # byte copy
    assert len(set(groups)) == 4


def test_pixel_identical_images_share_a_group(tmp_path):
    rng = np.random.default_rng(1)
    pixels = (rng.random((10, 10, 3)) * 255).astype(np.uint8)
    for cls, name, kw in [("a", "x.png", {}), ("a", "y.png", {"compress_level": 9}), ("b", "z.png", {})]:
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.fromarray(pixels if name != "z.png" else 255 - pixels).save(tmp_path / cls / name, **kw)
    ds = load_dataset(f"folder:{tmp_path}")
    assert (tmp_path / "a" / "x.png").read_bytes() != (tmp_path / "a" / "y.png").read_bytes()
    assert ds.groups[0] == ds.groups[1] != ds.groups[2]


def test_folder_dataset_any_number_of_classes(tmp_path):
    for i, cls in enumerate(["blast", "lymphocyte", "neutrophil"]):
        _jpg(tmp_path / cls / f"c{i}.jpg", seed=i)
        _jpg(tmp_path / cls / "deeper" / f"d{i}.jpg", seed=10 + i)
    (tmp_path / "blast" / "readme.txt").write_text("not an image")
    # Not images of the class: hidden folders and files, and leukoseg's own result folders.
    _jpg(tmp_path / "blast" / ".ipynb_checkpoints" / "c0-checkpoint.jpg", seed=20)
    _jpg(tmp_path / "blast" / "._c0.jpg", seed=21)
    _jpg(tmp_path / "blast" / "out" / "c0" / "overlay.jpg", seed=22)
    (tmp_path / "blast" / "out" / "c0" / "segmentation.json").write_text("{}")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ("blast", "lymphocyte", "neutrophil")
    assert len(ds) == 6
    assert ds.records[0].name == "blast/c0.jpg"


def test_folder_dataset_needs_two_classes(tmp_path):
    _jpg(tmp_path / "only" / "a.jpg", 0)
    with pytest.raises(LeukosegError, match="at least two classes"):
        load_dataset(f"folder:{tmp_path}")


def test_all_idb2_layout(tmp_path):
    root = tmp_path / "ALL_IDB2"
    for name in ["Im001_1", "Im002_0"]:
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / "img" / f"{name}.tif")
    ds = load_dataset("all-idb2", root)
    assert ds.unit == "cell" and list(ds.labels) == ["1", "0"]
    assert ds.groups[0] == ds.groups[1]  # identical pixels


def test_missing_dataset_says_what_and_how(tmp_path):
    with pytest.raises(LeukosegError) as info:
        load_dataset("all-idb1", tmp_path / "nowhere")
    msg = str(info.value)
    assert "nowhere" in msg and "im/ImXXX_Y.jpg" in msg and "on request" in msg and "does not exist" in msg


def test_wrong_layout_says_what_was_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(LeukosegError) as info:
        load_dataset("all-idb1", tmp_path)
    assert "expected im/ImXXX_Y.jpg" in str(info.value) and "found images" in str(info.value)


def test_fingerprint_covers_images_and_annotations(fake_idb1):
    before = load_dataset("all-idb1", fake_idb1).fingerprint()
    assert load_dataset("all-idb1", fake_idb1).fingerprint() == before  # stable
    (fake_idb1 / "xyc" / "Im004_1.xyc").write_bytes(b" 5  7 \n")  # one annotated blast moved by a pixel
    moved = load_dataset("all-idb1", fake_idb1).fingerprint()
    assert moved != before
    _jpg(fake_idb1 / "im" / "Im003_0.jpg", seed=99)  # one image replaced
    assert load_dataset("all-idb1", fake_idb1).fingerprint() not in (before, moved)


def test_missing_annotation(fake_idb1):
    (fake_idb1 / "xyc" / "Im003_0.xyc").unlink()
    with pytest.raises(LeukosegError, match="annotation file missing"):
        load_dataset("all-idb1", fake_idb1)


@pytest.mark.parametrize("kind", ["broken link", "folder"])
def test_image_that_is_no_regular_file_is_named(fake_idb1, kind):
    bad = fake_idb1 / "im" / "Im002_0.jpg"
    bad.unlink()
    if kind == "broken link":
        bad.symlink_to(fake_idb1 / "nowhere.jpg")
    else:
        bad.mkdir()
    with pytest.raises(LeukosegError) as info:
        load_dataset("all-idb1", fake_idb1)
    assert info.value.path == str(bad)
    assert ("broken symbolic link" if kind == "broken link" else "a folder, not an image file") in info.value.reason


def test_folder_dataset_refuses_a_broken_link(tmp_path):
    for cls in ("a", "b"):
        _jpg(tmp_path / cls / "x.jpg", seed=ord(cls))
    (tmp_path / "b" / "y.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(LeukosegError, match="broken symbolic link") as info:
        load_dataset(f"folder:{tmp_path}")
    assert info.value.path == str(tmp_path / "b" / "y.jpg")


def test_unreadable_image_is_named(fake_idb1, monkeypatch):
    # chmod 000 does not stop root (CI containers), so the refusal of the open is simulated.
    import leukoseg.datasets as datasets

    bad = fake_idb1 / "im" / "Im003_0.jpg"
    real = datasets.file_sha256

    def refuse(path):
        if Path(path) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(datasets, "file_sha256", refuse)
    with pytest.raises(LeukosegError) as info:
        load_dataset("all-idb1", fake_idb1)
    assert info.value.path == str(bad) and info.value.reason == "cannot read the image (Permission denied)"


@pytest.mark.parametrize("spec", ["folder:", "folder:  ", " FOLDER: "])
def test_folder_spec_without_a_path_is_refused(tmp_path, monkeypatch, spec):
    # An empty PATH is the current folder to pathlib: it must not be taken as the data set.
    for cls in ("a", "b"):
        _jpg(tmp_path / cls / "x.jpg", seed=ord(cls))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LeukosegError, match="names no folder: expected 'folder:PATH'") as info:
        load_dataset(spec)
    assert info.value.path is None
    assert len(load_dataset("folder:", data_dir=tmp_path)) == 2  # --data-dir still gives the folder


def test_unknown_dataset():
    with pytest.raises(LeukosegError, match="unknown data set"):
        load_dataset("all-idb3")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LEUKOSEG_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("ALL_IDB1") == Path(tmp_path) / ".leukoseg" / "data" / "ALL_IDB1"
    monkeypatch.setenv("LEUKOSEG_DATA", str(tmp_path / "d"))
    assert resolve_data_dir("ALL_IDB1") == tmp_path / "d" / "ALL_IDB1"
    assert resolve_data_dir("ALL_IDB1", tmp_path / "x") == tmp_path / "x"


@pytest.mark.data
def test_real_all_idb1(all_idb1_dir):
    ds = load_dataset("all-idb1", all_idb1_dir)
    assert len(ds) == 108
    assert sum(len(r.points) for r in ds.records) == 510
    assert sorted(ds.labels).count("1") == 49
    by_name = {r.name: r.group for r in ds.records}
    assert by_name["im/Im093_0.jpg"] == by_name["im/Im108_0.jpg"]
    assert len(set(ds.groups)) == 107


@pytest.mark.data
def test_default_model_was_trained_on_this_all_idb1(all_idb1_dir):
    # The bundled model's provenance names the exact images and annotations it was trained on.
    import json

    bundle = Path(__file__).resolve().parents[1] / "leukoseg" / "models" / "default" / "bundle.json"
    provenance = json.loads(bundle.read_text(encoding="utf-8"))["provenance"]
    fingerprint = load_dataset("all-idb1", all_idb1_dir).fingerprint()
    assert provenance["dataset"]["fingerprint"] == fingerprint
    assert provenance["cross_validated_metrics"]["dataset_fingerprint"] == fingerprint
    run = provenance["cross_validated_metrics"]["run"]
    assert run and "/" not in run and "\\" not in run  # a folder name, not a path of one machine


def test_folder_spec_and_data_dir_naming_two_folders_is_refused(tmp_path):
    for root in ("A", "B"):
        for cls in ("x", "y"):
            _jpg(tmp_path / root / cls / "i.jpg", seed=ord(root) + ord(cls))
    with pytest.raises(LeukosegError, match="name two different folders"):
        load_dataset(f"folder:{tmp_path / 'A'}", data_dir=tmp_path / "B")
    assert len(load_dataset(f"Folder:{tmp_path / 'B'}", data_dir=tmp_path / "B")) == 2  # the same folder twice


def test_xyc_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "a.xyc"
    p.write_bytes(b"\xef\xbb\xbf886\t726\r\n12 34\r\n")
    np.testing.assert_array_equal(parse_xyc(p), [[886, 726], [12, 34]])


@pytest.mark.parametrize(
    ("name", "xyc", "message"),
    [
        ("Im001_1", b"3\t4\n17\t5\n", r"1 centroid\(s\) outside the 16x16 image Im001_1.jpg, e.g. \(17, 5\)"),
        ("Im001_1", b"-1\t4\n", r"outside the 16x16 image"),
        ("Im002_0", b"3\t4\n", r"1 blast centroid\(s\) for a healthy image \(Y = 0\)"),
    ],
)
def test_annotations_that_contradict_their_image_are_refused(fake_idb1, name, xyc, message):
    """Swapped or out-of-range columns, or blasts in a healthy image, would give cells the wrong labels."""
    (fake_idb1 / "xyc" / f"{name}.xyc").write_bytes(xyc)
    with pytest.raises(LeukosegError, match=message) as info:
        load_dataset("all-idb1", fake_idb1)
    assert info.value.path == str(fake_idb1 / "xyc" / f"{name}.xyc")


def test_an_all_image_without_blast_centroids_is_warned_about(fake_idb1, caplog):
    (fake_idb1 / "xyc" / "Im004_1.xyc").write_bytes(b"")
    with caplog.at_level("WARNING", logger="leukoseg.datasets"):
        ds = load_dataset("all-idb1", fake_idb1)
    assert ds.records[3].points.shape == (0, 2)
    assert "Im004_1.xyc: no blast centroid for an ALL image" in caplog.text


@pytest.mark.parametrize(("layout", "name"), [("all-idb1", "im/Im006_1.png"), ("all-idb2", "img/Im003_1.jpg")])
def test_an_image_of_the_data_set_in_another_format_is_refused(fake_idb1, tmp_path, layout, name):
    """Skipping it would drop an image, and its annotation, without a word."""
    root = fake_idb1
    if layout == "all-idb2":
        root = tmp_path / "ALL_IDB2"
        for stem in ("Im001_1", "Im002_0"):
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 + int(stem[-1]), np.uint8)).save(root / "img" / f"{stem}.tif")
    _jpg(root / name, seed=7)
    with pytest.raises(LeukosegError, match="an image of the data set in another format") as info:
        load_dataset(layout, root)
    assert info.value.path == str(root / name)


def test_folder_dataset_says_what_it_leaves_out(tmp_path, caplog):
    for cls in ("blast", "lymphocyte"):
        _jpg(tmp_path / cls / "a.jpg", seed=len(cls))
    (tmp_path / "neutrophil").mkdir()  # a class without images
    _jpg(tmp_path / "loose.jpg", seed=3)  # an image beside the class folders
    (tmp_path / "run").mkdir()  # a result folder of classify --dataset is no class
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with caplog.at_level("WARNING", logger="leukoseg.datasets"):
        ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ("blast", "lymphocyte")
    assert "no images in this class folder" in caplog.text and "'neutrophil' left out" in caplog.text
    assert "1 image(s) beside the class folders (loose.jpg)" in caplog.text
    assert "'run'" not in caplog.text


def test_identical_images_with_different_labels_are_warned_about(tmp_path, caplog):
    _jpg(tmp_path / "blast" / "b.jpg", seed=0)
    _jpg(tmp_path / "normal" / "n.jpg", seed=1)
    shutil.copy(tmp_path / "blast" / "b.jpg", tmp_path / "normal" / "copy_of_b.jpg")
    with caplog.at_level("WARNING", logger="leukoseg.datasets"):
        ds = load_dataset(f"folder:{tmp_path}")
    assert ds.groups[0] == ds.groups[1]  # still one group: the same fold
    assert "identical images with different labels: blast/b.jpg, normal/copy_of_b.jpg" in caplog.text
