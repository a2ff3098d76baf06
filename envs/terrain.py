"""Procedural terrain: pure generators `(rng, difficulty, grid) -> heights in metres`.

Every generator is a pure function of its arguments: all randomness comes from the `rng` the
caller seeded (a `Task`'s own terrain seed), so the same task always yields the same ground.
`generate()` runs a generator and then flattens the spawn area, so no episode starts inside
the ground. Planar robots get a grid of a few rows whose profile varies along x only.

How difficulty d in [0, 1] scales each kind (the number each kind's `measure` reports):

| kind        | what d scales                                   | at d = 0      | at d = 1        |
|-------------|-------------------------------------------------|---------------|-----------------|
| flat        | nothing                                         | flat          | flat            |
| slope_up    | ramp angle (grade = tan angle)                  | 0 deg         | 20 deg          |
| slope_down  | ramp angle, descending                          | 0 deg         | 20 deg          |
| stairs_up   | riser height (tread 0.5 m)                      | 0.02 m        | 0.17 m          |
| stairs_down | riser height, descending (tread 0.5 m)          | 0.02 m        | 0.17 m          |
| rough       | standard deviation of fractal noise             | 0.01 m        | 0.10 m          |
| hills       | peak height of smooth bumps (width ~1.5-3 m)    | 0.05 m        | 0.60 m          |
| gaps        | pit width along the direction of travel (1 m deep) | 0.05 m     | 0.50 m          |
| obstacles   | height of discrete blocks (0.2-0.8 m long)      | 0.02 m        | 0.20 m          |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Terrain heights are clipped to [-HEIGHT_LIMIT, HEIGHT_LIMIT] metres (the heightfield's range).
HEIGHT_LIMIT = 10.0
#: Depth of a pit below its surroundings, in metres.
PIT_DEPTH = 1.0
#: Length of a stair tread along the direction of travel, in metres.
STAIR_TREAD = 0.5


@dataclass(frozen=True)
class TerrainGrid:
    """Where the heightfield lies and how finely it is sampled.

    Column c lies at x = x_start + c * cell, row r at y = -half_width + r * (2 half_width / (nrow - 1)).

    Args:
        x_start: x of the first column, in metres (behind the spawn point at x = 0).
        length: extent along x, in metres.
        half_width: half the extent along y, in metres.
        cell: grid spacing along x (and along y for 2-D terrain), in metres.
        planar: the profile varies along x only (planar robots); then the grid has 3 rows.
        spawn_radius: the square |x|, |y| <= spawn_radius around the origin is flat at height 0.
    """

    x_start: float = -5.0
    length: float = 70.0
    half_width: float = 1.0
    cell: float = 0.05
    planar: bool = True
    spawn_radius: float = 1.5

    @cached_property
    def ncol(self) -> int:
        """Number of columns (samples along x)."""
        return int(round(self.length / self.cell)) + 1

    @cached_property
    def nrow(self) -> int:
        """Number of rows (samples along y)."""
        return 3 if self.planar else int(round(2 * self.half_width / self.cell)) + 1

    @cached_property
    def x(self) -> np.ndarray:
        """x coordinate of every column, in metres."""
        return self.x_start + self.cell * np.arange(self.ncol)

    @cached_property
    def y(self) -> np.ndarray:
        """y coordinate of every row, in metres."""
        return np.linspace(-self.half_width, self.half_width, self.nrow)

    @property
    def x_end(self) -> float:
        """x of the last column, in metres."""
        return self.x_start + self.cell * (self.ncol - 1)

    def course_mask(self) -> np.ndarray:
        """Boolean [nrow, ncol]: True outside the spawn area (where terrain features lie)."""
        inside_x = np.abs(self.x)[None, :] <= self.spawn_radius
        inside_y = np.ones((self.nrow, 1), bool) if self.planar else np.abs(self.y)[:, None] <= self.spawn_radius
        return ~(inside_x & inside_y)


Generator = Callable[[np.random.Generator, float, TerrainGrid], np.ndarray]
Measure = Callable[[np.ndarray, TerrainGrid], float]


@dataclass(frozen=True)
class TerrainKind:
    """A registered terrain: its generator and the measure its difficulty scales."""

    name: str
    generate: Generator
    measure: Measure
    measure_name: str


_REGISTRY: dict[str, TerrainKind] = {}


def register_terrain(name: str, measure: Measure, measure_name: str) -> Callable[[Generator], Generator]:
    """Decorator adding a generator to the registry under `name`."""

    def wrap(fn: Generator) -> Generator:
        _REGISTRY[name] = TerrainKind(name, fn, measure, measure_name)
        return fn

    return wrap


def terrain_kinds() -> tuple[str, ...]:
    """Names of every registered terrain kind."""
    return tuple(_REGISTRY)


def get_terrain(kind: str) -> TerrainKind:
    """The registered terrain `kind`, or a ValueError naming the allowed kinds."""
    if kind not in _REGISTRY:
        raise ValueError(f"terrain.kind must be one of {sorted(_REGISTRY)}, got {kind!r}")
    return _REGISTRY[kind]


def generate(kind: str, rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Heights [nrow, ncol] in metres of terrain `kind`, with the spawn area flattened to 0."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"terrain.difficulty must be in [0, 1], got {difficulty!r}")
    heights = np.asarray(get_terrain(kind).generate(rng, float(difficulty), grid), dtype=np.float64)
    heights = np.broadcast_to(heights, (grid.nrow, grid.ncol)).copy()
    heights *= _spawn_blend(grid)
    return np.clip(heights, -HEIGHT_LIMIT, HEIGHT_LIMIT)


def _spawn_blend(grid: TerrainGrid, ramp: float = 0.5) -> np.ndarray:
    """0 inside the spawn square, rising linearly to 1 over `ramp` metres outside it."""
    dx = np.clip((np.abs(grid.x) - grid.spawn_radius) / ramp, 0.0, 1.0)
    if grid.planar:
        return np.broadcast_to(dx, (grid.nrow, grid.ncol))
    dy = np.clip((np.abs(grid.y) - grid.spawn_radius) / ramp, 0.0, 1.0)
    return np.maximum(dx[None, :], dy[:, None])


def _ahead(grid: TerrainGrid) -> np.ndarray:
    """Distance travelled past the spawn area along +x for each column (0 before it), metres."""
    return np.maximum(grid.x - grid.spawn_radius, 0.0)


def _value_noise(rng: np.random.Generator, grid: TerrainGrid, wavelength: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features `wavelength` metres apart ([nrow or 1, ncol])."""
    nx = int(np.ceil((grid.x_end - grid.x_start) / wavelength)) + 2
    tx = (grid.x - grid.x_start) / wavelength
    ix = np.minimum(tx.astype(int), nx - 2)
    fx = tx - ix
    fx = fx * fx * (3 - 2 * fx)  # smoothstep: continuous slope at lattice points
    if grid.planar:
        lattice = rng.uniform(-1, 1, nx)
        return (lattice[ix] * (1 - fx) + lattice[ix + 1] * fx)[None, :]
    ny = int(np.ceil(2 * grid.half_width / wavelength)) + 2
    ty = (grid.y + grid.half_width) / wavelength
    iy = np.minimum(ty.astype(int), ny - 2)
    fy = ty - iy
    fy = (fy * fy * (3 - 2 * fy))[:, None]
    lattice = rng.uniform(-1, 1, (ny, nx))
    top = lattice[iy][:, ix] * (1 - fx) + lattice[iy][:, ix + 1] * fx
    bottom = lattice[iy + 1][:, ix] * (1 - fx) + lattice[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


# --- measures: the number each kind's difficulty scales -------------------------------------


def _grade(heights: np.ndarray, grid: TerrainGrid) -> float:
    """Median |dh/dx| over the first 10 m past the spawn area (before any plateau)."""
    grade = np.abs(np.diff(heights, axis=1)) / grid.cell
    ahead = _ahead(grid)[1:]
    return float(np.median(grade[:, (ahead > 1.0) & (ahead <= 10.0)]))


def _max_step(heights: np.ndarray, grid: TerrainGrid) -> float:
    """Largest height change between neighbouring cells along x (a riser or block edge)."""
    return float(np.max(np.abs(np.diff(heights, axis=1))))


def _course_std(heights: np.ndarray, grid: TerrainGrid) -> float:
    """Standard deviation of heights outside the spawn area."""
    return float(np.std(heights[grid.course_mask()]))


def _peak_height(heights: np.ndarray, grid: TerrainGrid) -> float:
    """Highest point of the terrain."""
    return float(np.max(heights))


def _widest_pit(heights: np.ndarray, grid: TerrainGrid) -> float:
    """Widest run of pit cells along x (metres), over all rows."""
    widest = 0
    for row in heights < -0.5 * PIT_DEPTH:
        run = 0
        for cell_in_pit in row:
            run = run + 1 if cell_in_pit else 0
            widest = max(widest, run)
    return widest * grid.cell


# --- generators ------------------------------------------------------------------------------


@register_terrain("flat", _course_std, "height std (m)")
def flat(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Flat ground at height 0, whatever the difficulty."""
    return np.zeros((grid.nrow, grid.ncol))


def _slope(difficulty: float, grid: TerrainGrid, sign: float) -> np.ndarray:
    angle = np.deg2rad(20.0) * difficulty
    return sign * np.tan(angle) * _ahead(grid)[None, :]


@register_terrain("slope_up", _grade, "grade (tan of ramp angle)")
def slope_up(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """A ramp rising along +x at up to 20 degrees."""
    return _slope(difficulty, grid, +1.0)


@register_terrain("slope_down", _grade, "grade (tan of ramp angle)")
def slope_down(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """A ramp falling along +x at up to 20 degrees."""
    return _slope(difficulty, grid, -1.0)


def _stairs(difficulty: float, grid: TerrainGrid, sign: float) -> np.ndarray:
    riser = 0.02 + 0.15 * difficulty
    steps = np.ceil(_ahead(grid) / STAIR_TREAD)
    return sign * riser * steps[None, :]


@register_terrain("stairs_up", _max_step, "riser height (m)")
def stairs_up(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Stairs climbing along +x: 0.5 m treads, risers of 0.02-0.17 m."""
    return _stairs(difficulty, grid, +1.0)


@register_terrain("stairs_down", _max_step, "riser height (m)")
def stairs_down(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Stairs descending along +x: 0.5 m treads, risers of 0.02-0.17 m."""
    return _stairs(difficulty, grid, -1.0)


@register_terrain("rough", _course_std, "height std (m)")
def rough(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Fractal noise (four octaves, 1.6 m down to 0.2 m) with std 0.01-0.10 m."""
    noise = sum(0.5**octave * _value_noise(rng, grid, 1.6 / 2**octave) for octave in range(4))
    noise = noise - noise.mean()
    target_std = 0.01 + 0.09 * difficulty
    return noise * (target_std / max(float(noise.std()), 1e-9))


@register_terrain("hills", _peak_height, "peak height (m)")
def hills(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Smooth Gaussian bumps every 2-5 m, up to 0.05-0.60 m high."""
    peak = 0.05 + 0.55 * difficulty
    heights = np.zeros((1 if grid.planar else grid.nrow, grid.ncol))
    x = grid.spawn_radius + rng.uniform(1.0, 3.0)
    while x < grid.x_end:
        width = rng.uniform(0.75, 1.5)
        bump_x = np.exp(-0.5 * ((grid.x - x) / width) ** 2)[None, :]
        if grid.planar:
            bump = bump_x
        else:
            centre_y = rng.uniform(-grid.half_width, grid.half_width)
            bump = bump_x * np.exp(-0.5 * ((grid.y - centre_y) / (2 * width)) ** 2)[:, None]
        heights = np.maximum(heights, rng.uniform(0.5, 1.0) * peak * bump)
        x += rng.uniform(2.0, 5.0)
    return heights


@register_terrain("gaps", _widest_pit, "widest pit (m)")
def gaps(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Pits 1 m deep across the whole width, 0.05-0.50 m wide, every 1.5-3 m."""
    width = 0.05 + 0.45 * difficulty
    heights = np.zeros((1, grid.ncol))
    x = grid.spawn_radius + rng.uniform(0.5, 1.5)
    while x + width < grid.x_end:
        heights[0, (grid.x >= x) & (grid.x < x + width)] = -PIT_DEPTH
        x += width + rng.uniform(1.5, 3.0)
    return heights


@register_terrain("obstacles", _max_step, "block height (m)")
def obstacles(rng: np.random.Generator, difficulty: float, grid: TerrainGrid) -> np.ndarray:
    """Discrete blocks 0.2-0.8 m long, 0.02-0.20 m high, every 1-2.5 m (patches in 2-D)."""
    top = 0.02 + 0.18 * difficulty
    heights = np.zeros((1 if grid.planar else grid.nrow, grid.ncol))
    x = grid.spawn_radius + rng.uniform(0.5, 1.5)
    while x < grid.x_end:
        length = rng.uniform(0.2, 0.8)
        height = rng.uniform(0.5, 1.0) * top
        in_x = (grid.x >= x) & (grid.x < x + length)
        if grid.planar:
            heights[0, in_x] = height
        else:
            centre_y = rng.uniform(-grid.half_width, grid.half_width)
            in_y = np.abs(grid.y - centre_y) < rng.uniform(0.3, 1.5)
            heights[np.ix_(in_y, in_x)] = height
        x += length + rng.uniform(1.0, 2.5)
    return heights


def heights_at(heights: np.ndarray, grid: TerrainGrid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Terrain heights [B, K] at points x, y [B, K], each row on its own terrain [B, nrow, ncol].

    Bilinear between grid points, clamped to the grid. Along x this is exactly MuJoCo's
    heightfield surface; across both axes it differs from MuJoCo's two triangles per cell by at
    most the cell's own height variation.
    """
    batch = np.arange(heights.shape[0])[:, None]
    fx = np.clip((x - grid.x_start) / grid.cell, 0.0, grid.ncol - 1.000001)
    ix = fx.astype(np.intp)
    tx = fx - ix
    if grid.planar:
        row = heights[:, 0, :]
        return row[batch, ix] * (1 - tx) + row[batch, ix + 1] * tx
    fy = np.clip((y + grid.half_width) / (2 * grid.half_width) * (grid.nrow - 1), 0.0, grid.nrow - 1.000001)
    iy = fy.astype(np.intp)
    ty = fy - iy
    low = heights[batch, iy, ix] * (1 - tx) + heights[batch, iy, ix + 1] * tx
    high = heights[batch, iy + 1, ix] * (1 - tx) + heights[batch, iy + 1, ix + 1] * tx
    return low * (1 - ty) + high * ty
