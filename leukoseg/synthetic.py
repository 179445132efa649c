"""Synthetic May-Grünwald-Giemsa stained blood smears with exact ground truth.

A seeded generator of peripheral blood smear photographs that look like those of ALL-IDB1, together with
the geometry they were drawn from: label images of white-cell nuclei and whole white cells, masks of red
cells and platelets, and a record per white cell (kind, centroid, diameters, nucleoli, vacuoles). Tests and
benchmarks of the segmentation and classification stages use it where a real image has no exact answer.

What is modelled
----------------
- **Geometry in micrometres.** Every size is drawn in µm and converted with ``um_per_px``, so the same seed
  at 0.2 and at 0.4 µm/px gives the same cells at two pixel sizes. Cell shapes are star-shaped outlines
  (a radius with a few low-order harmonics); the label images are rasterised from exactly the outlines
  that are painted, and centroids and diameters are measured on those label images.
- **Cells.** Red cells: 7-8 µm discs, slightly irregular, flat with a steep edge and a thinner centre of
  variable depth (the central pallor, about a third of the diameter), some overlapping pairs that are
  darker where they overlap, denser and sparser regions. Platelets: 2-3 µm granular purple dots. Five
  kinds of white cell, after the FAB morphology of acute lymphoblastic leukemia (ALL):

  ``lymphocyte``
      small (7-9 µm), round nucleus filling 84-90 % of the diameter, coarse clumped chromatin, a thin rim
      of pale sky-blue cytoplasm;
  ``neutrophil``
      10-12.5 µm, 3-5 nuclear lobes joined by thin strands, pinkish-lilac granular cytoplasm;
  ``blast_L1``
      small (9-12 µm), high nucleus-to-cytoplasm ratio, regular round nucleus, fine chromatin, no or one
      indistinct nucleolus, scanty cytoplasm;
  ``blast_L2``
      large and variable (12-19 µm), irregular, often cleft or notched nucleus, 1-3 visible nucleoli (pale
      spots), more cytoplasm;
  ``blast_L3``
      large (12-17 µm), round or oval nucleus with 1-3 prominent nucleoli, deeply basophilic (deep blue)
      cytoplasm with several clear vacuoles.
- **Staining and optics.** Colours follow Beer-Lambert absorption: each stained structure has an optical
  density vector, densities add where cells overlap, and the camera sees ``light * exp(-density)``. White
  cells lie on top of red cells and platelets. Chromatin texture is fine for blasts and clumped for mature
  cells. The image is blurred like a 40-60x objective, gets sensor noise and a JPEG round trip.
  ``stain_jitter`` varies the hue, saturation and strength of each stain and the lamp colour;
  ``illumination`` adds a smooth vignetting gradient.

What is not modelled
--------------------
Smudge cells, other white cells (monocytes, eosinophils, basophils), abnormal red cells, rouleaux,
out-of-focus regions, dust, chromatic aberration and the thick and thin ends of a real smear. The default
colours are those of a well-exposed photograph (background about RGB 220, 212, 198); ALL-IDB1 photographs
are darker (background about 155, 150, 135) and greyer, with similar colour ratios.

The generator is deterministic: the same arguments and seed give byte-identical arrays (with the same
NumPy and OpenCV versions: the blur and the JPEG codec come from OpenCV). Geometry, texture,
stain and noise are drawn from separate random streams, so changing ``stain_jitter`` or ``illumination``
changes the colours only, never the ground truth.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._frozen import freeze_fields, read_only, read_only_mapping

__all__ = [
    "KINDS",
    "SyntheticCell",
    "SyntheticSmear",
    "make_smear",
    "render_cell",
    "touching_discs",
    "write_samples",
]

logger = logging.getLogger(__name__)

#: The white-cell kinds that :func:`make_smear` and :func:`render_cell` draw.
KINDS = ("blast_L1", "blast_L2", "blast_L3", "lymphocyte", "neutrophil")

_BLASTS = frozenset({"blast_L1", "blast_L2", "blast_L3"})

# Lamp colour: the RGB of an empty field (before the faint plasma density).
_LIGHT = read_only(np.array([222.0, 214.0, 200.0]))  # module constants: read-only, never changed in place

# Optical density (OD, natural log) vectors of the stained structures, per unit of stain.
_OD = read_only_mapping({
    "plasma": np.array([0.006, 0.010, 0.012]),
    "rbc": np.array([0.10, 0.30, 0.28]),  # through one red cell (outside its pallor)
    "nucleus": np.array([0.70, 1.55, 0.26]),  # purple: azure-eosin complex on DNA
    "cyto_pale": np.array([0.26, 0.25, 0.05]),  # pale blue-lilac (blasts)
    "cyto_sky": np.array([0.34, 0.24, 0.03]),  # sky blue (lymphocytes)
    "cyto_deep": np.array([0.95, 0.72, 0.17]),  # deep blue, basophilic (L3)
    "cyto_neutrophil": np.array([0.08, 0.21, 0.09]),  # pinkish lilac
    "granule": np.array([0.22, 0.45, 0.12]),
    "platelet": np.array([0.45, 0.95, 0.20]),
})

_JPEG_QUALITY = 90  # of the round trip inside make_smear (the JPEG-like noise)


@dataclass(frozen=True)
class SyntheticCell:
    """One white cell of a synthetic smear.

    Attributes
    ----------
    cell_id : int
        Its value in the ``nuclei`` and ``cells`` label images.
    kind : str
        One of :data:`KINDS`.
    x, y : float
        Centroid of its nucleus in pixels (x = column, y = row), the mean of the nucleus mask's coordinates.
    is_blast : bool
        Whether it is a leukemic blast (``kind`` starts with ``'blast'``).
    cell_diameter_um, nucleus_diameter_um : float
        Equivalent-circle diameters of the whole-cell and nucleus masks, in µm.
    n_nucleoli, n_vacuoles : int
        Nucleoli and vacuoles drawn in it: those whose centre pixel lies in its final nucleus or cell mask
        (a touching neighbour or the image's edge may cut some away with part of the cell).
    """

    cell_id: int
    kind: str
    x: float
    y: float
    is_blast: bool
    cell_diameter_um: float
    nucleus_diameter_um: float
    n_nucleoli: int
    n_vacuoles: int


@dataclass(frozen=True, eq=False)
class SyntheticSmear:
    """A synthetic smear photograph and its exact ground truth.

    Attributes
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB photograph.
    um_per_px : float
        The true scale, in µm per pixel.
    nuclei : (H, W) ndarray of int32
        White-cell nuclei, 0 background, value = ``cell_id``.
    cells : (H, W) ndarray of int32
        Whole white cells (nucleus and cytoplasm), same ids.
    red_cells : (H, W) ndarray of bool
        Visible red cells (white cells lie on top of them).
    platelets : (H, W) ndarray of bool
        Visible platelets.
    white_cells : tuple of SyntheticCell
        One record per white cell, in ``cell_id`` order.
    touching_pairs : tuple of (int, int)
        Ids of the white-cell pairs placed so that their cells touch.
    """

    image: np.ndarray
    um_per_px: float
    nuclei: np.ndarray
    cells: np.ndarray
    red_cells: np.ndarray
    platelets: np.ndarray
    white_cells: tuple[SyntheticCell, ...]
    touching_pairs: tuple[tuple[int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        freeze_fields(self, "image", "nuclei", "cells", "red_cells", "platelets")


# --------------------------------------------------------------------------------------------------
# Geometry of one white cell, in µm relative to the cell centre
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outline:
    """A star-shaped outline: ``r(theta) = radius * (1 + sum a_k cos(k theta + phi_k))``."""

    radius: float
    harmonics: np.ndarray  # (n, 3): order k, amplitude a_k, phase phi_k

    def r(self, theta: np.ndarray) -> np.ndarray:
        out = np.ones_like(theta)
        for k, a, phi in self.harmonics:
            out = out + a * np.cos(k * theta + phi)
        return self.radius * out

    @property
    def max_radius(self) -> float:
        return self.radius * (1.0 + float(np.abs(self.harmonics[:, 1]).sum()))

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.hypot(x, y) <= self.r(np.arctan2(y, x))


@dataclass(frozen=True)
class _Spec:
    """Everything random about one white cell that does not depend on the pixel size."""

    kind: str
    cell: _Outline
    nucleus: _Outline | None  # None: lobed (neutrophil)
    nuc_offset: tuple[float, float]
    notch: tuple[float, float, float] | None  # (x, y, r) relative to the nucleus centre
    cleft: tuple[float, float, float] | None  # a fold: (angle, depth from the rim, half width), painted only
    lobes: np.ndarray | None  # (K, 5): x, y, semi-axis a, semi-axis b, angle
    strand_halfwidth: float
    nucleoli: np.ndarray  # (n, 3): x, y, r (relative to the cell centre)
    nucleolus_strength: float
    vacuoles: np.ndarray  # (m, 3)
    chromatin_scale: float
    chromatin_contrast: float
    chromatin_density: float
    clumped: bool
    cytoplasm: str
    cyto_density: float

    @property
    def max_radius(self) -> float:
        return self.cell.max_radius

    def nucleus_mask(self, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
        """Nucleus membership of points (µm, relative to the cell centre); ``px`` is the pixel size."""
        if self.lobes is not None:
            mask = np.zeros(np.broadcast(x, y).shape, bool)
            for lx, ly, a, b, ang in self.lobes:
                c, s = math.cos(ang), math.sin(ang)
                u = (x - lx) * c + (y - ly) * s
                v = (y - ly) * c - (x - lx) * s
                mask |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
            # Thin chromatin strands between consecutive lobes; at least ~1 px wide so they stay visible.
            hw = max(self.strand_halfwidth, 0.55 * px)
            for (x0, y0), (x1, y1) in zip(self.lobes[:-1, :2], self.lobes[1:, :2]):
                dx, dy = x1 - x0, y1 - y0
                t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
                mask |= np.hypot(x - x0 - t * dx, y - y0 - t * dy) <= hw
            return mask
        assert self.nucleus is not None
        xn, yn = x - self.nuc_offset[0], y - self.nuc_offset[1]
        rho = np.hypot(xn, yn)
        theta = np.arctan2(yn, xn)
        mask = rho <= self.nucleus.r(theta)
        if self.notch is not None:
            nx, ny, nr = self.notch
            mask &= np.hypot(xn - nx, yn - ny) > nr
        return mask

    def cell_mask(self, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
        return self.cell.inside(x, y) | self.nucleus_mask(x, y, px)


def _outline(rng: np.random.Generator, radius: float, amps: Sequence[float]) -> _Outline:
    """An outline with harmonics of order 2, 3, ... of amplitudes up to ``amps``."""
    n = len(amps)
    harm = np.empty((n, 3))
    harm[:, 0] = np.arange(2, n + 2)
    harm[:, 1] = rng.uniform(0.0, 1.0, n) * np.asarray(amps, float)
    harm[:, 2] = rng.uniform(0.0, 2 * np.pi, n)
    return _Outline(radius, harm)


def _point_in_nucleus(spec_nucleus: _Outline, rng: np.random.Generator, frac: float) -> tuple[float, float]:
    theta = rng.uniform(0, 2 * np.pi)
    rho = frac * math.sqrt(rng.uniform()) * float(spec_nucleus.r(np.asarray(theta)))
    return rho * math.cos(theta), rho * math.sin(theta)


def _sample_spec(kind: str, rng: np.random.Generator) -> _Spec:
    """Draw the geometry of one white cell of ``kind`` (sizes after the FAB classification)."""
    empty = np.zeros((0, 3))
    notch = cleft = lobes = None
    nucleoli, vacuoles = empty, empty
    strength = 0.0
    if kind == "lymphocyte":
        rc = rng.uniform(7.0, 9.0) / 2
        cell = _outline(rng, rc, [0.04, 0.02])
        nuc = _outline(rng, rc * rng.uniform(0.84, 0.9), [0.05, 0.02])
        if rng.uniform() < 0.4:
            a = rng.uniform(0, 2 * np.pi)
            notch = (1.2 * nuc.radius * math.cos(a), 1.2 * nuc.radius * math.sin(a), 0.32 * nuc.radius)
        chrom = (0.55, 0.32, 1.2, True)
        cyto, cdens = "cyto_sky", 1.0
    elif kind == "neutrophil":
        rc = rng.uniform(10.0, 12.5) / 2
        cell = _outline(rng, rc, [0.04, 0.02])
        nuc = None
        k = int(rng.choice([3, 4, 5], p=[0.35, 0.45, 0.2]))
        lobes = _lobes(rng, k, rc)
        chrom = (0.45, 0.3, 1.3, True)
        cyto, cdens = "cyto_neutrophil", 1.0
    elif kind == "blast_L1":
        rc = rng.uniform(9.0, 12.0) / 2
        cell = _outline(rng, rc, [0.04, 0.02])
        nuc = _outline(rng, rc * rng.uniform(0.82, 0.9), [0.04, 0.02])
        if rng.uniform() < 0.3:  # one indistinct nucleolus
            nucleoli = np.array([[*_point_in_nucleus(nuc, rng, 0.45), rng.uniform(0.5, 0.8)]])
            strength = 0.18
        chrom = (0.3, 0.13, 0.95, False)
        cyto, cdens = "cyto_pale", 1.1
    elif kind == "blast_L2":
        rc = rng.uniform(12.0, 19.0) / 2
        cell = _outline(rng, rc, [0.06, 0.04, 0.02])
        nuc = _outline(rng, rc * rng.uniform(0.62, 0.78), [0.1, 0.07, 0.04, 0.02])
        u = rng.uniform()
        if u < 0.35:
            a = rng.uniform(0, 2 * np.pi)
            # A nuclear fold: a small notch in the outline where a pale groove runs into the nucleus.
            cleft = (a, nuc.radius * rng.uniform(0.35, 0.6), rng.uniform(0.14, 0.22))
            notch = (1.1 * nuc.radius * math.cos(a), 1.1 * nuc.radius * math.sin(a), 0.22 * nuc.radius)
        elif u < 0.65:
            a = rng.uniform(0, 2 * np.pi)
            depth = rng.uniform(0.3, 0.42) * nuc.radius  # a kidney-shaped indentation
            notch = (1.15 * nuc.radius * math.cos(a), 1.15 * nuc.radius * math.sin(a), depth)
        nucleoli = _nucleoli(nuc, rng, int(rng.integers(1, 4)), (0.6, 1.1))
        strength = 0.55
        chrom = (0.35, 0.15, 0.88, False)
        cyto, cdens = "cyto_pale", 1.2
    elif kind == "blast_L3":
        rc = rng.uniform(12.0, 17.0) / 2
        cell = _outline(rng, rc, [0.05, 0.02])
        nuc = _outline(rng, rc * rng.uniform(0.64, 0.76), [0.08, 0.02])
        nucleoli = _nucleoli(nuc, rng, int(rng.integers(1, 4)), (0.75, 1.2))
        strength = 0.45
        chrom = (0.3, 0.17, 0.92, False)
        cyto, cdens = "cyto_deep", 1.0
    else:
        raise ValueError(f"unknown white-cell kind {kind!r}; expected one of {', '.join(KINDS)}")

    # Eccentric nucleus: shift it so that it still lies within the cell outline.
    offset = (0.0, 0.0)
    if nuc is not None:
        room = cell.radius * (1 - float(np.abs(cell.harmonics[:, 1]).sum())) - nuc.max_radius
        if room > 0:
            a = rng.uniform(0, 2 * np.pi)
            d = rng.uniform(0.3, 0.9) * room
            offset = (d * math.cos(a), d * math.sin(a))
        if len(nucleoli):
            nucleoli = nucleoli + np.array([offset[0], offset[1], 0.0])
    spec = _Spec(
        kind=kind,
        cell=cell,
        nucleus=nuc,
        nuc_offset=offset,
        notch=notch,
        cleft=cleft,
        lobes=lobes,
        strand_halfwidth=0.25,
        nucleoli=nucleoli,
        nucleolus_strength=strength,
        vacuoles=vacuoles,
        chromatin_scale=chrom[0],
        chromatin_contrast=chrom[1],
        chromatin_density=chrom[2],
        clumped=chrom[3],
        cytoplasm=cyto,
        cyto_density=cdens,
    )
    if kind == "blast_L3":
        spec = _with_vacuoles(spec, rng)
    return spec


def _lobes(rng: np.random.Generator, k: int, rc: float) -> np.ndarray:
    """``k`` neutrophil lobes (x, y, a, b, angle) along a curved band, spaced so that they stay apart."""
    for _ in range(60):
        step = rng.uniform(2.45, 2.9, k - 1)
        turn = rng.uniform(0.45, 1.1, k - 1) * np.where(rng.uniform(size=k - 1) < 0.8, 1.0, -1.0)
        heading = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(turn[1:])])
        pts = np.zeros((k, 2))
        pts[1:, 0] = np.cumsum(step * np.cos(heading))
        pts[1:, 1] = np.cumsum(step * np.sin(heading))
        pts -= pts.mean(axis=0)
        a = rng.uniform(1.3, 1.7, k)
        b = rng.uniform(0.8, 1.0, k)
        # Long axes across the band: the direction of the band at each lobe, turned by 90 degrees.
        # numpy's stubs give a 2-D array's gradient as a tuple of two, but with axis= it is one array
        tangent: np.ndarray = np.gradient(pts, axis=0)  # type: ignore[assignment]
        angle = np.arctan2(tangent[:, 1], tangent[:, 0]) + np.pi / 2 + rng.uniform(-0.25, 0.25, k)
        gaps = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)) + 9.0 * np.eye(k)
        reach = float((np.hypot(pts[:, 0], pts[:, 1]) + a).max())
        if reach <= 0.84 * rc and gaps.min() >= 2.35:
            break
    # The last try, shrunk if need be, when no band fitted: lobes may then touch, as they often do.
    scale = min(1.0, 0.84 * rc / reach)
    return np.column_stack([pts * scale, a, b, angle])


def _nucleoli(nuc: _Outline, rng: np.random.Generator, n: int, radii: tuple[float, float]) -> np.ndarray:
    """``n`` non-overlapping nucleoli inside the nucleus (relative to its centre)."""
    out: list[tuple[float, float, float]] = []
    for _ in range(40 * n):
        if len(out) == n:
            break
        r = rng.uniform(*radii)
        x, y = _point_in_nucleus(nuc, rng, 0.6)
        if all(math.hypot(x - a, y - b) > r + c + 0.3 for a, b, c in out):
            out.append((x, y, r))
    return np.array(out, float).reshape(-1, 3)


def _with_vacuoles(spec: _Spec, rng: np.random.Generator) -> _Spec:
    """Add 4-12 clear vacuoles, mostly in the cytoplasm, at most two over the nucleus."""
    n_target = int(rng.integers(4, 13))
    out: list[tuple[float, float, float]] = []
    n_over_nucleus = 0
    rc = spec.cell.radius
    for _ in range(60 * n_target):
        if len(out) == n_target:
            break
        r = rng.uniform(0.4, 0.85)
        a = rng.uniform(0, 2 * np.pi)
        rho = rc * math.sqrt(rng.uniform(0.1, 1.0))
        x, y = rho * math.cos(a), rho * math.sin(a)
        edge = float(spec.cell.r(np.asarray(a)))
        if rho + 1.1 * r > edge:
            continue
        if any(math.hypot(x - p, y - q) < r + s + 0.15 for p, q, s in out):
            continue
        over = bool(spec.nucleus_mask(np.asarray(x), np.asarray(y), 0.0))
        if over:
            if n_over_nucleus >= 2 or rng.uniform() > 0.25:
                continue
            n_over_nucleus += 1
        out.append((x, y, r))
    return dataclasses.replace(spec, vacuoles=np.array(out, float).reshape(-1, 3))


# --------------------------------------------------------------------------------------------------
# Random streams, stains, textures
# --------------------------------------------------------------------------------------------------

_STREAMS = ("cells", "place", "rbc", "platelets", "texture", "stain", "illumination", "noise")


def _streams(seed: int | np.random.Generator) -> dict[str, np.random.SeedSequence]:
    """Independent seed sequences, one per random aspect of a smear."""
    if isinstance(seed, np.random.Generator):
        root = np.random.SeedSequence(seed.integers(0, 2**63, size=4, dtype=np.int64).tolist())
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        root = np.random.SeedSequence(int(seed))
    else:
        raise TypeError(f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}")
    return dict(zip(_STREAMS, root.spawn(len(_STREAMS))))


def _rng(ss: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(ss))


def _stains(jitter: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Lamp colour and stain OD vectors, varied in strength, hue and saturation by ``jitter``."""
    light = _LIGHT * np.exp(rng.normal(0, 0.04 * jitter, 3) + rng.normal(0, 0.08 * jitter))
    hue_axis = np.array([1.0, 0.0, -1.0])
    # Romanowsky stains vary together (one batch, one staining time) and a little separately.
    shared_strength = rng.normal(0, 0.15 * jitter)
    shared_hue = rng.normal(0, 0.2 * jitter)
    od = {}
    for name in sorted(_OD):
        v = _OD[name]
        strength = math.exp(shared_strength + rng.normal(0, 0.08 * jitter))
        hue = shared_hue + rng.normal(0, 0.1 * jitter)
        sat = math.exp(rng.normal(0, 0.12 * jitter))
        w = v * np.exp(hue * hue_axis)
        m = w.mean()
        w = np.clip(m + (w - m) * sat, 0.0, None)
        od[name] = w * (v.sum() / max(w.sum(), 1e-9)) * strength
    return np.minimum(light, 250.0), od


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-smoothed white noise of unit standard deviation (float32)."""
    import cv2

    n: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px >= 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _soft_discs(x: np.ndarray, y: np.ndarray, discs: np.ndarray, edge: float) -> np.ndarray:
    """Union of discs ``(x, y, r)`` with a soft edge of width ``edge`` (µm): 1 inside, 0 outside."""
    out = np.zeros(np.broadcast(x, y).shape, np.float32)
    for cx, cy, r in discs:
        d = np.hypot(x - cx, y - cy)
        out = np.maximum(out, np.clip((r - d) / edge + 0.5, 0.0, 1.0).astype(np.float32))
    return out


# --------------------------------------------------------------------------------------------------
# Placement (µm)
# --------------------------------------------------------------------------------------------------

_GAP_UM = 2.0  # free space between white cells that are not a touching pair
_BORDER_UM = 0.6  # free space between a white cell and the image border


def _contact_overlap(ra: float, rb: float, px: float) -> float:
    """How far (µm) the outlines of a touching pair overlap before the contact face is flattened."""
    return max(0.1 * (ra + rb), 2.5 * px)


def _place_white_cells(
    specs: Sequence[_Spec], n_pairs: int, width: float, height: float, px: float, rng: np.random.Generator
) -> list[tuple[float, float] | None]:
    """Centres (µm) of the white cells: pairs ``(0, 1), (2, 3), ...`` touching, the rest apart."""
    centres: list[tuple[float, float] | None] = [None] * len(specs)
    placed: list[tuple[float, float, float]] = []  # x, y, max radius

    def free(x: float, y: float, r: float, strict: bool) -> bool:
        m = r + _BORDER_UM
        if strict and not (m <= x <= width - m and m <= y <= height - m):
            return False
        if not (0 <= x <= width and 0 <= y <= height):
            return False
        return all(math.hypot(x - a, y - b) >= r + c + _GAP_UM for a, b, c in placed)

    groups = [(2 * i, 2 * i + 1) for i in range(n_pairs)] + [(i,) for i in range(2 * n_pairs, len(specs))]
    for group in groups:
        done = False
        for attempt in range(600):
            strict = attempt < 400
            if len(group) == 2:
                a, b = specs[group[0]], specs[group[1]]
                phi = rng.uniform(0, 2 * np.pi)
                ra = float(a.cell.r(np.asarray(phi)))
                rb = float(b.cell.r(np.asarray(phi + np.pi)))
                d = ra + rb - _contact_overlap(ra, rb, px)
                mx, my = rng.uniform(0, width), rng.uniform(0, height)
                dx, dy = 0.5 * d * math.cos(phi), 0.5 * d * math.sin(phi)
                pts = [(mx - dx, my - dy), (mx + dx, my + dy)]
            else:
                pts = [(rng.uniform(0, width), rng.uniform(0, height))]
            radii = [specs[i].max_radius for i in group]
            if all(free(x, y, r, strict) for (x, y), r in zip(pts, radii)):
                if not strict:
                    logger.warning("no room for white cell(s) %s (%s) clear of the image border; placed where the "
                                   "border may cut them", ", ".join(str(i + 1) for i in group),
                                   ", ".join(specs[i].kind for i in group))  # fmt: skip
                for i, (x, y), r in zip(group, pts, radii):
                    centres[i] = (x, y)
                    placed.append((x, y, r))
                done = True
                break
        if not done:
            logger.warning(
                "no room for white cell(s) %s (%s) in a %.0fx%.0f um field; left out",
                ", ".join(str(i + 1) for i in group),
                ", ".join(specs[i].kind for i in group),
                width,
                height,
            )
    return centres


def _density_field(rng: np.random.Generator, width: float, height: float):
    """A smooth field in [0.3, 1]: red cells are denser in some regions of a smear than in others."""
    k = 3
    freqs = rng.uniform(0.004, 0.014, (k, 2)) * 2 * np.pi * rng.choice([-1.0, 1.0], (k, 2))
    phases = rng.uniform(0, 2 * np.pi, k)

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        s = sum(np.cos(freqs[i, 0] * x + freqs[i, 1] * y + phases[i]) for i in range(k)) / k
        return 0.65 + 0.35 * np.clip(s * 1.8, -1.0, 1.0)

    return f


def _place_red_cells(
    n_target: int,
    width: float,
    height: float,
    white: Sequence[tuple[float, float, float]],
    rng: np.random.Generator,
) -> np.ndarray:
    """Random sequential adsorption of red cells.

    Returns (n, 10): x, y, radius, ellipticity, its angle, pallor depth, then amplitude and phase of
    3rd and 4th order outline harmonics (all lengths in µm).
    """
    if n_target <= 0:
        return np.zeros((0, 10))
    m = 40 * n_target + 200
    x = rng.uniform(-3.0, width + 3.0, m)
    y = rng.uniform(-3.0, height + 3.0, m)
    r = np.clip(rng.normal(3.75, 0.22, m), 3.2, 4.35)
    ell = rng.uniform(0.0, 0.06, m)
    ang = rng.uniform(0, np.pi, m)
    dip = np.clip(rng.normal(0.5, 0.15, m), 0.05, 0.8)
    harm = rng.uniform(0.0, 1.0, (m, 4)) * np.array([0.025, 2 * np.pi, 0.02, 2 * np.pi])
    wants_overlap = rng.uniform(size=m) < 0.12
    accept_u = rng.uniform(size=m)
    ok = accept_u <= _density_field(rng, width, height)(x, y)
    for wx, wy, wr in white:  # red cells may slip under a white cell's edge, never under its middle
        ok &= np.hypot(x - wx, y - wy) >= wr + 0.6 * r
    cs = 9.0
    grid: dict[tuple[int, int], list[int]] = {}
    acc: list[int] = []
    overlapped: set[int] = set()
    xs, ys, rs = x.tolist(), y.tolist(), r.tolist()
    for k in np.flatnonzero(ok).tolist():
        if len(acc) >= n_target:
            break
        xk, yk, rk = xs[k], ys[k], rs[k]
        gi, gj = int(xk // cs), int(yk // cs)
        conflicts = []
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for j in grid.get((gi + di, gj + dj), ()):
                    d = math.hypot(xk - xs[j], yk - ys[j])
                    if d < 0.95 * (rk + rs[j]):
                        conflicts.append((j, d))
        if conflicts:
            if not (wants_overlap[k] and len(conflicts) == 1):
                continue
            j, d = conflicts[0]
            if j in overlapped or d < 0.5 * (rk + rs[j]):
                continue
            overlapped.update((j, k))
        acc.append(k)
        grid.setdefault((gi, gj), []).append(k)
    idx = np.array(acc, int)
    return np.column_stack([x[idx], y[idx], r[idx], ell[idx], ang[idx], dip[idx], harm[idx]])


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _bbox(cx: float, cy: float, r: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel box (y0, y1, x0, x1) around a circle given in pixels, clipped to the image."""
    y0, y1 = max(int(math.floor(cy - r)) - 1, 0), min(int(math.ceil(cy + r)) + 2, shape[0])
    x0, x1 = max(int(math.floor(cx - r)) - 1, 0), min(int(math.ceil(cx + r)) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def _paint_red_cells(rbcs: np.ndarray, shape: tuple[int, int], px: float) -> tuple[np.ndarray, np.ndarray]:
    """Red-cell thickness map (1 = the rim of one cell, more where two overlap) and mask.

    The profile is a flat disc with a steep edge, a slightly thicker rim and a central dip of variable
    depth (the central pallor, about a third of the diameter).
    """
    thick = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    for x, y, r, ell, ang, dip, a2, p2, a3, p3 in rbcs:
        cx, cy = x / px - 0.5, y / px - 0.5
        box = _bbox(cx, cy, r * (1 + ell + a2 + a3) / px, shape)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        yy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) * px - y)[:, None]
        xx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) * px - x)[None, :]
        theta = np.arctan2(yy, xx)
        wobble = ell * np.cos(2 * (theta - ang)) + a2 * np.cos(3 * theta + p2) + a3 * np.cos(4 * theta + p3)
        edge_r = r * (1 + wobble)
        rho = np.hypot(xx, yy) / edge_r
        inside = rho < 1.0
        rim = np.clip((1.0 - rho) * (r / 0.3), 0.0, 1.0) ** 0.7
        h = rim * (1.0 - dip * np.exp(-((rho / 0.36) ** 2)) + 0.16 * np.exp(-(((1.0 - rho) * r / 0.35) ** 2)))
        thick[y0:y1, x0:x1] += h * inside
        mask[y0:y1, x0:x1] |= inside
    return thick, mask


def _paint_platelets(
    n: int,
    width: float,
    height: float,
    white: Sequence[tuple[float, float, float]],
    rbc_mask: np.ndarray,
    shape: tuple[int, int],
    px: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Platelet stain density map and mask: 2-3 µm irregular granular dots, mostly on free background."""
    dens = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        for attempt in range(200):
            x, y = rng.uniform(1.5, width - 1.5), rng.uniform(1.5, height - 1.5)
            r = rng.uniform(1.0, 1.5)
            harm = _outline(rng, r, [0.15, 0.1, 0.05])
            granular = rng.uniform(0.6, 1.0)
            if any(math.hypot(x - a, y - b) < c + r + 1.0 for a, b, c in white):
                continue
            if any(math.hypot(x - a, y - b) < c + r + 0.3 for a, b, c in placed):
                continue
            row, col = int(y / px), int(x / px)
            on_rbc = 0 <= row < shape[0] and 0 <= col < shape[1] and rbc_mask[row, col]
            if on_rbc and attempt < 150 and rng.uniform() < 0.85:
                continue
            break
        else:
            continue
        placed.append((x, y, harm.max_radius))
        cx, cy = x / px - 0.5, y / px - 0.5
        box = _bbox(cx, cy, harm.max_radius / px, shape)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        yy = ((np.arange(y0, y1) - cy) * px)[:, None]
        xx = ((np.arange(x0, x1) - cx) * px)[None, :]
        inside = harm.inside(xx, yy)
        gran = _noise(rng, inside.shape, max(0.25 / px, 0.5))
        d = np.where(inside, 0.55 + 0.3 * granular * np.clip(gran, -1.5, 1.5), 0.0).astype(np.float32)
        dens[y0:y1, x0:x1] = np.maximum(dens[y0:y1, x0:x1], d)
        mask[y0:y1, x0:x1] |= inside
    return dens, mask


def _edge_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (pixels) of each pixel of ``mask`` to the nearest pixel outside it or outside the box."""
    import cv2

    padded = np.pad(mask, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]


def _white_cell_od(
    spec: _Spec,
    xx: np.ndarray,
    yy: np.ndarray,
    cellm: np.ndarray,
    nucm: np.ndarray,
    od: dict[str, np.ndarray],
    px: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Optical density (h, w, 3) of one white cell on its box; ``xx, yy`` in µm from the cell centre."""

    shape = cellm.shape
    d_cell = _edge_distance(cellm) * px  # µm to the cell's edge (a contact face is an edge too)
    d_nuc = _edge_distance(nucm) * px

    # Cytoplasm: the stain is denser at the cell's edge (a darker blue rim), a little mottled.
    mottle = _noise(rng, shape, 0.8 / px)
    cyto = spec.cyto_density * (0.85 + 0.08 * mottle) + 0.55 * np.exp(-d_cell / 0.45)
    out = cyto[..., None] * od[spec.cytoplasm]
    if spec.kind == "neutrophil":
        gran = _noise(rng, shape, max(0.16 / px, 0.4))
        grains = np.clip(gran - 0.8, 0.0, 1.2)
        out = out + (0.9 * grains)[..., None] * od["granule"]
    # Nucleus: chromatin texture (fine for blasts, clumped for mature cells), condensed at the membrane.
    base = spec.chromatin_density
    tex = _noise(rng, shape, max(spec.chromatin_scale / px, 0.4))
    fine = _noise(rng, shape, max(0.22 / px, 0.4))
    if spec.clumped:
        chrom = base * (1.0 + spec.chromatin_contrast * np.tanh(1.6 * tex) + 0.06 * fine)
    else:
        broad = _noise(rng, shape, 1.4 / px)
        chrom = base * (1.0 + spec.chromatin_contrast * tex + 0.05 * fine + 0.05 * broad)
    chrom = chrom + 0.18 * base * np.exp(-d_nuc / 0.35)
    if spec.cleft is not None and spec.nucleus is not None:
        ang, depth, hw = spec.cleft
        ox, oy = spec.nuc_offset
        rim = float(spec.nucleus.r(np.asarray(ang)))
        ux, uy = math.cos(ang), math.sin(ang)
        along = (xx - ox) * ux + (yy - oy) * uy  # distance from the nucleus centre along the fold
        across = np.abs((yy - oy) * ux - (xx - ox) * uy)
        taper = np.clip((along - (rim - depth)) / depth, 0.0, 1.0)
        groove = np.exp(-((across / np.maximum(hw * (0.4 + 0.6 * taper), 0.5 * px)) ** 2)) * (taper > 0)
        chrom = chrom * (1.0 - 0.55 * groove)
    nucleus_od = chrom[..., None] * od["nucleus"]
    if len(spec.nucleoli):
        spot = _soft_discs(xx, yy, spec.nucleoli, 0.3)
        ring = np.zeros(shape, np.float32)
        if spec.kind == "blast_L3":  # prominent nucleoli: a condensed chromatin ring around them
            for cx, cy, r in spec.nucleoli:
                ring = np.maximum(ring, np.exp(-(((np.hypot(xx - cx, yy - cy) - r - 0.15) / 0.18) ** 2)))
        s = spec.nucleolus_strength
        nucleus_od = (
            nucleus_od * (1.0 - s * spot + 0.22 * ring)[..., None]
            + (0.8 * s * spot)[..., None] * od["cyto_pale"]
        )
    out = np.where(nucm[..., None], nucleus_od, out)
    if len(spec.vacuoles):
        vac = _soft_discs(xx, yy, spec.vacuoles, 0.2)
        out = out * (1.0 - 0.8 * vac)[..., None]
    out[~cellm] = 0.0
    return np.clip(out, 0.0, None).astype(np.float32)


def _n_spots_inside(
    spots: np.ndarray, centre: tuple[float, float], px: float, mask: np.ndarray, origin: tuple[int, int]
) -> int:
    """How many spots (rows of x, y, radius in µm from `centre`) have their centre pixel in `mask`.

    `mask` covers the cell's box, whose top-left pixel is `origin` (x0, y0) in the image.
    """
    if not len(spots):
        return 0
    col = np.floor((centre[0] + spots[:, 0]) / px).astype(int) - origin[0]
    row = np.floor((centre[1] + spots[:, 1]) / px).astype(int) - origin[1]
    inside = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
    return int(np.count_nonzero(mask[row[inside], col[inside]]))


def _compose(
    shape: tuple[int, int],
    px: float,
    specs: Sequence[_Spec],
    centres: Sequence[tuple[float, float] | None],
    n_pairs: int,
    red_cell_density: float,
    n_platelets: int,
    stain_jitter: float,
    illumination: float,
    streams: dict[str, np.random.SeedSequence],
) -> SyntheticSmear:
    import cv2

    h, w = shape
    width, height = w * px, h * px
    od_light, od = _stains(stain_jitter, _rng(streams["stain"]))
    tex_seeds = streams["texture"].spawn(len(specs) + 1)

    # White-cell geometry, rasterised in boxes; touching pairs share a flat contact face.
    nuclei = np.zeros(shape, np.int32)
    cells = np.zeros(shape, np.int32)
    partner: dict[int, int] = {}
    for p in range(n_pairs):
        if centres[2 * p] is not None and centres[2 * p + 1] is not None:
            partner[2 * p], partner[2 * p + 1] = 2 * p + 1, 2 * p
    boxes: list[tuple[int, int, int, int] | None] = []
    masks: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, (spec, c) in enumerate(zip(specs, centres)):
        box = None if c is None else _bbox(c[0] / px - 0.5, c[1] / px - 0.5, spec.max_radius / px + 1, shape)
        if box is None:
            boxes.append(None)
            masks.append(None)
            continue
        assert c is not None  # box is None where c is
        y0, y1, x0, x1 = box
        gx = (np.arange(x0, x1) + 0.5) * px
        gy = (np.arange(y0, y1) + 0.5) * px
        xx, yy = gx[None, :] - c[0], gy[:, None] - c[1]
        cellm = spec.cell_mask(xx, yy, px)
        nucm = spec.nucleus_mask(xx, yy, px) & cellm
        if i in partner:
            j = partner[i]
            a, b = (i, j) if i < j else (j, i)
            ca, cb, cj = centres[a], centres[b], centres[j]
            assert ca is not None and cb is not None and cj is not None
            dist = math.hypot(cb[0] - ca[0], cb[1] - ca[1])
            phi = math.atan2(cb[1] - ca[1], cb[0] - ca[0])
            ra = float(specs[a].cell.r(np.asarray(phi)))
            rb = float(specs[b].cell.r(np.asarray(phi + np.pi)))
            # Signed distance (µm) from the contact line (power-diagram bisector): < 0 on a's side.
            s = ((gx[None, :] - ca[0]) * (cb[0] - ca[0]) + (gy[:, None] - ca[1]) * (cb[1] - ca[1])) / dist
            s = s - (dist * dist + ra * ra - rb * rb) / (2 * dist)
            other = specs[j].cell_mask(gx[None, :] - cj[0], gy[:, None] - cj[1], px)
            mine = (s <= 0) if i == a else (s > 0)
            cellm &= ~other | mine
            gap = max(0.3, 1.0 * px)  # the nuclei stay apart: cytoplasm or membrane between them
            nucm &= (s < -gap) if i == a else (s > gap)
        if not nucm.any():
            logger.warning("white cell %d (%s) lies outside the image; left out", i + 1, spec.kind)
            boxes.append(None)
            masks.append(None)
            continue
        boxes.append(box)
        masks.append((cellm, nucm))

    kept = [i for i, b in enumerate(boxes) if b is not None]
    ids = {i: k + 1 for k, i in enumerate(kept)}
    for i in kept:
        y0, y1, x0, x1 = boxes[i]  # type: ignore[misc]
        cellm, nucm = masks[i]  # type: ignore[misc]
        cells[y0:y1, x0:x1][cellm] = ids[i]
        nuclei[y0:y1, x0:x1][nucm] = ids[i]

    # Red cells and platelets, hidden where a white cell lies on top.
    white = [(centres[i][0], centres[i][1], specs[i].max_radius) for i in kept]  # type: ignore[index]
    free_area = max(width * height - sum(math.pi * r * r for _, _, r in white), 0.0)
    n_rbc = int(round(red_cell_density * free_area / (math.pi * 3.75**2)))
    rbcs = _place_red_cells(n_rbc, width, height, white, _rng(streams["rbc"]))
    thick, rbc_mask = _paint_red_cells(rbcs, shape, px)
    plt_dens, plt_mask = _paint_platelets(
        n_platelets, width, height, white, rbc_mask, shape, px, _rng(streams["platelets"])
    )

    # Optical density of the whole field.
    bg_rng = _rng(tex_seeds[-1])
    small = bg_rng.standard_normal((max(h // 32, 2), max(w // 32, 2))).astype(np.float32)
    mottle = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    density = np.empty((h, w, 3), np.float32)
    for ch in range(3):
        density[..., ch] = (
            od["plasma"][ch] * (1.0 + 0.6 * mottle) + thick * od["rbc"][ch] + plt_dens * od["platelet"][ch]
        )
    white_cover = cells > 0
    density[white_cover] = 0.0
    for i in kept:
        y0, y1, x0, x1 = boxes[i]  # type: ignore[misc]
        cellm, nucm = masks[i]  # type: ignore[misc]
        c = centres[i]
        assert c is not None
        xx = ((np.arange(x0, x1) + 0.5) * px - c[0])[None, :]
        yy = ((np.arange(y0, y1) + 0.5) * px - c[1])[:, None]
        cell_od = _white_cell_od(specs[i], xx, yy, cellm, nucm, od, px, _rng(tex_seeds[i]))
        density[y0:y1, x0:x1] += cell_od

    # Camera: lamp x vignetting x absorption, optical blur, sensor noise, JPEG round trip.
    img = np.exp(-density)
    if illumination > 0:
        irng = _rng(streams["illumination"])
        cx0, cy0 = irng.uniform(-0.35, 0.35, 2)
        gdir = irng.uniform(0, 2 * np.pi)
        u = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        v = (np.linspace(-1.0, 1.0, h, dtype=np.float32) * (h / w))[:, None]
        field_ = 1.0 - illumination * (0.45 * ((u - cx0) ** 2 + (v - cy0) ** 2) / 1.8)
        field_ = field_ + illumination * 0.12 * (math.cos(gdir) * u + math.sin(gdir) * v)
        img *= np.clip(field_, 0.2, 1.2)[..., None]
    img *= od_light.astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), max(0.22 / px, 0.5))
    nrng = _rng(streams["noise"])
    img += nrng.standard_normal(img.shape, dtype=np.float32) * (0.6 + 0.007 * img)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(image[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if ok:
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        assert decoded is not None  # the JPEG just encoded
        image = np.ascontiguousarray(decoded[..., ::-1])

    # Records, measured on the label images.
    records = []
    for i in kept:
        y0, y1, x0, x1 = boxes[i]  # type: ignore[misc]
        cid = ids[i]
        c = centres[i]
        assert c is not None
        # Count a nucleolus or vacuole only where it was drawn: a touching neighbour or the image's edge
        # may have cut it away with part of the cell.
        n_nucleoli = _n_spots_inside(specs[i].nucleoli, c, px, nuclei[y0:y1, x0:x1] == cid, (x0, y0))
        n_vacuoles = _n_spots_inside(specs[i].vacuoles, c, px, cells[y0:y1, x0:x1] == cid, (x0, y0))
        rr, cc = np.nonzero(nuclei[y0:y1, x0:x1] == cid)
        n_cell = int(np.count_nonzero(cells[y0:y1, x0:x1] == cid))
        spec = specs[i]
        records.append(
            SyntheticCell(
                cell_id=cid,
                kind=spec.kind,
                x=float(cc.mean() + x0),
                y=float(rr.mean() + y0),
                is_blast=spec.kind in _BLASTS,
                cell_diameter_um=2.0 * math.sqrt(n_cell / math.pi) * px,
                nucleus_diameter_um=2.0 * math.sqrt(rr.size / math.pi) * px,
                n_nucleoli=n_nucleoli,
                n_vacuoles=n_vacuoles,
            )
        )
    pairs = tuple(
        (ids[2 * p], ids[2 * p + 1]) for p in range(n_pairs) if 2 * p in ids and 2 * p + 1 in ids
    )
    return SyntheticSmear(
        image=image,
        um_per_px=float(px),
        nuclei=nuclei,
        cells=cells,
        red_cells=rbc_mask & ~white_cover,
        platelets=plt_mask & ~white_cover,
        white_cells=tuple(records),
        touching_pairs=pairs,
    )


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int], minimum: int = 16) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be two integers (rows, columns), got {shape!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"shape must be at least {minimum}x{minimum} pixels, got {h}x{w}")
    if h * w > 50_000_000:
        raise ValueError(f"shape {h}x{w} is too large (over 50 megapixels)")
    return h, w


def _check_fraction(name: str, value: float, high: float = 1.0) -> float:
    value = float(value)
    if not 0.0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high:g}], got {value}")
    return value


def _check_scale(um_per_px: float) -> float:
    px = float(um_per_px)
    if not 0.02 <= px <= 2.0:
        raise ValueError(f"um_per_px must be in [0.02, 2] (light-microscope scales), got {um_per_px}")
    return px


def make_smear(
    *,
    shape: tuple[int, int] = (768, 1024),
    um_per_px: float = 0.3,
    kinds: Sequence[str] = ("blast_L1", "blast_L2", "lymphocyte", "neutrophil"),
    n_touching_pairs: int = 1,
    red_cell_density: float = 0.45,
    n_platelets: int = 8,
    stain_jitter: float = 0.0,
    illumination: float = 0.0,
    seed: int | np.random.Generator = 0,
) -> SyntheticSmear:
    """Draw a synthetic stained blood smear photograph with its exact ground truth.

    Parameters
    ----------
    shape : (int, int), optional
        Image size in pixels (rows, columns).
    um_per_px : float, optional
        Scale in µm per pixel; all sizes are drawn in µm, so a smaller value gives larger cells.
    kinds : sequence of str, optional
        One entry per white cell, each one of :data:`KINDS`; cell ``k`` of the list gets id ``k + 1``.
    n_touching_pairs : int, optional
        The first ``2 * n_touching_pairs`` white cells are placed in pairs (1 with 2, 3 with 4, ...) whose
        cells touch along a flattened contact face while their nuclei stay apart. The others are placed
        at least 2 µm from every other white cell. Every white cell is kept at least 0.6 µm from the image
        border where there is room; in a crowded or tiny field it may be placed where the border cuts it
        (a logged warning), and its record then describes the part inside the image.
    red_cell_density : float, optional
        About the fraction of the free field covered by red cells, in [0, 0.6].
    n_platelets : int, optional
        Number of platelets.
    stain_jitter : float, optional
        In [0, 1]: how much the lamp colour and the hue, saturation and strength of the stains vary.
    illumination : float, optional
        In [0, 1]: strength of a smooth vignetting and gradient of the illumination.
    seed : int or numpy.random.Generator, optional
        Seed of all random draws; a Generator is advanced.

    Returns
    -------
    SyntheticSmear
        The image, its scale, label images, masks and white-cell records. White cells for which no room
        is found (a crowded or tiny field) are left out with a logged warning; ids are then renumbered
        1..n in order.

    Raises
    ------
    ValueError
        For an unknown kind or an argument out of range.
    TypeError
        If `seed` is neither an int nor a numpy.random.Generator.

    Examples
    --------
    >>> smear = make_smear(shape=(128, 160), kinds=("lymphocyte",), n_touching_pairs=0, seed=1)
    >>> smear.image.shape, smear.image.dtype
    ((128, 160, 3), dtype('uint8'))
    >>> [c.kind for c in smear.white_cells], sorted(set(smear.nuclei.ravel().tolist()))
    (['lymphocyte'], [0, 1])
    """
    h, w = _check_shape(shape)
    px = _check_scale(um_per_px)
    if isinstance(kinds, str):
        raise ValueError("kinds must be a sequence of kind names, not a single string")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown white-cell kind(s) {bad}; expected one of {', '.join(KINDS)}")
    n_pairs = int(n_touching_pairs)
    if n_pairs < 0 or 2 * n_pairs > len(kinds):
        raise ValueError(
            f"n_touching_pairs must be in [0, {len(kinds) // 2}] for {len(kinds)} white cells, "
            f"got {n_touching_pairs}"
        )
    density = _check_fraction("red_cell_density", red_cell_density, 0.6)
    n_plt = int(n_platelets)
    if n_plt < 0:
        raise ValueError(f"n_platelets must be >= 0, got {n_platelets}")
    jitter = _check_fraction("stain_jitter", stain_jitter)
    illum = _check_fraction("illumination", illumination)

    streams = _streams(seed)
    specs = [_sample_spec(k, _rng(s)) for k, s in zip(kinds, streams["cells"].spawn(len(kinds)))]
    centres = _place_white_cells(specs, n_pairs, w * px, h * px, px, _rng(streams["place"]))
    return _compose((h, w), px, specs, centres, n_pairs, density, n_plt, jitter, illum, streams)


def render_cell(
    kind: str,
    *,
    um_per_px: float = 0.3,
    size: int | None = None,
    seed: int | np.random.Generator = 0,
) -> SyntheticSmear:
    """Draw one white cell centred in a small square image, like a single-cell crop (ALL-IDB2).

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    um_per_px : float, optional
        Scale in µm per pixel.
    size : int, optional
        Side of the square image in pixels; by default about 2.5 cell diameters. A size smaller than the
        cell crops it.
    seed : int or numpy.random.Generator, optional
        Seed of all random draws.

    Returns
    -------
    SyntheticSmear
        With one white cell, id 1, centred; a few red cells around it.

    Raises
    ------
    ValueError
        For an unknown kind, or a scale or size out of range.
    TypeError
        If `seed` is neither an int nor a numpy.random.Generator.

    Examples
    --------
    >>> crop = render_cell("blast_L3", seed=2)
    >>> crop.white_cells[0].kind, crop.white_cells[0].n_vacuoles > 0
    ('blast_L3', True)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown white-cell kind {kind!r}; expected one of {', '.join(KINDS)}")
    px = _check_scale(um_per_px)
    streams = _streams(seed)
    spec = _sample_spec(kind, _rng(streams["cells"].spawn(1)[0]))
    if size is None:
        side = max(int(math.ceil(2.5 * 2 * spec.max_radius / px)), 16)
    else:
        if isinstance(size, bool) or int(size) != size:
            raise ValueError(f"size must be an integer number of pixels, got {size!r}")
        side = _check_shape((size, size), minimum=8)[0]
    centre = (side * px / 2, side * px / 2)  # the middle of the image, in µm
    return _compose((side, side), px, [spec], [centre], 0, 0.3, 0, 0.0, 0.0, streams)


def touching_discs(
    *, shape: tuple[int, int] = (64, 96), radius: int = 14, overlap: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """A tiny exact test image: two purple nuclear discs on a beige background that touch.

    The discs have integer centres on the middle row, ``2 * radius - overlap`` pixels apart, so their
    outlines overlap by ``overlap`` pixels along the line joining them (0: they meet in one pixel). Shared
    pixels go to the left disc up to the midpoint. No noise, no blur, no anti-aliasing.

    Parameters
    ----------
    shape : (int, int), optional
        Image size (rows, columns).
    radius : int, optional
        Disc radius in pixels (a pixel belongs to a disc when its centre is within ``radius``).
    overlap : int, optional
        In [0, radius].

    Returns
    -------
    image : (H, W, 3) ndarray of uint8
        Background RGB (225, 215, 200), discs (110, 50, 150).
    labels : (H, W) ndarray of int32
        0 background, 1 left disc, 2 right disc.

    Raises
    ------
    ValueError
        If `radius` or `overlap` is out of range, or `shape` too small for the two discs.

    Examples
    --------
    >>> image, labels = touching_discs(shape=(12, 20), radius=4, overlap=2)
    >>> sorted(np.unique(labels).tolist()), image[6, 1].tolist(), image[6, 6].tolist()
    ([0, 1, 2], [225, 215, 200], [110, 50, 150])
    """
    h, w = _check_shape(shape, minimum=4)
    if isinstance(radius, bool) or int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
    if isinstance(overlap, bool) or int(overlap) != overlap or not 0 <= overlap <= radius:
        raise ValueError(f"overlap must be an integer in [0, radius={radius}], got {overlap!r}")
    radius, overlap = int(radius), int(overlap)
    extent = 4 * radius - overlap + 1
    if w < extent + 2 or h < 2 * radius + 3:
        raise ValueError(
            f"shape {h}x{w} too small for two discs of radius {radius} overlapping by {overlap}: "
            f"need at least {2 * radius + 3}x{extent + 2}"
        )
    cy = h // 2
    c1 = (w - extent) // 2 + radius
    c2 = c1 + 2 * radius - overlap
    yy, xx = np.mgrid[:h, :w]
    d1 = (yy - cy) ** 2 + (xx - c1) ** 2 <= radius * radius
    d2 = (yy - cy) ** 2 + (xx - c2) ** 2 <= radius * radius
    left = 2 * xx <= c1 + c2
    labels = np.zeros((h, w), np.int32)
    labels[d1 & (left | ~d2)] = 1
    labels[d2 & ~(d1 & left)] = 2
    image = np.empty((h, w, 3), np.uint8)
    image[...] = (225, 215, 200)
    image[labels > 0] = (110, 50, 150)
    return image, labels


# --------------------------------------------------------------------------------------------------
# Bundled samples
# --------------------------------------------------------------------------------------------------

_SAMPLES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "smear_01",
        "acute lymphoblastic leukemia: L1 and L2 blasts (two touching pairs) and a lymphocyte",
        dict(
            shape=(768, 1024),
            um_per_px=0.25,
            kinds=("blast_L1", "blast_L2", "blast_L1", "blast_L1", "blast_L2", "blast_L1", "lymphocyte"),
            n_touching_pairs=2,
            red_cell_density=0.5,
            n_platelets=6,
            stain_jitter=0.15,
            illumination=0.2,
        ),
    ),
    (
        "smear_02",
        "healthy: lymphocytes and neutrophils, no blasts",
        dict(
            shape=(768, 1024),
            um_per_px=0.3,
            kinds=("lymphocyte", "neutrophil", "lymphocyte", "neutrophil"),
            n_touching_pairs=0,
            red_cell_density=0.5,
            n_platelets=10,
            stain_jitter=0.1,
            illumination=0.1,
        ),
    ),
    (
        "smear_03",
        "L3-like (Burkitt-type) blasts with deep blue vacuolated cytoplasm, one touching pair, "
        "a neutrophil; stronger stain and illumination variation",
        dict(
            shape=(768, 1024),
            um_per_px=0.3,
            kinds=("blast_L3", "blast_L3", "blast_L3", "blast_L3", "neutrophil"),
            n_touching_pairs=1,
            red_cell_density=0.4,
            n_platelets=8,
            stain_jitter=0.7,
            illumination=0.5,
        ),
    ),
)


def _readme(seed: int) -> str:
    lines = [
        "# Sample images (synthetic)",
        "",
        "These smears are **synthetic**: drawn by `leukoseg.synthetic.make_smear`, not photographed. They",
        "imitate May-Grünwald-Giemsa stained peripheral blood smears of ALL-IDB1 and come with exact ground",
        "truth. Regenerate them with",
        "",
        "```",
        f"python -m leukoseg.synthetic sample_images --seed {seed}",
        "```",
        "",
        "| image | scale | content |",
        "|---|---|---|",
    ]
    for name, what, kw in _SAMPLES:
        h, w = kw["shape"]
        lines.append(f"| `{name}.jpg` | {w}x{h}, {kw['um_per_px']} µm/px | {what} |")
    lines += [
        "",
        "For each image `NAME.jpg`:",
        "",
        "- `NAME.truth.json`: the scale (`um_per_px`), the generator's parameters and one record per white",
        "  cell: `id` (its value in the label images), `kind`, nucleus centroid `x` (column) and `y`",
        "  (row) in pixels, `is_blast`, equivalent diameters of cell and nucleus in µm, numbers of",
        "  nucleoli and vacuoles; `touching_pairs` lists the ids of white cells placed touching each other.",
        "- `NAME.truth.npz`: label images `nuclei` and `cells` (int32, 0 = background, value = `id`) and",
        "  masks `red_cells` and `platelets` (bool); read with `numpy.load(path, allow_pickle=False)`.",
        "",
        "The truth files have no image extension, so `leukoseg segment sample_images/` reads only the",
        "images.",
        "",
    ]
    return "\n".join(lines)


def write_samples(folder: str | os.PathLike[str], *, seed: int = 0) -> list[Path]:
    """Write the bundled sample smears and their ground truth into ``folder``.

    Three 1024x768 JPEG smears (quality 92): ``smear_01.jpg`` (ALL, L1 and L2 blasts, touching pairs),
    ``smear_02.jpg`` (healthy: lymphocytes and neutrophils) and ``smear_03.jpg`` (L3-like blasts, stronger
    stain and illumination variation); for each ``NAME.truth.json`` and ``NAME.truth.npz``; and a
    ``README.md``. Every file is written atomically.

    Parameters
    ----------
    folder : str or os.PathLike
        Created if missing.
    seed : int, optional
        Base seed; smear ``k`` (from 0) is drawn with ``make_smear(..., seed=numpy.random.default_rng([seed, k]))``
        (the ``seed`` recorded in its ``.truth.json``).

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ValueError
        If `seed` is not a non-negative integer.
    """
    from . import __version__
    from .io import atomic_write, write_image, write_json, write_text

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k, (name, what, kw) in enumerate(_SAMPLES):
        smear = make_smear(**kw, seed=np.random.default_rng([int(seed), k]))
        image_path = folder / f"{name}.jpg"
        write_image(image_path, smear.image, quality=92)
        truth = {
            "image": image_path.name,
            "synthetic": True,
            "description": what,
            "generator": f"leukoseg.synthetic.make_smear (leukoseg {__version__})",
            "seed": [int(seed), k],
            "um_per_px": smear.um_per_px,
            "shape": list(smear.image.shape[:2]),
            "parameters": {key: (list(v) if isinstance(v, tuple) else v) for key, v in kw.items()},
            "labels": f"{name}.truth.npz",
            "touching_pairs": [list(p) for p in smear.touching_pairs],
            "cells": [
                {
                    "id": c.cell_id,
                    "kind": c.kind,
                    "x": c.x,
                    "y": c.y,
                    "is_blast": c.is_blast,
                    "cell_diameter_um": c.cell_diameter_um,
                    "nucleus_diameter_um": c.nucleus_diameter_um,
                    "n_nucleoli": c.n_nucleoli,
                    "n_vacuoles": c.n_vacuoles,
                }
                for c in smear.white_cells
            ],
        }
        json_path = folder / f"{name}.truth.json"
        write_json(json_path, truth)
        npz_path = folder / f"{name}.truth.npz"
        with atomic_write(npz_path, "wb") as f:
            np.savez_compressed(
                f, nuclei=smear.nuclei, cells=smear.cells, red_cells=smear.red_cells, platelets=smear.platelets
            )
        written += [image_path, json_path, npz_path]
        logger.info("wrote %s (%d white cells)", image_path, len(smear.white_cells))
    readme = folder / "README.md"
    write_text(readme, _readme(int(seed)))
    written.append(readme)
    return written


def _build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m leukoseg.synthetic",
        description="Write the synthetic sample smears and their ground truth into a folder.",
    )
    parser.add_argument("folder", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m leukoseg.synthetic FOLDER [--seed N]``."""
    args = _build_parser().parse_args(argv)
    if args.seed < 0:
        _build_parser().error("--seed must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_samples(args.folder, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
