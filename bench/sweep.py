"""Memory/CPU sweep: the real handler on the real-photo corpus under Lambda's memory → vCPU ratio.

    python bench/sweep.py [--corpus .corpus] [--memory 512,1024,1769,3008] [--photo-events 8]
                          [--repeat 3] [--goal-p95-ms 3000] [--headroom 0.25]
                          [--mode auto|cgroup|taskset]

Lambda gives a function CPU in proportion to its memory: 1769 MB = 1 vCPU, below that a
fraction (512 MB ≈ 0.29 vCPU), 3008 MB ≈ 1.7 vCPU. Each memory size here runs ONE fresh worker
process (a container: bench/handler.py's worker, the real lambda_handler, template env, tracing
on) under a CPU cap of memory/1769 CPUs:

  * cgroup (used when possible): a child cgroup with a CFS quota — cgroup v2 `cpu.max` if a v2
    hierarchy with the cpu controller is mounted, else cgroup v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (quota = period × memory/1769; period 100 ms). Only the worker is in it;
    the moto S3 server runs outside (S3 is another machine in AWS).
  * taskset (fallback): worker pinned to CPU 0, times then scaled by 1769/memory below 1769 MB
    (CPU-bound work stretches in proportion to the CPU share) and left as measured above
    (the pipeline is essentially single-threaded, so >1 vCPU buys almost nothing).

Events per worker: 1 cold event (not counted), every corpus image once (jpg/png/webp), then
--photo-events copies of a 12 MP photo: a 4000×3000 crop of the largest corpus JPEG (real photo
content), saved at q90. With --repeat R the sizes are run R times, interleaved (512, 1024, …, 512, …) so a burst of
outside load hits every size; each event's time is the median over the R workers. Per-image time
= lambda_handler wall time (what Lambda bills, rounded up
to 1 ms). Peak RSS = the worker's VmHWM after all events (interpreter + libraries + buffers).

Cost per million images (arm64, us-east-1 list prices):
  Lambda = mean seconds × memory GB × $0.0000133334 × 1e6 + $0.20 (requests)
  S3     = PUT $0.005/1000 × (variants + manifest + PutObjectTagging)
           + GET $0.0004/1000 × (manifest GET + raw GET + HEAD + GetObjectTagging)
Choice: the cheapest memory (Lambda cost of the 12 MP photo) whose 12 MP p95 ≤ --goal-p95-ms and
whose peak RSS ≤ (1 − --headroom) × memory.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FULL_VCPU_MB = 1769
GB_S_ARM64 = 0.0000133334
PER_REQUEST = 0.20 / 1e6
PUT_PRICE = 0.005 / 1000
GET_PRICE = 0.0004 / 1000


# ---------------------------------------------------------------------------------- CPU limiting
class CpuCap:
    """A cgroup that caps CPU at `cpus` (v2 cpu.max or v1 CFS quota); `prefix` runs a command in it."""

    PERIOD_US = 100_000

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.kind = None
        self.root = None
        if mode in ("auto", "cgroup"):
            self.kind, self.root = self._find()
        if self.kind is None:
            if mode == "cgroup":
                raise SystemExit("no writable cgroup CPU controller")
            self.kind = "taskset"
        self.made: list[Path] = []

    @staticmethod
    def _find() -> tuple[str | None, Path | None]:
        candidates = []
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, options, *_ = line.split()
            if fstype == "cgroup2":
                controllers = Path(mount) / "cgroup.controllers"
                if controllers.exists() and "cpu" in controllers.read_text().split():
                    candidates.append(("v2", Path(mount)))
            elif fstype == "cgroup" and "cpu" in options.split(","):
                candidates.append(("v1", Path(mount)))
        for kind, root in candidates:
            probe = root / f"bench-sweep-probe-{os.getpid()}"
            try:
                probe.mkdir()
                knob = probe / ("cpu.max" if kind == "v2" else "cpu.cfs_quota_us")
                knob.write_text("50000 100000" if kind == "v2" else "50000")
                return kind, root
            except OSError:
                continue
            finally:
                try:
                    probe.rmdir()
                except OSError:
                    pass
        return None, None

    def describe(self) -> str:
        if self.kind == "v2":
            return f"cgroup v2 cpu.max under {self.root} (period {self.PERIOD_US} µs)"
        if self.kind == "v1":
            return f"cgroup v1 cpu.cfs_quota_us under {self.root} (period {self.PERIOD_US} µs)"
        return "taskset -c 0 + time scaling (× 1769/MB below 1769 MB)"

    def prefix(self, memory_mb: int) -> list[str]:
        cpus = memory_mb / FULL_VCPU_MB
        if self.kind == "taskset":
            return ["taskset", "-c", "0"]
        group = self.root / f"bench-sweep-{os.getpid()}-{memory_mb}"
        group.mkdir(exist_ok=True)
        self.made.append(group)
        quota = int(self.PERIOD_US * cpus)
        if self.kind == "v2":
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        return ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh"]

    def scale(self, memory_mb: int) -> float:
        """Multiplier applied to measured times (taskset model only)."""
        if self.kind != "taskset":
            return 1.0
        return max(1.0, FULL_VCPU_MB / memory_mb)

    def cleanup(self) -> None:
        for group in self.made:
            try:
                group.rmdir()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------- main
def photo_12mp(corpus: Path) -> tuple[str, bytes]:
    from PIL import Image

    jpegs = sorted(
        (p for p in corpus.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")),
        key=lambda p: p.stat().st_size,
        reverse=True,
    )
    source = jpegs[0]
    with Image.open(source) as image:
        w, h = image.size
        box = ((w - 4000) // 2, (h - 3000) // 2, (w - 4000) // 2 + 4000, (h - 3000) // 2 + 3000)
        crop = image.convert("RGB").crop(box) if w >= 4000 and h >= 3000 else image.convert("RGB").resize((4000, 3000))
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=90)
    return f"12mp-crop-of-{source.stem}.jpg", out.getvalue()


def pct(values: list[float], p: float) -> float:
    import math

    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / ".corpus")
    parser.add_argument("--memory", default="512,1024,1769,3008")
    parser.add_argument("--photo-events", type=int, default=8)
    parser.add_argument("--goal-p95-ms", type=float, default=3000)
    parser.add_argument("--headroom", type=float, default=0.25, help="peak RSS must stay below (1-h) × memory")
    parser.add_argument("--repeat", type=int, default=3, help="workers per size; per-event median over them")
    parser.add_argument("--mode", choices=("auto", "cgroup", "taskset"), default="auto")
    parser.add_argument("--variants-count", type=int, default=3, help="PUTs per image besides manifest + tagging")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from coldstart import load_bench_handler  # bench/handler.py as a module

    bench = load_bench_handler()
    files = sorted(p for p in args.corpus.iterdir() if p.suffix.lower() in bench.EXTS)
    if not files:
        raise SystemExit(f"no corpus in {args.corpus} (fetch: bench/fetch-corpus {args.corpus})")
    corpus = [(p.name, p.read_bytes()) for p in files]
    photo = photo_12mp(args.corpus)
    memories = [int(m) for m in args.memory.split(",")]
    cap = CpuCap(args.mode)
    print(
        f"CPU limit: {cap.describe()}; load average before: {bench.loadavg()} (cores: {os.cpu_count()})",
        file=sys.stderr,
    )

    images = [corpus[0]] + corpus + [photo] * args.photo_events  # first = the cold event
    results = {}
    try:
        with bench.MotoProcess() as endpoint:
            for rep in range(args.repeat):  # interleaved: a burst of outside load hits every size
                for memory in memories:
                    # event i names images[i] (prepare() cycles through the list from index 0)
                    spec = bench.prepare(endpoint, images, len(images) - 1, bucket=f"sweep-{memory}-{rep}")
                    env = bench.worker_env(endpoint, tracing=True, memory_mb=memory)
                    print(f"  rep {rep + 1}/{args.repeat}, {memory} MB: {len(images)} events …", file=sys.stderr)
                    results.setdefault(memory, []).append(bench.run_worker(spec, env, prefix=cap.prefix(memory)))
                    print(f"  done; load average {bench.loadavg()}", file=sys.stderr)
    finally:
        cap.cleanup()
    print(f"load average after: {bench.loadavg()}", file=sys.stderr)

    n_corpus = len(corpus)
    puts = args.variants_count + 2  # variants + manifest + PutObjectTagging
    gets = 4  # manifest GET (404 on first processing) + raw GET + HEAD (still that upload?) + GetObjectTagging
    s3_cost = (puts * PUT_PRICE + gets * GET_PRICE) * 1e6
    rows = []
    for memory in memories:
        reps = results[memory]
        scale = cap.scale(memory)
        failures = [f for result in reps for f in result.get("failures", [])]
        walls: dict[int, list[float]] = {}
        for result in reps:
            for r in result["rows"]:
                walls.setdefault(r["event"], []).append(r["wall_ms"] * scale)
        per_event = {i: statistics.median(v) for i, v in walls.items()}  # median over repeats
        corpus_ms = [per_event[i] for i in range(1, 1 + n_corpus) if i in per_event]
        photo_ms = [per_event[i] for i in range(1 + n_corpus, len(images)) if i in per_event]
        result = {"peak_rss_kb": max(r["peak_rss_kb"] for r in reps)}
        gb = memory / 1024
        rows.append(
            {
                "memory": memory,
                "vcpu": memory / FULL_VCPU_MB,
                "corpus_mean": statistics.fmean(corpus_ms),
                "corpus_p95": pct(corpus_ms, 95),
                "photo_mean": statistics.fmean(photo_ms),
                "photo_p95": pct(photo_ms, 95),
                "rss": result["peak_rss_kb"] / 1024,
                "corpus_cost": statistics.fmean(corpus_ms) / 1000 * gb * GB_S_ARM64 * 1e6 + 0.20,
                "photo_cost": statistics.fmean(photo_ms) / 1000 * gb * GB_S_ARM64 * 1e6 + 0.20,
                "failures": len(failures),
            }
        )

    print(
        f"### Memory sweep: {n_corpus} corpus photos + {args.photo_events}× 12 MP photo "
        f"(per-event median of {args.repeat} workers) "
        f"({photo[0]}, {len(photo[1]) / 1e6:.1f} MB) per size; CPU cap: {cap.describe()}\n"
    )
    print(
        "| memory MB | vCPU | corpus mean ms | corpus p95 ms | 12 MP mean ms | 12 MP p95 ms | peak RSS MB "
        "| Lambda $/M corpus | Lambda $/M 12 MP | S3 requests $/M | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['memory']} | {r['vcpu']:.2f} | {r['corpus_mean']:.0f} | {r['corpus_p95']:.0f} "
            f"| {r['photo_mean']:.0f} | {r['photo_p95']:.0f} | {r['rss']:.0f} | {r['corpus_cost']:.2f} "
            f"| {r['photo_cost']:.2f} | {s3_cost:.2f} | {r['failures']} |"
        )
    print(
        f"\nLambda $/M = mean handler seconds × GB × ${GB_S_ARM64} × 1e6 + $0.20 requests; "
        f"S3 $/M = {puts} PUT-class × $0.005/1000 + {gets} GET-class × $0.0004/1000, per image, ×1e6 "
        f"(same at every memory size)."
    )
    fits = [
        r
        for r in rows
        if r["photo_p95"] <= args.goal_p95_ms and r["rss"] <= (1 - args.headroom) * r["memory"] and not r["failures"]
    ]
    if fits:
        best = min(fits, key=lambda r: r["photo_cost"])
        print(
            f"\nChoice: **{best['memory']} MB** — cheapest 12 MP cost (${best['photo_cost']:.2f}/M Lambda) with "
            f"12 MP p95 {best['photo_p95']:.0f} ms ≤ {args.goal_p95_ms:.0f} ms and peak RSS {best['rss']:.0f} MB "
            f"≤ {(1 - args.headroom) * 100:.0f}% of {best['memory']} MB. Lambda ≤ $4/M 12 MP: "
            f"{'met' if best['photo_cost'] <= 4 else 'NOT met'}."
        )
    else:
        print("\nChoice: none of the sizes meets the time goal with the RSS headroom.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
