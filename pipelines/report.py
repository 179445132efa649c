"""A self-contained HTML report and a Markdown summary of an experiment run folder.

:func:`write_report` reads what :func:`leukoseg.pipelines.experiment.run_experiment` wrote
(``metrics.json``, ``images.csv``, ``cells.csv``) and writes ``report.html`` and ``report.md``.

The HTML page needs nothing but itself: figures are base64 PNG (matplotlib, Agg canvas, no pyplot),
thumbnails base64 JPEG, styles inline, fonts the reader's own. It holds no link to anything outside
the file, so it opens offline, in a mail attachment or on a hospital network alike.

Only ``metrics.json`` is required. Every other part (a model, a stratum, a column, the CSV files,
the FAB section, timings, the data folder for the thumbnails) is optional: a part that is missing is
left out or said to be missing, never an error.
"""

from __future__ import annotations

import base64
import csv
import errno
import html
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from leukoseg.errors import LeukosegError

__all__ = ["MODEL_ORDER", "PUBLISHED", "ReportFiles", "load_metrics", "write_report"]

logger = logging.getLogger(__name__)

#: Models in the order the report shows them; any other model found in a run comes after, by name.
MODEL_ORDER = ("knn", "gknn", "svm", "baseline", "cnn", "fused")

_MODEL_LABEL = {"knn": "kNN", "gknn": "GkNN", "svm": "SVM", "baseline": "Baseline", "cnn": "CNN", "fused": "Fused"}
_MODEL_COLOUR = {"knn": "#8c8c8c", "gknn": "#1f77b4", "svm": "#2ca02c", "baseline": "#ff7f0e",
                 "cnn": "#9467bd", "fused": "#d62728"}  # fmt: skip
_EXTRA_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#8c564b", "#7f7f7f")

#: Published ALL-IDB1 figures, each under its own protocol (not comparable one to one with a run).
PUBLISHED = (
    ("Thanh et al. (2017)", "CNN", "96.43%", "accuracy on 28 test images of a single split"),
    ("Rajesh & Sathiamoorthy (2018)", "GkNN", "96.57%", "accuracy claimed on an unnamed split"),
    ("Later ALL-IDB1 study reusing Thanh et al.'s network", "CNN", "92.8%", "accuracy, its own protocol"),
)

_FAB_NOTE = ("FAB (French-American-British) is a historical morphological classification of ALL into "
             "L1, L2 and L3; it is shown here for research only, not for diagnosis.")

_BINARY_KEYS = (("accuracy", "Accuracy", True), ("sensitivity", "Sensitivity", True),
                ("specificity", "Specificity", True), ("auc", "AUC", False), ("cell_auc", "Cell AUC", False),
                ("cell_auc_clean", "Cell AUC (clean)", False),
                ("cell_auc_whole", "Cell AUC (whole cells)", False))  # fmt: skip

_THUMB_WIDTH = 400
_MAX_GALLERY = 36
_MAX_CELLS = 12  # cells shown per list of disagreements
_CROP_FRACTION = 0.13  # side of a cell crop, as a share of the image's shorter side
_CROP_PX = 128

# Blast probability -> colour of a cell's circle: cyan (0), yellow (0.5), red (1), all visible on a
# purple-and-pink stained smear.
_PROB_STOPS = ((0.0, (0, 190, 255)), (0.5, (255, 215, 0)), (1.0, (230, 0, 0)))


@dataclass(frozen=True)
class ReportFiles:
    """The files written by :func:`write_report`.

    Attributes
    ----------
    html : pathlib.Path
        The self-contained HTML report.
    markdown : pathlib.Path
        The Markdown summary.
    """

    html: Path
    markdown: Path


# --------------------------------------------------------------------------------------------------
# Reading the run folder


@dataclass
class _Run:
    dir: Path
    metrics: dict
    task: str
    classes: list[str]
    models: list[str]
    primary: str
    images: list[dict[str, str]] | None
    cells: list[dict[str, str]] | None
    data_dir: Path | None
    data_note: str | None
    repeats: int = 1


def load_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the ``metrics.json`` of a run folder.

    Parameters
    ----------
    run_dir : path
        Folder written by ``leukoseg classify --dataset``.

    Returns
    -------
    dict
        The parsed metrics: a JSON object with a non-empty ``"models"`` object.

    Raises
    ------
    LeukosegError
        Naming the folder when it is missing or not a folder, else the file: missing, unreadable, not UTF-8,
        not JSON, nested too deeply, or without results.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise LeukosegError(run_dir, "no such run folder")
    if not run_dir.is_dir():
        raise LeukosegError(run_dir, "not a folder; give the run folder that `leukoseg classify --dataset` wrote")
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise LeukosegError(path, "no metrics.json here; give the folder that `leukoseg classify --dataset` wrote")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LeukosegError(path, "metrics.json is not UTF-8 text (corrupt file?)") from None
    except OSError as exc:
        raise LeukosegError(path, f"cannot read metrics.json ({exc.strerror or exc})") from None
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LeukosegError(path, f"metrics.json is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                                  f"{exc.colno}); rerun the experiment") from None
    except RecursionError:  # arrays or objects nested thousands deep: no run writes that
        raise LeukosegError(path, "metrics.json is nested too deeply to be a run's metrics (corrupt file?); "
                                  "rerun the experiment") from None
    if not isinstance(metrics, dict):
        raise LeukosegError(path, "metrics.json does not hold a JSON object; rerun the experiment")
    models = metrics.get("models")
    if not isinstance(models, dict) or not models:
        raise LeukosegError(path, "metrics.json has no \"models\" results; was the experiment interrupted?")
    return metrics


def _read_csv(path: Path, expected_rows: int | None = None) -> list[dict[str, str]] | None:
    """The rows of a run's CSV file, or None (with a warning) when it is missing, unreadable or incomplete.

    A file cut short (a row with missing fields, no final newline, or fewer rows than the run's metrics
    say it wrote) is left out whole: a report from part of the rows would show figures that no run gave.
    """
    if not path.is_file():
        logger.warning("%s: missing, left out of the report", path)
        return None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        rows = list(csv.DictReader(io.StringIO(text), restkey="__extra__"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        logger.warning("%s: unreadable, left out of the report (%s)", path, exc)
        return None
    short = next((i for i, row in enumerate(rows) if None in row.values()), None)
    if short is not None or (text and not text.endswith("\n")):
        where = f"row {short + 2} has too few fields" if short is not None else "no newline at its end"
        logger.warning("%s: cut short (%s), left out of the report", path, where)
        return None
    if expected_rows is not None and len(rows) != expected_rows:
        logger.warning("%s: %d rows where metrics.json counts %d, left out of the report", path, len(rows),
                       expected_rows)  # fmt: skip
        return None
    return rows


def _rows_written(metrics: Mapping, count: str) -> int | None:
    """Rows the run wrote to a CSV: one per image (``count='n_images'``) or cell, and repeat; None if unknown."""
    n, repeats = _num(_dict(metrics.get("dataset")).get(count)), _num(_dict(metrics.get("settings")).get("repeats"))
    return int(n * repeats) if n is not None and repeats is not None else None


def _order_models(names) -> list[str]:
    known = [m for m in MODEL_ORDER if m in names]
    return known + sorted(m for m in names if m not in MODEL_ORDER)


def _load_run(run_dir: Path, data_dir) -> _Run:
    metrics = load_metrics(run_dir)  # checks the folder first
    models = _order_models([m for m, v in metrics["models"].items() if isinstance(v, dict)])
    if not models:
        raise LeukosegError(run_dir / "metrics.json", "no model results in metrics.json")
    task = "multiclass" if metrics.get("task") == "multiclass" else "binary"
    classes = [str(c) for c in metrics.get("classes") or (["0", "1"] if task == "binary" else [])]
    primary = metrics.get("primary_model")
    if primary not in models:
        primary = next((m for m in ("fused", "baseline") if m in models), models[0])
    images = _read_csv(run_dir / "images.csv", _rows_written(metrics, "n_images"))
    cells = _read_csv(run_dir / "cells.csv", _rows_written(metrics, "n_cells"))

    note = None
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise LeukosegError(data_dir, "no such data folder (needed for the thumbnails)")
    else:
        root = (metrics.get("dataset") or {}).get("root") if isinstance(metrics.get("dataset"), dict) else None
        if root and Path(root).is_dir():
            data_dir = Path(root)
        elif root:
            note = f"the data folder {root} is not here; pass data_dir to draw the thumbnails"
        else:
            note = "the run does not record its data folder; pass data_dir to draw the thumbnails"

    repeats = max((len(v.get("repeats") or []) for v in metrics["models"].values() if isinstance(v, dict)),
                  default=0) or 1
    if images:
        seen = {r.get("repeat") for r in images}
        repeats = max(repeats, len(seen))
    if not classes and task == "multiclass":
        found: set[str] = set()
        for row in images or []:
            found.update(x for x in (row.get("label"), row.get("pred")) if x)
        classes = sorted(found)
    return _Run(dir=run_dir, metrics=metrics, task=task, classes=classes, models=models, primary=primary,
                images=images, cells=cells, data_dir=data_dir, data_note=note, repeats=repeats)


# --------------------------------------------------------------------------------------------------
# Numbers


def _num(value: Any) -> float | None:
    """A finite float, or None for null, empty, non-numeric or non-finite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _wilson(p: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval at proportion `p` of `n` trials (`n` may be a mean over repeats)."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class _Stat:
    mean: float | None
    std: float | None
    n: int  # repeats with a value
    ci: tuple[float, float] | None = None


def _stat(values: Sequence[Any], *, cis: Sequence[Any] = (), denominators: Sequence[Any] = (),
          summary: Any = None) -> _Stat:
    """Mean and spread over repeats, with a 95 % Wilson interval where the schema allows one.

    One repeat: its own interval. Several: the Wilson interval at the mean proportion with the (mean)
    number of trials of one repeat, so that repeating the same images does not narrow it.
    """
    vals = [v for v in (_num(x) for x in values) if v is not None]
    std: float | None
    if vals:
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else None  # the sample SD, as metrics.json's summary
    elif isinstance(summary, Mapping) and (summary_mean := _num(summary.get("mean"))) is not None:
        mean, std = summary_mean, _num(summary.get("std"))
    else:
        return _Stat(None, None, 0)
    ci = None
    good = [(float(c[0]), float(c[1])) for c in cis
            if isinstance(c, Sequence) and len(c) == 2 and all(_num(x) is not None for x in c)]
    dens = [d for d in (_num(x) for x in denominators) if d is not None and d > 0]
    if len(vals) == 1 and len(good) == 1:
        ci = good[0]
    elif dens and 0.0 <= mean <= 1.0:
        ci = _wilson(mean, sum(dens) / len(dens))
    elif good:
        ci = (sum(c[0] for c in good) / len(good), sum(c[1] for c in good) / len(good))
    return _Stat(mean, std, len(vals), ci)


def _dict(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _confusion(entry: Mapping) -> list[list[float]] | None:
    c = entry.get("confusion") if isinstance(entry, Mapping) else None
    if not isinstance(c, list) or not c or not all(isinstance(r, list) and len(r) == len(c) for r in c):
        return None
    try:
        return [[float(x) for x in r] for r in c]
    except (TypeError, ValueError):
        return None


def _repeats(run: _Run, model: str) -> list[Mapping]:
    entry = run.metrics["models"].get(model) or {}
    reps = entry.get("repeats") if isinstance(entry, Mapping) else None
    return [r for r in reps or [] if isinstance(r, Mapping)]


def _strata(run: _Run) -> list[str]:
    found = ["all"]
    for m in run.models:
        if any(isinstance(r.get("one_camera"), Mapping) for r in _repeats(run, m)):
            found.append("one_camera")
            break
    return found


def _binary_stat(run: _Run, model: str, stratum: str, key: str) -> _Stat:
    reps = [r[stratum] for r in _repeats(run, model) if isinstance(r.get(stratum), Mapping)]
    summary = _dict(_dict(_dict(run.metrics["models"][model].get("summary")).get(stratum)).get(key))
    dens: list[Any] = []
    for r in reps:
        conf = _confusion(r)
        if key == "accuracy":
            dens.append(r.get("n") if r.get("n") is not None else (sum(map(sum, conf)) if conf else None))
        elif key == "sensitivity" and conf and len(conf) == 2:
            dens.append(sum(conf[1]))
        elif key == "specificity" and conf and len(conf) == 2:
            dens.append(sum(conf[0]))
    cis = [r.get(f"{key}_ci") for r in reps] if key in ("accuracy", "sensitivity", "specificity") else []
    return _stat([r.get(key) for r in reps], cis=cis, denominators=dens, summary=summary)


def _multi_stat(run: _Run, model: str, key: str, cls: str | None = None) -> _Stat:
    reps = [r["all"] for r in _repeats(run, model) if isinstance(r.get("all"), Mapping)]
    summary = _dict(_dict(_dict(run.metrics["models"][model].get("summary")).get("all")).get(key))
    if cls is None:
        dens = [r.get("n") for r in reps] if key == "accuracy" else []
        cis = [r.get(f"{key}_ci") for r in reps] if key == "accuracy" else []
        return _stat([r.get(key) for r in reps], cis=cis, denominators=dens,
                      summary=summary if isinstance(summary, Mapping) and "mean" in summary else None)
    values, cis, dens = [], [], []
    for r in reps:
        values.append((r.get(key) or {}).get(cls) if isinstance(r.get(key), Mapping) else None)
        cis.append((r.get(f"{key}_ci") or {}).get(cls) if isinstance(r.get(f"{key}_ci"), Mapping) else None)
        conf = _confusion(r)
        if conf and cls in run.classes and len(conf) == len(run.classes):
            dens.append(sum(conf[run.classes.index(cls)]))
    return _stat(values, cis=cis, denominators=dens)


def _summed_confusion(run: _Run, model: str) -> list[list[float]] | None:
    total = None
    for r in _repeats(run, model):
        c = _confusion(_dict(r.get("all")))
        if c is None:
            continue
        if total is None:
            total = [row[:] for row in c]
        elif len(c) == len(total):
            total = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(total, c)]
    if total is not None:
        return total
    # Not in metrics.json: count it from images.csv.
    col = f"pred_{model}" if run.images and f"pred_{model}" in run.images[0] else (
        "pred" if model == run.primary and run.images and "pred" in run.images[0] else None)
    if col is None or not run.classes:
        return None
    k = len(run.classes)
    index = {c: i for i, c in enumerate(run.classes)}
    total = [[0.0] * k for _ in range(k)]
    counted = 0
    for row in run.images or []:
        t, p = _class_of(run, row.get("label")), _class_of(run, row.get(col))
        if t in index and p in index:
            total[index[t]][index[p]] += 1
            counted += 1
    return total if counted else None


def _mcnemar(run: _Run, a: str, b: str) -> tuple[int, int, float] | None:
    """McNemar's exact test of two models' image decisions on the same images (the first repeat).

    Two models scored on the same images are paired: only the images that one gets right and the other
    wrong say which is better. Returns those two counts and the two-sided exact binomial p-value, or None
    when ``images.csv`` lacks the decisions.
    """
    if not run.images:
        return None
    cols = [f"pred_{m}" if f"pred_{m}" in run.images[0] else ("pred" if m == run.primary else "") for m in (a, b)]
    if not all(c in run.images[0] for c in cols) or "label" not in run.images[0]:
        return None
    first = run.images[0].get("repeat")
    only_a = only_b = 0
    for row in run.images:
        if row.get("repeat") != first:
            continue
        truth = _class_of(run, row.get("label"))
        right_a, right_b = (_class_of(run, row.get(c)) == truth for c in cols)
        only_a += right_a and not right_b
        only_b += right_b and not right_a
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return int(only_a), int(only_b), min(1.0, 2 * tail)


def _class_of(run: _Run, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if run.task == "binary":
        v = _num(value)
        return None if v is None else str(int(v))
    return str(value)


def _n_images(run: _Run) -> int | None:
    for m in run.models:
        for r in _repeats(run, m):
            n = _num(_dict(r.get("all")).get("n"))
            if n:
                return int(n)
    n = _num(_dict(run.metrics.get("dataset")).get("n_images"))
    return int(n) if n else None


# --------------------------------------------------------------------------------------------------
# Formatting


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _f3(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _fmt_main(s: _Stat, percent: bool) -> str:
    return _pct(s.mean) if percent else _f3(s.mean)


def _fmt_extra(s: _Stat, percent: bool, repeats: int) -> str:
    parts = []
    if s.mean is not None and repeats > 1 and s.std is not None:
        parts.append(f"± {100 * s.std:.1f}" if percent else f"± {s.std:.3f}")
    if s.ci is not None:
        lo, hi = s.ci
        parts.append(f"[{100 * lo:.1f}–{100 * hi:.1f}]" if percent else f"[{lo:.3f}–{hi:.3f}]")
    return " ".join(parts)


def _label(model: str) -> str:
    return _MODEL_LABEL.get(model, model)


def _colour(model: str, i: int = 0) -> str:
    return _MODEL_COLOUR.get(model, _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)])


def _fallback_fact(ds: Mapping) -> str | None:
    """'N images without a red-cell ruler (fallback scale)', when the run counted any."""
    n = _num(_dict(ds.get("n_images_per_scale_source")).get("fallback"))
    if not n:
        return None
    return f"{int(n)} image{'s' if n != 1 else ''} without a red-cell ruler (fallback scale)"


def _dataset_name(run: _Run) -> str:
    return str(_dict(run.metrics.get("dataset")).get("name", ""))


def _class_label(run: _Run, cls: str) -> str:
    if run.task == "binary":
        from leukoseg.datasets import CLASS_NAMES

        return CLASS_NAMES.get(_dataset_name(run), CLASS_NAMES["all-idb1"]).get(cls, cls)
    return cls


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _best(stats: Mapping[str, _Stat]) -> set[str]:
    """Models whose mean is the best of a column (ties included); none when fewer than two have one."""
    have = {m: s.mean for m, s in stats.items() if s.mean is not None}
    if len(have) < 2:
        return set()
    top = max(have.values())
    return {m for m, v in have.items() if v >= top - 1e-12}


# --------------------------------------------------------------------------------------------------
# The verdict: does the primary model beat the others?


def _verdict(run: _Run) -> str:
    primary = run.primary
    key, what = ("accuracy", "accuracy")
    if run.task == "multiclass":
        has_bal = any(_multi_stat(run, m, "balanced_accuracy").mean is not None for m in run.models)
        key, what = ("balanced_accuracy", "balanced accuracy") if has_bal else ("accuracy", "accuracy")

    def get(m: str) -> _Stat:
        return _binary_stat(run, m, "all", key) if run.task == "binary" else _multi_stat(run, m, key)

    p = get(primary)
    others = {m: get(m) for m in run.models if m != primary}
    others = {m: s for m, s in others.items() if s.mean is not None}
    if p.mean is None:
        return f"The primary model ({_label(primary)}) has no {what} in this run."
    if not others:
        return f"{_label(primary)} is the only model in this run: {what} {_pct(p.mean)}."
    aucs = {m: (_binary_stat(run, m, "all", "auc").mean if run.task == "binary" else None) or 0.0 for m in others}
    best = max(others, key=lambda m: (round(others[m].mean or 0.0, 12), aucs[m]))  # every mean is set (above)
    o = others[best]
    assert o.mean is not None
    diff = 100 * (p.mean - o.mean)
    n = _n_images(run)
    one = f"; one image is {100 / n:.1f} points" if n and key == "accuracy" else ""
    if abs(diff) < 0.05:
        text = (f"{_label(primary)} ties with the best other model, {_label(best)}: {what} "
                f"{_pct(p.mean)} for both{one.replace('; ', ' (')}{')' if one else ''}.")
    elif diff > 0:
        text = (f"{_label(primary)} beats the best other model, {_label(best)}, by {diff:.1f} points of {what} "
                f"({_pct(p.mean)} vs {_pct(o.mean)}{one}).")
    else:
        text = (f"{_label(primary)} does not beat the best other model: {_label(best)} is {-diff:.1f} points "
                f"ahead in {what} ({_pct(o.mean)} vs {_pct(p.mean)}{one}).")
    test = _mcnemar(run, primary, best) if abs(diff) >= 0.05 else None
    if test is not None:
        only_p, only_o, pval = test
        text += (f" Paired on the same images (repeat 0): {only_p} right only by {_label(primary)}, {only_o} only "
                 f"by {_label(best)}; McNemar's exact test p = {pval:.2g}")  # fmt: skip
        # The claim above is of the mean over repeats, the test of repeat 0: it backs the claim only when
        # repeat 0's discordant images favour the same model.
        same_way = only_p > only_o if diff > 0 else only_o > only_p
        if pval >= 0.05:
            text += ", so the difference is not established at the 5 % level."
        elif same_way:
            text += ", so the difference is established at the 5 % level (on repeat 0)."
        else:
            ahead = best if diff > 0 else primary
            text += (f", in favour of {_label(ahead)}, against the mean over repeats: the repeats disagree, and "
                     "the difference is not established.")
    elif p.ci and o.ci and abs(diff) >= 0.05:
        overlap = p.ci[0] <= o.ci[1] and o.ci[0] <= p.ci[1]
        if overlap:
            # Overlapping intervals do not show that two paired models are alike; without the decisions
            # (images.csv) there is no paired test to run.
            text += (" Their 95% intervals overlap, and images.csv lacks the decisions a paired test needs: "
                     "the run does not show a difference.")
    if run.task == "binary":
        pa, oa = _binary_stat(run, primary, "all", "auc"), _binary_stat(run, best, "all", "auc")
        if pa.mean is not None and oa.mean is not None:
            text += f" AUC {pa.mean:.3f} vs {oa.mean:.3f}."
    return text


# --------------------------------------------------------------------------------------------------
# Curves and figures


def _roc(labels: Sequence[int], scores: Sequence[float]):
    import numpy as np

    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    pos, neg = tps[-1], fps[-1]
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return fpr, tpr, auc, np.r_[0.0, recall], np.r_[precision[0], precision], ap


def _scores_by(run: _Run, column: str, positive: Callable[[dict], int | None]):
    labels, scores = [], []
    for row in run.images or []:
        s, y = _num(row.get(column)), positive(row)
        if s is not None and y is not None:
            labels.append(y)
            scores.append(s)
    if len(set(labels)) < 2:
        return None
    return labels, scores


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_aspect("equal")


def _curves_figure(curves: list[tuple[str, str, Any]], prevalence: float | None, title_note: str) -> str:
    """ROC (left) and precision-recall (right) curves; `curves` holds (label, colour, _roc output)."""
    fig = _new_figure(9.0, 4.3)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for label, colour, (fpr, tpr, auc, rec, prec, ap) in curves:
        ax_roc.plot(fpr, tpr, color=colour, lw=1.8, label=f"{label}  AUC {auc:.3f}", drawstyle="default")
        ax_pr.plot(rec, prec, color=colour, lw=1.8, label=f"{label}  AP {ap:.3f}", drawstyle="steps-post")
    ax_roc.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="#999999", lw=0.8, ls="--")
    ax_roc.set_xlabel("false positive rate (1 − specificity)")
    ax_roc.set_ylabel("true positive rate (sensitivity)")
    ax_pr.set_xlabel("recall (sensitivity)")
    ax_pr.set_ylabel("precision")
    ax_roc.set_title("ROC" + title_note, fontsize=10)
    ax_pr.set_title("Precision-recall" + title_note, fontsize=10)
    for ax in (ax_roc, ax_pr):
        _style_axes(ax)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8, frameon=False)
        ax.tick_params(labelsize=8)
    return _figure_png(fig)


def _binary_curves(run: _Run) -> tuple[str | None, list[tuple[str, float, float]]]:
    if not run.images:
        return None, []
    curves, rows = [], []

    def truth(row):
        v = _num(row.get("label"))
        return None if v is None else int(v == 1)

    for i, m in enumerate(run.models):
        data = _scores_by(run, f"p_{m}", truth)
        if data is None:
            continue
        r = _roc(*data)
        curves.append((_label(m), _colour(m, i), r))
        rows.append((m, r[2], r[5]))
    if not curves:
        return None, []
    labels = [truth(row) for row in run.images if truth(row) is not None]
    prevalence = sum(labels) / len(labels) if labels else None
    note = f" (pooled over {run.repeats} repeats)" if run.repeats > 1 else ""
    return _curves_figure(curves, prevalence, note), rows


def _multiclass_curves(run: _Run) -> str | None:
    if not run.images:
        return None
    curves = []
    for i, cls in enumerate(run.classes):
        data = _scores_by(run, f"p_{cls}", lambda row, c=cls: None if not row.get("label") else  # type: ignore[misc]
                          int(row.get("label") == c))  # (mypy cannot infer a lambda with a default argument)
        if data is not None:
            curves.append((cls, _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] if i >= 6 else
                           ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")[i], _roc(*data)))
    if not curves:
        return None
    note = f" (one vs rest, {_label(run.primary)})"
    return _curves_figure(curves, None, note)


# --------------------------------------------------------------------------------------------------
# Misclassified images and their thumbnails


@dataclass
class _Miss:
    image: str
    truth: str
    pred: str
    score: float | None
    threshold: float | None
    wrong: int
    seen: int
    repeat: str | None
    n_cells: str
    fab: str
    thumb: str | None = None
    thumb_note: str | None = None


def _misclassified(run: _Run) -> list[_Miss]:
    if not run.images or "label" not in run.images[0]:
        return []
    pred_col = "pred" if "pred" in run.images[0] else f"pred_{run.primary}"
    if pred_col not in run.images[0]:
        return []
    by_image: dict[str, list[dict]] = {}
    for row in run.images:
        by_image.setdefault(row.get("image") or "", []).append(row)
    out = []
    for name, rows in by_image.items():
        wrong = [r for r in rows if _class_of(run, r.get("label")) is not None
                 and _class_of(run, r.get(pred_col)) is not None
                 and _class_of(run, r.get("label")) != _class_of(run, r.get(pred_col))]
        if not wrong:
            continue
        first = wrong[0]
        if run.task == "binary":
            score = _num(first.get(f"p_{run.primary}"))
        else:
            score = _num(first.get(f"p_{first.get(pred_col)}"))
        out.append(_Miss(image=name, truth=_class_of(run, first.get("label")) or "",
                         pred=_class_of(run, first.get(pred_col)) or "", score=score,
                         threshold=_num(first.get("threshold")), wrong=len(wrong), seen=len(rows),
                         repeat=first.get("repeat"), n_cells=first.get("n_cells") or "",
                         fab=first.get("fab_subtype", "") or ""))

    def how_wrong(m: _Miss) -> tuple:
        margin = abs(m.score - m.threshold) if m.score is not None and m.threshold is not None else 0.0
        return (-m.wrong, -margin, m.image)

    return sorted(out, key=how_wrong)


def _cell_prob_column(run: _Run) -> str | None:
    if not run.cells:
        return None
    cols = [c for c in run.cells[0] if c.startswith("p_blast_")]
    for c in (f"p_blast_{run.primary}", "p_blast_baseline"):
        if c in cols:
            return c
    return cols[0] if cols else None


def _prob_colour(p: float | None) -> tuple[int, int, int]:
    if p is None:
        return (255, 255, 255)
    p = min(max(p, 0.0), 1.0)
    for (p0, c0), (p1, c1) in zip(_PROB_STOPS, _PROB_STOPS[1:]):
        if p <= p1:
            t = (p - p0) / (p1 - p0)
            return cast(tuple[int, int, int], tuple(int(round(a + t * (b - a))) for a, b in zip(c0, c1)))
    return _PROB_STOPS[-1][1]


def _read_data_image(data_dir: Path, name: str, what: str):
    """The image at `name` (relative to `data_dir`) and None, or None and why it cannot be read."""
    from leukoseg.io import read_image

    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        return None, "not a path inside the data folder"
    try:
        return read_image(data_dir / rel), None
    except LeukosegError as exc:
        logger.warning("%s left out: %s", what, exc)
        return None, exc.reason


def _thumbnails(run: _Run, misses: list[_Miss]) -> None:
    """Fill in the overlay thumbnail of the first misclassified images (at most _MAX_GALLERY)."""
    if run.data_dir is None:
        return
    import cv2
    import numpy as np

    prob_col = _cell_prob_column(run)
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in run.cells or []:
        cells.setdefault((row.get("image") or "", row.get("repeat") or ""), []).append(row)
    for miss in misses[:_MAX_GALLERY]:
        image, miss.thumb_note = _read_data_image(run.data_dir, miss.image, "thumbnail")
        if image is None:
            continue
        h, w = image.shape[:2]
        scale = min(1.0, _THUMB_WIDTH / w)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        thumb = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
        thumb = np.ascontiguousarray(thumb)
        radius = max(5, round(0.028 * tw))
        for row in cells.get((miss.image, miss.repeat or ""), []):
            x, y = _num(row.get("x")), _num(row.get("y"))
            if x is None or y is None:
                continue
            p = _num(row.get(prob_col)) if prob_col else None
            centre = (int(round(x * scale)), int(round(y * scale)))
            thick = 3 if p is not None and p >= 0.5 else 2
            cv2.circle(thumb, centre, radius, (0, 0, 0), thick + 2, cv2.LINE_AA)
            cv2.circle(thumb, centre, radius, _prob_colour(p), thick, cv2.LINE_AA)
        ok, buf = cv2.imencode(".jpg", thumb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 82])
        if ok:
            miss.thumb = base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------------------------------
# Cells where the model and the labels disagree


@dataclass
class _CellCard:
    image: str
    cell_id: str
    x: float
    y: float
    p: float
    crop: str | None = None


@dataclass
class _Disputed:
    column: str
    repeats: list[str]  # the repeats counted, in order; the cells listed are those of the first
    # (kind of cell, what disagreeing means, [(cells, disagreeing) per repeat])
    counts: list[tuple[str, str, list[tuple[int, int]]]]
    high_negatives: list[_CellCard]
    low_positives: list[_CellCard]
    note: str | None = None  # why there are no crops

    def lists(self) -> tuple[tuple[str, list[_CellCard]], ...]:
        """The two lists of cells shown, with their titles."""
        return (("Highest-scored cells labelled non-blast", self.high_negatives),
                ("Lowest-scored cells labelled blast", self.low_positives))

    def row(self, counts: list[tuple[int, int]]) -> tuple[str, str, str]:
        """Cells, disagreeing and share as shown: the repeats' counts joined by " / " (the number of cells once
        when every repeat has the same), and the share pooled over repeats."""
        cells = [n for n, _ in counts]
        return (" / ".join(str(n) for n in (cells if len(set(cells)) > 1 else cells[:1])),
                " / ".join(str(k) for _, k in counts),
                f"{sum(k for _, k in counts) / sum(n for n, _ in counts):.1%}")


_CELL_KINDS = (("blast", "cells labelled blast", "probability below 0.5"),
               ("other_all", "other cells of ALL images", "probability 0.5 or more"),
               ("healthy", "cells of healthy images", "probability 0.5 or more"),
               ("other", "other cells labelled non-blast", "probability 0.5 or more"))


def _disputed(run: _Run) -> _Disputed | None:
    """The cells whose out-of-fold blast probability disagrees with their label: counts per repeat, and the
    most disagreeing cells of the first repeat (every cell is scored once per repeat, so one repeat lists each
    cell once). Binary runs of smears with cell labels only.
    """
    column = _cell_prob_column(run)
    if run.task != "binary" or not run.cells or column is None or "label" not in run.cells[0]:
        return None
    if _dataset_name(run) == "all-idb2":  # one cell per image: its misclassified images are these cells
        return None
    image_label = {r.get("image") or "": _class_of(run, r.get("label")) for r in run.images or []}
    by_repeat: dict[str, dict[str, list[_CellCard]]] = {}
    for row in run.cells:
        p, label = _num(row.get(column)), _class_of(run, row.get("label"))
        x, y = _num(row.get("x")), _num(row.get("y"))
        if p is None or label is None or x is None or y is None:
            continue
        card = _CellCard(image=row.get("image") or "", cell_id=row.get("cell_id") or "", x=x, y=y, p=p)
        kind = "blast" if label == "1" else {"1": "other_all", "0": "healthy"}.get(
            image_label.get(card.image) or "", "other")
        by_repeat.setdefault(row.get("repeat") or "", {}).setdefault(kind, []).append(card)
    # Repeats in numeric order; only those with both a blast and another cell count.
    repeats = sorted((r for r, g in by_repeat.items() if "blast" in g and len(g) > 1),
                     key=lambda v: (_num(v) is None, _num(v) or 0, v))
    if not repeats:
        return None
    counts = []
    for kind, title, what in _CELL_KINDS:
        per_repeat = []
        for r in repeats:
            cards = by_repeat[r].get(kind, [])
            wrong = sum(c.p < 0.5 for c in cards) if kind == "blast" else sum(c.p >= 0.5 for c in cards)
            per_repeat.append((len(cards), wrong))
        if any(n for n, _ in per_repeat):
            counts.append((title, what, per_repeat))
    first = by_repeat[repeats[0]]
    negatives = [c for kind, cards in first.items() if kind != "blast" for c in cards if c.p >= 0.5]
    positives = [c for c in first["blast"] if c.p < 0.5]
    return _Disputed(column=column, repeats=repeats, counts=counts,
                     high_negatives=sorted(negatives, key=lambda c: (-c.p, c.image, c.cell_id))[:_MAX_CELLS],
                     low_positives=sorted(positives, key=lambda c: (c.p, c.image, c.cell_id))[:_MAX_CELLS])


def _cell_crops(run: _Run, disputed: _Disputed) -> None:
    """Fill in a crop centred on each listed cell: a square of _CROP_FRACTION of the image's shorter side."""
    if run.data_dir is None:
        disputed.note = run.data_note
        return
    import cv2
    import numpy as np

    by_image: dict[str, list[_CellCard]] = {}
    for _, cards in disputed.lists():
        for card in cards:
            by_image.setdefault(card.image, []).append(card)
    for name, cards in sorted(by_image.items()):
        image, why = _read_data_image(run.data_dir, name, "cell crops")
        if image is None:
            disputed.note = disputed.note or why
            continue
        h, w = image.shape[:2]
        half = max(8, round(_CROP_FRACTION * min(h, w) / 2))
        # Pad with white (the slide's background, roughly) so that a cell near the border stays centred.
        padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        for card in cards:
            cx, cy = int(round(card.x)), int(round(card.y))
            if not (0 <= cx < w and 0 <= cy < h):
                continue
            crop = padded[cy:cy + 2 * half + 1, cx:cx + 2 * half + 1]
            crop = np.ascontiguousarray(cv2.resize(crop, (_CROP_PX, _CROP_PX), interpolation=cv2.INTER_AREA))
            # Ticks at the middle of each side point at the cell without covering it.
            c, t = _CROP_PX // 2, _CROP_PX // 10
            for p0, p1 in (((c, 0), (c, t)), ((c, _CROP_PX - 1), (c, _CROP_PX - 1 - t)),
                           ((0, c), (t, c)), ((_CROP_PX - 1, c), (_CROP_PX - 1 - t, c))):
                cv2.line(crop, p0, p1, (0, 0, 0), 2, cv2.LINE_AA)
            ok, buf = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok:
                card.crop = base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------------------------------
# HTML


_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa; --accent: #0b5cad;
        --best: #dff3e4; --warn: #fff4d6; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5; font-size: 15px;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 1.25em; margin: 40px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02em; margin: 22px 0 8px; }
p { margin: 8px 0; }
.subtitle { color: var(--muted); margin: 0 0 18px; }
nav { font-size: 0.9em; margin: 0 0 18px; color: var(--muted); display: flex; flex-wrap: wrap; row-gap: 2px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
.summary { border: 1px solid #b6d4f2; border-left: 5px solid var(--accent); background: #f2f8fe;
           border-radius: 6px; padding: 16px 20px; }
.summary .verdict { font-size: 1.08em; font-weight: 600; margin: 4px 0 12px; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0 6px; }
.kpi { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 140px; }
.kpi .v { font-size: 1.45em; font-weight: 650; font-variant-numeric: tabular-nums; }
.kpi .k { color: var(--muted); font-size: 0.82em; }
.kpi .c { color: var(--muted); font-size: 0.78em; font-variant-numeric: tabular-nums; }
.facts { color: var(--muted); font-size: 0.9em; margin-top: 8px; }
table { border-collapse: collapse; margin: 8px 0 6px; font-size: 0.93em; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { white-space: nowrap; }
tbody td:first-child { white-space: nowrap; }
table.wide th, table.wide td { padding: 6px 8px; }
thead th { border-bottom: 2px solid #adb5bd; text-align: left; font-weight: 600; background: var(--soft); }
thead th.num, td.num { text-align: right; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num .x { display: block; color: var(--muted); font-size: 0.8em; }
td.best { background: var(--best); font-weight: 650; }
td.best .x { font-weight: 400; }
tr.primary td:first-child { font-weight: 650; }
tr.primary td:first-child::after { content: " ★"; color: var(--accent); }
th.group { text-align: center; border-bottom: 1px solid #adb5bd; }
.note { color: var(--muted); font-size: 0.86em; max-width: 900px; }
.callout { background: var(--warn); border: 1px solid #f0d58a; border-radius: 6px; padding: 8px 12px;
           font-size: 0.92em; max-width: 900px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.86em; }
.cms { display: flex; flex-wrap: wrap; gap: 22px; }
.cm table { margin: 4px 0; }
.cm td, .cm th { text-align: center; padding: 6px 10px; min-width: 56px; }
.cm td { font-variant-numeric: tabular-nums; border: 1px solid #fff; }
.cm .corner { background: none; border: none; color: var(--muted); font-size: 0.8em; text-align: right; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: #fff; }
.card img { display: block; width: 100%; height: auto; }
.card .meta { padding: 8px 10px; font-size: 0.86em; }
.card .name { font-weight: 600; word-break: break-all; }
.cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 10px; }
.tag { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 0.85em; font-weight: 600; }
.tag.fn { background: #fde2e1; color: #8a1c14; }
.tag.fp { background: #fff0c2; color: #7a5200; }
.legend { display: inline-flex; align-items: center; gap: 8px; font-size: 0.86em; color: var(--muted); }
.ramp { display: inline-block; width: 160px; height: 12px; border-radius: 3px; border: 1px solid #999;
        background: linear-gradient(to right, rgb(0,190,255), rgb(255,215,0), rgb(230,0,0)); }
.bar { display: inline-block; height: 10px; background: #8fb8e3; border-radius: 2px; vertical-align: middle; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace;
              font-size: 0.88em; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.82em; border-top: 1px solid var(--line);
         padding-top: 10px; }
@media print { nav { display: none; } main { max-width: none; padding: 0; } }
"""


def _stat_cell(s: _Stat, percent: bool, repeats: int, best: bool) -> str:
    extra = _fmt_extra(s, percent, repeats)
    cls = "num best" if best else "num"
    x = f'<span class="x">{_esc(extra)}</span>' if extra else ""
    return f'<td class="{cls}">{_esc(_fmt_main(s, percent))}{x}</td>'


def _model_row_start(run: _Run, m: str) -> str:
    cls = ' class="primary"' if m == run.primary else ""
    return f"<tr{cls}><td>{_esc(_label(m))}</td>"


def _binary_table(run: _Run, stratum: str) -> tuple[str, list[tuple[str, str, bool]]]:
    stats = {key: {m: _binary_stat(run, m, stratum, key) for m in run.models} for key, _, _ in _BINARY_KEYS}
    keys = [(k, t, pc) for k, t, pc in _BINARY_KEYS if any(s.mean is not None for s in stats[k].values())]
    head = "".join(f'<th class="num">{_esc(t)}</th>' for _, t, _ in keys)
    rows = []
    for m in run.models:
        cells = "".join(_stat_cell(stats[k][m], pc, run.repeats, m in _best(stats[k])) for k, _, pc in keys)
        rows.append(_model_row_start(run, m) + cells + "</tr>")
    table = f"<table><thead><tr><th>Model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return table, keys


def _strata_table(run: _Run) -> str:
    keys = [("accuracy", "Accuracy", True), ("sensitivity", "Sensitivity", True),
            ("specificity", "Specificity", True), ("auc", "AUC", False)]  # fmt: skip
    n = {}
    for st in ("all", "one_camera"):
        for m in run.models:
            for r in _repeats(run, m):
                v = _num(_dict(r.get(st)).get("n"))
                if v and st not in n:
                    n[st] = int(v)
    head1 = "".join(f'<th class="group" colspan="2">{t}</th>' for _, t, _ in keys)
    n_all = f" ({n['all']})" if "all" in n else ""
    n_one = f" ({n['one_camera']})" if "one_camera" in n else ""
    sub = f'<th class="num">all{n_all}</th><th class="num">Im034–108{n_one}</th>'
    head2 = sub * len(keys)
    stats = {(k, st): {m: _binary_stat(run, m, st, k) for m in run.models}
             for k, _, _ in keys for st in ("all", "one_camera")}
    rows = []
    for m in run.models:
        cells = "".join(_stat_cell(stats[(k, st)][m], pc, run.repeats, m in _best(stats[(k, st)]))
                        for k, _, pc in keys for st in ("all", "one_camera"))
        rows.append(_model_row_start(run, m) + cells + "</tr>")
    return (f'<table class="wide"><thead><tr><th rowspan="2">Model</th>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _multiclass_tables(run: _Run) -> str:
    keys = [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy")]
    stats = {k: {m: _multi_stat(run, m, k) for m in run.models} for k, _ in keys}
    head = "".join(f'<th class="num">{t}</th>' for _, t in keys)
    rows = [_model_row_start(run, m) + "".join(_stat_cell(stats[k][m], True, run.repeats, m in _best(stats[k]))
                                               for k, _ in keys) + "</tr>" for m in run.models]
    out = [f"<table><thead><tr><th>Model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"]
    rec = {c: {m: _multi_stat(run, m, "recall", c) for m in run.models} for c in run.classes}
    if any(s.mean is not None for c in rec for s in rec[c].values()):
        head = "".join(f'<th class="num">{_esc(c)}</th>' for c in run.classes)
        rows = [_model_row_start(run, m) + "".join(_stat_cell(rec[c][m], True, run.repeats, m in _best(rec[c]))
                                                   for c in run.classes) + "</tr>" for m in run.models]
        out.append("<h3>Recall per class</h3>")
        out.append(f"<table><thead><tr><th>Model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(out)


def _confusion_html(run: _Run, model: str, matrix: list[list[float]]) -> str:
    names = [_class_label(run, c) for c in run.classes] if len(run.classes) == len(matrix) else [
        str(i) for i in range(len(matrix))]
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1.0
        tds = []
        for j, v in enumerate(row):
            share = v / total
            if i == j:
                bg = f"rgba(44,160,44,{0.12 + 0.6 * share:.2f})"
            else:
                bg = f"rgba(214,39,40,{0.06 + 0.7 * share:.2f})" if v else "#fafafa"
            tds.append(f'<td style="background:{bg}" title="{share:.1%} of row">{v:g}</td>')
        rows.append(f"<tr><th>{_esc(names[i])}</th>{''.join(tds)}</tr>")
    star = " ★" if model == run.primary else ""
    return (f'<div class="cm"><h3>{_esc(_label(model))}{star}</h3><table><thead><tr>'
            f'<th class="corner">truth ↓ / predicted →</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _kv_table(mapping: Mapping, *, numeric: bool = False) -> str:
    rows = []
    for k, v in mapping.items():
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        cls = ' class="num"' if numeric else ""
        rows.append(f"<tr><td>{_esc(k)}</td><td{cls}><span class=\"mono\">{_esc(text)}</span></td></tr>")
    return f"<table><tbody>{''.join(rows)}</tbody></table>"


def _fab_data(run: _Run) -> dict | None:
    fab = run.metrics.get("fab") if isinstance(run.metrics.get("fab"), Mapping) else None
    cols = [c for c in (run.images[0] if run.images else {}) if c.startswith("fab_pct_")]
    has_col = bool(run.images and "fab_subtype" in run.images[0])
    if fab is None and not has_col:
        return None
    # One repeat's images (the first): over all repeats the counts would be image-calls, each image up to R times.
    images = run.images or []
    repeats = sorted({(row.get("repeat") or "").strip() for row in images}, key=lambda r: (_num(r) is None, _num(r)))
    first = repeats[0] if repeats else ""
    images = [row for row in images if (row.get("repeat") or "").strip() == first]
    dist = {}
    stored = fab and next((fab[k] for k in ("distribution_repeat0", "distribution") if k in fab), None)
    if not has_col and isinstance(stored, Mapping):
        dist = {str(k): _num(v) or 0 for k, v in stored.items()}
    rows_by: dict[str, list[dict[str, str]]] = {}
    for row in images:
        sub = (row.get("fab_subtype") or "").strip()
        if sub:
            rows_by.setdefault(sub, []).append(row)
    if not dist:
        dist = {k: len(v) for k, v in sorted(rows_by.items())}
    crit: dict[str, dict[str, float | None]] = {}
    for sub, rows in rows_by.items():
        crit[sub] = {}
        for c in cols:
            vals = [v for v in (_num(r.get(c)) for r in rows) if v is not None]
            crit[sub][c[len("fab_pct_"):]] = sum(vals) / len(vals) if vals else None
    scores = {sub: [v for v in (_num(r.get("fab_score")) for r in rows) if v is not None]
              for sub, rows in rows_by.items()}
    extra = {k: v for k, v in (fab or {}).items() if k not in ("distribution", "distribution_repeat0", "settings")}
    return {"distribution": dist, "criteria": [c[len("fab_pct_"):] for c in cols], "pct": crit,
            "scores": scores, "settings": (fab or {}).get("settings"), "extra": extra,
            "images_head": f"Images (repeat {first})" if len(repeats) > 1 else "Images"}


def _pct_value(v: float | None) -> str:
    """A criterion percentage, stored in percent points (``fab_pct_*``: 0.2 is 0.2 %, not 20 %)."""
    if v is None:
        return "–"
    return f"{v:.1f}%"


def _html(run: _Run, misses: list[_Miss], curves_png: str | None, multi_png: str | None,
          disputed: _Disputed | None = None) -> str:
    from leukoseg._version import __version__

    m = run.metrics
    ds = _dict(m.get("dataset"))
    settings = _dict(m.get("settings"))
    primary = run.primary
    sections: list[tuple[str, str, str]] = []  # (id, title, body)

    # Summary box.
    if run.task == "binary":
        kpis = [(k, t, pc, _binary_stat(run, primary, "all", k)) for k, t, pc in _BINARY_KEYS[:4]]
    else:
        kpis = [("accuracy", "Accuracy", True, _multi_stat(run, primary, "accuracy")),
                ("balanced_accuracy", "Balanced accuracy", True, _multi_stat(run, primary, "balanced_accuracy"))]
    kpi_html = []
    for _, title, pc, s in kpis:
        if s.mean is None:
            continue
        ci = f'<div class="c">95% CI {_esc(_fmt_extra(_Stat(None, None, 0, s.ci), pc, 1))}</div>' if s.ci else ""
        kpi_html.append(f'<div class="kpi"><div class="k">{_esc(title)}</div>'
                        f'<div class="v">{_esc(_fmt_main(s, pc))}</div>{ci}</div>')
    n_folds, reps = settings.get("n_folds"), settings.get("repeats", run.repeats)
    facts = []
    if ds.get("name"):
        facts.append(f"data set <b>{_esc(ds['name'])}</b>")
    if ds.get("n_images") is not None:
        facts.append(f"{_esc(ds['n_images'])} images")
    if ds.get("n_cells") is not None:
        facts.append(f"{_esc(ds['n_cells'])} cells")
    if fallback := _fallback_fact(ds):
        facts.append(_esc(fallback))
    if n_folds:
        facts.append(f"{_esc(n_folds)}-fold cross-validation × {_esc(reps)} repeat{'s' if reps != 1 else ''}, "
                     "folds grouped by image")
    if m.get("seed") is not None:
        facts.append(f"seed {_esc(m['seed'])}")
    classes = f" (multiclass, classes {_esc(', '.join(run.classes))})" if run.task == "multiclass" else ""
    summary = (f'<div class="summary"><div class="k">Primary model: <b>{_esc(_label(primary))}</b>{classes}'
               f'</div><div class="verdict">{_esc(_verdict(run))}</div>'
               f'<div class="kpis">{"".join(kpi_html)}</div><div class="facts">{" · ".join(facts)}</div></div>')

    # Models side by side.
    if run.task == "binary":
        table, keys = _binary_table(run, "all")
        has_cell = any(k.startswith("cell_auc") for k, _, _ in keys)
        body = table + (
            '<p class="note">Image level unless marked “cell”. Each cell: the mean over '
            f'{run.repeats} repeat{"s" if run.repeats != 1 else ""}'
            + (", ± the standard deviation across repeats (in points)" if run.repeats > 1 else "")
            + ", and the 95% Wilson score interval in brackets"
            + (" (at the mean, with the images of one repeat)" if run.repeats > 1 else "")
            + ". Green: the best mean of the column. ★: the primary model, whose decisions the gallery shows."
            + (" Cell AUC: blast vs other cells of the test images; clean: blasts vs the cells of healthy "
               "images only (no unannotated blasts among the negatives)." if has_cell else "")
            + "</p>")
    else:
        body = _multiclass_tables(run) + (
            f'<p class="note">Mean over {run.repeats} repeat{"s" if run.repeats != 1 else ""}'
            + (" ± the standard deviation (points)" if run.repeats > 1 else "")
            + ", 95% Wilson interval in brackets. Green: the best mean of the column. ★: the primary model.</p>")
    sections.append(("models", "Models side by side", body))

    # Curves.
    if run.task == "binary":
        if curves_png:
            body = (f'<figure><img alt="ROC and precision-recall curves per model" width="900" '
                    f'src="data:image/png;base64,{curves_png}"><figcaption>Image level, from images.csv '
                    "(each model's image score against the label; out-of-fold scores"
                    f'{", pooled over repeats" if run.repeats > 1 else ""}). Dashed: chance; on the right, '
                    "the share of ALL images. AP: average precision.</figcaption></figure>")
        else:
            body = '<p class="note">No image scores in images.csv (columns p_&lt;model&gt;): no curves.</p>'
        sections.append(("curves", "ROC and precision-recall curves", body))
    elif multi_png:
        body = (f'<figure><img alt="one-vs-rest ROC and precision-recall curves" width="900" '
                f'src="data:image/png;base64,{multi_png}"><figcaption>One class against the others, from the '
                "primary model's class probabilities in images.csv.</figcaption></figure>")
        sections.append(("curves", "ROC and precision-recall curves", body))

    # Confusion matrices.
    cms = []
    for model in [primary] + [x for x in run.models if x != primary]:
        c = _summed_confusion(run, model)
        if c is not None:
            cms.append(_confusion_html(run, model, c))
    if cms:
        note = (f"Summed over {run.repeats} repeats (each image counted once per repeat). " if run.repeats > 1
                else "")
        sections.append(("confusion", "Confusion matrices", f'<div class="cms">{"".join(cms)}</div>'
                         f'<p class="note">{note}Rows: truth; columns: prediction. Green: correct; '
                         "red: errors, darker for a larger share of the row.</p>"))

    # One-camera stratum.
    if run.task == "binary" and "one_camera" in _strata(run):
        body = (_strata_table(run) + '<p class="note">ALL-IDB1 images Im001–Im033 come from another camera '
                "than Im034–Im108, and all of them are ALL: a model could learn the camera instead of the "
                "disease. The Im034–Im108 stratum, taken by one camera, holds both classes; it is the fairer "
                "test.</p>")
        sections.append(("stratum", "One-camera stratum (Im034–Im108) beside the whole set", body))

    # FAB.
    fab = _fab_data(run)
    if fab is not None:
        total = sum(fab["distribution"].values()) or 0
        crit = fab["criteria"]
        head = "".join(f'<th class="num">{_esc(c)}</th>' for c in crit)
        rows = []
        for sub, count in fab["distribution"].items():
            share = f"{count / total:.0%}" if total else "–"
            pcts = "".join(f'<td class="num">{_pct_value(fab["pct"].get(sub, {}).get(c))}</td>' for c in crit)
            sc = fab["scores"].get(sub) or []
            score = f"{sum(sc) / len(sc):.3f}" if sc else "–"
            rows.append(f'<tr><td>{_esc(sub)}</td><td class="num">{count:g}</td><td class="num">{share}</td>'
                        f'<td class="num">{score}</td>{pcts}</tr>')
        table = (f'<table><thead><tr><th>Subtype</th><th class="num">{_esc(fab["images_head"])}</th>'
                 f'<th class="num">Share</th>'
                 f'<th class="num">Mean score</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
                 if rows else '<p class="note">No image was given a FAB subtype.</p>')
        body = (f'<p class="callout">{_esc(_FAB_NOTE)}</p>' + table
                + ('<p class="note">Criterion columns: the mean, over the images of each subtype, of the share '
                   "of their blasts that meet the criterion. Images called normal get no subtype.</p>"
                   if crit else ""))
        if fab["settings"]:
            body += "<details><summary>FAB settings</summary>" + _kv_table(fab["settings"]) + "</details>"
        if fab["extra"]:
            body += "<details><summary>Other FAB results</summary>" + _kv_table(fab["extra"]) + "</details>"
        sections.append(("fab", "FAB subtypes", body))

    # Timings and device.
    timings = _dict(m.get("timings_s"))
    device = _dict(m.get("device"))
    body = ""
    if timings:
        stages = [(k, x) for k, v in timings.items() if k != "total" and (x := _num(v)) is not None]
        total = _num(timings.get("total")) or sum(v for _, v in stages) or None
        top = max((v for _, v in stages), default=0.0) or 1.0
        rows = []
        for k, v in stages:
            share = f"{v / total:.0%}" if total else ""
            rows.append(f'<tr><td>{_esc(k)}</td><td class="num">{v:,.1f}</td><td class="num">{share}</td>'
                        f'<td><span class="bar" style="width:{max(1, round(200 * v / top))}px"></span></td></tr>')
        if total:
            rows.append(f'<tr><td><b>total</b></td><td class="num"><b>{total:,.1f}</b></td><td></td><td></td></tr>')
        body += (f'<table><thead><tr><th>Stage</th><th class="num">Seconds</th><th class="num">Share</th>'
                 f'<th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    else:
        body += '<p class="note">No timings recorded.</p>'
    body += "<h3>Device</h3>" + (_kv_table(device) if device else
                                 '<p class="note">Not recorded (CPU only, or a run from before devices were '
                                 "recorded).</p>")
    sections.append(("timings", "Timings and device", body))

    # Gallery.
    sections.append(("errors", "Misclassified images", _gallery_html(run, misses)))
    if disputed is not None:
        sections.append(("cells", "Cells where the model and the labels disagree", _disputed_html(disputed)))

    # Published figures: ALL-IDB1 results, so only beside a binary ALL-IDB1 run (or one that does not say).
    n = _n_images(run)
    show_published = run.task == "binary" and str(ds.get("name") or "all-idb1").lower() == "all-idb1"
    acc = (_binary_stat(run, primary, "all", "accuracy") if run.task == "binary"
           else _multi_stat(run, primary, "accuracy"))
    published = "".join(f'<tr><td>{_esc(a)}</td><td>{_esc(b)}</td><td class="num">{_esc(c)}</td><td>{_esc(d)}</td></tr>'
                        for a, b, c, d in PUBLISHED)
    this = (f'<tr class="primary"><td>This run</td><td>{_esc(_label(primary))}</td>'
            f'<td class="num">{_pct(acc.mean, 2)}</td><td>accuracy, {_esc(n_folds or "?")}-fold cross-validation '
            f'× {_esc(reps)}, all {n or "?"} images out of fold</td></tr>')
    body = (f'<table><thead><tr><th>Source</th><th>Method</th><th class="num">Figure</th><th>Protocol</th>'
            f"</tr></thead><tbody>{published}{this}</tbody></table>"
            '<p class="note">Other protocols: different splits, image sets and sizes; these figures are not '
            "comparable one to one with this run, or with each other.</p>")
    if show_published:
        sections.append(("published", "Published figures (other protocols)", body))

    # Protocol, settings, versions.
    body = ""
    for key, label in (("image_score", "Image score"), ("threshold", "Threshold"), ("baseline", "Baseline")):
        if settings.get(key):
            body += f"<p><b>{label}:</b> {_esc(settings[key])}</p>"
    if ds:
        body += "<details><summary>Data set</summary>" + _kv_table(ds) + "</details>"
    if settings:
        body += "<details><summary>All settings</summary>" + _kv_table(settings) + "</details>"
    if isinstance(m.get("versions"), Mapping):
        body += "<details><summary>Versions</summary>" + _kv_table(m["versions"]) + "</details>"
    sections.append(("protocol", "Protocol and settings", body))

    nav = "".join(f'<a href="#{sid}">{_esc(title.split(" (")[0])}</a>' for sid, title, _ in sections)
    parts = "".join(f'<section id="{sid}"><h2>{_esc(title)}</h2>{body}</section>' for sid, title, body in sections)
    title = f"leukoseg report: {ds.get('name') or run.dir.name}"
    what = "Acute lymphoblastic leukemia detection" if run.task == "binary" else "Image classification"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
        f'initial-scale=1"><title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>'
        f"<h1>{_esc(title)}</h1>"
        f'<p class="subtitle">{what}'
        f', cross-validated experiment · run folder '
        f'<span class="mono">{_esc(run.dir.name)}</span> · research use only, not a diagnostic device</p>'
        f"<nav>{nav}</nav>{summary}{parts}"
        f'<footer id="report-end">Written by leukoseg {_esc(__version__)}. Self-contained: this file '
        "references nothing outside itself.</footer></main></body></html>\n"
    )


def _gallery_html(run: _Run, misses: list[_Miss]) -> str:
    if not run.images:
        return '<p class="note">No readable images.csv in the run folder.</p>'
    if not misses:
        return f"<p>{_esc(_label(run.primary))} misclassified no image.</p>"
    total = len({r.get('image') for r in run.images})
    intro = (f"<p>{len(misses)} of {total} images misclassified by {_esc(_label(run.primary))} "
             f"(in at least one repeat), the most confident errors first.</p>")
    prob_col = _cell_prob_column(run)
    cards, rest = [], []
    for miss in misses:
        truth, pred = _class_label(run, miss.truth), _class_label(run, miss.pred)
        if run.task == "binary":
            kind = ("fn", "missed ALL") if miss.truth == "1" else ("fp", "false alarm")
        else:
            kind = ("fn", f"{truth} → {pred}")
        score = "" if miss.score is None else f"score {miss.score:.3f}"
        thr = "" if miss.threshold is None else f" (threshold {miss.threshold:.3f})"
        wrong = f"wrong in {miss.wrong} of {miss.seen} repeats" if miss.seen > 1 else ""
        fab = f" · FAB {_esc(miss.fab)}" if miss.fab else ""
        meta = (f'<div class="name">{_esc(miss.image)}</div><div><span class="tag {kind[0]}">{_esc(kind[1])}</span>'
                f" truth {_esc(truth)}, predicted {_esc(pred)}</div>"
                f"<div>{_esc(score + thr)}{' · ' if score and miss.n_cells else ''}"
                f"{_esc(miss.n_cells)}{' cells' if miss.n_cells else ''}{fab}</div>"
                f"{f'<div>{_esc(wrong)}</div>' if wrong else ''}")
        if miss.thumb:
            cards.append(f'<div class="card"><img alt="{_esc(miss.image)}" '
                         f'src="data:image/jpeg;base64,{miss.thumb}"><div class="meta">{meta}</div></div>')
        else:
            rest.append(miss)
    out = intro
    if cards:
        colour_by = (f"the {_esc(prob_col[len('p_blast_'):])} model's blast probability" if prob_col
                     else "nothing (no cell probabilities)")
        out += (f'<p class="legend">Circles: the segmented cells of the repeat shown, coloured by {colour_by}: '
                '<span>0</span><span class="ramp"></span><span>1</span>; thicker at 0.5 and above.</p>'
                f'<div class="gallery">{"".join(cards)}</div>')
    if rest:
        if cards:
            out += "<h3>Not drawn</h3>"
        elif run.data_note:
            out += f'<p class="note">No thumbnails: {_esc(run.data_note)}.</p>'
        rows = "".join(
            f'<tr><td class="mono">{_esc(m.image)}</td><td>{_esc(_class_label(run, m.truth))}</td>'
            f'<td>{_esc(_class_label(run, m.pred))}</td><td class="num">{_f3(m.score)}</td>'
            f'<td class="num">{_f3(m.threshold)}</td><td class="num">{m.wrong} of {m.seen}</td>'
            f'<td>{_esc(m.thumb_note or "")}</td></tr>' for m in rest)
        score_head = "Score" if run.task == "binary" else "p(predicted)"
        out += (f'<table><thead><tr><th>Image</th><th>Truth</th><th>Predicted</th><th class="num">{score_head}</th>'
                f'<th class="num">Threshold</th><th class="num">Wrong in repeats</th><th>Note</th></tr></thead>'
                f"<tbody>{rows}</tbody></table>")
    return out


def _disputed_html(d: _Disputed) -> str:
    rows = "".join("<tr><td>{}</td>{}<td>{}</td></tr>".format(
        _esc(kind), "".join(f'<td class="num">{_esc(v)}</td>' for v in d.row(counts)), _esc(what))
        for kind, what, counts in d.counts)
    head = "".join(f'<th class="num">{_esc(h)}</th>' for h in _disputed_heads(d))
    out = (f"<table><thead><tr><th>Cells</th>{head}<th>Disagreeing means</th></tr></thead><tbody>{rows}</tbody>"
           f'</table><p class="note">{_esc(_disputed_note(d, crops=True))}</p>')
    for title, cards in d.lists():
        if not cards:
            continue
        out += f"<h3>{title} ({len(cards)} shown)</h3>"
        drawn = [c for c in cards if c.crop]
        if drawn:
            out += '<div class="cells">' + "".join(
                f'<div class="card"><img alt="cell {_esc(c.cell_id)} of {_esc(c.image)}" '
                f'src="data:image/jpeg;base64,{c.crop}"><div class="meta"><div class="name">{_esc(c.image)}</div>'
                f"<div>cell {_esc(c.cell_id)} · p {c.p:.3f}</div></div></div>" for c in drawn) + "</div>"
        rest = [c for c in cards if not c.crop]
        if rest:
            if not drawn and d.note:
                out += f'<p class="note">No crops: {_esc(d.note)}.</p>'
            out += ('<table><thead><tr><th>Image</th><th class="num">Cell</th><th class="num">x</th>'
                    '<th class="num">y</th><th class="num">p</th></tr></thead><tbody>' + "".join(
                        f'<tr><td class="mono">{_esc(c.image)}</td><td class="num">{_esc(c.cell_id)}</td>'
                        f'<td class="num">{c.x:.0f}</td><td class="num">{c.y:.0f}</td><td class="num">{c.p:.3f}</td>'
                        "</tr>" for c in rest) + "</tbody></table>")
    return out


def _disputed_heads(d: _Disputed) -> list[str]:
    several = f" (repeats {', '.join(d.repeats)})" if len(d.repeats) > 1 else ""
    return ["Number", f"Disagreeing{several}", "Share" + (" (pooled)" if several else "")]


def _disputed_note(d: _Disputed, *, crops: bool) -> str:
    which = f"; the cells shown are those of repeat {d.repeats[0]}, each cell once" if len(d.repeats) > 1 else ""
    text = (f"Out-of-fold blast probabilities of the {_label(d.column[len('p_blast_'):])} model against the "
            f"cell labels, at 0.5{which}. A high score on a cell of an ALL image labelled non-blast may be a "
            "blast that the annotation left out (ALL-IDB1 marks most blasts, not all); on a cell of a healthy "
            "image it is a false positive of the model. A low score on a labelled blast is a miss, or a cell "
            "the segmentation cut badly.")
    if crops:
        text += (f" Crops are centred on the cell (ticks), a square of {_CROP_FRACTION:.0%} of the image's "
                 "shorter side.")
    return text + " Look at the cells before trusting either the labels or the model."


# --------------------------------------------------------------------------------------------------
# Markdown


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    line = "| " + " | ".join(_md(h) for h in headers) + " |"
    sep = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    body = ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join([line, sep, *body])


def _md_stat(s: _Stat, percent: bool, repeats: int, best: bool) -> str:
    main = _fmt_main(s, percent)
    extra = _fmt_extra(s, percent, repeats)
    main = f"**{main}**" if best else main
    return f"{main} {extra}".strip()


def _markdown(run: _Run, misses: list[_Miss], curve_rows, disputed: _Disputed | None = None) -> str:
    m = run.metrics
    ds = _dict(m.get("dataset"))
    settings = _dict(m.get("settings"))
    out = [f"# leukoseg report: {ds.get('name') or run.dir.name}", ""]
    facts = [f"{k} {ds[k2]}" for k, k2 in (("images", "n_images"), ("cells", "n_cells")) if ds.get(k2) is not None]
    if fallback := _fallback_fact(ds):
        facts.append(fallback)
    if settings.get("n_folds"):
        r = settings.get("repeats", run.repeats)
        facts.append(f"{settings['n_folds']}-fold × {r} repeat{'' if r == 1 else 's'}")
    out += [f"Primary model: **{_label(run.primary)}** ({run.task}" + (f"; {', '.join(facts)}" if facts else "") + ").",
            "", f"> {_verdict(run)}", ""]
    pct_note = ("Mean over repeats ± std (points), 95% Wilson interval in brackets"
                + (" (at the mean, with the images of one repeat)" if run.repeats > 1 else "")
                + "; **bold**: best of the column; ★ primary model.")
    names = {mm: _label(mm) + (" ★" if mm == run.primary else "") for mm in run.models}
    if run.task == "binary":
        out += ["## Models", ""]
        stats = {k: {mm: _binary_stat(run, mm, "all", k) for mm in run.models} for k, _, _ in _BINARY_KEYS}
        keys = [(k, t, pc) for k, t, pc in _BINARY_KEYS if any(s.mean is not None for s in stats[k].values())]
        rows = [[names[mm], *(_md_stat(stats[k][mm], pc, run.repeats, mm in _best(stats[k])) for k, _, pc in keys)]
                for mm in run.models]
        out += [_md_table(["Model", *(t for _, t, _ in keys)], rows, [False] + [True] * len(keys)), "", pct_note, ""]
        if "one_camera" in _strata(run):
            out += ["## One-camera stratum (Im034–Im108) vs all images", ""]
            keys2 = [("accuracy", "Accuracy", True), ("sensitivity", "Sensitivity", True),
                     ("specificity", "Specificity", True), ("auc", "AUC", False)]  # fmt: skip
            heads, rows = ["Model"], []
            for _, t, _ in keys2:
                heads += [f"{t} (all)", f"{t} (Im034–108)"]
            for mm in run.models:
                row = [names[mm]]
                for k, _, pc in keys2:
                    for st in ("all", "one_camera"):
                        row.append(_md_stat(_binary_stat(run, mm, st, k), pc, 1, False).split(" [")[0])
                rows.append(row)
            out += [_md_table(heads, rows, [False] + [True] * (len(heads) - 1)), ""]
        if curve_rows:
            pooled = f", out-of-fold scores pooled over {run.repeats} repeats" if run.repeats > 1 else ""
            out += [f"## Image-level curves (from images.csv{pooled})", ""]
            out += [_md_table(["Model", "ROC AUC", "Average precision"],
                              [[names[mm], f"{auc:.3f}", f"{ap:.3f}"] for mm, auc, ap in curve_rows],
                              [False, True, True]), ""]
    else:
        out += ["## Models", ""]
        multi_keys = [("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy")]
        stats = {k: {mm: _multi_stat(run, mm, k) for mm in run.models} for k, _ in multi_keys}
        rows = [[names[mm], *(_md_stat(stats[k][mm], True, run.repeats, mm in _best(stats[k])) for k, _ in multi_keys)]
                for mm in run.models]
        out += [_md_table(["Model", "Accuracy", "Balanced accuracy"], rows, [False, True, True]), "", pct_note, ""]
        rec = {c: {mm: _multi_stat(run, mm, "recall", c) for mm in run.models} for c in run.classes}
        if any(s.mean is not None for c in rec for s in rec[c].values()):
            rows = [[names[mm], *(_md_stat(rec[c][mm], True, 1, mm in _best(rec[c])).split(" [")[0]
                                  for c in run.classes)] for mm in run.models]
            out += ["### Recall per class", "", _md_table(["Model", *run.classes], rows,
                                                          [False] + [True] * len(run.classes)), ""]
    c = _summed_confusion(run, run.primary)
    if c is not None:
        labels = [_class_label(run, x) for x in run.classes] if len(run.classes) == len(c) else [
            str(i) for i in range(len(c))]
        out += [f"## Confusion matrix of {_label(run.primary)} (rows truth, columns prediction)", ""]
        out += [_md_table(["truth \\ predicted", *labels], [[labels[i], *(f"{v:g}" for v in r)]
                                                           for i, r in enumerate(c)],
                          [False] + [True] * len(labels)), ""]
    fab = _fab_data(run)
    if fab is not None:
        total = sum(fab["distribution"].values())
        out += ["## FAB subtypes", "", _FAB_NOTE, ""]
        if fab["distribution"]:
            rows = [[s, f"{n:g}", f"{n / total:.0%}" if total else "–",
                     *(_pct_value(fab["pct"].get(s, {}).get(cr)) for cr in fab["criteria"])]
                    for s, n in fab["distribution"].items()]
            out += [_md_table(["Subtype", fab["images_head"], "Share", *fab["criteria"]], rows,
                              [False, True, True] + [True] * len(fab["criteria"])), ""]
    timings = _dict(m.get("timings_s"))
    device = _dict(m.get("device"))
    if timings or device:
        out += ["## Timings and device", ""]
        if timings:
            rows = [[k, f"{_num(v):,.1f}"] for k, v in timings.items() if _num(v) is not None]
            out += [_md_table(["Stage", "Seconds"], rows, [False, True]), ""]
        if device:
            out += ["Device: " + ", ".join(f"{k} {v}" for k, v in device.items()), ""]
    out += ["## Misclassified images", ""]
    if not run.images:
        out += ["No readable images.csv in the run folder.", ""]
    elif not misses:
        out += [f"{_label(run.primary)} misclassified no image.", ""]
    else:
        rows = [[mi.image, _class_label(run, mi.truth), _class_label(run, mi.pred),
                 "" if mi.score is None else f"{mi.score:.3f}", f"{mi.wrong}/{mi.seen}"] for mi in misses]
        out += [_md_table(["Image", "Truth", "Predicted", "Score", "Wrong in repeats"], rows,
                          [False, False, False, True, True]), ""]
    if disputed is not None:
        out += ["## Cells where the model and the labels disagree", ""]
        out += [_md_table(["Cells", *_disputed_heads(disputed), "Disagreeing means"],
                          [[kind, *disputed.row(counts), what] for kind, what, counts in disputed.counts],
                          [False, True, True, True, False]), "",
                _disputed_note(disputed, crops=False) + " report.html shows the cells below.", ""]
        for title, cards in disputed.lists():
            if cards:
                out += [f"### {title}", "", _md_table(["Image", "Cell", "x", "y", "p"], [
                    [c.image, c.cell_id, f"{c.x:.0f}", f"{c.y:.0f}", f"{c.p:.3f}"] for c in cards],
                    [False, True, True, True, True]), ""]
    if run.task == "binary" and str(ds.get("name") or "all-idb1").lower() == "all-idb1":
        out += ["## Published figures (other protocols, not comparable one to one)", ""]
        out += [_md_table(["Source", "Method", "Figure", "Protocol"], [list(p) for p in PUBLISHED],
                          [False, False, True, False]), ""]
    out += ["The full report, with curves and thumbnails, is report.html beside this file.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Entry point


def write_report(run_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
                 out_dir: str | os.PathLike[str] | None = None) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` for an experiment run folder.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The folder that the experiment wrote: ``metrics.json`` (required), ``images.csv`` and
        ``cells.csv`` (optional).
    data_dir : str or os.PathLike, optional
        The data folder that the image paths of ``images.csv`` are relative to, for the thumbnails of the
        misclassified images and the crops of the cells where the model and the labels disagree.
        Default: ``dataset.root`` of ``metrics.json`` when that folder exists; without one, the
        misclassified images and the cells are listed in tables.
    out_dir : str or os.PathLike, optional
        Where to write the two files (created if needed). Default: `run_dir`.

    Returns
    -------
    ReportFiles
        The paths of the HTML report and of the Markdown summary.

    Raises
    ------
    LeukosegError
        If `run_dir` is not a folder, its ``metrics.json`` is missing, unreadable or not an experiment's,
        or `data_dir` is given and is not a folder; or if the report may not be written there (permission,
        a read-only file system).
    OSError
        If writing the report fails otherwise (e.g. a full disk); its ``filename`` is the report's folder.

    Examples
    --------
    >>> files = write_report("runs/all-idb1")  # doctest: +SKIP
    >>> files.html.name, files.markdown.name  # doctest: +SKIP
    ('report.html', 'report.md')
    """
    from leukoseg.io import write_texts

    run = _load_run(Path(run_dir), data_dir)
    out = Path(out_dir) if out_dir is not None else run.dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeukosegError(out, f"cannot create the report folder ({exc.strerror or exc})") from None

    misses = _misclassified(run)
    _thumbnails(run, misses)
    disputed = _disputed(run)
    if disputed is not None:
        _cell_crops(run, disputed)
    if run.task == "binary":
        curves_png, curve_rows = _binary_curves(run)
        multi_png = None
    else:
        curves_png, curve_rows = None, []
        multi_png = _multiclass_curves(run)

    files = ReportFiles(html=out / "report.html", markdown=out / "report.md")
    html = _html(run, misses, curves_png, multi_png, disputed)
    markdown = _markdown(run, misses, curve_rows, disputed)
    try:
        # Both are written in full before either replaces its earlier version, so a failure (a full disk)
        # never leaves a new report.html beside an old report.md, or the other way round.
        write_texts({files.html: html, files.markdown: markdown})
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            # The folder is not ours to write: a usage error (exit 2), as the other commands' outputs are.
            raise LeukosegError(out, f"cannot write the report ({exc.strerror or exc})") from None
        # E.g. a full disk: the run failed (exit 1, as in classify and train); the folder is named.
        raise OSError(exc.errno, f"cannot write the report ({exc.strerror or exc})", str(out)) from None
    logger.info("report written: %s, %s", files.html, files.markdown)
    return files
