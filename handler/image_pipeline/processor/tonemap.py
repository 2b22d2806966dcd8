"""HDR10 HEICs (PQ or HLG, BT.2020, no gain map) tone-mapped to SDR instead of narrowed flat.

pillow-heif hands a 10/12-bit HEIC over as 8-bit RGB holding the *encoded* signal: read as sRGB,
a PQ picture is dim and grey (203-nit white lands at 148 of 255) and an HLG one washed out. What
is done instead, with Pillow and LittleCMS only:

1. A 256-entry table per channel (`point`, on the resized variants): the signal to display light
   (PQ: SMPTE ST 2084; HLG: its inverse OETF and the BT.2100 OOTF for a 1000-nit display, per
   channel), highlights rolled off with the ITU-R BT.2390 EETF from a 1000-nit peak to 203 nits
   (HDR reference white, ITU-R BT.2408), which becomes SDR white; below ~100 nits nothing changes.
   The result is encoded with a 2.2 gamma.
2. An ICC profile made for it (the file's own primaries from its nclx box, D50-adapted with
   Bradford, that 2.2 gamma), handed to the pipeline's usual LittleCMS step, which converts to
   sRGB on the small results (BT.2020 colours outside sRGB are clipped there, as for any wide-gamut
   upload; `KEEP_ICC_PROFILE=true` embeds this profile instead).

Per channel rather than on luminance (a table cannot see the other channels): bright saturated
highlights drift towards white a little sooner than a luminance tone-map would take them. The
8-bit signal pillow-heif delivers is what the table reads: PQ spends ~148 of its 256 codes below
203 nits, enough for 8-bit SDR output.
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache

PQ, HLG = 16, 18  # ITU-T H.273 transfer_characteristics
PEAK = 1000.0  # nits: the mastering peak assumed (HLG's nominal display; HDR10 stills rarely say theirs)
WHITE = 203.0  # nits: HDR reference white (ITU-R BT.2408), shown as SDR white
GAMMA = 2.2  # the tables' output encoding, and the profile's curve

_M1, _M2 = 2610 / 16384, 2523 / 4096 * 128
_C1, _C2, _C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_HLG_A = 0.17883277
_HLG_B, _HLG_C = 1 - 4 * _HLG_A, 0.5 - _HLG_A * math.log(4 * _HLG_A)
_D50 = (0.9642, 1.0, 0.8249)
_BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))


def curve(info: dict) -> tuple[tuple[int, ...], bytes] | None:
    """(the 256-entry table, the ICC profile of its output) for a picture whose pillow-heif `info`
    says PQ or HLG (its nclx box), or None: SDR, an ICC profile of its own, no nclx."""
    nclx = info.get("nclx_profile")
    if not isinstance(nclx, dict) or info.get("icc_profile") or nclx.get("transfer_characteristics") not in (PQ, HLG):
        return None
    try:
        xy = tuple(
            (float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
            for c in ("red", "green", "blue", "white")
        )
        profile = _profile(tuple(round(v, 4) for pair in xy for v in pair))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return _table(nclx["transfer_characteristics"]), profile


def pq_eotf(signal: float) -> float:
    """SMPTE ST 2084: PQ signal (0..1) → nits."""
    power = signal ** (1 / _M2)
    return 10000 * (max(power - _C1, 0.0) / (_C2 - _C3 * power)) ** (1 / _M1)


def pq_inverse(nits: float) -> float:
    """nits → PQ signal (0..1)."""
    power = (max(nits, 0.0) / 10000) ** _M1
    return ((_C1 + _C2 * power) / (1 + _C3 * power)) ** _M2


def hlg_display(signal: float) -> float:
    """HLG signal (0..1) → nits on a 1000-nit display: inverse OETF, then the BT.2100 OOTF
    (system gamma 1.2) applied per channel."""
    scene = signal * signal / 3 if signal <= 0.5 else (math.exp((signal - _HLG_C) / _HLG_A) + _HLG_B) / 12
    return PEAK * scene**1.2


def eetf(nits: float) -> float:
    """ITU-R BT.2390 EETF (black level 0): a source mastered to PEAK onto a display whose peak is
    WHITE, in the PQ domain; linear up to its knee, a Hermite roll-off above. Returns nits."""
    source_peak = pq_inverse(PEAK)
    e1 = min(pq_inverse(nits) / source_peak, 1.0)
    max_lum = pq_inverse(WHITE) / source_peak
    knee = 1.5 * max_lum - 0.5
    if e1 > knee:
        t = (e1 - knee) / (1 - knee)
        e1 = (2 * t**3 - 3 * t**2 + 1) * knee + (t**3 - 2 * t**2 + t) * (1 - knee) + (-2 * t**3 + 3 * t**2) * max_lum
    return pq_eotf(e1 * source_peak)


@lru_cache(maxsize=2)
def _table(transfer: int) -> tuple[int, ...]:
    to_nits = pq_eotf if transfer == PQ else hlg_display
    return tuple(round(255 * min(eetf(to_nits(code / 255)) / WHITE, 1.0) ** (1 / GAMMA)) for code in range(256))


@lru_cache(maxsize=8)
def _profile(xy: tuple[float, ...]) -> bytes:
    """A matrix/TRC profile for primaries and white point `xy` (rx, ry, gx, gy, bx, by, wx, wy)."""
    red, green, blue, white = (_xyz(xy[i], xy[i + 1]) for i in range(0, 8, 2))
    primaries = _columns(red, green, blue)
    scale = _solve(primaries, white)
    to_xyz = tuple(tuple(primaries[r][c] * scale[c] for c in range(3)) for r in range(3))
    cone_white, cone_d50 = _apply(_BRADFORD, white), _apply(_BRADFORD, _D50)
    ratio = tuple(tuple(cone_d50[r] / cone_white[r] if r == c else 0.0 for c in range(3)) for r in range(3))
    adapt = _multiply(_inverse(_BRADFORD), _multiply(ratio, _BRADFORD))
    adapted = _multiply(adapt, to_xyz)
    red_xyz, green_xyz, blue_xyz = (tuple(adapted[r][c] for r in range(3)) for c in range(3))
    return matrix_profile("HDR10 tone-mapped (s3-image-pipeline)", red_xyz, green_xyz, blue_xyz, gamma=GAMMA)


def _xyz(x: float, y: float) -> tuple[float, float, float]:
    return (x / y, 1.0, (1 - x - y) / y)


def _columns(*vectors):
    return tuple(tuple(v[r] for v in vectors) for r in range(3))


def _apply(matrix, vector):
    return tuple(sum(matrix[r][c] * vector[c] for c in range(3)) for r in range(3))


def _multiply(a, b):
    return tuple(tuple(sum(a[r][k] * b[k][c] for k in range(3)) for c in range(3)) for r in range(3))


def _inverse(m):
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    adjugate = (
        (e * i - f * h, c * h - b * i, b * f - c * e),
        (f * g - d * i, a * i - c * g, c * d - a * f),
        (d * h - e * g, b * g - a * h, a * e - b * d),
    )
    return tuple(tuple(v / det for v in row) for row in adjugate)


def _solve(m, vector):
    return _apply(_inverse(m), vector)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def matrix_profile(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile: D50-adapted XYZ colorants, one gamma."""
    desc = description.encode("ascii") + b"\0"
    tags = {
        b"desc": b"desc" + b"\0" * 4 + struct.pack(">I", len(desc)) + desc + b"\0" * (4 + 4 + 2 + 1 + 67),
        b"wtpt": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in _D50),
        b"rXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in red),
        b"gXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in green),
        b"bXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in blue),
        b"rTRC": b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0",
        b"cprt": b"text" + b"\0" * 4 + b"none\0\0\0\0",
    }
    tags[b"gTRC"] = tags[b"bTRC"] = tags[b"rTRC"]
    table, data = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
    header += b"acsp" + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0)
    header += b"".join(_s15(v) for v in _D50) + b"\0" * 4
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data
