"""Generator architectures (SRResNet/SRGAN, RRDBNet/ESRGAN, SRVGGNetCompact/Real-ESRGAN,
CUNet/Real-CUGAN and waifu2x cunet, UpConv7/waifu2x, AnimeSR).

Each architecture file registers its network and a function hparams -> ModelDescriptor in
vsr.models.registry; ``build_generator(arch, **hparams)`` builds one by that name and
``describe_architecture(arch, hparams)`` describes it without building it. The models know
nothing of video or weight files (see vsr.weights for loading pretrained weights).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# importing each architecture file registers it (order: the order names are listed in)
from vsr.models.srresnet import MSRRESNET_HPARAMS, SRResNet
from vsr.models.rrdbnet import RRDBNet
from vsr.models.srvgg import SRVGGNetCompact
from vsr.models.animesr import AnimeSR
from vsr.models.cunet import CUNet
from vsr.models.upconv7 import UpConv7
from vsr.models import resample  # noqa: F401 - registers "resampler"
from vsr.models.descriptor import ModelDescriptor
from vsr.models.registry import (ARCHITECTURES, Architecture, describe_architecture, get_architecture,
                                 register_architecture)


def build_generator(arch: str, **hparams: Any) -> nn.Module:
    """Build a generator by registry name ("srresnet", "rrdbnet", "srvggnet_compact", or any
    architecture registered since).

    ``hparams`` are the builder's arguments (num_in_ch, num_out_ch, num_feat, num_block /
    num_conv, upscale / scale, ...). Raises ValueError for an unknown name or one without a
    network.
    """
    entry = ARCHITECTURES.get(arch)
    if entry is None or entry.build is None:
        known = ", ".join(name for name, a in ARCHITECTURES.items() if a.build is not None)
        raise ValueError(f"unknown generator arch {arch!r}; known: {known}")
    return entry.build(**hparams)


def generator_scale(model: nn.Module) -> int:
    """The integer upscale factor of a generator built here."""
    return int(getattr(model, "upscale", None) or getattr(model, "scale"))


__all__ = ["ARCHITECTURES", "AnimeSR", "Architecture", "CUNet", "MSRRESNET_HPARAMS", "ModelDescriptor", "RRDBNet",
           "SRResNet", "SRVGGNetCompact", "UpConv7", "build_generator", "describe_architecture", "generator_scale",
           "get_architecture", "register_architecture"]
