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
URL is the same for every page (one cache entry).

Ratio URLs take the same shape: the status's `ratio_urls` (its template has `{ratio}` too) and a
`ratio=` (`"16x9"`, one spelling per ratio) give the largest window of that ratio around the
image's subject, each width of it:

    srcset(info["ratio_urls"], ratio="1x1")      # …/w16-1x1 16w, …/w32-1x1 32w, …

A URL is unsigned only when its width is in `allowed` and its ratio in `allowed_ratios` (the API's
ONDEMAND_WIDTHS and ONDEMAND_RATIOS); otherwise it is signed, as the API requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .ondemand.paths import DEFAULT_RATIOS, DEFAULT_WIDTHS, BadOutput, parse_ratio
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


def _ratio(template: str, ratio: str | None) -> str | None:
    """`ratio` in its one spelling, checked against the template: a ratio template needs one, a
    width template takes none (ValueError naming the problem)."""
    if ("{ratio}" in template) != (ratio is not None):
        raise ValueError(
            "a ratio template needs ratio= (e.g. '16x9')"
            if ratio is None
            else f"{template!r} is a width template: it has no {{ratio}}"
        )
    if ratio is None:
        return None
    try:
        return str(parse_ratio(ratio))
    except BadOutput as exc:
        raise ValueError(str(exc)) from None


def width_url(
    width_urls: Template,
    width: int,
    ext: str | None = None,
    *,
    ratio: str | None = None,
    signing_key: bytes | str | None = None,
    allowed: Iterable[int] = DEFAULT_WIDTHS,
    allowed_ratios: Iterable[str] = DEFAULT_RATIOS,
) -> str:
    """The URL of `width` (format by `Accept` without `ext`; `jpg`, `webp`, `avif` or `png` with
    it), of the `ratio` window when the template is a ratio template. A width outside `allowed`
    (the API's ONDEMAND_WIDTHS) or a ratio outside `allowed_ratios` (ONDEMAND_RATIOS) is signed
    with `signing_key`, and is a ValueError without one: the API would answer it 403."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a whole number of pixels, not {width!r}")
    template = _template(width_urls)
    spelled = _ratio(template, ratio)
    template = template.replace("{width}", str(width))
    if spelled is not None:
        template = template.replace("{ratio}", spelled)
    url = template.replace("{ext}", ext) if ext else template.replace(".{ext}", "").replace("{ext}", "")
    if width in set(allowed) and (spelled is None or spelled in set(allowed_ratios)):
        return url
    if not signing_key:
        what = f"width {width}" if width not in set(allowed) else f"ratio {spelled}"
        raise ValueError(f"{what} is outside the allowlist: it needs signing_key (the API's SIGNING_KEY)")
    return sign(signing_key.encode() if isinstance(signing_key, str) else signing_key, url)


def srcset(
    width_urls: Template,
    widths: Iterable[int] | None = None,
    ext: str | None = None,
    *,
    ratio: str | None = None,
    signing_key: bytes | str | None = None,
    allowed: Iterable[int] = DEFAULT_WIDTHS,
    allowed_ratios: Iterable[str] = DEFAULT_RATIOS,
) -> str:
    """`url 16w, url 32w, …` for `widths` (default: the image's own list from `width_urls` or
    `ratio_urls`, or every allowlisted width for a bare template), smallest first, each once;
    with `ratio`, of that ratio's window."""
    chosen = sorted(set(_widths(width_urls) if widths is None else (int(w) for w in widths)))
    allow, ratios = set(allowed), set(allowed_ratios)
    return ", ".join(
        f"{width_url(width_urls, w, ext, ratio=ratio, signing_key=signing_key, allowed=allow, allowed_ratios=ratios)}"
        f" {w}w"
        for w in chosen
    )
