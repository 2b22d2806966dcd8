"""What a request for an on-demand output asks for, in one canonical form.

A request names an output by its last path segment, the *leaf*:

    w640.webp  w640.jpg  w640.avif  w640.png   that width (aspect kept), that format
    w640                                       that width, the format negotiated from `Accept`:
                                               AVIF if accepted, else WebP, else the *fallback*
                                               (JPEG, or PNG where the image has alpha), stored
                                               under the extension-less leaf `w640`
    xl                                         a configured lazy variant (`xl:2400x2400:jpeg:lazy`)

One output has one leaf and so one key under the image's output prefix (`processed/…/w640.webp`):
leading zeros, upper case, `.jpeg` and anything after the extension are refused (400), never
mapped, so two spellings can never become two stored objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..processor.specs import ImageFormat

MAX_WIDTH = 8192
# The ladder a responsive srcset wants (Next.js's device and image sizes): allowed unsigned.
DEFAULT_WIDTHS = (16, 32, 48, 64, 96, 128, 256, 384, 640, 750, 828, 1080, 1200, 1920, 2048, 3840)
EXTENSIONS = {"jpg": ImageFormat.JPEG, "webp": ImageFormat.WEBP, "avif": ImageFormat.AVIF, "png": ImageFormat.PNG}
_WIDTH_LEAF = re.compile(r"w(?P<width>[^.]*)(?:\.(?P<ext>.*))?", re.DOTALL)
_DIGITS = re.compile(r"[1-9][0-9]{0,4}")
# RFC 9110's qvalue: 0 to 1, at most three decimals. Anything else refuses the type, exactly as the
# CloudFront Function in the templates does (the two must store one request under one key).
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


class BadOutput(ValueError):
    """The leaf looks like a width URL but is not a valid one (400)."""


@dataclass(frozen=True)
class WidthRequest:
    """`w<width>[.<ext>]`: `format` None means "negotiate from Accept"."""

    width: int
    format: ImageFormat | None

    @property
    def leaf(self) -> str:
        """The stored leaf; None-format requests are resolved with `negotiated` first."""
        return f"w{self.width}" if self.format is None else f"w{self.width}.{self.format.extension}"

    @property
    def unformatted(self) -> str:
        """`w640`: what a signature covers (it authorises a size; the format is the browser's choice)."""
        return f"w{self.width}"


def is_width_leaf(leaf: str) -> bool:
    """Whether `leaf` is meant as a width URL: `w` then a digit, or `w…` with an extension."""
    return leaf.startswith("w") and (leaf[1:2].isdigit() or "." in leaf)


def parse_width(leaf: str) -> WidthRequest:
    """`w640.webp` → WidthRequest(640, WEBP); `w640` → WidthRequest(640, None). BadOutput otherwise."""
    match = _WIDTH_LEAF.fullmatch(leaf)
    if match is None:
        raise BadOutput(f"{leaf!r} is not a width URL (w<WIDTH>[.jpg|.webp|.avif|.png])")
    raw_width, ext = match["width"], match["ext"]
    if not _DIGITS.fullmatch(raw_width):
        raise BadOutput(f"width {raw_width!r} must be a whole number from 1 to {MAX_WIDTH}, without leading zeros")
    width = int(raw_width)
    if width > MAX_WIDTH:
        raise BadOutput(f"width {width} is over the {MAX_WIDTH}-pixel maximum")
    if ext is None:
        return WidthRequest(width, None)
    if ext not in EXTENSIONS:
        raise BadOutput(f"unknown extension {ext!r}: use one of {', '.join(EXTENSIONS)} (or none, to negotiate)")
    return WidthRequest(width, EXTENSIONS[ext])


def negotiate(accept: str | None) -> ImageFormat | None:
    """AVIF if `Accept` admits it, else WebP, else None (the fallback: JPEG, or PNG for alpha).

    Only an explicit `image/avif` / `image/webp` counts (a browser that sends `*/*` alone is not
    assumed to decode either), and `;q=0` (or a q that is no qvalue: `q=2`, `q=0.5x`) refuses a type."""
    accepted = set()
    for part in (accept or "").lower().split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
        if q > 0:
            accepted.add(media)
    if "image/avif" in accepted:
        return ImageFormat.AVIF
    if "image/webp" in accepted:
        return ImageFormat.WEBP
    return None


def fallback_format(source: dict) -> ImageFormat:
    """The negotiated fallback for a browser taking neither AVIF nor WebP: PNG where the image has
    (real) alpha, else JPEG. `source` is the manifest's; older manifests lack `alpha`: a source
    type that can carry alpha then gets PNG, which shows it right in every case."""
    alpha = source.get("alpha")
    if alpha is None:
        alpha = source.get("type") not in ("jpeg", "heif", "bmp")
    return ImageFormat.PNG if alpha else ImageFormat.JPEG


def parse_widths(raw: str) -> tuple[int, ...]:
    """ONDEMAND_WIDTHS: comma-separated widths, each 1…MAX_WIDTH (ValueError naming the bad one)."""
    widths = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_WIDTH:
            raise ValueError(f"{part!r} is not a width from 1 to {MAX_WIDTH}")
        widths.append(int(part))
    return tuple(sorted(set(widths)))
