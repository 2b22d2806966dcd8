"""Pure image processing: bytes + variant specs in, encoded variants out."""

from .pipeline import ImageProcessor
from .sniff import sniff
from .specs import (
    DEFAULT_VARIANTS,
    Face,
    Fit,
    Gravity,
    ImageFormat,
    ImageVariant,
    Limits,
    ProcessedImage,
    SourceInfo,
    VariantConfig,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "Face",
    "Fit",
    "Gravity",
    "ImageFormat",
    "ImageProcessor",
    "ImageVariant",
    "Limits",
    "ProcessedImage",
    "SourceInfo",
    "VariantConfig",
    "sniff",
]
