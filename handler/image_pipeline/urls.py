"""Width URLs for pages rendered on a server: an image's `srcset`, signed where it must be.

The API describes each processed image's sizes on demand as `width_urls` (`GET {mount}/images/{id}`):

    {"template": "/images/images/<id>/w{width}.{ext}",   # or PUBLIC_BASE_URL + its output prefix
     "widths": [16, 32, …, 1920],                         # the allowlisted ones up to its own width
     "fallback": "jpg"}                                   # or png, for an image with alpha

    from image_pipeline.urls import srcset
    html = f'<img src="{width_url(info["width_urls"], 640)}" srcset="{srcset(info["width_urls"])}" sizes="100vw">'

Without `ext` a URL leaves the format to the browser's `Accept` (AVIF, else WebP, else the
fallback): the API negotiates it, and the CDN's function rewrites `w640` to `w640.avif` alike.
Widths outside the allowlist (`ONDEMAND_WIDTHS`, by default Next.js's device and image sizes)
need a signature with SIGNING_KEY (`ondemand/signing.py`); a width there is never signed, so its
URL is the same for every page (one cache entry). Ratio URLs will take the same shape here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .ondemand.paths import DEFAULT_WIDTHS
from .ondemand.signing import sign

__all__ = ["srcset", "width_url"]

Template = str | Mapping[str, Any] | Any  # a template string, `width_urls` as JSON, or the API's WidthUrls


def _template(width_urls: Template) -> str:
    if isinstance(width_urls, str):
        template = width_urls
    elif isinstance(width_urls, Mapping):
        template = str(width_urls["template"])
    else:
        template = str(width_urls.template)
    if "{width}" not in template:
        raise ValueError(f"{template!r} is not a width URL template (it has no {{width}})")
    return template


def _widths(width_urls: Template) -> list[int]:
    if isinstance(width_urls, Mapping):
        return [int(w) for w in width_urls.get("widths") or ()]
    if not isinstance(width_urls, str) and hasattr(width_urls, "widths"):
        return [int(w) for w in width_urls.widths]
    return list(DEFAULT_WIDTHS)


def width_url(
    width_urls: Template,
    width: int,
    ext: str | None = None,
    *,
    signing_key: bytes | str | None = None,
    allowed: Iterable[int] = DEFAULT_WIDTHS,
) -> str:
    """The URL of `width` (format by `Accept` without `ext`; `jpg`, `webp`, `avif` or `png` with
    it). A width outside `allowed` (the API's ONDEMAND_WIDTHS) is signed with `signing_key`, and
    is a ValueError without one: the API would answer it 403."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a whole number of pixels, not {width!r}")
    template = _template(width_urls).replace("{width}", str(width))
    url = template.replace("{ext}", ext) if ext else template.replace(".{ext}", "").replace("{ext}", "")
    if width in set(allowed):
        return url
    if not signing_key:
        raise ValueError(f"width {width} is outside the allowlist: it needs signing_key (the API's SIGNING_KEY)")
    return sign(signing_key.encode() if isinstance(signing_key, str) else signing_key, url)


def srcset(
    width_urls: Template,
    widths: Iterable[int] | None = None,
    ext: str | None = None,
    *,
    signing_key: bytes | str | None = None,
    allowed: Iterable[int] = DEFAULT_WIDTHS,
) -> str:
    """`url 16w, url 32w, …` for `widths` (default: the image's own list from `width_urls`, or
    every allowlisted width for a bare template), smallest first, each once."""
    chosen = sorted(set(_widths(width_urls) if widths is None else (int(w) for w in widths)))
    allow = set(allowed)
    return ", ".join(f"{width_url(width_urls, w, ext, signing_key=signing_key, allowed=allow)} {w}w" for w in chosen)
