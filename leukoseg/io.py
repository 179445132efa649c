"""Reading smear images and writing outputs atomically.

Every image that enters leukoseg goes through :func:`read_image`, so that the same checks (size limit
before decoding, colour required, 16-bit scaling, EXIF orientation) apply to the command line, the data
sets and the Python API alike.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._stderr import c_stderr_captured
from .errors import LeukosegError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "atomic_write",
    "encode_image",
    "find_images",
    "image_files",
    "read_image",
    "write_image",
    "write_json",
    "write_text",
    "write_texts",
]

#: Images above this many pixels are refused before decoding (a decompression bomb cannot fill memory).
DEFAULT_MAX_PIXELS = 100_000_000

#: File name extensions that :func:`find_images` collects from folders.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

# Pillow modes that carry no colour: a stained smear needs its hue to find nuclei.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"})


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a colour image file as an RGB array.

    Parameters
    ----------
    path : str or os.PathLike
        A JPEG, PNG, TIFF or BMP file.
    max_pixels : int, optional
        Refuse images with more pixels than this, checked from the header before any decoding.

    Returns
    -------
    image : (H, W, 3) ndarray of uint8
        RGB, EXIF orientation applied, alpha dropped, 16-bit samples scaled to 8 bits (their top byte; the
        top 8 of the bits they use, with a logged warning, when that is less than 16: the data of a 10-, 12- or
        14-bit camera).

    Raises
    ------
    LeukosegError
        If the file is missing, empty, not an image, truncated, grayscale or too large.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    >>> read_image(p).shape
    (4, 5, 3)
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        raise LeukosegError(path, problem)

    with warnings.catch_warnings(), _pillow_pixel_limit(max_pixels):
        # The pixel limit is ours (max_pixels); Pillow's own bomb warning would only repeat it. Its other
        # warnings (e.g. "Corrupt EXIF data") are about metadata the pixels do not need.
        warnings.simplefilter("ignore")
        try:
            with open(path, "rb") as f:
                if not f.read(1):
                    raise LeukosegError(path, "file is empty")
                # The header first: a huge image is refused without reading (or decoding) the rest.
                _refuse_huge(path, f, max_pixels)
                f.seek(0)
                data = f.read()
        except OSError as exc:
            raise LeukosegError(path, f"cannot read file ({exc.strerror or exc})") from None
        try:
            pil: Image.Image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            if data[:4] in (b"II*\x00", b"MM\x00*"):  # a TIFF header Pillow cannot go on from
                raise LeukosegError(path, "TIFF that cannot be decoded (damaged, or samples of an unsupported "
                                          "format such as floating point); 8- or 16-bit RGB expected") from None
            raise LeukosegError(path, "not a readable image (JPEG, PNG, TIFF or BMP expected)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise LeukosegError(path, f"not a readable image ({exc})") from None
        width, height = pil.size  # within max_pixels: _refuse_huge read the same header
        if width < 1 or height < 1:
            raise LeukosegError(path, f"image has no pixels ({width}x{height})")
        if pil.mode in _GRAY_MODES or (pil.mode == "P" and _palette_is_gray(pil)):
            raise LeukosegError(path, f"grayscale image (mode {pil.mode}); a colour (stained) smear is needed")
        if pil.format == "JPEG" and pil.mode == "RGB":
            try:
                fast = _decode_jpeg(data, _exif_orientation(pil))
            except _CorruptJPEG as exc:
                raise LeukosegError(path, f"corrupt JPEG data ({exc}); the file is damaged or incomplete") from None
            if fast is not None:
                _refuse_neutral(path, fast)
                return fast
        wide = _decode_16bit(path, pil, data)
        if wide is not None:
            _refuse_neutral(path, wide)
            return wide
        from PIL import ImageOps

        try:
            pil.load()
            pil = ImageOps.exif_transpose(pil)
            rgb = pil.convert("RGB")  # drops alpha, expands palettes, the top byte of 16-bit colour OpenCV refused
        except (OSError, ValueError, SyntaxError) as exc:
            reason = str(exc)
            if "truncated" in reason or "broken data stream" in reason:
                reason = "truncated or corrupt image data"
            raise LeukosegError(path, reason) from None
    image = np.asarray(rgb, dtype=np.uint8)
    if not image.flags.writeable:
        image = image.copy()
    _refuse_neutral(path, image)
    return image


#: Largest difference between the channels of a pixel that still counts as grey (JPEG rounding).
_NEUTRAL_SPREAD = 3


def _refuse_neutral(path: Path, image: np.ndarray) -> None:
    """Refuse a grey-level picture stored as RGB (all three channels equal): its stain colours are gone.

    A uniform field (no structure at all) is let through: it is an empty image, not a grey smear.
    """
    # Coarse looks settle nearly every colour image in a fraction of a millisecond; the last looks at every pixel.
    for step in (16, 4, 1):
        r, g, b = (image[::step, ::step, c].astype(np.int16) for c in range(3))
        if max(int(np.abs(r - g).max()), int(np.abs(g - b).max()), int(np.abs(r - b).max())) > _NEUTRAL_SPREAD:
            return
    if int(g.max()) - int(g.min()) > 2 * _NEUTRAL_SPREAD:
        raise LeukosegError(path, "grayscale image (its red, green and blue channels are equal); a colour "
                                  "(stained) smear is needed")


def _check_writable_folder(folder: str | os.PathLike[str], *, what: str = "output folder", hint: str = "") -> None:
    """Create `folder` if needed and write a probe file in it: fail early, on one line, when that cannot be done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".leukoseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if folder.exists() and not folder.is_dir():
            raise LeukosegError(folder, f"{what} is a file, not a folder{hint}") from None
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and not folder.exists():
            raise LeukosegError(folder, f"{what} cannot be created: a parent of it is a file{hint}") from None
        raise LeukosegError(folder, f"{what} is not writable ({exc.strerror or exc}){hint}") from None


#: Serialises the rare changes of Pillow's process-wide pixel limit (see _pillow_pixel_limit).
_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to `max_pixels` (ours is the limit that counts) for the block.

    Pillow refuses images above twice its own ``Image.MAX_IMAGE_PIXELS`` (about 179 million pixels)
    whatever leukoseg's limit; only a larger `max_pixels` raises it, for the block only, under a lock.
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None or max_pixels < 2 * Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _exif_orientation(pil: Any) -> int:
    try:
        return int(pil.getexif().get(0x0112, 1))  # 0x0112: the EXIF Orientation tag
    except Exception:  # a broken EXIF block must not stop the image from being read
        return 1


# How to undo each EXIF orientation (2-8) with numpy: (rotations by 90 degrees counter-clockwise, then flip).
_ORIENT = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}


def _file_problem(path: Path) -> str | None:
    """Why `path` is not a file to read an image from (a broken link, a folder, a device), or None if it is one."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if path.is_symlink():
            return "broken symbolic link (or a link loop)"
        if isinstance(exc, FileNotFoundError):
            # A pattern that matched no file reaches here as itself (find_images keeps it, to be reported).
            import glob

            return "no such file, and no file matches this pattern" if glob.has_magic(str(path)) else "no such file"
        return f"cannot open the file ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    return None if stat.S_ISREG(mode) else "not a regular file (a device or a pipe?)"


def _refuse_huge(path: Path, f: Any, max_pixels: int) -> None:
    """Raise if the image header in open file `f` declares more than `max_pixels` (Pillow reads the header only)."""
    from PIL import Image

    f.seek(0)
    try:
        with Image.open(f) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise LeukosegError(path, f"image too large (over {max_pixels:,} pixels); refused before decoding") from None
    except Exception:  # not an image, or a broken header: the full read below says which
        return
    if width * height > max_pixels:
        raise LeukosegError(path, f"image too large ({width}x{height} = {width * height:,} pixels, limit "
                                  f"{max_pixels:,}); refused before reading it")  # fmt: skip


class _CorruptJPEG(Exception):
    """libjpeg reported corrupt data while decoding (its message is the exception's)."""


def _decode_jpeg(data: bytes, orientation: int) -> np.ndarray | None:
    """Decode a colour JPEG with OpenCV (libjpeg-turbo, faster than Pillow here), or None to let Pillow do it.

    OpenCV decodes a truncated JPEG without an error, so a file that does not end with the JPEG
    end-of-image marker goes to Pillow, which reports the truncation. Data missing or damaged inside the
    file (a copy cut short, then ended with a marker; a zeroed block) is decoded too, as grey or garbled
    blocks: libjpeg only prints "Corrupt JPEG data" on the C stderr. That message is caught and raised as
    :class:`_CorruptJPEG`.
    """
    import cv2

    if b"\xff\xd9" not in data[-4096:]:
        return None
    # libjpeg-turbo writes RGB directly where OpenCV can ask for it (4.11+): no channel swap pass.
    direct = getattr(cv2, "IMREAD_COLOR_RGB", None)
    flags = (cv2.IMREAD_COLOR if direct is None else direct) | cv2.IMREAD_IGNORE_ORIENTATION
    with c_stderr_captured(drop=lambda line: "JPEG" in line) as captured:
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    corrupt = [line for line in captured if "Corrupt JPEG data" in line or "Premature end of JPEG" in line]
    if corrupt:
        raise _CorruptJPEG(corrupt[0].strip().removeprefix("Corrupt JPEG data: "))
    if rgb is None:
        return None
    if direct is None:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    return _oriented(rgb, orientation)


def _oriented(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """`rgb` as EXIF `orientation` says it is to be shown (decoders asked to ignore the tag)."""
    if orientation in _ORIENT:
        turns, flip = _ORIENT[orientation]
        rgb = np.rot90(rgb, turns)
        if flip:
            rgb = rgb[:, ::-1]
        rgb = np.ascontiguousarray(rgb)
    return rgb


def _decode_16bit(path: Path, pil: Any, data: bytes) -> np.ndarray | None:
    """A colour PNG or TIFF of 16-bit samples, as 8 bits: the top 8 of the bits its samples use; None for any
    other image, and for one OpenCV cannot decode (Pillow decodes those).

    Data that fill the 16 bits keep their top byte, as Pillow would take it. Those of a 10-, 12- or 14-bit
    camera keep the top 8 of their bits, with a warning: their top byte would make 12-bit data 16 times too
    dark, and the stain thresholds would find other cells, without a word.
    """
    if pil.format == "PNG":
        wide = len(data) > 24 and data[24] == 16  # IHDR bit depth
    elif pil.format == "TIFF":
        wide = set(getattr(pil, "tag_v2", {}).get(258, ())) == {16}  # BitsPerSample
    else:
        wide = False
    if not wide:
        return None
    import cv2

    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] not in (3, 4):
        return None
    rgb: np.ndarray = raw[..., 2::-1]  # BGR(A) -> RGB
    bits = max(8, int(rgb.max()).bit_length())
    if bits < 16:
        log.warning("%s: 16-bit samples reach only %d: read as %d-bit data, scaled to 8 bits", path, rgb.max(),
                    bits)  # fmt: skip
    return _oriented((rgb >> (bits - 8)).astype(np.uint8), _exif_orientation(pil))


def _palette_is_gray(pil: Any) -> bool:
    palette = pil.getpalette() or []
    triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(triples.size) and bool(np.all(triples == triples[:, :1]))


def find_images(paths: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of image files.

    Folders and glob patterns contribute only files with an image extension, outside hidden folders,
    leukoseg's own result folders (those holding a ``segmentation.json``) and the folders in `exclude`.
    A file named explicitly is always kept, whatever its extension or place, so that reading it reports
    the real problem; so is a path or pattern that matches nothing, and reading it then says "no such file"
    (for a pattern: "no such file, and no file matches this pattern").

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Files, folders or glob patterns (``*``, ``?``, ``[``).
    exclude : iterable of str or os.PathLike, optional
        Folders not searched (e.g. the output folder, when it lies inside an input folder).

    Returns
    -------
    list of pathlib.Path
        Unique files (one path per file, however it is named) in a stable order: the arguments' order,
        each folder sorted.
    """
    return _search(paths, exclude=exclude)[0]


def _search(
    paths: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str | os.PathLike[str]] = ()
) -> tuple[list[Path], list[str]]:
    """:func:`find_images`, and the folders and patterns among `paths` that contributed no image."""
    import glob

    skip = {Path(e).resolve() for e in exclude}
    unique: list[Path] = []
    seen: set[str] = set()
    empty: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = image_files(p, exclude=skip)
        elif not p.exists() and glob.has_magic(str(raw)):
            matches = sorted(Path(q) for q in glob.glob(str(raw), recursive=True) if Path(q).is_file())
            # As for a folder: excluded folders below where the pattern starts are skipped, not that one.
            base = Path(*[part for part in itertools.takewhile(lambda x: not glob.has_magic(x), p.parts)]).resolve()
            below = {s for s in skip if s != base and s not in base.parents}
            # A pattern matching nothing is kept, to be reported as missing rather than silently dropped.
            found = [q for q in matches if _collectable(q, below)] if matches else [p]
        else:
            found = [p]
        if not found:
            empty.append(str(raw))
        for q in found:
            real = os.path.realpath(q)  # the same file named two ways is one input (realpath never raises)
            if real not in seen:
                seen.add(real)
                unique.append(q)
    return unique, empty


def image_files(folder: str | os.PathLike[str], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """The image files under `folder`, sorted, as a folder search should see them.

    Hidden files and folders (a leading dot: ``.ipynb_checkpoints``, macOS ``._`` files, leukoseg's own
    folders in progress), leukoseg's result folders (those holding a ``segmentation.json``: their overlays
    and crops are not smears) and the folders in `exclude` are skipped.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder searched, recursively (symbolic links to folders are not followed).
    exclude : iterable of str or os.PathLike, optional
        Sub-folders not searched (`folder` itself always is).

    Returns
    -------
    list of pathlib.Path
        Files with an extension in :data:`IMAGE_EXTENSIONS`, sorted.
    """
    skip = {Path(e).resolve() for e in exclude} - {Path(folder).resolve()}  # the folder searched is searched
    out: list[Path] = []

    def unreadable(exc: OSError) -> None:  # os.walk would skip it silently
        log.warning("%s: cannot read this folder (%s); its images are skipped", exc.filename, exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        if _RESULT_MARKER in filenames or Path(dirpath).resolve() in skip:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath, f) for f in filenames
                   if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)  # fmt: skip
    return sorted(out)


#: The file that marks a folder as one of leukoseg's per-image result folders.
_RESULT_MARKER = "segmentation.json"


def _collectable(path: Path, skip: set[Path]) -> bool:
    """Whether a file matched by a pattern is an input: an image, not in `skip` nor in a result folder."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS or not skip.isdisjoint(path.resolve().parents):
        return False
    folder = path.parent.parent if path.parent.name == "crops" else path.parent
    return not (folder / _RESULT_MARKER).is_file()


def _own_folder_refusal(target: Path, what: str) -> str | None:
    """Why `target` cannot be written as a whole folder, or None: it names the current or parent folder.

    Results are staged beside their folder and renamed into place (:func:`_staged_folder`); for ``.`` or
    ``..`` "beside" is inside, and the final rename fails, after all the work. Callers refuse such a target
    before any work; `what` names the result in the message (e.g. ``"bundle"``).
    """
    if Path(target).name in ("", ".."):  # '.', 'a/..', '/': no name of its own to stage beside
        return f"names the current or parent folder; give the {what} a folder of its own"
    return None


def _refusal_to_replace(folder: Path, is_ours: Callable[[Path], bool], marker: str) -> str | None:
    """Why leukoseg must not replace `folder` by a folder it wrote, or None when it may.

    Only an absent path, an empty folder or a folder that `is_ours` recognises (one holding `marker`) may be
    replaced: re-runs and ``--overwrite`` must never delete someone's other files. The one guard of the
    per-image result folders and the model bundles.
    """
    if not (folder.exists() or folder.is_symlink()):
        return None
    if folder.is_symlink():  # replacing it would replace the link, not write where it points
        return "a symbolic link, not a folder"
    if not folder.is_dir():
        return "not a folder"
    if not any(folder.iterdir()) or is_ours(folder):
        return None
    return f"other files, no {marker}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path` and move it into place only when the block succeeds.

    An interrupt or an error leaves the old file (or none), never a half-written one.

    Parameters
    ----------
    path : str or os.PathLike
        The final file name.
    mode : {'wb', 'w'}, default='wb'
        Binary or text (UTF-8, ``\\n`` newlines).

    Yields
    ------
    file object
        The open temporary file, to write to; it is closed and renamed to `path` when the block ends
        without an exception, and deleted otherwise.
    """
    path = Path(path)
    tmp, f = _open_temporary(path, mode)
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_texts(files: Mapping[str | os.PathLike[str], str]) -> None:
    """Write UTF-8 text files as a set: every one is written and closed before any replaces its earlier version.

    A failure (a full disk, an interrupt) while writing any of them leaves all the earlier versions, never a
    new file beside an old one of the same set (e.g. a report's HTML and Markdown).

    Parameters
    ----------
    files : mapping of path to str
        Each file (its folder must exist) and its content, written with ``\\n`` newlines.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            tmp, f = _open_temporary(Path(path), "w")
            staged.append((tmp, Path(path)))
            with f:
                f.write(text)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def _open_temporary(path: Path, mode: str) -> tuple[str, Any]:
    """A new temporary file beside `path`, open in `mode` ('wb', or 'w': UTF-8, ``\\n`` newlines): (name, file)."""
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        if "b" in mode:
            return tmp, os.fdopen(fd, mode)
        return tmp, os.fdopen(fd, mode, encoding="utf-8", newline="\n")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_TEMP_NAME_BYTES = 200  # of a name kept in the temporary names made beside it
_TEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # of tempfile's random part (8 of them)


def _batch_owner() -> int:
    """The process that answers for this one's temporary files: its parent in a worker process, else itself.

    A batch's worker processes are children of the process that runs the batch; that process removes what
    they left behind (:func:`_remove_staged_leftovers`), and only that: another leukoseg run writing to the
    same folder or cache at the same time has another owner.
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


def _temp_prefix(name: str, owner: int | None = None) -> str:
    """``.<name>.<owner>.``, the start of a temporary file or folder made beside `name` (``tempfile`` adds 8
    characters and a suffix); `owner` defaults to :func:`_batch_owner`. A long name is cut to 200 bytes, so
    that the temporary name stays within the 255 bytes a file name may have wherever `name` itself fits.
    """
    while len(os.fsencode(name)) > _TEMP_NAME_BYTES:
        name = name[:-1]
    return f".{name}.{_batch_owner() if owner is None else owner}."


def _remove_staged_leftovers(targets: Iterable[Path]) -> None:
    """Clear up after this process's workers beside `targets`: staged folders and files, interrupted swaps.

    A worker process stopped by a signal (an interrupted batch, a killed worker) has no chance to remove
    what it was writing (:func:`_staged_folder`, :func:`atomic_write`: ``.<name>.<owner>.XXXXXXXX.part``)
    or to finish moving a result into place (:func:`_swap_folder`, which moves the earlier result aside to
    ``.<name>.<owner>.XXXXXXXX.old``). The process that ran the batch calls this once none of its workers
    writes any more; only names that this process owns are touched. A staged folder or file is removed; an
    earlier result moved aside is put back where the new one never arrived, and removed where it did.
    Each folder holding targets is listed once.
    """
    wanted: dict[Path, dict[str, Path]] = {}
    for target in targets:
        wanted.setdefault(target.parent, {})[_temp_prefix(target.name, os.getpid())] = target
    for parent, by_prefix in wanted.items():
        try:
            entries = sorted(os.scandir(parent), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = entry.name  # prefix + 8 random characters + ".part" or ".old"
            suffix = ".part" if name.endswith(".part") else ".old" if name.endswith(".old") else None
            if suffix is None:
                continue
            stem = name[: -len(suffix)]
            final = by_prefix.get(stem[:-8])
            if final is None or not set(stem[-8:]) <= _TEMP_CHARS:
                continue
            if suffix == ".old" and entry.is_dir(follow_symlinks=False) and not os.path.lexists(final):
                with contextlib.suppress(OSError):
                    os.replace(entry.path, final)  # the swap stopped halfway: the earlier result goes back
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _umask() -> int:
    """The process's file-creation mask (for the permissions of files made by ``mkstemp``/``mkdtemp``)."""
    # Linux reports it; elsewhere os.umask can only be read by setting it, which for an instant would
    # give other threads' new files the wrong permissions.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _staged_folder(target: Path) -> Iterator[Path]:
    """A new empty folder beside `target` to write a whole result into; removed if the block fails.

    The block ends by moving the folder into place (:func:`_swap_folder`): readers see the earlier result
    or the new one whole, never a mix. The folder of `target` must exist.
    """
    why = _own_folder_refusal(target, "result")
    if why is not None:  # the callers refuse it before any work; this is the last guard
        raise ValueError(f"{target} {why}")
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".part", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` to `target`; a folder already there is moved aside, then removed.

    If the final rename fails, the earlier folder is put back: a failed write never loses the last result.
    The caller has checked that `target` may be replaced (:func:`_refusal_to_replace`).
    """
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".old", dir=target.parent))
    os.rmdir(old)  # a fresh unused name, for the rename
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():  # e.g. read-only files inside: the new result is in place, say what is left over
        log.warning("%s: could not remove the earlier result moved here; delete it by hand", old)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`): :func:`write_texts` of one file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its folder must exist.
    text : str
        The content, written with ``\\n`` newlines.
    """
    write_texts({path: text})


def _python_scalar(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for JSON, and for messages: its repr reads ``np.int64(1)``)."""
    return value.item() if isinstance(value, np.generic) else value


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write an object as indented JSON, atomically (see :func:`atomic_write`).

    Parameters
    ----------
    path : str or os.PathLike
        The file; its folder must exist.
    obj : Any
        JSON-serialisable; NaN and infinity are refused (``ValueError``), as JSON has no such numbers.
    """
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_image(path: str | os.PathLike[str], array: np.ndarray, *, quality: int = 90) -> None:
    """Encode an array as PNG or JPEG (by the file extension) and write it atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``.png`` (uint8 RGB, uint8 or uint16 single channel) or ``.jpg`` (uint8 RGB).
    array : ndarray
        (H, W) or (H, W, 3); RGB channel order.
    quality : int, optional
        JPEG quality.

    Raises
    ------
    LeukosegError
        Naming `path`, if the array cannot be encoded in that format.
    OSError
        If the file cannot be written (the CLI words it in one line).
    """
    try:
        data = encode_image(array, Path(path).suffix, quality=quality)
    except LeukosegError:
        raise LeukosegError(path, "could not encode image") from None
    with atomic_write(path, "wb") as f:
        f.write(data)


def encode_image(array: np.ndarray, ext: str, *, quality: int = 90) -> bytes:
    """Encode an array as PNG or JPEG, as :func:`write_image` writes it.

    Parameters
    ----------
    array : ndarray
        (H, W) or (H, W, 3); RGB channel order.
    ext : str
        ``'.png'`` or ``'.jpg'`` (any case).
    quality : int, optional
        JPEG quality.

    Returns
    -------
    bytes
        The encoded file.

    Raises
    ------
    LeukosegError
        If OpenCV cannot encode the array.
    """
    import cv2

    ext = ext.lower()
    colour = array.ndim == 3 and array.shape[2] == 3
    if ext == ".png":
        # Fast compression. Label images (2-D) are long runs of equal values: without row filters zlib
        # packs them as well and five times faster (20 ms for a 5-megapixel uint16 label image).
        # Colour crops compress best and fastest with the SUB filter, and Huffman coding alone: a photograph
        # has few repeated strings to find, so skipping the search is a third faster and no larger.
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER]
        if not colour:
            params.append(cv2.IMWRITE_PNG_FILTER_NONE)
        else:
            params += [cv2.IMWRITE_PNG_FILTER_SUB, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    try:
        # OpenCV encodes BGR; its channel swap is ten times faster than copying a reversed numpy view.
        arr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if colour else np.ascontiguousarray(array)
        ok, buf = cv2.imencode(ext, arr, params)
    except cv2.error:  # e.g. an empty array: say so in one line, not with OpenCV's traceback
        ok = False
    if not ok:
        raise LeukosegError(None, f"could not encode image ({ext}, shape {array.shape})")
    return buf.tobytes()
