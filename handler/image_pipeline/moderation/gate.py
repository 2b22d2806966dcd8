"""The gate between "processed" and "published": an engine's verdict → publish, hold or blur, and
the moderation record that remembers it.

The record (`moderation/records/<raw key without the raw prefix>.json`, JSON) is the state of one
upload (its ETag) before the public sees it:

    {"schema_version": 1, "key", "etag", "owner", "engine", "state", "reason", "labels", "scores",
     "frames", "attempts", "error", "held_at", "decided_at", "decided_by"}

- `state`: `unavailable` (the engine gave no verdict `attempts` times so far), `held`, `approved`,
  `rejected`; `reason`: `flagged` or `moderation_unavailable` (held), `passed`.
- It lives outside `processed/` (which the CDN and the file route serve) and outside `raw/` (which
  triggers the pipeline): nothing in it is ever public, and it is small (labels and scores only).
- A record for another ETag is another upload's: a new upload under the same key starts over.
- While an upload is held, a copy of its record is also at `moderation/held/<…>.json`: the review
  queue is one listing of that prefix (in key order, which for the API's ids is newest first),
  whatever the number of images that passed. A decision deletes the copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import ModerationUnavailable, Moderator, Verdict

if TYPE_CHECKING:
    from PIL import Image

SCHEMA_VERSION = 1
PREFIX = "moderation/"
FLAGGED = "flagged"
UNAVAILABLE = "moderation_unavailable"


RECORDS = PREFIX + "records/"
HELD = PREFIX + "held/"


def record_key(raw_key: str, raw_prefix: str) -> str:
    return RECORDS + raw_key.removeprefix(raw_prefix) + ".json"


def held_key(raw_key: str, raw_prefix: str) -> str:
    return HELD + raw_key.removeprefix(raw_prefix) + ".json"


def raw_key_of(held_or_record_key: str, raw_prefix: str) -> str:
    rest = held_or_record_key.removeprefix(HELD).removeprefix(RECORDS)
    return raw_prefix + rest.removesuffix(".json")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse(data: bytes | None) -> dict | None:
    if not data:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str) or "state" not in record:
        return None
    return record


def dumps(record: dict) -> bytes:
    return json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")


@dataclass
class Judgement:
    """The gate's answer for one upload: `action` publish | hold | blur; `record` the moderation
    record as it is to be stored (and what the manifest's `moderation` says)."""

    action: str
    record: dict = field(default_factory=dict)

    def manifest_entry(self) -> dict:
        """The manifest's `moderation`: what was seen and what was done."""
        keys = ("engine", "labels", "scores", "frames", "reason", "decided_at", "decided_by")
        entry = {k: self.record.get(k) for k in keys if self.record.get(k) is not None}
        entry["action"] = "approved" if self.record.get("state") == "approved" else self.action
        if self.action == "blur":
            entry["blurred"] = True
        return entry


class Gate:
    def __init__(self, moderator: Moderator, *, action: str = "hold", max_attempts: int = 3) -> None:
        if action not in ("hold", "blur"):
            raise ValueError("action must be hold or blur")
        self.moderator = moderator
        self.action = action
        self.max_attempts = max(1, max_attempts)

    def classify(self, renditions: tuple[tuple[int, Image.Image], ...]) -> tuple[Verdict, list[int]]:
        """Every rendition's verdict, merged (worst score per label), and the frames looked at.
        Runs in an image slot's thread (an engine blocks: inference or a network call)."""
        if not renditions:
            raise ModerationUnavailable("no rendition to classify")
        verdicts = [self.moderator.classify(image) for _, image in renditions]
        return Verdict.merge(verdicts), [index for index, _ in renditions]

    def judge(
        self,
        previous: dict | None,
        key: str,
        etag: str,
        owner: str | None,
        outcome: tuple[Verdict, list[int]] | Exception,
    ) -> Judgement:
        """The action for this upload from the classification (or its failure, `outcome` an
        exception) and the record stored before. Raises `ModerationUnavailable` while tries are left."""
        base = {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            "etag": etag,
            "owner": owner,
            "engine": self.moderator.name,
        }
        if isinstance(outcome, Exception):
            same = previous is not None and previous.get("etag") == etag and previous.get("state") == "unavailable"
            attempts = (int(previous.get("attempts") or 0) if same and previous else 0) + 1
            error = str(getattr(outcome, "message", outcome))
            if attempts < self.max_attempts:
                record = {**base, "state": "unavailable", "attempts": attempts, "error": error, "at": now()}
                raise Retry(record, outcome)
            return Judgement(
                "hold",
                {
                    **base,
                    "state": "held",
                    "reason": UNAVAILABLE,
                    "labels": [],
                    "scores": {},
                    "frames": [],
                    "attempts": attempts,
                    "error": error,
                    "held_at": now(),
                },
            )
        verdict, frames = outcome
        record = {**base, "labels": list(verdict.labels), "scores": verdict.scores, "frames": frames}
        if not verdict.flagged:
            return Judgement("publish", {**record, "state": "passed", "reason": "passed"})
        if self.action == "blur":
            return Judgement("blur", {**record, "state": "blurred", "reason": FLAGGED})
        return Judgement("hold", {**record, "state": "held", "reason": FLAGGED, "held_at": now()})


class Retry(ModerationUnavailable):
    """No verdict yet and tries left: store `record` (the count) and report the record for a retry."""

    def __init__(self, record: dict, cause: Exception) -> None:
        super().__init__(f"{getattr(cause, 'message', cause)} (try {record['attempts']})")
        self.record = record
