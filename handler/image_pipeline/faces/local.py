"""The in-process, offline face detector (FACE_DETECTION=local)."""

from __future__ import annotations

import threading

from PIL import Image

from ..processor.specs import Face


class LocalDetector:
    """A small CNN run in-process; its runtime and weights are loaded on the first image."""

    name = "local"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: object | None = None

    def detect(self, rgb: Image.Image) -> list[Face]:
        raise NotImplementedError("the local face detector is not available yet")
