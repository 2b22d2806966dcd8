"""The processor: bytes + variant specs in, encoded variants out. Pure: no I/O, no environment.

One ordered list of small steps over one `Job`, like imgproxy's:

    PIPELINE  prepare (limits, formats, orientation) → gain map (noted from the headers: variants
              come from the SDR picture) → scale on load (JPEG draft, WebP scaled decode) → decode
              (WebP stills straight into a buffer of ours) → normalise (mode; real alpha
              premultiplied once) → reduce (integer box shrink for formats without shrink-on-load)
              → orient (EXIF) → resize (largest first, each smaller variant from the previous
              result) → tone map (HDR10 HEICs: PQ/HLG → SDR, processor/tonemap.py) → colour
              (→ sRGB, on the small results, as libvips does) → focus (focal point of the whole
              frame)
              → crop (content-aware gravities: entropy, attention, auto = around the focal point)
    FINALIZE  encode (mode fitted to the encoder, metadata only when kept) → gain map (`hdr` JPEG
              variants of an Ultra HDR / ISO 21496-1 upload: its gain map decoded, oriented,
              cropped and resized like them, written as an Ultra HDR JPEG) → placeholder

Memory stays low because a JPEG is decoded at the smallest DCT scale that still leaves 1.25×
headroom over the largest variant (a large WebP still at 2× it, scaled by libwebp), and nothing
is ever held at full resolution twice.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from time import perf_counter
from typing import cast

from PIL import Image, ImageSequence, UnidentifiedImageError

from ..errors import CorruptImage, EmptyFile, ImageRejected, TooLarge, TooManyFrames, TooManyPixels, UnsupportedType
from . import gainmap, geometry, plugins, quality, subject, tonemap, uhdr
from .colour import convert_profile, drop_opaque_alpha, is_rgb_profile, normalise_mode, to_srgb
from .encode import encode, prepare
from .placeholder import blurhash, dominant_color, thumbhash
from .sniff import DECODABLE, sniff
from .specs import (
    DEFAULT_VARIANTS,
    Face,
    Fit,
    Gravity,
    ImageFormat,
    ImageVariant,
    Limits,
    ProcessedImage,
    SourceInfo,
    VariantConfig,
)

_WEB_FORMATS = {f.value for f in ImageFormat}
_SWAPS_SIDES = {5, 6, 7, 8}
_ANIMATED_TYPES = {"gif", "webp", "png", "avif"}  # containers whose frames are an animation
_ONE_PICTURE = {"jpeg", "heif"}  # their other pictures (MPF images, HEIF top-level items) are not frames
_ORIENTATION = 0x0112
_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_REDUCING_GAP = 3.0  # box-reduce while ≥ 3× is left for Lanczos (as resize(reducing_gap=3) does)
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBX", "RGBa", "CMYK"}  # not P: indexes cannot be averaged
RENDITION_FRAMES = 4  # an animation's frames looked at by a check on the picture (see `_frames`)
_PREVIEW = 64  # px, longest side of the full-frame picture the placeholders are computed from
# Errors Pillow and its plugins raise for files that are not what they claim to be.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, UnidentifiedImageError)
# pillow-heif also raises RuntimeError for what libheif refuses while decoding (its security limits among it).
_HEIF_ERRORS = (*_DECODE_ERRORS, RuntimeError)
# libheif security limits that are about the picture's size or the memory decoding it takes.
_SIZE_LIMIT = re.compile(r"image size|memory usage|number of tiles", re.IGNORECASE)


@dataclass(eq=False)
class Job:
    """Everything one image's steps share: what the header said, the pixels so far, the outputs."""

    data: bytes
    kind: str
    image: Image.Image  # the opened file
    formats: dict[str, ImageFormat] = field(default_factory=dict)
    frames: int = 1
    animated: bool = False
    gain_map: str | None = None  # what gainmap.detect found
    hdr_source: uhdr.Source | None = None  # the gain map `hdr` variants carry on (found when one asks for it)
    orientation: int = 1
    width: int = 0  # upright
    height: int = 0
    icc: bytes | None = None  # the source's profile (for an HDR10 HEIC: the one its tone-mapped pixels get)
    alpha: bool = False  # real transparency in the first frame
    extent: tuple[float, float] = (0.0, 0.0)  # where the whole frame lies in the decoded pixels
    decode_size: tuple[int, int] | None = None  # a WebP still: scaled while decoding to this (stored sides)
    working: Image.Image | None = None  # the decoded (drafted/reduced/oriented) image
    frame: geometry.Box = (0.0, 0.0, 0.0, 0.0)
    stills: dict[str, Image.Image] = field(default_factory=dict)  # variant name → its pixels
    crops: dict[str, tuple[geometry.Box, tuple[int, int]]] = field(default_factory=dict)  # content-aware
    # cover variant → (the window kept, the full-frame size it was cut from)
    preview: Image.Image | None = None  # ≤ 64 px, whole frame: what the placeholders describe
    renditions: list[tuple[int, Image.Image]] = field(default_factory=list)  # (frame, ≤ `rendition` px)
    keep_exif: bytes | None = None
    keep_icc: bytes | None = None
    outputs: list[ImageVariant] = field(default_factory=list)
    blurhash: str = ""
    thumbhash: str = ""
    focal_point: tuple[float, float] = (0.5, 0.5)
    manual_focus: tuple[float, float] | None = None  # a focal point set by hand: the subject
    given_faces: tuple[Face, ...] | None = None  # faces found before (a manifest's): not detected again
    detect_image: Image.Image | None = None  # ≤ 640 px, whole frame: what the face detector is given
    faces: tuple[Face, ...] = ()
    focal_source: str = "attention"
    face_detection: dict | None = None
    dominant_color: str = ""

    def decoded(self) -> Image.Image:
        """`working`: there from `_decode` until `_resize` has made the stills from it."""
        assert self.working is not None, "no decoded pixels at this step"
        return self.working

    def placeholder_source(self) -> Image.Image:
        """`preview`: there from `_resize` on."""
        assert self.preview is not None, "no preview before the resize"
        return self.preview


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
        rendition: int = 0,
        face_detector: subject.FaceDetector | None = None,
    ) -> None:
        """`rendition`: also hand back the whole frame at ≤ this many px (longest side), in sRGB, from
        pixels already decoded (an animation: its first frame and a few evenly spaced ones), for a
        check on the picture before anything is published (moderation). 0: none."""
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
        red, green, blue = background_color  # a list is taken too
        self.background_color = (red, green, blue)
        self.limits = limits or Limits()
        self.keep_icc_profile = keep_icc_profile
        self.rendition = max(0, int(rendition))
        # Finds the faces `auto` crops keep and the manifest records; None: no detection.
        self.face_detector = face_detector

    @property
    def face_engine(self) -> str:
        """The face detector's name ("off" without one): it decides where `auto` crops fall."""
        return self.face_detector.name if self.face_detector is not None else "off"

    def process(self, data: bytes) -> list[ImageVariant]:
        """The variants for `data`, in the order the specs were given."""
        return list(self.process_image(data).variants)

    def process_image(
        self,
        data: bytes,
        *,
        focal_point: tuple[float, float] | None = None,
        faces: Iterable[Face] | None = None,
    ) -> ProcessedImage:
        """Variants plus what the manifest needs: source facts, BlurHash, dominant colour, faces,
        focal point, time.

        `focal_point`: a point set by hand (normalised x, y of the upright frame): it is the
        subject (`auto` crops keep it; faces are still detected and recorded). `faces`: faces
        already found for this image (a manifest's): used as they are, the detector not run."""
        started = perf_counter()
        manual = _normalised_point(focal_point) if focal_point is not None else None
        known = tuple(faces) if faces is not None else None
        kind = self._check_input(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            warnings.filterwarnings("ignore", "(?i).*corrupt EXIF", UserWarning)  # EXIF is dropped anyway
            image = _open(data, kind, self.limits.max_pixels)
            errors = _HEIF_ERRORS if kind == "heif" else _DECODE_ERRORS
            try:
                return self._run(image, data, kind, started, manual, known)
            except Image.DecompressionBombError as exc:
                raise TooManyPixels(str(exc)) from None
            except errors as exc:
                raise _refusal(kind, str(exc), f"{kind} could not be decoded") from None
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

    def _run(
        self,
        image: Image.Image,
        data: bytes,
        kind: str,
        started: float,
        manual: tuple[float, float] | None = None,
        known: tuple[Face, ...] | None = None,
    ) -> ProcessedImage:
        job = Job(data=data, kind=kind, image=image, manual_focus=manual, given_faces=known)
        for step in self.PIPELINE:
            step(self, job)
        for step in self.FINALIZE:
            step(self, job)
        if self.preserve_original:
            web = ImageFormat(kind) if kind in _WEB_FORMATS else None
            job.outputs.append(ImageVariant("original", data, job.width, job.height, web, DECODABLE[kind][1]))
        return ProcessedImage(
            source=SourceInfo(
                kind, job.width, job.height, len(data), job.frames, bool(job.icc), job.gain_map, alpha=job.alpha
            ),
            variants=tuple(job.outputs),
            blurhash=job.blurhash,
            dominant_color=job.dominant_color,
            processing_ms=round((perf_counter() - started) * 1000, 1),
            thumbhash=job.thumbhash,
            focal_point=job.focal_point,
            renditions=tuple(job.renditions),
            faces=job.faces,
            focal_source=job.focal_source,
            face_detection=job.face_detection,
        )

    # -- main pipeline: from the opened file to every variant's pixels --------------------------------

    def _prepare(self, job: Job) -> None:
        """Limits on what the header declares, the output formats, orientation, animation."""
        image = job.image
        stored_w, stored_h = image.size
        if stored_w < 1 or stored_h < 1:
            raise CorruptImage(f"image declares {stored_w}×{stored_h} pixels")
        if stored_w * stored_h > self.limits.max_pixels:
            raise TooManyPixels(f"{stored_w}×{stored_h} is over the {self.limits.max_pixels}-pixel limit")
        # Only real animations: the extra frames of an MPO (phone) JPEG or a multi-page TIFF are
        # other pictures, not frames to play; a JPEG's (a gain map, a stereo view) and a HEIC's
        # (thumbnails, bursts) are not counted either. Variants come from the first (primary) one.
        job.frames = 1 if job.kind in _ONE_PICTURE else getattr(image, "n_frames", 1)
        job.formats = {spec.name: self.format_for(spec, job.kind) for spec in self.variants}
        job.animated = (
            job.kind in _ANIMATED_TYPES
            and getattr(image, "is_animated", False)
            and any(f.can_animate for f in job.formats.values())
        )
        if job.animated:
            if job.frames > self.limits.max_frames:
                raise TooManyFrames(f"{job.frames} frames is over the {self.limits.max_frames}-frame limit")
            if job.frames * stored_w * stored_h > self.limits.max_pixels:
                raise TooManyPixels(f"{job.frames} frames of {stored_w}×{stored_h} is over the pixel limit")
        exif = image.getexif()
        job.orientation = exif.get(_ORIENTATION, 1)
        if job.orientation not in _TRANSPOSE:
            job.orientation = 1
        swapped = job.orientation in _SWAPS_SIDES
        job.width, job.height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
        job.icc = image.info.get("icc_profile")
        job.extent = (float(stored_w), float(stored_h))
        if not self.strip_metadata:
            exif[_ORIENTATION] = 1  # the pixels will be upright
            job.keep_exif = exif.tobytes()

    def _gain_map(self, job: Job) -> None:
        """An HDR gain map (Ultra HDR, ISO 21496-1, Apple), from the headers: it is recorded, the
        variants are made from the SDR picture it belongs to. When a variant is marked `hdr`, a
        JPEG's gain map is located (its MPF index; still not decoded)."""
        job.gain_map = gainmap.detect(job.image, job.data, job.kind)
        if job.gain_map is not None and job.kind == "jpeg" and any(spec.hdr for spec in self.variants):
            job.hdr_source = uhdr.find(job.data)

    def _scale_on_load(self, job: Job) -> None:
        """Decode no larger than needed: the smallest size that leaves the Lanczos its headroom
        over every variant. JPEG: the DCT scale (½, ¼, ⅛) at or above DRAFT_HEADROOM; a WebP
        still: exactly RESCALE_HEADROOM (libwebp scales while decoding, see `_webp_still`)."""
        if job.kind not in ("jpeg", "webp") or (job.kind == "webp" and job.frames != 1):
            return
        headroom = geometry.DRAFT_HEADROOM if job.kind == "jpeg" else geometry.RESCALE_HEADROOM
        target = geometry.draft_size(self.variants, job.width, job.height, headroom)
        if target is None:
            return
        stored = target[::-1] if job.orientation in _SWAPS_SIDES else target
        if job.kind == "webp":
            job.decode_size = stored
            return
        drafted = job.image.draft(job.image.mode, stored)
        if drafted is not None:
            job.extent = drafted[1][2:]

    def _decode(self, job: Job) -> None:
        """Decode the pixels (the first frame); a WebP still straight into a buffer it owns."""
        job.working = self._webp_still(job) if job.kind == "webp" and job.frames == 1 else None
        if job.working is None:
            job.image.load()
            job.working = job.image

    def _webp_still(self, job: Job) -> Image.Image | None:
        """libwebp into our buffer (`webp.py`), scaled to `job.decode_size` where it can be;
        Pillow's decoder is dropped first, with its copy of the file and its canvases, before
        they are ever written. Where libwebp is not reachable Pillow decodes at full size
        without an extra copy (`_load_webp_still`); where libwebp refuses the bitstream, Pillow's
        decoder, opened again, gives the verdict."""
        from . import webp  # ctypes and the library lookup: on the first WebP, not at cold start

        found = webp.features(job.data)
        if found is None or found.has_animation or (found.width, found.height) != job.image.size:
            return _load_webp_still(job.image)
        _drop_decoder(job.image)
        webp.release_freed()
        try:
            pixels = webp.decode_still(job.data, found, job.decode_size)
            job.extent = (float(pixels.width), float(pixels.height))  # the whole frame, whatever the scale
            return pixels
        except webp.Refused:
            job.image.close()
            job.image = _open(job.data, job.kind, self.limits.max_pixels)
            return _load_webp_still(job.image)

    def _reduce(self, job: Job) -> None:
        """Formats without shrink-on-load: an integer box reduce straight after decoding, by the
        factor Pillow's own `reducing_gap=3` would use for the largest variant, so every later
        full-size step (mode change, alpha premultiply) runs on the smaller image."""
        if job.kind == "jpeg" or job.animated:
            return
        # Relative to what was decoded (a WebP may already be scaled on load).
        stored_width = job.height if job.orientation in _SWAPS_SIDES else job.width
        scale = max(geometry.scale_for(spec, job.width, job.height) for spec in self.variants)
        scale *= stored_width / job.extent[0]
        factor = int(1 / scale / _REDUCING_GAP) if scale > 0 else 1
        if factor < 2 or job.decoded().mode not in _REDUCIBLE:
            return
        job.working = job.decoded().reduce(factor)
        job.extent = (job.extent[0] / factor, job.extent[1] / factor)  # Pillow keeps a partial last pixel

    def _orient(self, job: Job) -> None:
        """Apply the EXIF orientation (only when there is one: exif_transpose copies otherwise)."""
        if (method := _TRANSPOSE[job.orientation]) is not None:  # None: orientation 1, upright already
            job.working = job.decoded().transpose(method)
        job.frame = geometry.content_box(job.decoded().size, job.extent, job.orientation)

    def _normalise(self, job: Job) -> None:
        """8-bit modes a resize handles; real alpha premultiplied once for the whole cascade
        (Pillow's resize would premultiply and un-premultiply on every call)."""
        working = drop_opaque_alpha(normalise_mode(job.decoded()))
        job.alpha = working.mode in ("RGBA", "LA")
        if working.mode == "RGBA":
            working = working.convert("RGBa")
        job.working = working

    def _resize(self, job: Job) -> None:
        """Every variant's still image, largest first; each resize starts from the smallest image
        already made that is still at least as large as what it needs (cascade)."""
        bases = [(job.decoded(), job.frame)]
        for spec in _largest_first(self.variants, job.width, job.height):
            job.stills[spec.name] = _render(bases, spec, job.width, job.height)
        # The placeholders' picture: the whole frame, from the smallest full-frame image made.
        base, box = min(bases, key=lambda b: b[0].width * b[0].height)
        scale = min(1.0, _PREVIEW / max(box[2] - box[0], box[3] - box[1]))
        size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
        job.preview = base.resize(size, Image.Resampling.BOX, box=box, reducing_gap=2.0)
        if self.rendition:
            job.renditions = [(0, _rendition(bases, self.rendition))]
        if self.face_detector is not None and job.given_faces is None:
            # The detector's picture: ≤ 640 px of the whole frame, from the smallest full-frame
            # image made that still has that many pixels (no second decode).
            side = subject.DETECT_SIDE
            roomy = [b for b in bases if max(b[1][2] - b[1][0], b[1][3] - b[1][1]) >= side - 0.01] or bases
            base, box = min(roomy, key=lambda b: b[0].width * b[0].height)
            job.detect_image = subject.rendition(base, box)
        job.working = None

    def _tone_map(self, job: Job) -> None:
        """HDR10 HEICs (PQ or HLG in the nclx box, no gain map): on the small results, each
        channel through a table that tone-maps the signal to SDR (processor/tonemap.py), and the
        profile of that result handed to `_colour`, which converts it to sRGB."""
        if job.kind != "heif" or (found := tonemap.curve(job.image.info)) is None:
            return
        table, job.icc = found
        done: dict[int, Image.Image] = {}
        for name, still in job.stills.items():
            if id(still) not in done:
                done[id(still)] = _through(still, table)
            job.stills[name] = done[id(still)]
        job.preview = _through(job.placeholder_source(), table)
        job.renditions = [(i, _through(r, table)) for i, r in job.renditions]
        if job.detect_image is not None:
            job.detect_image = _through(job.detect_image, table)

    def _colour(self, job: Job) -> None:
        """To sRGB (or the kept profile) on the small results, converting each distinct image once."""
        done: dict[int, Image.Image] = {}
        for name, still in job.stills.items():
            if id(still) not in done:
                done[id(still)] = convert_profile(still, job.icc, self.keep_icc_profile)
            job.stills[name] = done[id(still)]
        job.preview = convert_profile(job.placeholder_source(), job.icc, self.keep_icc_profile)
        job.renditions = [(i, convert_profile(r, job.icc, False)) for i, r in job.renditions]
        if job.detect_image is not None:  # the detector sees sRGB, whatever the outputs keep
            job.detect_image = convert_profile(job.detect_image, job.icc, False)
        if self.keep_icc_profile and is_rgb_profile(job.icc):
            modes = {im.mode for im in job.stills.values()}
            job.keep_icc = job.icc if modes <= {"RGB", "RGBA"} else None

    def _faces(self, job: Job) -> None:
        """Faces, once per image, on the ≤ 640 px rendition of the whole frame (or the ones given)."""
        if job.given_faces is not None:
            job.faces = tuple(sorted(job.given_faces, key=lambda f: f.area, reverse=True))
            job.face_detection = {"engine": "given", "faces": len(job.faces)}
            return
        if self.face_detector is None or job.detect_image is None:
            return
        found = subject.detect(self.face_detector, _rgb(job.detect_image))
        job.detect_image = None
        job.faces, job.face_detection = found.faces, found.record

    def _focus(self, job: Job) -> None:
        """The focal point, once per image (the manifest records it; `auto` crops keep it): the one
        set by hand, else the centre of the faces weighted by size, else the attention centroid of
        the whole frame."""
        if job.manual_focus is not None:
            job.focal_point, job.focal_source = job.manual_focus, "manual"
        elif job.faces:
            job.focal_point, job.focal_source = geometry.faces_centre(job.faces), "faces"
        else:
            job.focal_point, job.focal_source = geometry.focal_point(job.placeholder_source()), "attention"

    def _crop(self, job: Job) -> None:
        """Content-aware `cover` crops, scored on the converted pixels; the window is recorded (a
        gain map is cut the same way)."""
        for spec in self.variants:
            if spec.fit is Fit.COVER and spec.gravity in geometry.CONTENT_AWARE:
                still = job.stills[spec.name]
                box = _crop_box(still, spec, job.width, job.height, job.focal_point, job.faces, job.manual_focus)
                job.crops[spec.name] = (box, still.size)
                job.stills[spec.name] = still if box == (0, 0, *still.size) else still.crop(box)

    # -- finalize: encode and describe ---------------------------------------------------------------

    def _encode(self, job: Job) -> None:
        """Fit each image to its encoder and encode it; metadata only when asked to keep it.
        `qauto` variants search their quality (processor/quality.py), smallest first, each
        starting from the quality the previous one of its format chose."""
        moving = [spec for spec in self.variants if job.animated and job.formats[spec.name].can_animate]
        animations = {}
        if moving:
            animations = self._animations(
                job.image, moving, job.icc, job.width, job.height, job.focal_point, job.faces, job.manual_focus
            )
        seeds: dict[ImageFormat, int] = {}
        done: dict[str, ImageVariant] = {}
        for spec in reversed(_largest_first(self.variants, job.width, job.height)):
            fmt = job.formats[spec.name]
            frame_images, durations = animations.get(spec.name, ([job.stills[spec.name]], None))
            prepared = [prepare(f, fmt, self.background_color) for f in frame_images]

            def encode_at(q: int, prepared=prepared, fmt=fmt, durations=durations) -> bytes:
                return encode(
                    prepared,
                    fmt,
                    q,
                    icc_profile=job.keep_icc,
                    exif=job.keep_exif,
                    durations=durations,
                    loop=job.image.info.get("loop"),
                )

            used, chosen = (spec.quality if fmt in quality.LOSSY else None), None
            if spec.qauto is not None and fmt in quality.LOSSY and len(prepared) == 1:
                choice = quality.choose(prepared[0], fmt, spec.quality, spec.qauto, encode_at, seeds.get(fmt))
                seeds[fmt] = used = choice.quality
                encoded = choice.data
                chosen = {"target": choice.target, "ssim": round(choice.ssim, 4), "trials": choice.trials}
            else:
                encoded = encode_at(spec.quality)
            done[spec.name] = ImageVariant(
                spec.name, encoded, prepared[0].width, prepared[0].height, fmt, fmt.content_type, used, chosen
            )
        job.outputs.extend(done[spec.name] for spec in self.variants)

    def _attach_gain_map(self, job: Job) -> None:
        """`hdr` variants of an upload with a gain map: the map, oriented, cropped and resized
        with the variant's own geometry, appended as an Ultra HDR JPEG (processor/uhdr.py). The
        SDR picture stays the bytes `_encode` made. A gain map we cannot carry (Apple's, one
        that does not decode, a HEIC's) leaves the variant SDR, and its record says so."""
        specs = [spec for spec in self.variants if spec.hdr]
        if not specs or job.gain_map is None:
            return
        made: dict[str, bytes] = {}
        if job.hdr_source is not None:
            try:
                made = self._gain_maps(job, job.hdr_source, specs)
            except (*_DECODE_ERRORS, Image.DecompressionBombError):
                made = {}
        for i, variant in enumerate(job.outputs):
            if variant.name in {spec.name for spec in specs}:
                data = made.get(variant.name)
                record = {"type": job.gain_map, "kept": data is not None}
                job.outputs[i] = replace(variant, data=data or variant.data, gain_map=record)

    def _gain_maps(self, job: Job, source: uhdr.Source, specs: list[VariantConfig]) -> dict[str, bytes]:
        """{variant name: Ultra HDR JPEG} for the `hdr` specs. The gain map is decoded once (at
        the DCT scale the largest of them needs, like the primary), oriented like the primary,
        then each variant's region of the upright frame (its `cover` crop, or all of it) is
        resized to the variant's size × the upload's gain-map-to-picture ratio."""
        scale = max(geometry.scale_for(spec, job.width, job.height) for spec in specs) * geometry.DRAFT_HEADROOM
        swapped = job.orientation in _SWAPS_SIDES
        primary = (job.height, job.width) if swapped else (job.width, job.height)  # as stored
        picture, stored, extent = uhdr.open_map(source, scale, primary)
        icc = picture.info.get("icc_profile")
        if source.table is not None:  # Apple's map, as Ultra HDR values
            picture = picture.point(source.table * len(picture.getbands()))
        full = stored[::-1] if swapped else stored  # upright, undrafted
        if (method := _TRANSPOSE[job.orientation]) is not None:  # None: orientation 1
            picture = picture.transpose(method)
        box = geometry.content_box(picture.size, extent, job.orientation)
        ratio = (full[0] / job.width, full[1] / job.height)
        outputs = {variant.name: variant for variant in job.outputs}
        made = {}
        for spec in specs:
            variant = outputs[spec.name]
            size = (max(1, round(variant.width * ratio[0])), max(1, round(variant.height * ratio[1])))
            region = self._region(job, spec)
            sx, sy = (box[2] - box[0]) / job.width, (box[3] - box[1]) / job.height
            area = (box[0] + region[0] * sx, box[1] + region[1] * sy, box[0] + region[2] * sx, box[1] + region[3] * sy)
            resized = picture.resize(size, Image.Resampling.LANCZOS, box=area, reducing_gap=3.0)
            made[spec.name] = uhdr.assemble(variant.data, uhdr.encode_map(resized, spec.quality, icc), source)
        return made

    def _region(self, job: Job, spec: VariantConfig) -> geometry.Box:
        """The part of the upright frame a variant shows, in frame pixels."""
        if spec.fit is not Fit.COVER:
            return (0.0, 0.0, float(job.width), float(job.height))
        if spec.name in job.crops:  # content-aware: the window `_crop` kept, in the resized frame
            (x0, y0, x1, y1), (w, h) = job.crops[spec.name]
            sx, sy = job.width / w, job.height / h
            return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        return geometry.cover_region(spec, job.width, job.height)

    def _placeholder(self, job: Job) -> None:
        """BlurHash, ThumbHash and dominant colour of the whole frame (not of a cropped thumbnail)."""
        preview = job.placeholder_source()
        job.blurhash = blurhash(preview)
        job.thumbhash = thumbhash(preview)
        job.dominant_color = dominant_color(preview)

    PIPELINE = (
        _prepare,
        _gain_map,
        _scale_on_load,
        _decode,
        _normalise,
        _reduce,
        _orient,
        _resize,
        _tone_map,
        _colour,
        _faces,
        _focus,
        _crop,
    )

    def _frames(self, job: Job) -> None:
        """An animation's rendition: beside the first frame, up to `RENDITION_FRAMES - 1` more,
        evenly spaced (for 12 frames: 0, 3, 6, 9), from the file already open."""
        if not self.rendition or not job.animated or job.frames < 2:
            return
        image = job.image
        wanted = sorted({round(i * job.frames / RENDITION_FRAMES) for i in range(1, RENDITION_FRAMES)} - {0})
        try:
            for index in wanted:
                if index >= job.frames:
                    break
                image.seek(index)
                frame = to_srgb(image.convert("RGBA"), job.icc, False)
                job.renditions.append((index, _rendition([(frame, (0.0, 0.0, *frame.size))], self.rendition)))
        finally:
            image.seek(0)

    FINALIZE = (_encode, _attach_gain_map, _placeholder, _frames)

    def _animations(
        self,
        image: Image.Image,
        specs: list[VariantConfig],
        icc: bytes | None,
        width: int,
        height: int,
        focus: tuple[float, float] = (0.5, 0.5),
        faces: tuple[Face, ...] = (),
        manual: tuple[float, float] | None = None,
    ):
        """Every frame decoded once and resized (and cropped) for each animated variant, like the
        first frame; durations kept. {variant name: (frames, durations)}"""
        specs = _largest_first(specs, width, height)
        frames: dict[str, list[Image.Image]] = {spec.name: [] for spec in specs}
        durations = []
        for frame in ImageSequence.Iterator(image):
            rgba = to_srgb(frame.convert("RGBA"), icc, self.keep_icc_profile)
            bases: list[tuple[Image.Image, geometry.Box]] = [(rgba, (0.0, 0.0, *rgba.size))]
            for spec in specs:
                resized = _render(bases, spec, width, height)
                frames[spec.name].append(_crop(resized, spec, width, height, focus, faces, manual))
            durations.append(frame.info.get("duration", 100))
        image.seek(0)
        return {name: (images, durations) for name, images in frames.items()}

    def format_for(self, spec: VariantConfig, kind: str) -> ImageFormat:
        """The format `spec` is written in for a source of type `kind` (the spec's, else the source's
        web format, else JPEG)."""
        if spec.format is not None:
            return spec.format
        return ImageFormat(kind) if kind in _WEB_FORMATS else ImageFormat.JPEG


def _open(data: bytes, kind: str, max_pixels: int) -> Image.Image:
    """Read the header only; the decoder is restricted to the sniffed format.

    Our MAX_PIXELS decides, with our message: Pillow's own bomb check (an error above 2 ×
    ~89 MP, whatever MAX_PIXELS says, which refused 200 MP phone photos a user had allowed) is
    moved to 2 × MAX_PIXELS for this open, and `_prepare` checks the exact limit. A HEIF that
    trips one of libheif's security limits gets a typed error naming it (see `_refusal`)."""
    plugins.load(DECODABLE[kind][0])
    default = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        return Image.open(io.BytesIO(data), formats=[DECODABLE[kind][0]])
    except Image.DecompressionBombError:
        raise TooManyPixels(f"the {kind} image is over the {max_pixels}-pixel limit") from None
    except _DECODE_ERRORS as exc:
        message = str(exc)
        if kind == "heif" and isinstance(exc, UnidentifiedImageError):
            message = _heif_refusal(data) or message  # Pillow keeps only "cannot identify image file"
        raise _refusal(kind, message, f"not a readable {kind} file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = default


def _refusal(kind: str, message: str, what: str) -> ImageRejected:
    """A decoder's refusal as our typed error.

    libheif keeps its security limits (pillow-heif can only switch them all off, and the ones on
    items, references, boxes and extents protect us from hostile files). Our MAX_PIXELS, checked
    from the header before decoding, is the size limit that matters: libheif's (32768² pixels,
    4 GB) lies far above any a function can decode. Should a size or memory limit of libheif trip
    anyway, the image is `too_many_pixels`; any other of its limits makes it `corrupt_image`;
    both messages carry libheif's words, which name the limit."""
    message = message.strip()
    if "security limit" in message.lower():
        text = f"the {kind} file is over a decoder security limit ({message})"
        return TooManyPixels(text) if _SIZE_LIMIT.search(message) else CorruptImage(text)
    return CorruptImage(f"{what}: {message}")


def _heif_refusal(data: bytes) -> str | None:
    """What libheif says about a HEIF Pillow could not open (its headers only, nothing decoded)."""
    import pillow_heif

    try:
        pillow_heif.open_heif(io.BytesIO(data))
    except _HEIF_ERRORS as exc:
        return str(exc)
    return None


def _largest_first(specs: Iterable[VariantConfig], width: int, height: int) -> list[VariantConfig]:
    """Resize order for the cascade: each variant can start from the one before it."""
    return sorted(specs, key=lambda s: geometry.resized_size(s, width, height), reverse=True)


def _render(bases: list[tuple[Image.Image, geometry.Box]], spec: VariantConfig, width: int, height: int) -> Image.Image:
    """One variant from the smallest base that still has enough pixels. `bases` holds full-frame
    images with the box where the frame lies in each; a full-frame result is added to them."""
    full = geometry.resized_size(spec, width, height)
    fitting = [
        (im, box) for im, box in bases if box[2] - box[0] >= full[0] - 0.01 and box[3] - box[1] >= full[1] - 0.01
    ]
    base, box = min(fitting, key=lambda b: b[0].width * b[0].height) if fitting else bases[0]
    # reducing_gap: integer box-reduce first (fast), then Lanczos over the last ≥ 3× (quality).
    if spec.fit is Fit.COVER and spec.gravity not in geometry.CONTENT_AWARE:
        x0, y0, x1, y1 = geometry.cover_region(spec, width, height)
        sx, sy = (box[2] - box[0]) / width, (box[3] - box[1]) / height
        region = (box[0] + x0 * sx, box[1] + y0 * sy, box[0] + x1 * sx, box[1] + y1 * sy)
        out = geometry.output_size(spec, width, height)
        if region == (0.0, 0.0, float(base.width), float(base.height)) and base.size == out:
            return base
        return _lanczos(base, out, region)
    if base.size == full and box == (0.0, 0.0, float(full[0]), float(full[1])):
        resized = base
    else:
        resized = _lanczos(base, full, box)
        bases.append((resized, (0.0, 0.0, *resized.size)))
    return resized  # content-aware cover crops come after the colour conversion (`_crop`)


def _rendition(bases: list[tuple[Image.Image, geometry.Box]], longest: int) -> Image.Image:
    """The whole frame at ≤ `longest` px (longest side), from the smallest base that has enough
    pixels (else the largest), in RGB or RGBA."""

    def side(b: tuple[Image.Image, geometry.Box]) -> float:
        return max(b[1][2] - b[1][0], b[1][3] - b[1][1])

    enough = [b for b in bases if side(b) >= longest]
    base, box = min(enough, key=side) if enough else max(bases, key=side)
    scale = min(1.0, longest / side((base, box)))
    size = (max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale)))
    out = base.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    if out.mode == "RGBa":
        out = out.convert("RGBA")
    return out if out.mode in ("RGB", "RGBA") else out.convert("RGBA" if "A" in out.mode else "RGB")


_BAND_PIXELS = 1_000_000  # outputs at least this large are resized as two bands of rows


@lru_cache(maxsize=1)
def _two_cpus() -> bool:
    """Whether this process may run on two CPUs at once (Pillow's resize releases the GIL)."""
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not Linux
        return (os.cpu_count() or 1) >= 2


def _lanczos(image: Image.Image, size: tuple[int, int], box: geometry.Box) -> Image.Image:
    """`image.resize(size, LANCZOS, box=box, reducing_gap=3.0)`; a large one as two bands of
    output rows, each resized from the rows its filter reads (the top band's box ends where the
    bottom band's starts: the filter positions of one call), at once where a second CPU is free.
    That halves the wall time of the job's most expensive step there, as libvips' thread pool
    does; below one vCPU (Lambda under 1769 MB) it changes nothing but the order of the work.

    The bands are made whatever the CPUs, so the same input gives the same bytes on every host.
    Pillow orders its two passes per call (the cheaper first), so a band can round and clip
    between them differently from one call: the mixed set's variants are byte-identical, 2 of the
    corpus's 90 differ (alpha by ≤ 2 levels), pixel noise with hard lines by a level here and
    there (tests/unit/test_processor_resize.py)."""
    x0, y0, x1, y1 = box
    # reducing_gap box-reduces first where the source is ≥ 2 × 3 times the output: one call, so
    # the reduce's pixel grid stays the whole image's.
    reduces = (x1 - x0) / size[0] >= 2 * _REDUCING_GAP or (y1 - y0) / size[1] >= 2 * _REDUCING_GAP
    if reduces or size[0] * size[1] < _BAND_PIXELS or size[1] < 2:
        return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)
    middle = size[1] // 2
    y_middle = y0 + (y1 - y0) * middle / size[1]
    bands = (((size[0], middle), (x0, y0, x1, y_middle)), ((size[0], size[1] - middle), (x0, y_middle, x1, y1)))

    def band(part: tuple) -> Image.Image:
        return image.resize(part[0], Image.Resampling.LANCZOS, box=part[1], reducing_gap=_REDUCING_GAP)

    if _two_cpus():  # the bottom band in a thread of its own for this call (none outlives it)
        done: list = []
        worker = threading.Thread(target=lambda: done.append(_outcome(band, bands[1])), name="resize-band")
        worker.start()
        try:
            top = band(bands[0])
        finally:
            worker.join()
        bottom, error = done[0]
        if error is not None:
            raise error
    else:
        top, bottom = band(bands[0]), band(bands[1])
    out = Image.new(image.mode, size)
    out.paste(top, (0, 0))
    out.paste(bottom, (0, middle))
    return out


def _outcome(work, argument) -> tuple:
    """(result, None) or (None, the exception): what a thread hands back to the one that joins it."""
    try:
        return work(argument), None
    except Exception as exc:  # noqa: BLE001 — re-raised by the caller, in its own thread
        return None, exc


def _through(image: Image.Image, table: tuple[int, ...]) -> Image.Image:
    """`table` on every colour channel (alpha, premultiplied or not, untouched)."""
    if image.mode in ("RGBa", "RGBX"):
        image = image.convert("RGBA" if image.mode == "RGBa" else "RGB")
    identity = tuple(range(256))
    return image.point([v for band in image.getbands() for v in (identity if band == "A" else table)])


def _crop(
    image: Image.Image,
    spec: VariantConfig,
    width: int,
    height: int,
    focus: tuple[float, float] = (0.5, 0.5),
    faces: tuple[Face, ...] = (),
    manual: tuple[float, float] | None = None,
) -> Image.Image:
    if spec.fit is not Fit.COVER or spec.gravity not in geometry.CONTENT_AWARE:
        return image
    box = _crop_box(image, spec, width, height, focus, faces, manual)
    return image if box == (0, 0, *image.size) else image.crop(box)


def _crop_box(
    image: Image.Image,
    spec: VariantConfig,
    width: int,
    height: int,
    focus: tuple[float, float],
    faces: tuple[Face, ...] = (),
    manual: tuple[float, float] | None = None,
) -> tuple[int, int, int, int]:
    """The window a content-aware `cover` variant keeps of its full-frame `image`."""
    out = geometry.output_size(spec, width, height)
    if image.size == out:
        return (0, 0, *image.size)
    if spec.gravity is Gravity.AUTO and manual is not None:
        return geometry.crop_box(image, out, spec.gravity, manual, faces, keep_focus=True)
    return geometry.crop_box(image, out, spec.gravity, focus, faces)


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for a detector (premultiplied alpha and padding dropped, grey expanded)."""
    if image.mode in ("RGBa",):
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _normalised_point(point: tuple[float, float]) -> tuple[float, float]:
    """A focal point given by hand, checked: two numbers from 0 to 1."""
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise ValueError(f"focal_point must be (x, y) with 0 ≤ x, y ≤ 1, not {point!r}") from None
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"focal_point must be (x, y) with 0 ≤ x, y ≤ 1, not {point!r}")
    return (round(x, 4), round(y, 4))


def _drop_decoder(image: Image.Image) -> None:
    """Release a WebP file's decoder: libwebp's canvases and its copy of the file."""
    from PIL import WebPImagePlugin

    if isinstance(image, WebPImagePlugin.WebPImageFile):
        image._decoder = None


def _load_webp_still(image: Image.Image) -> Image.Image | None:
    """A still WebP's pixels wrapped without a copy, or None to take Pillow's usual path.

    Pillow decodes WebP through libwebp's animation decoder: it keeps its own full canvas, hands
    over a copy as bytes, and `load()` copies those bytes into the image once more (3 × 4 bytes
    per pixel alive at once: 192 MB for 4096²). Here the bytes become the image (`frombuffer`),
    and the decoder, canvas included, is released before any resizing."""
    decoder = getattr(image, "_decoder", None)
    rawmode = getattr(image, "rawmode", None)
    if decoder is None or rawmode not in ("RGBA", "RGBX") or not hasattr(decoder, "get_next"):
        return None
    got = decoder.get_next()
    if got is None:
        raise CorruptImage("webp could not be decoded: no frame")
    pixels = Image.frombuffer(rawmode, image.size, got[0], "raw", rawmode, 0, 1)
    _drop_decoder(image)  # frees libwebp's canvases
    if rawmode == "RGBA" and cast(tuple[tuple[int, int], ...], pixels.getextrema())[3][0] == 255:  # a pair a band
        # Lossless WebP always comes as RGBA: an alpha that is opaque everywhere is the padding
        # byte of RGBX, so the same buffer is read as RGBX (no copy, no premultiplied resize).
        pixels = Image.frombuffer("RGBX", image.size, got[0], "raw", "RGBX", 0, 1)
    return pixels
