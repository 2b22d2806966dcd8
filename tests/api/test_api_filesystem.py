"""The API over a directory (litestar-storages FileSystemStorage, no AWS): the upload form comes
back to the API itself, an in-process worker processes it with the same service, and the state is
read back from the files (it survives a restart)."""

from __future__ import annotations

from image_pipeline import ids
from tests.images import decode, photo

from .conftest import wait_for

MAX = 300_000


def _files(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_upload_form_comes_back_to_the_api_and_is_processed_in_process(fs_client, tmp_path):
    client = fs_client(MAX_INPUT_BYTES=str(MAX))
    data = photo(900, 600)
    grant = client.post("/uploads", json={"filename": "sea.jpg", "content_type": "image/jpeg", "size": len(data)})
    assert grant.status_code == 201, grant.text
    body = grant.json()
    upload = body["upload"]
    assert upload["url"] == "/uploads/local"
    assert upload["fields"]["key"] == f"raw/{body['id']}/sea.jpg"
    sent = client.post(upload["url"], data=upload["fields"], files={"file": ("sea.jpg", data, "image/jpeg")})
    assert sent.status_code == 204, sent.text

    done = wait_for(client, body["status_url"])
    assert done["status"] == "processed", done
    large = next(v for v in done["variants"] if v["name"] == "large")
    assert (large["width"], large["height"]) == (900, 600)
    redirect = client.get(f"/images/{body['id']}/large", follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["location"] == f"/files/processed/{body['id']}/sea/large.jpg"
    fetched = client.get(redirect.headers["location"])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert decode(fetched.content).size == (900, 600)
    assert (tmp_path / "images" / "processed" / body["id"] / "sea" / "manifest.json").is_file()


def test_local_upload_forms_are_checked_like_s3_checks_its_policy(fs_client, tmp_path):
    client = fs_client(MAX_INPUT_BYTES=str(MAX))
    grant = client.post("/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 1000}).json()
    fields = grant["upload"]["fields"]
    url = grant["upload"]["url"]

    def send(fields, data=b"\xff\xd8\xff" + b"0" * 100, content_type="image/jpeg"):
        return client.post(url, data=fields, files={"file": ("a.jpg", data, content_type)})

    assert send({**fields, "key": f"raw/{ids.new_id()}/other.jpg"}).status_code == 403  # not the signed key
    assert send({**fields, "signature": "0" * 64}).status_code == 403
    assert send({**fields, "Content-Type": "text/html"}).status_code == 403
    assert send(fields, data=b"\xff" * (MAX + 1)).status_code == 413
    assert not (tmp_path / "images" / "raw").exists() or _files(tmp_path / "images" / "raw") == []
    assert client.get(grant["status_url"]).status_code == 404


def test_async_job_is_processed_by_the_worker(fs_client):
    client = fs_client()
    accepted = client.post("/images/async", files={"file": ("p.png", photo(300, 200, "PNG"), "image/png")})
    assert accepted.status_code == 202
    job = accepted.json()
    done = wait_for(client, job["status_url"])
    assert done["status"] == "processed" and done["id"] == job["job_id"]
    assert done["source"]["type"] == "png"


def test_a_corrupt_async_upload_reads_as_failed(fs_client):
    client = fs_client()
    job = client.post(
        "/images/async", files={"file": ("x.jpg", b"\xff\xd8\xff\xe0" + b"\x01" * 300, "image/jpeg")}
    ).json()
    done = wait_for(client, job["status_url"])
    assert (done["status"], done["error_code"]) == ("failed", "corrupt_image")


def test_state_is_read_back_from_the_files_after_a_restart(fs_client, tmp_path):
    directory = tmp_path / "kept"
    first = fs_client(directory)
    created = first.post("/images", files={"file": ("a.jpg", photo(200, 100), "image/jpeg")})
    assert created.status_code == 201
    image_id = created.json()["id"]
    # an upload that arrived while the server was down: stored, never processed
    pending_id = ids.new_id()
    raw = directory / "raw" / pending_id / "late.jpg"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(photo(120, 80))

    second = fs_client(directory)
    assert second.get(f"/images/{image_id}").json()["status"] == "processed"
    assert wait_for(second, f"/images/{pending_id}")["status"] == "processed"


def test_delete_removes_the_files(fs_client, tmp_path):
    client = fs_client()
    image_id = client.post("/images", files={"file": ("a.jpg", photo(200, 100), "image/jpeg")}).json()["id"]
    assert client.delete(f"/images/{image_id}").status_code == 204
    left = [f for f in _files(tmp_path / "images") if image_id in f]
    assert left == []
    assert client.get(f"/images/{image_id}").status_code == 404


def test_files_route_serves_only_processed_outputs(fs_client, tmp_path):
    client = fs_client()
    image_id = client.post("/images", files={"file": ("a.jpg", photo(200, 100), "image/jpeg")}).json()["id"]
    assert client.get(f"/files/raw/{image_id}/a.jpg").status_code == 404
    assert client.get("/files/processed/%2e%2e/raw").status_code == 404
    assert client.get(f"/files/processed/{image_id}/a/thumbnail.webp").status_code == 200
