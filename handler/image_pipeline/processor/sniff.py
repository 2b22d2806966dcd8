"""Identify an upload from its bytes, never from its key or Content-Type.

Returns a short type name. Types we can decode are listed in `DECODABLE`; a few common
non-images are named too (pdf, svg, html) so the rejection says what the file really was.
"""

from __future__ import annotations

DECODABLE = {
    # sniffed type -> (Pillow format name, MIME type)
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "gif": ("GIF", "image/gif"),
    "webp": ("WEBP", "image/webp"),
    "avif": ("AVIF", "image/avif"),
    "heif": ("HEIF", "image/heif"),
    "tiff": ("TIFF", "image/tiff"),
    "bmp": ("BMP", "image/bmp"),
}

_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def content_type(data: bytes) -> str:
    """The Content-Type to serve stored bytes with: the sniffed image type's, or
    `application/octet-stream` for anything else."""
    kind = sniff(data)
    return DECODABLE[kind][1] if kind in DECODABLE else "application/octet-stream"


def sniff(data: bytes) -> str | None:
    """The file's type from its magic bytes, or None when it is nothing we recognise."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _iso_brand(head)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "tiff"
    if head[:2] == b"BM" and len(data) > 26:
        return "bmp"
    text = data[:1024].lstrip().lower()
    if text.startswith(b"%pdf"):
        return "pdf"
    if b"<svg" in text:
        return "svg"
    if text.startswith((b"<!doctype html", b"<html")):
        return "html"
    return None


def _iso_brand(head: bytes) -> str | None:
    """AVIF and HEIF share the ISO-BMFF container; the `ftyp` brands tell them apart."""
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4))
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None
