"""HDR gain maps: our `hdr` variants against libvips' own Ultra HDR resize of the same files.

    python bench/hdr.py [DIR] [--limit N] [--repeat R] [--out DIR]

    pip install -r bench/requirements.txt   (numpy for SSIM; pyvips + pyvips-binary, bench-only)

Inputs: Ultra HDR JPEGs made by libvips (`uhdrsave`, libultrahdr inside, gain map at 1/4 size as
phones write it) from the corpus photos in DIR (default `.corpus`, see bench/fetch-corpus) larger
than the 1920 px box (so that both sides really resize), the first N by name: each photo in
linear light with its highlights lifted by up to 2 stops (×4). Four flavours per photo:

    iso    as libultrahdr 1.4 writes it: ISO 21496-1 metadata only
    xmp    the same two pictures with `hdrgm` XMP only (as Android 14 phones write it), re-wrapped
           by processor/uhdr.py (libvips reads the result back: checked below)
    rot6   `iso` with EXIF orientation 6 (a phone held upright): the gain map must turn too
    apple  as an iPhone writes a JPEG: the same lift as Apple's gain map (half size, Rec. 709
           encoded, headroom 4 in the maker note's tags 33/48, built with Pillow); libvips cannot
           read it, so only its conversion to Ultra HDR is compared, against the lift itself

Two variants each, as VARIANTS would say them: `large:1920x1920:jpeg:hdr` (contain) and
`thumb:400x400:cover:jpeg:hdr` (a centre crop). libvips does the same work its own way:
`thumbnail_buffer` to the same box (crop=centre for the cover), which keeps and resizes the gain
map, then `jpegsave_buffer` (an Ultra HDR JPEG again, through libultrahdr) at the same quality.

The HDR rendition: both outputs are decoded by the same decoder (libvips `uhdrload`, i.e.
libultrahdr) and rendered at full headroom with `uhdr2scRGB` (linear, 1.0 = SDR white). Compared:

    SSIM HDR   SSIM of the two renditions' luminance, each encoded for viewing (linear ÷ the
               file's peak boost, then a 2.2 gamma, 0-255): the HDR picture as a whole; beside
               it the SSIM of the two SDR pictures alone (the resizes' own difference)
    Δ boost    what the gain map adds: log2(HDR / SDR luminance) per pixel, ours vs libvips, in
               stops (mean and 99th percentile of |Δ|); pixels darker than 1 % are left out
    vs source  the same Δ boost of each output against the full-size source's own boost (its
               libultrahdr rendition; for `apple` the lift itself) resized in linear light to
               the output's geometry: the gain map as it should be

Cost: the bytes the gain map adds (hdr variant minus the same variant without `hdr`), the time
it adds (process_image with and without `hdr`, same process, interleaved, median of R runs; and
the gain-map step alone, timed inside the `hdr` runs), and the peak RSS of each (VmHWM of a
fresh child process per configuration and input).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handler"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyvips  # noqa: E402
from PIL import Image  # noqa: E402
from processor import peak_rss_kb  # noqa: E402
from ssim import ssim  # noqa: E402

from image_pipeline.processor import ImageProcessor, uhdr  # noqa: E402
from image_pipeline.processor.gainmap import segments  # noqa: E402
from image_pipeline.settings import parse_variants  # noqa: E402
from tests.images import apple_exif  # noqa: E402

HDR_SPEC = "large:1920x1920:jpeg:hdr;thumb:400x400:cover:jpeg:hdr"
PLAIN_SPEC = HDR_SPEC.replace(":hdr", "")
BOXES = {"large": (1920, 1920, None), "thumb": (400, 400, "centre")}
QUALITY = 85
LIFT = 3.0  # highlights × (1 + LIFT · t²): up to 4× (2 stops)


APPLE_HEADROOM = 4.0  # maker note 33 = 1.02, 48 = 1.0: 2.303 - 0.303 × 1.0 = 2 stops
APPLE_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:HDRGainMap="http://ns.apple.com/HDRGainMap/1.0/" '
    b'xmlns:apdi="http://ns.apple.com/pixeldatainfo/1.0/" HDRGainMap:HDRGainMapVersion="131072" '
    b'apdi:AuxiliaryImageType="urn:com:apple:photo:2020:aux:hdrgainmap"/></rdf:RDF></x:xmpmeta>'
)


def make_inputs(photo: Path) -> tuple[dict[str, bytes], tuple[pyvips.Image, pyvips.Image]]:
    """The flavours of one photo (see the module doc), and its lift as (HDR, SDR) linear images."""
    source = pyvips.Image.new_from_file(str(photo)).colourspace("srgb")
    if source.hasalpha():
        source = source.flatten(background=255)
    linear = source.colourspace("scrgb")
    luma = linear[0] * 0.2126 + linear[1] * 0.7152 + linear[2] * 0.0722
    t = (luma - 0.25) / 0.75
    t = (t < 0).ifthenelse(0, (t > 1).ifthenelse(1, t))
    hdr = (linear * (t * t * LIFT + 1)).copy(interpretation="scrgb")
    iso = hdr.uhdrsave_buffer(Q=90, gainmap_scale_factor=4)
    rotated = hdr.copy()
    rotated.set_type(pyvips.GValue.gint_type, "orientation", 6)
    flavours = {"iso": iso, "xmp": _as_xmp_only(iso), "rot6": rotated.uhdrsave_buffer(Q=90, gainmap_scale_factor=4)}
    flavours["apple"] = _as_apple(source, t * t * LIFT + 1)
    return flavours, (hdr, linear)


def _as_apple(sdr: pyvips.Image, boost: pyvips.Image) -> bytes:
    """An iPhone-style HDR JPEG of `sdr` whose Apple gain map gives `boost` (see the module doc)."""
    g = (boost - 1) / (APPLE_HEADROOM - 1)
    encoded = (g < 0.018).ifthenelse(g * 4.5, g**0.45 * 1.099 - 0.099)  # Rec. 709
    gain_map = Image.fromarray((encoded.resize(0.5) * 255 + 0.5).cast("uchar").numpy(), "L")
    gain_map.encoderinfo = {"xmp": APPLE_XMP, "exif": b"", "extra": b""}
    primary = Image.fromarray(sdr.cast("uchar").numpy(), "RGB")
    buffer = io.BytesIO()
    exif = apple_exif(1.02, 1.0)
    primary.save(buffer, "MPO", save_all=True, append_images=[gain_map], quality=90, exif=exif)
    return buffer.getvalue()


def _as_xmp_only(data: bytes) -> bytes:
    """The same primary and gain map pictures with their metadata as hdrgm XMP only."""
    found = uhdr.find(data)
    assert found is not None and found.metadata is not None, "libvips wrote no usable gain map"
    primary = data[: data.index(found.jpeg)]
    out, pos = bytearray(primary[:2]), 2
    for _marker, start, payload in segments(primary, 0):
        ours = payload.startswith((uhdr.MPF, uhdr.ISO_NS, uhdr.XMP_NS))
        if not ours:
            out += primary[start - 4 : start + len(payload)]
        pos = start + len(payload)
    primary = bytes(out + primary[pos:])
    gain_map = Image.open(io.BytesIO(found.jpeg))
    return uhdr.assemble(primary, uhdr.encode_map(gain_map, 95, None), uhdr.Source(found.jpeg, found.metadata, None))


def ours(data: bytes, spec: str) -> dict[str, bytes]:
    return {v.name: v.data for v in ImageProcessor(parse_variants(spec)).process_image(data).variants}


def libvips(data: bytes) -> dict[str, bytes]:
    made = {}
    for name, (width, height, crop) in BOXES.items():
        options = {"height": height, "size": "down"}
        if crop:
            options["crop"] = crop
        thumb = pyvips.Image.thumbnail_buffer(data, width, **options)
        made[name] = thumb.jpegsave_buffer(Q=QUALITY, interlace=True)
    return made


def rendition(data: bytes) -> tuple[np.ndarray, np.ndarray, float]:
    """(HDR luminance, SDR luminance, peak boost) of an Ultra HDR JPEG, linear, 1.0 = SDR white."""
    image = pyvips.Image.new_from_buffer(data, "")
    assert image.get("vips-loader").startswith("uhdrload"), "not read as Ultra HDR"
    peak = float(image.get("gainmap-hdr-capacity-max"))
    hdr = image.uhdr2scRGB().numpy()[..., :3].astype(np.float64)
    sdr = image.colourspace("scrgb").numpy()[..., :3].astype(np.float64)
    weights = np.array([0.2126, 0.7152, 0.0722])
    return hdr @ weights, sdr @ weights, peak


def reference(renditions: tuple[pyvips.Image, pyvips.Image], name: str, size: tuple[int, int]) -> np.ndarray:
    """log2 boost of the full-size source's (HDR, SDR) linear renditions (upright), resized in
    linear light (libvips `resize`, Lanczos 3) to the output's geometry: the whole frame, or the
    centred cover window."""
    width, height = size
    crop = BOXES[name][2]
    boost = []
    for picture in renditions:
        if crop:
            picture = picture.resize(max(width / picture.width, height / picture.height))
            picture = picture.crop((picture.width - width) // 2, (picture.height - height) // 2, width, height)
        else:
            picture = picture.resize(width / picture.width, vscale=height / picture.height)
        boost.append(picture.numpy()[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722]))
    return _log_boost(*boost)


def _log_boost(hdr: np.ndarray, sdr: np.ndarray) -> np.ndarray:
    boost = np.log2(np.maximum(hdr, 1e-6) / np.maximum(sdr, 1e-6))
    return np.where(sdr > 0.01, boost, np.nan)


def _viewable(luminance: np.ndarray, peak: float) -> np.ndarray:
    return 255 * np.clip(luminance / peak, 0, 1) ** (1 / 2.2)


def _stops(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    difference = np.abs(a - b)
    difference = difference[np.isfinite(difference)]
    return float(difference.mean()), float(np.percentile(difference, 99))


def source_renditions(data: bytes) -> tuple[pyvips.Image, pyvips.Image]:
    """(HDR, SDR) of an Ultra HDR upload, linear, upright: libultrahdr's rendition, then turned."""
    full = pyvips.Image.new_from_buffer(data, "")
    return full.uhdr2scRGB().autorot(), full.colourspace("scrgb").autorot()


def compare(renditions, name: str, mine: bytes, theirs: bytes | None) -> dict:
    h1, s1, p1 = rendition(mine)
    b1 = _log_boost(h1, s1)
    truth = reference(renditions, name, h1.shape[::-1])
    row = {"size": f"{h1.shape[1]}×{h1.shape[0]}", "ours_vs_source": _stops(b1, truth), "ssim": None}
    if theirs is not None:
        h2, s2, _ = rendition(theirs)
        assert h1.shape == h2.shape, (name, h1.shape, h2.shape)
        b2 = _log_boost(h2, s2)
        row.update(
            ssim=ssim(_viewable(h1, p1), _viewable(h2, p1)),
            sdr_ssim=ssim(_viewable(s1, 1.0), _viewable(s2, 1.0)),
            boost=_stops(b1, b2),
            vips_vs_source=_stops(b2, truth),
        )
    return row


def child(configuration: str, path: str) -> None:
    """One process per (configuration, input): peak RSS of that work alone (VmHWM)."""
    data = Path(path).read_bytes()
    ours(data, HDR_SPEC if configuration == "hdr" else PLAIN_SPEC)
    print(peak_rss_kb())


def peak(configuration: str, path: Path) -> int:
    done = subprocess.run(
        [sys.executable, __file__, "--child", configuration, str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


def timed(data: bytes, repeat: int) -> dict[str, float]:
    processors = {"plain": ImageProcessor(parse_variants(PLAIN_SPEC)), "hdr": ImageProcessor(parse_variants(HDR_SPEC))}
    step_ms: list[float] = []

    def gain_map_step(processor, job, step=ImageProcessor._attach_gain_map):
        start = time.perf_counter()
        step(processor, job)
        step_ms.append((time.perf_counter() - start) * 1000)

    processors["hdr"].FINALIZE = tuple(
        gain_map_step if f is ImageProcessor._attach_gain_map else f for f in ImageProcessor.FINALIZE
    )
    for processor in processors.values():
        processor.process_image(data)  # warm
    times: dict[str, list[float]] = {name: [] for name in processors}
    del step_ms[:]
    for _ in range(repeat):
        for name, processor in processors.items():  # interleaved
            start = time.perf_counter()
            processor.process_image(data)
            times[name].append((time.perf_counter() - start) * 1000)
    return {**{name: statistics.median(values) for name, values in times.items()}, "step": statistics.median(step_ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(ROOT / ".corpus"))
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", help="keep the inputs and both sides' outputs here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    largest = max(width for width, _, _ in BOXES.values())
    photos = [p for p in sorted(Path(args.corpus).glob("*.jpg")) if max(Image.open(p).size) > largest][: args.limit]
    if not photos:
        parser.error(f"no JPEG photos in {args.corpus} (bench/fetch-corpus {args.corpus})")
    out = Path(args.out) if args.out else None
    rows = []
    for photo in photos:
        flavours, lift = make_inputs(photo)
        for flavour, data in flavours.items():
            apple = flavour == "apple"
            mine, plain, theirs = ours(data, HDR_SPEC), ours(data, PLAIN_SPEC), None if apple else libvips(data)
            path = (out or Path("/tmp")) / f"{photo.stem}-{flavour}.jpg"
            if out:
                out.mkdir(parents=True, exist_ok=True)
                for side, made in (("ours", mine), ("vips", theirs or {})):
                    for name, blob in made.items():
                        (out / f"{photo.stem}-{flavour}-{name}-{side}.jpg").write_bytes(blob)
            path.write_bytes(data)
            times = timed(data, args.repeat)
            rss = {c: peak(c, path) for c in ("plain", "hdr")}
            if not out:
                path.unlink()
            renditions = (lift[0], lift[1]) if apple else source_renditions(data)
            for name in BOXES:
                row = compare(renditions, name, mine[name], theirs[name] if theirs else None)
                row.update(
                    photo=photo.stem,
                    flavour=flavour,
                    variant=name,
                    added=len(mine[name]) - len(plain[name]),
                    bytes=len(plain[name]),
                    ms=times,
                    rss=rss,
                )
                rows.append(row)
                print(_line(row), flush=True)
    print()
    print(table(rows))
    return 0


def _ssims(row: dict) -> str:
    return "—" if row["ssim"] is None else f"{row['ssim']:.4f} ({row['sdr_ssim']:.4f})"


def _pair(stops: tuple[float, float] | None) -> str:
    return "—" if stops is None else f"{stops[0]:.3f} / {stops[1]:.3f}"


def _line(row: dict) -> str:
    return (
        f"{row['photo']:<12} {row['flavour']:<5} {row['variant']:<6} {row['size']:>9}  SSIM {_ssims(row)}  "
        f"Δboost {_pair(row.get('boost'))}  vs source {_pair(row['ours_vs_source'])}  +{row['added']} B"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| input | variant | px | SSIM HDR (SDR) ours vs libvips | Δ boost vs libvips (stops, mean / p99) "
        "| Δ boost vs source: ours | libvips | bytes the map adds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['photo']} {row['flavour']} | {row['variant']} | {row['size']} "
            f"| {_ssims(row)} "
            f"| {_pair(row.get('boost'))} "
            f"| {_pair(row['ours_vs_source'])} | {_pair(row.get('vips_vs_source'))} "
            f"| {row['added']:,} (+{100 * row['added'] / row['bytes']:.0f} %) |"
        )
    lines += [
        "",
        "| input | time without → with `hdr` (ms, median) | the gain-map step alone (ms) "
        "| peak RSS without → with (MB) |",
        "|---|---|---|---|",
    ]
    for row in rows[:: len(BOXES)]:
        ms, rss = row["ms"], row["rss"]
        lines.append(
            f"| {row['photo']} {row['flavour']} | {ms['plain']:.1f} → {ms['hdr']:.1f} ({ms['hdr'] / ms['plain']:.2f}×) "
            f"| {ms['step']:.1f} | {rss['plain'] / 1024:.0f} → {rss['hdr'] / 1024:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
