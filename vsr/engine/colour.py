"""The colour fix: pin an upscaled frame's low-frequency colour to its source's.

GAN generators shift tones (realesr-animevideov3 brightens some footage by 3-4 levels); the
engine applies this after the network when asked (Upscaler(colour_fix=True)), so that the
output keeps the source's colours and the network's detail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

COLOUR_FIX_RADIUS = 4
"""Half-size, in input pixels, of the box over which match_colour equalises local means."""


def match_colour(y: torch.Tensor, x: torch.Tensor, radius: int = COLOUR_FIX_RADIUS) -> torch.Tensor:
    """Return y with its local colour means (per channel, over ~(2r+1)^2 input pixels) set to x's.

    y: (N,C,OH,OW) network output; x: (N,C,H,W) its input, both float in [0, 1]. The output is
    area-downsampled to the input grid, the difference to the input is box-blurred (so only
    low frequencies are corrected and the network's detail is untouched) and added back,
    upsampled bilinearly. Uniform tone shifts vanish; sharpening and texture stay.
    """
    import torch.nn.functional as F  # here: the job's driver imports this module, and needs no torch

    h, w = x.shape[-2:]
    down = F.adaptive_avg_pool2d(y, (h, w))
    delta = x - down
    r = max(0, min(radius, h - 1, w - 1))
    if r:
        # separable box blur: two 1-D passes, same mean (halves match_colour's time)
        delta = F.pad(delta, (r, r, r, r), mode="replicate")
        delta = F.avg_pool2d(F.avg_pool2d(delta, (1, 2 * r + 1), stride=1), (2 * r + 1, 1), stride=1)
    return y + F.interpolate(delta, size=y.shape[-2:], mode="bilinear", align_corners=False)
