"""The CloudFront Function the templates deploy (run in `node`) maps ratio paths as the Python code
stores them: `…/w640-16x9` becomes `w640-16x9.avif`, `.webp` or stays (the fallback) by `Accept`,
exactly the leaf the upload API stores for the same request; anything that is not a canonical
ratio leaf is left alone (the miss function answers it 400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from image_pipeline.ondemand.paths import BadOutput, WidthRequest, is_width_leaf, negotiate, parse_width
from tests.cfn import load
from tests.cloudfront import viewer_request_uris

pytest.importorskip("cfnlint.decode.cfn_yaml")

ROOT = Path(__file__).resolve().parents[2]
# Where the distribution is defined: the CDN's own stack, nested by every template.
SOURCES = ["stacks/cdn.yaml"]
ACCEPTS = [
    None,
    "*/*",
    "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",  # Chrome
    "image/webp,*/*",
    "image/png,image/*;q=0.8,*/*;q=0.5",
    "image/avif;q=0,image/webp",
    "image/avif;q=0.5x,image/webp;q=2",
]
URIS = [
    "/processed/photos/cat/w640-16x9",
    "/processed/photos/cat/w1-1x1",
    "/processed/photos/cat/w8192-9x16",
    "/processed/photos/cat/w640-21x9",
    "/processed/photos/cat/w640-100x99",
    "/processed/photos/cat/w640-5x4",  # outside the allowlist: negotiated all the same (the signature is checked later)
    "/processed/photos/cat/w640-16x9.webp",
    "/processed/photos/cat/w640-16x9.jpg",
    "/processed/photos/cat/w640-32x18",
    "/processed/photos/cat/w640-7x3",
    "/processed/photos/cat/w640-016x9",
    "/processed/photos/cat/w640-16X9",
    "/processed/photos/cat/w640-101x1",
    "/processed/photos/cat/w640-0x9",
    "/processed/photos/cat/w640-16x",
    "/processed/photos/cat/w640-",
    "/processed/photos/cat/w0640-16x9",
    "/processed/photos/cat/w12345-16x9",
    "/processed/photos/cat/w640-16x9-1",
    "/processed/photos/cat/w640",
    "/processed/photos/cat/xl-16x9",
]


def _stored_leaf(leaf: str, accept: str | None) -> str | None:
    """The key leaf a request for `leaf` is stored under, as Python decides it (None: 400/404)."""
    if not is_width_leaf(leaf):
        return leaf
    try:
        request = parse_width(leaf)
    except BadOutput:
        return None
    return WidthRequest(request.width, request.format or negotiate(accept), request.ratio).leaf


def _function_code(template: dict[str, Any]) -> str | None:
    for resource in (template.get("Resources") or {}).values():
        if resource.get("Type") == "AWS::CloudFront::Function":
            return resource["Properties"]["FunctionCode"]
    return None


@pytest.mark.parametrize("source", SOURCES)
def test_the_cloudfront_function_negotiates_ratio_paths_as_the_python_code_does(source):
    code = _function_code(load(source))
    if code is None:
        pytest.skip(f"{source} defines no CloudFront Function")
    cases = [(uri, accept) for uri in URIS for accept in ACCEPTS]
    rewritten = viewer_request_uris(code, [(uri, {} if a is None else {"Accept": a}) for uri, a in cases])
    disagree = []
    for (uri, accept), edge in zip(cases, rewritten, strict=True):
        leaf = uri.rpartition("/")[2]
        assert edge.startswith(uri), (uri, edge)  # a format is added, nothing else changes
        python = _stored_leaf(leaf, accept)  # what the upload API stores for this request
        cdn = _stored_leaf(edge.rpartition("/")[2], None)  # what the miss function stores for the rewritten URI
        if python != cdn:
            disagree.append((uri, accept, edge, python, cdn))
    assert disagree == []
    edge = dict(zip(cases, rewritten, strict=True))
    assert edge[("/processed/photos/cat/w640-16x9", ACCEPTS[2])] == "/processed/photos/cat/w640-16x9.avif"
    assert edge[("/processed/photos/cat/w640-16x9", "image/webp,*/*")] == "/processed/photos/cat/w640-16x9.webp"
    assert edge[("/processed/photos/cat/w640-16x9", "*/*")] == "/processed/photos/cat/w640-16x9"
    assert edge[("/processed/photos/cat/w640-16x9.webp", ACCEPTS[2])] == "/processed/photos/cat/w640-16x9.webp"
    assert edge[("/processed/photos/cat/xl-16x9", ACCEPTS[2])] == "/processed/photos/cat/xl-16x9"
    # a ratio outside its one spelling is negotiated too: the miss function answers it 400, naming it
    assert edge[("/processed/photos/cat/w640-32x18", ACCEPTS[2])] == "/processed/photos/cat/w640-32x18.avif"
