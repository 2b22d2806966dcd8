"""Face detection engines behind the processor's `FaceDetector` interface (processor/subject.py).

`FACE_DETECTION` chooses one: `local` (the default: a small CNN in-process, offline, its weights
inside an installed package), `rekognition` (Amazon Rekognition DetectFaces) or `off`. Nothing
heavy is imported here: an engine loads its runtime and model on the first image it is given, so
a process that never detects a face never pays for it.
"""

from __future__ import annotations

from ..processor.subject import FaceDetector

ENGINES = ("local", "rekognition", "off")


def detector_for(engine: str) -> FaceDetector | None:
    """The detector `FACE_DETECTION=engine` names (None for `off`); nothing loaded yet."""
    name = engine.strip().lower()
    if name == "off":
        return None
    if name == "local":
        from .local import LocalDetector

        return LocalDetector()
    if name == "rekognition":
        from .rekognition import RekognitionDetector

        return RekognitionDetector()
    raise ValueError(f"unknown face detection engine {engine!r} (choose from {', '.join(ENGINES)})")
