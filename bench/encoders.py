"""Encoder settings benchmark: the choices in handler/image_pipeline/processor/encode.py vs the
obvious alternatives, on a few corpus images resized to fit 1920×1920 (the `large` variant).

    python bench/encoders.py [DIR] [--images a.jpg,b.png,...] [--repeat R] [--quality Q]

For every setting: encode time (sum over the images, best of R runs each), output bytes, and mean
SSIM of the decoded result against the 1920 px input (luminance, bench/ssim.py; transparency
composited on white), so "smaller" is never bought with quality. The row whose options equal what
encode.py uses is marked. Stdout is one markdown table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from PIL import Image, ImageOps  # noqa: E402
from ssim import ssim  # noqa: E402

from image_pipeline import ImageFormat  # noqa: E402
from image_pipeline.processor.encode import _options, prepare  # noqa: E402

# Three photos of different sizes/detail and two PNGs (RGBA with real transparency, RGB + ICC).
DEFAULT_IMAGES = (
    "Elephants_5640x3172.jpg",
    "LadyBird.jpg",
    "Wood.jpg",
    "Gulp.png",
    "Ubuntu-Mate-Warm-no-logo.png",
)
WHITE = (255, 255, 255)


def settings(q: int) -> list[tuple[ImageFormat, str, dict]]:
    return [
        (ImageFormat.WEBP, "method 2", {"quality": q, "method": 2}),
        (ImageFormat.WEBP, "method 3", {"quality": q, "method": 3}),
        (ImageFormat.WEBP, "method 4", {"quality": q, "method": 4}),
        (ImageFormat.WEBP, "method 6", {"quality": q, "method": 6}),
        (ImageFormat.AVIF, "speed 8", {"quality": q, "speed": 8}),
        (ImageFormat.AVIF, "speed 7", {"quality": q, "speed": 7}),
        (ImageFormat.AVIF, "speed 6 (Pillow default)", {"quality": q, "speed": 6}),
        (ImageFormat.PNG, "level 6, optimize=False", {"compress_level": 6, "optimize": False}),
        (ImageFormat.PNG, "optimize=True", {"optimize": True}),
        (ImageFormat.JPEG, "progressive", {"quality": q, "progressive": True, "optimize": False}),
        (ImageFormat.JPEG, "baseline, optimize=False", {"quality": q, "progressive": False, "optimize": False}),
        (ImageFormat.JPEG, "baseline, optimize=True", {"quality": q, "progressive": False, "optimize": True}),
    ]


def viewable(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        base = Image.new("RGB", rgba.size, WHITE)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return image.convert("RGB")


def load(path: Path) -> Image.Image:
    """Full decode, oriented, fitted into 1920×1920 with LANCZOS, in the mode the pipeline keeps."""
    with Image.open(path) as im:
        image = ImageOps.exif_transpose(im)
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        image.thumbnail((1920, 1920), Image.Resampling.LANCZOS, reducing_gap=None)
        return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=".corpus")
    parser.add_argument("--images", default=",".join(DEFAULT_IMAGES))
    parser.add_argument("--repeat", type=int, default=2, help="encodes per (image, setting); keeps the fastest")
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args(argv)

    paths = [Path(args.dir) / name for name in args.images.split(",") if name]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)} (run bench/fetch-corpus {args.dir})", file=sys.stderr)
        return 2
    images = [(p.name, load(p)) for p in paths]
    references = {name: viewable(im) for name, im in images}
    for name, im in images:
        print(f"{name}: {im.size[0]}×{im.size[1]} {im.mode}", file=sys.stderr)

    rows = []
    for fmt, label, options in settings(args.quality):
        total_s, total_bytes, scores = 0.0, 0, []
        for name, image in images:
            prepared = prepare(image, fmt, WHITE)
            times = []
            for _ in range(args.repeat):
                buffer = io.BytesIO()
                started = time.perf_counter()
                prepared.save(buffer, format=fmt.pillow_name, **options)
                times.append(time.perf_counter() - started)
            total_s += min(times)
            blob = buffer.getvalue()
            total_bytes += len(blob)
            with Image.open(io.BytesIO(blob)) as decoded:
                scores.append(ssim(viewable(decoded), references[name]))
        ours = dict(_options(fmt, args.quality))
        is_ours = all(options.get(k, None) == v for k, v in ours.items()) and set(options) <= set(ours)
        rows.append((fmt, label, is_ours, total_s, total_bytes, statistics.fmean(scores), min(scores)))
        print(f"{fmt.value:5} {label:28} {total_s * 1000:8.0f} ms {total_bytes:>10,} B", file=sys.stderr)

    print(
        f"| format | setting | in encode.py | encode ms ({len(images)} images, 1920 px) | bytes "
        f"| time vs encode.py's | bytes vs encode.py's | SSIM mean / min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fmt, label, is_ours, total_s, total_bytes, mean_ssim, min_ssim in rows:
        ref = next((r for r in rows if r[0] is fmt and r[2]), None)
        t_ratio = f"{total_s / ref[3]:.2f}×" if ref else "–"
        b_ratio = f"{total_bytes / ref[4]:.3f}×" if ref else "–"
        mark = "**yes**" if is_ours else ""
        print(
            f"| {fmt.value} | {label} | {mark} | {total_s * 1000:.0f} | {total_bytes:,} | {t_ratio} | {b_ratio} "
            f"| {mean_ssim:.4f} / {min_ssim:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
