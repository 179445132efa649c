"""Segmentation of white cells in stained blood smears (the ``leukoseg segment`` stage).

Nuclei by a per-image stain-colour threshold, touching cells split by watershed, cytoplasm, the
micrometre scale from the red cells, per-cell measurements, crops and scale-normalised patches.
"""

from ._color import background_level, stain_excess
from ._crops import extract_patch, extract_patches
from ._measure import MEASUREMENT_COLUMNS, measure_cells
from ._outputs import cells_geojson, draw_overlay, write_segmentation
from ._scale import SCALE_FALLBACK, SCALE_GIVEN, SCALE_RED_CELLS, Scale, estimate_scale
from ._segment import Segmentation, segment

__all__ = [
    "MEASUREMENT_COLUMNS",
    "SCALE_FALLBACK",
    "SCALE_GIVEN",
    "SCALE_RED_CELLS",
    "Scale",
    "Segmentation",
    "background_level",
    "cells_geojson",
    "draw_overlay",
    "estimate_scale",
    "extract_patch",
    "extract_patches",
    "measure_cells",
    "segment",
    "stain_excess",
    "write_segmentation",
]
