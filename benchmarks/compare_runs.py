"""Compare finished experiment runs on the same folds: per repeat, each model's figures side by side.

    python benchmarks/compare_runs.py RUN_A RUN_B [RUN ...] [--models cnn,fused]

Reads each run's ``metrics.json``, ``folds.csv`` and ``images.csv`` (written by ``leukoseg classify
--dataset`` or ``benchmarks/experiment.py``) and prints, per model and repeat, the images right, the cell
AUC and the inner cell AUC (the figure a choice among settings may look at; ``-`` for runs made before
``metrics.json`` recorded it), then the mean image accuracy, sensitivity and specificity over repeats. For
two runs on the same folds it lists, per model and repeat, the images that one run calls right and the
other does not (paired: same images, same folds). Runs on other folds (another seed, data set or
number of folds) are compared figure by figure only, and the script says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def _load(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "folds.csv", newline="") as f:
        folds = sorted((r["image"], r["repeat"], r["fold"]) for r in csv.DictReader(f))
    with open(run / "images.csv", newline="") as f:
        images = list(csv.DictReader(f))
    return {"name": run.name, "metrics": metrics, "folds": folds, "images": images}


def _right(images: list[dict], model: str) -> dict[str, set[str]]:
    """Images the model calls right, per repeat."""
    out: dict[str, set[str]] = {}
    for row in images:
        right = out.setdefault(row["repeat"], set())
        if row.get(f"pred_{model}", "") == row["label"]:
            right.add(row["image"])
    return out


def _join(values, fmt: str) -> str:
    return ", ".join("-" if v is None else format(v, fmt) for v in values)


def model_lines(runs: list[dict], model: str) -> list[str]:
    """Per run: images right, cell AUC and inner cell AUC per repeat; mean accuracy, sensitivity, specificity."""
    lines = [f"{model}:"]
    width = max(len(r["name"]) for r in runs)
    for run in runs:
        res = run["metrics"]["models"].get(model)
        if res is None:
            lines.append(f"  {run['name']:{width}}  (no {model} in this run)")
            continue
        reps = res["repeats"]
        right = _right(run["images"], model)
        n_right = [len(right.get(str(e["repeat"]), ())) for e in reps]
        cell = [e["all"].get("cell_auc") for e in reps]
        inner = (res.get("inner_cell_auc") or {}).get("per_repeat") or [None] * len(reps)
        s = res["summary"]["all"]
        lines.append(
            f"  {run['name']:{width}}  images right {_join(n_right, 'd')}; cell AUC {_join(cell, '.4f')}; "
            f"inner cell AUC {_join(inner, '.4f')}; accuracy {s['accuracy']['mean']:.3f}, sensitivity "
            f"{s['sensitivity']['mean']:.3f}, specificity {s['specificity']['mean']:.3f}")
    return lines


def paired_lines(a: dict, b: dict, model: str) -> list[str]:
    """Images right in one run and wrong in the other, per repeat (same folds)."""
    ra, rb = _right(a["images"], model), _right(b["images"], model)
    lines = [f"{model}, images called right by one run only (same folds):"]
    for rep in sorted(set(ra) | set(rb), key=int):
        only_a = sorted(ra.get(rep, set()) - rb.get(rep, set()))
        only_b = sorted(rb.get(rep, set()) - ra.get(rep, set()))
        lines.append(f"  repeat {rep}: only {a['name']}: {', '.join(only_a) or 'none'}; "
                     f"only {b['name']}: {', '.join(only_b) or 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (each with metrics.json)")
    parser.add_argument("--models", default=None,
                        help="comma-separated models to show (default: every model of the first run)")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        try:
            runs.append(_load(run))
        except (OSError, ValueError, KeyError) as exc:
            print(f"compare_runs: {run}: not a finished run ({exc})", file=sys.stderr)
            return 2
    models = args.models.split(",") if args.models else list(runs[0]["metrics"]["models"])
    same_folds = all(r["folds"] == runs[0]["folds"] for r in runs[1:])
    print(f"{len(runs)} runs: {', '.join(r['name'] for r in runs)}; "
          + ("the same folds" if same_folds else "different folds: figure by figure only, not paired"))
    for model in models:
        print("\n".join(model_lines(runs, model)))
    if same_folds and len(runs) == 2:
        for model in models:
            if all(model in r["metrics"]["models"] for r in runs):
                print("\n".join(paired_lines(runs[0], runs[1], model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
