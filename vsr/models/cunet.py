"""CUNet, the U-Net generator of waifu2x (cunet) and Real-CUGAN (se, pro, nose), with the
pre- and post-processing of their ncnn programs built in.

The network is two U-Nets of valid (unpadded) convolutions: UNet1 upscales (a transposed
convolution, or a plain one for 1x), UNet2 refines its output, and their sum (UNet1's cropped
by 20) is the picture; Real-CUGAN x4 ends in a convolution to 12 channels and a pixel shuffle
and adds the nearest-neighbour x4 input. Squeeze-and-excitation blocks (SE) scale each channel
by a function of its mean over the whole feature map: every output pixel depends on the whole
frame. ``forward(x, stats)`` takes those means from elsewhere, so that tiles compute what the
whole frame does: from a pass over the whole frame (``frame_stats``), or gathered over the
tiles themselves one SE block at a time (``tile_stats``: each tile's share of the frame's sum).

Input: RGB in [0, 1] of any size; output: exactly (H*s, W*s). The frame is padded by
``prepad`` pixels (reflected for Real-CUGAN, replicated for waifu2x) on every side, the bottom
and right further to a multiple of ``round_to``, and the top-left H*s x W*s of the result kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


class _Stats:
    """SE means of one pass: given (from frame_stats / tile_stats) or recorded; ``stop_after``
    ends a recording pass after the last SE block; ``share`` (a tile's place in the frame)
    makes the first SE block without a given mean stop the pass with that tile's share of it."""

    def __init__(self, given: list[torch.Tensor] | None, stop_after: int | None = None,
                 share: tuple[tuple[int, ...], tuple[int, ...], int] | None = None) -> None:
        self.given, self.recorded, self.index, self.stop_after = given, [], 0, stop_after
        self.share = share


class _Done(Exception):
    """Ends a pass early: after the last SE block of frame_stats (nothing after it is needed),
    or at the SE block whose share of the frame's sum a tile_stats pass gathers."""

    def __init__(self, total: torch.Tensor | None = None, count: int = 0) -> None:
        super().__init__()
        self.total, self.count = total, count


def _owned(n: int, stride: Fraction, axis: tuple[int, ...], prepad: int, padded: int) -> slice:
    """The rows (or columns) of an SE block's n-long feature axis that a tile owns.

    axis = (start of the tile's input in the frame, its interior start and end, frame length).
    Valid convolutions shrink the padded input evenly, so feature j sits at padded coordinate
    (padded - 1 - stride*(n-1))/2 + stride*j; each frame feature belongs to the tile whose
    interior holds that place (clamped into the frame), the same in every tile."""
    start, lo, hi, length = axis
    first = (padded - 1 - stride * (n - 1)) / 2 - prepad + start
    owners = [min(max(first + stride * j, 0), length - 1) for j in range(n)]
    picked = [j for j, f in enumerate(owners) if lo <= f < hi]
    return slice(picked[0], picked[-1] + 1) if picked else slice(0, 0)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channels scaled by sigmoid(fc2(relu(fc1(mean))))."""

    def __init__(self, channels: int, reduction: int = 8, stride: Fraction = Fraction(1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1, 1, 0)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1, 1, 0)
        self.stride = stride  # input pixels per feature (tile_stats)

    def forward(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
        if st.share is not None and st.index == len(st.given):
            (rows, cols, prepad) = st.share
            r = _owned(x.shape[-2], self.stride, rows[:4], prepad, rows[4])
            c = _owned(x.shape[-1], self.stride, cols[:4], prepad, cols[4])
            part = x[..., r, c].float()
            raise _Done(part.sum(dim=(2, 3), keepdim=True), part.shape[-2] * part.shape[-1])
        if st.given is not None:
            mean = st.given[st.index]
        else:  # in float32 whatever the precision: a mean over a frame needs the bits
            mean = x.float().mean(dim=(2, 3), keepdim=True)
            st.recorded.append(mean)
            if st.stop_after is not None and st.index == st.stop_after:
                raise _Done
        st.index += 1
        w = torch.sigmoid(self.conv2(F.relu(self.conv1(mean.to(x.dtype)))))
        return x * w


class UNetConv(nn.Module):
    """Two valid 3x3 convolutions (LeakyReLU 0.1), then an optional SE block."""

    def __init__(self, cin: int, mid: int, cout: int, se: bool, stride: Fraction = Fraction(1)) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, mid, 3, 1, 0), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Conv2d(mid, cout, 3, 1, 0), nn.LeakyReLU(0.1, inplace=True))
        self.seblock = SEBlock(cout, 8, stride) if se else None

    def forward(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
        x = self.conv(x)
        return self.seblock(x, st) if self.seblock is not None else x


def _crop(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[..., n:-n, n:-n]


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1, inplace=True)


class UNet1(nn.Module):
    """The upscaling U-Net: one level down. Its tail is a transposed convolution of `up`
    (2: kernel 4, 3: kernel 5) or, for up 1, a valid 3x3 convolution."""

    def __init__(self, cin: int, cout: int, up: int, se: bool) -> None:
        super().__init__()
        self.conv1 = UNetConv(cin, 32, 64, se=False)
        self.conv1_down = nn.Conv2d(64, 64, 2, 2, 0)
        self.conv2 = UNetConv(64, 128, 64, se=se, stride=Fraction(2))
        self.conv2_up = nn.ConvTranspose2d(64, 64, 2, 2, 0)
        self.conv3 = nn.Conv2d(64, 64, 3, 1, 0)
        if up == 1:
            self.conv_bottom = nn.Conv2d(64, cout, 3, 1, 0)
        elif up == 2:
            self.conv_bottom = nn.ConvTranspose2d(64, cout, 4, 2, 3)
        else:
            self.conv_bottom = nn.ConvTranspose2d(64, cout, 5, 3, 2)

    def forward(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
        x1 = self.conv1(x, st)
        x2 = self.conv2(_lrelu(self.conv1_down(x1)), st)
        x2 = _lrelu(self.conv2_up(x2))
        x3 = _lrelu(self.conv3(_crop(x1, 4) + x2))
        return self.conv_bottom(x3)


class UNet2(nn.Module):
    """The refining U-Net: two levels down, same size out (less 40 pixels a side)."""

    def __init__(self, cin: int, cout: int, se: bool, stride: Fraction = Fraction(1, 2)) -> None:
        super().__init__()  # stride: input pixels per pixel of UNet1's output
        self.conv1 = UNetConv(cin, 32, 64, se=False)
        self.conv1_down = nn.Conv2d(64, 64, 2, 2, 0)
        self.conv2 = UNetConv(64, 64, 128, se=se, stride=2 * stride)
        self.conv2_down = nn.Conv2d(128, 128, 2, 2, 0)
        self.conv3 = UNetConv(128, 256, 128, se=se, stride=4 * stride)
        self.conv3_up = nn.ConvTranspose2d(128, 128, 2, 2, 0)
        self.conv4 = UNetConv(128, 64, 64, se=se, stride=2 * stride)
        self.conv4_up = nn.ConvTranspose2d(64, 64, 2, 2, 0)
        self.conv5 = nn.Conv2d(64, 64, 3, 1, 0)
        self.conv_bottom = nn.Conv2d(64, cout, 3, 1, 0)

    def forward(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
        x1 = self.conv1(x, st)
        x2 = self.conv2(_lrelu(self.conv1_down(x1)), st)
        x3 = self.conv3(_lrelu(self.conv2_down(x2)), st)
        x3 = _lrelu(self.conv3_up(x3))
        x4 = self.conv4(_crop(x2, 4) + x3, st)
        x4 = _lrelu(self.conv4_up(x4))
        x5 = _lrelu(self.conv5(_crop(x1, 16) + x4))
        return self.conv_bottom(x5)


class CUNet(nn.Module):
    """waifu2x cunet / Real-CUGAN: RGB in [0, 1] (N, 3, H, W) -> (N, 3, H*s, W*s).

    Args:
        scale: 1 (waifu2x denoise only), 2, 3 or 4 (Real-CUGAN).
        se: squeeze-and-excitation blocks (all but Real-CUGAN nose).
        prepad: pixels added on every side before the network (the ncnn programs' prepadding).
        pad_mode: "reflect" (Real-CUGAN) or "replicate" (waifu2x).
        round_to: the padded bottom and right also round the size up to this multiple.
    """

    def __init__(self, scale: int = 2, se: bool = True, prepad: int = 18, pad_mode: str = "reflect",
                 round_to: int = 2) -> None:
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"CUNet scale must be 1, 2, 3 or 4, not {scale}")
        if pad_mode not in ("reflect", "replicate"):
            raise ValueError(f"CUNet pad_mode must be reflect or replicate, not {pad_mode!r}")
        self.scale, self.prepad, self.pad_mode, self.round_to = scale, prepad, pad_mode, round_to
        wide = scale == 4  # x4: the U-Nets carry 64 channels, a conv to 12 and a pixel shuffle end it
        up = {1: 1, 2: 2, 3: 3, 4: 2}[scale]
        self.unet1 = UNet1(3, 64 if wide else 3, up, se)
        self.unet2 = UNet2(64 if wide else 3, 64 if wide else 3, se, Fraction(1, up))
        self.conv_final = nn.Conv2d(64, 12, 3, 1, 0) if wide else None
        self.se_blocks = sum(isinstance(m, SEBlock) for m in self.modules())
        self.frame_stats_count = self.se_blocks  # the statistics tile_stats gathers, in order

    def forward(self, x: torch.Tensor, stats: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self._run(x, _Stats(stats))

    @torch.inference_mode()
    def frame_stats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The SE means of a whole-frame pass over x (float32, (N, C, 1, 1) each), for forward
        to use on tiles of x; the pass stops at the last SE block."""
        st = _Stats(None, stop_after=self.se_blocks - 1)
        try:
            self._run(x, st)
        except _Done:
            pass
        return st.recorded

    @torch.inference_mode()
    def tile_stats(self, piece: torch.Tensor, known: list[torch.Tensor], rows: tuple[int, int, int, int],
                   cols: tuple[int, int, int, int]) -> tuple[torch.Tensor, int]:
        """One tile's share of the next frame statistic: (sum over the features it owns, their
        count) of the SE block after the ``known`` means, for a tile ``piece`` of a frame.

        rows / cols: (where piece starts in the frame, the tile's interior start and end, the
        frame's length) along each axis. Summed over the tiles of a frame and divided by the
        count, these give what frame_stats does, with no pass over the whole frame: tiles of a
        frame too large to run whole gather its means one SE block at a time."""
        h, w = piece.shape[-2:]
        p, m = self.prepad, self.round_to
        st = _Stats(known, share=((*rows, h + 2 * p + (-h) % m), (*cols, w + 2 * p + (-w) % m), p))
        try:
            self._run(piece, st)
        except _Done as share:
            return share.total, share.count
        raise ValueError(f"tile_stats: {len(known)} statistics known, the network has {self.se_blocks}")

    def _run(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
        h, w = x.shape[-2:]
        p, m, s = self.prepad, self.round_to, self.scale
        xp = F.pad(x, (p, p + (-w) % m, p, p + (-h) % m), mode=self.pad_mode)
        y1 = self.unet1(xp, st)
        y = self.unet2(y1, st) + _crop(y1, 20)
        if self.conv_final is not None:
            y = F.pixel_shuffle(_crop(self.conv_final(y), 1), 2)
        y = y[..., :h * s, :w * s]
        if s == 4:
            y = y + F.interpolate(x, scale_factor=4, mode="nearest")
        return y


def describe_cunet(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """Tiles must start on the U-Nets' grid (4 input pixels at x3, 2 else, 4 at x1 where UNet2
    works at input size) and overlap by the valid convolutions' reach (the prepadding, rounded
    up); with SE blocks every pixel also depends on whole-frame means, which the tiles gather
    first (tile_stats)."""
    hp = with_defaults(CUNet, hparams)
    scale = int(hp["scale"])
    multiple = {1: 4, 2: 2, 3: 4, 4: 2}[scale]
    context = int(hp["prepad"]) + 2
    context += (-context) % multiple
    return ModelDescriptor(scale=scale, tile_context=context, tile_multiple=multiple,
                           frame_stats=bool(hp["se"]), feature_channels=256)


register_architecture("cunet", CUNet, describe_cunet)
