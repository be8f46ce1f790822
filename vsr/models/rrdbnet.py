"""RRDBNet, the ESRGAN / Real-ESRGAN generator, with BasicSR state-dict keys.

Keys: conv_first, body.{i}.rdb{1,2,3}.conv{1..5}, conv_body, conv_up1, conv_up2, conv_hr,
conv_last. The network always upsamples x4 (two nearest x2 stages); for scale 2 and 1 the input
is first pixel-unshuffled by 2 or 4, as Real-ESRGAN x2plus does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x may be a float32 trunk while the convs run in bf16/fp16 (see RRDBNet.forward)
        xc = x.to(self.conv1.weight.dtype)
        x1 = self.lrelu(self.conv1(xc))
        x2 = self.lrelu(self.conv2(torch.cat((xc, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((xc, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((xc, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((xc, x1, x2, x3, x4), 1))
        return torch.add(x, x5, alpha=0.2)


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaling 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.rdb3(self.rdb2(self.rdb1(x))), alpha=0.2)


class RRDBNet(nn.Module):
    """ESRGAN generator: image in [0, 1] of shape (N, C, H, W) -> (N, C_out, H*s, W*s).

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        scale: 1, 2 or 4 (1 and 2 pixel-unshuffle the input by 4 and 2).
        num_feat: feature channels (64).
        num_block: RRDB blocks (23 for realesrgan-x4plus, 6 for the anime model).
        num_grow_ch: growth channels of the dense blocks (32).
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
                 num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, not {scale}")
        self.scale = scale
        unshuffle = {1: 16, 2: 4, 4: 1}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 2:
            x = F.pixel_unshuffle(x, 2)
        elif self.scale == 1:
            x = F.pixel_unshuffle(x, 4)
        feat = self.conv_first(x)
        low = feat.dtype
        # With bf16/fp16 weights the residual trunk (69 scaled additions in x4plus) stays in
        # float32: rounding it to 8 bits at every addition costs ~4 dB PSNR against fp32.
        trunk = feat.float()
        trunk = trunk + self.conv_body(self.body(trunk).to(low))
        feat = trunk.to(low)
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def describe_rrdbnet(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """Pixel-unshuffle RRDBNets (x2, x1) need input sizes in multiples of 2 and 4. Tiles need
    48 px of overlap to match whole frames (>= 57 dB with the real weights), while 10 px
    (Real-ESRGAN's default) leaves seams up to 200 levels; the unshuffled models see the same
    context on a finer input grid, so theirs grows with the multiple. The reach is not known
    exactly: no tiling unless asked for."""
    hp = with_defaults(RRDBNet, hparams)
    scale = int(hp["scale"])
    if scale not in (1, 2, 4):
        raise ValueError(f"RRDBNet scale must be 1, 2 or 4, not {scale}")
    multiple = {4: 1, 2: 2, 1: 4}[scale]
    return ModelDescriptor(scale=scale, in_channels=int(hp["num_in_ch"]), out_channels=int(hp["num_out_ch"]),
                           pad_multiple=multiple, tile_context=48 * multiple,
                           feature_channels=int(hp["num_feat"]))


register_architecture("rrdbnet", RRDBNet, describe_rrdbnet)
