"""Segmentation of white cells in stained blood smears (the ``leukoseg segment`` stage).

Nuclei by a per-image stain-colour threshold, touching cells split by watershed, cytoplasm, the
micrometre scale from the red cells, per-cell measurements, crops and scale-normalised patches.
"""

from ._color import background_level, stain_excess
from ._crops import extract_patch, extract_patches
from ._measure import MEASUREMENT_COLUMNS, measure_cells
from ._outputs import cells_geojson, draw_overlay, write_segmentation
from ._scale import SCALE_FALLBACK, SCALE_GIVEN, SCALE_RED_CELLS, Scale, estimate_scale
from ._segment import (
    MAX_CYTOPLASM_OPEN_UM,
    SEGMENT_SETTING_MAX,
    UNRECORDED_SEGMENT_SETTINGS,
    Segmentation,
    check_segment_settings,
    default_segment_settings,
    recorded_segment_settings,
    segment,
)

__all__ = [
    "MAX_CYTOPLASM_OPEN_UM",
    "SEGMENT_SETTING_MAX",
    "MEASUREMENT_COLUMNS",
    "SCALE_FALLBACK",
    "SCALE_GIVEN",
    "SCALE_RED_CELLS",
    "Scale",
    "Segmentation",
    "UNRECORDED_SEGMENT_SETTINGS",
    "background_level",
    "cells_geojson",
    "check_segment_settings",
    "default_segment_settings",
    "draw_overlay",
    "estimate_scale",
    "extract_patch",
    "extract_patches",
    "measure_cells",
    "recorded_segment_settings",
    "segment",
    "stain_excess",
    "write_segmentation",
]
