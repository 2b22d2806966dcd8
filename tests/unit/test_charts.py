"""bench/charts.py: the benchmarks' JSON drawn as SVG that parses, carries every value and puts the
bars in the right order (figures from a small fixture, not a benchmark run)."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import charts  # noqa: E402  (bench/ is not a package)

SVG = "{http://www.w3.org/2000/svg}"


def _impl(wall: float, cpu: float, rss: float) -> dict:
    return {"wall_ms": wall, "cpu_ms": cpu, "peak_rss_mb": rss, "bytes": 1000, "ssim_min": 0.95}


PROCESSOR = {
    "bench": "bench/processor.py",
    "date": "2026-12-07T22:30:00Z",
    "load_before": "0.50 0.40 0.30",
    "load_after": "1.50 0.90 0.50",
    "repeat": 3,
    "inputs": [
        {
            "input": "webp-lossy.webp",
            "set": "mixed",
            "megapixels": 16.8,
            "impls": {"ours": _impl(663, 966, 131), "vips": _impl(564, 688, 93), "naive": _impl(3769, 3700, 1449)},
        },
        {
            "input": "heic.heic",
            "set": "mixed",
            "megapixels": 12.2,
            "impls": {"ours": _impl(1494, 1598, 147), "vips": None, "naive": _impl(3672, 3600, 989)},
        },
    ],
    "summaries": {},
}
CORPUS = {
    **PROCESSOR,
    "inputs": [],
    "summaries": {
        "corpus (.corpus)": {
            impl: {"wall_s": s, "mean_ms": ms, "peak_rss_max_mb": mb, "bytes": 1, "ssim_min": 0.9, "images": 30}
            for impl, s, ms, mb in (
                ("ours", 5.39, 180, 126.6),
                ("vips", 4.9, 163, 140.2),
                ("naive", 59.37, 1979, 1410.3),
                ("plain", 8.14, 271, 209.9),
            )
        }
    },
}
ONDEMAND = {
    "bench": "bench/ondemand.py",
    "date": "2026-12-07T22:40:00Z",
    "load_before": "0.7",
    "load_after": "1.3",
    "rounds": 7,
    "rows": [
        {
            "input": "12 MP JPEG",
            "output": "w640.webp",
            "first_p50_ms": 159.0,
            "first_p95_ms": 238.0,
            "hit_p50_ms": 10.9,
            "hit_p95_ms": 18.0,
        }
    ],
    "cost_per_million": [
        {
            "request": "API, first request",
            "s3_requests": "1 LIST + 1 PUT",
            "s3_usd": 11.2,
            "lambda_usd": 7.26,
            "total_usd": 18.46,
        },
        {"request": "API, hit", "s3_requests": "1 LIST", "s3_usd": 5.0, "lambda_usd": None, "total_usd": 5.0},
        {"request": "CDN, hit at the edge", "s3_requests": "none", "s3_usd": 0.0, "lambda_usd": 0.0, "total_usd": 0.0},
    ],
    "lambda_first_ms": {"processing": 239, "vcpu": 0.58, "s3_and_http": 118},
}


@pytest.fixture
def drawn(tmp_path: Path) -> dict[str, ET.Element]:
    data = tmp_path / "data"
    data.mkdir()
    for name, figures in (
        ("processor-libvips.json", PROCESSOR),
        ("processor-corpus.json", CORPUS),
        ("ondemand.json", ONDEMAND),
    ):
        (data / name).write_text(json.dumps(figures))
    out = tmp_path / "charts"
    assert charts.main(["--data", str(data), "--out", str(out)]) == 0
    return {p.stem: ET.parse(p).getroot() for p in sorted(out.glob("*.svg"))}


def _texts(svg: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]


def _bars(svg: ET.Element) -> dict[str, float]:
    """Each bar's width, keyed by its tooltip ('<group>, <series>: <value> <unit>')."""
    return {
        rect.find(f"{SVG}title").text: float(rect.get("width"))
        for rect in svg.iter(f"{SVG}rect")
        if rect.find(f"{SVG}title") is not None
    }


def test_every_chart_is_drawn_and_parses(drawn: dict[str, ET.Element]) -> None:
    assert set(drawn) == {
        "processor-time",
        "processor-cpu",
        "processor-memory",
        "processor-ratio",
        "processor-naive",
        "ondemand-latency",
        "ondemand-cost",
    }
    for svg in drawn.values():
        assert svg.tag == f"{SVG}svg"
        width, height = float(svg.get("width")), float(svg.get("height"))
        background = svg.find(f"{SVG}rect")  # the first shape: white, the whole picture (dark mode)
        assert background.get("fill") == "#ffffff"
        assert (float(background.get("width")), float(background.get("height"))) == (width, height)
        assert svg.find(f"{SVG}title").text


def test_the_processor_charts_carry_the_values(drawn: dict[str, ET.Element]) -> None:
    time_texts = _texts(drawn["processor-time"])
    for value in ("663 ms", "564 ms", "3,769 ms", "1,494 ms", "3,672 ms"):
        assert value in time_texts
    assert any("not measured" in t for t in time_texts), "libvips cannot read the HEIC: said, not drawn as 0"
    assert any("2026-12-07" in t and "0.50 0.40 0.30" in t for t in time_texts), "the run and its load"
    assert {"131 MB", "93 MB", "1,449 MB"} <= set(_texts(drawn["processor-memory"]))
    assert {"966 ms", "688 ms"} <= set(_texts(drawn["processor-cpu"]))
    ratio_texts = _texts(drawn["processor-ratio"])
    assert {f"{663 / 564:.2f}×", f"{966 / 688:.2f}×"} <= set(ratio_texts)
    bars = _bars(drawn["processor-time"])
    ours, vips, naive = (
        bars[f"webp-lossy.webp, {s}: {v} ms"] for s, v in (("ours", 663), ("libvips", 564), ("naive recipe", 3769))
    )
    assert vips < ours < naive, "longer bars for longer times"
    assert not any("heic.heic, libvips" in key for key in bars)


def test_the_naive_recipe_chart(drawn: dict[str, ET.Element]) -> None:
    texts = _texts(drawn["processor-naive"])
    assert {"180 ms, 127 MB", "1,979 ms, 1,410 MB", "271 ms, 210 MB"} <= set(texts)
    assert {"corpus", "30 images, .corpus"} <= set(texts)


def test_on_demand_first_request_against_hit_and_cost(drawn: dict[str, ET.Element]) -> None:
    latency = drawn["ondemand-latency"]
    assert {"159 ms (p95 238)", "10.9 ms (p95 18.0)"} <= set(_texts(latency))
    bars = _bars(latency)
    first = bars["12 MP JPEG → w640.webp, first request: 159 ms"]
    hit = bars["12 MP JPEG → w640.webp, hit: 10.9 ms"]
    assert first / hit == pytest.approx(159 / 10.9, rel=0.01), "a linear axis: bar lengths in proportion"
    cost = drawn["ondemand-cost"]
    texts = _texts(cost)
    assert {"$18.46", "$0.00", "$5.00 + the API function's invocation"} <= set(texts)
    stacked = _bars(cost)
    s3, lam = (
        stacked["API, first request, S3 requests: 11.2 US$ per million requests"],
        stacked["API, first request, Lambda: 7.26 US$ per million requests"],
    )
    assert s3 / lam == pytest.approx(11.2 / 7.26, rel=0.01)
    assert any(re.search(r"239 ms of processing", t) for t in texts)


def test_no_data_is_an_error_not_empty_charts(tmp_path: Path) -> None:
    assert charts.main(["--data", str(tmp_path), "--out", str(tmp_path / "charts")]) == 2
    assert not (tmp_path / "charts").exists()


def test_the_committed_charts_are_drawn_from_the_committed_figures(tmp_path: Path) -> None:
    """docs/charts/*.svg are what `python3 bench/charts.py` makes of docs/data/*.json today."""
    assert charts.main(["--data", str(ROOT / "docs" / "data"), "--out", str(tmp_path)]) == 0
    drawn = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.svg")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "charts").glob("*.svg")}
    assert drawn == committed, "run `python3 bench/charts.py` after changing docs/data or bench/charts.py"
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    missing = [name for name in committed if f"](charts/{name})" not in performance]
    assert not missing, f"charts docs/performance.md does not show: {missing}"
