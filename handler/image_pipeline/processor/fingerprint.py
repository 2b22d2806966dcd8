"""What produced a set of outputs, as one short stable string.

A manifest records `fingerprint(processor)`; when the running configuration's fingerprint differs,
the outputs are stale and the image is processed again (on a replay, a backfill, the API). It
covers everything that changes the bytes written for the same input: every variant spec (name,
box, fit, gravity, format, quality, qauto, hdr), the encoder-affecting settings and
`OUTPUT_VERSION`. It deliberately leaves out what never changes an output's pixels: limits, prefixes, Cache-Control,
what happens to the raw object.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import ImageProcessor

OUTPUT_VERSION = 3
# 2: placeholders from the whole frame, ThumbHash, focal point, colour converted after resizing
# 3: a WebP still ≥ 2× the largest variant is scaled while decoding (libwebp's rescaler); the
#    largest resize made as two bands of rows (a level here and there on some transparent images)
"""Bumped whenever the processor writes different outputs for the same input and specs (a new
resampling filter, encoder defaults, colour handling): every stored manifest becomes stale."""


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _variant(spec: Any) -> dict[str, Any]:
    # getattr with the older names: the spec class may spell the box `max_width` or `width`.
    width = getattr(spec, "max_width", getattr(spec, "width", None))
    height = getattr(spec, "max_height", getattr(spec, "height", None))
    described = {
        "name": spec.name,
        "width": width,
        "height": height,
        "fit": _plain(spec.fit),
        "gravity": _plain(spec.gravity),
        "format": _plain(spec.format) if spec.format is not None else "auto",
        "quality": spec.quality,
    }
    if getattr(spec, "qauto", None) is not None:  # only when set: existing fingerprints stay as they were
        described["qauto"] = spec.qauto
    if getattr(spec, "hdr", False):  # likewise: configurations without `hdr` keep their fingerprint
        described["hdr"] = True
    # `lazy` is left out: when a variant is made (upload or first request) does not change its bytes.
    return described


def describe(processor: ImageProcessor) -> dict[str, Any]:
    """The inputs of the fingerprint, as plain JSON (logged when a record is judged stale)."""
    return {
        "output_version": OUTPUT_VERSION,
        "variants": sorted((_variant(v) for v in processor.variants), key=lambda v: v["name"]),
        "keep_icc_profile": bool(processor.keep_icc_profile),
        "strip_metadata": bool(processor.strip_metadata),
        "background_color": _plain(tuple(processor.background_color)),
        "preserve_original": bool(processor.preserve_original),
        # Only where an `auto` crop is made: which face detector places it (configurations without
        # one keep their fingerprint whatever FACE_DETECTION says).
        **({"faces": getattr(processor, "face_engine", "off")} if _crops_around_faces(processor) else {}),
    }


def _crops_around_faces(processor: ImageProcessor) -> bool:
    return any(_plain(v.fit) == "cover" and _plain(v.gravity) == "auto" for v in processor.variants)


def fingerprint(processor: ImageProcessor) -> str:
    """16 hex digits of SHA-256 over `describe(processor)`, serialised canonically: the same
    configuration always gives the same string, whatever order the variants are listed in."""
    canonical = json.dumps(describe(processor), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
