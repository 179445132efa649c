"""Shared fixtures: where ALL-IDB1 is, and small image files of every kind."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoseg.datasets import resolve_data_dir
from leukoseg.synthetic import make_smear


def _all_idb1_dir() -> Path | None:
    """ALL-IDB1 where the CLI looks for it ($LEUKOSEG_DATA/ALL_IDB1, else ~/.leukoseg/data/ALL_IDB1), else
    ../shared/datasets/ALL_IDB1 beside the checkout (CI)."""
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ALL_IDB1"
    candidates = [resolve_data_dir("ALL_IDB1"), beside_checkout]
    for c in candidates:
        if (c / "im").is_dir() and (c / "xyc").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def all_idb1_dir() -> Path:
    """The ALL-IDB1 folder; tests that use it are skipped when it is absent."""
    path = _all_idb1_dir()
    if path is None:
        pytest.skip("ALL-IDB1 not found (set LEUKOSEG_DATA, or put it at ~/.leukoseg/data/ALL_IDB1 or "
                    "../shared/datasets/ALL_IDB1)")
    return path


def pytest_collection_modifyitems(config, items):
    # Tests marked `data` need ALL-IDB1; say so once instead of failing.
    if _all_idb1_dir() is None:
        skip = pytest.mark.skip(reason="ALL-IDB1 not available")
        for item in items:
            if "data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from tmp_path, with the cache there: a command that got past its checks writes nothing elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A small colour image with distinct pixels (to catch flips and channel swaps)."""
    rng = np.random.default_rng(0)
    return (rng.random((24, 32, 3)) * 255).astype(np.uint8)


@pytest.fixture
def png_header_only():
    """Make a PNG that claims a size but holds almost no data: a decompression bomb's header."""
    return _png_header_only


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims to be `width` x `height` but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# Small GA, grid and CNN: the tests check the plumbing, not the classifiers.
_FAST = dict(
    gknn_params={"population_size": 4, "n_generations": 1, "k_max": 5, "n_runs": 2},
    svm_params={"C_grid": (1.0,), "gamma_grid": ("scale",)},
    cnn_params={"filters": (4, 4), "epochs": 2, "patience": 1, "batch_size": 16},
    fusion_params={"n_iter": 50},
    device="cpu",
)

_ALL_KINDS = ("blast_L1", "blast_L2", "lymphocyte", "blast_L3")
_HEALTHY_KINDS = ("lymphocyte", "neutrophil", "lymphocyte")


def _write_fake_all_idb1(root: Path, n_per_class: int = 5, copy: bool = True) -> Path:
    """A tiny ALL-IDB1-like folder of synthetic smears: im/ImXXX_Y.jpg and xyc/ImXXX_Y.xyc."""
    (root / "im").mkdir(parents=True)
    (root / "xyc").mkdir()
    number = 30  # straddles Im034, so both strata have images
    for i in range(2 * n_per_class):
        label = i % 2
        smear = make_smear(shape=(360, 480), kinds=_ALL_KINDS if label else _HEALTHY_KINDS,
                           n_touching_pairs=0, seed=100 + i)  # fmt: skip
        number += 1
        stem = f"Im{number:03d}_{label}"
        Image.fromarray(smear.image).save(root / "im" / f"{stem}.jpg", quality=95)
        lines = [f"{c.x:.0f}\t{c.y:.0f}\n" for c in smear.white_cells if c.is_blast]
        (root / "xyc" / f"{stem}.xyc").write_text("".join(lines))
    if copy:  # an identical copy under another name, as Im108_0 of Im093_0
        number += 1
        src = root / "im" / "Im031_0.jpg"
        (root / "im" / f"Im{number:03d}_0.jpg").write_bytes(src.read_bytes())
        (root / "xyc" / f"Im{number:03d}_0.xyc").write_text("")
    return root


@pytest.fixture
def fast() -> dict:
    """Tiny model settings for run_experiment / train_bundle: the tests check the plumbing."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _FAST.items()}


@pytest.fixture(scope="session")
def fake_all_idb1(tmp_path_factory) -> Path:
    """A tiny ALL-IDB1-like folder of synthetic smears (with a byte copy, as Im108_0 of Im093_0)."""
    return _write_fake_all_idb1(tmp_path_factory.mktemp("data") / "ALL_IDB1")


@pytest.fixture(scope="session")
def fake_cache(tmp_path_factory) -> Path:
    """A segmentation cache shared by the tests on the fake ALL-IDB1."""
    return tmp_path_factory.mktemp("cache")
