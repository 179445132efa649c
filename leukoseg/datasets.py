"""Data sets on disk: ALL-IDB1, ALL-IDB2 and any one-folder-per-class collection.

Nothing is ever downloaded. ALL-IDB is given out by its authors on request, for research use
(https://scotti.di.unimi.it/all/); put it where :func:`resolve_data_dir` looks, or pass ``data_dir``.

Cite: R. Donida Labati, V. Piuri, F. Scotti, "ALL-IDB: the acute lymphoblastic leukemia image database for
image processing", Proc. 18th IEEE ICIP, Brussels, 2011, pp. 2045-2048, doi:10.1109/ICIP.2011.6115881.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import LeukosegError
from .io import IMAGE_EXTENSIONS, _file_problem, image_files

__all__ = [
    "Dataset",
    "ImageRecord",
    "file_sha256",
    "load_dataset",
    "parse_xyc",
    "resolve_data_dir",
]

_OBTAIN = (
    "ALL-IDB is given out by its authors on request for research use (https://scotti.di.unimi.it/all/); "
    "nothing is downloaded by leukoseg"
)
_ALL_IDB_NAME = re.compile(r"^Im(\d{3})_([01])$")

#: What the labels of the ALL-IDB data sets mean, in messages and reports (the images' Y: 1 ALL, 0 normal).
CLASS_NAMES = types.MappingProxyType({
    "all-idb1": types.MappingProxyType({"0": "normal", "1": "ALL"}),
    "all-idb2": types.MappingProxyType({"0": "not blast", "1": "blast"}),
})  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set.

    Attributes
    ----------
    path : pathlib.Path
        The image file.
    name : str
        Path relative to the data set's folder, with forward slashes (stable across machines).
    label : str
        Class name: ``'1'`` / ``'0'`` for ALL-IDB (ALL or blast / healthy or not), the subfolder name for
        ``folder:`` data sets.
    group : int
        Images with identical content share a group, so that cross-validation keeps them in one fold.
    points : (N, 2) ndarray of float
        Annotated blast centroids ``(x, y)`` in pixels (ALL-IDB1 only; empty otherwise).
    """

    path: Path
    name: str
    label: str
    group: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False, compare=False)


@dataclass(frozen=True)
class Dataset:
    """A data set: its name, folder, image records and class names (sorted).

    Attributes
    ----------
    name : str
        ``'all-idb1'``, ``'all-idb2'`` or ``'folder:PATH'``.
    root : pathlib.Path
        The data set's folder.
    records : tuple of ImageRecord
        Its images, in a stable order (sorted by file path).
    classes : tuple of str
        Class names, sorted.
    unit : {'image', 'cell'}
        What one record is: a whole smear to segment (``'image'``), or a single-cell crop classified as one
        image with one cell (``'cell'``, ALL-IDB2).
    """

    name: str
    root: Path
    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]
    unit: str  # 'image' (whole smears to segment) or 'cell' (single-cell crops)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """Class labels of the records, as an array of str."""
        return np.array([r.label for r in self.records])

    @property
    def groups(self) -> np.ndarray:
        """Group ids of the records (identical images share one)."""
        return np.array([r.group for r in self.records], dtype=int)

    def fingerprint(self) -> str:
        """Hash the names, contents, labels and annotations of all images (SHA-256).

        Identifies the exact data used by an experiment: an edited ``.xyc`` annotation (which changes the
        cell labels) changes it as much as an edited image.

        Returns
        -------
        str
            The hexadecimal digest.
        """
        h = hashlib.sha256()
        for r in self.records:
            h.update(r.name.encode())
            h.update(file_sha256(r.path).encode())
            h.update(f"label={r.label}\n".encode())
            h.update(np.ascontiguousarray(r.points, dtype="<f8").tobytes())
            h.update(b"\0")  # ends the record: no two records' points can run together
        return h.hexdigest()


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder where data set `name` is looked for.

    ``data_dir`` if given, else ``$LEUKOSEG_DATA/<name>``, else ``~/.leukoseg/data/<name>``.

    Parameters
    ----------
    name : str
        Folder name of the data set, e.g. ``'ALL_IDB1'``.
    data_dir : str or os.PathLike, optional
        An explicit folder (wins over everything).

    Returns
    -------
    pathlib.Path
        The folder (``~`` expanded); whether it exists is not checked.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("LEUKOSEG_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.home() / ".leukoseg" / "data" / name


def parse_xyc(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ALL-IDB ``.xyc`` file of blast centroids.

    Lines hold ``x y`` (column, row) separated by tabs or spaces; blank lines and CRLF endings are fine.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.xyc`` file.

    Returns
    -------
    (N, 2) ndarray of float64
        The centroids ``(x, y)`` in pixels, in file order; shape (0, 2) for an empty file.

    Raises
    ------
    LeukosegError
        If a line does not hold two numbers.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.xyc"
    >>> _ = p.write_bytes(b"10\\t20\\r\\n\\n 30  40 \\r\\n")
    >>> parse_xyc(p).tolist()
    [[10.0, 20.0], [30.0, 40.0]]
    """
    path = Path(path)
    try:
        text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("latin-1")  # Windows editors add one
    except OSError as exc:
        raise LeukosegError(path, f"cannot read annotation file ({exc.strerror or exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (np.isfinite(x) and np.isfinite(y)):  # float() takes 'nan' and 'inf'; matching cannot
                raise ValueError
            rows.append((x, y))
        except ValueError:
            raise LeukosegError(path, f"line {lineno}: expected 'x<TAB>y' (two finite numbers), "
                                      f"found {line.strip()!r}") from None  # fmt: skip
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def load_dataset(spec: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Find and check a data set on disk.

    Parameters
    ----------
    spec : str
        ``'all-idb1'``, ``'all-idb2'`` or ``'folder:PATH'``.
    data_dir : str or os.PathLike, optional
        The data set's folder; see :func:`resolve_data_dir` for where it is looked for otherwise.

    Returns
    -------
    Dataset
        Its records (sorted by file path), with labels, groups of identical images and (ALL-IDB1) annotations.

    Raises
    ------
    LeukosegError
        For an unknown spec or a missing or malformed layout; the message says what was expected and what
        was found.
    """
    key = spec.strip().lower()
    if key == "all-idb1":
        return _load_all_idb1(resolve_data_dir("ALL_IDB1", data_dir))
    if key == "all-idb2":
        return _load_all_idb2(resolve_data_dir("ALL_IDB2", data_dir))
    if key.startswith("folder:"):
        where = spec.strip()[len("folder:") :]
        if data_dir is not None:
            if where.strip() and Path(where.strip()).expanduser().resolve() != Path(data_dir).expanduser().resolve():
                raise LeukosegError(None, f"data set {spec.strip()!r} and data_dir {os.fspath(data_dir)!r} name two "
                                          "different folders; give the folder once")  # fmt: skip
            return _load_folder(Path(data_dir))
        if not where.strip():  # Path('') is the current folder: never a data set by accident
            raise LeukosegError(None, f"data set {spec.strip()!r} names no folder: expected 'folder:PATH' "
                                      "(PATH: one subfolder per class)")  # fmt: skip
        return _load_folder(Path(where).expanduser())
    raise LeukosegError(None, f"unknown data set {spec!r}: expected 'all-idb1', 'all-idb2' or 'folder:PATH'")


def _require_dir(root: Path, expected: str, obtain: bool = True) -> None:
    if not root.is_dir():
        found = "it is a file" if root.exists() else "it does not exist"
        hint = f"; {_OBTAIN}, then pass --data-dir or set LEUKOSEG_DATA" if obtain else ""
        raise LeukosegError(root, f"data set folder not found ({found}); expected {expected}{hint}")


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir())[:limit] if folder.is_dir() else []
    return ", ".join(names) if names else "nothing"


def _load_all_idb1(root: Path) -> Dataset:
    expected = "im/ImXXX_Y.jpg and xyc/ImXXX_Y.xyc (Y = 1 ALL, 0 healthy)"
    _require_dir(root, expected)
    im_dir, xyc_dir = root / "im", root / "xyc"
    if not im_dir.is_dir() or not xyc_dir.is_dir():
        raise LeukosegError(root, f"not an ALL-IDB1 layout: expected {expected}; found {_listing(root)}")
    records = []
    for path in sorted(im_dir.iterdir()):
        if path.name.startswith("."):
            continue  # hidden files (macOS '._' resource forks) are not images
        if path.suffix.lower() != ".jpg":
            _refuse_other_format(path, ".jpg", expected)
            continue
        m = _ALL_IDB_NAME.match(path.stem)
        if not m:
            raise LeukosegError(path, f"unexpected file name; expected ImXXX_Y.jpg ({expected})")
        _check_image_file(path)
        xyc = xyc_dir / f"{path.stem}.xyc"
        if not xyc.is_file():
            raise LeukosegError(xyc, "annotation file missing (every ALL-IDB1 image has one, empty for Y = 0)")
        points = parse_xyc(xyc)
        _check_points(xyc, points, path, m.group(2))
        records.append((path, f"im/{path.name}", m.group(2), points))
    if not records:
        raise LeukosegError(im_dir, f"no ImXXX_Y.jpg images; expected {expected}; found {_listing(im_dir)}")
    return Dataset("all-idb1", root, _with_groups(records), ("0", "1"), unit="image")


def _load_all_idb2(root: Path) -> Dataset:
    expected = "img/ImXXX_Y.tif single-cell crops (Y = 1 blast, 0 not)"
    _require_dir(root, expected)
    img_dir = root / "img"
    if not img_dir.is_dir():
        raise LeukosegError(root, f"not an ALL-IDB2 layout: expected {expected}; found {_listing(root)}")
    records = []
    for path in sorted(img_dir.iterdir()):
        if path.name.startswith("."):
            continue  # hidden files (macOS '._' resource forks) are not images
        if path.suffix.lower() not in {".tif", ".tiff"}:
            _refuse_other_format(path, ".tif", expected)
            continue
        m = _ALL_IDB_NAME.match(path.stem)
        if not m:
            raise LeukosegError(path, f"unexpected file name; expected ImXXX_Y.tif ({expected})")
        _check_image_file(path)
        records.append((path, f"img/{path.name}", m.group(2), None))
    if not records:
        raise LeukosegError(img_dir, f"no ImXXX_Y.tif images; expected {expected}; found {_listing(img_dir)}")
    return Dataset("all-idb2", root, _with_groups(records), ("0", "1"), unit="cell")


def _load_folder(root: Path) -> Dataset:
    expected = "one subfolder per class, holding that class's images"
    _require_dir(root, expected, obtain=False)
    records = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = image_files(sub)  # as a folder search: no hidden files, no leukoseg result folders
        if not found and not (sub / "metrics.json").exists():  # a run folder of classify --dataset is no class
            log.warning("%s: no images in this class folder (extensions %s); class %r left out", sub,
                        ", ".join(sorted(IMAGE_EXTENSIONS)), sub.name)  # fmt: skip
        for path in found:
            _check_image_file(path)
            records.append((path, path.relative_to(root).as_posix(), sub.name, None))
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_EXTENSIONS]  # fmt: skip
    if loose:
        log.warning("%s: %d image(s) beside the class folders (%s) belong to no class and are left out", root,
                    len(loose), ", ".join(sorted(loose)[:3]))  # fmt: skip
    classes = tuple(sorted({r[2] for r in records}))
    if len(classes) < 2:
        raise LeukosegError(
            root, f"expected {expected}, at least two classes; found {len(classes)} class folder(s) with images"
        )
    return Dataset(f"folder:{root}", root, _with_groups(records), classes, unit="image")


def _refuse_other_format(path: Path, ext: str, expected: str) -> None:
    """Refuse an image in another format among an ALL-IDB layout's images: skipping it would drop it silently."""
    if path.suffix.lower() in IMAGE_EXTENSIONS and _ALL_IDB_NAME.match(path.stem):
        raise LeukosegError(path, f"an image of the data set in another format: expected {ext} files ({expected}); "
                                  f"convert or rename it, or move it out")  # fmt: skip


def _check_points(xyc: Path, points: np.ndarray, image: Path, label: str) -> None:
    """Refuse annotations that contradict their image: blasts in a healthy image, centroids outside the image."""
    if label == "0" and len(points):
        raise LeukosegError(xyc, f"{len(points)} blast centroid(s) for a healthy image (Y = 0); expected an empty "
                                 "file: is the image's label right?")  # fmt: skip
    if not len(points):
        if label == "1":
            log.warning("%s: no blast centroid for an ALL image (Y = 1); all its cells count as non-blasts", xyc)
        return
    from PIL import Image

    from .io import _exif_orientation

    try:
        with warnings.catch_warnings():  # the header only; reading the image warns or refuses itself
            warnings.simplefilter("ignore")
            with Image.open(image) as pil:
                w, h = pil.size
                if _exif_orientation(pil) in (5, 6, 7, 8):  # read_image turns the image
                    w, h = h, w
    except Exception:  # not an image: reading it reports that, with its own message
        return
    outside = (points[:, 0] < 0) | (points[:, 0] > w) | (points[:, 1] < 0) | (points[:, 1] > h)
    if outside.any():
        x, y = points[np.flatnonzero(outside)[0]]
        raise LeukosegError(xyc, f"{int(outside.sum())} centroid(s) outside the {w}x{h} image {image.name}, e.g. "
                                 f"({x:g}, {y:g}); expected x (column) then y (row) in pixels")  # fmt: skip


def _check_image_file(path: Path) -> None:
    """Refuse a listed image that is not a regular file: a broken link, a folder named like an image.

    Only a ``stat`` (the test of :func:`~leukoseg.io.read_image`): whether the file can be read is found
    when it is hashed for the groups (:func:`_with_groups`), which reads every image anyway.
    """
    problem = _file_problem(path)
    if problem is not None:
        raise LeukosegError(path, f"{problem}; remove it from the data set, or replace or rename it")


def _image_sha256(path: Path) -> str:
    """:func:`file_sha256` of a data set's image; an unreadable file is a one-line LeukosegError naming it."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise LeukosegError(path, f"cannot read the image ({exc.strerror or exc})") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, as hex (read in 1 MiB chunks).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pixel_digest(path: Path) -> str | None:
    from .io import read_image

    try:
        image = read_image(path)
    except LeukosegError:
        return None  # unreadable files get their own group; reading them later reports the problem
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def _with_groups(records: Sequence[tuple[Path, str, str, np.ndarray | None]]) -> tuple[ImageRecord, ...]:
    """Give byte-identical and pixel-identical images one group id.

    Pixel identity catches re-encoded or re-tagged copies that byte hashes miss; it costs one decode per
    image (a few seconds for ALL-IDB1), paid once per experiment.
    """
    byte_keys = [_image_sha256(p) for p, *_ in records]
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union_by(keys: Sequence[str | None]) -> None:
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k in first:
                parent[find(i)] = find(first[k])
            else:
                first[k] = i

    union_by(byte_keys)
    union_by([_pixel_digest(p) for p, *_ in records])
    first_of: dict[int, dict[str, str]] = {}  # group root -> label -> its first image's name
    for i, (_, name, label, _) in enumerate(records):
        first_of.setdefault(find(i), {}).setdefault(label, name)
    for names in first_of.values():
        if len(names) > 1:  # one fold holds them all, but a test image then carries both answers
            log.warning("identical images with different labels: %s; check which class they belong to",
                        ", ".join(names.values()))  # fmt: skip
    roots: dict[int, int] = {}
    out = []
    for i, (path, name, label, points) in enumerate(records):
        gid = roots.setdefault(find(i), len(roots))
        pts = np.zeros((0, 2)) if points is None else points
        out.append(ImageRecord(path, name, label, gid, pts))
    return tuple(out)
