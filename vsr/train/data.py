"""Training data: high-resolution images from a folder of images and/or video files, random
patches with flips and rotations, and their low-resolution inputs (bicubic, Real-ESRGAN
second-order degradation, or a paired LR folder).

Every source is read once into memory as 8-bit RGB (grayscale is replicated to three
channels, alpha dropped, 16-bit reduced to 8 bits): training data sets here are small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vsr.errors import InputError, UsageError
from vsr.train.degradations import SecondOrderDegradation, bicubic_downscale

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "HRImage", "list_sources", "load_image_rgb8",
           "read_video_frames", "load_hr_images", "PatchSampler", "ValPair", "make_val_pairs"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".m2ts",
              ".mxf", ".y4m", ".flv", ".wmv", ".3gp", ".ogv"}


@dataclass
class HRImage:
    """One high-resolution training image: where it came from and its (H, W, 3) uint8 pixels."""

    name: str
    pixels: np.ndarray


def list_sources(folder: str | os.PathLike, key: str) -> list[Path]:
    """Image and video files under `folder` (recursive, sorted). `key` names the config key in
    errors: a missing or empty folder is refused."""
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{key}: folder not found: {root}")
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    if not files:
        raise UsageError(f"{key}: no images or videos in {root} "
                         f"(looked for {', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
    return files


def load_image_rgb8(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                gray = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {str(err).splitlines()[0]}") from None


def read_video_frames(path: str | os.PathLike, step: int = 6, max_frames: int = 0, *,
                      info=None) -> list[np.ndarray]:
    """Decode every `step`-th frame of a video's main stream as (H, W, 3) uint8 RGB (with the
    stream's own matrix and range, via vsr.media); with `max_frames` > 0 keep that many,
    spread evenly across the whole clip."""
    from vsr.media.decode import decode_segment
    from vsr.media.probe import probe
    from vsr.media.segments import plan_segments

    def every_step(frames):
        # drop unwanted frames before their RGB conversion
        return (f for i, f in enumerate(frames) if i % step == 0)

    info = info or probe(path)
    frames: list[np.ndarray] = []
    for segment in plan_segments(info, 0):
        for chunk in decode_segment(path, segment, 16, info=info, frame_filter=every_step):
            if chunk.frames.dtype == np.uint16:  # > 8-bit source: training data is 8-bit
                chunk.frames = (chunk.frames.astype(np.float32) / 257.0).round().astype(np.uint8)
            frames.extend(chunk.frames)
    if not frames:
        raise InputError(f"{path}: no decodable video frames")
    if max_frames and len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return [np.ascontiguousarray(f) for f in frames]


def load_hr_images(folder: str | os.PathLike, key: str, *, video_frame_step: int = 6,
                   max_frames_per_video: int = 0, max_memory_gb: float = 0.0) -> list[HRImage]:
    """All training images of a folder: each image file, and sampled frames of each video.
    With max_memory_gb > 0 the decoded size is estimated from the headers first and a data
    set that would not fit is refused before anything is decoded."""
    from vsr.media.probe import probe

    sources = list_sources(folder, key)
    infos: dict[Path, object] = {}
    total = 0
    for path in sources:
        if path.suffix.lower() in VIDEO_EXTS:
            info = infos[path] = probe(path)
            n = -(-max(info.video.frame_count, 1) // video_frame_step)
            n = min(n, max_frames_per_video) if max_frames_per_video else n
            total += n * info.video.width * info.video.height * 3
        else:
            try:
                with Image.open(path) as im:
                    total += im.width * im.height * 3
            except (UnidentifiedImageError, OSError) as err:
                raise InputError(f"cannot read image {path}: {str(err).splitlines()[0]}") from None
    if max_memory_gb > 0 and total > max_memory_gb * 2 ** 30:
        raise UsageError(f"{key}: {total / 2 ** 30:.1f} GiB of decoded frames exceed data.max_memory_gb = "
                         f"{max_memory_gb:g}; raise data.video_frame_step or set data.max_frames_per_video")
    out: list[HRImage] = []
    for path in sources:
        if path in infos:
            frames = read_video_frames(path, video_frame_step, max_frames_per_video, info=infos[path])
            out.extend(HRImage(f"{path.name}#{i}", f) for i, f in enumerate(frames))
        else:
            out.append(HRImage(path.name, load_image_rgb8(path)))
    return out


def _modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _augment(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation applied to each array (LR and HR patch)."""
    hflip, vflip, rot = rng.uniform(size=3) < 0.5
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if rot:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


def _to_tensor(batch: list[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) uint8 patches -> (N, 3, H, W) float32 in [0, 1]."""
    arr = np.stack([np.ascontiguousarray(b) for b in batch])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


class PatchSampler:
    """Random aligned (LR, HR) patch batches from in-memory HR images.

    degradation "bicubic" precomputes each image's bicubic LR once (crops of it equal
    degraded crops, as in the literature's pre-cropped data sets), "second-order" degrades
    each HR patch on the fly, and "paired" takes the LR images given (same names in `lr_images`).
    """

    def __init__(self, hr_images: list[HRImage], scale: int, patch_size: int,
                 degradation: str = "bicubic", *, second_order: SecondOrderDegradation | None = None,
                 lr_images: dict[str, np.ndarray] | None = None, augment: bool = True) -> None:
        if patch_size % scale:
            raise UsageError(f"data.patch_size {patch_size} must be a multiple of the scale {scale}")
        if not hr_images:
            raise UsageError("data.train: no training images")
        self.scale, self.patch_size, self.degradation, self.augment = scale, patch_size, degradation, augment
        self.second_order = second_order
        self.hr: list[np.ndarray] = []
        self.lr: list[np.ndarray | None] = []
        for item in hr_images:
            h, w = item.pixels.shape[:2]
            if h < patch_size or w < patch_size:
                raise UsageError(f"data.patch_size {patch_size} is larger than {item.name} ({w}x{h}); "
                                 "lower data.patch_size or remove the image")
            if degradation == "paired":
                lr = (lr_images or {}).get(item.name)
                if lr is None:
                    raise UsageError(f"data.lr: no low-resolution image named {item.name}")
                lh, lw = lr.shape[:2]
                if (lh * scale, lw * scale) != (h, w):
                    raise UsageError(f"data.lr: {item.name} is {lw}x{lh}, expected {w // scale}x{h // scale} "
                                     f"(HR {w}x{h} / scale {scale})")
                self.hr.append(item.pixels)
                self.lr.append(lr)
            elif degradation == "bicubic":
                hr = _modcrop(item.pixels, scale)
                self.hr.append(hr)
                self.lr.append(bicubic_downscale(hr, scale))
            elif degradation == "second-order":
                self.hr.append(item.pixels)
                self.lr.append(None)
            else:
                raise UsageError(f"unknown data.degradation {degradation!r} (bicubic, second-order, paired)")
        if degradation == "second-order" and second_order is None:
            self.second_order = SecondOrderDegradation(scale)
        # Larger images hold more distinct patches: sample images in proportion to area.
        areas = np.array([h.shape[0] * h.shape[1] for h in self.hr], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return len(self.hr)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: (LR (N, 3, p/s, p/s), HR (N, 3, p, p)) float32 in [0, 1]."""
        s, p = self.scale, self.patch_size
        lp = p // s
        lrs, hrs = [], []
        for idx in rng.choice(len(self.hr), size=batch_size, p=self.weights):
            hr = self.hr[idx]
            lr = self.lr[idx]
            if lr is not None:
                lh, lw = lr.shape[:2]
                y, x = int(rng.integers(lh - lp + 1)), int(rng.integers(lw - lp + 1))
                pair = [lr[y:y + lp, x:x + lp], hr[y * s:(y + lp) * s, x * s:(x + lp) * s]]
            else:
                h, w = hr.shape[:2]
                y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
                pair = [hr[y:y + p, x:x + p]]
            if self.augment:
                pair = _augment(pair, rng)
            if lr is not None:
                lrs.append(pair[0])
                hrs.append(pair[1])
            else:
                hrs.append(pair[0])
        hr_t = _to_tensor(hrs)
        if self.degradation == "second-order":
            assert self.second_order is not None
            return self.second_order(hr_t, rng), hr_t
        return _to_tensor(lrs), hr_t


@dataclass
class ValPair:
    """A held-out image: its name, LR input and HR reference, both (H, W, 3) uint8."""

    name: str
    lr: np.ndarray
    hr: np.ndarray


def make_val_pairs(images: Iterable[HRImage], scale: int, max_size: int = 0) -> list[ValPair]:
    """Validation pairs: HR cropped to a multiple of the scale (and to at most max_size x
    max_size around the centre when max_size > 0, to bound CPU time), LR by bicubic x1/scale."""
    pairs = []
    for item in images:
        hr = item.pixels
        if max_size:
            h, w = hr.shape[:2]
            ch, cw = min(h, max_size), min(w, max_size)
            y, x = (h - ch) // 2, (w - cw) // 2
            hr = hr[y:y + ch, x:x + cw]
        hr = np.ascontiguousarray(_modcrop(hr, scale))
        if hr.shape[0] < scale * 4 or hr.shape[1] < scale * 4:
            continue  # too small to say anything after the border shave
        pairs.append(ValPair(item.name, bicubic_downscale(hr, scale), hr))
    return pairs

