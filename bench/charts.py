"""Draw the benchmark figures as SVG charts for docs/performance.md.

    python3 bench/charts.py [--data docs/data] [--out docs/charts]

Reads the JSON the benchmarks write with `--json` (committed under docs/data/ from real runs) and
writes one SVG per chart into docs/charts/: horizontal bars with their values written beside them,
an axis with grid lines and a legend, on a white background so that they read the same in GitHub's
light and dark themes. Plain Python (no plotting library); a chart is drawn only when its data
file is there:

    processor-libvips.json (bench/processor.py --json)  → processor-time.svg, processor-cpu.svg,
                                                            processor-memory.svg, processor-ratio.svg
    processor-corpus.json  (bench/processor.py --json, with the corpus)
                                                         → processor-naive.svg
    ondemand.json          (bench/ondemand.py --json)    → ondemand-latency.svg, ondemand-cost.svg
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent

# Colours that stay apart for the common colour-vision deficiencies (Okabe-Ito), dark enough on white.
COLOURS = {
    "ours": "#0072b2",
    "libvips": "#e69f00",
    "naive recipe": "#999999",
    "plain Pillow": "#009e73",
    "first request": "#0072b2",
    "hit": "#56b4e9",
    "S3 requests": "#e69f00",
    "Lambda": "#0072b2",
    "CPU": "#0072b2",
    "wall": "#56b4e9",
}
FALLBACK = ("#cc79a7", "#d55e00", "#f0e442", "#000000")
FONT = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"

WIDTH = 800
LABEL_W = 250  # the group labels' column
VALUE_W = 110  # room right of the longest bar for its value
BAR_H = 14
BAR_GAP = 3
GROUP_GAP = 12


@dataclass
class Bar:
    series: str
    value: float | None  # None: not measured (drawn as a note, no bar)
    text: str  # what is written beside the bar
    parts: list[tuple[str, float]] = field(default_factory=list)  # stacked: (series, value) pieces


@dataclass
class Group:
    label: str
    bars: list[Bar]
    note: str = ""  # a second, smaller line under the label


@dataclass
class Chart:
    name: str  # file name without .svg
    title: str
    subtitle: str
    unit: str  # the axis' unit
    groups: list[Group]
    log: bool = False
    lines: list[tuple[float, str]] = field(default_factory=list)  # reference lines: (x, label)


def _colour(series: str, order: list[str]) -> str:
    if series in COLOURS:
        return COLOURS[series]
    return FALLBACK[order.index(series) % len(FALLBACK)]


def _nice_ticks(top: float) -> list[float]:
    """0 … top in 4–8 round steps."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _log_bounds(low: float, high: float) -> tuple[float, float]:
    """The nearest 1-2-5 steps below the smallest value and above the largest."""
    steps = [
        m * 10.0**e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2) for m in (1, 2, 5)
    ]
    below = max(step for step in steps if step <= low)
    above = min(step for step in steps if step >= high)
    return below, above if above > below else below * 10


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for m in (1, 2, 5):
            value = m * 10**exponent
            if low <= value <= high:
                ticks.append(float(value))
    return ticks


def _tick_text(value: float) -> str:
    if value >= 1000 and value % 1000 == 0:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def render(chart: Chart) -> str:
    """The chart as an SVG document."""
    series_order: list[str] = []
    for group in chart.groups:
        for bar in group.bars:
            for name in [bar.series, *(p[0] for p in bar.parts)]:
                if name not in series_order and not (bar.parts and name == bar.series):
                    series_order.append(name)
    values = [b.value for g in chart.groups for b in g.bars if b.value is not None]
    values += [x for x, _ in chart.lines]
    # The label column grows with the longest label (about 6.6 px a character at 12 px), the plot keeps its width.
    longest = max((len(g.label) for g in chart.groups), default=0)
    label_w = max(LABEL_W, math.ceil(20 + 6.6 * longest))
    svg_w = WIDTH + label_w - LABEL_W
    plot_x0, plot_x1 = label_w, svg_w - VALUE_W
    if chart.log:
        positive = [v for v in values if v > 0] or [1.0]
        low, high = _log_bounds(min(positive) / 3, max(positive))  # room for the shortest bar to show
        ticks = _log_ticks(low, high)

        def x_of(value: float) -> float:
            value = max(value, low)
            return plot_x0 + (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low)) * (
                plot_x1 - plot_x0
            )
    else:
        ticks = _nice_ticks(max(values, default=1.0))
        top = ticks[-1]

        def x_of(value: float) -> float:
            return plot_x0 + value / top * (plot_x1 - plot_x0)

    legend_y = 62
    y = legend_y + 22
    body: list[str] = []
    for group in chart.groups:
        n = len(group.bars)
        height = n * BAR_H + (n - 1) * BAR_GAP
        room = 30 if group.note else BAR_H  # the label and its note need two lines
        if height < room:
            y += (room - height) / 2
        label_y = y + height / 2 + (0 if group.note else 4)
        body.append(
            f'<text x="{label_w - 10}" y="{label_y:.1f}" text-anchor="end" class="label">{escape(group.label)}</text>'
        )
        if group.note:
            body.append(
                f'<text x="{label_w - 10}" y="{label_y + 13:.1f}" text-anchor="end" class="note">'
                f"{escape(group.note)}</text>"
            )
        for bar in group.bars:
            if bar.value is None:
                body.append(
                    f'<text x="{plot_x0 + 4}" y="{y + BAR_H - 3:.1f}" class="note">{escape(bar.series)}: '
                    f"{escape(bar.text)}</text>"
                )
                y += BAR_H + BAR_GAP
                continue
            x = plot_x0
            pieces = bar.parts or [(bar.series, bar.value)]
            start = 0.0
            for series, value in pieces:
                x_end = x_of(start + value) if not chart.log else x_of(value)
                width = max(x_end - x, 0.0) if value > 0 else 0.0
                body.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR_H}" '
                    f'fill="{_colour(series, series_order)}"><title>{escape(group.label)}, {escape(series)}: '
                    f"{value:g} {escape(chart.unit)}</title></rect>"
                )
                x, start = x_end, start + value
            body.append(f'<text x="{x + 5:.1f}" y="{y + BAR_H - 3:.1f}" class="value">{escape(bar.text)}</text>')
            y += BAR_H + BAR_GAP
        y += GROUP_GAP - BAR_GAP + max(room - height, 0) / 2
    plot_y0, plot_y1 = legend_y + 14, y
    axis: list[str] = []
    for tick in ticks:
        x = x_of(tick)
        axis.append(f'<line x1="{x:.1f}" y1="{plot_y0}" x2="{x:.1f}" y2="{plot_y1}" class="grid"/>')
        axis.append(f'<text x="{x:.1f}" y="{plot_y1 + 15}" text-anchor="middle" class="tick">{_tick_text(tick)}</text>')
    axis.append(f'<line x1="{plot_x0}" y1="{plot_y0}" x2="{plot_x0}" y2="{plot_y1}" class="axis"/>')
    for value, label in chart.lines:
        x = x_of(value)
        axis.append(f'<line x1="{x:.1f}" y1="{plot_y0 - 4}" x2="{x:.1f}" y2="{plot_y1}" class="ref"/>')
        axis.append(f'<text x="{x + 3:.1f}" y="{plot_y0 - 6}" class="note">{escape(label)}</text>')
    scale = " (logarithmic)" if chart.log else ""
    axis.append(
        f'<text x="{(plot_x0 + plot_x1) / 2:.1f}" y="{plot_y1 + 32}" text-anchor="middle" class="tick">'
        f"{escape(chart.unit)}{scale}</text>"
    )
    legend: list[str] = []
    x = label_w
    for series in series_order:
        legend.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{_colour(series, series_order)}"/>'
        )
        legend.append(f'<text x="{x + 17}" y="{legend_y}" class="label">{escape(series)}</text>')
        x += 30 + 7 * len(series)
    height = plot_y1 + 44
    style = (
        f"text {{ font-family: {FONT}; fill: #1f2328; }} .title {{ font-size: 16px; font-weight: 600; }} "
        ".subtitle { font-size: 12px; fill: #59636e; } .label { font-size: 12px; } "
        ".note { font-size: 11px; fill: #59636e; } "
        ".value, .note { paint-order: stroke; stroke: #ffffff; stroke-width: 3px; stroke-linejoin: round; } "
        ".value { font-size: 11px; } .tick { font-size: 11px; fill: #59636e; } "
        ".grid { stroke: #d1d9e0; stroke-width: 1; } .axis { stroke: #59636e; stroke-width: 1; } "
        ".ref { stroke: #cf222e; stroke-width: 1; stroke-dasharray: 4 3; }"
    )
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{svg_w}" height="{height}" '
            f'viewBox="0 0 {svg_w} {height}" role="img" aria-labelledby="{chart.name}-title">',
            f'<title id="{chart.name}-title">{escape(chart.title)}</title>',
            f"<style>{style}</style>",
            f'<rect x="0" y="0" width="{svg_w}" height="{height}" fill="#ffffff"/>',
            f'<text x="16" y="24" class="title">{escape(chart.title)}</text>',
            f'<text x="16" y="42" class="subtitle">{escape(chart.subtitle)}</text>',
            *legend,
            *axis,
            *body,
            "</svg>",
            "",
        ]
    )


# -- the charts, from the benchmarks' JSON --------------------------------------------------------

IMPL_NAMES = {"ours": "ours", "vips": "libvips", "naive": "naive recipe", "plain": "plain Pillow"}


def _run_note(data: dict) -> str:
    return f"{data.get('date', '?')[:10]}, load average {data.get('load_before', '?')} → {data.get('load_after', '?')}"


def _label(row: dict) -> tuple[str, str]:
    """An input's name for the label column, and what the parenthesis said (with its size) below it."""
    name, _, said = row["input"].partition(" (")
    detail = f"{row['megapixels']} MP"
    return name, f"{detail}, {said.rstrip(')')}" if said else detail


def processor_charts(data: dict) -> list[Chart]:
    rows = [r for r in data["inputs"] if r["set"] != "corpus"]
    if not rows:
        return []
    note = f"bench/processor.py, best of {data.get('repeat', 1)} interleaved runs; {_run_note(data)}"
    impls = [i for i in ("ours", "vips", "naive") if any(r["impls"].get(i) for r in rows)]

    def groups(key: str, unit: str, digits: int = 0) -> list[Group]:
        out = []
        for row in rows:
            bars = []
            for impl in impls:
                figures = row["impls"].get(impl)
                if figures is None:
                    bars.append(Bar(IMPL_NAMES[impl], None, "not measured (no HEVC decoder in pyvips-binary)"))
                else:
                    value = figures[key]
                    bars.append(Bar(IMPL_NAMES[impl], value, f"{value:,.{digits}f} {unit}"))
            name, detail = _label(row)
            out.append(Group(name, bars, detail))
        return out

    ratio_groups = []
    for row in rows:
        ours, vips = row["impls"].get("ours"), row["impls"].get("vips")
        if not ours or not vips:
            continue
        wall, cpu = ours["wall_ms"] / vips["wall_ms"], ours["cpu_ms"] / vips["cpu_ms"]
        name, detail = _label(row)
        ratio_groups.append(Group(name, [Bar("CPU", cpu, f"{cpu:.2f}×"), Bar("wall", wall, f"{wall:.2f}×")], detail))
    read = [r for r in rows if r["impls"].get("ours") and r["impls"].get("vips")]
    if read:
        wall = sum(r["impls"]["ours"]["wall_ms"] for r in read) / sum(r["impls"]["vips"]["wall_ms"] for r in read)
        cpu = sum(r["impls"]["ours"]["cpu_ms"] for r in read) / sum(r["impls"]["vips"]["cpu_ms"] for r in read)
        ratio_groups.append(
            Group("all of them", [Bar("CPU", cpu, f"{cpu:.2f}×"), Bar("wall", wall, f"{wall:.2f}×")], "sum / sum")
        )
    return [
        Chart(
            "processor-time",
            "Time per upload: ours, libvips and the naive recipe (wall clock)",
            note,
            "ms",
            groups("wall_ms", "ms"),
            log=True,
        ),
        Chart(
            "processor-cpu",
            "CPU time per upload: ours, libvips and the naive recipe",
            note + "; all threads",
            "ms",
            groups("cpu_ms", "ms"),
            log=True,
        ),
        Chart(
            "processor-memory",
            "Peak memory per upload (VmHWM of a fresh process)",
            note,
            "MB",
            groups("peak_rss_mb", "MB"),
            log=True,
        ),
        Chart(
            "processor-ratio",
            "Ours / libvips, same run: CPU time (the steady figure) and wall clock; lower is faster",
            note,
            "× libvips' time",
            ratio_groups,
            lines=[(1.0, "libvips"), (1.25, "target overall 1.25×")],
        ),
    ]


def naive_chart(data: dict) -> list[Chart]:
    summaries = data.get("summaries") or {}
    if not summaries:
        return []
    note = f"bench/processor.py, best of {data.get('repeat', 1)}; {_run_note(data)}"
    groups = []
    for label, stats in summaries.items():
        bars = []
        for impl in ("ours", "vips", "plain", "naive"):
            if impl in stats:
                ms = stats[impl]["mean_ms"]
                bars.append(Bar(IMPL_NAMES[impl], ms, f"{ms:,.0f} ms, {stats[impl]['peak_rss_max_mb']:,.0f} MB"))
        images = stats["ours"]["images"]
        name, _, said = label.partition(" (")  # "synthetic 6028×3391 JPEG q92 (7.4 MB)": the size goes below
        detail = f"{images} image{'s' if images > 1 else ''}" + (f", {said.rstrip(')')}" if said else "")
        groups.append(Group(name, bars, detail))
    return [
        Chart(
            "processor-naive",
            "Against the naive recipe and a plain Pillow: time per image (peak memory beside it)",
            note,
            "mean ms per image",
            groups,
            log=True,
        )
    ]


def ondemand_charts(data: dict) -> list[Chart]:
    note = f"bench/ondemand.py, {data.get('rounds', '?')} rounds through serve; {_run_note(data)}"
    latency = [
        Group(
            f"{row['input']} → {row['output']}",
            [
                Bar(
                    "first request",
                    row["first_p50_ms"],
                    f"{row['first_p50_ms']:.0f} ms (p95 {row['first_p95_ms']:.0f})",
                ),
                Bar("hit", row["hit_p50_ms"], f"{row['hit_p50_ms']:.1f} ms (p95 {row['hit_p95_ms']:.1f})"),
            ],
        )
        for row in data["rows"]
    ]
    cost = []
    for row in data["cost_per_million"]:
        lam = row["lambda_usd"]
        parts = [("S3 requests", row["s3_usd"]), ("Lambda", lam or 0.0)]
        text = f"${row['total_usd']:.2f}" + (" + the API function's invocation" if lam is None else "")
        cost.append(Group(row["request"], [Bar("total", row["total_usd"], text, parts)], row["s3_requests"]))
    lam = data.get("lambda_first_ms") or {}
    cost_note = "us-east-1 list prices; Lambda arm64 at 1024 MB"
    if lam:
        cost_note += (
            f" ({lam['processing']} ms of processing CPU time ÷ {lam['vcpu']} vCPU"
            f" + {lam['s3_and_http']} ms of S3 and HTTP)"
        )
    return [
        Chart(
            "ondemand-latency",
            "Sizes on demand: first request (made in it) vs hit (stored), p50",
            note,
            "ms",
            latency,
        ),
        Chart(
            "ondemand-cost", "Cost per million requests, by request type", cost_note, "US$ per million requests", cost
        ),
    ]


SOURCES = {
    "processor-libvips.json": processor_charts,
    "processor-corpus.json": naive_chart,
    "ondemand.json": ondemand_charts,
}


def charts_from(data_dir: Path) -> list[Chart]:
    charts = []
    for name, make in SOURCES.items():
        path = data_dir / name
        if path.exists():
            charts += make(json.loads(path.read_text(encoding="utf-8")))
    return charts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "charts")
    args = parser.parse_args(argv)
    charts = charts_from(args.data)
    if not charts:
        print(f"no benchmark JSON in {args.data} ({', '.join(SOURCES)})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for chart in charts:
        target = args.out / f"{chart.name}.svg"
        target.write_text(render(chart), encoding="utf-8")
        print(target.relative_to(ROOT) if target.is_relative_to(ROOT) else target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
