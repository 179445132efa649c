"""The ``leukoseg`` command line.

The parser is built without importing any heavy library, so ``leukoseg --help`` answers at once; each
command imports what it needs after the arguments are parsed.

Exit codes: 0 everything worked, 1 some inputs failed (each reported on one line), 2 usage or
configuration error, 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from ._workers import terminate_on_sigterm
from .errors import LeukosegError

__all__ = ["build_parser", "main"]

log = logging.getLogger("leukoseg")

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (``leukoseg segment: error: ...``) like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``leukoseg`` and its subcommands.

    Returns
    -------
    argparse.ArgumentParser
        The parser; each subcommand's namespace holds ``func``, the function that runs it.
    """
    def verbosity_options(default_verbose: Any, default_quiet: Any) -> _Parser:
        options = _Parser(add_help=False)
        verbosity = options.add_mutually_exclusive_group()
        verbosity.add_argument("-v", "--verbose", action="count", default=default_verbose,
                               help="more messages (-vv for debugging); tracebacks for errors")
        verbosity.add_argument("-q", "--quiet", action="store_true", default=default_quiet,
                               help="only errors; no progress bar")
        return options

    # -v and -q work before or after the command: the subcommands' copies have no defaults of their own,
    # which would otherwise overwrite what was given before the command.
    common = verbosity_options(argparse.SUPPRESS, argparse.SUPPRESS)
    parser = _Parser(
        prog="leukoseg",
        description="Find and measure white cells in blood smear photographs and look for acute "
        "lymphoblastic leukemia. Research use only; not a diagnostic device.",
        parents=[verbosity_options(0, False)],
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
    seg.add_argument("paths", nargs="+", type=_nonempty, metavar="PATH",
                     help="image files, folders (searched recursively) or globs")
    seg.add_argument("--out", type=_path, default=Path("leukoseg-out"), help="output folder (default: %(default)s)")
    seg.add_argument("--workers", type=_positive_int, default=None,
                     help="worker processes (default: the number of CPUs)")
    seg.add_argument("--pixel-size", type=_pixel_size, default=None, metavar="UM",
                     help="micrometres per pixel, if known (default: measured from the red cells)")
    seg.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")
    seg.add_argument("--no-crops", dest="crops", action="store_false", help="do not write crops/")
    seg.add_argument("--max-pixels", type=_positive_int, default=None,
                     help="refuse images with more pixels (default: 100 million)")
    seg.set_defaults(func=_cmd_segment)

    cls = sub.add_parser(
        "classify", parents=[common], help="classify smears with a model, or run the cross-validated experiment",
        description="With PATH...: segment each smear, score every cell's blast probability with a model "
        "bundle (default: the one shipped with leukoseg) and call the image ALL or normal, with the FAB subtype. "
        "With --dataset: the cross-validated experiment (plain kNN, GkNN, SVM, their baseline mean, the CNN of "
        "Thanh et al. and the fusion over image folds), writing RUN/ with folds.csv, cells.csv, images.csv, "
        "scores.npz, metrics.json and report.html. Research use only.",
    )
    cls.add_argument("paths", nargs="*", type=_nonempty, metavar="PATH",
                     help="image files, folders or globs to classify")
    cls.add_argument("--model", type=_path, default=None, metavar="DIR",
                     help="model bundle written by 'leukoseg train' (default: the bundled model)")
    cls.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")
    cls.add_argument("--pixel-size", type=_pixel_size, default=None, metavar="UM",
                     help="micrometres per pixel, if known, of every image (with --dataset too); default: "
                     "measured from the red cells, or, where too few are visible (single-cell crops), set so that "
                     "the median nucleus is 9 um")
    cls.add_argument("--no-crops", dest="crops", action="store_false", help="do not write crops/")
    cls.add_argument("--max-pixels", type=_positive_int, default=None,
                     help="refuse images with more pixels (default: 100 million)")
    cls.add_argument("--dataset", default=None, metavar="NAME",
                     help="run the experiment on a data set: all-idb1, all-idb2, or folder:PATH (one subfolder "
                     "per class)")
    cls.add_argument("--data-dir", type=_path, default=None,
                     help="the data set's folder (default: $LEUKOSEG_DATA/<NAME> or ~/.leukoseg/data/<NAME>)")
    cls.add_argument("--out", type=_path, default=None,
                     help="output folder (default: leukoseg-out for images, leukoseg-classify for --dataset)")
    cls.add_argument("--folds", type=_positive_int, default=None,
                     help="outer folds (default: 5; all-idb2: 2, its published protocol)")
    cls.add_argument("--repeats", type=_positive_int, default=None,
                     help="repeats of the folds (default: 1; all-idb2: 10)")
    cls.add_argument("--seed", type=_seed_int, default=0, help="seed; repeat r uses seed + r (default: %(default)s)")
    cls.add_argument("--cache", type=_path, default=None,
                     help="segmentation cache folder (default: $XDG_CACHE_HOME/leukoseg or ~/.cache/leukoseg)")
    cls.add_argument("--workers", type=_positive_int, default=None,
                     help="processes for segmenting (default: the number of CPUs)")
    cls.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                     help="where the CNN and the fusion run; auto: the GPU when one is visible (default: auto)")
    cls.add_argument("--no-cnn", dest="cnn", action="store_false",
                     help="baseline models only (no CNN, no fusion): minutes on a 2-core CPU, most of them "
                          "GkNN's genetic search")
    cls.add_argument("--feature-params", type=_json_object, default=None, metavar="JSON",
                     help="cell-feature settings over the defaults, as a JSON object (see "
                     "leukoseg.features.CellFeatures), e.g. '{\"context_um\": 4}': crops that hold 4 um of the "
                     "smear around each cell's box")
    cls.add_argument("--segment-params", type=_json_object, default=None, metavar="JSON",
                     help="segmentation settings over the defaults, as a JSON object of leukoseg.segmentation."
                     "segment keywords, e.g. '{\"stain_above_red_cells\": false}': the cell outlines of the "
                     "release before (the pixel size is --pixel-size)")
    cls.add_argument("--inner-search", action="store_true",
                     help="tune GkNN and SVM afresh on each inner split of the training images, so that the scores "
                     "choosing thresholds and fusion weights come from models tuned without them (about three "
                     "more genetic searches per fold); default: the fold's own choices refitted")
    cls.add_argument("--cnn-params", type=_json_object, default=None, metavar="JSON",
                     help="CNN settings over the experiment's, as a JSON object, to compare variants on the same "
                     "folds, e.g. '{\"activation\": \"selu\"}' or '{\"architecture\": \"densenet121\", "
                     "\"backbone_weights\": \"densenet121_notop.h5\"}' (see leukoseg.classify.CNNClassifier); "
                     "'{\"refit\": true}' scores the test cells with one CNN fitted on all training cells instead "
                     "of the mean of the cross-fitted CNNs")
    cls.set_defaults(func=_cmd_classify)

    trn = sub.add_parser(
        "train", parents=[common], help="train every model on a data set and write a model bundle",
        description="Fit the baseline models, the CNN and the fusion on all images of a data set and write a "
        "pickle-free model bundle (JSON + npz) for 'leukoseg classify --model'.",
    )
    trn.add_argument("--dataset", required=True, metavar="NAME", help="data set: all-idb1")
    trn.add_argument("--data-dir", type=_path, default=None, help="the data set's folder")
    trn.add_argument("--out", type=_path, required=True, metavar="MODEL_DIR", help="bundle folder to write")
    trn.add_argument("--run", type=_path, default=None, metavar="RUN",
                     help="an experiment run folder whose cross-validated metrics go into the provenance")
    trn.add_argument("--seed", type=_seed_int, default=0, help="seed (default: %(default)s)")
    trn.add_argument("--cache", type=_path, default=None, help="segmentation cache folder")
    trn.add_argument("--workers", type=_positive_int, default=None, help="processes for segmenting")
    trn.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the CNN trains")
    trn.add_argument("--no-cnn", dest="cnn", action="store_false", help="baseline models only")
    trn.add_argument("--feature-params", type=_json_object, default=None, metavar="JSON",
                     help="cell-feature settings (as 'classify --dataset --feature-params'); the bundle keeps them")
    trn.add_argument("--inner-search", action="store_true",
                     help="tune GkNN and SVM afresh on each inner split (as 'classify --dataset --inner-search')")
    trn.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    trn.set_defaults(func=_cmd_train)

    rep = sub.add_parser(
        "report", parents=[common], help="HTML and Markdown report of an experiment run",
        description="Write RUN/report.html (self-contained) and RUN/report.md from an experiment run folder.",
    )
    rep.add_argument("run", type=_path, metavar="RUN", help="run folder of 'leukoseg classify --dataset'")
    rep.add_argument("--data-dir", type=_path, default=None,
                     help="the data set's folder, for the gallery thumbnails (default: the one the run used)")
    rep.set_defaults(func=_cmd_report)
    return parser


def _path(text: str) -> Path:
    return Path(_nonempty(text))


def _nonempty(text: str) -> str:
    # Path("") is ".": an unset shell variable ("$IMG") would otherwise name the current folder.
    if not text:
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?)")
    return text


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed_int(text: str) -> int:
    from .pipelines.folds import _MAX_SEED  # only when --seed is given: --help stays light

    value = _whole_number(text)
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {_MAX_SEED}, got {value}")
    return value


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"dropout\": 0.3}}'; got {text!r}")
    return value


#: Pixel sizes accepted by --pixel-size, in micrometres: from a 100x oil objective on a high-resolution
#: sensor (about 0.02) to a low-power scan (a few um); anything outside is a typo or another unit.
PIXEL_SIZE_RANGE = (1e-3, 100.0)


def _pixel_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    low, high = PIXEL_SIZE_RANGE
    if not low <= value <= high:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} micrometres per pixel, got {text}")
    return value


def _one_line(text: object) -> str:
    """`text` on one line: control characters (a newline in a file name, say) written as Python escapes."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code instead of exiting (tests call it in-process).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 when every input was processed; 1 when some failed (each named on stderr) or on an unexpected
        error; 2 for a usage or configuration error (e.g. an output folder that cannot be written); 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed by argparse)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    tf_logger = logging.getLogger("tensorflow")
    saved_tf_level, saved_tf_env = tf_logger.level, os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if args.verbose < 2:
        # TensorFlow's C++ start-up chatter (oneDNN notes, tf.data attribute notices) and its retracing
        # notices are not for users; -vv shows them. Only a default: a value the user set wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        tf_logger.setLevel(logging.ERROR)
    logger = logging.getLogger("leukoseg")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    _configure_logging(logger, args.verbose, args.quiet)
    try:
        with terminate_on_sigterm():  # SIGTERM stops a batch as Ctrl-C does: workers stopped, one line
            return int(args.func(args))
    except LeukosegError as exc:
        _error(str(exc), args.verbose)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted", 0)
        return 130
    except MemoryError:
        _error("out of memory", args.verbose)
        return EXIT_FAILED_INPUTS
    except OSError as exc:  # e.g. a full disk or a folder that vanished: still one line
        # Libraries writing through an open file (numpy, zip) raise without a file name: name the output.
        where = exc.filename or getattr(args, "out", None)
        where = f"{where}: " if where else ""
        _error(f"{where}{exc.strerror or exc}", args.verbose)
        return EXIT_FAILED_INPUTS
    except Exception as exc:  # a bug: one line all the same; -v prints the traceback
        if _out_of_memory(exc):
            _error("out of memory", args.verbose)
            return EXIT_FAILED_INPUTS
        hint = "" if args.verbose else " (run with -v for the traceback)"
        _error(f"internal error: {type(exc).__name__}: {exc}{hint}", args.verbose)
        return EXIT_FAILED_INPUTS
    finally:
        _remove_empty(getattr(args, "created_folders", []))
        # main() may be called in-process (tests, notebooks): leave logging as it was found.
        logger.handlers[:], logger.level, logger.propagate = saved
        tf_logger.setLevel(saved_tf_level)
        if saved_tf_env is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = saved_tf_env


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
    sys.stderr.write(f"leukoseg: error: {_one_line(message)}\n")
    sys.stderr.flush()


def _check_writable(folder: Path, args: argparse.Namespace) -> None:
    """Fail early, on one line, when the output folder cannot be written (leukoseg.io loads on first use).

    The folders this creates are noted in ``args.created_folders`` (deepest first): :func:`main` removes
    those still empty at the end, so that a run whose every input failed leaves no empty tree behind.
    """
    from .io import _check_writable_folder

    created = []
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            break
        created.append(p)
    _check_writable_folder(folder)
    args.created_folders = [*getattr(args, "created_folders", []), *created]


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty; stop at the first that is not."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # results written there, or already gone
            break


def _output_names(paths: Sequence[Path]) -> list[str]:
    """One output folder name per input: the file's stem, with -2, -3 ... where stems repeat.

    Leading dots are dropped (a stem of "." or ".." would name the output folder itself or its parent,
    and a hidden folder would be skipped by later searches); names are compared without case, as a
    macOS or Windows file system does.
    """
    names, used = [], set()
    for p in paths:
        stem = p.stem.lstrip(".") or "image"
        name, k = stem, 2
        while name.casefold() in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name.casefold())
        names.append(name)
    return names


def _batch(raw_paths: Sequence[str], out: Path) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """The inputs of a batch with their output folders, and an error result per input that cannot be run.

    Folder searches skip `out` and earlier results; files named explicitly are kept. An input that lies
    inside an output folder of this batch is refused: replacing that folder would delete it.
    """
    from .io import _search

    refused, searched = [], []
    for raw in raw_paths:
        p = Path(raw)
        if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
            refused.append({"image": str(raw), "error": "cannot read this folder (permission denied)"})
        else:
            searched.append(raw)
    paths, empty = _search(searched, exclude=[out])
    empty = [_one_line(raw) for raw in empty]
    if not paths and not refused:
        shown = ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else "")
        raise LeukosegError(None, f"no images found in {shown}")
    for raw in empty:  # an empty folder, or a pattern matching no image: said, the rest of the batch goes on
        log.warning("%s: no images found there", raw)
    folders = [out / name for name in _output_names(paths)]
    replaced = {os.path.realpath(f) for f in folders}
    pairs = []
    for p, folder in zip(paths, folders):
        inside = next((q for q in Path(os.path.realpath(p)).parents if str(q) in replaced), None)
        if inside is None:
            pairs.append((p, folder))
        else:
            refused.append({"image": str(p), "error": f"lies inside the output folder {inside}, which this run "
                                                      "replaces; move it or choose another --out"})  # fmt: skip
    return pairs, refused


def _json_line(result: Mapping[str, Any]) -> str:
    """One JSON object per line; ASCII, so that any file name (even one not valid UTF-8) can be printed."""
    import json

    return json.dumps(dict(result), ensure_ascii=True) + "\n"


#: An image above this many pixels is the only one in memory: the next is read after it is written.
_OVERLAP_MAX_PIXELS = 25_000_000


def _segment_one(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Worker: read, segment and write one image. Returns a summary, or the error on one line."""
    return _write_outputs(_segment_stage(_read_stage(task)))


def _read_stage(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """First step of :func:`_segment_one`: the image (with its task and the seconds taken), or the error."""
    from .io import DEFAULT_MAX_PIXELS, read_image
    from .segmentation._segment import _size_problem

    path, out_dir, opts = task

    def work() -> dict[str, Any]:
        start = time.perf_counter()
        image = read_image(path, max_pixels=opts.get("max_pixels") or DEFAULT_MAX_PIXELS)
        too_small = _size_problem(image)  # segment() would refuse it too, as a ValueError
        if too_small:
            raise LeukosegError(path, too_small)
        return {"task": task, "array": image, "seconds": time.perf_counter() - start}

    return _guarded(path, opts, work)


def _segment_stage(staged: dict[str, Any]) -> dict[str, Any]:
    """Second step of :func:`_segment_one`: adds the segmentation to a read image, or gives the error."""
    from .segmentation import segment

    if "error" in staged:
        return staged
    path, out_dir, opts = staged["task"]

    def work() -> dict[str, Any]:
        start = time.perf_counter()
        seg = segment(staged["array"], pixel_size=opts.get("pixel_size"))
        return {**staged, "seg": seg, "seconds": staged["seconds"] + time.perf_counter() - start}

    return _guarded(path, opts, work)


def _write_outputs(staged: dict[str, Any]) -> dict[str, Any]:
    """Last step of :func:`_segment_one`: write the outputs of a segmented image; its summary or the error.

    The seconds reported are those spent on this image (reading, segmenting, writing), whether or not
    other images were processed at the same time.
    """
    from .segmentation import write_segmentation

    if "error" in staged:
        return staged
    path, out_dir, opts = staged["task"]
    seg = staged["seg"]

    def work() -> dict[str, Any]:
        start = time.perf_counter()
        write_segmentation(out_dir, staged["array"], seg, crops=opts.get("crops", True),
                           threads=opts.get("threads", 1),
                           summary={"image": path, "seconds_segment": round(staged["seconds"], 4)})
        return {
            "image": path,
            "n_cells": seg.n_cells,
            "um_per_px": round(seg.um_per_px, 6),
            "scale_source": seg.scale_source,
            "seconds": round(staged["seconds"] + time.perf_counter() - start, 4),
            "output": out_dir,
        }

    return _guarded(path, opts, work)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says memory ran out: OpenCV raises its own ``cv2.error``, not MemoryError."""
    return type(exc).__module__.split(".")[0] == "cv2" and "Insufficient memory" in str(exc)


def _emit(text: str) -> None:
    """Write `text` to standard output now (one JSON line per image, for a pipe to read as they come).

    A full disk or a closed pipe is standard output's problem, not the output folder's: the error says so.
    When the reader has gone (``| head``), standard output is pointed at the null device, so that Python's
    own last flush at exit does not fail again with a traceback.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise LeukosegError("standard output", "closed by the reader (broken pipe)") from None
    except OSError as exc:
        raise LeukosegError("standard output", exc.strerror or str(exc)) from None


def _guarded(path: str, opts: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()``, or the error it raised as a one-line summary (the batch goes on)."""
    try:
        return work()
    except LeukosegError as exc:
        return {"image": path, "error": exc.reason}
    except MemoryError:
        return {"image": path, "error": "out of memory (try --max-pixels or a smaller image)"}
    except OSError as exc:
        return {"image": path, "error": f"cannot write output ({exc.strerror or exc})"}
    except Exception as exc:  # a bug: keep the batch going, but say what happened
        if _out_of_memory(exc):
            return {"image": path, "error": "out of memory (try --max-pixels or a smaller image)"}
        detail = traceback.format_exc() if opts.get("verbose") else ""
        return {"image": path, "error": f"internal error: {type(exc).__name__}: {exc}", "traceback": detail}


def _segment_in_process(tasks: list) -> Iterator[dict[str, Any]]:
    """:func:`_segment_one` over `tasks` in this process, results in order.

    With more than one thread per worker (``opts['threads']``, the CPUs per worker process), the three
    steps run as a pipeline: one thread decodes the next image and another writes (encodes) the previous
    one while this one is segmented; most of each step runs in OpenCV and zlib, outside Python's lock.
    An image above ``_OVERLAP_MAX_PIXELS`` is never in memory together with another.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    if not tasks:
        return
    if tasks[0][2].get("threads", 1) < 2:
        yield from map(_segment_one, tasks)
        return

    def big(staged: dict[str, Any]) -> bool:
        return "array" in staged and staged["array"].shape[0] * staged["array"].shape[1] > _OVERLAP_MAX_PIXELS

    with ThreadPoolExecutor(1, thread_name_prefix="leukoseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="leukoseg-write") as writer:
        written: Future | None = None
        next_read: Future | None = reader.submit(_read_stage, tasks[0])
        for i in range(len(tasks)):
            staged = next_read.result() if next_read is not None else _read_stage(tasks[i])
            next_read = None
            if i + 1 < len(tasks) and not big(staged):
                next_read = reader.submit(_read_stage, tasks[i + 1])
            staged = _segment_stage(staged)
            if written is not None:
                yield written.result()
            written = writer.submit(_write_outputs, staged)
            if big(staged):
                yield written.result()
                written = None
        if written is not None:
            yield written.result()


def _single_blas_thread() -> None:
    """Segmenting does no linear algebra: keep OpenBLAS from starting a thread per core as numpy loads.

    Only before numpy's first import, and only where the user has not chosen; worker processes inherit it.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _cmd_segment(args: argparse.Namespace) -> int:
    _single_blas_thread()
    # A folder given as input may hold earlier results (label PNGs): never segment our own outputs.
    pairs, refused = _batch(args.paths, args.out.resolve())
    _check_writable(args.out, args)
    opts = {"pixel_size": args.pixel_size, "crops": args.crops, "max_pixels": args.max_pixels,
            "verbose": args.verbose}
    tasks = [(str(p), str(args.out / folder.name), opts) for p, folder in pairs]
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(tasks)))
    opts["threads"] = max(1, (os.cpu_count() or 1) // workers)  # encoder threads per worker
    failed = 0
    results = _run_tasks(_segment_one, tasks, workers, quiet=args.quiet, unit="image", serial=_segment_in_process)
    for result in itertools.chain(refused, results):
        if "error" in result:
            failed += 1
            if result.get("traceback"):
                sys.stderr.write(result["traceback"])
            _error(f"{result['image']}: {result['error']}", 0)
        else:
            log.info("%s: %d cells, %.4f um/px (%s), %.2f s", _one_line(result["image"]), result["n_cells"],
                     result["um_per_px"], result["scale_source"], result["seconds"])
        if args.json:
            result.pop("traceback", None)
            _emit(_json_line(result))
    if not args.json and not args.quiet:
        total = len(tasks) + len(refused)
        sys.stderr.write(f"leukoseg: {total - failed} of {total} images segmented into {_one_line(args.out)}\n")
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


# Options that one mode of 'classify' uses and the other has no use for: refused there, not silently ignored.
_IMAGES_ONLY = {"model": "--model", "json": "--json", "crops": "--no-crops", "max_pixels": "--max-pixels"}
_EXPERIMENT_ONLY = {"data_dir": "--data-dir", "folds": "--folds", "repeats": "--repeats", "seed": "--seed",
                    "cache": "--cache", "device": "--device", "cnn": "--no-cnn", "cnn_params": "--cnn-params",
                    "inner_search": "--inner-search", "feature_params": "--feature-params",
                    "segment_params": "--segment-params"}


def _cmd_classify(args: argparse.Namespace) -> int:
    if args.dataset and args.paths:
        raise LeukosegError(None, "give image PATHs or --dataset, not both")
    if args.dataset:
        _refuse_unused(args, _IMAGES_ONLY, "image PATHs, not to --dataset")
        return _cmd_experiment(args)
    if not args.paths:
        raise LeukosegError(None, "nothing to classify: give image PATHs, or --dataset NAME for the experiment")
    _refuse_unused(args, _EXPERIMENT_ONLY, "--dataset, not to image PATHs")
    return _cmd_classify_images(args)


def _refuse_unused(args: argparse.Namespace, options: Mapping[str, str], applies_to: str) -> None:
    """One error naming the given `options` (dest -> flag) that this mode of 'classify' would ignore."""
    defaults = vars(build_parser().parse_args(["classify"]))
    given = [flag for dest, flag in options.items() if getattr(args, dest) != defaults[dest]]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise LeukosegError(None, f"{', '.join(given)} {verb} to {applies_to}")


# Outer folds and repeats by data set, where its published figures use others than 5 x 1: ALL-IDB2's are
# 10 repeats of 2-fold cross-validation (Genovese et al.).
_PROTOCOLS = {"all-idb2": (2, 10)}


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .datasets import load_dataset
    from .pipelines.experiment import run_experiment
    from .pipelines.report import write_report

    if args.folds is not None and args.folds < 2:
        raise LeukosegError(None, f"--folds must be at least 2, got {args.folds}")
    if not args.cnn and args.cnn_params is not None:
        raise LeukosegError(None, "--cnn-params applies to the CNN, which --no-cnn leaves out")
    if args.dataset.strip().lower().startswith("folder:") and args.data_dir is not None:  # as load_dataset reads it
        raise LeukosegError(None, "--data-dir applies to all-idb1 and all-idb2; folder:PATH names its folder itself")
    if "pixel_size" in (args.segment_params or {}):
        raise LeukosegError(None, "give the pixel size as --pixel-size, not in --segment-params")
    segment_params = dict(args.segment_params or {})
    if args.pixel_size is not None:  # single-cell crops (ALL-IDB2) hold too few red cells for the ruler
        segment_params["pixel_size"] = args.pixel_size
    out = args.out or Path("leukoseg-classify")
    dataset = load_dataset(args.dataset, args.data_dir)
    folds, repeats = _PROTOCOLS.get(dataset.name, (5, 1))
    _check_writable(out, args)
    if args.device == "gpu":
        _check_gpu()
    result = run_experiment(
        dataset, out, n_folds=args.folds or folds, repeats=args.repeats or repeats, seed=args.seed,
        cache_dir=args.cache, workers=args.workers or os.cpu_count() or 1, cnn=args.cnn, device=args.device,
        progress=not args.quiet, cnn_params=args.cnn_params, inner_search=args.inner_search,
        feature_params=args.feature_params,
        segment_params=segment_params or None,
    )  # fmt: skip
    # The results are whole if the report fails: say how to get it without running the experiment again.
    rerun = f"the results are written, and `leukoseg report {out}` writes the report from them"
    try:
        report = write_report(out, data_dir=dataset.root)
    except LeukosegError as exc:
        raise LeukosegError(exc.path, f"{exc.reason}; {rerun}") from None
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}; {rerun}", exc.filename) from None
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
                         + f"\nleukoseg: decision model {m['primary_model']}; results in {result.out_dir}, "
                         f"report {report.html}\n")
    return EXIT_OK


def _cmd_classify_images(args: argparse.Namespace) -> int:
    from .pipelines.predict import default_model_dir, load_model

    out = args.out or Path("leukoseg-out")
    model_dir = str(args.model if args.model is not None else default_model_dir())
    load_model(model_dir)  # a bad bundle is one error before any image is read
    pairs, refused = _batch(args.paths, out.resolve())
    _check_writable(out, args)
    opts = {"pixel_size": args.pixel_size, "crops": args.crops, "max_pixels": args.max_pixels,
            "verbose": args.verbose, "model": model_dir}  # fmt: skip
    # Output paths as `segment` gives them: under --out as the user wrote it.
    tasks = [(str(p), str(out / folder.name), opts) for p, folder in pairs]
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(tasks)))
    opts["threads"] = max(1, (os.cpu_count() or 1) // workers)
    failed = 0
    results = _run_tasks(_classify_one, tasks, workers, quiet=args.quiet, unit="image")
    for result in itertools.chain(refused, results):
        if "error" in result:
            failed += 1
            if result.get("traceback"):
                sys.stderr.write(result["traceback"])
            _error(f"{result['image']}: {result['error']}", 0)
        elif not args.json and not args.quiet:
            sys.stderr.write(_classification_line(result) + "\n")
        if args.json:
            result.pop("traceback", None)
            _emit(_json_line(result))
    if not args.json and not args.quiet:
        total = len(tasks) + len(refused)
        sys.stderr.write(f"leukoseg: {total - failed} of {total} images classified into {_one_line(out)} "
                         "(research use only, not a diagnosis)\n")  # fmt: skip
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def _model(path: str):
    """The bundle at `path`, loaded once per process and state of its files (workers classify many images).

    The cache key holds each file's inode, size and modification time, so a bundle rewritten between two
    calls of :func:`main` in one process (e.g. a notebook) is loaded again, not served stale.
    """
    folder = Path(path)
    try:
        stamp = tuple(sorted((f.name, st.st_ino, st.st_size, st.st_mtime_ns)
                             for f in folder.iterdir() for st in [f.stat()]))  # fmt: skip
    except OSError:
        stamp = ()  # unreadable: load_model names the problem
    return _load_model(path, stamp)


@functools.lru_cache(maxsize=2)
def _load_model(path: str, stamp: tuple) -> Any:
    from .pipelines.predict import load_model

    return load_model(path)


def _classification_line(result: Mapping[str, Any]) -> str:
    """The verdict on one smear as `classify` prints it."""
    line = (f"{_one_line(result['image'])}: {result['decision']} (p_all {result['p_all']:.3f}), "
            f"{result['n_blasts']} of {result['n_cells']} cells blasts")  # fmt: skip
    if result.get("fab_subtype"):
        line += f", FAB {result['fab_subtype']} (score {result['fab_score']})"
        if not result["n_blasts"]:  # else the two would read as a contradiction
            line += (" from its most probable cell: no cell is called a blast, the image score adds up "
                     "doubtful ones")
    if not result["n_cells"]:  # it scores 0 by the image rule: say so, lest 'normal' read as evidence
        line += "; no white cells found: 'normal' by default, not a healthy smear"
    return line


def _classify_one(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """Worker: read, segment, classify and write one image; its summary, or the error on one line."""
    staged = _read_stage(task)
    if "error" in staged:
        return staged
    path, out_dir, opts = task

    def work() -> dict[str, Any]:
        from .pipelines.predict import classify_image, write_classification

        start = time.perf_counter() - staged["seconds"]  # reading counts
        seg, result = classify_image(staged["array"], _model(opts["model"]), pixel_size=opts.get("pixel_size"))
        summary = {"image": path, "um_per_px": round(seg.um_per_px, 6), "scale_source": seg.scale_source}
        write_classification(out_dir, staged["array"], seg, result, crops=opts.get("crops", True),
                             summary=summary, threads=opts.get("threads", 1))  # fmt: skip
        return {**summary, **result.to_dict(), "seconds": round(time.perf_counter() - start, 4), "output": out_dir}

    return _guarded(path, opts, work)


def _cmd_train(args: argparse.Namespace) -> int:
    from .datasets import load_dataset
    from .pipelines.report import load_metrics
    from .pipelines.train import check_bundle_target, train_bundle

    # Mistakes in --run and --out fail before the data set is read (seconds: every image is hashed).
    if args.run is not None:
        load_metrics(args.run)
    check_bundle_target(args.out, overwrite=args.overwrite)
    dataset = load_dataset(args.dataset, args.data_dir)
    # The bundle folder itself is written atomically at the end; its parent must be a writable folder now.
    _check_writable(args.out.parent, args)
    if args.device == "gpu":
        _check_gpu()
    path = train_bundle(
        dataset, args.out, seed=args.seed, cache_dir=args.cache, workers=args.workers or os.cpu_count() or 1,
        device=args.device, cnn=args.cnn, run_dir=args.run, overwrite=args.overwrite, progress=not args.quiet,
        inner_search=args.inner_search, feature_params=args.feature_params,
    )  # fmt: skip
    if not args.quiet:
        sys.stderr.write(f"leukoseg: model bundle written to {path}\n")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from .pipelines.report import write_report

    files = write_report(args.run, data_dir=args.data_dir)
    if not args.quiet:
        sys.stderr.write(f"leukoseg: report written to {files.html} and {files.markdown}\n")
    return EXIT_OK


def _check_gpu() -> None:
    """``--device gpu`` without a visible GPU: a one-line error before any work."""
    from .classify.cnn import resolve_device

    try:
        resolve_device("gpu")
    except ValueError as exc:
        raise LeukosegError(None, str(exc)) from None


def _run_tasks(func, tasks: list, workers: int, *, quiet: bool, unit: str,
               serial: Callable[[list], Iterator[Any]] | None = None):
    """Run `func` over `tasks`, in worker processes when `workers` > 1, with a progress bar on a terminal.

    Each task is ``(image, output folder, options)``. Results are yielded in the order of `tasks`, so
    outputs and logs are reproducible. With one worker, `serial` (when given) runs the tasks in this process
    instead of a plain loop over `func`. At the end, interrupted or not, the staged folders that stopped or
    killed workers left beside the output folders are removed.
    """
    if quiet or not sys.stderr.isatty():
        bar: Any = _NoBar()  # no bar to show: spare the batch tqdm's import
    else:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit=unit, file=sys.stderr)
    try:
        if workers <= 1:
            for result in serial(tasks) if serial is not None else map(func, tasks):
                yield result
                bar.update()
            return
        from concurrent.futures.process import BrokenProcessPool

        from ._workers import process_pool

        remaining, retried = list(tasks), set()
        while remaining:
            with process_pool(workers) as pool:  # an interrupt cancels the queue and stops the workers
                futures = [pool.submit(func, task) for task in remaining]
                for i, future in enumerate(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        # A worker was killed (out of memory, a signal); which image it held is unknown, so
                        # the first unfinished one is retried once in a fresh pool before it is reported.
                        key = id(remaining[i])
                        if key in retried:
                            yield {"image": remaining[i][0], "error": "its worker process was killed (out of memory?)"}
                            bar.update()
                            remaining = remaining[i + 1 :]
                        else:
                            retried.add(key)
                            remaining = remaining[i:]
                        break
                    yield result
                    bar.update()
                else:
                    remaining = []
    finally:
        bar.close()
        # Here every worker is gone (process_pool stops them on the way out): what is staged is left over.
        from .io import _remove_staged_leftovers

        _remove_staged_leftovers(Path(task[1]) for task in tasks)


class _NoBar:
    """The progress bar's interface, doing nothing."""

    def update(self, n: int = 1) -> None:
        """Count `n` more done (ignored)."""

    def close(self) -> None:
        """Close the bar (nothing to close)."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
