"""Chest-like phantom images whose content follows a study's ground-truth findings.

Everything is vectorised numpy on a normalised coordinate grid: x to the image right (the
patient's left on frontal views, radiological convention), y downwards, one unit = half the
shorter image side. A small random rotation/shift/zoom is applied to the grid, so anatomy
moves a little between images while the drawing code stays in fixed "anatomical" coordinates.
Output is a float32 image in [0, 1] where bright means dense (MONOCHROME2 sense).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from cxr_assets.demo.reports import StudyFindings

VIEWS: tuple[str, ...] = ("PA", "AP", "LAT")

# Lobe centres on the frontal view (patient right = negative x).
LOBE_CENTERS: dict[str, tuple[float, float]] = {
    "RUL": (-0.38, -0.33),
    "RML": (-0.24, 0.16),
    "RLL": (-0.44, 0.38),
    "LUL": (0.38, -0.30),
    "LLL": (0.45, 0.40),
}
# Rough lobe centres on the lateral view (anterior = negative x).
LATERAL_LOBE_CENTERS: dict[str, tuple[float, float]] = {
    "RUL": (-0.05, -0.35),
    "LUL": (-0.10, -0.30),
    "RML": (-0.35, 0.22),
    "RLL": (0.32, 0.32),
    "LLL": (0.35, 0.36),
}
HEART_HALF_WIDTH = {None: 0.28, "mild": 0.37, "moderate": 0.42, "severe": 0.47}
EFFUSION_LEVEL = {"small": 0.42, "moderate": 0.26, "large": 0.02}
PNEUMOTHORAX_SHRINK = {"small": 0.90, "moderate": 0.78, "large": 0.62}
EDEMA_STRENGTH = {"mild": 0.4, "moderate": 0.55, "severe": 0.75}
MM_PER_UNIT = 200.0  # one grid unit ~ 20 cm of patient


# --- primitives ----------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form cannot overflow for large |z|.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _ellipse_radius(x, y, cx, cy, rx, ry) -> np.ndarray:
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)


def _ellipse(x, y, cx, cy, rx, ry, edge) -> np.ndarray:
    """Soft-edged filled ellipse in [0, 1]; `edge` is the blur in normalised radius units."""
    return _sigmoid((1.0 - _ellipse_radius(x, y, cx, cy, rx, ry)) / edge)


def _box(x, y, cx, cy, hx, hy, edge) -> np.ndarray:
    return _sigmoid((hx - np.abs(x - cx)) / edge) * _sigmoid((hy - np.abs(y - cy)) / edge)


def _draw_polyline(
    canvas: np.ndarray, g: Grid, points, width: float, amp: float, combine=np.add
) -> None:
    """Draw a thin curve through `points` into `canvas` in place (Gaussian profile of the
    distance to the path), touching only the pixels near the path to keep it cheap."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    margin = 3.0 * width
    rs, cs = g.window(min(xs) - margin, max(xs) + margin, min(ys) - margin, max(ys) + margin)
    x, y = g.x[rs, cs], g.y[rs, cs]
    if x.size == 0:
        return
    dist = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in pairwise(points):
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(x - x0 - t * vx, y - y0 - t * vy))
    band = amp * np.exp(-((dist / width) ** 2))
    canvas[rs, cs] = combine(canvas[rs, cs], band)


def smooth_noise(rng: np.random.Generator, rows: int, cols: int, cells: int) -> np.ndarray:
    """Low-frequency noise (about N(0, 1)): a coarse random grid upsampled with smoothstep."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.linspace(0.0, cells, n, dtype=np.float32)
        idx = np.minimum(pos.astype(np.int64), cells - 1)
        frac = pos - idx
        return idx, frac * frac * (3.0 - 2.0 * frac)

    iy, fy = axis(rows)
    ix, fx = axis(cols)
    top = coarse[iy][:, ix] * (1 - fx) + coarse[iy][:, ix + 1] * fx
    bottom = coarse[iy + 1][:, ix] * (1 - fx) + coarse[iy + 1][:, ix + 1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@dataclass(frozen=True)
class Grid:
    """Jittered normalised coordinates of every pixel, and the jitter to invert them."""

    x: np.ndarray  # rows x cols
    y: np.ndarray
    px: float  # one pixel in normalised units
    unit: float
    dx: float
    dy: float
    zoom: float
    cos: float
    sin: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel rows/cols covering the normalised box [x0, x1] x [y0, y1]."""
        rows, cols = self.shape
        corners = np.array([(x0, y0), (x0, y1), (x1, y0), (x1, y1)], dtype=np.float64)
        gx, gy = corners[:, 0], corners[:, 1]
        # Invert the grid transform: image coordinates of the box corners.
        ix = self.dx + self.zoom * (gx * self.cos - gy * self.sin)
        iy = self.dy + self.zoom * (gx * self.sin + gy * self.cos)
        col = ix * self.unit + (cols - 1) / 2.0
        row = iy * self.unit + (rows - 1) / 2.0
        c0, c1 = (
            int(np.clip(np.floor(col.min()), 0, cols)),
            int(np.clip(np.ceil(col.max()) + 1, 0, cols)),
        )
        r0, r1 = (
            int(np.clip(np.floor(row.min()), 0, rows)),
            int(np.clip(np.ceil(row.max()) + 1, 0, rows)),
        )
        return slice(r0, r1), slice(c0, c1)


def _grid(rows: int, cols: int, rng: np.random.Generator) -> Grid:
    """Normalised coordinates with a small random rotation, shift and zoom."""
    unit = (min(rows, cols) - 1) / 2.0
    y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) / unit)[:, None]
    x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) / unit)[None, :]
    theta = rng.uniform(-0.07, 0.07)  # about +-4 degrees of patient rotation
    dx, dy = rng.uniform(-0.05, 0.05, size=2)
    zoom = rng.uniform(0.94, 1.05)
    c, s = float(np.cos(theta)), float(np.sin(theta))
    xs, ys = x - np.float32(dx), y - np.float32(dy)
    gx = ((xs * np.float32(c) + ys * np.float32(s)) / np.float32(zoom)).astype(np.float32)
    gy = ((-xs * np.float32(s) + ys * np.float32(c)) / np.float32(zoom)).astype(np.float32)
    return Grid(gx, gy, 1.0 / (unit * zoom), unit, float(dx), float(dy), float(zoom), c, s)


def _blob(x, y, cx, cy, sigma, texture) -> np.ndarray:
    """Blotchy opacity: a Gaussian patch broken up by texture."""
    g = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma)))
    return np.clip(g * (0.45 + 0.55 * texture) * 1.5, 0.0, 1.0)


# --- frontal view --------------------------------------------------------------------------


def _frontal(f: StudyFindings, g: Grid, rng: np.random.Generator, ap: bool) -> np.ndarray:
    x, y, px = g.x, g.y, g.px
    shape = rows, cols = g.shape
    line_w = max(0.012, 1.1 * px)

    body = np.maximum(
        _ellipse(x, y, 0.0, 0.25, 0.95, 1.15, 0.03), _ellipse(x, y, 0.0, -0.60, 1.08, 0.32, 0.04)
    )
    body = np.maximum(body, _ellipse(x, y, 0.0, -1.0, 0.24, 0.40, 0.04))
    img = 0.03 + 0.40 * body

    # Heart: wider with cardiomegaly and magnified on AP films; it grows mostly to the left.
    hrx = HEART_HALF_WIDTH[f.cardiomegaly] * (1.08 if ap else 1.0) * rng.uniform(0.96, 1.04)
    hcx = 0.06 + 0.45 * (hrx - 0.28)
    heart = _ellipse(x, y, hcx, 0.30, hrx, 0.25, 0.05) * _sigmoid((0.50 - y) / 0.03)
    width = 0.09 + 0.03 * np.clip(y + 0.9, 0, None)
    medi = _sigmoid((width - np.abs(x - 0.01)) / 0.015) * _sigmoid((0.35 - y) / 0.04) * (y > -1.2)
    img = img + 0.20 * heart + 0.18 * medi * (1 - heart)
    img = img + 0.12 * _ellipse(x, y, 0.11, -0.36, 0.07, 0.06, 0.1)  # aortic knob

    # Lungs per side (-1 = patient right on image left), cut by the diaphragm domes.
    texture = 0.5 + 0.5 * np.tanh(smooth_noise(rng, rows, cols, 12))
    air = np.zeros(shape, dtype=np.float32)
    lung_total = np.zeros(shape, dtype=np.float32)
    vessels = np.zeros(shape, dtype=np.float32)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cx = sign * 0.36
        rx = 0.30 if side == "right" else 0.28
        apex = (0.33 if side == "right" else 0.38) + rng.uniform(-0.03, 0.03)
        dome = apex + 0.28 * ((x - sign * 0.33) / 0.30) ** 2
        hemi = _ellipse(x, y, cx, 0.20, rx, 0.88, 0.04)  # hemithorax, no diaphragm cut
        lung = hemi * _sigmoid((dome - y) / 0.02)
        lung_air = lung.copy()

        # Vessels: tapering rays from the hilum, fading towards the periphery.
        hx, hy = sign * 0.20, 0.0
        rays = np.zeros(shape, dtype=np.float32)
        for angle in rng.uniform(-np.pi * 0.95, np.pi * 0.55, size=7):
            a = angle if sign > 0 else np.pi - angle
            length = rng.uniform(0.30, 0.55)
            end = (hx + length * np.cos(a), hy + length * np.sin(a))
            _draw_polyline(rays, g, [(hx, hy), end], max(0.018, 1.2 * px), 1.0, combine=np.maximum)
        falloff = np.exp(-np.hypot(x - hx, y - hy) / 0.35)
        vess = (0.5 * rays + 0.5 * texture) * falloff * lung

        # Pleural effusion: a meniscus of fluid filling the base, higher laterally.
        sev = f.effusion_right if side == "right" else f.effusion_left
        if sev:
            lateral = np.clip((np.abs(x) - 0.2) / 0.45, 0, 1)
            meniscus = EFFUSION_LEVEL[sev] - (0.12 if sev == "small" else 0.18) * lateral
            fill = _sigmoid((y - meniscus) / 0.03) * hemi
            lung_air = lung_air * (1 - 0.95 * fill)
            vess = vess * (1 - fill)
            img = img + 0.06 * fill

        # Pneumothorax: the lung collapses towards the hilum leaving a dark, vessel-free rim
        # bounded by a thin visceral pleural line.
        sev = f.pneumothorax_right if side == "right" else f.pneumothorax_left
        if sev:
            k = PNEUMOTHORAX_SHRINK[sev]
            ccx, ccy = cx + (hx - cx) * (1 - k) * 0.6, 0.20 + (hy - 0.20) * (1 - k) + (1 - k) * 0.3
            r = _ellipse_radius(x, y, ccx, ccy, rx * k, 0.88 * k)
            collapsed = _sigmoid((1.0 - r) / 0.02)
            rim = lung * (1 - collapsed)
            vess = vess * collapsed
            img = img - 0.10 * rim
            img = img + 0.12 * np.exp(-(((r - 1.0) * rx * k / line_w) ** 2)) * lung

        air += lung_air
        lung_total += lung
        vessels += vess

    # Consolidation: blotchy opacity replacing air in the named lobe.
    if f.consolidation_lobe:
        cx, cy = LOBE_CENTERS[f.consolidation_lobe]
        cx += rng.uniform(-0.04, 0.04)
        cy += rng.uniform(-0.04, 0.04)
        patch = _blob(x, y, cx, cy, 0.10 if f.consolidation_lobe == "RML" else 0.13, texture)
        patch = patch * lung_total
        air = air * (1 - 0.95 * patch)
        img = img + 0.08 * patch

    # Edema: bilateral perihilar haze with engorged vessels.
    if f.edema:
        s = EDEMA_STRENGTH[f.edema]
        haze = np.exp(-((np.abs(x) - 0.20) ** 2 + y**2) / (2 * 0.22**2))
        air = air * (1 - s * haze)
        vessels = vessels * (1 + s)

    hila = _ellipse(x, y, -0.20, 0.0, 0.07, 0.11, 0.3) + _ellipse(
        x, y, 0.20, -0.03, 0.07, 0.11, 0.3
    )
    img = img - 0.30 * air * (1 - 0.85 * heart) * (1 - medi) + 0.10 * vessels + 0.06 * hila

    # Bones: posterior ribs (arched bands), clavicles, spine.
    # Ribs are evenly spaced copies of one arched curve, so the distance to the nearest rib
    # is a modulo: one pass over the image instead of one per rib.
    u = np.clip((np.abs(x) - 0.08) / 0.62, 0, 1)
    v = y + 0.10 * np.sin(np.pi * u) - 0.18 * u * u + 0.70  # 0 on the top rib
    spacing = 0.125
    d = np.abs(np.mod(v + spacing / 2, spacing) - spacing / 2)
    in_cage = _sigmoid((v + 0.04) / 0.02) * _sigmoid((9.3 * spacing - v) / 0.02)
    ribs = (
        np.exp(-((d / 0.022) ** 2))
        * in_cage
        * _sigmoid((0.75 - np.abs(x)) / 0.03)
        * (np.abs(x) > 0.06)
    )
    img = img + 0.06 * ribs * body
    for sign in (-1.0, 1.0):
        pts = [
            (sign * 0.08, -0.70),
            (sign * 0.30, -0.73),
            (sign * 0.55, -0.82),
            (sign * 0.72, -0.86),
        ]
        _draw_polyline(img, g, pts, 0.028, 0.14)
    spine = _sigmoid((0.065 - np.abs(x)) / 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * y / 0.125))
    img = img + 0.08 * spine * body
    img = img - 0.12 * _sigmoid((0.03 - np.abs(x)) / 0.008) * _sigmoid(
        (-0.30 - y) / 0.02
    )  # trachea

    # Nodule: small round dense spot.
    if f.nodule_lobe:
        cx, cy = LOBE_CENTERS[f.nodule_lobe]
        radius = max(f.nodule_mm / 2.0 / MM_PER_UNIT, 1.2 * px)
        img = img + 0.22 * _ellipse(
            x, y, cx + rng.uniform(-0.06, 0.06), cy + rng.uniform(-0.06, 0.06), radius, radius, 0.25
        )

    img = img.astype(np.float32)
    _draw_frontal_devices(img, f.devices, g, line_w)
    return img


def _draw_frontal_devices(
    img: np.ndarray, devices: tuple[str, ...], g: Grid, line_w: float
) -> None:
    if "ett" in devices:
        _draw_polyline(img, g, [(0.0, -1.2), (0.0, -0.60), (0.01, -0.36)], line_w * 1.3, 0.40)
    if "ng" in devices:
        pts = [(-0.03, -1.2), (-0.03, -0.40), (0.02, 0.30), (0.20, 0.58), (0.34, 0.55)]
        _draw_polyline(img, g, pts, line_w, 0.35)
    if "line" in devices:
        pts = [(-1.2, -0.46), (-0.75, -0.60), (-0.35, -0.58), (-0.12, -0.45), (-0.06, -0.20)]
        _draw_polyline(img, g, pts, line_w, 0.35)
    if "pacemaker" in devices:
        img += 0.70 * _box(g.x, g.y, 0.55, -0.55, 0.09, 0.06, 0.01)
        pts = [
            (0.48, -0.52),
            (0.25, -0.50),
            (0.05, -0.35),
            (-0.04, -0.05),
            (0.02, 0.25),
            (0.12, 0.34),
        ]
        _draw_polyline(img, g, pts, line_w, 0.35)


# --- lateral view --------------------------------------------------------------------------


def _lateral(f: StudyFindings, g: Grid, rng: np.random.Generator) -> np.ndarray:
    """Simpler lateral phantom (anterior to the image left); shows heart size and effusions."""
    x, y, px = g.x, g.y, g.px
    rows, cols = g.shape
    line_w = max(0.012, 1.1 * px)
    body = _ellipse(x, y, 0.0, 0.15, 0.80, 1.20, 0.03)
    img = 0.03 + 0.42 * body

    dome = 0.35 + 0.25 * ((x + 0.10) / 0.65) ** 2
    hemi = _ellipse(x, y, 0.02, 0.05, 0.58, 0.75, 0.04)
    lung = hemi * _sigmoid((dome - y) / 0.02)
    air = lung.copy()
    texture = 0.5 + 0.5 * np.tanh(smooth_noise(rng, rows, cols, 12))

    hrx = HEART_HALF_WIDTH[f.cardiomegaly] * rng.uniform(0.96, 1.04)
    heart = _ellipse(x, y, -0.25 + 0.6 * (hrx - 0.28), 0.24, hrx, 0.28, 0.05) * _sigmoid(
        (0.55 - y) / 0.03
    )
    img = img + 0.18 * heart

    # Effusions collect in the posterior costophrenic sulcus; both sides project together.
    severities = [s for s in (f.effusion_left, f.effusion_right) if s]
    if severities:
        worst = max(severities, key=("small", "moderate", "large").index)
        level = EFFUSION_LEVEL[worst] + 0.05 - 0.05 * (len(severities) - 1)
        meniscus = level - 0.20 * np.clip(x / 0.6, 0, 1)
        fill = _sigmoid((y - meniscus) / 0.03) * hemi
        air = air * (1 - 0.95 * fill)
        img = img + 0.06 * fill
    if f.consolidation_lobe:
        cx, cy = LATERAL_LOBE_CENTERS[f.consolidation_lobe]
        patch = _blob(x, y, cx, cy, 0.13, texture) * lung
        air = air * (1 - 0.8 * patch)
    if f.edema:
        haze = np.exp(-((x - 0.05) ** 2 + (y + 0.05) ** 2) / (2 * 0.25**2))
        air = air * (1 - EDEMA_STRENGTH[f.edema] * haze)

    img = img - 0.28 * air * (1 - 0.8 * heart) + 0.05 * texture * lung
    spine_band = _box(x, y, 0.66, 0.10, 0.10, 1.3, 0.015)
    img = img + 0.16 * spine_band * (0.7 + 0.3 * (np.cos(2 * np.pi * y / 0.14) > -0.6))
    img = img + 0.10 * _box(x, y, -0.68, -0.12, 0.02, 0.42, 0.01)  # sternum
    img = img.astype(np.float32)
    _draw_polyline(img, g, [(-0.06, -1.2), (0.06, -0.28)], 0.035, -0.12)  # trachea
    for y0 in np.arange(-0.6, 0.5, 0.14):
        _draw_polyline(img, g, [(0.1, y0), (0.7, y0 - 0.12)], 0.02, 0.04)  # ribs

    if f.nodule_lobe:
        cx, cy = LATERAL_LOBE_CENTERS[f.nodule_lobe]
        radius = max(f.nodule_mm / 2.0 / MM_PER_UNIT, 1.2 * px)
        img = img + 0.15 * _ellipse(x, y, cx, cy, radius, radius, 0.25)
    if "ett" in f.devices:
        _draw_polyline(img, g, [(-0.08, -1.2), (0.02, -0.40)], line_w * 1.3, 0.35)
    if "ng" in f.devices:
        _draw_polyline(img, g, [(0.02, -1.2), (0.25, 0.0), (0.10, 0.60)], line_w, 0.30)
    if "line" in f.devices:
        _draw_polyline(img, g, [(0.05, -0.70), (-0.05, -0.45), (-0.08, -0.15)], line_w, 0.30)
    if "pacemaker" in f.devices:
        img += 0.6 * _box(x, y, -0.55, -0.55, 0.04, 0.07, 0.01)
        _draw_polyline(img, g, [(-0.52, -0.50), (-0.2, -0.3), (-0.25, 0.25)], line_w, 0.30)
    return img


# --- public entry point --------------------------------------------------------------------


def render_view(
    findings: StudyFindings, view: str, rows: int, cols: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw one view (PA, AP or LAT) of a study as float32 in [0, 1], bright = dense.

    Exposure, contrast (gamma), a smooth exposure gradient and quantum-like noise vary per
    image, like real acquisitions do.
    """
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is unknown; expected one of {VIEWS}")
    if rows < 16 or cols < 16:
        raise ValueError(f"image size {rows}x{cols} is too small; need at least 16 pixels per side")
    grid = _grid(rows, cols, rng)
    if view == "LAT":
        img = _lateral(findings, grid, rng)
    else:
        img = _frontal(findings, grid, rng, ap=view == "AP")
    img = np.clip(img, 0.0, 1.0)

    gamma = rng.uniform(0.8, 1.25)
    contrast = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.05, 0.05)
    img = np.clip((img**gamma - 0.4) * contrast + 0.4 + offset, 0.0, 1.0)
    img = img + 0.04 * smooth_noise(rng, rows, cols, 3)  # heel effect / uneven exposure
    sigma = rng.uniform(0.008, 0.025)
    img = img + sigma * rng.standard_normal((rows, cols), dtype=np.float32) * (0.5 + img)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
