"""Image ids: fixed pattern, newest first in key order, safe file names."""

from __future__ import annotations

import pytest

from image_pipeline import ids


def test_ids_match_the_pattern_and_sort_newest_first():
    made = [ids.new_id(now_ms=ms) for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000)]
    assert all(ids.is_valid(i) and len(i) == 20 for i in made)
    assert sorted(made) == made[::-1]  # later upload → smaller string → listed first
    assert [ids.created_ms(i) for i in made] == [1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000]
    same_ms = {ids.new_id(now_ms=1_700_000_000_000) for _ in range(1000)}
    assert len(same_ms) == 1000  # 50 random bits: no collision within a millisecond


@pytest.mark.parametrize(
    "bad", ["", "..", "a/b", "a\x00b", "I" * 20, "u" * 20, "0" * 19, "0" * 21, "ABCDEFGHJKMNPQRSTVWX"]
)
def test_anything_else_is_not_an_id(bad):
    assert not ids.is_valid(bad)


@pytest.mark.parametrize(
    ("name", "leaf"),
    [
        ("photo.JPG", "photo.jpg"),
        ("../../etc/passwd", "passwd.jpg"),
        ("C:\\Users\\me\\cat.png", "cat.png"),
        ("Holiday 2024 (1).jpeg", "Holiday-2024-1.jpeg"),
        ("été.heic", "ete.heic"),
        ("..", "image.jpg"),
        ("", "image.jpg"),
        ("a\x00b\n.png", "a-b.png"),
        (".hidden", "hidden.jpg"),
        ("x" * 300 + ".webp", "x" * 89 + ".webp"),
    ],
)
def test_file_names_become_one_safe_segment(name, leaf):
    assert ids.safe_leaf(name, "jpg") == leaf


def test_raw_keys_and_back():
    image_id = ids.new_id()
    key = ids.raw_key("raw/", image_id, "a b.png")
    assert key == f"raw/{image_id}/a-b.png"
    assert ids.id_of_key(key, "raw/") == image_id
    assert ids.id_of_key("raw/holiday/a.jpg", "raw/") is None
    assert ids.id_of_key("processed/x/a.jpg", "raw/") is None


def test_api_settings_report_every_problem_at_once():
    from image_pipeline.api.settings import ApiSettings
    from image_pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        ApiSettings.from_env(
            {
                "PUBLIC_BASE_URL": "ftp://x",
                "ALLOWED_ORIGINS": "example.com",
                "UPLOAD_EXPIRY_SECONDS": "0",
                "MAX_PIXELS": "lots",
            }
        )
    message = str(caught.value)
    for name in ("BUCKET_NAME", "PUBLIC_BASE_URL", "ALLOWED_ORIGINS", "UPLOAD_EXPIRY_SECONDS", "MAX_PIXELS"):
        assert name in message
    ok = ApiSettings.from_env(
        {
            "BUCKET_NAME": "b",
            "PUBLIC_BASE_URL": "https://cdn.example.com/i",
            "ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000",
        }
    )
    assert ok.public_base_url == "https://cdn.example.com/i/"
    assert ok.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert ok.image_type("image/JPEG; charset=x") == "jpeg" and ok.image_type("image/svg+xml") is None


def test_owned_ids_carry_the_owners_tag_and_still_sort_newest_first():
    tag = ids.owner_tag("alice")
    assert len(tag) == ids.TAG_LENGTH and ids.is_valid(tag + "-" + ids.new_id())
    assert tag == ids.owner_tag("alice") != ids.owner_tag("Alice")  # stable, and case matters
    assert tag == "n1xd664dkdpdj5dj"  # a contract: stored keys depend on it, never change it
    made = [ids.new_id(now_ms=ms, tag=tag) for ms in (1_700_000_000_000, 1_800_000_000_000)]
    assert all(i.startswith(tag + "-") and len(i) == 37 for i in made)
    assert sorted(made) == made[::-1]
    assert [ids.created_ms(i) for i in made] == [1_700_000_000_000, 1_800_000_000_000]
    assert ids.parse(made[0]) == (tag, made[0][17:]) and ids.parse(made[0][17:]) == (None, made[0][17:])
    key = ids.raw_key("raw/", made[0], "a.jpg")
    assert ids.id_of_key(key, "raw/") == made[0] and key.startswith(f"raw/{tag}-")
    assert ids.id_of_key(f"processed/{made[0]}/a/manifest.json", "processed/") == made[0]


@pytest.mark.parametrize(
    "bad",
    [
        "n1xd664dkdpdj5dj" + "-",  # a tag alone
        "n1xd664dkdpdj5dj_" + "0" * 20,  # another separator
        "n1xd664dkdpdj5d-" + "0" * 20,  # a short tag
        "N1XD664DKDPDJ5DJ-" + "0" * 20,  # upper case
        "-" + "0" * 20,
        "n1xd664dkdpdj5dj-" + "0" * 20 + "/",
    ],
)
def test_malformed_owned_ids_are_not_ids(bad):
    assert ids.parse(bad) is None and not ids.is_valid(bad)


def test_the_owner_in_metadata_is_ascii_and_kept_only_with_its_tag():
    owner = "ZoË <zoe@example.com> 100%"
    value = ids.owner_metadata(owner)
    assert value.isascii() and value.isprintable() and " " not in value
    assert value == "Zo%C3%8B%20<zoe@example.com>%20100%25"
    image_id = ids.new_id(tag=ids.owner_tag(owner))
    assert ids.owner_of(f"raw/{image_id}/a.jpg", "raw/", {"owner": value}) == owner
    assert ids.owner_of(f"raw/{ids.new_id(tag=ids.owner_tag('eve'))}/a.jpg", "raw/", {"owner": value}) is None
    assert ids.owner_of(f"raw/{ids.new_id()}/a.jpg", "raw/", {"owner": value}) is None  # no tag in the key
    assert ids.owner_of("raw/photos/a.jpg", "raw/", {"owner": value}) is None  # not an API upload
    assert ids.owner_of(f"raw/{image_id}/a.jpg", "raw/", {}) is None


def test_an_id_whose_time_no_date_can_show_is_not_an_id():
    assert not ids.is_valid("00000000000000000000")  # 2^50 - 1 ms: past the year 9999
    assert ids.is_valid(ids.new_id())
