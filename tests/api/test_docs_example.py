"""docs/litestar-plugin.md's example runs: the app in docs/examples/litestar_app.py (the page shows
that file verbatim), with its own routes, its session login as the guard and the owner, and the
image pipeline under /images over a FileSystemStorage."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from litestar.testing import TestClient

from tests.images import decode, photo

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = DOCS / "examples" / "litestar_app.py"


def _example():
    spec = importlib.util.spec_from_file_location("litestar_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: its dataclass and annotations resolve there
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_the_example_file_as_it_is():
    page = (DOCS / "litestar-plugin.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert EXAMPLE.read_text() in blocks


def test_the_example_app_runs_with_its_own_login_and_owners(tmp_path):
    app = _example().create_app(tmp_path / "images")
    with TestClient(app) as alice, TestClient(app) as bob:
        assert alice.get("/").json() == {"app": "mine", "user": None}
        assert alice.get("/images/images").status_code == 401  # the app's guard, before anything of ours
        upload = {"file": ("sea.jpg", photo(900, 600), "image/jpeg")}
        assert alice.post("/images/images", files=upload).status_code == 401

        assert alice.post("/login", json={"name": "alice"}).status_code == 201
        assert bob.post("/login", json={"name": "bob"}).status_code == 201
        assert alice.get("/").json()["user"] == "alice"
        made = alice.post("/images/images", files=upload)
        assert made.status_code == 201, made.text
        image = made.json()
        assert image["status"] == "processed"
        large = next(v for v in image["variants"] if v["name"] == "large")
        assert decode(alice.get(large["url"]).content).size == (900, 600)
        files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")}
        assert f"images/processed/{image['id']}/sea/large.jpg" in files

        assert bob.get(f"/images/images/{image['id']}").status_code == 404  # another owner's: no such image
        assert bob.get("/images/images").json()["items"] == []
        assert [i["id"] for i in alice.get("/images/images").json()["items"]] == [image["id"]]
        page = alice.get("/images/")
        assert page.status_code == 200 and '<base href="/images/">' in page.text
