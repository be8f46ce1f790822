"""Temporal stability of an upscaled video against its source: the measures of `vsr flicker`.

Fed one matched frame at a time (source, output, a reference upscale of the source and, when
there is one, the ground truth), a TemporalMeter keeps only the previous frame and small per-block
sums, so a long clip costs no memory. Every measure is on Y: BT.601 luma in 8-bit studio range
(16-235), the Y most videos store and super-resolution papers report PSNR on, so "levels" are the
levels of an 8-bit video's Y plane.

- static-region flicker: the source is cut into BLOCK x BLOCK blocks; a block is still between two
  frames when its source mean absolute change is within the noise threshold (see
  `still_threshold`) and so are its 8 neighbours (a network's receptive field reaches across a
  block edge: a block beside motion may change for a good reason). Over the still blocks' pixels
  on the output grid: the mean absolute frame-to-frame change of the output, the same of the
  reference, their ratio (1.0 = as steady as the reference), and the sparkle: the share of those
  pixels that change by more than SPARKLE_LEVELS.
- warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018): the
  output's frame t-1 warped to frame t by the source's optical flow (OpenCV's DIS, scaled to the
  output grid), mean absolute error over the pixels that pass the forward-backward consistency
  check (Sundaram et al. 2010: |w_b + w_f(x + w_b)|^2 <= 0.01 (|w_b|^2 + |w_f(x + w_b)|^2) + 0.5)
  and land inside the frame; averaged over frame pairs.
- with ground truth: tOF (TecoGAN, Chu et al. 2020): mean absolute difference of the flow
  components between consecutive output frames and consecutive ground-truth frames, in output
  pixels; PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5) on Y per frame.

Optical flow runs on pictures whose longer side is at most FLOW_MAX_SIDE (area-downscaled when
larger; the flow is scaled back): DIS at 1280x960 costs 0.23 s a pair on 2 cores, at 640x480 0.05 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

BLOCK = 8  # source pixels per side of a still/moving block
SPARKLE_LEVELS = 4.0  # a still pixel that changes by more than this many Y levels sparkles
FLOW_MAX_SIDE = 640
PSNR_CAP = 100.0  # dB reported for equal pictures
# the expected mean |change| of pure noise of standard deviation sigma is 2 sigma / sqrt(pi);
# a block is still within NOISE_MARGIN times that, plus QUANT_LEVELS for 8-bit rounding
NOISE_MARGIN = 1.5
QUANT_LEVELS = 0.5
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


_LUMA = np.array([[65.481 / 255, 128.553 / 255, 24.966 / 255, 16.0]], np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) RGB, uint8 or uint16 (full scale) -> (H,W) float32 Y in 8-bit studio range (16-235)."""
    x = np.empty(rgb.shape, np.float32)
    x[...] = rgb
    if rgb.dtype == np.uint16:
        x *= 1.0 / 257.0
    return cv2.transform(x, _LUMA)


def noise_sigma(y: np.ndarray) -> float:
    """Standard deviation of the picture's noise, Immerkaer's estimator ("Fast noise variance
    estimation", 1996): the mean |Laplacian difference| over the picture, scaled. Texture raises
    it a little; the still threshold only needs its order of magnitude."""
    h, w = y.shape
    if h < 3 or w < 3:
        return 0.0
    r = cv2.filter2D(y, cv2.CV_32F, _IMMERKAER)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(r).sum(dtype=np.float64) / (6.0 * (w - 2) * (h - 2)))


def still_threshold(sigma: float) -> float:
    """The largest source block mean |change| (Y levels) that still counts as noise."""
    return NOISE_MARGIN * 2.0 * sigma / math.sqrt(math.pi) + QUANT_LEVELS


def _to_u8(y: np.ndarray) -> np.ndarray:
    return np.clip(y + 0.5, 0, 255).astype(np.uint8)


class _Flow:
    """DIS optical flow (medium preset) of Y pictures of one size, run at most FLOW_MAX_SIDE."""

    def __init__(self, size: tuple[int, int]) -> None:
        w, h = size
        k = min(1.0, FLOW_MAX_SIDE / max(w, h))
        self.size = size
        self.work = (max(8, round(w * k)), max(8, round(h * k)))
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def prepare(self, y: np.ndarray) -> np.ndarray:
        u8 = _to_u8(y)
        return u8 if self.work == self.size else cv2.resize(u8, self.work, interpolation=cv2.INTER_AREA)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from prepared picture a to b, (h, w, 2) float32 in work-grid pixels."""
        return self.dis.calc(a, b, None)


def _grid(w: int, h: int) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.dstack([gx, gy])


def consistent(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose flow to t-1 (backward) is confirmed by the flow from t-1 to t
    (forward) and lands inside the frame: the non-occluded pixels (bool, h x w)."""
    h, w = backward.shape[:2]
    pos = _grid(w, h) + backward
    fw = cv2.remap(forward, pos[..., 0], pos[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    s = backward + fw
    ok = (s * s).sum(-1) <= 0.01 * ((backward * backward).sum(-1) + (fw * fw).sum(-1)) + 0.5
    inside = (pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1)
    return ok & inside


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two Y pictures (peak 255); inf when equal."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two Y pictures (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    L 255), averaged over the window positions inside the picture."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s.mean()) if s.size else 1.0


@dataclass
class _Pair:
    """What one frame pair leaves: per-source-block sums of the output-grid changes and the
    per-pair numbers."""

    time: float
    source_change: np.ndarray  # (nby, nbx) mean |source change| per block
    sums: np.ndarray  # (4, nby, nbx): |out change|, |ref change|, out sparkles, ref sparkles (source-pixel units)
    warp: tuple[float, float] | None = None  # (output, reference) warping error
    warp_valid: float | None = None  # share of output pixels that the warping error covers
    tof: float | None = None
    tof_reference: float | None = None


@dataclass
class _Frame:
    time: float
    y_src: np.ndarray
    y_out: np.ndarray
    y_ref: np.ndarray
    small_src: np.ndarray  # Y prepared for optical flow (_Flow.prepare)
    small_out: np.ndarray | None = None
    small_ref: np.ndarray | None = None
    small_gt: np.ndarray | None = None


def _block_sums(x: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    return np.add.reduceat(np.add.reduceat(x, sy, axis=0), sx, axis=1)


@dataclass
class TemporalMeter:
    """Accumulates the temporal measures of an output against its source, one matched frame at a
    time (add), and reports them (result). source_size and output_size are (width, height)."""

    source_size: tuple[int, int]
    output_size: tuple[int, int]
    warping: bool = True
    ground_truth: bool = False
    block: int = BLOCK
    _pairs: list[_Pair] = field(default_factory=list, init=False)
    _sigmas: list[float] = field(default_factory=list, init=False)
    _frames: list[dict[str, Any]] = field(default_factory=list, init=False)
    _prev: _Frame | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        (ws, hs), (wo, ho) = self.source_size, self.output_size
        b = self.block
        self._src_starts = (np.arange(0, hs, b), np.arange(0, ws, b))
        self._src_counts = _block_sums(np.ones((hs, ws), np.float32), *self._src_starts)
        self._src_flow = _Flow(self.source_size)
        self._out_flow = _Flow(self.output_size)
        self._out_grid = _grid(wo, ho) if self.warping else None

    def add(self, time: float, source: np.ndarray, output: np.ndarray, reference: np.ndarray,
            ground_truth: np.ndarray | None = None) -> None:
        """One matched frame: source RGB at source size; output, reference (and ground truth) RGB
        at output size. Frames come in presentation order."""
        frame = _Frame(time, luma(source), luma(output), luma(reference), np.empty(0))
        frame.small_src = self._src_flow.prepare(frame.y_src)
        record: dict[str, Any] = {"time": round(time, 6)}
        if self.ground_truth and ground_truth is not None:
            y_gt = luma(ground_truth)
            # equal pictures (infinite PSNR) count as PSNR_CAP, so that means stay finite
            record |= {"psnr_y": min(PSNR_CAP, psnr(frame.y_out, y_gt)), "ssim_y": ssim(frame.y_out, y_gt),
                       "reference_psnr_y": min(PSNR_CAP, psnr(frame.y_ref, y_gt))}
            frame.small_out = self._out_flow.prepare(frame.y_out)
            frame.small_ref = self._out_flow.prepare(frame.y_ref)
            frame.small_gt = self._out_flow.prepare(y_gt)
        self._sigmas.append(noise_sigma(frame.y_src))
        if self._prev is not None:
            self._pairs.append(self._pair(self._prev, frame))
        self._frames.append(record)
        self._prev = frame

    def _pair(self, prev: _Frame, cur: _Frame) -> _Pair:
        src_change = _block_sums(cv2.absdiff(cur.y_src, prev.y_src), *self._src_starts) / self._src_counts
        sums = []
        for a, b in ((cur.y_out, prev.y_out), (cur.y_ref, prev.y_ref)):
            d = cv2.absdiff(a, b)
            sparkles = cv2.threshold(d, SPARKLE_LEVELS, 1.0, cv2.THRESH_BINARY)[1]
            sums += [self._to_blocks(d), self._to_blocks(sparkles)]
        pair = _Pair(cur.time, src_change, np.stack([sums[0], sums[2], sums[1], sums[3]]))
        if self.warping:
            self._warp(prev, cur, pair)
        if cur.small_gt is not None and prev.small_gt is not None:
            gt = self._out_flow(prev.small_gt, cur.small_gt)
            scale = np.array([self.output_size[0] / self._out_flow.work[0],
                              self.output_size[1] / self._out_flow.work[1]], np.float32)
            pair.tof = float(np.mean(np.abs((self._out_flow(prev.small_out, cur.small_out) - gt) * scale)))
            pair.tof_reference = float(np.mean(np.abs((self._out_flow(prev.small_ref, cur.small_ref) - gt) * scale)))
        return pair

    def _to_blocks(self, x: np.ndarray) -> np.ndarray:
        """Sums per source block of an output-grid map, in source-pixel units: the map is area-
        averaged onto the source grid first (every source pixel covers the same output area), so
        the block sums run on the small grid."""
        if self.output_size != self.source_size:
            x = cv2.resize(x, self.source_size, interpolation=cv2.INTER_AREA)
        return _block_sums(x, *self._src_starts)

    def _warp(self, prev: _Frame, cur: _Frame, pair: _Pair) -> None:
        backward = self._src_flow(cur.small_src, prev.small_src)  # t -> t-1
        forward = self._src_flow(prev.small_src, cur.small_src)  # t-1 -> t
        ok = consistent(backward, forward).astype(np.uint8)
        wo, ho = self.output_size
        fw_, fh_ = self._src_flow.work
        pos = cv2.resize(backward, (wo, ho), interpolation=cv2.INTER_LINEAR)
        pos *= np.array([wo / fw_, ho / fh_], np.float32)
        pos += self._out_grid  # where each output pixel of frame t was in frame t-1
        mask = cv2.resize(ok, (wo, ho), interpolation=cv2.INTER_NEAREST)
        n = cv2.countNonZero(mask)
        pair.warp_valid = n / mask.size
        if n == 0:
            return
        errors = []
        for before, now in ((prev.y_out, cur.y_out), (prev.y_ref, cur.y_ref)):
            warped = cv2.remap(before, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            errors.append(cv2.mean(cv2.absdiff(now, warped), mask=mask)[0])
        pair.warp = (errors[0], errors[1])

    def result(self) -> dict[str, Any]:
        """The measures as a JSON-able dict (see docs/cli.md, `vsr flicker --json`)."""
        sigma = float(np.median(self._sigmas)) if self._sigmas else 0.0
        threshold = still_threshold(sigma)
        totals = np.zeros(4)
        still_px = moving_px = 0.0
        per_pair = []
        for p in self._pairs:
            still = (p.source_change <= threshold).astype(np.uint8)
            still = cv2.erode(still, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE).astype(bool)
            s = p.sums[:, still].sum(axis=1)
            n = float(self._src_counts[still].sum())
            totals += s
            still_px += n
            moving_px += float(self._src_counts.sum()) - n
            per_pair.append((n, s))
        for record, (n, s), p in zip(self._frames[1:], per_pair, self._pairs):
            record |= {"still_share": _r(n / float(self._src_counts.sum())),
                       "output_change": _r(s[0] / n) if n else None,
                       "reference_change": _r(s[1] / n) if n else None,
                       "output_sparkle": _r(s[2] / n) if n else None,
                       "warp_output": _r(p.warp[0]) if p.warp else None,
                       "warp_reference": _r(p.warp[1]) if p.warp else None}
            if p.tof is not None:
                record |= {"tof": _r(p.tof), "reference_tof": _r(p.tof_reference)}
        for record in self._frames:
            for k in ("psnr_y", "ssim_y", "reference_psnr_y"):
                if k in record:
                    record[k] = _r(record[k])
        return {
            "frames": len(self._frames), "pairs": len(self._pairs),
            "noise": {"sigma": _r(sigma), "still_threshold": _r(threshold), "block": self.block},
            "still": _still_summary(totals, still_px, moving_px),
            "warping": self._warping_summary() if self.warping else None,
            "gt": self._gt_summary() if self.ground_truth else None,
            "per_frame": self._frames,
        }

    def _warping_summary(self) -> dict[str, Any]:
        used = [p for p in self._pairs if p.warp is not None]
        out = float(np.mean([p.warp[0] for p in used])) if used else None
        ref = float(np.mean([p.warp[1] for p in used])) if used else None
        valid = [p.warp_valid for p in self._pairs if p.warp_valid is not None]
        return {"output": _r(out), "reference": _r(ref), "ratio": _ratio(out, ref),
                "valid_share": _r(float(np.mean(valid))) if valid else None, "pairs": len(used)}

    def _gt_summary(self) -> dict[str, Any]:
        def mean(key: str) -> float | None:
            vals = [r[key] for r in self._frames if r.get(key) is not None and math.isfinite(r[key])]
            return _r(float(np.mean(vals))) if vals else None

        tofs = [p.tof for p in self._pairs if p.tof is not None]
        ref_tofs = [p.tof_reference for p in self._pairs if p.tof_reference is not None]
        return {"psnr_y": mean("psnr_y"), "ssim_y": mean("ssim_y"), "reference_psnr_y": mean("reference_psnr_y"),
                "tof": _r(float(np.mean(tofs))) if tofs else None,
                "reference_tof": _r(float(np.mean(ref_tofs))) if ref_tofs else None,
                "frames": sum(1 for r in self._frames if "psnr_y" in r)}


def _still_summary(totals: np.ndarray, still_px: float, moving_px: float) -> dict[str, Any]:
    out = totals[0] / still_px if still_px else None
    ref = totals[1] / still_px if still_px else None
    spark = totals[2] / still_px if still_px else None
    ref_spark = totals[3] / still_px if still_px else None
    return {"share": _r(still_px / (still_px + moving_px)) if still_px + moving_px else None,
            "output_change": _r(out), "reference_change": _r(ref), "ratio": _ratio(out, ref),
            "output_sparkle": _r(spark), "reference_sparkle": _r(ref_spark)}


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b; 1.0 when both are 0 (as steady as the reference); None when undefined."""
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return _r(a / b)


def _r(x: float | None, digits: int = 5) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if not math.isfinite(x) else round(x, digits)
