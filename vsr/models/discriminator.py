"""The SRGAN discriminator (Ledig et al. 2017, fig. 4), made independent of the input size.

Eight 3x3 convolutions grow the width 64 -> 512 (doubling every second layer) and halve the
resolution on every second layer (stride 2); batch norm after every convolution but the
first; LeakyReLU(0.2). The paper flattens a fixed 96x96 patch into the dense layer; an
adaptive average pool to a fixed grid makes the same head accept any patch size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SRGANDiscriminator", "build_discriminator"]


class SRGANDiscriminator(nn.Module):
    """Classifies (N, C, H, W) images in [0, 1] as real or generated; returns (N, 1) logits."""

    arch = "srgan-discriminator"

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, pool_size: int = 6,
                 dense_feat: int = 1024) -> None:
        super().__init__()
        self.hparams = {"num_in_ch": num_in_ch, "num_feat": num_feat, "pool_size": pool_size,
                        "dense_feat": dense_feat}
        layers: list[nn.Module] = []
        in_ch = num_in_ch
        for i in range(8):
            out_ch = num_feat * 2 ** (i // 2)  # 64, 64, 128, 128, 256, 256, 512, 512
            stride = 2 if i % 2 == 1 else 1
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=(i == 0)))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # A fixed grid after pooling keeps the dense layer's size the same for any input size.
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * pool_size * pool_size, dense_feat),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(dense_feat, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def build_discriminator(arch: str = "srgan", **hparams) -> nn.Module:
    """A discriminator by name (only "srgan" so far) with its keyword hyper-parameters."""
    if arch in ("srgan", SRGANDiscriminator.arch):
        return SRGANDiscriminator(**hparams)
    from vsr.errors import UsageError

    raise UsageError(f"unknown discriminator arch {arch!r} (known: srgan)")
