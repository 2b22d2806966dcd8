"""Where the processor's time goes, per input type: cProfile of one warm `process_image` call.

    python bench/profile_processor.py [FILES…]     (default: the mixed set, .corpus/mixed/*)

Prints, for each file, the processor's own steps (cumulative ms of each step in
`ImageProcessor.PIPELINE`/`FINALIZE`, in order; a PNG is decoded inside `prepare`, where Pillow's
`getexif()` loads the file to find an eXIf chunk after the pixels) and the five most expensive functions by own time, as
markdown. Entries like `webp.py decode_still` (libwebp through ctypes), `ImagingDecoder.decode`, `ImagingCore.resize`,
`CmsTransform.apply`, `WebPEncode` are Pillow's C code (libwebp, zlib/libpng, libjpeg-turbo,
Pillow's resampler, LittleCMS): the part no Python change can make faster.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    from PIL import Image

    from image_pipeline import ImageProcessor
    from image_pipeline.processor import plugins
    from image_pipeline.settings import DEFAULTS, parse_variants

    Image.init()
    plugins.load("HEIF")
    files = [Path(a) for a in argv] or sorted((ROOT / ".corpus" / "mixed").iterdir())
    processor = ImageProcessor(parse_variants(DEFAULTS["VARIANTS"]))
    steps = {f.__name__ for f in (*processor.PIPELINE, *processor.FINALIZE)}
    for path in files:
        data = path.read_bytes()
        processor.process_image(data)  # warm: codecs, colour transforms
        profile = cProfile.Profile()
        profile.enable()
        result = processor.process_image(data)
        profile.disable()
        stats = pstats.Stats(profile)
        rows = stats.stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
        step_ms = {
            name: cum * 1000
            for (file, _, name), (_, _, _, cum, _) in rows.items()
            if name in steps and file.endswith("pipeline.py")
        }
        own = sorted(rows.items(), key=lambda item: item[1][2], reverse=True)[:5]
        total = stats.total_tt * 1000
        print(f"\n**{path.name}** ({result.source.width}×{result.source.height}, {total:.0f} ms under cProfile)\n")
        order = [f.__name__ for f in (*processor.PIPELINE, *processor.FINALIZE)]
        shown = [f"{n.strip('_')} {step_ms[n]:.0f}" for n in order if step_ms.get(n, 0) >= 1]
        print("steps: " + ", ".join(shown) + " (ms)\n")
        print("| own time ms | calls | function |")
        print("|---:|---:|---|")
        for (file, line, name), (_, calls, tottime, _, _) in own:
            where = name if file == "~" else f"{Path(file).name}:{line} {name}"
            print(f"| {tottime * 1000:.0f} | {calls} | `{where}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
