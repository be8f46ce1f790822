"""CUNet, the U-Net generator of waifu2x (cunet) and Real-CUGAN (se, pro, nose), with the
pre- and post-processing of their ncnn programs built in.

The network is two U-Nets of valid (unpadded) convolutions: UNet1 upscales (a transposed
convolution, or a plain one for 1x), UNet2 refines its output, and their sum (UNet1's cropped
by 20) is the picture; Real-CUGAN x4 ends in a convolution to 12 channels and a pixel shuffle
and adds the nearest-neighbour x4 input. Squeeze-and-excitation blocks (SE) scale each channel
by a function of its mean over the whole feature map: every output pixel depends on the whole
frame. ``forward(x, stats)`` takes those means from a whole-frame pass (``frame_stats``) so that
tiles compute what the whole frame does.

Input: RGB in [0, 1] of any size; output: exactly (H*s, W*s). The frame is padded by
``prepad`` pixels (reflected for Real-CUGAN, replicated for waifu2x) on every side, the bottom
and right further to a multiple of ``round_to``, and the top-left H*s x W*s of the result kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


class _Stats:
    """SE means of one pass: given (from frame_stats) or recorded; ``stop_after`` ends a
    recording pass after the last SE block."""

    def __init__(self, given: list[torch.Tensor] | None, stop_after: int | None = None) -> None:
        self.given, self.recorded, self.index, self.stop_after = given, [], 0, stop_after


class _Done(Exception):
    """Raised by the last SE block of a frame_stats pass: nothing after it is needed."""


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channels scaled by sigmoid(fc2(relu(fc1(mean))))."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1, 1, 0)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, st: _Stats) -> torch.Tensor:
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

    def __init__(self, cin: int, mid: int, cout: int, se: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, mid, 3, 1, 0), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Conv2d(mid, cout, 3, 1, 0), nn.LeakyReLU(0.1, inplace=True))
        self.seblock = SEBlock(cout, 8) if se else None

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
        self.conv2 = UNetConv(64, 128, 64, se=se)
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

    def __init__(self, cin: int, cout: int, se: bool) -> None:
        super().__init__()
        self.conv1 = UNetConv(cin, 32, 64, se=False)
        self.conv1_down = nn.Conv2d(64, 64, 2, 2, 0)
        self.conv2 = UNetConv(64, 64, 128, se=se)
        self.conv2_down = nn.Conv2d(128, 128, 2, 2, 0)
        self.conv3 = UNetConv(128, 256, 128, se=se)
        self.conv3_up = nn.ConvTranspose2d(128, 128, 2, 2, 0)
        self.conv4 = UNetConv(128, 64, 64, se=se)
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
        self.unet1 = UNet1(3, 64 if wide else 3, {1: 1, 2: 2, 3: 3, 4: 2}[scale], se)
        self.unet2 = UNet2(64 if wide else 3, 64 if wide else 3, se)
        self.conv_final = nn.Conv2d(64, 12, 3, 1, 0) if wide else None
        self.se_blocks = sum(isinstance(m, SEBlock) for m in self.modules())

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
    up); with SE blocks every pixel also depends on whole-frame means, which tiles take from a
    first pass over the frame (frame_stats)."""
    hp = with_defaults(CUNet, hparams)
    scale = int(hp["scale"])
    multiple = {1: 4, 2: 2, 3: 4, 4: 2}[scale]
    context = int(hp["prepad"]) + 2
    context += (-context) % multiple
    return ModelDescriptor(scale=scale, tile_context=context, tile_multiple=multiple,
                           frame_stats=bool(hp["se"]), feature_channels=256)


register_architecture("cunet", CUNet, describe_cunet)
