"""Terrain generators: finite, flat spawn, difficulty scales each kind's own measure."""

import numpy as np
import pytest

from envs.robots import ROBOTS
from envs.terrain import TerrainGrid, generate, get_terrain, heights_at, terrain_kinds

PLANAR = ROBOTS["cheetah"].grid
GRID_2D = ROBOTS["quadruped"].grid


@pytest.mark.parametrize("grid", [PLANAR, GRID_2D], ids=["planar", "2d"])
@pytest.mark.parametrize("kind", terrain_kinds())
def test_heights_finite_and_spawn_flat(kind: str, grid: TerrainGrid) -> None:
    for difficulty in (0.0, 0.5, 1.0):
        heights = generate(kind, np.random.default_rng(3), difficulty, grid)
        assert heights.shape == (grid.nrow, grid.ncol)
        assert np.isfinite(heights).all()
        spawn = ~grid.course_mask()
        assert np.all(heights[spawn] == 0.0), "the spawn area must be flat at height 0"


@pytest.mark.parametrize("grid", [PLANAR, GRID_2D], ids=["planar", "2d"])
@pytest.mark.parametrize("kind", [k for k in terrain_kinds() if k != "flat"])
def test_difficulty_scales_the_kinds_own_measure(kind: str, grid: TerrainGrid) -> None:
    measure = get_terrain(kind).measure
    easy = [measure(generate(kind, np.random.default_rng(s), 0.0, grid), grid) for s in range(3)]
    hard = [measure(generate(kind, np.random.default_rng(s), 1.0, grid), grid) for s in range(3)]
    assert max(easy) < min(hard), f"{kind}: {get_terrain(kind).measure_name} {easy} vs {hard}"


def test_flat_is_flat_and_planar_profile_is_constant_across_y() -> None:
    assert not generate("flat", np.random.default_rng(0), 1.0, PLANAR).any()
    rough = generate("rough", np.random.default_rng(0), 1.0, PLANAR)
    assert np.all(rough == rough[0])
    rough_2d = generate("rough", np.random.default_rng(0), 1.0, GRID_2D)
    assert np.std(rough_2d[:, 200] - rough_2d[:, 200].mean()) > 0.0, "2-D terrain varies along y"


def test_same_seed_same_terrain_and_different_seed_differs() -> None:
    a = generate("rough", np.random.default_rng(7), 0.5, GRID_2D)
    b = generate("rough", np.random.default_rng(7), 0.5, GRID_2D)
    c = generate("rough", np.random.default_rng(8), 0.5, GRID_2D)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_documented_numbers() -> None:
    grade = get_terrain("slope_up").measure(generate("slope_up", np.random.default_rng(0), 1.0, PLANAR), PLANAR)
    assert grade == pytest.approx(np.tan(np.deg2rad(20.0)), rel=1e-6)
    riser = get_terrain("stairs_up").measure(generate("stairs_up", np.random.default_rng(0), 0.5, PLANAR), PLANAR)
    assert riser == pytest.approx(0.02 + 0.15 * 0.5)


def test_heights_at_interpolates_the_grid() -> None:
    heights = generate("slope_up", np.random.default_rng(0), 1.0, PLANAR)
    x = np.array([5.0, 5.025, 7.3])
    expected = np.tan(np.deg2rad(20.0)) * (x - PLANAR.spawn_radius)
    assert np.allclose(heights_at(heights[None], PLANAR, x[None], np.zeros((1, 3)))[0], expected, atol=1e-9)


def test_heights_at_reads_each_rows_own_terrain_in_2d() -> None:
    a = generate("rough", np.random.default_rng(0), 1.0, GRID_2D)
    b = generate("hills", np.random.default_rng(1), 1.0, GRID_2D)
    ix, iy = 300, 40  # a grid point: the interpolation must return the stored value
    x, y = GRID_2D.x[ix], GRID_2D.y[iy]
    points = heights_at(np.stack([a, b]), GRID_2D, np.full((2, 1), x), np.full((2, 1), y))[:, 0]
    assert np.allclose(points, [a[iy, ix], b[iy, ix]])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_difficulty_out_of_range_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate("rough", np.random.default_rng(0), bad, PLANAR)


def test_unknown_kind_names_the_allowed_kinds() -> None:
    with pytest.raises(ValueError, match="terrain.kind must be one of"):
        generate("lava", np.random.default_rng(0), 0.5, PLANAR)
