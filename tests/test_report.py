"""The HTML and Markdown report of a run folder: content, self-containment, tolerance, errors, browser."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoseg.errors import LeukosegError
from leukoseg.pipelines.metrics import binary_metrics, wilson_interval
from leukoseg.pipelines.report import MODEL_ORDER, ReportFiles, write_report

ALL_MODELS = ("fused", "svm", "knn", "cnn", "baseline", "gknn")  # deliberately not in display order
LABELS = {"knn": "kNN", "gknn": "GkNN", "svm": "SVM", "baseline": "Baseline", "cnn": "CNN", "fused": "Fused"}
CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "report_check.py"


# --------------------------------------------------------------------------------------------------
# Fake run folders


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _summary(per_repeat: list[dict], keys, strata) -> dict:
    out = {}
    for st in strata:
        out[st] = {}
        for k in keys:
            vals = [r[st][k] for r in per_repeat if r[st].get(k) is not None]
            out[st][k] = {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None}
    return out


def make_binary_run(root: Path, *, models=ALL_MODELS, repeats: int = 2, fab: bool = True, extras: bool = True,
                    fused_best: bool = True, data_root: Path | None = None, n_images: int = 10) -> Path:
    """A tiny ALL-IDB1-like binary run: images Im030-Im039 (straddling the one-camera stratum)."""
    rng = np.random.default_rng(1)
    run = root / "run"
    run.mkdir(parents=True)
    names = [f"im/Im{30 + i:03d}_{i % 2}.jpg" for i in range(n_images)]
    labels = np.array([i % 2 for i in range(n_images)])
    one_cam = np.array([30 + i >= 34 for i in range(n_images)])
    n_cells = 3
    scores, cell_scores = {}, {}
    for m in models:
        noise = 0.15 if (m == "fused") == fused_best else 0.45
        scores[m] = np.clip(labels * 0.6 + 0.2 + rng.normal(0, noise, (repeats, n_images)), 0, 1)
        cell_scores[m] = rng.random((repeats, n_images, n_cells))
    model_json = {}
    for m in models:
        per_repeat = []
        for r in range(repeats):
            pred = (scores[m][r] >= 0.5).astype(int)
            entry = {"repeat": r}
            for st, mask in (("all", np.ones(n_images, bool)), ("one_camera", one_cam)):
                res = binary_metrics(labels[mask], pred[mask], scores[m][r, mask])
                res["cell_auc"] = float(rng.uniform(0.8, 0.95))
                res["cell_auc_clean"] = None if st == "one_camera" else float(rng.uniform(0.85, 0.99))
                entry[st] = res
            entry["thresholds"] = [0.5] * 5
            per_repeat.append(entry)
        model_json[m] = {"repeats": per_repeat, "summary": _summary(
            per_repeat, ("accuracy", "sensitivity", "specificity", "auc", "cell_auc", "cell_auc_clean"),
            ("all", "one_camera"))}
    metrics = {
        "task": "binary", "classes": ["0", "1"], "primary_model": "fused" if "fused" in models else "baseline",
        "dataset": {"name": "all-idb1", "n_images": n_images, "n_cells": n_images * n_cells, "fingerprint": "abc"},
        "seed": 0,
        "settings": {"n_folds": 5, "repeats": repeats, "image_score": "mean of the 3 highest",
                     "threshold": "maximises balanced accuracy"},
        "models": model_json,
    }
    if data_root is not None:
        metrics["dataset"]["root"] = str(data_root)
    if extras:
        metrics["timings_s"] = {"segment_and_features": 1.2, "fit_gknn": 13.5, "fit_cnn": 40.0, "total": 60.0}
        metrics["device"] = {"cnn": "cpu", "fusion": "cpu", "backend": "tensorflow"}
        metrics["versions"] = {"python": "3.11", "leukoseg": "0.1.0"}
    primary = metrics["primary_model"]
    if fab:
        metrics["fab"] = {"settings": {"min_blasts": 3}, "distribution_repeat0": {"L1": 3, "L2": 1, "L3": 0},
                          "note": "research only"}
    header = ["image", "label", "repeat", "fold", "n_cells", *(f"p_{m}" for m in models),
              *(f"pred_{m}" for m in models), "pred", "n_blasts_predicted", "threshold"]
    if fab:
        header += ["fab_subtype", "fab_score", "fab_pct_large_cells", "fab_pct_prominent_nucleoli"]
    rows = []
    for r in range(repeats):
        for i, name in enumerate(names):
            pred = int(scores[primary][r, i] >= 0.5)
            row = [name, int(labels[i]), r, i % 5, n_cells, *(f"{scores[m][r, i]:.6f}" for m in models),
                   *(int(scores[m][r, i] >= 0.5) for m in models), pred, 1, "0.5"]
            if fab:
                row += ([("L1", "L2")[i % 4 == 3], "0.7", "40.0", "12.5"] if pred else ["", "", "", ""])
            rows.append(row)
    (run / "images.csv").write_text(_csv_text(header, rows))
    cell_models = [m for m in models if m != "fused"]  # the fused model has no cell probability
    rows = [[name, c + 1, 20 + 40 * c, 30 + 20 * c, r, i % 5, int(c == 0 and labels[i]),
             *(f"{cell_scores[m][r, i, c]:.6f}" for m in cell_models)]
            for r in range(repeats) for i, name in enumerate(names) for c in range(n_cells)]
    (run / "cells.csv").write_text(_csv_text(
        ["image", "cell_id", "x", "y", "repeat", "fold", "label", *(f"p_blast_{m}" for m in cell_models)], rows))
    (run / "folds.csv").write_text(_csv_text(["image", "repeat", "fold"],
                                             [[n, r, i % 5] for r in range(repeats) for i, n in enumerate(names)]))
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run


def make_data_folder(root: Path, n_images: int = 10) -> Path:
    """Small colour JPEGs at the paths of make_binary_run's images."""
    data = root / "data"
    (data / "im").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(n_images):
        arr = (rng.random((120, 160, 3)) * 80 + 150).astype(np.uint8)
        Image.fromarray(arr).save(data / "im" / f"Im{30 + i:03d}_{i % 2}.jpg", quality=90)
    return data


def make_multiclass_run(root: Path, *, classes=("a", "b", "c"), models=("svm", "cnn", "fused")) -> Path:
    """A 3-class `folder:` run: 12 images, one repeat, each model with a few errors."""
    rng = np.random.default_rng(3)
    run = root / "mc-run"
    run.mkdir(parents=True)
    names = [f"{classes[i % 3]}/img{i:02d}.png" for i in range(12)]
    truth = [classes[i % 3] for i in range(12)]
    preds, probs = {}, rng.dirichlet(np.ones(3), 12)
    for k, m in enumerate(models):
        preds[m] = [t if (i + k) % 5 else classes[(classes.index(t) + 1) % 3] for i, t in enumerate(truth)]
    model_json = {}
    for m in models:
        p = preds[m]
        conf = [[sum(1 for t, q in zip(truth, p) if t == ct and q == cp) for cp in classes] for ct in classes]
        hits = sum(conf[i][i] for i in range(3))
        recall = {c: conf[i][i] / sum(conf[i]) for i, c in enumerate(classes)}
        entry = {"n": 12, "accuracy": hits / 12, "accuracy_ci": list(wilson_interval(hits, 12)),
                 "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall,
                 "recall_ci": {c: list(wilson_interval(conf[i][i], sum(conf[i]))) for i, c in enumerate(classes)},
                 "confusion": conf}
        model_json[m] = {"repeats": [{"repeat": 0, "all": entry}]}
    metrics = {"task": "multiclass", "classes": list(classes), "primary_model": models[-1],
               "dataset": {"name": "folder", "n_images": 12}, "seed": 0,
               "settings": {"n_folds": 3, "repeats": 1}, "models": model_json}
    header = ["image", "label", "repeat", "fold", "n_cells", *(f"p_{c}" for c in classes),
              *(f"pred_{m}" for m in models), "pred"]
    rows = [[n, truth[i], 0, i % 3, 2, *(f"{v:.4f}" for v in probs[i]), *(preds[m][i] for m in models),
             preds[models[-1]][i]] for i, n in enumerate(names)]
    (run / "images.csv").write_text(_csv_text(header, rows))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


# --------------------------------------------------------------------------------------------------
# Helpers


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.styles: list[str] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        self._style = tag == "style"
        for k, v in attrs:
            if k in ("src", "href", "srcset", "poster", "data", "action") and v is not None:
                self.refs.append(v)
            if k == "style" and v:
                self.styles.append(v)

    def handle_data(self, data):
        if self._style:
            self.styles.append(data)

    def handle_endtag(self, tag):
        self._style = False


def assert_self_contained(text: str) -> None:
    for bad in ("http://", "https://", 'src="//', "href=\"//", "@import", "<script"):
        assert bad not in text, bad
    parser = _Refs()
    parser.feed(text)
    for ref in parser.refs:
        assert ref.startswith(("data:", "#")), ref
    for css in parser.styles:
        for url in re.findall(r"url\(([^)]*)\)", css):
            assert url.strip("'\" ").startswith("data:"), url


def section(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}">')
    return text[start:text.index("</section>", start)]


# --------------------------------------------------------------------------------------------------
# Tests


def test_binary_report_files_and_content(tmp_path):
    run = make_binary_run(tmp_path)
    files = write_report(run)
    assert isinstance(files, ReportFiles)
    assert files == ReportFiles(html=run / "report.html", markdown=run / "report.md")
    with pytest.raises(dataclasses.FrozenInstanceError):
        files.html = Path("x")  # type: ignore[misc]
    text = files.html.read_text(encoding="utf-8")
    md = files.markdown.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert_self_contained(text)
    # Every model, in the display order, in the table and in the Markdown.
    table = section(text, "models")
    positions = [table.index(f"<td>{LABELS[m]}</td>") for m in MODEL_ORDER]
    assert positions == sorted(positions)
    for m in MODEL_ORDER:
        assert f"| {LABELS[m]}" in md
    for title in ("Accuracy", "Sensitivity", "Specificity", "AUC", "Cell AUC", "Cell AUC (clean)"):
        assert f">{title}</th>" in table
    assert "Wilson" in table and "±" in table  # two repeats: spread and intervals
    assert 'class="num best"' in table
    # The winner is said in words.
    assert "Fused beats the best other model" in text and "Fused beats the best other model" in md
    # Curves, confusion matrices, stratum, FAB, timings, device, published figures.
    assert text.count("data:image/png;base64,") == 1
    assert "Fused ★" in section(text, "confusion")
    assert "Im034–108" in section(text, "stratum")
    fab = section(text, "fab")
    assert "historical morphological classification" in fab and "research only" in fab
    assert "large_cells" in fab and "40.0%" in fab
    timings = section(text, "timings")
    assert "fit_cnn" in timings and "tensorflow" in timings
    published = section(text, "published")
    for figure in ("96.43%", "96.57%", "92.8%", "28 test images", "not comparable one to one"):
        assert figure in published
    assert "not comparable one to one" in md
    assert not list(run.glob(".*.part"))  # atomic writes leave nothing behind


def test_md_numbers_are_aligned_and_rounded(tmp_path):
    md = write_report(make_binary_run(tmp_path, repeats=1)).markdown.read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Model | Accuracy"))
    sep = md.splitlines()[md.splitlines().index(header) + 1]
    assert sep.startswith("|---|---:|")
    # Percentages with one decimal, AUCs with three; no long floats anywhere.
    assert not re.search(r"\d\.\d{4,}", md)
    assert re.search(r"\d+\.\d%", md) and re.search(r"0\.\d{3}\b", md)


def test_fused_not_best_is_said_honestly(tmp_path):
    md = write_report(make_binary_run(tmp_path, fused_best=False)).markdown.read_text(encoding="utf-8")
    assert "Fused does not beat the best other model" in md


def test_thumbnails_from_data_dir_and_dataset_root(tmp_path):
    data = make_data_folder(tmp_path)
    run = make_binary_run(tmp_path, fused_best=False)
    # Without a data folder: a table of the misclassified images.
    text = write_report(run).html.read_text(encoding="utf-8")
    gallery = section(text, "errors")
    assert "data:image/jpeg" not in gallery and "im/Im0" in gallery and "pass data_dir" in gallery
    # With data_dir: overlay thumbnails coloured by a cell model (the fused one has no cell scores).
    text = write_report(run, data_dir=data).html.read_text(encoding="utf-8")
    gallery = section(text, "errors")
    n_wrong = gallery.count('class="card"')
    assert n_wrong >= 1 and gallery.count("data:image/jpeg;base64,") == n_wrong
    assert "baseline model's blast probability" in gallery
    assert_self_contained(text)
    # The data folder recorded in metrics.json is used when it exists.
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dataset"]["root"] = str(data)
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "data:image/jpeg;base64," in section(write_report(run).html.read_text(encoding="utf-8"), "errors")


def test_thumbnail_is_about_400_px_wide(tmp_path):
    import base64

    data = tmp_path / "big"
    (data / "im").mkdir(parents=True)
    for i in range(10):
        arr = np.full((600, 800, 3), (200, 150, 180), np.uint8)
        Image.fromarray(arr).save(data / "im" / f"Im{30 + i:03d}_{i % 2}.jpg")
    text = write_report(make_binary_run(tmp_path, fused_best=False), data_dir=data).html.read_text(encoding="utf-8")
    b64 = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", text).group(1)
    thumb = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert thumb.size == (400, 300) and thumb.format == "JPEG"


def test_out_dir(tmp_path):
    run = make_binary_run(tmp_path)
    files = write_report(run, out_dir=tmp_path / "elsewhere" / "reports")
    assert files.html.parent == tmp_path / "elsewhere" / "reports" and files.html.is_file() and files.markdown.is_file()
    assert not (run / "report.html").exists()


class _FailingFile:
    """A temporary file whose `write` or `close` fails (a full disk shows at either)."""

    def __init__(self, f, error, at):
        self._f, self._error, self._at = f, error, at

    def write(self, text):
        if self._at == "write":
            self._f.write(text[: len(text) // 2])
            raise self._error
        return self._f.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        if self._at == "close" and exc[0] is None:
            raise self._error


@pytest.mark.parametrize("at", ["write", "close"])
@pytest.mark.parametrize("failing_file", ["report.html", "report.md"])
@pytest.mark.parametrize(("error", "exit_code"), [(PermissionError(13, "Permission denied"), 2),
                                                  (OSError(30, "Read-only file system"), 2),
                                                  (OSError(28, "No space left on device"), 1)])
def test_a_report_that_cannot_be_written(tmp_path, monkeypatch, capsys, error, exit_code, failing_file, at):
    # Not ours to write: a usage error (2), as for other outputs; a full disk: the run failed (1), as in
    # classify and train. Either way one line naming the folder, and the earlier report pair is kept whole,
    # whichever of the two files failed, while being written or when closed (its last bytes flushed): never a
    # new report.html beside an old report.md, nor the other way round.
    from leukoseg import io as leukoseg_io
    from leukoseg.cli import main

    run = make_binary_run(tmp_path)
    (run / "report.html").write_text("earlier html")
    (run / "report.md").write_text("earlier md")
    real_open_temporary = leukoseg_io._open_temporary

    def failing(path, mode):
        tmp, f = real_open_temporary(path, mode)
        return tmp, (_FailingFile(f, error, at) if Path(path).name == failing_file else f)

    monkeypatch.setattr(leukoseg_io, "_open_temporary", failing)
    assert main(["report", str(run)]) == exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"leukoseg: error: {run}: cannot write the report ({error.strerror})"]
    assert (run / "report.html").read_text() == "earlier html" and (run / "report.md").read_text() == "earlier md"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("report") or p.suffix == ".part") == [
        "report.html", "report.md"]


def test_multiclass_report(tmp_path):
    run = make_multiclass_run(tmp_path, classes=("a", "b", "c<x>"))
    files = write_report(run)
    text = files.html.read_text(encoding="utf-8")
    md = files.markdown.read_text(encoding="utf-8")
    assert_self_contained(text)
    models = section(text, "models")
    assert ">Balanced accuracy</th>" in models and "Recall per class" in models
    assert "c&lt;x&gt;" in models and "c<x>" not in text  # class names are escaped
    for m in ("svm", "cnn", "fused"):
        assert f"<td>{LABELS[m]}</td>" in models
        assert f"<h3>{LABELS[m]}" in section(text, "confusion")
    assert section(text, "confusion").count("<table>") == 3
    assert 'id="stratum"' not in text  # no one-camera stratum for a folder data set
    assert "data:image/png;base64," in section(text, "curves")  # one-vs-rest from p_<class>
    assert "Balanced accuracy" in md and "### Recall per class" in md and "c<x>" in md
    assert "misclassified by Fused" in section(text, "errors")
    assert 'id="published"' not in text  # ALL-IDB1 figures are beside ALL-IDB1 runs only


def test_missing_optional_parts(tmp_path):
    """Old schema (like a run from before the CNN), no CSV files, nulls, no FAB/timings/device."""
    run = tmp_path / "old"
    run.mkdir()
    metrics = {"models": {
        "baseline": {"repeats": [{"repeat": 0, "all": {"n": 4, "accuracy": 0.75, "accuracy_ci": [0.3, 0.95],
                                                       "sensitivity": None, "auc": None}}]},
        "gknn": {"summary": {"all": {"accuracy": {"mean": 0.5, "std": 0.0}}}},
        "broken": "not a dict",
    }}
    (run / "metrics.json").write_text(json.dumps(metrics))
    files = write_report(run)
    text = files.html.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "<td>GkNN</td>" in text and "<td>Baseline</td>" in text and "broken" not in section(text, "models")
    assert "No timings recorded" in text and "No readable images.csv" in text
    assert 'id="fab"' not in text and 'id="stratum"' not in text
    assert "Baseline beats the best other model, GkNN" in files.markdown.read_text(encoding="utf-8")

    # images.csv of the old schema: p_baseline and pred only, no cells.csv.
    (run / "images.csv").write_text(_csv_text(
        ["image", "label", "repeat", "fold", "p_baseline", "pred", "n_cells", "n_blasts_predicted", "threshold"],
        [["im/Im001_1.jpg", 1, 0, 1, "0.9", 1, 3, 2, "0.5"], ["im/Im040_0.jpg", 0, 0, 2, "0.6", 1, 3, 1, "0.5"],
         ["im/Im041_0.jpg", 0, 0, 1, "", 0, 0, 0, "0.5"], ["im/Im002_1.jpg", 1, 0, 2, "nan", 0, 0, 0, "0.5"]]))
    text = write_report(run).html.read_text(encoding="utf-8")
    assert "data:image/png;base64," in section(text, "curves")
    gallery = section(text, "errors")
    assert "im/Im040_0.jpg" in gallery and "im/Im002_1.jpg" in gallery and "im/Im001_1.jpg" not in gallery


def test_odd_values_are_tolerated(tmp_path):
    """Strings, nulls, NaN-like values and wrong shapes anywhere in metrics.json: a report, not a crash."""
    run = tmp_path / "odd"
    run.mkdir()
    odd = {"n": "many", "accuracy": "0.9", "accuracy_ci": [0.1], "sensitivity": None, "specificity": "x",
           "auc": float("inf"), "confusion": [[1, 2], [3]]}
    metrics = {"task": "binary", "classes": None, "primary_model": "nonexistent",
               "dataset": ["not", "a", "dict"], "settings": "none", "timings_s": {"a": "slow", "total": None},
               "device": None, "fab": {"distribution": {"L1": "two"}, "settings": None},
               "models": {"svm": {"repeats": [{"all": odd, "one_camera": None}, "junk"], "summary": []},
                          "cnn": {"repeats": None, "summary": {"all": {"accuracy": {"mean": "n/a"}}}}}}
    (run / "metrics.json").write_text(json.dumps(metrics).replace("Infinity", "1e999"))
    (run / "images.csv").write_text("image,label,pred,p_svm\n../../etc/passwd,1,0,0.2\n,x,y,z\n"
                                    "im/a.jpg,0,,\nim/b.jpg,0,1,0.7,extra,cols\n")
    files = write_report(run, data_dir=tmp_path)
    text = files.html.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "<td>SVM</td>" in text and "<td>CNN</td>" in text
    assert "not a path inside the data folder" in section(text, "errors")


def test_a_csv_cut_short_or_missing_is_left_out_with_a_warning(tmp_path, caplog):
    """A run's CSV cut short (a disk full, a copy interrupted) would give figures no run gave: left out whole."""
    run = make_binary_run(tmp_path)
    path = run / "images.csv"
    full = path.read_text()
    lines = full.splitlines(keepends=True)
    cases = [
        (full[: full.index("\n", len(full) // 2) - 3], "cut short (row "),  # mid-row: fields missing
        (full[:-1], "cut short (no newline at its end)"),
        ("".join(lines[:-3]), f"{len(lines) - 4} rows where metrics.json counts {len(lines) - 1}"),
        (None, "missing"),
    ]
    for text, message in cases:
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="leukoseg.pipelines.report"):
            html = write_report(run).html.read_text(encoding="utf-8")
        assert "No readable images.csv" in section(html, "errors"), message
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and warned[0].startswith(f"{path}: {message}"), warned
        assert warned[0].endswith("left out of the report"), warned
    path.write_text(full)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="leukoseg.pipelines.report"):
        write_report(run)
    assert not caplog.records  # whole files: no warning


def test_unreadable_csv_is_left_out(tmp_path):
    run = make_binary_run(tmp_path)
    (run / "images.csv").write_bytes(b"\xff\xfe\x00garbage\x00")
    (run / "cells.csv").write_text("image,cell_id,x\nim/a.jpg,1,notanumber\n")
    text = write_report(run).html.read_text(encoding="utf-8")
    assert "No readable images.csv" in section(text, "errors") and "Fused ★" in section(text, "confusion")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no metrics.json"),
        ("{not json", "not valid JSON"),
        ('[1, 2]', "not hold a JSON object"),
        ('{"models": {}}', "no \"models\""),
        (b"\xff\xfe\xfa", "not UTF-8"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),  # a RecursionError in the JSON decoder
    ],
)
def test_bad_metrics_json_raises(tmp_path, content, reason):
    run = tmp_path / "run"
    run.mkdir()
    if isinstance(content, bytes):
        (run / "metrics.json").write_bytes(content)
    elif content is not None:
        (run / "metrics.json").write_text(content)
    with pytest.raises(LeukosegError) as err:
        write_report(run)
    assert err.value.path == str(run / "metrics.json")
    assert reason in err.value.reason and "\n" not in err.value.reason
    assert not (run / "report.html").exists()


def test_bad_run_and_data_folders_raise(tmp_path):
    with pytest.raises(LeukosegError, match="no such run folder"):
        write_report(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LeukosegError, match="not a folder") as err:
        write_report(tmp_path / "file")
    assert "`leukoseg classify --dataset`" in err.value.reason  # the command that writes run folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeukosegError, match="no metrics.json") as err:
        write_report(tmp_path / "empty")
    assert "`leukoseg classify --dataset`" in err.value.reason
    run = make_binary_run(tmp_path)
    with pytest.raises(LeukosegError, match="no such data folder") as err:
        write_report(run, data_dir=tmp_path / "nodata")
    assert err.value.path == str(tmp_path / "nodata")


def test_missing_images_in_data_folder_are_listed(tmp_path):
    data = make_data_folder(tmp_path, n_images=0)
    text = write_report(make_binary_run(tmp_path, fused_best=False), data_dir=data).html.read_text(encoding="utf-8")
    gallery = section(text, "errors")
    assert "no such file" in gallery and "data:image/jpeg" not in gallery


def test_report_is_deterministic(tmp_path):
    run = make_binary_run(tmp_path)
    a = write_report(run).html.read_bytes()
    b = write_report(run).html.read_bytes()
    assert a == b


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    data = make_data_folder(tmp_path)
    run = make_binary_run(tmp_path, fused_best=False, data_root=data)
    write_report(run)
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(CHECK_SCRIPT), str(run), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "console errors and failed loads: 0" in done.stdout
    assert "requests outside the file: 0" in done.stdout
    assert "dom complete: True" in done.stdout
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)


def test_mcnemar_pairs_the_decisions_on_the_same_images():
    from leukoseg.pipelines.report import _mcnemar, _Run

    # 12 images of repeat 0: model a right on all, b wrong on 6 of them; repeat 1 is ignored.
    rows = [{"repeat": "0", "label": "1", "pred_a": "1", "pred_b": "0" if i < 6 else "1"} for i in range(12)]
    rows += [{"repeat": "1", "label": "1", "pred_a": "0", "pred_b": "1"} for _ in range(5)]
    run = _Run(dir=Path("."), metrics={}, task="binary", classes=["0", "1"], models=["a", "b"], primary="a",
               images=rows, cells=None, data_dir=None, data_note=None)  # fmt: skip
    only_a, only_b, p = _mcnemar(run, "a", "b")
    assert (only_a, only_b) == (6, 0)
    assert p == pytest.approx(2 / 2**6, abs=1e-12)  # exact two-sided binomial: 2 * 0.5**6
    assert _mcnemar(run, "a", "a") == (0, 0, 1.0)


def test_spread_over_repeats_is_the_sample_standard_deviation():
    """Report and metrics.json agree: sample SD (ddof=1), 0 for one repeat (3 values: population SD is 18 % smaller)."""
    from leukoseg.pipelines.experiment import _summary
    from leukoseg.pipelines.report import _stat

    values = [0.95, 0.97, 1.0]
    expected = float(np.std(values, ddof=1))  # 0.02517
    stat = _stat(values)
    assert stat.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert stat.std == pytest.approx(expected, abs=1e-12)
    summary = _summary([{"all": {"accuracy": v, "n": 108}} for v in values])
    assert summary["all"]["accuracy"]["std"] == pytest.approx(expected, abs=1e-12)
    assert summary["all"]["accuracy"]["n_repeats"] == 3
    # One value has no spread: None (was 0.0, which a table prints as "+- 0.000").
    assert _stat([0.9]).std is None
    one = _summary([{"all": {"accuracy": 0.9, "n": 108}}])["all"]["accuracy"]
    assert one == {"mean": 0.9, "std": None, "n_repeats": 1}
    # A repeat without the figure (an AUC of one class) is left out of the mean, and the count says so.
    auc = _summary([{"all": {"auc": 0.9}}, {"all": {"auc": None}}])["all"]["auc"]
    assert auc == {"mean": 0.9, "std": None, "n_repeats": 1}


def test_inner_cell_auc_summary_leaves_out_folds_without_a_figure():
    """Per repeat the mean over the folds that have an inner AUC (a fold of one class has none); a repeat
    without any is None and left out of the mean and the sample SD."""
    from leukoseg.pipelines.experiment import _inner_summary

    nan = float("nan")
    out = _inner_summary(np.array([[0.9, 0.8, nan], [0.7, 0.9, 0.8], [nan, nan, nan]]))
    assert out["per_repeat"][:2] == pytest.approx([0.85, 0.8], abs=1e-12) and out["per_repeat"][2] is None
    assert out["mean"] == pytest.approx(0.825, abs=1e-12)
    assert out["std"] == pytest.approx(float(np.std([0.85, 0.8], ddof=1)), abs=1e-12)
    assert _inner_summary(np.array([[0.9, 0.7]])) == {"mean": pytest.approx(0.8, abs=1e-12), "std": None,
                                                     "per_repeat": [pytest.approx(0.8, abs=1e-12)]}


def test_verdict_claims_a_difference_only_when_the_paired_test_points_the_same_way(tmp_path):
    """The claim is of the mean over repeats, McNemar's test of repeat 0: a significant test the other way
    must not make the claim 'established'."""
    from leukoseg.pipelines.report import _load_run, _verdict

    n = 50
    labels = [i % 2 for i in range(n)]
    # Repeat 0: fused wrong on images 0-9, baseline on 10-11 (p = 0.039 for the baseline); repeat 1: fused
    # right on all, baseline wrong on 0-9. Mean accuracy: fused 0.90, baseline 0.88.
    wrong = {("fused", 0): set(range(10)), ("baseline", 0): {10, 11}, ("fused", 1): set(),
             ("baseline", 1): set(range(10))}  # fmt: skip

    def write(run: Path, wrong: dict) -> str:
        run.mkdir()
        header = ["image", "label", "repeat", "fold", "p_baseline", "pred_baseline", "p_fused", "pred_fused", "pred"]
        rows = [[f"im/Im{i + 34:03d}_{labels[i]}.jpg", labels[i], r, 0, 0.5, labels[i] ^ (i in wrong["baseline", r]),
                 0.5, labels[i] ^ (i in wrong["fused", r]), labels[i] ^ (i in wrong["fused", r])]
                for r in (0, 1) for i in range(n)]  # fmt: skip
        (run / "images.csv").write_text(_csv_text(header, rows))
        models = {m: {"repeats": [{"repeat": r, "all": {"n": n, "accuracy": 1 - len(wrong[m, r]) / n}}
                                  for r in (0, 1)]} for m in ("baseline", "fused")}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(
            {"task": "binary", "classes": ["0", "1"], "primary_model": "fused", "models": models}))
        return _verdict(_load_run(run, None))

    text = write(tmp_path / "against", wrong)
    assert "Fused beats the best other model, Baseline, by 2.0 points" in text
    assert "2 right only by Fused, 10 only by Baseline; McNemar's exact test p = 0.039" in text
    assert "in favour of Baseline" in text and "not established" in text
    assert "difference is established" not in text
    # The same counts the other way round: the test backs the mean, and the difference is established.
    swapped = {("fused", 0): {10, 11}, ("baseline", 0): set(range(10)), ("fused", 1): set(range(6)),
               ("baseline", 1): set()}  # fmt: skip
    text = write(tmp_path / "with", swapped)
    assert "Fused beats the best other model" in text
    assert "10 right only by Fused, 2 only by Baseline" in text
    assert "the difference is established at the 5 % level (on repeat 0)" in text


# --------------------------------------------------------------------------------------------------
# Cells where the model and the labels disagree


def _write_cells(run: Path, rows: list[list]) -> None:
    """Replace cells.csv: rows of (image, cell_id, x, y, repeat, label, p_blast_baseline).

    The rows are a hand-made selection, not one per cell and repeat: metrics.json then leaves the number of
    cells out, which the report would otherwise check the file against.
    """
    (run / "cells.csv").write_text(_csv_text(
        ["image", "cell_id", "x", "y", "repeat", "fold", "label", "p_blast_baseline"],
        [[im, cid, x, y, rep, 0, lab, p] for im, cid, x, y, rep, lab, p in rows]))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dataset"].pop("n_cells", None)
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_disputed_cells_counts_and_order(tmp_path):
    run = make_binary_run(tmp_path, repeats=2)
    # Image labels: Im030_0 healthy, Im031_1 ALL. Repeat 1 must be ignored (each cell once).
    _write_cells(run, [
        ["im/Im031_1.jpg", 1, 20, 30, 0, 1, "0.10"],   # blast missed
        ["im/Im031_1.jpg", 2, 60, 50, 0, 1, "0.90"],   # blast found
        ["im/Im031_1.jpg", 3, 100, 70, 0, 1, "0.49"],  # blast missed, just
        ["im/Im031_1.jpg", 4, 20, 90, 0, 0, "0.95"],   # unannotated cell of an ALL image, scored high
        ["im/Im031_1.jpg", 5, 40, 90, 0, 0, "0.20"],
        ["im/Im030_0.jpg", 1, 20, 30, 0, 0, "0.50"],   # healthy image, false positive at exactly 0.5
        ["im/Im030_0.jpg", 2, 60, 50, 0, 0, "0.30"],
        ["im/Im030_0.jpg", 3, 100, 70, 0, 0, ""],      # no score: left out
        ["im/Im030_0.jpg", 1, 20, 30, 1, 0, "0.99"],  # repeat 1: counted, not listed
        ["im/Im031_1.jpg", 1, 20, 30, 1, 1, "0.30"],
        ["im/Im031_1.jpg", 1, 20, 30, 2, 1, "0.30"],  # repeat 2: no other cell, left out
    ])
    files = write_report(run)
    part = section(files.html.read_text(encoding="utf-8"), "cells")
    rows = re.findall(r'<tr><td>([^<]+)</td><td class="num">([^<]+)</td><td class="num">([^<]+)</td>'
                      r'<td class="num">([^<]+)</td>', part)
    assert rows == [("cells labelled blast", "3 / 1", "2 / 1", "75.0%"),
                    ("other cells of ALL images", "2 / 0", "1 / 0", "50.0%"),
                    ("cells of healthy images", "2 / 1", "1 / 1", "66.7%")]
    assert ">Disagreeing (repeats 0, 1)</th>" in part and ">Share (pooled)</th>" in part
    assert "Baseline model against the cell labels" in part and "those of repeat 0, each cell once" in part
    # No data folder: the cells are listed, most disagreeing first, with the reason for no crops.
    assert "No crops: the run does not record its data folder" in part
    tables = part.split("<h3>")[1:]
    assert tables[0].startswith("Highest-scored cells labelled non-blast (2 shown)")
    assert re.findall(r'class="mono">([^<]+)</td><td class="num">(\d+)', tables[0]) == [
        ("im/Im031_1.jpg", "4"), ("im/Im030_0.jpg", "1")]
    assert tables[1].startswith("Lowest-scored cells labelled blast (2 shown)")
    assert re.findall(r'class="mono">([^<]+)</td><td class="num">(\d+)', tables[1]) == [
        ("im/Im031_1.jpg", "1"), ("im/Im031_1.jpg", "3")]
    md = files.markdown.read_text(encoding="utf-8")
    assert "| other cells of ALL images | 2 / 0 | 1 / 0 | 50.0% | probability 0.5 or more |" in md
    assert "| im/Im031_1.jpg | 4 | 20 | 90 | 0.950 |" in md


def test_disputed_cells_at_most_twelve_each(tmp_path):
    run = make_binary_run(tmp_path, repeats=1)
    # 20 blasts scored below 0.5 and 20 other cells above: all disagree, 12 of each are shown.
    _write_cells(run, [["im/Im031_1.jpg", i, 10, 10, 0, i % 2, f"{0.45 - i / 100 if i % 2 else 0.55 + i / 100:.2f}"]
                       for i in range(1, 41)])
    part = section(write_report(run).html.read_text(encoding="utf-8"), "cells")
    assert "(12 shown)" in part and part.count('<td class="mono">') == 24
    assert "repeat" not in part  # one repeat: nothing to say about repeats
    assert '<td>cells labelled blast</td><td class="num">20</td><td class="num">20</td>' in part


def test_disputed_cells_crops_are_centred_on_the_cell(tmp_path):
    data = tmp_path / "data"
    (data / "im").mkdir(parents=True)
    for name, (x, y) in (("Im031_1", (60, 50)), ("Im030_0", (0, 119))):  # the second at a corner
        arr = np.full((120, 160, 3), (230, 225, 235), np.uint8)
        arr[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = (200, 0, 0)
        Image.fromarray(arr).save(data / "im" / f"{name}.png")
    run = make_binary_run(tmp_path, repeats=1, data_root=data)
    _write_cells(run, [["im/Im031_1.png", 1, 60, 50, 0, 1, "0.1"], ["im/Im030_0.png", 1, 0, 119, 0, 0, "0.8"],
                       ["im/Im031_1.png", 2, 20, 20, 0, 0, "0.2"], ["im/Im099_1.png", 1, 5, 5, 0, 0, "0.9"]])
    part = section(write_report(run).html.read_text(encoding="utf-8"), "cells")
    import base64

    crops = re.findall(r'alt="cell (\d+) of ([^"]+)" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', part)
    assert [(c, n) for c, n, _ in crops] == [("1", "im/Im030_0.png"), ("1", "im/Im031_1.png")]
    for _, _, b64 in crops:
        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)
        assert crop.shape == (128, 128, 3)
        # The red square is at the centre (JPEG: tolerance 60 per channel), the rest is background.
        assert np.abs(crop[64, 64] - (200, 0, 0)).max() < 60
        assert np.abs(crop[20, 20] - (230, 225, 235)).max() < 60 or crop[20, 20].min() > 200
    # The missing image is listed instead of drawn.
    assert '<td class="mono">im/Im099_1.png</td>' in part
    # No image at all: every cell listed, with the reason.
    shutil.rmtree(data / "im")
    (data / "im").mkdir()
    part = section(write_report(run).html.read_text(encoding="utf-8"), "cells")
    assert "data:image/jpeg" not in part and "No crops: no such file" in part and part.count('class="mono"') == 3


def test_disputed_cells_only_for_binary_runs_with_cell_labels(tmp_path):
    text = write_report(make_multiclass_run(tmp_path / "m")).html.read_text(encoding="utf-8")
    assert 'id="cells"' not in text
    run = make_binary_run(tmp_path / "b")
    (run / "cells.csv").write_text("image,cell_id,x,y,repeat,p_blast_svm\nim/Im031_1.jpg,1,5,5,0,0.9\n")
    text = write_report(run).html.read_text(encoding="utf-8")
    assert 'id="cells"' not in text and "## Cells where" not in write_report(run).markdown.read_text()


def test_single_cell_runs_name_their_classes_blast_and_not_blast(tmp_path):
    """ALL-IDB2's images are cells: 'blast' / 'not blast', not 'ALL' / 'normal'; no label-audit section (its
    misclassified images are those cells)."""
    run = make_binary_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dataset"]["name"] = "all-idb2"
    (run / "metrics.json").write_text(json.dumps(metrics))
    md = write_report(run).markdown.read_text(encoding="utf-8")
    assert "| truth \\ predicted | not blast | blast |" in md
    assert "| normal |" not in md and "| ALL |" not in md
    assert "Cells where the model and the labels disagree" not in md
    smears = write_report(make_binary_run(tmp_path / "smears")).markdown.read_text(encoding="utf-8")
    assert "Cells where the model and the labels disagree" in smears and "| normal |" in smears


def test_report_says_how_many_images_took_the_fallback_scale(tmp_path):
    run = make_binary_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    report = write_report(run)
    assert "red-cell ruler" not in report.markdown.read_text(encoding="utf-8")  # older runs: no count, no claim
    for counts, phrase in (({"fallback": 3, "red cells": 105}, "3 images without a red-cell ruler"),
                           ({"fallback": 1}, "1 image without a red-cell ruler"), ({"red cells": 108}, None)):
        metrics["dataset"]["n_images_per_scale_source"] = counts
        (run / "metrics.json").write_text(json.dumps(metrics))
        report = write_report(run)
        for text in (report.markdown.read_text(encoding="utf-8"), report.html.read_text(encoding="utf-8")):
            assert (phrase in text) if phrase else ("red-cell ruler" not in text)


def test_fab_percentages_are_percent_points_even_below_one(tmp_path):
    """images.csv's fab_pct_* are percent points: 0.5 is 0.5 %, never 50 %."""
    run = make_binary_run(tmp_path, repeats=1)
    text = (run / "images.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    for r in rows:
        if r["fab_subtype"]:
            r["fab_pct_large_cells"], r["fab_pct_prominent_nucleoli"] = "0.5", "100.0"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (run / "images.csv").write_text(buf.getvalue())
    files = write_report(run)
    md, html = files.markdown.read_text(encoding="utf-8"), files.html.read_text(encoding="utf-8")
    for text in (md, html):
        assert "0.5%" in text and "100.0%" in text
        assert "50.0%" not in text


def test_fab_table_counts_the_images_of_one_repeat(tmp_path):
    """Over R repeats images.csv holds R rows per image: the FAB table counts images, not image-calls."""
    run = make_binary_run(tmp_path, repeats=3)
    rows = list(csv.DictReader((run / "images.csv").read_text().splitlines()))
    first = [r for r in rows if r["repeat"] == "0" and r["fab_subtype"]]
    expected = {s: sum(r["fab_subtype"] == s for r in first) for s in ("L1", "L2")}
    assert 0 < len(first) < sum(bool(r["fab_subtype"]) for r in rows)  # the other repeats would add calls
    md = write_report(run).markdown.read_text(encoding="utf-8")
    assert "| Subtype | Images (repeat 0) | Share |" in md
    for sub, n in expected.items():
        assert f"| {sub} | {n} |" in md
    html = write_report(run).html.read_text(encoding="utf-8")
    assert "Images (repeat 0)" in html
    one = make_binary_run(tmp_path / "one", repeats=1)
    assert "| Subtype | Images | Share |" in write_report(one).markdown.read_text(encoding="utf-8")
