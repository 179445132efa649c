"""The ``leukoseg`` command line.

The parser is built without importing any heavy library, so ``leukoseg --help`` answers at once; each
command imports what it needs after the arguments are parsed.

Exit codes: 0 everything worked, 1 some inputs failed (each reported on one line), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import LeukosegError

__all__ = ["build_parser", "main"]

log = logging.getLogger("leukoseg")

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE = 0, 1, 2

#: Images with a side shorter than this cannot hold a white cell and are reported as bad input.
MIN_SIDE = 16


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``leukoseg`` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more messages (-vv for debugging); tracebacks for errors")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bar")

    parser = argparse.ArgumentParser(
        prog="leukoseg",
        description="Find and measure white cells in blood smear photographs and look for acute "
        "lymphoblastic leukemia. Research use only; not a diagnostic device.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"leukoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser(
        "segment", parents=[common], help="segment and measure white cells",
        description="Segment white cells: nuclei, cells, micrometre scale from the red cells, measurements, "
        "crops. Writes OUT/<image>/ with cells.csv, nuclei.png, cells.png, overlay.jpg, cells.geojson, "
        "segmentation.json and crops/.",
    )
    seg.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    seg.add_argument("--out", type=Path, default=Path("leukoseg-out"), help="output folder (default: %(default)s)")
    seg.add_argument("--workers", type=_positive_int, default=None,
                     help="worker processes (default: the number of CPUs)")
    seg.add_argument("--pixel-size", type=_positive_float, default=None, metavar="UM",
                     help="micrometres per pixel, if known (default: measured from the red cells)")
    seg.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")
    seg.add_argument("--no-crops", dest="crops", action="store_false", help="do not write crops/")
    seg.add_argument("--max-pixels", type=_positive_int, default=None,
                     help="refuse images with more pixels (default: 100 million)")
    seg.set_defaults(func=_cmd_segment)

    cls = sub.add_parser(
        "classify", parents=[common], help="cross-validated ALL detection experiment on a data set",
        description="Segment every image once (cached), label cells, and cross-validate over image folds: "
        "plain kNN, GkNN and SVM on texture, shape and colour features (their mean is the baseline), the CNN of "
        "Thanh et al. on 50x50 cell patches, and their fusion; image decisions and the FAB subtype. Writes RUN/ "
        "with folds.csv, cells.csv, images.csv and metrics.json.",
    )
    cls.add_argument("--dataset", required=True, metavar="NAME",
                     help="data set: all-idb1, all-idb2, or folder:PATH (one subfolder per class)")
    cls.add_argument("--data-dir", type=Path, default=None,
                     help="the data set's folder (default: $LEUKOSEG_DATA/<NAME> or ~/.leukoseg/data/<NAME>)")
    cls.add_argument("--out", type=Path, default=Path("leukoseg-classify"),
                     help="run folder (default: %(default)s)")
    cls.add_argument("--folds", type=_positive_int, default=5, help="outer folds (default: %(default)s)")
    cls.add_argument("--repeats", type=_positive_int, default=1, help="repeats of the folds (default: %(default)s)")
    cls.add_argument("--seed", type=int, default=0, help="seed; repeat r uses seed + r (default: %(default)s)")
    cls.add_argument("--cache", type=Path, default=None,
                     help="segmentation cache folder (default: $XDG_CACHE_HOME/leukoseg or ~/.cache/leukoseg)")
    cls.add_argument("--workers", type=_positive_int, default=None,
                     help="processes for segmenting (default: the number of CPUs)")
    cls.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                     help="where the CNN and the fusion run; auto: the GPU when one is visible (default: auto)")
    cls.add_argument("--no-cnn", dest="cnn", action="store_false",
                     help="baseline models only (no CNN, no fusion): a run of seconds")
    cls.set_defaults(func=_cmd_classify)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting (tests call it in-process).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed by argparse)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    if args.verbose < 2:
        # TensorFlow's C++ start-up chatter (oneDNN notes, tf.data attribute notices) is not for users;
        # -vv shows it. Only a default: a value the user set wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logger = logging.getLogger("leukoseg")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    _configure_logging(logger, args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except LeukosegError as exc:
        _error(str(exc), args.verbose)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted", 0)
        return 130
    finally:
        # main() may be called in-process (tests, notebooks): leave logging as it was found.
        logger.handlers[:], logger.level, logger.propagate = saved


def _configure_logging(logger: logging.Logger, verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("leukoseg: %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _error(message: str, verbose: int) -> None:
    if verbose:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"leukoseg: error: {message}\n")
    sys.stderr.flush()


def _check_writable(folder: Path) -> None:
    """Fail early, on one line, when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".leukoseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LeukosegError(folder, f"output folder is not writable ({exc.strerror or exc})") from None


def _output_names(paths: Sequence[Path]) -> list[str]:
    """One output folder name per input: the file's stem, with -2, -3 ... where stems repeat."""
    names, used = [], set()
    for p in paths:
        name, k = p.stem or "image", 2
        while name in used:
            name, k = f"{p.stem}-{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def _segment_one(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Worker: read, segment and write one image. Returns a summary, or the error on one line."""
    from .io import DEFAULT_MAX_PIXELS, read_image
    from .segmentation import segment, write_segmentation

    path, out_dir, opts = task
    start = time.perf_counter()
    try:
        image = read_image(path, max_pixels=opts.get("max_pixels") or DEFAULT_MAX_PIXELS)
        if min(image.shape[:2]) < MIN_SIDE:
            h, w = image.shape[:2]
            raise LeukosegError(path, f"image too small ({w}x{h} pixels); a smear needs at least {MIN_SIDE} on a side")
        seg = segment(image, pixel_size=opts.get("pixel_size"))
        seconds = time.perf_counter() - start
        write_segmentation(out_dir, image, seg, crops=opts.get("crops", True), threads=opts.get("threads", 1),
                           summary={"image": path, "seconds_segment": round(seconds, 4)})
    except LeukosegError as exc:
        return {"image": path, "error": exc.reason}
    except MemoryError:
        return {"image": path, "error": "out of memory (try --max-pixels or a smaller image)"}
    except OSError as exc:
        return {"image": path, "error": f"cannot write output ({exc.strerror or exc})"}
    except Exception as exc:  # a bug: keep the batch going, but say what happened
        detail = traceback.format_exc() if opts.get("verbose") else ""
        return {"image": path, "error": f"internal error: {type(exc).__name__}: {exc}", "traceback": detail}
    return {
        "image": path,
        "n_cells": seg.n_cells,
        "um_per_px": round(seg.um_per_px, 6),
        "scale_source": seg.scale_source,
        "seconds": round(time.perf_counter() - start, 4),
        "output": out_dir,
    }


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _is_output_file(path: Path) -> bool:
    """Whether `path` is an image that leukoseg itself wrote (its folder holds a segmentation.json)."""
    folder = path.parent.parent if path.parent.name == "crops" else path.parent
    return (folder / "segmentation.json").is_file()


def _cmd_segment(args: argparse.Namespace) -> int:
    import json

    from .io import find_images

    out = args.out.resolve()
    # A folder given as input may hold earlier results (label PNGs): never segment our own outputs.
    paths = [p for p in find_images(args.paths) if out not in p.resolve().parents and not _is_output_file(p)]
    if not paths:
        raise LeukosegError(None, "no images found in the given paths")
    _check_writable(args.out)
    names = _output_names(paths)
    opts = {"pixel_size": args.pixel_size, "crops": args.crops, "max_pixels": args.max_pixels,
            "verbose": args.verbose}
    tasks = [(str(p), str(args.out / n), opts) for p, n in zip(paths, names)]
    workers = min(args.workers or os.cpu_count() or 1, len(tasks))
    opts["threads"] = max(1, (os.cpu_count() or 1) // workers)  # encoder threads per worker
    failed = 0
    for result in _run_tasks(_segment_one, tasks, workers, quiet=args.quiet, unit="image"):
        if "error" in result:
            failed += 1
            if result.get("traceback"):
                sys.stderr.write(result["traceback"])
            _error(f"{result['image']}: {result['error']}", 0)
        else:
            log.info("%s: %d cells, %.4f um/px (%s), %.2f s", result["image"], result["n_cells"],
                     result["um_per_px"], result["scale_source"], result["seconds"])
        if args.json:
            result.pop("traceback", None)
            sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    if not args.json and not args.quiet:
        sys.stderr.write(f"leukoseg: {len(tasks) - failed} of {len(tasks)} images segmented into {args.out}\n")
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def _cmd_classify(args: argparse.Namespace) -> int:
    from .datasets import load_dataset
    from .pipelines.experiment import run_experiment

    if args.folds < 2:
        raise LeukosegError(None, f"--folds must be at least 2, got {args.folds}")
    dataset = load_dataset(args.dataset, args.data_dir)
    _check_writable(args.out)
    if args.device == "gpu":
        _check_gpu()
    result = run_experiment(
        dataset, args.out, n_folds=args.folds, repeats=args.repeats, seed=args.seed, cache_dir=args.cache,
        workers=args.workers or os.cpu_count() or 1, cnn=args.cnn, device=args.device, progress=not args.quiet,
    )  # fmt: skip
    if not args.quiet:
        m = result.metrics
        lines = []
        for model, res in m["models"].items():
            s = res["summary"]["all"]
            auc = s.get("auc", {}).get("mean")
            lines.append(f"  {model:<9} image accuracy {s['accuracy']['mean']:.3f}"
                         + (f", AUC {auc:.3f}" if auc is not None else "")
                         + (f", balanced accuracy {s['balanced_accuracy']['mean']:.3f}" if "balanced_accuracy" in s
                            else ""))  # fmt: skip
        sys.stderr.write("leukoseg: " + dataset.name + f", {len(dataset)} images\n" + "\n".join(lines)
                         + f"\nleukoseg: decision model {m['primary_model']}; results in {result.out_dir}\n")
    return EXIT_OK


def _check_gpu() -> None:
    """``--device gpu`` without a visible GPU: a one-line error before any work."""
    from .classify.cnn import resolve_device

    try:
        resolve_device("gpu")
    except ValueError as exc:
        raise LeukosegError(None, str(exc)) from None


def _run_tasks(func, tasks: list, workers: int, *, quiet: bool, unit: str):
    """Run `func` over `tasks`, in worker processes when `workers` > 1, with a progress bar on a terminal.

    Results are yielded in the order of `tasks`, so outputs and logs are reproducible.
    """
    if quiet or not sys.stderr.isatty():
        bar: Any = _NoBar()  # no bar to show: spare the batch tqdm's import
    else:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit=unit, file=sys.stderr)
    try:
        if workers <= 1:
            for task in tasks:
                yield func(task)
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: safe with OpenCV's and BLAS's threads, the same on every platform.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
            for result in pool.map(func, tasks):
                yield result
                bar.update()
    finally:
        bar.close()


class _NoBar:
    """The progress bar's interface, doing nothing."""

    def update(self, n: int = 1) -> None:
        """Count `n` more done (ignored)."""

    def close(self) -> None:
        """Close the bar (nothing to close)."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
