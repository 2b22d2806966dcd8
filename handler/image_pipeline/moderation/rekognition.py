"""MODERATION=rekognition: Amazon Rekognition's DetectModerationLabels on the rendition's bytes.

The rendition (≤ 320 px, whole frame) is sent as a JPEG (quality 90; sides under 80 px are padded,
Rekognition's minimum), never the upload itself: a few KB per call. Labels come back in
Rekognition's taxonomy (three levels, each with its parent); the image is flagged when a label at or
above MODERATION_MIN_CONFIDENCE belongs to one of the top-level categories in MODERATION_LABELS.
Scores are the labels' confidences / 100.

botocore retries throttling and 5xx (standard mode, S3_MAX_ATTEMPTS tries); what is left after
that is `ModerationUnavailable` (transient: the record is retried; see moderation/__init__.py).
A client error that says the request itself is wrong (InvalidImageFormatException, ImageTooLarge)
is no verdict either, and is treated the same: fail closed.
"""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, Any

from . import ModerationUnavailable, Verdict

if TYPE_CHECKING:
    from PIL import Image

MIN_SIDE = 80  # Rekognition's smallest image side


class RekognitionModerator:
    name = "rekognition"

    def __init__(
        self,
        *,
        labels: tuple[str, ...],
        min_confidence: float,
        max_attempts: int = 5,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.labels = tuple(labels)
        self._wanted = {label.casefold() for label in labels}
        self.min_confidence = min_confidence
        self.max_attempts = max_attempts
        self.endpoint_url = endpoint_url
        self._client = client
        self._lock = threading.Lock()

    def client(self) -> Any:
        """boto3's Rekognition client, made on the first image (no network, no import at start)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                    connect_timeout=5,
                    read_timeout=10,
                )
                self._client = boto3.client("rekognition", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def classify(self, rendition: Image.Image) -> Verdict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client().detect_moderation_labels(
                Image={"Bytes": jpeg_of(rendition)}, MinConfidence=self.min_confidence
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise ModerationUnavailable(f"Rekognition DetectModerationLabels failed: {exc}") from exc
        return self.verdict(response.get("ModerationLabels") or [])

    def verdict(self, found: list[dict]) -> Verdict:
        parents = {str(label.get("Name")): str(label.get("ParentName") or "") for label in found}

        def top(name: str) -> str:
            seen = set()
            while parents.get(name) and name not in seen:
                seen.add(name)
                name = parents[name]
            return name

        scores: dict[str, float] = {}
        flagged: list[str] = []
        for label in found:
            name = str(label.get("Name"))
            confidence = float(label.get("Confidence") or 0.0)
            scores[name] = round(max(confidence / 100, scores.get(name, 0.0)), 4)
            category = top(name)
            if confidence >= self.min_confidence and category.casefold() in self._wanted and name not in flagged:
                flagged.append(name)
        return Verdict(tuple(flagged), scores)


def jpeg_of(rendition: Image.Image) -> bytes:
    from PIL import Image

    image = rendition
    if image.mode == "RGBA":  # transparency over white, as the page shows it
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        image = canvas
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.width < MIN_SIDE or image.height < MIN_SIDE:  # a 1×10000 strip: padded, not refused
        padded = Image.new("RGB", (max(MIN_SIDE, image.width), max(MIN_SIDE, image.height)), (255, 255, 255))
        padded.paste(image, ((padded.width - image.width) // 2, (padded.height - image.height) // 2))
        image = padded
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()
