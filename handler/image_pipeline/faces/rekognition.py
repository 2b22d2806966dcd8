"""Amazon Rekognition DetectFaces as the face detector (FACE_DETECTION=rekognition).

The ≤ 640 px rendition the processor hands over is sent as a JPEG (a few tens of kB) in the
request body: no S3 permission is involved, only `rekognition:DetectFaces`. Rekognition's
boxes are already normalised to the picture (Left, Top, Width, Height, 0..1) and its confidence
is a percentage. The call is synchronous boto3 inside the processor's worker thread, with short
timeouts and two attempts: a slow or failing service costs the image its faces (the processor
then falls back to the attention centroid and records the error), never the image.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from PIL import Image

from ..processor.specs import Face

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
ATTEMPTS = 2


class RekognitionDetector:
    name = "rekognition"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        """`endpoint_url` (or AWS_ENDPOINT_URL_REKOGNITION, which botocore reads itself) points
        it elsewhere; `client`: a boto3 Rekognition client to use as it is."""
        self._client = client
        self._options = {"endpoint_url": endpoint_url, "region_name": region_name}
        self._timeouts = (connect_timeout, read_timeout)
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The boto3 client, made on the first image (boto3 is imported then, not at cold start)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self._timeouts[0],
                    read_timeout=self._timeouts[1],
                    retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
                )
                options = {k: v for k, v in self._options.items() if v}
                self._client = boto3.client("rekognition", config=config, **options)
            return self._client

    def detect(self, rgb: Image.Image) -> list[Face]:
        buffer = io.BytesIO()
        rgb.convert("RGB").save(buffer, "JPEG", quality=90)
        response = self.client().detect_faces(Image={"Bytes": buffer.getvalue()}, Attributes=["DEFAULT"])
        return [face for detail in response.get("FaceDetails") or () if (face := _face(detail)) is not None]


def _face(detail: dict) -> Face | None:
    box = detail.get("BoundingBox") or {}
    try:
        x, y, w, h = (float(box[k]) for k in ("Left", "Top", "Width", "Height"))
        score = float(detail.get("Confidence", 0.0)) / 100
    except (KeyError, TypeError, ValueError):
        return None
    return Face(x, y, w, h, score)
