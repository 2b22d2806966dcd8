"""The real processor, held at its door until the test opens it: image work that lasts exactly as
long as a test needs, with Pillow doing the real work afterwards (no mock of Pillow)."""

from __future__ import annotations

import threading

from image_pipeline.processor import ImageProcessor


class GatedProcessor(ImageProcessor):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()  # an image reached the processor
        self.gate = threading.Event()  # set by the test: go on
        self.done = threading.Event()  # the processor returned (or raised)

    @classmethod
    def replacing(cls, service) -> GatedProcessor:
        """Swap `service`'s processor for a gated one of the same configuration (same fingerprint)."""
        p = service.processor
        gated = cls(
            p.variants,
            p.preserve_original,
            p.strip_metadata,
            p.background_color,
            limits=p.limits,
            keep_icc_profile=p.keep_icc_profile,
            face_detector=p.face_detector,
        )
        service.processor = gated
        return gated

    def process_image(self, data: bytes, **subject):
        self.entered.set()
        try:
            if not self.gate.wait(60):
                raise AssertionError("the test never opened the gate")
            return super().process_image(data, **subject)
        finally:
            self.done.set()
