"""The manifest: the record, written last, that a raw object was fully processed.

Its presence means every variant it lists was written; its `source.etag` and
`producer.fingerprint` let a replayed event for the same upload under the same configuration skip
all image work (Lambda delivers at least once), while a changed upload or a changed configuration
(`VARIANTS`, encoder settings, the processor's output version) makes it stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from . import __version__
from .processor import Face, ProcessedImage
from .processor.fingerprint import OUTPUT_VERSION

SCHEMA_VERSION = 1


def build(
    *,
    bucket: str,
    key: str,
    etag: str,
    processed: ProcessedImage,
    variant_keys: dict[str, str],
    total_ms: float,
    fingerprint: str,
    lazy: list[dict] | None = None,
    owner: str | None = None,
    moderation: dict | None = None,
) -> dict:
    """`lazy`: the configured lazy variants ({name, key, format, content_type}), made on their first
    request (ondemand/): listed so status and completion events can say they are not made yet."""
    source = processed.source
    record = {
        "schema_version": SCHEMA_VERSION,
        "pipeline_version": __version__,
        # Whom the upload belongs to (the API's token `sub`, or its OWNER_CLAIM; an IAM principal):
        # null for uploads made without an owner. Manifests written before owners have no key.
        "owner": owner,
        "producer": {"fingerprint": fingerprint, "output_version": OUTPUT_VERSION, "pipeline_version": __version__},
        "source": {
            "bucket": bucket,
            "key": key,
            "etag": etag,
            "bytes": source.bytes,
            "type": source.type,
            "width": source.width,
            "height": source.height,
            "frames": source.frames,
            "alpha": source.alpha,  # real transparency: the width URLs' fallback format is PNG, not JPEG
            # An HDR gain map the upload carried (null when none): the variants are made from its SDR
            # picture; `kept` says whether any variant (an `hdr` JPEG) carries the map on.
            "gain_map": {"type": source.gain_map, "kept": _kept(processed)} if source.gain_map else None,
        },
        "placeholder": {
            "blurhash": processed.blurhash,
            "thumbhash": processed.thumbhash,
            "dominant_color": processed.dominant_color,
        },
        # The subject `auto` crops keep: `focal_source` says whether the point is the faces' centre
        # (weighted by size), the attention centroid (no faces, detection off or failed) or set by hand.
        "focal_point": {"x": processed.focal_point[0], "y": processed.focal_point[1]},
        "focal_source": processed.focal_source,
        "faces": [face.as_dict() for face in processed.faces],  # normalised to the upright frame
        # {"engine", "ms", "faces"}, or {"engine", "error"} when the detector failed (no faces then)
        "face_detection": processed.face_detection,
        "variants": [_variant(v, variant_keys[v.name], source.type) for v in processed.variants],
        "processing_ms": processed.processing_ms,
        "total_ms": round(total_ms, 1),
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if lazy:
        record["lazy_variants"] = lazy
    if moderation is not None:
        # MODERATION on: the engine's labels and scores, and what was done (publish, blur: the
        # variants are strongly blurred, `blurred: true`; approved: held, then approved by a reviewer).
        record["moderation"] = moderation
    return record


def subject(record: dict) -> dict:
    """What a stored manifest says the subject is, as `process_image` keyword arguments: the
    faces it recorded (`faces`; None when it recorded none, e.g. written before faces or with
    detection failed, so they are looked for again) and a focal point set by hand
    (`focal_point`, only when `focal_source` is "manual")."""
    found: dict = {}
    faces = record.get("faces")
    detection = record.get("face_detection")
    if isinstance(faces, list) and isinstance(detection, dict) and "error" not in detection:
        try:
            found["faces"] = tuple(
                Face(float(f["x"]), float(f["y"]), float(f["w"]), float(f["h"]), float(f.get("score", 1.0)))
                for f in faces
            )
        except (KeyError, TypeError, ValueError):
            pass
    point = record.get("focal_point")
    if record.get("focal_source") == "manual" and isinstance(point, dict):
        try:
            x, y = float(point["x"]), float(point["y"])
        except (KeyError, TypeError, ValueError):
            return found
        if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
            found["focal_point"] = (x, y)
    return found


def _variant(variant, key: str, source_type: str) -> dict:
    entry = {
        "name": variant.name,
        "key": key,
        "width": variant.width,
        "height": variant.height,
        "bytes": len(variant.data),
        "format": variant.format.value if variant.format else source_type,
        "content_type": variant.content_type,
    }
    if variant.quality is not None:
        entry["quality"] = variant.quality  # the encoder quality used: fixed, or chosen per image (qauto)
    if variant.qauto is not None:
        entry["qauto"] = variant.qauto  # {"target": SSIM asked for, "ssim": reached, "trials": encodes}
    if variant.gain_map is not None:
        entry["gain_map"] = variant.gain_map  # `hdr` variants: {"type": …, "kept": an Ultra HDR JPEG or not}
    return entry


def _kept(processed: ProcessedImage) -> bool:
    return any(v.gain_map is not None and v.gain_map.get("kept") for v in processed.variants)


def dumps(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Recorded:
    """What a stored manifest says about the upload it was made from, and what made it."""

    bucket: str
    key: str
    etag: str
    fingerprint: str | None  # None: written before fingerprints were recorded (always stale)
    output_keys: tuple[str, ...]  # the variants' keys (the manifest's own key not included)
    manual_focal: tuple[float, float] | None = None  # a focal point set by hand (PUT /images/{id}/focal)


def parse(raw: bytes | None) -> dict | None:
    """A stored manifest as a dict, or None when there is none readable (see `recorded`)."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    source = record.get("source") if isinstance(record, dict) else None
    if not isinstance(source, dict) or "key" not in source or "etag" not in source:
        return None
    return record


def recorded(raw: bytes | None) -> Recorded | None:
    """The record a stored manifest holds, or None when there is none readable."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
        source = record["source"]
        producer = record.get("producer") or {}
        fingerprint = producer.get("fingerprint") if isinstance(producer, dict) else None
        outputs = tuple(str(v["key"]) for v in record.get("variants") or () if isinstance(v, dict) and "key" in v)
        bucket, key, etag = str(source.get("bucket", "")), str(source["key"]), str(source["etag"])
        return Recorded(bucket, key, etag, str(fingerprint) if fingerprint else None, outputs, manual_focal(record))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def manual_focal(record: dict) -> tuple[float, float] | None:
    """The focal point a person set by hand (`focal_source` "manual"), or None (detected, or none)."""
    point = record.get("focal_point")
    if record.get("focal_source") != "manual" or not isinstance(point, dict):
        return None
    x, y = point.get("x"), point.get("y")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in (x, y)):
        return None
    return float(x), float(y)  # type: ignore[arg-type]


def recorded_source(raw: bytes | None) -> tuple[str, str] | None:
    """(source key, source ETag) a stored manifest records, or None (see `recorded` for the rest)."""
    record = recorded(raw)
    return None if record is None else (record.key, record.etag)
