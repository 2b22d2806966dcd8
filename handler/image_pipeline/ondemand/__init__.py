"""Sizes on demand: width URLs and lazy variants, made on their first request, stored, then served
from storage (and the CDN) like every other output.

A room above the service, beside `handler.py` and `api/`: the upload API
(`GET /images/{id}/w640.webp`) and the CDN's miss function (`ondemand/lambda_function.py`) both
call `OnDemand`, which calls the same `ImageService` and processor as an upload: never a second
pipeline. What a request may ask for (`paths.py`) and who may create it (`signing.py`) are decided
here before any storage call; `ImageService.make_variant` does the making.

    ONDEMAND_WIDTHS  widths anyone may ask for, unsigned (default: paths.DEFAULT_WIDTHS)
    ONDEMAND_RATIOS  aspect ratios anyone may ask for, unsigned, as `w640-16x9` (default:
                     paths.DEFAULT_RATIOS)
    SIGNING_KEY      HMAC key for any other width or ratio (`?sig=`, see signing.py); unset:
                     allowlists only
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..processor.sniff import content_type
from ..processor.specs import Fit, Gravity, ImageFormat, VariantConfig
from ..service import ImageService, Made
from ..storage import ObjectNotFound, ObjectStore
from . import signing
from .paths import (
    DEFAULT_RATIOS,
    DEFAULT_WIDTHS,
    BadOutput,
    Ratio,
    WidthRequest,
    fallback_format,
    is_width_leaf,
    parse_ratios,
    parse_width,
    parse_widths,
)

__all__ = ["BadOutput", "Forbidden", "OnDemand", "OnDemandSettings", "Ratio", "Wanted", "is_width_leaf"]

MIN_KEY_BYTES = 32


class Forbidden(Exception):
    """Creating this output needs a valid signature (403), decided before any storage call."""


@dataclass(frozen=True)
class OnDemandSettings:
    widths: frozenset[int] = frozenset(DEFAULT_WIDTHS)
    signing_key: bytes | None = None
    ratios: tuple[Ratio, ...] = parse_ratios(",".join(DEFAULT_RATIOS))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OnDemandSettings:
        env = os.environ if environ is None else environ
        problems = []
        raw = env.get("ONDEMAND_WIDTHS", "").strip()
        widths: tuple[int, ...] = DEFAULT_WIDTHS
        if raw:
            try:
                widths = parse_widths(raw)
            except ValueError as exc:
                problems.append(f"ONDEMAND_WIDTHS: {exc}")
        raw_ratios = env.get("ONDEMAND_RATIOS")
        ratios = cls.ratios
        if raw_ratios is not None and raw_ratios.strip():
            try:
                ratios = parse_ratios(raw_ratios)
            except ValueError as exc:
                problems.append(f"ONDEMAND_RATIOS: {exc}")
        key = env.get("SIGNING_KEY", "").strip()
        if key and len(key.encode()) < MIN_KEY_BYTES:
            problems.append(f"SIGNING_KEY must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)")
        if problems:
            raise ConfigError("invalid on-demand settings:\n  - " + "\n  - ".join(problems))
        return cls(frozenset(widths), key.encode() if key else None, ratios)


@dataclass(frozen=True)
class Wanted:
    """An output a request may have: the leaf it is stored under and how to make it once the
    image's manifest (its `source`) is known."""

    leaf: str
    spec_for: Callable[[dict], VariantConfig]


class OnDemand:
    def __init__(self, service: ImageService, settings: OnDemandSettings | None = None) -> None:
        self.service = service
        self.settings = settings or OnDemandSettings()
        self._lazy = {spec.name: spec for spec in service.lazy}
        self._flights: dict[tuple[int, str], asyncio.Future[Made]] = {}

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.settings.widths))

    def is_lazy(self, name: str) -> bool:
        return name in self._lazy

    @property
    def ratios(self) -> tuple[Ratio, ...]:
        return self.settings.ratios

    def width(self, leaf: str, path: str, sig: str | None) -> WidthRequest:
        """A width (or ratio) URL's request, if it may create its output: width and ratio
        allowlisted, or signed over `path`. BadOutput (400) or Forbidden (403) otherwise: before
        any storage call."""
        request = parse_width(leaf)
        refused = []
        if request.width not in self.settings.widths:
            refused.append(f"width {request.width} is not in the allowlist ({', '.join(map(str, self.widths))})")
        if request.ratio is not None and request.ratio not in self.settings.ratios:
            refused.append(f"ratio {request.ratio} is not in the allowlist ({', '.join(map(str, self.ratios))})")
        if not refused:
            return request
        what = " and ".join(refused)
        if self.settings.signing_key is None:
            raise Forbidden(f"{what}; other sizes need a signed URL, and signing is off (no SIGNING_KEY)")
        if not signing.verify(self.settings.signing_key, path, sig):
            reason = "has no signature" if not sig else "has a signature that does not match"
            raise Forbidden(f"{what}, and the URL {reason} (`image-pipeline sign`)")
        return request

    def wanted_width(self, request: WidthRequest, negotiated: ImageFormat | None = None) -> Wanted:
        """The output of a width request; `request.format` None is resolved by `negotiated` (from
        `Accept`), and failing that by the fallback rule at making time (JPEG, or PNG for alpha)."""
        fmt = request.format or negotiated
        name = request.unformatted
        leaf = name if fmt is None else f"{name}.{fmt.extension}"
        ratio = request.ratio

        def spec_for(source: dict) -> VariantConfig:
            out_format = fmt or fallback_format(source)
            if ratio is None:
                return VariantConfig(name, request.width, 0, format=out_format)
            # The largest A:B window, around the subject, `width` wide (or the window's own width:
            # never upscaled); a source without recorded dimensions is refused by the processor.
            width, height = ratio.size(request.width, int(source.get("width") or 0), int(source.get("height") or 0))
            return VariantConfig(name, width, height, format=out_format, fit=Fit.COVER, gravity=Gravity.AUTO)

        return Wanted(leaf, spec_for)

    def wanted_lazy(self, name: str, leaf: str | None = None) -> Wanted | None:
        """A configured lazy variant by name. Its leaf depends on the source's type when the spec
        keeps the source's format (`lazy_leaf`): given a `leaf`, making it checks the two agree and
        raises ObjectNotFound otherwise (`xl.webp` of a JPEG-only variant is no output of ours)."""
        spec = self._lazy.get(name)
        if spec is None:
            return None

        def spec_for(source: dict) -> VariantConfig:
            if leaf is not None and leaf != self.lazy_leaf(name, str(source.get("type", ""))):
                raise ObjectNotFound(f"{leaf} is not the {name!r} variant of this image")
            return spec

        return Wanted(leaf or name, spec_for)

    def lazy_leaf(self, name: str, source_type: str) -> str:
        spec = self._lazy[name]
        return self.service.lazy_key("", spec, source_type)

    async def get(
        self, store: ObjectStore, prefix: str, wanted: Wanted, leaf: str | None = None, *, look_first: bool = False
    ) -> Made:
        """Make (or fetch what a concurrent request stored) the output `prefix + leaf`. Concurrent
        requests for one key in this process share one making (single flight); across processes
        S3's conditional write keeps one stored object and every request answers its bytes.
        `look_first`: read the key before anything else (one GET; callers that have not just
        listed it), so a stored output is answered without image work."""
        key = prefix + (leaf or wanted.leaf)
        if look_first:
            try:
                stored = await store.read(key)
            except ObjectNotFound:
                pass
            else:
                return Made(key, stored.data, content_type(stored.data), False)
        flight = (id(store), key)
        pending = self._flights.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Made] = asyncio.get_running_loop().create_future()
        self._flights[flight] = future
        try:
            made = await self.service.make_variant(store, prefix, wanted.spec_for, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(made)
            return made
        finally:
            del self._flights[flight]
