"""What a request for an on-demand output asks for, in one canonical form.

A request names an output by its last path segment, the *leaf*:

    w640.webp  w640.jpg  w640.avif  w640.png   that width (aspect kept), that format
    w640                                       that width, the format negotiated from `Accept`:
                                               AVIF if accepted, else WebP, else the *fallback*
                                               (JPEG, or PNG where the image has alpha), stored
                                               under the extension-less leaf `w640`
    w640-16x9.webp  w640-16x9                  the largest 16:9 window of the image (the window a
                                               `cover` crop takes, placed around its subject:
                                               gravity `auto`), 640 px wide; formats as above
    xl                                         a configured lazy variant (`xl:2400x2400:jpeg:lazy`)

One output has one leaf and so one key under the image's output prefix (`processed/…/w640.webp`):
leading zeros, upper case, `.jpeg` and anything after the extension are refused (400), never
mapped, so two spellings can never become two stored objects. A ratio has one spelling too: in
lowest terms, each side 1 to 100 (`w640-32x18` is refused naming `16x9`), with one exception:
7:3 is spelt `21x9`, the name everyone knows it by (`7x3` is refused naming `21x9`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import gcd

from ..processor.specs import ImageFormat

MAX_WIDTH = 8192
# The ladder a responsive srcset wants (Next.js's device and image sizes): allowed unsigned.
DEFAULT_WIDTHS = (16, 32, 48, 64, 96, 128, 256, 384, 640, 750, 828, 1080, 1200, 1920, 2048, 3840)
EXTENSIONS = {"jpg": ImageFormat.JPEG, "webp": ImageFormat.WEBP, "avif": ImageFormat.AVIF, "png": ImageFormat.PNG}
_WIDTH_LEAF = re.compile(r"w(?P<width>[^.-]*)(?:-(?P<ratio>[^.]*))?(?:\.(?P<ext>.*))?", re.DOTALL)
_DIGITS = re.compile(r"[1-9][0-9]{0,4}")
MAX_RATIO_SIDE = 100
# The aspect ratios anyone may ask for, unsigned (ONDEMAND_RATIOS): portrait and landscape pairs of
# the usual card, story, photo and screen shapes.
DEFAULT_RATIOS = ("1x1", "4x5", "3x4", "2x3", "9x16", "4x3", "3x2", "16x9", "21x9")
_RATIO = re.compile(r"(?P<a>[1-9][0-9]{0,2})x(?P<b>[1-9][0-9]{0,2})")
# What a ratio may have been meant as, to name its one spelling in the refusal: `16X9`, `16:9`,
# `016x09`, `32x18`, `1920x1080`.
# Ratios whose known name is not their lowest terms: that name is their one spelling.
_NAMED = {(7, 3): (21, 9)}
_RATIO_LIKE = re.compile(r"0*(?P<a>[0-9]{1,9})\s*[xX:*×]\s*0*(?P<b>[0-9]{1,9})")
# RFC 9110's qvalue: 0 to 1, at most three decimals. Anything else refuses the type, exactly as the
# CloudFront Function in the templates does (the two must store one request under one key).
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


class BadOutput(ValueError):
    """The leaf looks like a width URL but is not a valid one (400)."""


@dataclass(frozen=True, order=True)
class Ratio:
    """An aspect ratio A:B in lowest terms, each side 1…MAX_RATIO_SIDE: `16x9` in a leaf."""

    a: int
    b: int

    def __post_init__(self) -> None:
        if _canonical(self.a, self.b) != (self.a, self.b):
            raise ValueError(f"{self.a}x{self.b} is not a ratio in lowest terms with sides 1 to {MAX_RATIO_SIDE}")

    def __str__(self) -> str:
        return f"{self.a}x{self.b}"

    def window(self, width: int, height: int) -> tuple[float, float]:
        """The largest A:B window of a `width`×`height` image (the window a `cover` crop takes)."""
        if width * self.b >= height * self.a:
            return height * self.a / self.b, float(height)
        return float(width), width * self.b / self.a

    def size(self, width: int, source_width: int, source_height: int) -> tuple[int, int]:
        """The output's pixel size: `width` wide, or the window's own width when it is narrower
        (never upscaled); the height follows the ratio (at least 1 px, at most the window's)."""
        window_w, window_h = self.window(source_width, source_height)
        out_w = max(1, min(width, int(window_w + 1e-9)))
        out_h = max(1, min(round(out_w * self.b / self.a), int(window_h + 1e-9) or 1))
        return out_w, out_h


def _canonical(a: int, b: int) -> tuple[int, int] | None:
    """The one spelling of the ratio a:b (lowest terms, or its known name), or None when a side is
    0 or the lowest terms have a side over MAX_RATIO_SIDE."""
    if a < 1 or b < 1:
        return None
    d = gcd(a, b)
    a, b = a // d, b // d
    if a > MAX_RATIO_SIDE or b > MAX_RATIO_SIDE:
        return None
    return _NAMED.get((a, b), (a, b))


def parse_ratio(raw: str) -> Ratio:
    """`16x9` → Ratio(16, 9). BadOutput naming the one spelling when there is one (`32x18`: use 16x9)."""
    match = _RATIO.fullmatch(raw)
    if match is not None:
        a, b = int(match["a"]), int(match["b"])
        if _canonical(a, b) == (a, b):
            return Ratio(a, b)
    rule = f"a ratio is A x B in lowest terms, each a whole number from 1 to {MAX_RATIO_SIDE} (e.g. 16x9)"
    like = _RATIO_LIKE.fullmatch(raw)
    canonical = _canonical(int(like["a"]), int(like["b"])) if like is not None else None
    if canonical is not None:
        raise BadOutput(f"ratio {raw!r} has another spelling: use {canonical[0]}x{canonical[1]} ({rule})")
    raise BadOutput(f"ratio {raw!r} is not one: {rule}")


def parse_ratios(raw: str) -> tuple[Ratio, ...]:
    """ONDEMAND_RATIOS: comma-separated ratios (`16x9,1x1`); ValueError naming the bad one."""
    ratios = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            ratios.append(parse_ratio(part))
        except BadOutput as exc:
            raise ValueError(str(exc)) from None
    return tuple(dict.fromkeys(ratios))


@dataclass(frozen=True)
class WidthRequest:
    """`w<width>[-<A>x<B>][.<ext>]`: `format` None means "negotiate from Accept"; `ratio` None
    keeps the image's own aspect."""

    width: int
    format: ImageFormat | None
    ratio: Ratio | None = None

    @property
    def leaf(self) -> str:
        """The stored leaf; None-format requests are resolved with `negotiated` first."""
        return self.unformatted if self.format is None else f"{self.unformatted}.{self.format.extension}"

    @property
    def unformatted(self) -> str:
        """`w640` (`w640-16x9`): what a signature covers (it authorises a size and shape; the format
        is the browser's choice)."""
        return f"w{self.width}" if self.ratio is None else f"w{self.width}-{self.ratio}"


def is_width_leaf(leaf: str) -> bool:
    """Whether `leaf` is meant as a width URL: `w` then a digit, or `w…` with an extension."""
    return leaf.startswith("w") and (leaf[1:2].isdigit() or "." in leaf)


def parse_width(leaf: str) -> WidthRequest:
    """`w640.webp` → WidthRequest(640, WEBP); `w640` → WidthRequest(640, None);
    `w640-16x9.webp` → WidthRequest(640, WEBP, Ratio(16, 9)). BadOutput otherwise."""
    match = _WIDTH_LEAF.fullmatch(leaf)
    if match is None:
        raise BadOutput(f"{leaf!r} is not a width URL (w<WIDTH>[-<A>x<B>][.jpg|.webp|.avif|.png])")
    raw_width, raw_ratio, ext = match["width"], match["ratio"], match["ext"]
    if not _DIGITS.fullmatch(raw_width):
        raise BadOutput(f"width {raw_width!r} must be a whole number from 1 to {MAX_WIDTH}, without leading zeros")
    width = int(raw_width)
    if width > MAX_WIDTH:
        raise BadOutput(f"width {width} is over the {MAX_WIDTH}-pixel maximum")
    ratio = None if raw_ratio is None else parse_ratio(raw_ratio)
    if ext is None:
        return WidthRequest(width, None, ratio)
    if ext not in EXTENSIONS:
        raise BadOutput(f"unknown extension {ext!r}: use one of {', '.join(EXTENSIONS)} (or none, to negotiate)")
    return WidthRequest(width, EXTENSIONS[ext], ratio)


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
