"""Pillow format plugins, imported one at a time.

Pillow registers five formats up front; the first open or save of any other format makes it
import all of its ~40 plugins (~20 ms, paid on every Lambda cold start). The processor knows the
format before each open and save, so it imports only that plugin. HEIF comes from pillow-heif,
registered only when a HEIF file arrives.
"""

from __future__ import annotations

import importlib
from functools import cache

_MODULES = {
    "JPEG": "JpegImagePlugin",
    "PNG": "PngImagePlugin",
    "GIF": "GifImagePlugin",
    "WEBP": "WebPImagePlugin",
    "AVIF": "AvifImagePlugin",
    "TIFF": "TiffImagePlugin",
    "BMP": "BmpImagePlugin",
}


@cache
def load(pillow_format: str) -> None:
    """Make `pillow_format` (Pillow's name: "WEBP", "HEIF", …) openable and saveable."""
    if pillow_format == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    elif pillow_format in _MODULES:
        importlib.import_module(f"PIL.{_MODULES[pillow_format]}")
