"""Rendering: frames from a tracking camera, headless (EGL), with the terrain kept current.

MuJoCo uploads heightfields to the GPU once, when the render context is made; a terrain
written into `model.hfield_data` later is invisible until it is uploaded again
(`mjr_uploadHField`). `FrameRenderer.upload_heightfield` does that after every task change.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np


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
