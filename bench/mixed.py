"""Generate the mixed benchmark set from the wallpaper corpus: the uploads the corpus lacks.

    python bench/mixed.py [CORPUS] [OUT]      (defaults: .corpus, .corpus/mixed)

Made from the corpus's largest photo (5640×3172), upscaled or cropped with LANCZOS:
  webp-lossy        4096×4096 WebP q90
  webp-lossless     4096×4096 lossless WebP
  png-rgba          3000×3000 RGBA PNG (a soft vignette of real transparency), ~9 MP
  jpeg-p3           3600×2400 JPEG q92 tagged Display P3, ~8.6 MP
  jpeg-adobergb     6000×4000 JPEG q92 tagged Adobe RGB (1998), 24 MP
  heic              4032×3024 HEIC (pillow-heif, quality 90), 12 MP
The ICC profiles are matrix/TRC profiles built here (tests/images.icc_profile); the pixels are
the sRGB photo's values reinterpreted in the wider space, as a camera/phone that tags its
output would produce. Idempotent: existing files are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.images import DISPLAY_P3, icc_profile  # noqa: E402

# Adobe RGB (1998) colorants, Bradford-adapted to D50; gamma 563/256.
ADOBE_RGB = icc_profile(
    "Adobe RGB (1998) (bench)",
    (0.6097, 0.3111, 0.0195),
    (0.2053, 0.6257, 0.0609),
    (0.1492, 0.0632, 0.7446),
    gamma=563 / 256,
)

SET = {
    "webp-lossy.webp": ((4096, 4096), "WEBP", {"quality": 90, "method": 4}),
    "webp-lossless.webp": ((4096, 4096), "WEBP", {"lossless": True, "quality": 20, "method": 1}),
    "png-rgba.png": ((3000, 3000), "PNG", {"compress_level": 6}),
    "jpeg-p3.jpg": ((3600, 2400), "JPEG", {"quality": 92, "icc_profile": DISPLAY_P3}),
    "jpeg-adobergb.jpg": ((6000, 4000), "JPEG", {"quality": 92, "icc_profile": ADOBE_RGB}),
    "heic.heic": ((4032, 3024), "HEIF", {"quality": 90}),
}


def _largest(corpus: Path) -> Path:
    def pixels(p: Path) -> int:
        with Image.open(p) as im:
            return im.width * im.height

    return max((p for p in corpus.glob("*.jpg")), key=pixels)


def _alpha(size: tuple[int, int]) -> Image.Image:
    """Opaque centre fading to transparent corners, plus a fully transparent hole."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    w, h = size
    draw.ellipse((w * 0.05, h * 0.05, w * 0.95, h * 0.95), fill=255)
    draw.rectangle((w * 0.45, h * 0.45, w * 0.55, h * 0.55), fill=0)
    return mask.filter(ImageFilter.GaussianBlur(w / 30))


def generate(corpus: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in SET]
    if all(p.exists() for p in paths):
        return paths
    with Image.open(_largest(corpus)) as im:
        source = ImageOps.exif_transpose(im).convert("RGB")
    for path in paths:
        size, fmt, options = SET[path.name]
        if path.exists():
            continue
        image = ImageOps.fit(source, size, Image.Resampling.LANCZOS)
        if path.name == "png-rgba.png":
            image.putalpha(_alpha(size))
        if fmt == "HEIF":
            import pillow_heif

            pillow_heif.register_heif_opener()
        print(f"writing {path} …", file=sys.stderr)
        image.save(path, fmt, **options)
    return paths


if __name__ == "__main__":
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else ".corpus")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else corpus / "mixed")
    for p in generate(corpus, out):
        print(p, f"{p.stat().st_size / 1e6:.1f} MB")
