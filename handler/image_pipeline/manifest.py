"""The manifest: the record, written last, that a raw object was fully processed.

Its presence means every variant it lists was written; its `source.etag` lets a replayed event
for the same upload skip all image work (Lambda delivers at least once).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from . import __version__
from .processor import ProcessedImage

SCHEMA_VERSION = 1


def build(
    *, bucket: str, key: str, etag: str, processed: ProcessedImage, variant_keys: dict[str, str], total_ms: float
) -> dict:
    source = processed.source
    return {
        "schema_version": SCHEMA_VERSION,
        "pipeline_version": __version__,
        "source": {
            "bucket": bucket,
            "key": key,
            "etag": etag,
            "bytes": source.bytes,
            "type": source.type,
            "width": source.width,
            "height": source.height,
            "frames": source.frames,
        },
        "placeholder": {
            "blurhash": processed.blurhash,
            "thumbhash": processed.thumbhash,
            "dominant_color": processed.dominant_color,
        },
        "focal_point": {"x": processed.focal_point[0], "y": processed.focal_point[1]},
        "variants": [
            {
                "name": v.name,
                "key": variant_keys[v.name],
                "width": v.width,
                "height": v.height,
                "bytes": len(v.data),
                "format": v.format.value if v.format else source.type,
                "content_type": v.content_type,
            }
            for v in processed.variants
        ],
        "processing_ms": processed.processing_ms,
        "total_ms": round(total_ms, 1),
        "processed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def dumps(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")


def recorded_source(raw: bytes | None) -> tuple[str, str] | None:
    """(source key, source ETag) a stored manifest records, or None when there is none readable."""
    if not raw:
        return None
    try:
        source = json.loads(raw)["source"]
        return str(source["key"]), str(source["etag"])
    except (ValueError, KeyError, TypeError):
        return None
