"""Shared fixtures: where ALL-IDB1 is, and small image files of every kind."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest


def _all_idb1_dir() -> Path | None:
    """ALL-IDB1 from $LEUKOSEG_DATA/ALL_IDB1, else ../shared/datasets/ALL_IDB1 beside the checkout (CI)."""
    candidates = []
    if os.environ.get("LEUKOSEG_DATA"):
        candidates.append(Path(os.environ["LEUKOSEG_DATA"]) / "ALL_IDB1")
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ALL_IDB1")
    for c in candidates:
        if (c / "im").is_dir() and (c / "xyc").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def all_idb1_dir() -> Path:
    """The ALL-IDB1 folder; tests that use it are skipped when it is absent."""
    path = _all_idb1_dir()
    if path is None:
        pytest.skip("ALL-IDB1 not found (set LEUKOSEG_DATA or put it at ../shared/datasets/ALL_IDB1)")
    return path


def pytest_collection_modifyitems(config, items):
    # Tests marked `data` need ALL-IDB1; say so once instead of failing.
    if _all_idb1_dir() is None:
        skip = pytest.mark.skip(reason="ALL-IDB1 not available")
        for item in items:
            if "data" in item.keywords:
                item.add_marker(skip)


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
