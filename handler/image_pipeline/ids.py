"""Image ids for uploads made through the API: server-generated, URL-safe, one fixed pattern.

An id is 20 characters of lowercase Crockford base32 (`0-9a-z` without `i l o u`): 10 for the
upload time in milliseconds *subtracted from 2^50* (so a newer upload sorts first), then 10 of
randomness (50 bits). Listing `raw/` or `processed/` in key order (S3 lists in UTF-8 byte order)
therefore pages through the images newest first, and two uploads in the same millisecond still
get distinct ids. The raw key of an API upload is `raw/<id>/<sanitised file name>`.

An image made for an owner (a token's `sub`, an IAM principal) has the id `<tag>-<id20>`: the
owner's 16-character tag (80 bits of a SHA-256 of the owner, never the owner itself, which may be
an e-mail address) before the 20-character id. One owner's images are then one key prefix,
`raw/<tag>-` (and `processed/<tag>-`), still newest first. An id without a tag (20 characters)
was made by an open API or before owners existed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
import unicodedata
from collections.abc import Mapping
from urllib.parse import quote, unquote

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # ascending in ASCII: string order is number order
ID_LENGTH = 20
TAG_LENGTH = 16
_CHAR = "[0-9a-hjkmnp-tv-z]"
ID_PATTERN = re.compile(rf"(?:({_CHAR}{{{TAG_LENGTH}}})-)?({_CHAR}{{{ID_LENGTH}}})")
_TIME_CHARS = 10
_TIME_SPAN = 32**_TIME_CHARS  # 2^50 ms: until the year 37648
MAX_LEAF = 100
_OWNER_DOMAIN = b"image-pipeline owner\0"
OWNER_METADATA = "owner"  # the raw object's `x-amz-meta-owner`
_METADATA_SAFE = "".join(c for c in string.punctuation if c != "%")  # printable ASCII stays readable


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def owner_tag(owner: str) -> str:
    """The owner's 16-character tag: the first 80 bits of SHA-256("image-pipeline owner\\0" + owner)
    in the id alphabet. Opaque and stable: the same owner always gets the same tag."""
    digest = hashlib.sha256(_OWNER_DOMAIN + owner.encode("utf-8")).digest()
    return _encode(int.from_bytes(digest[:10], "big"), TAG_LENGTH)


def owner_metadata(owner: str) -> str:
    """The owner as an object metadata value: S3 metadata travels in HTTP headers, so anything
    outside printable ASCII (and `%`, and spaces) is percent-encoded; `owner_of` decodes it."""
    return quote(owner, safe=_METADATA_SAFE)


def owner_of(key: str, raw_prefix: str, metadata: Mapping[str, str]) -> str | None:
    """The owner a raw object's metadata names, kept only when its tag is the tag in the key's id
    (so metadata cannot move an image to another owner); None otherwise."""
    image_id = id_of_key(key, raw_prefix)
    value = metadata.get(OWNER_METADATA)
    if image_id is None or not value:
        return None
    tag, _ = parse(image_id) or (None, "")
    owner = unquote(value)
    return owner if tag is not None and owner_tag(owner) == tag else None


def new_id(now_ms: int | None = None, tag: str | None = None) -> str:
    """A fresh id (`<tag>-<id20>` for an owner's tag); ids made later sort before ids made earlier."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    made = _encode(_TIME_SPAN - 1 - ms, _TIME_CHARS) + _encode(secrets.randbits(50), ID_LENGTH - _TIME_CHARS)
    return f"{tag}-{made}" if tag else made


_LAST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: the last time a date can show


def parse(image_id: str) -> tuple[str | None, str] | None:
    """(owner tag or None, the 20-character id) of a well-formed id; None for anything else (also an
    id whose time lies past the year 9999: never made here, and no date could show it)."""
    match = ID_PATTERN.fullmatch(image_id)
    if not match or created_ms(match.group(2)) > _LAST_MS:
        return None
    return match.group(1), match.group(2)


def created_ms(image_id: str) -> int:
    """The upload time (ms since the epoch) an id records."""
    number = 0
    for char in image_id[-ID_LENGTH:][:_TIME_CHARS]:
        number = number * 32 + ALPHABET.index(char)
    return _TIME_SPAN - 1 - number


def is_valid(image_id: str) -> bool:
    return parse(image_id) is not None


def raw_key(raw_prefix: str, image_id: str, filename: str, default_extension: str = "") -> str:
    return f"{raw_prefix}{image_id}/{safe_leaf(filename, default_extension)}"


def id_of_key(key: str, prefix: str) -> str | None:
    """The id in an API upload's key `<prefix><id>/…` (`raw/<id>/<leaf>`, `processed/<id>/…`), or
    None for any other key."""
    if not key.startswith(prefix):
        return None
    first, slash, _ = key[len(prefix) :].partition("/")
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
