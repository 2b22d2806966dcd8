"""The subject of an image: the faces a detector finds, and the focal point crops keep.

The processor is handed a `FaceDetector` (an engine from `image_pipeline.faces`, or any object
with its one method); it never chooses or imports one. Detection runs once per image on a small
rendition of the whole upright frame. Whatever a detector raises, the image is still made: the
focal point falls back to the attention centroid and the record says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Protocol, runtime_checkable

from PIL import Image

from .specs import Face

DETECT_SIDE = 640  # px, the longest side of the picture a detector is given
MIN_SCORE = 0.5  # faces below this confidence are not recorded


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an upright RGB picture; boxes normalised to it (0..1, top-left origin)."""

    name: str

    def detect(self, rgb: Image.Image) -> list[Face]: ...


@dataclass(frozen=True)
class Detection:
    faces: tuple[Face, ...]
    record: dict  # {"engine": …, "ms": …, "faces": n} or {"engine": …, "error": …}


def detect(detector: FaceDetector, rgb: Image.Image) -> Detection:
    """Run `detector` on `rgb`; its faces cleaned (clipped to the frame, confident ones only,
    largest first), or none with the error recorded."""
    started = perf_counter()
    try:
        found = detector.detect(rgb)
    except Exception as exc:  # noqa: BLE001 — a detector's failure (or timeout) never fails the image
        message = f"{type(exc).__name__}: {exc}"[:300]
        return Detection((), {"engine": detector.name, "error": message})
    faces = tuple(sorted((f for f in map(clip, found) if f is not None), key=lambda f: f.area, reverse=True))
    ms = round((perf_counter() - started) * 1000, 1)
    return Detection(faces, {"engine": detector.name, "ms": ms, "faces": len(faces)})


def clip(face: Face) -> Face | None:
    """`face` cut to the frame and rounded (4 decimals), or None when nothing of it is left or it
    is not confident enough."""
    if not face.score >= MIN_SCORE:
        return None
    x0, y0 = max(0.0, face.x), max(0.0, face.y)
    x1, y1 = min(1.0, face.x + face.w), min(1.0, face.y + face.h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return Face(round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4), round(min(face.score, 1.0), 3))


def rendition(base: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The whole frame (`box` of `base`) at no more than DETECT_SIDE px on its longest side."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = min(1.0, DETECT_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return base.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
