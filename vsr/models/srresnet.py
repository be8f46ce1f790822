"""SRResNet, the SRGAN generator (Ledig et al. 2017), with BasicSR MSRResNet-compatible keys.

Default hyper-parameters follow the paper: 9x9 head and tail convolutions, PReLU, 16 residual
blocks of conv-BN-PReLU-conv-BN, a conv-BN after the body joined to the head by a long skip,
and sub-pixel x2 stages (conv + PixelShuffle + PReLU). With ``norm=False, act="lrelu",
head_kernel=3, tail_kernel=3, body_conv=False, hr_conv=True, image_residual=True`` the
module is BasicSR's MSRResNet and its checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


def _activation(kind: str, num_feat: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if kind == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {kind!r} (prelu, lrelu, relu)")


class ResidualBlock(nn.Module):
    """conv-[BN]-act-conv-[BN] with an identity skip (keys conv1, bn1, act, conv2, bn2)."""

    def __init__(self, num_feat: int = 64, norm: bool = True, act: str = "prelu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(num_feat) if norm else nn.Identity()
        self.act = _activation(act, num_feat)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(num_feat) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class SRResNet(nn.Module):
    """SRGAN generator: image in [0, 1] of shape (N, C, H, W) -> (N, C_out, H*s, W*s).

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        num_feat: feature channels of the body.
        num_block: residual blocks (16 in the paper).
        upscale: 2, 3, 4 or 8 (x2 sub-pixel stages; 3 uses one x3 stage).
        norm: BatchNorm in the residual blocks and after the body (paper: True).
        act: "prelu" (paper), "lrelu" (MSRResNet) or "relu".
        head_kernel / tail_kernel: first and last conv kernel sizes (paper: 9).
        body_conv: the conv(-BN) after the residual blocks before the long skip (paper: True).
        hr_conv: an extra 3x3 conv + activation at high resolution before the last conv.
        image_residual: add the bilinearly upsampled input to the output (MSRResNet).
        block_act: activation inside the residual blocks (default: ``act``; MSRResNet: "relu").
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
        norm: bool = True,
        act: str = "prelu",
        head_kernel: int = 9,
        tail_kernel: int = 9,
        body_conv: bool = True,
        hr_conv: bool = False,
        image_residual: bool = False,
        block_act: str | None = None,
    ) -> None:
        super().__init__()
        if upscale not in (2, 3, 4, 8):
            raise ValueError(f"SRResNet upscale must be 2, 3, 4 or 8, not {upscale}")
        self.upscale = upscale
        self.image_residual = image_residual
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, head_kernel, 1, head_kernel // 2)
        self.act_first = _activation(act, num_feat)
        self.body = nn.Sequential(*(ResidualBlock(num_feat, norm, block_act or act) for _ in range(num_block)))
        if body_conv:
            self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.bn_body = nn.BatchNorm2d(num_feat) if norm else nn.Identity()
        else:
            self.conv_body = None
        # BasicSR naming: upconv1..k; each stage is conv -> PixelShuffle -> activation.
        factors = [3] if upscale == 3 else [2] * {2: 1, 4: 2, 8: 3}[upscale]
        self.up_factors = factors
        for i, f in enumerate(factors, start=1):
            setattr(self, f"upconv{i}", nn.Conv2d(num_feat, num_feat * f * f, 3, 1, 1))
            setattr(self, f"up_act{i}", _activation(act, num_feat))
        if hr_conv:
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.act_hr = _activation(act, num_feat)
        else:
            self.conv_hr = None
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, tail_kernel, 1, tail_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.act_first(self.conv_first(x))
        body = self.body(feat)
        if self.conv_body is not None:
            body = self.bn_body(self.conv_body(body))
        out = feat + body
        for i, f in enumerate(self.up_factors, start=1):
            out = getattr(self, f"up_act{i}")(F.pixel_shuffle(getattr(self, f"upconv{i}")(out), f))
        if self.conv_hr is not None:
            out = self.act_hr(self.conv_hr(out))
        out = self.conv_last(out)
        if self.image_residual:
            out = out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out


#: Hyper-parameters that make SRResNet equal to BasicSR's MSRResNet (key-compatible).
MSRRESNET_HPARAMS = dict(norm=False, act="lrelu", head_kernel=3, tail_kernel=3,
                         body_conv=False, hr_conv=True, image_residual=True, block_act="relu")


def describe_srresnet(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """SRResNet (not measured: no published weights here) gets about its theoretical reach,
    40 px for 16 blocks."""
    hp = with_defaults(SRResNet, hparams)
    return ModelDescriptor(scale=int(hp["upscale"]), in_channels=int(hp["num_in_ch"]),
                           out_channels=int(hp["num_out_ch"]), tile_context=40,
                           feature_channels=int(hp["num_feat"]))


register_architecture("srresnet", SRResNet, describe_srresnet)
