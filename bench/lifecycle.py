"""Lifecycle benchmark: what each step of an image's life costs in S3 requests and time, counted
at the wire (a pass-through proxy in front of moto's server) while the real handler runs.

    .venv/bin/python bench/lifecycle.py [--runs 20] [--size 1600x1067]

Steps (each with the default VARIANTS unless said otherwise, tag mode unless said otherwise):
  new upload              ObjectCreated for a never-seen key
  replay, same config     the same event again (at-least-once delivery)
  replay, VARIANTS changed the same event after adding a variant and dropping one
  removal (tag mode)      ObjectRemoved after the raw object was deleted
  removal (delete mode)   ObjectRemoved of the function's own conditional delete
  name race loser         `raw/x.png` while `raw/x.jpg` writes the same prefix (extra work only
                          for the loser: it repairs the winner and rejects itself)

Columns: requests by method as S3 saw them, S3 request $ per million (PUT/COPY/POST/LIST
$0.005 per 1,000; GET/HEAD $0.0004 per 1,000; DELETE free; us-east-1 list prices) and the
handler's wall time per step (median over --runs, moto on loopback: round trips of 2-10 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUT_CLASS, GET_CLASS = 0.005 / 1000, 0.0004 / 1000
HOLD_S = 1.5  # how long the race step holds the loser's write (included in its wall time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", default="1600x1067")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import boto3
    from moto.server import ThreadedMotoServer

    from tests.reliability.faultproxy import FaultProxy

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    upstream = f"http://127.0.0.1:{moto._server.server_port}"
    proxy = FaultProxy(upstream=upstream).start()
    os.environ.update(
        AWS_ENDPOINT_URL_S3=proxy.url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_METRICS_NAMESPACE="Bench",
    )
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import image_pipeline.handler as handler
    from image_pipeline.cli import LocalContext
    from image_pipeline.runtime import Runtime
    from image_pipeline.service import ObjectRef
    from image_pipeline.settings import Settings
    from tests.images import photo

    handler.logger.setLevel("ERROR")
    s3 = boto3.client("s3", endpoint_url=upstream)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    context = LocalContext()
    data = photo(width, height)

    def use(**env: str) -> None:
        handler.runtime.close()
        handler.runtime = Runtime(Settings.from_env({**os.environ, **env}))

    def event(key: str, name: str = "ObjectCreated:Put") -> dict:
        record = json.loads((ROOT / "events" / "s3-put.json").read_text())["Records"][0]
        record["eventName"] = name
        record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
        record["s3"]["object"] = {"key": quote_plus(key, safe="/"), "sequencer": "0"}
        return {"Records": [record]}

    def measure(label: str, prepare, run) -> dict:
        counts: list[Counter] = []
        times: list[float] = []
        for i in range(args.runs):
            key = prepare(i)
            start = len(proxy.log)
            began = time.perf_counter()
            status = run(key)
            times.append((time.perf_counter() - began) * 1000)
            # A ListObjectsV2 is a GET on the bucket, priced as a PUT-class request: counted apart.
            counts.append(
                Counter("LIST" if s.method == "GET" and "list-type=" in s.path else s.method for s in proxy.log[start:])
            )
        methods = Counter()
        for c in counts:
            methods.update(c)
        per = {m: methods[m] / args.runs for m in ("GET", "HEAD", "PUT", "LIST", "DELETE")}
        dollars = ((per["PUT"] + per["LIST"]) * PUT_CLASS + (per["GET"] + per["HEAD"]) * GET_CLASS) * 1e6
        return {"step": label, **per, "usd_per_million": dollars, "ms_p50": statistics.median(times), "status": status}

    def handle(key: str, name: str = "ObjectCreated:Put") -> str:
        sink = open(os.devnull, "w")
        saved, sys.stdout = sys.stdout, sink
        try:
            return handler.lambda_handler(event(key, name), context)["results"][0]["status"]
        finally:
            sys.stdout = saved

    rows = []
    use()
    run_id = uuid.uuid4().hex[:6]

    def fresh(i: int, prefix: str = "new") -> str:
        key = f"raw/{prefix}-{run_id}/{i}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return key

    rows.append(measure("new upload", fresh, handle))
    rows.append(measure("replay, same config", lambda i: f"raw/new-{run_id}/{i}.jpg", handle))
    use(VARIANTS="thumbnail:150x150:cover:webp;large:1920x1920:jpeg;small:400x400:avif")
    rows.append(measure("replay, VARIANTS changed", lambda i: f"raw/new-{run_id}/{i}.jpg", handle))

    def deleted(i: int) -> str:
        key = f"raw/new-{run_id}/{i}.jpg"
        s3.delete_object(Bucket=bucket, Key=key)
        return key

    rows.append(measure("removal (tag mode)", deleted, lambda k: handle(k, "ObjectRemoved:Delete")))
    use(RAW_DISPOSITION="delete")

    def processed_then_deleted(i: int) -> str:
        key = fresh(i, "del")
        handle(key)  # processed and deleted by the function itself
        return key

    rows.append(measure("removal (delete mode)", processed_then_deleted, lambda k: handle(k, "ObjectRemoved:Delete")))
    use()

    def race(i: int) -> str:
        key = f"raw/race-{run_id}/{i}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        s3.put_object(Bucket=bucket, Key=key.replace(".jpg", ".png"), Body=photo(width, height, "PNG"))
        # The winner's manifest lands between the loser's owner check and its manifest write: the
        # proxy holds one of the loser's variant PUTs while the winner runs (directly, uncounted).
        return key.replace(".jpg", ".png")

    def lose(key: str) -> str:
        from tests.reliability.faultproxy import Fault

        winner = key.replace(".png", ".jpg")
        rule = proxy.add(Fault.delay(HOLD_S), method="PUT", path=f"/processed/race-.*/{Path(key).stem}/medium", times=1)
        import threading

        def win() -> None:
            while rule.fired == 0:
                time.sleep(0.005)
            runtime = Runtime(Settings.from_env(dict(os.environ, AWS_ENDPOINT_URL_S3=upstream)))  # not counted
            try:
                runtime.handle(ObjectRef(bucket, winner))
            finally:
                runtime.close()

        thread = threading.Thread(target=win)
        thread.start()
        status = handle(key)
        thread.join()
        return status

    rows.append(measure(f"name race loser (wall incl. {HOLD_S} s hold)", race, lose))

    print(f"S3 requests and time per lifecycle step ({args.runs} runs each, {width}×{height} JPEG, moto on loopback)\n")
    print("| step | GET | HEAD | PUT | LIST | DELETE | S3 $/M | wall ms p50 | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['GET']:.1f} | {r['HEAD']:.1f} | {r['PUT']:.1f} | {r['LIST']:.1f} | {r['DELETE']:.1f} "
            f"| {r['usd_per_million']:.2f} | {r['ms_p50']:.0f} | {r['status']} |"
        )
    handler.runtime.close()
    proxy.stop()
    moto.stop()


if __name__ == "__main__":
    main()
