"""An image's subject, set by hand: `PUT /images/{id}/focal` with `{"x": 0.3, "y": 0.4}` (0–1,
from the top-left of the upright picture) records a focal point that every crop keeps;
`DELETE /images/{id}/focal` goes back to the detected subject.

The owner of the image or an `images:admin` caller; another owner's image is 404, like one that
does not exist. The image must be processed: a pending or failed upload (no outputs yet, or a newer
upload of it being processed) is 409 `not_processed`, and nothing changes. The work is the
service's (`ImageService.set_focal`): the image is processed again with the point (eager variants,
the manifest last), and the crops made on request (ratio URLs, lazy `cover` variants) are deleted
to be made again on their next request. Both answer the image's status (`GET /images/{id}`).
"""

from __future__ import annotations

import asyncio
import json
import math

from litestar import Request, delete, put
from litestar.params import FromPath

from ..errors import ImageRejected
from ..service import NotReady
from ..storage import ObjectNotFound
from . import app as _app
from .guards import authenticated, caller_of
from .problems import not_found, problem

MAX_BODY = 1024
_SHAPE = 'send JSON {"x": 0.3, "y": 0.4}: numbers from 0 to 1, from the top-left of the picture'


@put(
    "/images/{image_id:str}/focal",
    status_code=200,
    summary="Set the image's focal point by hand: every crop keeps it",
    guards=[authenticated],
)
async def put_focal(request: Request, image_id: FromPath[str]) -> _app.ImageInfo:
    image_id = caller_of(request).resolve(image_id)  # 404 before any storage call
    point = focal_point(await request.body())  # 400 before any storage call
    return await _set(request, image_id, point)


@delete(
    "/images/{image_id:str}/focal",
    status_code=200,
    summary="Forget the focal point set by hand: crops go back to the detected subject",
    guards=[authenticated],
)
async def delete_focal(request: Request, image_id: FromPath[str]) -> _app.ImageInfo:
    image_id = caller_of(request).resolve(image_id)
    return await _set(request, image_id, None)


routes = [put_focal, delete_focal]


def focal_point(body: bytes) -> tuple[float, float]:
    """`{"x": …, "y": …}` as (x, y); a 400 problem for anything else (booleans, NaN, strings,
    out of range, missing or unknown members, not JSON)."""
    if len(body) > MAX_BODY:
        raise problem(400, f"the body is over {MAX_BODY} bytes; {_SHAPE}")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise problem(400, f"the body is not JSON; {_SHAPE}") from None
    if not isinstance(data, dict):
        raise problem(400, f"the body must be a JSON object; {_SHAPE}")
    unknown = sorted(set(data) - {"x", "y"})
    if unknown:
        raise problem(400, f"unknown member(s) {', '.join(map(repr, unknown))}; {_SHAPE}")
    point = []
    for name in ("x", "y"):
        if name not in data:
            raise problem(400, f"{name} is missing; {_SHAPE}")
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise problem(400, f"{name} must be a number, not {type(value).__name__}; {_SHAPE}")
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise problem(400, f"{name} = {value} is outside 0 to 1; {_SHAPE}")
        point.append(float(value))
    return point[0], point[1]


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


async def _set(request: Request, image_id: str, point: tuple[float, float] | None) -> _app.ImageInfo:
    api = _app.api_of(request)
    raws, (record, _) = await asyncio.gather(api.store.list(api.raw_dir(image_id), limit=1), api.manifest(image_id))
    if record is None:
        if not raws:
            raise not_found()
        raise problem(
            409, "the image is not processed (pending or failed): there is nothing to crop yet", "not_processed"
        )
    try:
        await api.service.set_focal(api.store, str(record["source"]["key"]), point)
    except ObjectNotFound:
        raise not_found() from None
    except NotReady as exc:
        raise problem(409, str(exc), "not_processed") from None
    except ImageRejected as exc:  # the same upload was processed before; a changed limit may refuse it now
        raise problem(422, exc.message, exc.code) from None
    info = await api.describe(request, image_id)
    if info is None:
        raise not_found()
    return info
