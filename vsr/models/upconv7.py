"""UpConv7, waifu2x's fast x2 network (upconv_7_anime_style_art_rgb, upconv_7_photo), with the
pre-processing of its ncnn program built in.

Six valid 3x3 convolutions (16, 32, 64, 128, 128, 256 channels, LeakyReLU 0.1) and a
transposed 4x4 convolution of stride 2 to RGB. Input: RGB in [0, 1] of any size, replicated by
7 pixels on every side first; output exactly (H*2, W*2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import register_architecture, with_defaults

PREPAD = 7


class UpConv7(nn.Module):
    """waifu2x upconv_7: RGB in [0, 1] (N, 3, H, W) -> (N, 3, 2H, 2W)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = num_in_ch
        for cout in (16, 32, 64, 128, 128, 256):
            layers += [nn.Conv2d(cin, cout, 3, 1, 0), nn.LeakyReLU(0.1, inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.upconv = nn.ConvTranspose2d(256, num_out_ch, 4, 2, 3)
        self.scale = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (PREPAD,) * 4, mode="replicate")
        return self.upconv(self.body(x))[..., :2 * h, :2 * w]


def describe_upconv7(hparams: Mapping[str, Any]) -> ModelDescriptor:
    """The six convolutions and the transposed one reach exactly 7 input pixels: tiles
    overlapping by 8 compute what whole frames do, so the engine may tile it to fit a cache."""
    hp = with_defaults(UpConv7, hparams)
    return ModelDescriptor(scale=2, in_channels=int(hp["num_in_ch"]), out_channels=int(hp["num_out_ch"]),
                           tile_context=PREPAD + 1, exact_tiles=True, feature_channels=256)


register_architecture("upconv7", UpConv7, describe_upconv7)
