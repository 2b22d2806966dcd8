"""SSIM (Wang et al. 2004) on luminance, numpy only.

Gaussian 11×11 window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering (like the
reference MATLAB implementation); luminance is BT.601 Y' from 8-bit sRGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

K1, K2, L = 0.01, 0.03, 255.0
C1, C2 = (K1 * L) ** 2, (K2 * L) ** 2


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with the 1-D window `w` along both axes."""
    k = len(w)
    h = x.shape[0] - k + 1
    rows = w[0] * x[0:h]
    for i in range(1, k):
        rows += w[i] * x[i : i + h]
    v = rows.shape[1] - k + 1
    out = w[0] * rows[:, 0:v]
    for i in range(1, k):
        out += w[i] * rows[:, i : i + v]
    return out


def luminance(image: Image.Image) -> np.ndarray:
    """Y' (BT.601) as float64 from an RGB or L image."""
    if image.mode == "L":
        return np.asarray(image, dtype=np.float64)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def ssim(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM between two same-size images (PIL images or 2-D luminance arrays)."""
    x = luminance(a) if isinstance(a, Image.Image) else np.asarray(a, dtype=np.float64)
    y = luminance(b) if isinstance(b, Image.Image) else np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"size mismatch: {x.shape} vs {y.shape}")
    size = min(window, *x.shape)
    w = _gaussian(size, sigma * size / window)
    mx, my = _filter(x, w), _filter(y, w)
    sxx = _filter(x * x, w) - mx * mx
    syy = _filter(y * y, w) - my * my
    sxy = _filter(x * y, w) - mx * my
    s = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2))
    return float(s.mean())


if __name__ == "__main__":  # self-check
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 80)).astype(np.float64)
    assert abs(ssim(img, img) - 1.0) < 1e-12
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255)
    print(f"identical 1.0, noisy σ=20: {ssim(img, noisy):.4f}")
