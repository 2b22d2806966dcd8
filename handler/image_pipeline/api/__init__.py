"""The upload API (Litestar): presigned direct-to-S3 uploads, image status, variant redirects,
synchronous and background processing, deletes — a front above `ImageService`, beside the
Lambda handler. Litestar is imported only under this package, never by the pipeline function.

`create_app()` builds the ASGI app; `image-pipeline serve` runs it locally; `lambda_function`
adapts it to API Gateway (Mangum).
"""

from .app import create_app

__all__ = ["create_app"]
