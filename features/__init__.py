"""Cell features: GLCM texture of nucleus and cytoplasm, stain density, shape and colour measurements."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukoseg._lazy import lazy_exports

__all__ = [
    "BOOKKEEPING_MEASUREMENTS",
    "CellFeatures",
    "GLCM_PROPERTIES",
    "STAIN_FEATURE_NAMES",
    "cell_stain_features",
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
    "STAIN_FEATURE_NAMES": "stain",
    "cell_stain_features": "stain",
    "cell_texture_features": "glcm",
    "glcm_features": "glcm",
    "texture_feature_names": "glcm",
}

if TYPE_CHECKING:
    from .extract import BOOKKEEPING_MEASUREMENTS, CellFeatures
    from .glcm import GLCM_PROPERTIES, cell_texture_features, glcm_features, texture_feature_names
    from .stain import STAIN_FEATURE_NAMES, cell_stain_features

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE)
