"""Cell features: GLCM texture of nucleus and cytoplasm, plus shape and colour measurements."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "BOOKKEEPING_MEASUREMENTS",
    "CellFeatures",
    "GLCM_PROPERTIES",
    "cell_texture_features",
    "glcm_features",
    "texture_feature_names",
]

# Public name -> submodule; loaded on first use so that importing the package stays cheap
# (scikit-image and scikit-learn load only when a feature is computed).
_SUBMODULE = {
    "BOOKKEEPING_MEASUREMENTS": "extract",
    "CellFeatures": "extract",
    "GLCM_PROPERTIES": "glcm",
    "cell_texture_features": "glcm",
    "glcm_features": "glcm",
    "texture_feature_names": "glcm",
}

if TYPE_CHECKING:
    from .extract import BOOKKEEPING_MEASUREMENTS, CellFeatures
    from .glcm import GLCM_PROPERTIES, cell_texture_features, glcm_features, texture_feature_names


def __getattr__(name: str):
    if name in _SUBMODULE:
        return getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
