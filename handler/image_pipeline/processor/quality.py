"""Quality per image (`qauto`): the lowest encoder quality whose output still looks like its input.

A variant spec with `qauto` asks for the lowest quality, between the format's floor and the
spec's own `quality` (the ceiling: qauto never spends more bytes than the fixed setting would),
whose decoded output keeps a luminance SSIM ≥ the target (default 0.98) against the resized,
unencoded variant. At most `MAX_TRIALS` encodes: the first at the ceiling (or at the quality a
smaller variant of the same format chose: `seed`), then a bisection of what is left; when nothing
has passed, the ceiling is the last trial, so the result is always one of the trial encodes
(never a fourth). An image that fails at the ceiling costs one encode, the one a fixed quality
makes anyway.

SSIM here is a fast windowed form, in the spirit of the one video encoders use (x264: 8×8 windows
at a stride of 4 from 4×4 block sums): 6×6 windows at a stride of 3, built from 3×3 block sums,
on BT.601 luma. The windows straddle JPEG's 8×8 blocks, so blocking is measured. On 14 corpus
photos × 5 encodes with SSIM ≥ 0.95 it reads within −0.003…+0.002 of the Gaussian 11×11
(σ = 1.5) reference (bench/ssim.py; mean −0.0003), where 8×8/4 windows read up to +0.008 high.
It runs on Pillow's own float images (`reduce`, `ImageMath`): no extra dependency, ~20 ms for a
1920×1280 variant. tests/unit/test_quality.py checks it against the reference.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageMath

from .specs import ImageFormat

MAX_TRIALS = 3
FLOOR = {ImageFormat.JPEG: 40, ImageFormat.WEBP: 40, ImageFormat.AVIF: 30}  # below: visibly broken
LOSSY = frozenset(FLOOR)
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@dataclass(frozen=True)
class Choice:
    """What the search settled on."""

    quality: int
    data: bytes
    ssim: float  # of the chosen encode, against the unencoded variant
    trials: int  # encodes made (≤ MAX_TRIALS)
    target: float


def _luma(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA").convert("RGB")  # alpha does not change what is measured
    return image.convert("L").convert("F")


_BLOCK = 3  # px: windows are 2 × 2 blocks, so 6×6 at a stride of 3


def _windows(block_means: Image.Image) -> Image.Image:
    """Means over 6×6 windows at stride 3: each is the average of 2×2 neighbouring 3×3 blocks."""
    w, h = block_means.size
    parts = {
        "a": block_means.crop((0, 0, w - 1, h - 1)),
        "b": block_means.crop((1, 0, w, h - 1)),
        "c": block_means.crop((0, 1, w - 1, h)),
        "d": block_means.crop((1, 1, w, h)),
    }
    return ImageMath.lambda_eval(lambda v: (v["a"] + v["b"] + v["c"] + v["d"]) / 4, **parts)


class Reference:
    """The unencoded image's side of SSIM, computed once for all of a variant's trials."""

    def __init__(self, image: Image.Image) -> None:
        self.size = image.size
        w, h = (image.width // _BLOCK) * _BLOCK, (image.height // _BLOCK) * _BLOCK
        self.box = (0, 0, w, h)
        self.exact = w < 2 * _BLOCK or h < 2 * _BLOCK  # too small for one window: compare exactly
        if self.exact:
            self.pixels = image.convert("L").tobytes()
            return
        self.x = _luma(image).crop(self.box)
        self.mx = _windows(self.x.reduce(_BLOCK))
        self.xx = _windows(ImageMath.lambda_eval(lambda v: v["x"] * v["x"], x=self.x).reduce(_BLOCK))

    def ssim(self, candidate: Image.Image) -> float:
        """Mean luminance SSIM of `candidate` (same size) against this reference."""
        if candidate.size != self.size:
            raise ValueError(f"size mismatch: {self.size} vs {candidate.size}")
        if self.exact:
            return 1.0 if candidate.convert("L").tobytes() == self.pixels else 0.0
        y = _luma(candidate).crop(self.box)
        pair = {"x": self.x, "y": y}
        m = {
            "mx": self.mx,
            "xx": self.xx,
            "my": _windows(y.reduce(_BLOCK)),
            "yy": _windows(ImageMath.lambda_eval(lambda v: v["y"] * v["y"], **pair).reduce(_BLOCK)),
            "xy": _windows(ImageMath.lambda_eval(lambda v: v["x"] * v["y"], **pair).reduce(_BLOCK)),
        }

        def index(v):
            mx, my = v["mx"], v["my"]
            vx, vy, cov = v["xx"] - mx * mx, v["yy"] - my * my, v["xy"] - mx * my
            return ((mx * my * 2 + _C1) * (cov * 2 + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))

        ssim_map = ImageMath.lambda_eval(index, **m)
        return float(ssim_map.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))


def ssim(reference: Image.Image, candidate: Image.Image) -> float:
    """Mean luminance SSIM of `candidate` against `reference` (same size)."""
    return Reference(reference).ssim(candidate)


def choose(
    image: Image.Image,
    fmt: ImageFormat,
    ceiling: int,
    target: float,
    encode: Callable[[int], bytes],
    seed: int | None = None,
) -> Choice:
    """The lowest quality in [FLOOR[fmt], ceiling] whose encode keeps SSIM ≥ target, found with
    at most MAX_TRIALS calls of `encode(quality)`; the ceiling's encode when none does."""
    low, high = min(FLOOR[fmt], ceiling), ceiling
    best: Choice | None = None
    last: Choice | None = None
    # The first trial is the ceiling (the encode the fixed setting makes anyway: a file that fails
    # there costs one decode + SSIM more than without qauto), or the quality a smaller variant chose.
    quality = seed if seed is not None and low <= seed <= high else ceiling
    reference = Reference(image)
    for trial in range(1, MAX_TRIALS + 1):
        data = encode(quality)
        with Image.open(io.BytesIO(data)) as decoded:
            if decoded.format == "JPEG" and decoded.mode in ("RGB", "L"):
                decoded.draft("L", decoded.size)  # libjpeg hands over Y itself: no chroma, no colour conversion
            score = reference.ssim(decoded)
        last = Choice(quality, data, score, trial, target)
        if score >= target:
            best, high = last, quality - 1
        else:
            low = quality + 1
        if low > high:
            break
        if best is None and trial == MAX_TRIALS - 1:
            quality = ceiling  # the last trial: the fixed setting, which always stands
        else:
            quality = (low + high) // 2 if best is not None else (low + high + 1) // 2
    assert last is not None  # MAX_TRIALS ≥ 1
    chosen = best or last
    return Choice(chosen.quality, chosen.data, chosen.ssim, last.trials, target)
