"""A local stand-in for Amazon Rekognition's DetectModerationLabels, on 127.0.0.1: the JSON 1.1
protocol boto3 speaks (POST /, X-Amz-Target: RekognitionService.DetectModerationLabels), answering
from a script of responses, so the real boto3 client (and botocore's retries) talk to it."""

from __future__ import annotations

import base64
import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGET = "RekognitionService.DetectModerationLabels"


def label(name: str, confidence: float, parent: str = "", level: int = 1) -> dict:
    return {"Name": name, "Confidence": confidence, "ParentName": parent, "TaxonomyLevel": level}


class Rekognition:
    """`script`: what to answer, one entry per request (the last one repeats): a list of labels,
    "throttle" (ThrottlingException, 400), or an HTTP status (500: InternalServerError)."""

    def __init__(self) -> None:
        self.script: deque = deque([[]])
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.headers.get("X-Amz-Target") != TARGET:
                    return self._send(400, {"__type": "UnknownOperationException", "message": "not here"})
                stand_in.requests.append(
                    {"image": base64.b64decode(body["Image"]["Bytes"]), "min_confidence": body.get("MinConfidence")}
                )
                answer = stand_in.script.popleft() if len(stand_in.script) > 1 else stand_in.script[0]
                if answer == "throttle":
                    return self._send(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                if isinstance(answer, int):
                    return self._send(answer, {"__type": "InternalServerError", "message": "boom"})
                labels = [lab for lab in answer if lab["Confidence"] >= (body.get("MinConfidence") or 50)]
                return self._send(200, {"ModerationLabels": labels, "ModerationModelVersion": "7.0"})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, *entries) -> None:
        self.script = deque(entries)

    def __enter__(self) -> Rekognition:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
