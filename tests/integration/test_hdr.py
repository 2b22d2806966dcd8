"""An `hdr` variant end to end: through the handler, S3 and the manifest (the processor's own
tests, with the inputs and the reader used here, are tests/unit/test_processor_hdr.py)."""

from __future__ import annotations

import json

from PIL import Image

from tests.images import decode
from tests.reliability.support import s3_event, upload
from tests.unit.test_processor_hdr import ULTRA_HDR_PRIMARY, _hdrgm, _quadrants, _read, _scene, _ultra_hdr


def test_an_hdr_variant_through_the_handler_keeps_the_map_and_no_location(s3, bucket, handler, context, settings_env):
    """End to end (S3, manifest): the Ultra HDR variant is stored as made, and the upload's GPS
    (EXIF and XMP on its primary) reaches no output; only gain-map numbers are written as XMP."""
    settings_env(VARIANTS="h:300x300:jpeg:hdr;w:200x200:webp")
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    located = ULTRA_HDR_PRIMARY.replace(
        b'hdrgm:Version="1.0"',
        b'hdrgm:Version="1.0" xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.48N"',
    )
    data = _ultra_hdr(_scene(), _quadrants((160, 120)), primary_xmp=located, exif=exif)
    assert b"48,51.48N" in data and decode(data).getexif().get_ifd(0x8825)
    uploaded = upload(s3, bucket, "raw/hdr/phone.jpg", data)

    handler.lambda_handler(s3_event(bucket, [uploaded]), context)

    stored = s3.get_object(Bucket=bucket, Key="processed/hdr/phone/h.jpg")["Body"].read()
    container = _read(stored)
    assert decode(container.gain_map).size == (75, 56) and _hdrgm(container.gain_map_xmp)["GainMapMax"] == "2.3"
    record = json.loads(s3.get_object(Bucket=bucket, Key="processed/hdr/phone/manifest.json")["Body"].read())
    assert record["source"]["gain_map"] == {"type": "ultrahdr", "kept": True}
    assert [v.get("gain_map") for v in record["variants"]] == [{"type": "ultrahdr", "kept": True}, None]
    for key in ("processed/hdr/phone/h.jpg", "processed/hdr/phone/w.webp"):
        output = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not decode(output).getexif().get_ifd(0x8825) and 0x010F not in decode(output).getexif(), key
        for needle in (b"GPS", b"TestCam", b"48,51", b"exif/1.0"):
            assert needle not in output, (key, needle)
