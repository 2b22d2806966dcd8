"""Quality per image (`qauto`) against fixed qualities: bytes, SSIM, time, on the corpus.

    python bench/qauto.py [CORPUS] [--target 0.98] [--limit N]

For every image the default variants (thumbnail 150² cover WebP, medium 800² WebP, large 1920²
JPEG) are made four ways in one process: fixed q85 (the default), `qauto` (ceiling q85), and fixed
q75 / q65 for scale. SSIM is Wang et al.'s Gaussian 11×11 on luminance (bench/ssim.py) against the
*unencoded* variant (the same processor writing PNG, i.e. the pixels before the encoder), so it
is an independent check of the processor's own fast SSIM. Time is the whole `process_image`
(decode, resize, encode, placeholders), best of `--repeat`; "extra" is qauto minus q85.
The last table answers "bytes saved at equal or better minimum SSIM": the lowest fixed quality
whose worst image is at least as good as qauto's worst, and its bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handler"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from ssim import ssim  # noqa: E402

from image_pipeline.processor import ImageProcessor  # noqa: E402
from image_pipeline.processor.encode import flatten as flatten_onto  # noqa: E402
from image_pipeline.settings import parse_variants  # noqa: E402
from tests.images import decode  # noqa: E402

BOXES = "thumbnail:150x150:cover:{w};medium:800x800:{w};large:1920x1920:{j}"


def specs(suffix: str) -> str:
    return BOXES.format(w="webp" + suffix, j="jpeg" + suffix)


def flatten(image: Image.Image) -> Image.Image:
    """RGB for SSIM: transparency onto white, as the JPEG variants are made."""
    return flatten_onto(image.convert("RGBA") if image.mode == "P" else image, (255, 255, 255)).convert("RGB")


def timed(processor: ImageProcessor, data: bytes, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = processor.process_image(data)
        best = min(best, time.perf_counter() - started)
    return result, best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=".corpus")
    parser.add_argument("--target", default="98", help="qauto target as digits after '0.' (98 → 0.98)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    files = files[: args.limit] if args.limit else files
    modes = {
        "q85 (default)": ImageProcessor(parse_variants(specs(""))),
        f"qauto{args.target}": ImageProcessor(parse_variants(specs(f":qauto{args.target}"))),
        "q75": ImageProcessor(parse_variants(specs(":q75"))),
        "q65": ImageProcessor(parse_variants(specs(":q65"))),
    }
    lossless = ImageProcessor(parse_variants(BOXES.format(w="png", j="png")))
    auto = f"qauto{args.target}"
    rows = {m: {"bytes": 0, "ms": [], "ssim": {}, "q": []} for m in modes}
    per_image = []
    for path in files:
        data = path.read_bytes()
        reference = {v.name: flatten(decode(v.data)) for v in lossless.process(data)}
        line = {"image": path.name}
        for mode, processor in modes.items():
            result, ms = timed(processor, data, args.repeat)
            row = rows[mode]
            row["ms"].append(ms)
            size = sum(len(v.data) for v in result.variants)
            row["bytes"] += size
            for v in result.variants:
                row["ssim"].setdefault(v.name, []).append(ssim(reference[v.name], flatten(decode(v.data))))
                if v.qauto:
                    row["q"].append((v.name, v.quality, v.qauto["trials"], v.qauto["ssim"]))
            line[mode] = (size, ms)
        per_image.append(line)
        print(
            f"{path.name}: " + ", ".join(f"{m} {line[m][0] / 1024:.0f} KB {line[m][1]:.0f} ms" for m in modes),
            flush=True,
        )

    base = rows["q85 (default)"]
    print(f"\n{len(files)} images, target SSIM 0.{args.target} (qauto ceiling q85)\n")
    print(
        "| mode | bytes | vs q85 | mean ms/img | extra ms vs q85 | SSIM min (thumb / medium / large) "
        "| SSIM mean (all) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for mode, row in rows.items():
        mins = " / ".join(f"{min(row['ssim'][n]):.4f}" for n in ("thumbnail", "medium", "large"))
        mean = statistics.mean(s for values in row["ssim"].values() for s in values)
        extra = statistics.mean(row["ms"]) - statistics.mean(base["ms"])
        print(
            f"| {mode} | {row['bytes'] / 1e6:.2f} MB | {row['bytes'] / base['bytes']:.3f}× | "
            f"{statistics.mean(row['ms']):.0f} | {extra:+.0f} | {mins} | {mean:.4f} |"
        )
    chosen = rows[auto]["q"]
    print("\nqauto choices per variant: quality min / median / max, trials mean, fast SSIM min")
    for name in ("thumbnail", "medium", "large"):
        qs = [q for n, q, _, _ in chosen if n == name]
        trials = [t for n, _, t, _ in chosen if n == name]
        fast = [s for n, _, _, s in chosen if n == name]
        if qs:
            print(
                f"- {name}: q{min(qs)} / q{int(statistics.median(qs))} / q{max(qs)}, "
                f"{statistics.mean(trials):.2f} encodes, {min(fast):.4f}"
            )
    worst_auto = min(s for values in rows[auto]["ssim"].values() for s in values)
    print(f"\nqauto's worst variant SSIM (reference): {worst_auto:.4f}")
    for mode in ("q65", "q75", "q85 (default)"):
        worst = min(s for values in rows[mode]["ssim"].values() for s in values)
        verdict = "≥" if worst >= worst_auto else "<"
        print(
            f"- {mode}: worst {worst:.4f} ({verdict} qauto's), "
            f"bytes {rows[mode]['bytes'] / rows[auto]['bytes']:.3f}× qauto's"
        )


if __name__ == "__main__":
    main()
