"""Rendering: frames from a tracking camera, headless (EGL), with the terrain kept current.

MuJoCo uploads heightfields to the GPU once, when the render context is made; a terrain
written into `model.hfield_data` later is invisible until it is uploaded again
(`mjr_uploadHField`). `FrameRenderer.upload_heightfield` does that after every task change.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Callable, Sequence
from pathlib import Path

import imageio
import mujoco  # MUJOCO_GL must be set before mujoco picks its GL backend
import numpy as np
from PIL import Image, ImageDraw, ImageFont


class FrameRenderer:
    """An offscreen renderer of one model that re-uploads its heightfields on request.

    Args:
        model: the compiled model (its heightfield data may change between frames).
        width: frame width in pixels.
        height: frame height in pixels.
    """

    def __init__(self, model: mujoco.MjModel, width: int, height: int) -> None:
        self.model = model
        self._renderer = mujoco.Renderer(model, height=height, width=width)

    def upload_heightfield(self) -> None:
        """Send every heightfield's current data to the GPU (after a terrain change)."""
        # mujoco.Renderer has no public hook for this; its context is the one to update.
        context = self._renderer._mjr_context
        if context is None:
            return
        self._renderer._gl_context.make_current()
        for hfield_id in range(self.model.nhfield):
            mujoco.mjr_uploadHField(self.model, context, hfield_id)

    def render(self, data: mujoco.MjData, camera: str | int = "track") -> np.ndarray:
        """An RGB frame [height, width, 3] uint8 of `data` seen from `camera`."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def close(self) -> None:
        """Release the GL context."""
        self._renderer.close()


def record_episode(
    env,
    act: Callable[[np.ndarray], np.ndarray],
    steps: int,
    seed: int = 0,
    label: str | None = None,
    on_frame: Callable[[], object] | None = None,
) -> tuple[list[np.ndarray], float]:
    """Run `act` (obs -> action) for up to `steps` steps and return (frames, total reward).

    `env` must have render_mode='rgb_array'. When `label` is given, each frame carries it and
    the running return in its top-left corner. `on_frame` is called after every frame (a
    progress bar's update).
    """
    obs, _ = env.reset(seed=seed)
    frames, total = [], 0.0
    for _ in range(steps):
        frame = env.render()
        frames.append(annotate(frame, f"{label}  return {total:7.1f}") if label else frame)
        if on_frame is not None:
            on_frame()
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward)
        if terminated or truncated:
            break
    return frames, total


def annotate(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of `frame` with `text` on a dark band at the top, in a font a sixteenth of the
    frame's height (at least 12 px), so it stays readable at the video's size."""
    image = Image.fromarray(frame)
    size = max(12, image.height // 16)
    font = _label_font(size)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, size + 8), fill=(0, 0, 0))
    draw.text((6, 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


@functools.lru_cache(maxsize=8)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The label font at `size` px, loaded once per size (annotate runs on every frame)."""
    return ImageFont.load_default(size=size)


def grid_shape(panels: int, max_columns: int = 4) -> tuple[int, int]:
    """(rows, columns) for `panels` panels: the fewest rows of at most `max_columns`, then the
    fewest columns that hold them (7 panels: 2 x 4, one cell empty; 6: 2 x 3; 3: 1 x 3)."""
    if panels < 1:
        raise ValueError(f"panels must be >= 1, got {panels}")
    rows = -(-panels // max_columns)
    return rows, -(-panels // rows)


#: What an empty cell of a grid shows: the sky's colour, not a black hole.
EMPTY_CELL = (40, 48, 64)


def tile(videos: Sequence[Sequence[np.ndarray]], columns: int | None = None) -> list[np.ndarray]:
    """A grid of several equally sized videos (`grid_shape` unless `columns` is given); shorter
    videos hold their last frame."""
    if not videos or any(len(v) == 0 for v in videos):
        raise ValueError("tile needs at least one video and no empty video")
    rows, columns = grid_shape(len(videos)) if columns is None else (-(-len(videos) // columns), columns)
    height, width, _ = videos[0][0].shape
    length = max(len(v) for v in videos)
    grid = []
    for t in range(length):
        canvas = np.empty((rows * height, columns * width, 3), dtype=np.uint8)
        canvas[:] = EMPTY_CELL
        for k, video in enumerate(videos):
            r, c = divmod(k, columns)
            canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = video[min(t, len(video) - 1)]
        grid.append(canvas)
    return grid


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int) -> Path:
    """Write frames to an MP4 (H.264) or GIF by the path's suffix, atomically; returns the path."""
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name!r}")
    if not frames:
        raise ValueError("write_video needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    if path.suffix == ".mp4":
        # yuv420p needs even sides; macro_block_size=1 stops imageio from resizing.
        with imageio.get_writer(partial, fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p") as writer:
            for frame in frames:
                writer.append_data(_even(frame))
    else:
        imageio.mimsave(partial, list(frames), duration=1000.0 / fps, loop=0)
    os.replace(partial, path)
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    return frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
