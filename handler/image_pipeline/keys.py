"""Where a raw key's outputs go, and which keys are refused.

`raw/<path>/<name>.<ext>` → `processed/<path>/<name>/<variant>.<ext>` + `manifest.json`.
Only keys under the raw prefix are processed, so outputs can never trigger the pipeline again.
Keys that could escape the output prefix on a filesystem backend (`..`, `.`, empty segments,
a leading `/`) or carry control characters are refused with `invalid_key`.
"""

from __future__ import annotations

from .errors import InvalidKey

MAX_KEY_BYTES = 1024
MANIFEST_NAME = "manifest.json"


def output_prefix(key: str, raw_prefix: str, processed_prefix: str) -> str | None:
    """`processed/<path>/<name>/` for a raw key, or None for a key outside the raw prefix."""
    if not key.startswith(raw_prefix) or key == raw_prefix:
        return None
    rest = key[len(raw_prefix) :]
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"key is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in rest):
        raise InvalidKey(f"key {key!r} contains control characters")
    segments = rest.split("/")
    if rest.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise InvalidKey(f"key {key!r} has an empty, '.' or '..' path segment")
    name = segments[-1]
    stem, dot, _ = name.rpartition(".")
    if dot and stem:
        segments[-1] = stem
    return processed_prefix + "/".join(segments) + "/"


def variant_key(prefix: str, name: str, extension: str) -> str:
    return f"{prefix}{name}.{extension}"


def manifest_key(prefix: str) -> str:
    return prefix + MANIFEST_NAME
