"""SRVGGNetCompact, the Real-ESRGAN compact generator (realesr-animevideov3, general-x4v3).

Keys follow Real-ESRGAN: body.0 is the first conv, body.1 its activation, then each of the
num_conv body convs and its activation, and finally the conv to num_out_ch * upscale**2
channels; PixelShuffle then adds the nearest-upsampled input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style SR network: image in [0, 1] (N, C, H, W) -> (N, C_out, H*s, W*s).

    Args:
        num_in_ch: input channels.
        num_out_ch: output channels.
        num_feat: feature channels (64).
        num_conv: body convolutions (16 for animevideov3, 32 for general-x4v3).
        upscale: output scale (PixelShuffle factor).
        act_type: "prelu" (per-channel slopes), "lrelu" (0.1) or "relu".
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu") -> None:
        super().__init__()
        self.upscale = upscale
        self.num_out_ch = num_out_ch

        def act() -> nn.Module:
            if act_type == "prelu":
                return nn.PReLU(num_parameters=num_feat)
            if act_type == "lrelu":
                return nn.LeakyReLU(0.1, inplace=True)
            if act_type == "relu":
                return nn.ReLU(inplace=True)
            raise ValueError(f"unknown act_type {act_type!r} (prelu, lrelu, relu)")

        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), act()]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), act()]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        # PixelShuffle(out) + nearest-upsampled x == PixelShuffle(out + x with each channel repeated
        # s*s times): the residual add runs at input resolution and the upsample disappears.
        s2 = self.upscale * self.upscale
        if self.num_out_ch == x.shape[1]:
            base = x.repeat_interleave(s2, dim=1)
        else:  # e.g. grayscale-to-RGB: the first channel is the base of every output channel
            base = x[:, :1].expand(-1, self.num_out_ch * s2, -1, -1)
        return self.upsampler(out + base)


def describe_srvgg(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """SRVGGNetCompact reaches exactly one pixel per 3x3 conv: the first, num_conv body convs and
    the last make num_conv + 2 (18 for animevideov3, 34 for general-x4v3), and tiles
    overlapping by that much compute what whole frames do (measured with the real weights on
    real images: 16 px was within one level), so the engine may tile it to fit a CPU cache."""
    hp = with_defaults(SRVGGNetCompact, hparams)
    return ModelDescriptor(scale=int(hp["upscale"]), in_channels=int(hp["num_in_ch"]),
                           out_channels=int(hp["num_out_ch"]), tile_context=int(hp["num_conv"]) + 2,
                           exact_tiles=True, feature_channels=int(hp["num_feat"]))


register_architecture("srvggnet_compact", SRVGGNetCompact, describe_srvgg)
