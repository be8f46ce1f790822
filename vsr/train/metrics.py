"""Image quality metrics as the SR literature reports them: PSNR and SSIM on the Y channel
(ITU-R BT.601, studio range) of 8-bit RGB images, with `shave` border pixels removed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "psnr_y", "ssim_y"]


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Y of BT.601 (16..235) as float64 from (H, W, 3) RGB uint8 (or float in 0..255)."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _shaved_y(img: np.ndarray, shave: int) -> np.ndarray:
    y = rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64)
    return y[shave:-shave, shave:-shave] if shave > 0 else y


def psnr_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB between two (H, W, 3) uint8 RGB images on the Y channel."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((_shaved_y(a, shave) - _shaved_y(b, shave)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) on the Y channel."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    x = torch.from_numpy(_shaved_y(a, shave))[None, None]
    y = torch.from_numpy(_shaved_y(b, shave))[None, None]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x ** 2
    syy = F.conv2d(y * y, win) - mu_y ** 2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(ssim.mean())
