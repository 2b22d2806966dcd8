"""CloudFront Functions run for real: the JavaScript a template deploys, in `node`, over viewer
requests shaped as CloudFront hands them to a viewer-request function (cloudfront-js-2.0).

`node` is the only JavaScript engine here (Debian's `nodejs`; `.ci/run` installs it). Without it
the tests that need it skip, except in CI (`CI` or `REQUIRE_NODE` set), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

_HARNESS = """
const requests = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(requests.map(function (r) {
    var headers = {};
    Object.keys(r.headers).forEach(function (name) { headers[name.toLowerCase()] = {value: r.headers[name]}; });
    var event = {version: '1.0', context: {eventType: 'viewer-request'}, viewer: {ip: '203.0.113.9'},
                 request: {method: r.method, uri: r.uri, querystring: {}, headers: headers, cookies: {}}};
    return handler(event).uri;
})));
"""


def node() -> str:
    found = shutil.which("node")
    if found is None:
        if os.environ.get("CI") or os.environ.get("REQUIRE_NODE"):
            pytest.fail("node is needed to run the CloudFront Function (apt-get install nodejs)")
        pytest.skip("node is not installed: the CloudFront Function cannot be run")
    return found


def viewer_request_uris(code: str, requests: list[tuple[str, dict[str, str]]], method: str = "GET") -> list[str]:
    """The URI each (uri, headers) request leaves the viewer-request function `code` with."""
    payload = json.dumps([{"uri": uri, "headers": headers, "method": method} for uri, headers in requests])
    out = subprocess.run(
        [node(), "-e", code + _HARNESS], input=payload, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)
