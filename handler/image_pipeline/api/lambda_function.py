"""The API function's entry point on AWS: API Gateway HTTP API (payload 2.0) → Mangum → the app.

Settings are read and validated once per container (a bad deploy fails on its first request,
naming every problem); the S3 clients are opened once, on the loop Mangum runs every request on.
Litestar and Mangum come from the API function's own layer (stacks/api-layer), never from the
pipeline function's artefact.
"""

from __future__ import annotations

import asyncio

from mangum import Mangum

from .server import create_app

app = create_app()
_loop = asyncio.new_event_loop()
asyncio.set_event_loop(_loop)  # Mangum runs each request with asyncio.get_event_loop(): this one
_loop.run_until_complete(app.state.api.backend.start(app.state.api.service))
# Litestar types the ASGI scope and messages as TypedDicts, Mangum's protocol as MutableMappings:
# the same ASGI calls, two spellings the type checker cannot match.
handler = Mangum(app, lifespan="off")  # type: ignore[arg-type]
