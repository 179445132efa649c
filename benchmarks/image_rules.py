"""Image rules studied again on a finished run, without refitting a model: which top-k candidates to learn from.

    python benchmarks/image_rules.py RUN [--models fused,cnn,baseline] [--rules 1,2,3 1 3 ...]

An image's score is the mean of its ``k`` highest cell blast probabilities, missing cells counted as 0
(:func:`leukoseg.pipelines.metrics.image_score`); each fold learns ``k`` among a candidate set, and the
threshold, on the inner out-of-fold scores of its training images
(:func:`leukoseg.pipelines.metrics.choose_image_rule`). This script reads a binary run's ``scores.npz`` (every
cell's out-of-fold score and, per fold, the inner scores of the training cells; runs made before it was
written lack it), ``images.csv`` and ``metrics.json``, and for each model and each candidate set given
(``--rules``, each a comma-separated list of k) learns the rule of every fold again, exactly as the run did,
and prints per repeat the images right, then accuracy, sensitivity and specificity over repeats, how many
folds chose each k, and the images the rule calls wrong, with their score, threshold and k. The run's own
candidate set comes first and must give the run's decisions (``images.csv``) back: the script says whether
it does. Every choice is made on training images only, so each row is an honest out-of-fold figure for its
candidate set; choosing *among* the rows by their test figures is not.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zipfile
from pathlib import Path

import numpy as np


class RunError(Exception):
    """A folder that is not a finished binary run with saved scores (one line, exit status 2)."""


def load_run(run: Path) -> dict:
    """The run's image table, settings and saved scores; RunError, in one line, when one is missing or unreadable."""
    for name in ("metrics.json", "images.csv", "scores.npz"):
        if not (run / name).is_file():
            raise RunError(f"{run / name}: not found (a binary run of this release writes it)")
    try:
        metrics = json.loads((run / "metrics.json").read_text())
        with open(run / "images.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        # Our own handle: np.load leaves the file open when the zip is corrupt.
        with open(run / "scores.npz", "rb") as fh, np.load(fh, allow_pickle=False) as z:
            scores = {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # JSON and a cut npz: ValueError, EOFError
        raise RunError(f"{run}: unreadable run files ({type(exc).__name__}: {exc})") from None
    if not isinstance(metrics, dict) or metrics.get("task") != "binary":
        raise RunError(f"{run}: not a binary run (task {metrics.get('task') if isinstance(metrics, dict) else None!r})")
    return {"metrics": metrics, "rows": rows, "scores": scores}


def decide(run: dict, model: str, top_ks: tuple[int, ...]) -> dict[tuple[int, str], tuple[int, float, float, int]]:
    """Every (repeat, image)'s decision, image score, threshold and k when each fold learns its rule among
    `top_ks` on its training images."""
    from leukoseg.pipelines.metrics import choose_image_rule, image_score

    scores, rows = run["scores"], run["rows"]
    cell_image = scores["image"]
    test, inner = scores[f"test_{model}"][..., 1], scores[f"inner_{model}"][..., 1]
    out: dict[tuple[int, str], tuple[int, float, float, int]] = {}
    cells_of = {row["image"]: cell_image == row["image"] for row in rows}
    for r in sorted({int(row["repeat"]) for row in rows}):
        table = [row for row in rows if int(row["repeat"]) == r]
        for k in sorted({int(row["fold"]) for row in table}):
            train = [row for row in table if int(row["fold"]) != k]
            top_k, threshold = choose_image_rule([inner[r, k, cells_of[row["image"]]] for row in train],
                                                 [int(row["label"]) for row in train], top_ks=top_ks)  # fmt: skip
            for row in table:
                if int(row["fold"]) == k:
                    s = image_score(test[r, cells_of[row["image"]]], top_k=top_k)
                    out[(r, row["image"])] = (int(s >= threshold), s, threshold, top_k)
    return out


def rule_lines(run: dict, model: str, rule_sets: list[tuple[int, ...]]) -> list[str]:
    """Per candidate set: images right per repeat, accuracy / sensitivity / specificity, the images called wrong."""
    from leukoseg.pipelines.metrics import binary_metrics

    rows = run["rows"]
    label = {(int(row["repeat"]), row["image"]): int(row["label"]) for row in rows}
    repeats = sorted({r for r, _ in label})
    lines = [f"{model}:"]
    for n, top_ks in enumerate(rule_sets):
        decided = decide(run, model, top_ks)
        pred = {key: v[0] for key, v in decided.items()}
        right = [sum(pred[key] == label[key] for key in label if key[0] == r) for r in repeats]
        per_repeat = [binary_metrics([label[key] for key in label if key[0] == r],
                                     [pred[key] for key in label if key[0] == r]) for r in repeats]  # fmt: skip
        acc, sens, spec = ([np.nan if m[name] is None else m[name] for m in per_repeat]
                           for name in ("accuracy", "sensitivity", "specificity"))  # fmt: skip
        name = ",".join(map(str, top_ks))
        lines.append(f"  top_k among {name:9} images right {', '.join(map(str, right))}; accuracy "
                     f"{np.mean(acc):.3f} +- {np.std(acc, ddof=1) if len(acc) > 1 else 0.0:.3f}, sensitivity "
                     f"{np.mean(sens):.3f}, specificity {np.mean(spec):.3f}")  # fmt: skip
        # k of each fold: one decision per fold carries it.
        ks = {(r, row["fold"]): decided[(r, row["image"])][3] for row in rows for r in [int(row["repeat"])]}
        counts = np.bincount(list(ks.values()))
        lines.append("    k chosen: " + ", ".join(f"{k} in {c} folds" for k, c in enumerate(counts) if c))
        wrong = sorted(f"{Path(img).stem} (repeat {r}: {decided[(r, img)][1]:.3f} against {decided[(r, img)][2]:.3f},"
                       f" k {decided[(r, img)][3]})" for (r, img) in label if pred[(r, img)] != label[(r, img)])
        lines.append(f"    wrong: {'; '.join(wrong) if wrong else 'none'}")
        if n == 0:
            run_pred = {(int(row["repeat"]), row["image"]): int(row[f"pred_{model}"]) for row in rows}
            differ = sum(pred[key] != run_pred[key] for key in label)
            lines.append("    the run's own candidates: "
                         + ("its decisions given back, every one" if not differ else
                            f"{differ} decisions differ from the run's images.csv"))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished binary run folder (with scores.npz)")
    parser.add_argument("--models", default="fused,cnn,baseline", help="comma-separated models (default: %(default)s)")
    parser.add_argument("--rules", nargs="*", default=["1", "2", "3"],
                        help="further candidate sets of k, each comma-separated (default: each k alone)")
    args = parser.parse_args(argv)
    try:
        extra = [tuple(int(v) for v in spec.split(",")) for spec in args.rules]
    except ValueError:
        parser.error(f"--rules: each set is integers separated by commas; got {args.rules}")
    if any(k < 1 for s in extra for k in s) or any(not s for s in extra):
        parser.error("--rules: every k is at least 1")
    try:
        run = load_run(args.run)
    except RunError as exc:
        print(f"image_rules: {exc}", file=sys.stderr)
        return 2
    own = tuple(run["metrics"]["settings"]["top_ks"])
    rule_sets = [own, *(s for s in dict.fromkeys(extra) if s != own)]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if f"test_{m}" not in run["scores"]]
    if missing:
        print(f"image_rules: {args.run}: no scores of {', '.join(missing)} in scores.npz", file=sys.stderr)
        return 2
    print(f"run {args.run}: {len(run['rows'])} image decisions; candidate sets of k: "
          + "; ".join(",".join(map(str, s)) for s in rule_sets))
    for m in models:
        print("\n".join(rule_lines(run, m, rule_sets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
