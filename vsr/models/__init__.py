"""Generator architectures (SRResNet/SRGAN, RRDBNet/ESRGAN, SRVGGNetCompact/Real-ESRGAN).

``build_generator(arch, **hparams)`` builds one by registry name; the models know nothing of
video or weight files (see vsr.weights for loading pretrained weights).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vsr.models.rrdbnet import RRDBNet
from vsr.models.srresnet import MSRRESNET_HPARAMS, SRResNet
from vsr.models.srvgg import SRVGGNetCompact

#: arch name -> generator class; hyper-parameters are the class's constructor arguments.
GENERATORS: dict[str, type[nn.Module]] = {
    "srresnet": SRResNet,
    "rrdbnet": RRDBNet,
    "srvggnet_compact": SRVGGNetCompact,
}


def build_generator(arch: str, **hparams: Any) -> nn.Module:
    """Build a generator by registry name ("srresnet", "rrdbnet", "srvggnet_compact").

    ``hparams`` are the class's constructor arguments (num_in_ch, num_out_ch, num_feat,
    num_block / num_conv, upscale / scale, ...). Raises ValueError for an unknown name.
    """
    try:
        cls = GENERATORS[arch]
    except KeyError:
        raise ValueError(f"unknown generator arch {arch!r}; known: {', '.join(GENERATORS)}") from None
    return cls(**hparams)


def generator_scale(model: nn.Module) -> int:
    """The integer upscale factor of a generator built here."""
    return int(getattr(model, "upscale", None) or getattr(model, "scale"))


__all__ = ["GENERATORS", "MSRRESNET_HPARAMS", "RRDBNet", "SRResNet", "SRVGGNetCompact",
           "build_generator", "generator_scale"]
