"""Environment variables → one validated `Settings`, parsed once per cold start.

Every problem is collected and reported together in one `ConfigError`, so a bad deploy fails on
its first invocation with a message that names each variable, instead of on some later image.
The names and defaults here are the ones `template.yaml` sets (a test keeps them in step).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from .errors import ConfigError
from .processor.specs import DEFAULT_QAUTO_TARGET, Fit, Gravity, ImageFormat, Limits, VariantConfig

# name -> default; the template's Environment block must list the same names with the same defaults.
DEFAULTS: dict[str, str] = {
    "RAW_PREFIX": "raw/",
    "PROCESSED_PREFIX": "processed/",
    "VARIANTS": "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg",
    "RAW_DISPOSITION": "tag",
    "MAX_INPUT_BYTES": str(50 * 1024 * 1024),
    "MAX_PIXELS": "60000000",
    "MAX_FRAMES": "300",
    "ALLOWED_TYPES": "jpeg,png,webp,gif,avif,heif,tiff,bmp",
    "CACHE_CONTROL": "public, max-age=31536000",
    "KEEP_ICC_PROFILE": "false",
    "S3_MAX_ATTEMPTS": "5",
    "TIME_RESERVE_MS": "10000",
    "EVENT_BUS_NAME": "",  # empty: no completion events (see notify.py)
    "MODERATION": "off",  # the templates' `Moderation` parameter (docs/moderation.md)
    # which engine finds the faces `auto` crops keep and the manifest records (image_pipeline/faces):
    # in-process and offline (`local`), Amazon Rekognition, or none
    "FACE_DETECTION": "local",
}
# A check on the picture before anything is published (moderation/; docs/moderation.md). The
# templates set MODERATION from their `Moderation` parameter; the others keep these defaults.
MODERATION_DEFAULTS: dict[str, str] = {
    "MODERATION": DEFAULTS["MODERATION"],
    "MODERATION_THRESHOLD": "0.8",
    "MODERATION_LABELS": "Explicit Nudity,Explicit,Violence,Hate Symbols",
    "MODERATION_MIN_CONFIDENCE": "80",
    "MODERATION_ACTION": "hold",
    "MODERATION_MAX_ATTEMPTS": "3",
}
# Where images are processed in a long-running process (the API, `serve`): not in the template,
# since a Lambda function processes one record at a time and waits for its slot without bound.
PROCESS_WAIT_MS_DEFAULT = 30_000  # how long an upload waits, unread, for a free slot before 503 busy
FACE_ENGINES = ("local", "rekognition", "off")
FACE_DETECTION_DEFAULT = DEFAULTS["FACE_DETECTION"]
DISPOSITIONS = ("tag", "delete")
_TYPE_ALIASES = {"jpg": "jpeg", "heic": "heif", "tif": "tiff"}
KNOWN_TYPES = frozenset(Limits().allowed_types)


@dataclass(frozen=True)
class Settings:
    raw_prefix: str = DEFAULTS["RAW_PREFIX"]
    processed_prefix: str = DEFAULTS["PROCESSED_PREFIX"]
    variants: tuple[VariantConfig, ...] = ()
    raw_disposition: str = "tag"
    limits: Limits = field(default_factory=Limits)
    cache_control: str = DEFAULTS["CACHE_CONTROL"]
    keep_icc_profile: bool = False
    s3_endpoint_url: str | None = None
    s3_max_attempts: int = 5
    time_reserve_ms: int = 10000
    event_bus_name: str | None = None
    process_concurrency: int | None = None  # images processed at once (PROCESS_CONCURRENCY); None: the CPUs
    process_wait_ms: int = PROCESS_WAIT_MS_DEFAULT  # the API's wait for a slot before 503 busy (PROCESS_WAIT_MS)
    moderation: str = "off"  # off | local | rekognition
    moderation_threshold: float = 0.8  # local: a score at or above it flags the image
    moderation_labels: tuple[str, ...] = ("Explicit Nudity", "Explicit", "Violence", "Hate Symbols")
    moderation_min_confidence: float = 80.0  # rekognition: percent
    moderation_action: str = "hold"  # hold | blur
    moderation_max_attempts: int = 3  # tries of an engine that gives no verdict, then held (fail closed)
    rekognition_endpoint_url: str | None = None
    face_detection: str = FACE_DETECTION_DEFAULT  # FACE_DETECTION: local, rekognition or off

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str:
            return env.get(name, DEFAULTS[name]).strip()

        def integer(name: str, low: int = 1, default: str | None = None) -> int:
            raw = get(name) if default is None else env.get(name, default).strip()
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                problems.append(f"{name}={raw!r} is not an integer")
                return int(DEFAULTS[name] if default is None else default)
            if value < low:
                problems.append(f"{name}={value} must be at least {low}")
            return value

        def boolean(name: str) -> bool:
            raw = get(name).lower()
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off", ""):
                return False
            problems.append(f"{name}={raw!r} must be true or false")
            return False

        raw_prefix = _prefix(get("RAW_PREFIX"), "RAW_PREFIX", problems)
        processed_prefix = _prefix(get("PROCESSED_PREFIX"), "PROCESSED_PREFIX", problems)
        if (
            raw_prefix
            and processed_prefix
            and (raw_prefix.startswith(processed_prefix) or processed_prefix.startswith(raw_prefix))
        ):
            problems.append(
                f"RAW_PREFIX={raw_prefix!r} and PROCESSED_PREFIX={processed_prefix!r} overlap: "
                "outputs would trigger the pipeline again"
            )

        variants: tuple[VariantConfig, ...] = ()
        try:
            variants = parse_variants(get("VARIANTS"))
        except ValueError as exc:
            problems.append(f"VARIANTS: {exc}")

        disposition = get("RAW_DISPOSITION").lower()
        if disposition not in DISPOSITIONS:
            problems.append(f"RAW_DISPOSITION={disposition!r} must be one of {', '.join(DISPOSITIONS)}")

        allowed = frozenset(
            _TYPE_ALIASES.get(t, t) for t in (t.strip().lower() for t in get("ALLOWED_TYPES").split(",")) if t
        )
        unknown = sorted(allowed - KNOWN_TYPES)
        if unknown or not allowed:
            problems.append(
                f"ALLOWED_TYPES has unknown types {unknown or '(none given)'}; known: {', '.join(sorted(KNOWN_TYPES))}"
            )
        limits = Limits(
            max_bytes=max(integer("MAX_INPUT_BYTES"), 1),
            max_pixels=max(integer("MAX_PIXELS"), 1),
            max_frames=max(integer("MAX_FRAMES"), 1),
            allowed_types=(allowed & KNOWN_TYPES) or KNOWN_TYPES,
        )

        cache_control = get("CACHE_CONTROL")
        if not cache_control or not all(32 <= ord(c) < 127 for c in cache_control):
            problems.append(f"CACHE_CONTROL={cache_control!r} must be a non-empty printable ASCII header value")

        moderation = _moderation(env, problems)
        face_detection = env.get("FACE_DETECTION", FACE_DETECTION_DEFAULT).strip().lower() or FACE_DETECTION_DEFAULT
        if face_detection not in FACE_ENGINES:
            problems.append(f"FACE_DETECTION={face_detection!r} must be one of {', '.join(FACE_ENGINES)}")
            face_detection = "off"

        settings = cls(
            raw_prefix=raw_prefix,
            processed_prefix=processed_prefix,
            variants=variants,
            raw_disposition=disposition,
            limits=limits,
            cache_control=cache_control,
            keep_icc_profile=boolean("KEEP_ICC_PROFILE"),
            s3_endpoint_url=(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None),
            s3_max_attempts=integer("S3_MAX_ATTEMPTS"),
            time_reserve_ms=integer("TIME_RESERVE_MS", low=0),
            event_bus_name=_event_bus(get("EVENT_BUS_NAME"), problems),
            # empty or unset: one image per CPU this process may use
            process_concurrency=(
                integer("PROCESS_CONCURRENCY", default="1") if env.get("PROCESS_CONCURRENCY", "").strip() else None
            ),
            process_wait_ms=integer("PROCESS_WAIT_MS", low=0, default=str(PROCESS_WAIT_MS_DEFAULT)),
            moderation_max_attempts=integer(
                "MODERATION_MAX_ATTEMPTS", default=MODERATION_DEFAULTS["MODERATION_MAX_ATTEMPTS"]
            ),
            **moderation,
            face_detection=face_detection,
        )
        if problems:
            raise ConfigError("invalid image-pipeline settings:\n  - " + "\n  - ".join(problems))
        return settings


def _moderation(env: Mapping[str, str], problems: list[str]) -> dict:
    """MODERATION and the settings of its engines and action (docs/moderation.md)."""

    def get(name: str) -> str:
        return env.get(name, MODERATION_DEFAULTS[name]).strip()

    engine = get("MODERATION").lower()
    if engine not in ("off", "local", "rekognition"):
        problems.append(f"MODERATION={engine!r} must be one of off, local, rekognition")
        engine = "off"

    def number(name: str, low: float, high: float) -> float:
        raw = get(name)
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} is not a number")
            return float(MODERATION_DEFAULTS[name])
        if not low <= value <= high:
            problems.append(f"{name}={raw} must be between {low:g} and {high:g}")
        return value

    labels = tuple(dict.fromkeys(label.strip() for label in get("MODERATION_LABELS").split(",") if label.strip()))
    if not labels:
        problems.append("MODERATION_LABELS must name at least one Rekognition top-level category (e.g. Violence)")
    elif bad := [label for label in labels if not re.fullmatch(r"[A-Za-z0-9 &'/-]{1,100}", label)]:
        problems.append(f"MODERATION_LABELS has names that are not Rekognition categories: {bad}")
    action = get("MODERATION_ACTION").lower()
    if action not in ("hold", "blur"):
        problems.append(f"MODERATION_ACTION={action!r} must be hold or blur")
        action = "hold"
    return {
        "moderation": engine,
        "moderation_threshold": number("MODERATION_THRESHOLD", 0.0, 1.0),
        "moderation_labels": labels,
        "moderation_min_confidence": number("MODERATION_MIN_CONFIDENCE", 0.0, 100.0),
        "moderation_action": action,
        "rekognition_endpoint_url": env.get("AWS_ENDPOINT_URL_REKOGNITION") or None,
    }


def _event_bus(value: str, problems: list[str]) -> str | None:
    """An EventBridge bus name or ARN, or None (no completion events)."""
    import re

    if value and not re.fullmatch(r"[A-Za-z0-9._\-/:]{1,1600}", value):
        problems.append(f"EVENT_BUS_NAME={value!r} must be an EventBridge bus name or ARN")
    return value or None


def _names(enum_type) -> str:
    return ", ".join(member.value for member in enum_type)


def _prefix(value: str, name: str, problems: list[str]) -> str:
    value = value.lstrip("/")
    if not value:
        problems.append(f"{name} must not be empty")
        return value
    return value if value.endswith("/") else value + "/"


class _VariantOptions(TypedDict, total=False):
    """What a VARIANTS entry may set beyond its name and size (VariantConfig's keywords)."""

    fit: Fit
    gravity: Gravity
    format: ImageFormat | None
    quality: int
    qauto: float
    lazy: bool
    hdr: bool


def parse_variants(spec: str) -> tuple[VariantConfig, ...]:
    """Parse `name:WxH[:fit][:gravity][:format][:qNN][:qauto[NN]][:hdr][:lazy]` entries separated by `;`.

    Example: `thumbnail:150x150:cover:attention:webp:q80;large:1920x1920:jpeg:qauto`. Tokens after
    the size may come in any order; each is recognised by its value. A side of 0 (or left out:
    `hero:1600x`, `tall:x1200`) is free and follows the aspect ratio. `qauto` chooses the quality
    per image (luminance SSIM ≥ 0.98, `qauto985` for 0.985), with `qNN` (default 85) as the ceiling.
    `hdr` (jpeg only) keeps an upload's HDR gain map: the variant becomes an Ultra HDR JPEG.
    `lazy`: not made on upload but on its first request (`GET /images/{id}/<name>`, or the CDN's miss),
    then stored at the key an eager variant would have.
    """
    variants: list[VariantConfig] = []
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, _, rest = entry.partition(":")
        tokens = [t.strip().lower() for t in rest.split(":")] if rest else []
        if not tokens or "x" not in tokens[0]:
            raise ValueError(f"{entry!r}: expected name:WIDTHxHEIGHT[:fit][:gravity][:format][:qNN][:qauto]")
        width, _, height = tokens[0].partition("x")
        width, height = width or "0", height or "0"
        if not (width.isdigit() and height.isdigit()):
            raise ValueError(f"{entry!r}: size {tokens[0]!r} must be WIDTHxHEIGHT in pixels")
        options: _VariantOptions = {}
        for token in tokens[1:]:
            if token in Fit._value2member_map_:
                options["fit"] = Fit(token)
            elif token.replace("center", "centre") in Gravity._value2member_map_:
                options["gravity"] = Gravity(token.replace("center", "centre"))
            elif token in ("original", "auto"):
                options["format"] = None
            elif token == "lazy":
                options["lazy"] = True
            elif token == "hdr":
                options["hdr"] = True
            elif token.startswith("qauto") and (token == "qauto" or token[5:].isdigit()):
                options["qauto"] = float(f"0.{token[5:]}") if token[5:] else DEFAULT_QAUTO_TARGET
            elif token.startswith("q") and token[1:].isdigit():
                options["quality"] = int(token[1:])
            else:
                try:
                    options["format"] = ImageFormat.parse(token)
                except ValueError:
                    raise ValueError(
                        f"{entry!r}: unknown option {token!r}; expected a fit ({_names(Fit)}), a gravity "
                        f"({_names(Gravity)}), a format ({_names(ImageFormat)}, original), qNN, qauto[NN], hdr or lazy"
                    ) from None
        if re.fullmatch(r"w[0-9].*", name.strip()):
            raise ValueError(f"{entry!r}: names w<digits> are width URLs (w640.webp); choose another name")
        try:
            variants.append(VariantConfig(name.strip(), int(width), int(height), **options))
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
    if not variants:
        raise ValueError("at least one variant is required")
    if all(v.lazy for v in variants):
        raise ValueError("at least one variant must be made on upload (not lazy): it is what the upload's outputs are")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"variant names must be unique: {', '.join(duplicates)}")
    return tuple(variants)
