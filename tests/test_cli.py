"""The command line: fast help without heavy imports, exit codes, one-line errors, a batch that goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoseg.cli import main

HEAVY = ("tensorflow", "keras", "sklearn", "torch", "jax")


@pytest.mark.parametrize("args", [["--help"], ["segment", "--help"], ["classify", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args):
    code = (
        "import sys\n"
        "from leukoseg.cli import main\n"
        f"rc = main({args!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert rc == 0, rc\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if args == ["--version"]:
        assert proc.stdout.startswith("leukoseg ") and proc.stdout.count("\n") == 1, proc.stdout
    else:
        assert proc.stdout.startswith("usage: leukoseg "), proc.stdout


def test_package_import_is_light():
    code = f"import sys, leukoseg, leukoseg.features, leukoseg.classify, leukoseg.pipelines, leukoseg.segmentation\n" \
           f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\nassert not heavy, heavy\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_usage_errors_exit_2(elsewhere, capsys):
    assert main([]) == 2
    assert main(["segment"]) == 2
    assert main(["segment", "x.jpg", "--workers", "0"]) == 2
    assert main(["segment", "x.jpg", "--pixel-size", "-1"]) == 2
    assert main(["no-such-command"]) == 2
    assert list(elsewhere.iterdir()) == []  # refused before any output folder or cache was made


def _smear(path: Path, seed: int = 0) -> Path:
    """A tiny smear: beige background, a few pink red cells and two purple nuclei."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.zeros((240, 320, 3), np.uint8)
    image[:] = (225, 215, 200)
    for _ in range(25):
        cv2.circle(image, (int(rng.integers(10, 310)), int(rng.integers(10, 230))), 14, (215, 160, 150), -1)
    for x, y in [(90, 120), (220, 110)]:
        cv2.circle(image, (x, y), 24, (170, 160, 215), -1)
        cv2.circle(image, (x, y), 19, (110, 50, 160), -1)
    Image.fromarray(image).save(path, format="JPEG", quality=95)
    return path


@pytest.fixture
def bad_batch(tmp_path, png_header_only) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    good = _smear(folder / "good.jpg")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(folder / "gray.png")
    rgba = np.dstack([np.asarray(Image.open(good)), np.full((240, 320), 255, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(folder / "tiny.png")
    Image.fromarray(np.full((120, 160, 3), (225, 215, 200), np.uint8)).save(folder / "blank.png")
    png_header_only(folder / "huge.png", 40000, 40000)
    (folder / "dossier é ü").mkdir()
    _smear(folder / "dossier é ü" / "frottis ñ 2.jpg", seed=1)
    return folder


def test_batch_with_bad_files(bad_batch, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["segment", str(bad_batch), "--out", str(out), "--workers", "1", "--json", "-q"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("leukoseg: error: ")]
    failed = {Path(line.split(": ")[2]).name for line in errors}
    assert failed == {"zero.jpg", "text.jpg", "truncated.jpg", "gray.png", "tiny.png", "huge.png"}
    assert len(errors) == len(captured.err.splitlines())  # one line each, nothing else
    results = {Path(r["image"]).name: r for r in map(json.loads, captured.out.splitlines())}
    assert len(results) == 10
    for name in ["good.jpg", "rgba.png", "blank.png", "frottis ñ 2.jpg"]:
        assert "error" not in results[name], results[name]
        assert (Path(results[name]["output"]) / "cells.csv").is_file()
    assert results["blank.png"]["n_cells"] == 0
    assert results["good.jpg"]["n_cells"] == 2
    # No half-written folders left behind.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_unwritable_output_is_one_line(tmp_path, capsys):
    image = _smear(tmp_path / "a.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    rc = main(["segment", str(image), "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("leukoseg: error: ")
    assert f"{blocker / 'out'}: output folder cannot be created: a parent of it is a file" in err
    assert main(["segment", str(image), "--out", str(blocker)]) == 2
    assert capsys.readouterr().err == f"leukoseg: error: {blocker}: output folder is a file, not a folder\n"


@pytest.mark.parametrize(
    "argv",
    [["segment", ""], ["segment", "x.jpg", "--out", ""], ["classify", "", "x.jpg"], ["classify", "x.jpg", "--model", ""],
     ["classify", "--dataset", "all-idb1", "--data-dir", ""], ["report", ""],
     ["train", "--dataset", "all-idb1", "--out", "m", "--run", ""]],
)
def test_an_empty_path_is_a_usage_error(elsewhere, capsys, argv):
    """Path("") is the current folder: an unset shell variable ("$IMG") must not make a run of the whole tree."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty path (an unset shell variable?)" in err
    assert list(elsewhere.iterdir()) == []


def test_classify_and_segment_name_outputs_alike(tmp_path, monkeypatch, capsys):
    """Both give the output folder under --out as written (relative stays relative), in JSON and in words."""
    monkeypatch.chdir(tmp_path)
    _smear(tmp_path / "a.jpg")
    for command, done in (("segment", "segmented"), ("classify", "classified")):
        assert main([command, "a.jpg", "--out", command, "--json", "--workers", "1", "--no-crops"]) == 0
        (result,) = map(json.loads, capsys.readouterr().out.splitlines())
        assert result["output"] == os.path.join(command, "a")
        assert main([command, "a.jpg", "--out", command, "--workers", "1", "--no-crops"]) == 0
        last = capsys.readouterr().err.splitlines()[-1]
        assert last.startswith(f"leukoseg: 1 of 1 images {done} into {command}"), last


def test_a_run_whose_inputs_all_fail_leaves_no_empty_output_folders(tmp_path, capsys):
    out = tmp_path / "o" / "sub" / "deep"
    assert main(["segment", str(tmp_path / "missing.jpg"), "--out", str(out)]) == 1
    assert "missing.jpg: " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the folders it made for results are gone again
    # A folder that existed before stays, empty or not; one that got results stays.
    (tmp_path / "mine").mkdir()
    assert main(["segment", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine").is_dir()
    image = _smear(tmp_path / "a.jpg")
    assert main(["segment", str(image), str(tmp_path / "missing.jpg"), "--out", str(out), "--workers", "1"]) == 1
    assert (out / "a" / "cells.csv").is_file()


def test_no_images_found(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_workers_give_the_same_outputs(tmp_path):
    for i in range(3):
        _smear(tmp_path / f"s{i}.jpg", seed=i)
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o1"), "--workers", "1", "-q"]) == 0
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o2"), "--workers", "2", "-q"]) == 0
    for i in range(3):
        a = (tmp_path / "o1" / f"s{i}" / "cells.csv").read_text()
        b = (tmp_path / "o2" / f"s{i}" / "cells.csv").read_text()
        assert a == b


def test_same_stem_in_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _smear(tmp_path / "a" / "x.jpg")
    _smear(tmp_path / "b" / "x.jpg", seed=3)
    assert main(["segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), "-q",
                 "--workers", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x", "x-2"]


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("leukoseg")
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("leukoseg ")


def test_dot_names_never_replace_the_output_folder(tmp_path):
    """A file named '..jpg' has the stem '.': it must not name OUT itself (which would be replaced)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ["a.jpg", "..jpg", ".hidden.jpg", "A.jpg"]:
        _smear(src / name)
    out = tmp_path / "out"
    rc = main(["segment", *(str(src / n) for n in ["a.jpg", "..jpg", ".hidden.jpg", "A.jpg"]), "--out", str(out),
               "--workers", "1", "--no-crops", "-q"])  # fmt: skip
    assert rc == 0
    # Leading dots dropped, names unique without case (a macOS or Windows disk would merge 'a' and 'A').
    assert sorted(p.name for p in out.iterdir()) == ["A-2", "a", "hidden", "image"]
    assert all((out / n / "cells.csv").is_file() for n in ["A-2", "a", "image", "hidden"])


def test_other_files_are_never_replaced(tmp_path, capsys):
    image = _smear(tmp_path / "smear.jpg")
    other = _smear(tmp_path / "other.jpg", seed=2)
    out = tmp_path / "out"
    (out / "smear").mkdir(parents=True)
    (out / "smear" / "thesis.txt").write_text("keep me")
    rc = main(["segment", str(image), str(other), "--out", str(out), "--workers", "1", "--no-crops"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "not a leukoseg result folder" in err and "Traceback" not in err
    assert (out / "smear" / "thesis.txt").read_text() == "keep me"
    assert (out / "other" / "cells.csv").is_file()  # the rest of the batch went on
    # An earlier result is replaced as before.
    assert main(["segment", str(other), "--out", str(out), "--workers", "1", "--no-crops", "-q"]) == 0
    # A link where the result folder goes is left alone, and said to be one (even to an empty folder).
    (tmp_path / "empty").mkdir()
    (out / "smear").rename(tmp_path / "kept")
    (out / "smear").symlink_to(tmp_path / "empty")
    assert main(["segment", str(image), "--out", str(out), "--workers", "1", "--no-crops"]) == 1
    err = capsys.readouterr().err
    assert "(a symbolic link, not a folder)" in err and "Traceback" not in err, err
    assert (out / "smear").is_symlink() and not any((tmp_path / "empty").iterdir())


def test_output_folder_inputs(tmp_path, capsys):
    """Folder searches skip the output folder and earlier results; a file named explicitly is read."""
    _smear(tmp_path / "smear.jpg")
    assert main(["segment", str(tmp_path), "--out", str(tmp_path), "--workers", "1", "--no-crops", "-q"]) == 0
    assert main(["segment", str(tmp_path), "--out", str(tmp_path), "--workers", "1", "--no-crops", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smear", "smear.jpg"]  # overlay.jpg is not an input
    # Named explicitly, an image inside the output folder is segmented (it used to be dropped silently).
    inner = _smear(tmp_path / "inner.jpg", seed=4)
    assert main(["segment", str(inner), "--out", str(tmp_path), "--workers", "1", "--no-crops", "-q"]) == 0
    assert (tmp_path / "inner" / "cells.csv").is_file()
    # ... unless it lies inside the folder this run would replace: that would delete it.
    moved = tmp_path / "smear" / "smear.jpg"
    moved.write_bytes((tmp_path / "smear.jpg").read_bytes())
    capsys.readouterr()
    assert main(["segment", str(moved), "--out", str(tmp_path), "--workers", "1", "--no-crops"]) == 1
    assert "lies inside the output folder" in capsys.readouterr().err
    assert moved.is_file()


def test_glob_matching_nothing_is_reported(tmp_path, capsys):
    image = _smear(tmp_path / "a.jpg")
    rc = main(["segment", str(image), str(tmp_path / "nosuch*.jpg"), "--out", str(tmp_path / "o"), "--workers", "1",
               "--no-crops"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "nosuch*.jpg: no such file, and no file matches this pattern" in err and "1 of 2 images" in err


def test_json_lines_print_any_file_name():
    from leukoseg.cli import _json_line

    line = _json_line({"image": "lat\udce9.png", "error": "x"})  # a Latin-1 name as Python decodes it
    assert line.isascii() and json.loads(line)["image"] == "lat\udce9.png"


def test_unexpected_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import leukoseg.cli as cli

    def boom(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "_batch", boom)
    assert main(["segment", str(_smear(tmp_path / "a.jpg")), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == "leukoseg: error: internal error: RuntimeError: something broke (run with -v for the traceback)\n"


def test_usage_errors_are_one_line(elsewhere, capsys):
    assert main(["segment", "x.jpg", "--pixel-size", "1e200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pixel-size" in err and "between" in err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("args", [["-vv", "segment", "x"], ["segment", "-vv", "x"]])
def test_verbosity_before_or_after_the_command(args):
    from leukoseg.cli import build_parser

    ns = build_parser().parse_args(args)
    assert ns.verbose == 2 and ns.quiet is False


def test_quiet_before_the_command():
    from leukoseg.cli import build_parser

    assert build_parser().parse_args(["-q", "classify", "x"]).quiet is True


def test_batch_of_awkward_inputs(tmp_path, capsys):
    good = _smear(tmp_path / "good.jpg")
    data = bytearray(good.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2000] = bytes(2000)  # a zeroed block, the end marker kept
    (tmp_path / "zeroed.jpg").write_bytes(bytes(data))
    (tmp_path / "loop1.jpg").symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(tmp_path / "loop1.jpg")
    (tmp_path / "new\nline.jpg").write_text("not an image")
    (tmp_path / "empty").mkdir()
    inputs = [good, tmp_path / "zeroed.jpg", tmp_path / "loop1.jpg", tmp_path / "new\nline.jpg", tmp_path / "empty",
              tmp_path / "." / "good.jpg"]  # the last: the first file again, named another way
    rc = main(["segment", *map(str, inputs), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    errors = [line for line in err if line.startswith("leukoseg: error: ")]
    assert len(errors) == 3 and "Traceback" not in "\n".join(err)
    assert any("zeroed.jpg: corrupt JPEG data" in line for line in errors)
    assert any("loop1.jpg: broken symbolic link" in line for line in errors)
    assert any("new\\nline.jpg: " in line for line in errors)  # the newline written as an escape: one line
    assert any("empty: no images found" in line for line in err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]  # segmented once


def test_a_bundle_rewritten_between_calls_is_read_again(tmp_path, capsys, monkeypatch):
    # main() called twice in one process (a notebook): the second call scores with the bundle as it is now,
    # and main() leaves the environment as it found it.
    import shutil

    from leukoseg.pipelines.predict import default_model_dir

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    model = shutil.copytree(default_model_dir(), tmp_path / "model")
    image = _smear(tmp_path / "smear.jpg")
    thresholds = []
    for threshold in (0.5, 0.01):
        manifest = json.loads((model / "bundle.json").read_text())
        manifest["config"]["image_rule"]["threshold"] = threshold
        (model / "bundle.json").write_text(json.dumps(manifest))
        args = ["classify", str(image), "--model", str(model), "--out", str(tmp_path / f"out{threshold}"), "--json"]
        assert main([*args, "--workers", "1", "--no-crops"]) == 0
        thresholds.append(json.loads(capsys.readouterr().out)["threshold"])
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert thresholds == [0.5, 0.01]


def test_result_lines_write_control_characters_as_escapes(tmp_path, capsys):
    image = _smear(tmp_path / "new\nline.jpg")
    assert main(["classify", str(image), "--out", str(tmp_path / "o\nut"), "--workers", "1", "--no-crops"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err  # one line for the image, one for the batch
    assert "new\\nline.jpg: normal (p_all " in err[0] or "new\\nline.jpg: ALL (p_all " in err[0]
    assert err[1].startswith("leukoseg: 1 of 1 images classified into ") and "o\\nut" in err[1]


def _killed_on_b(task):
    """A worker task that dies, as under the kernel's out-of-memory killer, on image "b" (picklable: top level),
    halfway through writing its result folder."""
    import os
    import signal

    from leukoseg.io import _staged_folder, _swap_folder

    image, out, _ = task
    with _staged_folder(Path(out)) as tmp:
        (tmp / "cells.csv").write_text("half written")
        if image == "b":
            os.kill(os.getpid(), signal.SIGKILL)
        (tmp / "cells.csv").write_text("whole")
        _swap_folder(tmp, Path(out))  # a retried batch writes an image again
    return {"image": image}


def test_a_killed_worker_fails_its_image_not_the_batch(monkeypatch, tmp_path):
    from leukoseg.cli import _run_tasks

    # The spawned workers import this module by name (tests.test_cli) with this process's sys.path: make the
    # repository root importable also when pytest runs from elsewhere (e.g. against an installed copy).
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    tasks = [(name, str(tmp_path / name), {}) for name in "abc"]
    results = list(_run_tasks(_killed_on_b, tasks, 2, quiet=True, unit="image"))
    assert results == [{"image": "a"}, {"image": "b", "error": "its worker process was killed (out of memory?)"},
                       {"image": "c"}]  # fmt: skip
    # The killed worker's staged folders (first try and retry) are gone; the finished results stay.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]


def test_staged_leftovers_are_recognised_by_name_and_owner(tmp_path):
    import os

    from leukoseg.io import _remove_staged_leftovers, _staged_folder

    pid, other = os.getpid(), os.getpid() + 1  # this batch's owner, and another run's
    target = tmp_path / ("x" * 250)  # a long name: its staged name is cut to stay a legal file name
    x = target.name[:200]
    with _staged_folder(target) as staged:  # what a worker of this process was writing when it was stopped
        (staged / "f").write_text("")
        assert staged.name.startswith(f".{x}.{pid}.") and len(os.fsencode(staged.name)) <= 255
        keep = [f".a.b.{pid}.part", f".{x}.{pid}.abcdefg.part", f".{x}.{pid}.abcdefgH.part", "y", target.name,
                f".{x}.{other}.abcdefgh.part", f".y.{other}.abcdefgh.part"]  # another run's work in progress
        for name in keep:
            (tmp_path / name).mkdir()
        (tmp_path / f".y.{pid}.abcdefgh.part").write_text("a file that atomic_write left")
        (tmp_path / f".{x}.{pid}.abcdefgh.old").mkdir()  # the swap into an existing target was done
        _remove_staged_leftovers([target, tmp_path / "y"])
        assert not staged.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    # A swap stopped halfway (the earlier result moved aside, the new one not yet in place): the earlier
    # result goes back, the staged one is removed.
    z = tmp_path / "z"
    (tmp_path / f".z.{pid}.abcdefgh.old").mkdir()
    (tmp_path / f".z.{pid}.abcdefgh.old" / "segmentation.json").write_text("earlier")
    (tmp_path / f".z.{pid}.ijklmnop.part").mkdir()
    _remove_staged_leftovers([z])
    assert (z / "segmentation.json").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "z"])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["classify", "--dataset", "all-idb1", "--json"], "--json applies to image PATHs"),
        (["classify", "--dataset", "all-idb1", "--no-crops", "--model", "m"], "--model, --no-crops apply to image"),
        (["classify", "x.jpg", "--folds", "3"], "--folds applies to --dataset"),
        (["classify", "x.jpg", "--no-cnn", "--device", "cpu"], "--device, --no-cnn apply to --dataset"),
        (["classify", "x.jpg", "--inner-search"], "--inner-search applies to --dataset"),
        (["classify", "--dataset", "all-idb1", "--no-cnn", "--cnn-params", "{}"], "--cnn-params applies to the CNN"),
        (["classify", "--dataset", "folder:x", "--data-dir", "y"], "folder:PATH names its folder itself"),
        (["classify", "--dataset", " FOLDER:x", "--data-dir", "y"], "folder:PATH names its folder itself"),
    ],
)
def test_classify_refuses_the_options_of_the_other_mode(elsewhere, capsys, argv, named):
    """An option the chosen mode would ignore is one error naming it, before any work."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("leukoseg: error:") and named in err[0]
    assert list(elsewhere.iterdir()) == []


def test_classify_dataset_pixel_size_and_protocol(elsewhere, monkeypatch, capsys):
    """--pixel-size reaches the experiment's segmentation (single-cell crops have no red-cell ruler)."""
    from types import SimpleNamespace

    from leukoseg import datasets
    from leukoseg.pipelines import experiment

    seen = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(datasets, "load_dataset", lambda name, data_dir: SimpleNamespace(name=name))
    monkeypatch.setattr(experiment, "run_experiment", recording)
    assert main(["classify", "--dataset", "all-idb2", "--pixel-size", "0.1", "--out", "run"]) != 0
    assert seen["segment_params"] == {"pixel_size": 0.1}
    # ALL-IDB2's protocol by default (10 repeats of 2-fold CV); ALL-IDB1's 5 folds, once; the options win.
    assert (seen["n_folds"], seen["repeats"]) == (2, 10)
    seen.clear()
    assert main(["classify", "--dataset", "all-idb1", "--out", "run"]) != 0
    assert seen["segment_params"] is None and (seen["n_folds"], seen["repeats"]) == (5, 1)
    assert main(["classify", "--dataset", "all-idb2", "--out", "run", "--folds", "3", "--repeats", "2"]) != 0
    assert (seen["n_folds"], seen["repeats"]) == (3, 2)
    assert "stop here" in capsys.readouterr().err


@pytest.mark.parametrize(("full_disk", "exit_code"), [(False, 2), (True, 1)])
def test_a_report_that_fails_after_the_experiment_says_how_to_write_it_again(elsewhere, monkeypatch, capsys,
                                                                            full_disk, exit_code):
    from types import SimpleNamespace

    from leukoseg import datasets
    from leukoseg.errors import LeukosegError
    from leukoseg.pipelines import experiment, report

    why = "No space left on device" if full_disk else "Read-only file system"

    def failing(*args, **kwargs):  # as write_report words each: a full disk fails the run, a folder not ours is usage
        if full_disk:
            raise OSError(28, f"cannot write the report ({why})", "run")
        raise LeukosegError("run", f"cannot write the report ({why})")

    monkeypatch.setattr(datasets, "load_dataset", lambda name, data_dir: SimpleNamespace(name=name, root=Path(".")))
    monkeypatch.setattr(experiment, "run_experiment", lambda *args, **kwargs: None)
    monkeypatch.setattr(report, "write_report", failing)
    assert main(["classify", "--dataset", "all-idb1", "--out", "run"]) == exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"leukoseg: error: run: cannot write the report ({why}); the results are written, and "
                   "`leukoseg report run` writes the report from them"]


def test_an_interrupted_pool_stops_its_workers_at_once():
    """Ctrl-C in a parallel batch: pending images are cancelled and running ones stopped, not finished."""
    import time

    from leukoseg._workers import process_pool

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), process_pool(2) as pool:
        futures = [pool.submit(time.sleep, 60) for _ in range(6)]  # a minute each: a wait would show
        workers = list(pool._processes.values())
        while not any(f.running() for f in futures) and time.perf_counter() - start < 60:
            time.sleep(0.05)
        raise KeyboardInterrupt
    assert time.perf_counter() - start < 45  # not the 3 minutes that finishing the queue would take
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)
    # The queue was dropped: all but the tasks handed to the workers (the pool hands over one spare).
    assert sum(f.cancelled() for f in futures) >= 6 - 2 - 1


def test_sigterm_interrupts_the_command_as_ctrl_c_does():
    import signal
    import time

    from leukoseg._workers import terminate_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminate_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) is before


def test_standard_output_errors_name_standard_output(tmp_path):
    """`--json` into a full disk or a closed pipe: the error is standard output's, not the output folder's."""
    image = _smear(tmp_path / "a.jpg")
    exe = [sys.executable, "-m", "leukoseg", "segment", str(image), "--json", "--no-crops", "--workers", "1"]
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            out = subprocess.run([*exe, "--out", str(tmp_path / "o1")], stdout=full, stderr=subprocess.PIPE,
                                 text=True, timeout=300)  # fmt: skip
        assert out.returncode != 0
        assert out.stderr == "leukoseg: error: standard output: No space left on device\n"
    # A reader that has gone: one line, and no "Exception ignored" at exit.
    proc = subprocess.Popen([*exe, "--out", str(tmp_path / "o2")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=300)
    proc.stderr.close()
    assert proc.returncode != 0
    assert err == "leukoseg: error: standard output: closed by the reader (broken pipe)\n"


def test_opencv_out_of_memory_is_said_as_such():
    from leukoseg.cli import _guarded, _out_of_memory

    cv2 = pytest.importorskip("cv2")
    oom = cv2.error("OpenCV(5.0.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 1 bytes")

    def decode():
        raise oom

    assert _out_of_memory(oom) and not _out_of_memory(ValueError("Insufficient memory"))
    assert _guarded("big.jpg", {}, decode) == {"image": "big.jpg",
                                               "error": "out of memory (try --max-pixels or a smaller image)"}


def test_the_verdict_line_explains_an_all_call_without_a_blast_cell():
    from leukoseg.cli import _classification_line

    verdict = {"image": "a.jpg", "decision": "ALL", "p_all": 0.238, "n_cells": 7, "n_blasts": 2,
               "fab_subtype": "L1", "fab_score": 0}  # fmt: skip
    assert _classification_line(verdict) == "a.jpg: ALL (p_all 0.238), 2 of 7 cells blasts, FAB L1 (score 0)"
    assert _classification_line({**verdict, "n_blasts": 0}) == (
        "a.jpg: ALL (p_all 0.238), 0 of 7 cells blasts, FAB L1 (score 0) from its most probable cell: no cell is "
        "called a blast, the image score adds up doubtful ones")
    normal = {**verdict, "decision": "normal", "p_all": 0.01, "n_blasts": 0, "fab_subtype": None}
    assert _classification_line(normal) == "a.jpg: normal (p_all 0.010), 0 of 7 cells blasts"
