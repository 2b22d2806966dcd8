"""Image ids for uploads made through the API: server-generated, URL-safe, one fixed pattern.

An id is 20 characters of lowercase Crockford base32 (`0-9a-z` without `i l o u`): 10 for the
upload time in milliseconds *subtracted from 2^50* (so a newer upload sorts first), then 10 of
randomness (50 bits). Listing `raw/` or `processed/` in key order (S3 lists in UTF-8 byte order)
therefore pages through the images newest first, and two uploads in the same millisecond still
get distinct ids. The raw key of an API upload is `raw/<id>/<sanitised file name>`.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # ascending in ASCII: string order is number order
ID_LENGTH = 20
ID_PATTERN = re.compile(r"[0-9a-hjkmnp-tv-z]{20}")
_TIME_CHARS = 10
_TIME_SPAN = 32**_TIME_CHARS  # 2^50 ms: until the year 37648
MAX_LEAF = 100


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(now_ms: int | None = None) -> str:
    """A fresh id; ids made later sort before ids made earlier."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _encode(_TIME_SPAN - 1 - ms, _TIME_CHARS) + _encode(secrets.randbits(50), ID_LENGTH - _TIME_CHARS)


def created_ms(image_id: str) -> int:
    """The upload time (ms since the epoch) an id records."""
    number = 0
    for char in image_id[:_TIME_CHARS]:
        number = number * 32 + ALPHABET.index(char)
    return _TIME_SPAN - 1 - number


def is_valid(image_id: str) -> bool:
    return bool(ID_PATTERN.fullmatch(image_id))


def raw_key(raw_prefix: str, image_id: str, filename: str, default_extension: str = "") -> str:
    return f"{raw_prefix}{image_id}/{safe_leaf(filename, default_extension)}"


def id_of_key(key: str, raw_prefix: str) -> str | None:
    """The id in an API upload's raw key `raw/<id>/<leaf>`, or None for any other key."""
    if not key.startswith(raw_prefix):
        return None
    first, slash, _ = key[len(raw_prefix) :].partition("/")
    return first if slash and is_valid(first) else None


def safe_leaf(filename: str, default_extension: str = "") -> str:
    """The last path segment of a user's file name, reduced to `[A-Za-z0-9._-]` (at most 100
    characters, the extension kept), never `.`/`..` or empty: it names the object, never a path."""
    leaf = re.split(r"[/\\]", filename or "")[-1]
    leaf = unicodedata.normalize("NFKD", leaf).encode("ascii", "ignore").decode("ascii")
    leaf = re.sub(r"[^A-Za-z0-9._-]+", "-", leaf).strip(".-_")
    stem, dot, ext = leaf.rpartition(".")
    if not dot:
        stem, ext = leaf, ""
    ext = ext[:10].lower()
    stem = stem.strip(".-_")[: MAX_LEAF - 11] or "image"
    ext = ext or default_extension
    return f"{stem}.{ext}" if ext else stem
