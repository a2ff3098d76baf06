"""Robot registry: each robot's MJCF asset, timing, terrain grid, observation and health rules."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from envs.terrain import TerrainGrid


def _project_assets() -> Path:
    """assets/ beside the packages (a source checkout or an editable install), else the copy a wheel
    installs as the package `metaloco_assets`: found through the package, never the cwd."""
    beside = Path(__file__).resolve().parent.parent / "assets"
    if (beside / "robots").is_dir():
        return beside
    spec = importlib.util.find_spec("metaloco_assets")  # a namespace package: folders, no __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("MetaLoco's assets are missing: reinstall the package (pip install metaloco)")
    return Path(next(iter(spec.submodule_search_locations)))


#: The project's assets: robots, configs, shipped checkpoints and results.
PROJECT_ASSETS = _project_assets()
ASSETS = PROJECT_ASSETS / "robots"


@dataclass(frozen=True)
class RobotSpec:
    """Everything the locomotion env needs to know about one robot.

    Args:
        name: registry key.
        xml: MJCF file (no ground: the env adds the terrain heightfield).
        frame_skip: physics steps per env step.
        planar: the root moves in the x-z plane (joints rootx, rootz, rooty) instead of freely.
        grid: the terrain grid this robot walks on.
        scan_x: x offsets (metres, in the heading frame) of the height-scan points.
        scan_y: y offsets of the height-scan points (ignored for planar robots).
        ctrl_cost_weight: weight of the squared-action penalty.
        healthy_reward: reward per step while healthy (0 for robots that cannot fall).
        healthy_z: allowed torso height above the ground under it, or None (cannot fall).
        max_tilt: largest allowed torso tilt from upright in radians, or None.
        reset_noise: half-width of the uniform noise on joint positions at reset.
        reset_vel_noise: standard deviation of the normal noise on velocities at reset.
        velocity_clip: observed joint velocities are clipped to +- this (keeps inputs bounded).
    """

    name: str
    xml: Path
    frame_skip: int
    planar: bool
    grid: TerrainGrid
    scan_x: tuple[float, ...]
    scan_y: tuple[float, ...] = (0.0,)
    ctrl_cost_weight: float = 0.1
    healthy_reward: float = 0.0
    healthy_z: tuple[float, float] | None = None
    max_tilt: float | None = None
    reset_noise: float = 0.1
    reset_vel_noise: float = 0.1
    velocity_clip: float = 50.0

    @property
    def n_scan(self) -> int:
        """Number of height-scan points."""
        return len(self.scan_x) * (1 if self.planar else len(self.scan_y))


# Terrain features lie ahead along +x; the ground behind the spawn is flat and long enough for
# backward tasks (direction pi) to run as far as forward ones.
_PLANAR_GRID = TerrainGrid(x_start=-45.0, length=110.0, half_width=1.0, cell=0.05, planar=True)
_SCAN_AHEAD = tuple(round(-0.4 + 0.2 * i, 2) for i in range(11))  # -0.4 m .. 1.6 m

ROBOTS: dict[str, RobotSpec] = {
    spec.name: spec
    for spec in (
        RobotSpec(
            name="cheetah",
            xml=ASSETS / "cheetah.xml",
            frame_skip=5,
            planar=True,
            grid=_PLANAR_GRID,
            scan_x=_SCAN_AHEAD,
            ctrl_cost_weight=0.1,
        ),
        RobotSpec(
            name="quadruped",
            xml=ASSETS / "quadruped.xml",
            frame_skip=5,
            planar=False,
            grid=TerrainGrid(x_start=-20.0, length=65.0, half_width=12.0, cell=0.1, planar=False),
            scan_x=(-0.4, 0.0, 0.4, 0.8, 1.2),
            scan_y=(-0.4, 0.0, 0.4),
            ctrl_cost_weight=0.5,
            healthy_reward=1.0,
            healthy_z=(0.22, 1.5),  # the torso sphere's radius is 0.2 m: lower means legs buckled
            max_tilt=1.2,  # about 70 degrees: on its side or upside down
        ),
        RobotSpec(
            name="walker",
            xml=ASSETS / "walker.xml",
            frame_skip=4,
            planar=True,
            grid=_PLANAR_GRID,
            scan_x=_SCAN_AHEAD,
            ctrl_cost_weight=1e-3,
            healthy_reward=1.0,
            healthy_z=(0.8, 2.0),
            max_tilt=1.0,
            reset_noise=5e-3,
            reset_vel_noise=5e-3,
        ),
    )
}


def get_robot(name: str) -> RobotSpec:
    """The robot `name`, or a ValueError naming the allowed robots."""
    if name not in ROBOTS:
        raise ValueError(f"robot must be one of {sorted(ROBOTS)}, got {name!r}")
    return ROBOTS[name]
