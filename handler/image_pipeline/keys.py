"""Where a raw key's outputs go, and which keys are refused.

`raw/<path>/<name>.<ext>` → `processed/<path>/<name>/<variant>.<ext>` + `manifest.json`.
Only keys under the raw prefix are processed, so outputs can never trigger the pipeline again.
Keys that could escape the output prefix on a filesystem backend (`..`, `.`, empty segments,
a leading `/`) or carry control characters are refused with `invalid_key`, and so are keys whose
outputs would not fit S3's 1024-byte key limit (S3 would refuse every PUT: retrying cannot help).
"""

from __future__ import annotations

from .errors import InvalidKey

MAX_KEY_BYTES = 1024
MANIFEST_NAME = "manifest.json"
MAX_EXTENSION = 4  # the longest output extension: webp, avif (jpg, png, gif, bmp are shorter)


def output_prefix(
    key: str, raw_prefix: str, processed_prefix: str, longest_leaf: int = len(MANIFEST_NAME)
) -> str | None:
    """`processed/<path>/<name>/` for a raw key, or None for a key outside the raw prefix.

    `longest_leaf` is the longest file name that will be written under the prefix (see
    `longest_leaf`); a key whose outputs would be longer than S3 allows is refused."""
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
    if dot and stem and stem not in (".", ".."):  # `..jpg` must not become a `.` or `..` segment
        segments[-1] = stem
    prefix = processed_prefix + "/".join(segments) + "/"
    if len(prefix.encode("utf-8", "surrogatepass")) + longest_leaf > MAX_KEY_BYTES:
        raise InvalidKey(f"the outputs of this key would be longer than S3's {MAX_KEY_BYTES}-byte key limit")
    return prefix


def longest_leaf(variant_names: list[str]) -> int:
    """The longest output file name: `<variant>.<ext>` for each variant, or the manifest's."""
    return max([len(MANIFEST_NAME)] + [len(name.encode("utf-8")) + 1 + MAX_EXTENSION for name in variant_names])


def variant_key(prefix: str, name: str, extension: str) -> str:
    return f"{prefix}{name}.{extension}"


def manifest_key(prefix: str) -> str:
    return prefix + MANIFEST_NAME
