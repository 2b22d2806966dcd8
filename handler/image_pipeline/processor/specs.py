"""What the processor is asked for (variant specs, limits) and what it gives back.

Specs are frozen and validated on construction, so a bad spec fails where it is written (at cold
start, from settings) and never halfway through an image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from PIL import Image


class ImageFormat(str, Enum):
    """Output formats. The value is the name used in settings, keys and manifests."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    GIF = "gif"
    AVIF = "avif"

    @property
    def extension(self) -> str:
        return "jpg" if self is ImageFormat.JPEG else self.value

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def pillow_name(self) -> str:
        return self.value.upper()

    @property
    def has_alpha(self) -> bool:
        return self is not ImageFormat.JPEG

    @property
    def can_animate(self) -> bool:
        return self in (ImageFormat.GIF, ImageFormat.WEBP)

    @classmethod
    def parse(cls, value: str | ImageFormat) -> ImageFormat:
        if isinstance(value, ImageFormat):
            return value
        name = value.strip().lower()
        name = {"jpg": "jpeg"}.get(name, name)
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown image format {value!r} (choose from {choices})") from None


class Fit(str, Enum):
    """How a variant fills its box (sharp's vocabulary)."""

    CONTAIN = "contain"  # whole image inside the box, aspect kept, never upscaled
    COVER = "cover"  # fills the box exactly, cropping the overflow (never upscaled past the source)


class Gravity(str, Enum):
    """Which part of the image a `cover` crop keeps."""

    CENTRE = "centre"
    NORTH = "north"
    SOUTH = "south"
    EAST = "east"
    WEST = "west"
    NORTHEAST = "northeast"
    NORTHWEST = "northwest"
    SOUTHEAST = "southeast"
    SOUTHWEST = "southwest"
    ENTROPY = "entropy"  # the window with the most detail (Shannon entropy)
    ATTENTION = "attention"  # the window with the most edges and saturated colour
    AUTO = "auto"  # the subject: the largest face and as many others as fit, else the focal point
    # (ProcessedImage.focal_point); the default gravity of `cover` variants


DEFAULT_QAUTO_TARGET = 0.98  # luminance SSIM a `qauto` variant keeps against its unencoded pixels
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_DIMENSION = 16384


def _enum(enum_type, value, what: str):
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).strip().lower().replace("center", "centre"))
    except ValueError:
        choices = ", ".join(v.value for v in enum_type)
        raise ValueError(f"unknown {what} {value!r} (choose from {choices})") from None


@dataclass(frozen=True)
class VariantConfig:
    """One output: a name, a box, how to fit it, and how to encode it.

    `format=None` keeps the source's format when it is a web format (JPEG, PNG, WebP, GIF, AVIF)
    and falls back to JPEG otherwise (HEIC, TIFF, BMP).

    A side of 0 is free: `1600×0` is 1600 px wide and as tall as the aspect ratio makes it
    (never upscaled). Such a box has nothing to crop, so its fit is always `contain`.
    """

    name: str
    max_width: int
    max_height: int
    quality: int = 85
    format: ImageFormat | None = None
    fit: Fit = Fit.CONTAIN
    # Not given (None): `auto` for a cover variant, `centre` otherwise (where nothing is cropped).
    gravity: Gravity = None  # type: ignore[assignment]
    qauto: float | None = None  # target luminance SSIM: `quality` per image, with `quality` as the ceiling
    lazy: bool = False  # not made on upload: made on its first request (ondemand/), then stored
    hdr: bool = False  # keep an upload's HDR gain map: an Ultra HDR JPEG (processor/uhdr.py); JPEG only

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"variant name {self.name!r} must be lowercase letters, digits, '-' or '_'")
        for side in ("max_width", "max_height"):
            value = getattr(self, side)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DIMENSION:
                raise ValueError(f"variant {self.name!r}: {side} must be an integer from 0 (free) to {MAX_DIMENSION}")
        if not (self.max_width or self.max_height):
            raise ValueError(f"variant {self.name!r}: at least one of width and height must be set (0 means free)")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"variant {self.name!r}: quality must be an integer from 1 to 100")
        if self.format is not None:
            object.__setattr__(self, "format", ImageFormat.parse(self.format))
        object.__setattr__(self, "fit", _enum(Fit, self.fit, "fit"))
        if not (self.max_width and self.max_height):
            object.__setattr__(self, "fit", Fit.CONTAIN)  # one free side: nothing to crop
        if cast(Gravity | None, self.gravity) is None:  # the default: chosen by the fit
            object.__setattr__(self, "gravity", Gravity.AUTO if self.fit is Fit.COVER else Gravity.CENTRE)
        object.__setattr__(self, "gravity", _enum(Gravity, self.gravity, "gravity"))
        if self.qauto is not None:
            if isinstance(self.qauto, bool) or not isinstance(self.qauto, (int, float)) or not 0.5 <= self.qauto < 1:
                raise ValueError(f"variant {self.name!r}: qauto is a target SSIM from 0.5 to below 1 (e.g. 0.98)")
            if self.format in (ImageFormat.PNG, ImageFormat.GIF):
                raise ValueError(
                    f"variant {self.name!r}: qauto needs a lossy format (jpeg, webp, avif), not {self.format.value}"
                )
            object.__setattr__(self, "qauto", float(self.qauto))
        if not isinstance(self.hdr, bool):
            raise ValueError(f"variant {self.name!r}: hdr must be true or false")
        if self.hdr and self.format is not ImageFormat.JPEG:
            raise ValueError(
                f"variant {self.name!r}: hdr needs the jpeg format (an Ultra HDR JPEG carries the gain map; "
                "WebP, PNG and GIF have no gain map, and Pillow's AVIF encoder cannot write one)"
            )


DEFAULT_VARIANTS: tuple[VariantConfig, ...] = (
    VariantConfig("thumbnail", 150, 150),
    VariantConfig("medium", 800, 800),
    VariantConfig("large", 1920, 1920),
)


@dataclass(frozen=True)
class Limits:
    """What an input may be before any pixel is decoded."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 60_000_000
    max_frames: int = 300
    allowed_types: frozenset[str] = frozenset({"jpeg", "png", "webp", "gif", "avif", "heif", "tiff", "bmp"})

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        object.__setattr__(self, "allowed_types", frozenset(self.allowed_types))


@dataclass(frozen=True)
class ImageVariant:
    """One encoded output."""

    name: str
    data: bytes = field(repr=False)
    width: int
    height: int
    format: ImageFormat | None  # None only for a preserved original in a non-web format
    content_type: str
    quality: int | None = None  # the encoder quality used (lossy formats only)
    qauto: dict | None = None  # {"target": …, "ssim": …, "trials": …} when the quality was chosen per image
    gain_map: dict | None = None  # `hdr` variants of an upload with a gain map: {"type": …, "kept": bool}

    @property
    def extension(self) -> str:
        return self.format.extension if self.format else self.content_type.split("/")[-1]


@dataclass(frozen=True)
class SourceInfo:
    """What the processor learnt about the input."""

    type: str  # sniffed from the bytes: jpeg, png, webp, gif, avif, heif, tiff, bmp
    width: int  # after EXIF orientation
    height: int
    bytes: int
    frames: int = 1  # of an animation (pages of a TIFF); a JPEG's or a HEIC's other pictures are not frames
    had_icc_profile: bool = False
    gain_map: str | None = None  # an HDR gain map the upload carried: "ultrahdr", "iso21496" or "apple"
    # (processor/gainmap.py); the variants are made from the SDR picture, `hdr` ones carry the map on
    alpha: bool = False  # real transparency (an alpha plane that is not opaque everywhere)


@dataclass(frozen=True)
class Face:
    """One detected face: its box normalised to the upright frame (after EXIF orientation), 0..1
    from the top-left corner, and the detector's confidence (0..1)."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def as_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": self.score}


FOCAL_SOURCES = ("faces", "attention", "manual")


@dataclass(frozen=True)
class ProcessedImage:
    """Everything one `process_image` call produced."""

    source: SourceInfo
    variants: tuple[ImageVariant, ...]
    blurhash: str
    dominant_color: str
    processing_ms: float
    thumbhash: str = ""  # base64, https://evanw.github.io/thumbhash/ (keeps aspect ratio and alpha)
    focal_point: tuple[float, float] = (0.5, 0.5)  # normalised (x, y) of the subject, 0..1 from top-left
    # (frame index, the whole frame at ≤ ImageProcessor.rendition px, RGB/RGBA sRGB): what a check
    # on the picture (moderation) looks at; empty unless the processor was asked for them.
    renditions: tuple[tuple[int, Image.Image], ...] = ()
    faces: tuple[Face, ...] = ()  # detected in the upright frame, largest first
    focal_source: str = "attention"  # what the focal point is: "faces", "attention" or "manual"
    face_detection: dict | None = None  # {"engine": …, "ms": …} and "error" when detection failed
