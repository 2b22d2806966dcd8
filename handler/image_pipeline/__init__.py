"""s3-image-pipeline: S3 upload → Lambda → resized, colour-correct variants and a manifest.

The public processing API lives here; the Lambda entry point is `image_pipeline.handler.lambda_handler`.
"""

from .processor import (
    Fit,
    Gravity,
    ImageFormat,
    ImageProcessor,
    ImageVariant,
    Limits,
    ProcessedImage,
    VariantConfig,
)

__version__ = "0.1.0"

__all__ = [
    "Fit",
    "Gravity",
    "ImageFormat",
    "ImageProcessor",
    "ImageVariant",
    "Limits",
    "ProcessedImage",
    "VariantConfig",
    "__version__",
]
