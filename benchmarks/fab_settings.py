"""FAB subtypes of an experiment run's ALL calls under other FAB settings, and how the scores move.

The experiment scores the FAB subtype of every image it calls ALL from the measurements of that image's
predicted blasts (:func:`leukoseg.classify.fab_classify`, with the blasts of
:func:`leukoseg.classify.fab.blast_mask` on the decision model's out-of-fold cell probabilities). This script
does the same for one repeat of a finished run, under the default :class:`~leukoseg.classify.FABSettings`
and under each setting given, and prints the distribution of subtypes and, against the defaults, how many
scores and subtypes change. No model is fitted: the measurements come from the run's segmentation cache
(recomputed where missing) and the probabilities from its ``cells.csv``.

    python benchmarks/fab_settings.py --run RUN [--data-dir DIR] [--cache DIR] [--repeat 0] [--settings JSON]

``--settings`` is a JSON list of ``{"name": ..., <FABSettings fields>}``; without it, the count limit of the
small-nucleoli rule is compared with none (``max_small_nucleoli`` 1, the paper's "0-1", against 1000).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

DEFAULT_SETTINGS = [{"name": "small nucleoli: any number (no count limit)", "max_small_nucleoli": 1000}]


def subtypes(called: Sequence[tuple[str, Mapping[str, np.ndarray], np.ndarray]], settings) -> dict[str, tuple]:
    """``{image: (subtype, score)}`` of the images called ALL.

    `called` holds, per image called ALL: its name, its measurement table (one row per cell) and the blast
    probability of every row; the blasts are chosen as the experiment chooses them.
    """
    from leukoseg.classify.fab import blast_mask, fab_classify

    out = {}
    for name, table, p_blast in called:
        if not len(p_blast):
            continue
        rows = blast_mask(np.asarray(p_blast, float))
        result = fab_classify({k: np.asarray(v)[rows] for k, v in table.items()}, settings=settings)
        out[name] = (result.subtype, result.score)
    return out


def compare(called, settings: Sequence[dict], log=print) -> list[dict]:
    """Print the defaults' subtypes, then each setting's and what changes against the defaults."""
    from leukoseg.classify import FABSettings

    base = subtypes(called, FABSettings())
    log(f"default settings: {dict(sorted(Counter(s for s, _ in base.values()).items()))} "
        f"({len(base)} images called ALL)")  # fmt: skip
    results = []
    for setting in settings:
        fields = {k: v for k, v in setting.items() if k != "name"}
        other = subtypes(called, FABSettings(**fields))
        moves = Counter((base[i][1], other[i][1]) for i in base if base[i][1] != other[i][1])
        changed = sum(base[i][0] != other[i][0] for i in base)
        log(f"{setting.get('name', fields)}: {dict(sorted(Counter(s for s, _ in other.values()).items()))}; "
            f"subtypes changed {changed}; scores changed {sum(moves.values())}"
            + "".join(f", {a:+d} -> {b:+d}: {n}" for (a, b), n in sorted(moves.items())))  # fmt: skip
        results.append({"name": setting.get("name"), "subtypes": other, "changed": changed, "moves": dict(moves)})
    return results


def _called(run: Path, data_dir: Path, cache: Path | None, repeat: int):
    from leukoseg.pipelines.cache import default_cache_dir, load_or_compute
    from leukoseg.pipelines.report import load_metrics

    from leukoseg.segmentation import recorded_segment_settings

    metrics = load_metrics(run)
    primary = metrics.get("primary_model", "fused")
    # The run's own cells: its outlines (a run made before a segmentation setting was recorded had its former
    # value: UNRECORDED_SEGMENT_SETTINGS).
    segment_kw = recorded_segment_settings((metrics.get("settings") or {}).get("segment"))
    with open(run / "images.csv", newline="", encoding="utf-8") as f:
        images = [r["image"] for r in csv.DictReader(f) if r["repeat"] == str(repeat) and r["pred"] == "1"]
    p: dict[str, dict[int, float]] = {}
    with open(run / "cells.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["repeat"] == str(repeat) and r["image"] in images:
                p.setdefault(r["image"], {})[int(r["cell_id"])] = float(r[f"p_blast_{primary}"])
    entries, _ = load_or_compute([data_dir / i for i in images], cache if cache is not None else default_cache_dir(),
                                 segment_kw=segment_kw, workers=2)  # fmt: skip
    called = []
    for name, entry in zip(images, entries):
        m = entry.measurements
        ids = [int(c) for c in m["cell_id"]]
        by_id = p.get(name, {})
        rows = [k for k, c in enumerate(ids) if c in by_id]
        called.append((name, {k: np.asarray(v)[rows] for k, v in m.items()}, np.array([by_id[ids[k]] for k in rows])))
    return called


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder of `leukoseg classify --dataset all-idb1`")
    data_dir_argument(parser)
    parser.add_argument("--cache", type=Path, default=None, help="the run's segmentation cache")
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--settings", type=json.loads, default=None, help="JSON list of FAB settings to compare")
    args = parser.parse_args(argv)
    compare(_called(args.run, args.data_dir, args.cache, args.repeat), args.settings or DEFAULT_SETTINGS)


if __name__ == "__main__":
    main()
