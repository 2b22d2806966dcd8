"""The upload API (Litestar): presigned direct-to-S3 uploads, image status, variant redirects,
synchronous and background processing, deletes — a front above `ImageService`, beside the
Lambda handler. Litestar is imported only under this package, never by the pipeline function.

`ImagePipelinePlugin` mounts it in any Litestar app over any litestar-storages backend (plugin.py);
`create_app()` builds an app of its own with it (server.py); `image-pipeline serve` runs that
locally; `lambda_function` adapts it to API Gateway (Mangum).
"""

from .auth import Caller
from .plugin import ImagePipelinePlugin
from .server import create_app
from .settings import ApiSettings

__all__ = ["ApiSettings", "Caller", "ImagePipelinePlugin", "create_app"]
