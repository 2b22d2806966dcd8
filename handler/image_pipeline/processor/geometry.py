"""Box arithmetic for `contain` / `cover`, shrink-on-load and crop gravity. No pixels touched here
except to score crop windows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from PIL import Image, ImageFilter, ImageStat

from .specs import Face, Fit, Gravity, VariantConfig

# JPEG draft (DCT scaling) keeps this much more resolution than the largest output needs;
# at 1.25× the result stays at SSIM ≥ 0.99 against a full decode (see bench/).
DRAFT_HEADROOM = 1.25
# libwebp's scaled decode averages the area each output pixel covers (a box filter), softer than
# DCT scaling: at 2× it costs the SSIM a ½ JPEG draft costs on the same photo (−0.004 on the
# large variant of a 5640×3172 photo; 1.6× cost −0.009, 1.25× −0.016: docs/performance.md).
RESCALE_HEADROOM = 2.0


def scale_for(spec: VariantConfig, width: int, height: int) -> float:
    """The factor applied to the whole frame before any crop; never above 1 (no upscaling)."""
    if not spec.max_height:  # width-only: the height follows
        return min(spec.max_width / width, 1.0)
    if not spec.max_width:  # height-only
        return min(spec.max_height / height, 1.0)
    fx, fy = spec.max_width / width, spec.max_height / height
    scale = max(fx, fy) if spec.fit is Fit.COVER else min(fx, fy)
    return min(scale, 1.0)


def resized_size(spec: VariantConfig, width: int, height: int) -> tuple[int, int]:
    """Full-frame size for `spec`; for cover it is at least the box on both sides (when possible)."""
    scale = scale_for(spec, width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if spec.fit is Fit.COVER and scale < 1.0:
        w, h = max(w, min(spec.max_width, width)), max(h, min(spec.max_height, height))
    return w, h


def output_size(spec: VariantConfig, width: int, height: int) -> tuple[int, int]:
    """Final pixel size of the variant."""
    w, h = resized_size(spec, width, height)
    if spec.fit is Fit.COVER:
        return min(w, spec.max_width), min(h, spec.max_height)
    return w, h


def draft_size(
    specs: tuple[VariantConfig, ...], width: int, height: int, headroom: float = DRAFT_HEADROOM
) -> tuple[int, int] | None:
    """The smallest decode size that still leaves `headroom` over every variant, or None."""
    scale = max(scale_for(spec, width, height) for spec in specs) * headroom
    if scale >= 1.0:
        return None
    return math.ceil(width * scale), math.ceil(height * scale)


# EXIF orientation → (sides swapped, x flipped, y flipped) in the upright frame.
_ORIENTATIONS = {
    1: (False, False, False),
    2: (False, True, False),
    3: (False, True, True),
    4: (False, False, True),
    5: (True, False, False),
    6: (True, True, False),
    7: (True, True, True),
    8: (True, False, True),
}

Box = tuple[float, float, float, float]


def content_box(size: tuple[int, int], extent: tuple[float, float], orientation: int) -> Box:
    """Where the whole frame lies in a draft-decoded, then oriented, image.

    A JPEG decoded at 1/s covers `extent` = (W/s, H/s) pixels, but Pillow rounds the image up to
    whole pixels; resizing from the full rounded image would stretch it by up to a pixel. The
    spare fraction sits at the far edge, which orientation may have moved to the near edge.
    """
    swapped, flip_x, flip_y = _ORIENTATIONS.get(orientation, _ORIENTATIONS[1])
    ex, ey = (extent[1], extent[0]) if swapped else extent
    x0 = size[0] - ex if flip_x else 0.0
    y0 = size[1] - ey if flip_y else 0.0
    return (x0, y0, x0 + ex, y0 + ey)


def cover_region(spec: VariantConfig, width: int, height: int) -> Box:
    """The part of the upright frame a `cover` variant shows, in frame pixels (exact, fractional).

    Cropping this region and resizing it in one step is what `ImageOps.fit` does; resizing first
    and cropping whole pixels after would shift the result by a fraction of a pixel.
    """
    out_w, out_h = output_size(spec, width, height)
    if width * out_h >= height * out_w:
        crop_w, crop_h = height * out_w / out_h, float(height)
    else:
        crop_w, crop_h = float(width), width * out_h / out_w
    name = spec.gravity.value
    fx = 0.0 if "west" in name else 1.0 if "east" in name else 0.5
    fy = 0.0 if "north" in name else 1.0 if "south" in name else 0.5
    x0, y0 = (width - crop_w) * fx, (height - crop_h) * fy
    return (x0, y0, x0 + crop_w, y0 + crop_h)


# Gravities that look at the pixels; the compass ones are plain arithmetic (`cover_region`).
CONTENT_AWARE = (Gravity.ENTROPY, Gravity.ATTENTION, Gravity.AUTO)


def crop_box(
    image: Image.Image,
    size: tuple[int, int],
    gravity: Gravity,
    focus: tuple[float, float] = (0.5, 0.5),
    faces: Sequence[Face] = (),
    *,
    keep_focus: bool = False,
) -> tuple[int, int, int, int]:
    """Where to cut a `size` window out of `image` (the whole frame, resized) for a content-aware
    `gravity`. AUTO: around the subject (`subject_window`); `faces` and `focus` are normalised to
    the frame; `keep_focus` (a focal point set by hand) keeps that point inside the window."""
    width, height = image.size
    if width <= size[0] and height <= size[1]:
        return (0, 0, width, height)
    if gravity is Gravity.AUTO:
        x, y = subject_window((width, height), size, focus, faces, keep_focus=keep_focus)
    else:
        x, y = _best_window(image, size, gravity)
    return (x, y, x + size[0], y + size[1])


_MAX_SCORED_FACES = 64  # the largest faces the placement looks at (a crowd's smallest are noise to it)
_CUT_PENALTY = 0.25  # a cut face's part inside the window counts against the placement
_FOCUS_MARGIN = 0.1  # a manual focal point stays this share of the window away from its edges


def subject_window(
    frame: tuple[int, int],
    size: tuple[int, int],
    focus: tuple[float, float],
    faces: Sequence[Face] = (),
    *,
    keep_focus: bool = False,
) -> tuple[int, int]:
    """The top-left corner of the `size` window of a `frame`-sized image that keeps the subject.

    Without faces: centred on `focus`, moved inside the frame where it would overflow. With
    faces, the window is slid along each free axis to the positions where some face's edge meets
    the window's edge (and the focus-centred one), and the best is kept: first the largest face
    whole, then the most face area kept whole (a face the window cuts counts against it, so a
    face is left out rather than halved; one larger than the window counts what fits), then the
    nearest to `focus`. `keep_focus`
    keeps only windows that hold `focus` away from their edges."""
    width, height = frame
    cw, ch = min(size[0], width), min(size[1], height)
    free_x, free_y = width - cw, height - ch
    centred = (
        min(max(0, round(focus[0] * width - cw / 2)), free_x),
        min(max(0, round(focus[1] * height - ch / 2)), free_y),
    )
    if not faces:
        return centred
    boxes = [
        (f.x * width, f.y * height, (f.x + f.w) * width, (f.y + f.h) * height)
        for f in sorted(faces, key=lambda f: f.area, reverse=True)[:_MAX_SCORED_FACES]
    ]

    def positions(free: int, window: int, axis: int, centre: int) -> list[int]:
        if free <= 0:
            return [0]
        found = {centre, 0, free}
        for box in boxes:
            lo, hi = box[axis], box[axis + 2]
            for p in (lo, hi - window, (lo + hi) / 2 - window / 2):
                found.add(min(max(0, round(p)), free))
        return sorted(found)

    xs = positions(free_x, cw, 0, centred[0])
    ys = positions(free_y, ch, 1, centred[1])
    if keep_focus:
        fx, fy = focus[0] * width, focus[1] * height
        mx, my = cw * _FOCUS_MARGIN, ch * _FOCUS_MARGIN
        xs = [x for x in xs if x + mx <= fx <= x + cw - mx] or [centred[0]]
        ys = [y for y in ys if y + my <= fy <= y + ch - my] or [centred[1]]
    target = (focus[0] * width - cw / 2, focus[1] * height - ch / 2)
    best, best_score = centred, (False, -1.0, 0.0)
    for x in xs:
        for y in ys:
            kept = 0.0
            whole_largest = False
            for i, (x0, y0, x1, y1) in enumerate(boxes):
                ix = min(x1, x + cw) - max(x0, x)
                iy = min(y1, y + ch) - max(y0, y)
                if ix <= 0 or iy <= 0:
                    continue
                area = (x1 - x0) * (y1 - y0)
                inside = ix * iy
                if inside >= area * 0.999:
                    kept += area
                    whole_largest = whole_largest or i == 0
                elif x1 - x0 > cw or y1 - y0 > ch:
                    kept += inside  # a face larger than the window: as much of it as fits
                else:
                    kept -= inside * _CUT_PENALTY  # a face that could be whole, cut: worse than left out
            score = (whole_largest, round(kept, 3), -abs(x - target[0]) - abs(y - target[1]))
            if score > best_score:
                best, best_score = (x, y), score
    return best


def _attention_map(small: Image.Image) -> Image.Image:
    """Where people look, cheaply: edges plus colour saturation (sharp's `attention` in spirit)."""
    edges = small.convert("L").filter(ImageFilter.FIND_EDGES)
    if edges.width > 2 and edges.height > 2:
        # The filter leaves the 1 px border unfiltered (raw grey levels, not edges): zero it.
        inner = edges.crop((1, 1, edges.width - 1, edges.height - 1))
        edges = Image.new("L", edges.size, 0)
        edges.paste(inner, (1, 1))
    saturation = small.convert("HSV").getchannel("S")
    return Image.blend(edges, saturation, 0.5)


def faces_centre(faces: Sequence[Face]) -> tuple[float, float]:
    """The centre of the faces, each weighted by its area (the largest face pulls hardest)."""
    total = sum(f.area for f in faces)
    if total <= 0:
        return (0.5, 0.5)
    x = sum(f.centre[0] * f.area for f in faces) / total
    y = sum(f.centre[1] * f.area for f in faces) / total
    return (round(min(max(x, 0.0), 1.0), 3), round(min(max(y, 0.0), 1.0), 3))


def focal_point(image: Image.Image) -> tuple[float, float]:
    """The normalised (x, y) centre of attention of a small full-frame image: the centroid of
    the attention map, squared so that the strongest region outweighs a wide weak background.
    Column and row means come from Pillow's box resize, so no pixel goes through Python."""
    small = image.convert("RGB")
    if max(small.size) > 128:
        small.thumbnail((128, 128), Image.Resampling.BOX)
    weight = _attention_map(small).point(lambda v: v * v // 255)
    width, height = weight.size
    # One band ("L"): one number a pixel.
    columns = cast(list[int], list(weight.resize((width, 1), Image.Resampling.BOX).get_flattened_data()))
    rows = cast(list[int], list(weight.resize((1, height), Image.Resampling.BOX).get_flattened_data()))
    if not sum(columns) or not sum(rows):
        return (0.5, 0.5)
    x = sum((i + 0.5) * c for i, c in enumerate(columns)) / sum(columns) / width
    y = sum((j + 0.5) * r for j, r in enumerate(rows)) / sum(rows) / height
    return (round(x, 3), round(y, 3))


def _best_window(image: Image.Image, size: tuple[int, int], gravity: Gravity) -> tuple[int, int]:
    """Slide the window along the free axis and keep the most interesting position.

    Entropy scores detail (sharp's `entropy`); attention scores edges plus saturation, a cheap
    stand-in for where people look. Scored on a ≤ 256 px copy, so it costs a few milliseconds.
    """
    width, height = image.size
    shrink = max(1.0, max(width, height) / 256)
    small = image.convert("RGB").resize((max(1, round(width / shrink)), max(1, round(height / shrink))))
    if gravity is Gravity.ATTENTION:
        score_image = _attention_map(small)
    else:
        score_image = small.convert("L")
    sw, sh = max(1, round(size[0] / shrink)), max(1, round(size[1] / shrink))
    free_x, free_y = small.width - sw, small.height - sh
    steps = 12
    best, best_score = (free_x // 2, free_y // 2), -1.0
    for k in range(steps + 1):
        x = round(free_x * k / steps) if free_x > 0 else 0
        y = round(free_y * k / steps) if free_y > 0 else 0
        window = score_image.crop((x, y, x + sw, y + sh))
        score = ImageStat.Stat(window).mean[0] if gravity is Gravity.ATTENTION else window.entropy()
        if score > best_score:
            best, best_score = (x, y), score
    x = min(round(best[0] * shrink), width - size[0]) if width > size[0] else 0
    y = min(round(best[1] * shrink), height - size[1]) if height > size[1] else 0
    return max(0, x), max(0, y)
