"""Making low-resolution training inputs from high-resolution patches.

- Bicubic: the classic SR setting (SRGAN/ESRGAN), PIL's antialiased bicubic (a = -0.5, the
  kernel of MATLAB's imresize), applied to 8-bit images.
- Second order (Real-ESRGAN, Wang et al. 2021, sec. 3): blur -> random resize -> noise ->
  JPEG, twice, then the final resize to the target size with an optional sinc filter, the
  final resize and last JPEG in random order. Operates on float tensors in [0, 1].
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vsr.errors import UsageError

__all__ = ["bicubic_resize", "bicubic_downscale", "SecondOrderParams", "SecondOrderDegradation",
           "random_blur_kernel", "sinc_kernel"]


def bicubic_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to size=(w, h) with antialiased bicubic."""
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Downscale an (H, W, 3) uint8 image by an integer factor; H and W must be multiples."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"image {w}x{h} is not a multiple of the scale {scale}")
    return bicubic_resize(img, (w // scale, h // scale))


# ------------------------------------------------------------------ blur kernels

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                "plateau_aniso")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(r, r, indexing="xy")


def _mahalanobis(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    """x^T Σ^-1 x on a size x size grid for a covariance with std sx, sy rotated by theta."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    return (u / sx) ** 2 + (v / sy) ** 2


def random_blur_kernel(rng: np.random.Generator, size: int, kind: str,
                       sigma_range: tuple[float, float], betag_range: tuple[float, float],
                       betap_range: tuple[float, float]) -> np.ndarray:
    """A normalised (size, size) blur kernel of the given family with random shape."""
    sx = rng.uniform(*sigma_range)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = rng.uniform(*sigma_range), rng.uniform(-math.pi, math.pi)
    d2 = _mahalanobis(size, sx, sy, theta)
    if kind.startswith("generalized"):
        k = np.exp(-0.5 * np.power(d2, rng.uniform(*betag_range)))
    elif kind.startswith("plateau"):
        k = 1.0 / (1.0 + np.power(d2, rng.uniform(*betap_range)))
    else:
        k = np.exp(-0.5 * d2)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(cutoff: float, size: int) -> np.ndarray:
    """A circular low-pass (2-D sinc, ringing/overshoot artefacts) with cutoff in radians."""
    xx, yy = _grid(size)
    r = torch.from_numpy(np.sqrt(xx ** 2 + yy ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (cutoff * torch.special.bessel_j1(cutoff * r) / (2 * math.pi * r)).numpy()
    k[r.numpy() == 0] = cutoff ** 2 / (4 * math.pi)
    return (k / k.sum()).astype(np.float32)


def _filter(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve (1, C, H, W) with one 2-D kernel per channel, reflect-padded (size kept)."""
    k = torch.from_numpy(kernel).to(img)
    pad = k.shape[-1] // 2
    c = img.shape[1]
    # reflect needs the image larger than the padding; tiny patches fall back to replicate
    mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
    x = F.pad(img, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)


# ------------------------------------------------------------------ second-order degradation


@dataclass
class SecondOrderParams:
    """Parameters of the Real-ESRGAN degradation; the defaults are the paper's (x4 setting).
    Config table: [data.second_order]; sigma/noise values are in 0..255 pixel units."""

    kernel_sizes: tuple[int, int] = (7, 21)
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    # first order
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    sinc_prob: float = 0.1
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)
    # second order
    second_blur_prob: float = 0.8
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    sinc_prob2: float = 0.1
    resize_probs2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[int, int] = (30, 95)
    final_sinc_prob: float = 0.8

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "data.second_order") -> "SecondOrderParams":
        """Build from a config table; unknown keys and bad ranges raise UsageError naming the key."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k not in known:
                raise UsageError(f"unknown key {where}.{k} (known: {', '.join(known)})")
            default = getattr(cls(), k)
            if isinstance(default, tuple):
                if not isinstance(v, (list, tuple)) or (k != "kernel_types" and k != "kernel_probs"
                                                        and len(v) != len(default)):
                    raise UsageError(f"{where}.{k} must be a list like {list(default)}")
                v = tuple(v)
                if len(v) == 2 and k.endswith(("range", "sigma", "sigma2", "sizes")) and v[0] > v[1]:
                    raise UsageError(f"{where}.{k}: the first value must not exceed the second")
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise UsageError(f"{where}.{k} must be a number")
            kwargs[k] = v
        p = cls(**kwargs)
        if len(p.kernel_types) != len(p.kernel_probs):
            raise UsageError(f"{where}.kernel_types and kernel_probs differ in length")
        bad = [t for t in p.kernel_types if t not in KERNEL_TYPES]
        if bad:
            raise UsageError(f"{where}.kernel_types: unknown {bad[0]!r} (known: {', '.join(KERNEL_TYPES)})")
        if p.kernel_sizes[0] < 3 or p.kernel_sizes[0] % 2 == 0 or p.kernel_sizes[1] % 2 == 0:
            raise UsageError(f"{where}.kernel_sizes must be odd and >= 3")
        return p

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SecondOrderDegradation:
    """Real-ESRGAN's second-order degradation: HR batch (N, 3, H, W) in [0, 1] -> LR batch
    (N, 3, H/scale, W/scale) in [0, 1], quantised to 8 bits like a decoded frame."""

    def __init__(self, scale: int, params: SecondOrderParams | None = None) -> None:
        self.scale = scale
        self.p = params or SecondOrderParams()

    def _kernel(self, rng: np.random.Generator, sigma: tuple[float, float], sinc_prob: float) -> np.ndarray:
        lo, hi = self.p.kernel_sizes
        size = int(rng.choice(np.arange(lo, hi + 1, 2)))
        if rng.uniform() < sinc_prob:
            cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
            return sinc_kernel(cutoff, size)
        probs = np.asarray(self.p.kernel_probs, dtype=np.float64)
        kind = self.p.kernel_types[int(rng.choice(len(probs), p=probs / probs.sum()))]
        return random_blur_kernel(rng, size, kind, sigma, self.p.betag_range, self.p.betap_range)

    @staticmethod
    def _resize(rng: np.random.Generator, img: torch.Tensor, probs, rng_range) -> torch.Tensor:
        mode = ["up", "down", "keep"][int(rng.choice(3, p=np.asarray(probs) / np.sum(probs)))]
        factor = (rng.uniform(1, rng_range[1]) if mode == "up"
                  else rng.uniform(rng_range[0], 1) if mode == "down" else 1.0)
        if factor == 1.0:
            return img
        h, w = img.shape[-2:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return _interpolate(rng, img, size)

    @staticmethod
    def _noise(rng: np.random.Generator, img: torch.Tensor, gauss_prob: float,
               sigma_range, poisson_range, gray_prob: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        gray = rng.uniform() < gray_prob
        shape = (1, 1, *img.shape[-2:]) if gray else img.shape
        if rng.uniform() < gauss_prob:
            sigma = rng.uniform(*sigma_range) / 255.0
            noise = torch.randn(shape, generator=gen) * sigma
        else:
            scale = rng.uniform(*poisson_range)
            # Shot noise of an 8-bit sensor: counts ~ Poisson(255 * intensity).
            base = img.mean(1, keepdim=True) if gray else img
            counts = torch.poisson(base.clamp(0, 1) * 255.0, generator=gen)
            noise = (counts / 255.0 - base) * scale
        return (img + noise.to(img)).clamp(0, 1)

    @staticmethod
    def _jpeg(rng: np.random.Generator, img: torch.Tensor, quality_range) -> torch.Tensor:
        q = int(rng.integers(quality_range[0], quality_range[1] + 1))
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=q)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return torch.from_numpy(dec.copy()).permute(2, 0, 1)[None].float() / 255.0

    def _one(self, rng: np.random.Generator, hr: torch.Tensor) -> torch.Tensor:
        p = self.p
        h, w = hr.shape[-2:]
        x = hr[None].float()
        # first order
        x = _filter(x, self._kernel(rng, p.blur_sigma, p.sinc_prob))
        x = self._resize(rng, x, p.resize_probs, p.resize_range)
        x = self._noise(rng, x, p.gaussian_noise_prob, p.noise_range, p.poisson_scale_range,
                        p.gray_noise_prob)
        x = self._jpeg(rng, x, p.jpeg_range)
        # second order
        if rng.uniform() < p.second_blur_prob:
            x = _filter(x, self._kernel(rng, p.blur_sigma2, p.sinc_prob2))
        # the second resize is relative to the target size, as in Real-ESRGAN
        target = (h // self.scale, w // self.scale)
        mid = self._resize(rng, torch.empty(1, 1, *target), p.resize_probs2, p.resize_range2).shape[-2:]
        x = _interpolate(rng, x, tuple(mid))
        x = self._noise(rng, x, p.gaussian_noise_prob2, p.noise_range2, p.poisson_scale_range2,
                        p.gray_noise_prob2)
        sinc = (sinc_kernel(rng.uniform(math.pi / 3, math.pi), int(rng.choice(np.arange(7, 22, 2))))
                if rng.uniform() < p.final_sinc_prob else None)

        def final_resize(t: torch.Tensor) -> torch.Tensor:
            t = _interpolate(rng, t, target)
            return _filter(t, sinc) if sinc is not None else t

        if rng.uniform() < 0.5:
            x = self._jpeg(rng, final_resize(x), p.jpeg_range2)
        else:
            x = final_resize(self._jpeg(rng, x, p.jpeg_range2))
        return ((x.clamp(0, 1) * 255.0).round() / 255.0)[0]

    def __call__(self, hr: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Degrade a batch (N, 3, H, W) with H, W multiples of the scale; returns its LR batch."""
        if hr.shape[-1] % self.scale or hr.shape[-2] % self.scale:
            raise ValueError("HR patch size must be a multiple of the scale")
        return torch.stack([self._one(rng, img) for img in hr.cpu()]).to(hr.device)


def _interpolate(rng: np.random.Generator, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize with a randomly chosen kernel (area, bilinear, bicubic), as Real-ESRGAN does."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    mode = ("area", "bilinear", "bicubic")[int(rng.integers(3))]
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False).clamp(0, 1)

