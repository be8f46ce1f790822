"""AnimeSR (TencentARC, Apache-2.0): a unidirectional recurrent video generator for anime, x4.

One step sees the previous, current and next low-resolution frame (RGB in [0, 1], 9
channels), the previous full-size output (3 channels, unclamped; pixel-unshuffled here to
48) and a 64-channel state, all zero at the start of a run. A three-scale residual cell
(full, 1/2 and 1/4 resolution; 5, 3 and 2 blocks) gives 48 + 64 channels: the image is the
pixel-shuffle of the 48 plus the bilinear 4x upsample of the current frame
(align_corners=False), the next state is LeakyReLU(0.1) of the 64. Frames must be a
multiple of 4 in height and width (the 1/4 branch). Keys follow the published
AnimeSR_v1.pth / AnimeSR_v2.pth (recurrent_cell.*), so those load unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class _ResBlock(nn.Module):
    """conv-ReLU-conv plus the input (no normalisation, residual scale 1)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class _MultiScaleCell(nn.Module):
    """Residual blocks at scales 1, 1/2 and 1/4, right-aligned: the coarser branches start
    late, so their last blocks run beside the last full-scale ones, each feeding the finer
    branches its bilinear upsample; a two-conv fusion of all three ends the cell."""

    def __init__(self, num_in_ch: int, num_feat: int, num_out_ch: int,
                 num_block: tuple[int, int, int]) -> None:
        super().__init__()
        if not num_block[0] >= num_block[1] >= num_block[2]:
            raise ValueError(f"num_block must not grow with the scale, got {num_block}")
        self.num_block = tuple(num_block)
        self.conv_s1_first = nn.Sequential(nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _lrelu())
        self.conv_s2_first = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 2, 1), _lrelu())
        self.conv_s4_first = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 2, 1), _lrelu())
        self.body_s1_first = nn.ModuleList(_ResBlock(num_feat) for _ in range(num_block[0]))
        self.body_s2_first = nn.ModuleList(_ResBlock(num_feat) for _ in range(num_block[1]))
        self.body_s4_first = nn.ModuleList(_ResBlock(num_feat) for _ in range(num_block[2]))
        self.fusion = nn.Sequential(nn.Conv2d(3 * num_feat, 2 * num_out_ch, 3, 1, 1), _lrelu(),
                                    nn.Conv2d(2 * num_out_ch, num_out_ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.conv_s1_first(x)
        s2 = self.conv_s2_first(s1)
        s4 = self.conv_s4_first(s2)
        n1, n2, n4 = self.num_block
        s2_on = s4_on = False
        for i in range(n1):
            extra = s1
            if s2_on:
                extra = extra + _up(s2, 2)
            if s4_on:
                extra = extra + _up(s4, 4)
            s1 = self.body_s1_first[i](extra)
            if i >= n1 - n2:  # the 1/2 branch joins for the last n2 blocks (before the 1/4 one moves)
                s2 = self.body_s2_first[i - n1 + n2](s2 + _up(s4, 2) if s4_on else s2)
                s2_on = True
            if i >= n1 - n4:
                s4 = self.body_s4_first[i - n1 + n4](s4)
                s4_on = True
        return self.fusion(torch.cat((s1, _up(s2, 2), _up(s4, 4)), dim=1))


class AnimeSR(nn.Module):
    """One recurrent step: (frames, previous output, state) -> (output, next state).

    Args:
        num_feat: state channels (64).
        num_block: residual blocks at scales 1, 1/2, 1/4 ((5, 3, 2)).
        upscale: output scale (4).

    forward(x, fb, state): x (N, 9, H, W) previous/current/next frames in [0, 1]; fb (N, 3,
    H*s, W*s) the previous output; state (N, num_feat, H, W). H and W multiples of 4.
    """

    def __init__(self, num_feat: int = 64, num_block: tuple[int, int, int] = (5, 3, 2),
                 upscale: int = 4) -> None:
        super().__init__()
        self.num_feat = num_feat
        self.upscale = upscale
        s2 = upscale * upscale
        self.recurrent_cell = _MultiScaleCell(9 + 3 * s2 + num_feat, num_feat, num_feat + 3 * s2,
                                              tuple(num_block))

    def forward(self, x: torch.Tensor, fb: torch.Tensor, state: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.upscale
        out = self.recurrent_cell(torch.cat((x, F.pixel_unshuffle(fb, s), state), dim=1))
        image = F.pixel_shuffle(out[:, :3 * s * s], s) + _up(x[:, 3:6], s)
        return image, F.leaky_relu(out[:, 3 * s * s:], 0.1)

    def zero_carry(self, n: int, height: int, width: int, like: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The all-zero previous output and state a run starts from (dtype/device of `like`)."""
        s = self.upscale
        fb = like.new_zeros((n, 3, height * s, width * s))
        return fb, like.new_zeros((n, self.num_feat, height, width))


def describe_animesr(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """AnimeSR is temporal (each output depends on every earlier frame through the state) and
    needs frames padded to a multiple of 4. One step reaches about 30 input pixels (the 1/4
    branch), but far less of it matters: with the state stitched from the tiles' centres
    (vsr.engine.recurrent), tiles overlapping by 16 pixels stay 67-72 dB from whole frames over
    8 frames (8 pixels: 60-63 dB; 32: 92-97 dB; docs/benchmarks.md), so 16 is the overlap. The
    state carries each step's reach into the next, so tiles are never exact."""
    hp = with_defaults(AnimeSR, hparams)
    return ModelDescriptor(scale=int(hp["upscale"]), pad_multiple=4, tile_context=16,
                           exact_tiles=False, feature_channels=2 * int(hp["num_feat"]) + 48,
                           temporal=True)


register_architecture("animesr", AnimeSR, describe_animesr)
