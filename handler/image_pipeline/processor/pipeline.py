"""The processor: bytes + variant specs in, encoded variants out. Pure: no I/O, no environment.

One ordered pipeline, like imgproxy's:

    check bytes → sniff → open (header only) → limits → shrink-on-load (JPEG draft)
    → decode → orient (EXIF) → colour (→ sRGB) → resize (largest first, each smaller variant
    from the previous result) → crop (cover) → encode → placeholder

Memory stays low because a JPEG is decoded at the smallest DCT scale that still leaves 1.25×
headroom over the largest variant, and nothing is ever held at full resolution twice.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from time import perf_counter

from PIL import Image, ImageOps, ImageSequence

from ..errors import CorruptImage, EmptyFile, TooLarge, TooManyFrames, TooManyPixels, UnsupportedType
from . import geometry, plugins
from .colour import is_rgb_profile, to_srgb
from .encode import encode, prepare
from .placeholder import blurhash, dominant_color
from .sniff import DECODABLE, sniff
from .specs import DEFAULT_VARIANTS, Fit, ImageFormat, ImageVariant, Limits, ProcessedImage, SourceInfo, VariantConfig

_WEB_FORMATS = {f.value for f in ImageFormat}
_SWAPS_SIDES = {5, 6, 7, 8}
_ANIMATED_TYPES = {"gif", "webp", "png", "avif"}  # containers whose frames are an animation
_ORIENTATION = 0x0112
# Errors Pillow and its plugins raise for files that are not what they claim to be.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, Image.UnidentifiedImageError)


class ImageProcessor:
    """Turn one uploaded image into web variants.

    `strip_metadata` drops EXIF/XMP (GPS, camera serials) from every output; `keep_icc_profile`
    embeds the source's ICC profile instead of converting the pixels to sRGB;
    `background_color` fills transparency only for formats without alpha (JPEG).
    """

    def __init__(
        self,
        variants: Iterable[VariantConfig] | None = None,
        preserve_original: bool = False,
        strip_metadata: bool = True,
        background_color: tuple[int, int, int] = (255, 255, 255),
        *,
        limits: Limits | None = None,
        keep_icc_profile: bool = False,
    ) -> None:
        self.variants = tuple(variants) if variants is not None else DEFAULT_VARIANTS
        if not self.variants or not all(isinstance(v, VariantConfig) for v in self.variants):
            raise ValueError("variants must be a non-empty list of VariantConfig")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or (preserve_original and "original" in names):
            raise ValueError(f"variant names must be unique: {names}")
        if len(background_color) != 3 or not all(0 <= c <= 255 for c in background_color):
            raise ValueError("background_color must be an (r, g, b) tuple of 0..255")
        self.preserve_original = preserve_original
        self.strip_metadata = strip_metadata
        self.background_color = tuple(background_color)
        self.limits = limits or Limits()
        self.keep_icc_profile = keep_icc_profile

    def process(self, data: bytes) -> list[ImageVariant]:
        """The variants for `data`, in the order the specs were given."""
        return list(self.process_image(data).variants)

    def process_image(self, data: bytes) -> ProcessedImage:
        """Variants plus what the manifest needs: source facts, BlurHash, dominant colour, time."""
        started = perf_counter()
        kind = self._check_input(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            warnings.filterwarnings("ignore", "(?i).*corrupt EXIF", UserWarning)  # EXIF is dropped anyway
            image = _open(data, kind)
            try:
                return self._run(image, data, kind, started)
            except Image.DecompressionBombError as exc:
                raise TooManyPixels(str(exc)) from None
            except _DECODE_ERRORS as exc:
                raise CorruptImage(f"{kind} could not be decoded: {exc}") from None
            finally:
                image.close()

    # -- steps -----------------------------------------------------------------------------------

    def _check_input(self, data: bytes) -> str:
        if not data:
            raise EmptyFile("the upload is empty (0 bytes)")
        if len(data) > self.limits.max_bytes:
            raise TooLarge.over(len(data), self.limits.max_bytes)
        kind = sniff(data)
        if kind is None:
            raise UnsupportedType("not a recognised image (checked the file's bytes, not its name)")
        if kind not in DECODABLE or kind not in self.limits.allowed_types:
            raise UnsupportedType(f"{kind} is not an accepted image type")
        return kind

    def _run(self, image: Image.Image, data: bytes, kind: str, started: float) -> ProcessedImage:
        stored_w, stored_h = image.size
        if stored_w < 1 or stored_h < 1:
            raise CorruptImage(f"image declares {stored_w}×{stored_h} pixels")
        if stored_w * stored_h > self.limits.max_pixels:
            raise TooManyPixels(f"{stored_w}×{stored_h} is over the {self.limits.max_pixels}-pixel limit")
        frames = getattr(image, "n_frames", 1)
        formats = {spec.name: self._format_for(spec, kind) for spec in self.variants}
        # Only real animations: the extra frames of an MPO (phone) JPEG or a multi-page TIFF are
        # other pictures, not frames to play.
        animated = (
            kind in _ANIMATED_TYPES
            and getattr(image, "is_animated", False)
            and any(f.can_animate for f in formats.values())
        )
        if animated:
            if frames > self.limits.max_frames:
                raise TooManyFrames(f"{frames} frames is over the {self.limits.max_frames}-frame limit")
            if frames * stored_w * stored_h > self.limits.max_pixels:
                raise TooManyPixels(f"{frames} frames of {stored_w}×{stored_h} is over the pixel limit")

        exif = image.getexif()
        orientation = exif.get(_ORIENTATION, 1)
        swapped = orientation in _SWAPS_SIDES
        width, height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
        icc = image.info.get("icc_profile")

        extent = (float(stored_w), float(stored_h))
        if kind == "jpeg":
            target = geometry.draft_size(self.variants, width, height)
            if target:
                drafted = image.draft(image.mode, target[::-1] if swapped else target)
                if drafted is not None:
                    extent = drafted[1][2:]
        image.load()
        oriented = ImageOps.exif_transpose(image)
        keep_exif = None
        if not self.strip_metadata:
            upright_exif = oriented.getexif()
            upright_exif[_ORIENTATION] = 1  # the pixels are upright now
            keep_exif = upright_exif.tobytes()
        working = to_srgb(oriented, icc, self.keep_icc_profile)
        keep_icc = icc if self.keep_icc_profile and is_rgb_profile(icc) and working.mode in ("RGB", "RGBA") else None
        frame = geometry.content_box(working.size, extent, orientation)

        stills = self._resize_all(working, frame, width, height)
        moving = [spec for spec in self.variants if animated and formats[spec.name].can_animate]
        animations = self._animations(image, moving, icc, width, height) if moving else {}
        variants = []
        for spec in self.variants:
            fmt = formats[spec.name]
            frame_images, durations = animations.get(spec.name, ([stills[spec.name]], None))
            prepared = [prepare(f, fmt, self.background_color) for f in frame_images]
            encoded = encode(
                prepared,
                fmt,
                spec.quality,
                icc_profile=keep_icc,
                exif=keep_exif,
                durations=durations,
                loop=image.info.get("loop"),
            )
            variants.append(
                ImageVariant(spec.name, encoded, prepared[0].width, prepared[0].height, fmt, fmt.content_type)
            )
        smallest = min(stills.values(), key=lambda im: im.width * im.height)
        if self.preserve_original:
            web = ImageFormat(kind) if kind in _WEB_FORMATS else None
            variants.append(ImageVariant("original", data, width, height, web, DECODABLE[kind][1]))
        return ProcessedImage(
            source=SourceInfo(kind, width, height, len(data), frames, bool(icc)),
            variants=tuple(variants),
            blurhash=blurhash(smallest),
            dominant_color=dominant_color(smallest),
            processing_ms=round((perf_counter() - started) * 1000, 1),
        )

    def _resize_all(self, working: Image.Image, frame: geometry.Box, width: int, height: int) -> dict[str, Image.Image]:
        """Every variant's still image; each resize starts from the smallest image already made
        that is still at least as large as what it needs (cascade), never from the full decode
        when a smaller result will do."""
        bases = [(working, frame)]
        out: dict[str, Image.Image] = {}
        for spec in _largest_first(self.variants, width, height):
            out[spec.name] = _render(bases, spec, width, height)
        return out

    def _animations(self, image: Image.Image, specs: list[VariantConfig], icc: bytes | None, width: int, height: int):
        """Every frame decoded once and resized (and cropped) for each animated variant, like the
        first frame; durations kept. {variant name: (frames, durations)}"""
        specs = _largest_first(specs, width, height)
        frames: dict[str, list[Image.Image]] = {spec.name: [] for spec in specs}
        durations = []
        for frame in ImageSequence.Iterator(image):
            rgba = to_srgb(frame.convert("RGBA"), icc, self.keep_icc_profile)
            bases = [(rgba, (0.0, 0.0, *rgba.size))]
            for spec in specs:
                frames[spec.name].append(_render(bases, spec, width, height))
            durations.append(frame.info.get("duration", 100))
        image.seek(0)
        return {name: (images, durations) for name, images in frames.items()}

    def _format_for(self, spec: VariantConfig, kind: str) -> ImageFormat:
        if spec.format is not None:
            return spec.format
        return ImageFormat(kind) if kind in _WEB_FORMATS else ImageFormat.JPEG


def _open(data: bytes, kind: str) -> Image.Image:
    """Read the header only; the decoder is restricted to the sniffed format."""
    plugins.load(DECODABLE[kind][0])
    try:
        return Image.open(io.BytesIO(data), formats=[DECODABLE[kind][0]])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"not a readable {kind} file: {exc}") from None


def _largest_first(specs: Iterable[VariantConfig], width: int, height: int) -> list[VariantConfig]:
    """Resize order for the cascade: each variant can start from the one before it."""
    return sorted(specs, key=lambda s: geometry.resized_size(s, width, height), reverse=True)


def _render(bases: list[tuple[Image.Image, geometry.Box]], spec: VariantConfig, width: int, height: int) -> Image.Image:
    """One variant from the smallest base that still has enough pixels. `bases` holds full-frame
    images with the box where the frame lies in each; a full-frame result is added to them."""
    full = geometry.resized_size(spec, width, height)
    fitting = [(im, box) for im, box in bases if box[2] - box[0] >= full[0] - 0.01 and box[3] - box[1] >= full[1] - 0.01]
    base, box = min(fitting, key=lambda b: b[0].width * b[0].height) if fitting else bases[0]
    # reducing_gap: integer box-reduce first (fast), then Lanczos over the last ≥ 3× (quality).
    if spec.fit is Fit.COVER and spec.gravity not in geometry.CONTENT_AWARE:
        x0, y0, x1, y1 = geometry.cover_region(spec, width, height)
        sx, sy = (box[2] - box[0]) / width, (box[3] - box[1]) / height
        region = (box[0] + x0 * sx, box[1] + y0 * sy, box[0] + x1 * sx, box[1] + y1 * sy)
        out = geometry.output_size(spec, width, height)
        if region == (0.0, 0.0, *base.size) and base.size == out:
            return base
        return base.resize(out, Image.Resampling.LANCZOS, box=region, reducing_gap=3.0)
    if base.size == full and box == (0.0, 0.0, *full):
        resized = base
    else:
        resized = base.resize(full, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        bases.append((resized, (0.0, 0.0, *resized.size)))
    if spec.fit is not Fit.COVER:
        return resized
    out = geometry.output_size(spec, width, height)
    return resized if resized.size == out else resized.crop(geometry.crop_box(resized, out, spec.gravity))
