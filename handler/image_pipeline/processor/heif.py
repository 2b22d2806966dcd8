"""HEIC/HEIF input through pillow-heif, imported only when a HEIF file arrives (cold-start cost)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
