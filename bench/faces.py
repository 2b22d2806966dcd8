"""Faces bench: do cover crops keep the people? And what does finding them cost?

    python bench/faces.py [--ratios 1x1,9x16,16x9,4x5] [--repeat 20] [--markdown]

    pip install --no-deps scikit-image   (only its bundled photos are read, as files: its Python is never imported)

The set is bench/faces.json: two photos of people that scikit-image ships (public domain and
CC0) and pictures composed from them (a group, a 12-face crowd, a portrait off centre, a
panorama with a face at each end, a face beside a busy colourful patch, a close-up larger than
some windows), each face box annotated by hand (composed ones follow from the pasted head's box).

For every picture and ratio the crop is the largest A:B window of the picture (what a `cover`
variant at full size and a ratio URL take), placed by each gravity exactly as the processor does
(`geometry.cover_region` for centre; `geometry.crop_box` for entropy, attention and auto, auto
with the faces and focal point the processor found with FACE_DETECTION=local). Per crop: is the
largest annotated face whole inside it, are all faces, and the share of the face area kept. The
bound is the best any placement of that window can keep (slid 1 px at a time, from the annotated
boxes): the goal is the largest face kept in ≥ 95 % of crops and auto's face area within 0.05 of
the bound.

Detection: the local engine on the processor's ≤ 640 px rendition, one thread, pinned to one CPU,
`--repeat` runs per picture after one warm-up (p50 / p95 over all runs), and its recall against
the annotated boxes (IoU ≥ 0.5), with the false detections counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from time import perf_counter, thread_time

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "handler"))

from image_pipeline.faces.local import LocalDetector  # noqa: E402
from image_pipeline.processor import Face, Gravity, ImageProcessor, VariantConfig, geometry, subject  # noqa: E402  # noqa: E402
from image_pipeline.settings import DEFAULTS, parse_variants  # noqa: E402

SET = Path(__file__).with_name("faces.json")
GRAVITIES = ("centre", "attention", "entropy", "auto")
Box = tuple[float, float, float, float]  # x, y, w, h in pixels


def package_file(relative: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    package, _, rest = relative.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{package} is not installed: pip install --no-deps scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / rest


def pictures(described: dict) -> dict[str, tuple[Image.Image, list[Box]]]:
    """{name: (RGB picture, annotated face boxes)}: the photos, then the composed pictures."""
    found: dict[str, tuple[Image.Image, list[Box]]] = {}
    photos = {}
    for name, photo in described["photos"].items():
        image = Image.open(package_file(photo["file"])).convert("RGB")
        assert list(image.size) == photo["size"], (name, image.size)
        photos[name] = (image, [tuple(map(float, box)) for box in photo["faces"]])
        found[name] = photos[name]
    for name, recipe in described["composed"].items():
        width, height = recipe["size"]
        tile = Image.open(package_file(described["backgrounds"][recipe["background"]])).convert("RGB")
        canvas = Image.new("RGB", (width, height))
        for x in range(0, width, tile.width):
            for y in range(0, height, tile.height):
                canvas.paste(tile, (x, y))
        for background, x, y, scale in recipe.get("paste", ()):
            patch = Image.open(package_file(described["backgrounds"][background])).convert("RGB")
            canvas.paste(patch.resize((round(patch.width * scale), round(patch.height * scale))), (x, y))
        boxes = []
        for head_name, x, y, scale in recipe["heads"]:
            head = described["heads"][head_name]
            photo, (face,) = photos[head["photo"]]
            x0, y0, x1, y1 = head["region"]
            region = photo.crop((x0, y0, x1, y1))
            canvas.paste(region.resize((round((x1 - x0) * scale), round((y1 - y0) * scale)), Image.LANCZOS), (x, y))
            box = (x + (face[0] - x0) * scale, y + (face[1] - y0) * scale, face[2] * scale, face[3] * scale)
            # Clipped to the picture (a close-up's face may run past its edges).
            bx0, by0 = max(0.0, box[0]), max(0.0, box[1])
            bx1, by1 = min(float(width), box[0] + box[2]), min(float(height), box[1] + box[3])
            boxes.append((bx0, by0, bx1 - bx0, by1 - by0))
        found[name] = (canvas, boxes)
    return found


def window_size(width: int, height: int, a: int, b: int) -> tuple[int, int]:
    """The largest a:b window of a width × height picture."""
    if width * b >= height * a:
        return max(1, round(height * a / b)), height
    return width, max(1, round(width * b / a))


def kept(window: Box, boxes: list[Box]) -> tuple[bool, bool, float]:
    """(largest face whole, every face whole, share of the face area inside)."""
    x, y, w, h = window
    inside, total, whole = 0.0, 0.0, []
    for bx, by, bw, bh in boxes:
        ix = max(0.0, min(bx + bw, x + w) - max(bx, x))
        iy = max(0.0, min(by + bh, y + h) - max(by, y))
        inside += ix * iy
        total += bw * bh
        whole.append(ix * iy >= bw * bh - 0.5 * (bw + bh))  # within half a pixel on each side
    largest = max(range(len(boxes)), key=lambda i: boxes[i][2] * boxes[i][3])
    return whole[largest], all(whole), inside / total if total else 1.0


def bound(size: tuple[int, int], window: tuple[int, int], boxes: list[Box]) -> tuple[float, bool]:
    """The most face area any placement keeps, and whether any keeps the largest face whole."""
    best, largest_possible = 0.0, False
    for x in range(0, size[0] - window[0] + 1):
        for y in range(0, size[1] - window[1] + 1):
            largest, _, share = kept((x, y, *window), boxes)
            best, largest_possible = max(best, share), largest_possible or largest
    return best, largest_possible


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def recall(found: list[Face], boxes: list[Box], size: tuple[int, int]) -> tuple[int, int]:
    """(annotated faces matched by a detection with IoU ≥ 0.5, detections matching none)."""
    detected = [(f.x * size[0], f.y * size[1], f.w * size[0], f.h * size[1]) for f in found]
    used: set[int] = set()
    hits = 0
    for box in boxes:
        scored = [(iou(box, d), i) for i, d in enumerate(detected) if i not in used]
        best = max(scored, default=(0.0, -1))
        if best[0] >= 0.5:
            hits += 1
            used.add(best[1])
    return hits, len(detected) - len(used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="1x1,9x16,16x9,4x5")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one CPU, as the budget says
    ratios = [tuple(int(v) for v in r.split("x")) for r in args.ratios.split(",")]
    described = json.loads(SET.read_text())
    detector = LocalDetector()
    rows, times, cpu = [], [], []
    totals = {g: {"largest": 0, "all": 0, "share": 0.0, "gap": []} for g in GRAVITIES}
    crops = possible = faces_total = hits_total = false_total = 0
    for name, (image, boxes) in pictures(described).items():
        size = image.size
        rendition = subject.rendition(image, (0.0, 0.0, float(size[0]), float(size[1])))
        detector.detect(rendition)  # warm: the interpreter is made on the first image
        for _ in range(args.repeat):
            started, started_cpu = perf_counter(), thread_time()
            found = detector.detect(rendition)
            times.append((perf_counter() - started) * 1000)
            cpu.append((thread_time() - started_cpu) * 1000)
        # The pipeline's default variants: the decode (and so the detector's rendition) is as
        # large as they need; a configuration of thumbnails only gives the detector fewer pixels.
        processed = ImageProcessor(parse_variants(DEFAULTS["VARIANTS"]), face_detector=detector).process_image(
            _png(image)
        )
        hits, false = recall(list(processed.faces), boxes, size)
        faces_total, hits_total, false_total = faces_total + len(boxes), hits_total + hits, false_total + false
        print(f"{name}: {len(boxes)} faces, found {len(found)}, matched {hits}, false {false}", file=sys.stderr)
        for a, b in ratios:
            window = window_size(*size, a, b)
            best, largest_possible = bound(size, window, boxes)
            crops += 1
            possible += largest_possible
            cells = []
            for gravity in GRAVITIES:
                spec = VariantConfig("c", *window, fit="cover", gravity=gravity)
                if gravity == "centre":
                    x0, y0, _, _ = geometry.cover_region(spec, *size)
                else:
                    x0, y0, _, _ = geometry.crop_box(
                        image, window, Gravity(gravity), processed.focal_point, processed.faces
                    )
                largest, every, share = kept((x0, y0, *window), boxes)
                t = totals[gravity]
                t["largest"] += largest
                t["all"] += every
                t["share"] += share
                t["gap"].append(best - share)
                cells.append(f"{'✓' if largest else '✗'}{'✓' if every else '✗'} {share:.2f}")
            rows.append(f"| {name} | {a}:{b} | {len(boxes)} | " + " | ".join(cells) + f" | {best:.2f} |")
    print("| picture | ratio | faces | " + " | ".join(GRAVITIES) + " | bound |")
    print("|---|---|---:|" + "---|" * len(GRAVITIES) + "---:|")
    print("\n".join(rows))
    print(
        "\nEach cell: largest face whole (✓/✗), all faces whole (✓/✗), share of the face area kept; "
        "bound: the most any placement of the same window keeps.\n"
    )
    print("| gravity | largest face kept | all faces kept | face area kept (mean) | mean gap to bound | worst gap |")
    print("|---|---:|---:|---:|---:|---:|")
    for gravity in GRAVITIES:
        t = totals[gravity]
        print(
            f"| {gravity} | {t['largest']}/{crops} ({t['largest'] / crops:.0%}) | {t['all']}/{crops} | "
            f"{t['share'] / crops:.2f} | {statistics.fmean(t['gap']):.3f} | {max(t['gap']):.2f} |"
        )
    print(f"| (best placement) | {possible}/{crops} | | | | |")
    wall, spent = _percentiles(times), _percentiles(cpu)
    print(
        f"\nDetection (local: BlazeFace full-range in LiteRT, one thread pinned to one CPU, on the ≤ 640 px "
        f"rendition, {len(times)} runs): CPU time p50 {spent[0]:.1f} ms, p95 {spent[1]:.1f} ms; wall clock p50 "
        f"{wall[0]:.1f} ms, p95 {wall[1]:.1f} ms (load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs while it ran). Recall (IoU ≥ 0.5 against the annotated boxes): "
        f"{hits_total}/{faces_total}; detections matching no annotated face: {false_total}."
    )


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
