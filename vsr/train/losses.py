"""Training objectives of SRGAN and ESRGAN: pixel content loss, VGG-19 perceptual loss,
adversarial losses (SRGAN's standard GAN and ESRGAN's relativistic average GAN), and the
weighted sum that makes the generator's total loss.

Images are (N, 3, H, W) float tensors in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vsr.errors import ModelError, UsageError

__all__ = [
    "pixel_loss", "VGG19Features", "PerceptualLoss", "load_vgg19_state_dict",
    "discriminator_loss", "generator_adversarial_loss", "GeneratorLoss", "VGG19_LAYERS",
]

# ------------------------------------------------------------------ content (pixel) loss


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Pixel-wise content loss: "mse" (SRGAN's l_MSE) or "l1" (mean absolute error)."""
    if kind == "mse":
        return F.mse_loss(sr, hr)
    if kind == "l1":
        return F.l1_loss(sr, hr)
    raise UsageError(f"unknown pixel loss {kind!r} (choose l1 or mse)")


# ------------------------------------------------------------------ VGG-19 perceptual loss

_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def _vgg19_layer_names() -> list[str]:
    """Names of torchvision's vgg19 `features` modules in order: conv1_1, relu1_1, ..., pool5."""
    names, block, conv = [], 1, 1
    for v in _VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


VGG19_LAYERS: list[str] = _vgg19_layer_names()


def load_vgg19_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read VGG-19 weights (torchvision key names) from a .pth (weights_only) or .safetensors
    file; returns the `features.*` tensors with keys like "features.0.weight"."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"VGG-19 weight file not found: {path} (loss.perceptual.vgg_weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: one line naming it
        raise ModelError(f"cannot read VGG-19 weights {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ModelError(f"{path} does not hold a state dict")
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("vgg.")
        if k.startswith("features.") and isinstance(v, torch.Tensor):
            out[k] = v
    if not out:
        raise ModelError(f"{path} has no VGG-19 'features.*' weights (torchvision vgg19 keys)")
    return out


class VGG19Features(nn.Module):
    """torchvision's vgg19 `features` up to the deepest requested layer, frozen; returns the
    named layers' outputs for ImageNet-normalised input. Conv layers ("conv5_4") are taken
    before their ReLU (ESRGAN), relu layers ("relu5_4") after it (SRGAN)."""

    def __init__(self, layers: list[str], state_dict: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise UsageError(f"unknown VGG-19 layer {unknown[0]!r} (loss.perceptual.layers; "
                             f"e.g. conv5_4, relu5_4, conv3_4)")
        self.layers = list(layers)
        last = max(VGG19_LAYERS.index(n) for n in layers)
        modules: list[nn.Module] = []
        in_ch = 3
        for name in VGG19_LAYERS[: last + 1]:
            if name.startswith("conv"):
                out_ch = 64 * 2 ** min(int(name[4]) - 1, 3)
                modules.append(nn.Conv2d(in_ch, out_ch, 3, 1, 1))
                in_ch = out_ch
            elif name.startswith("relu"):
                modules.append(nn.ReLU(inplace=False))
            else:
                modules.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules)
        if state_dict is not None:
            wanted = {k: v for k, v in state_dict.items()
                      if k.startswith("features.") and int(k.split(".")[1]) <= last}
            try:
                missing, _ = self.load_state_dict(wanted, strict=False)
            except RuntimeError as err:
                raise ModelError(f"VGG-19 weights do not fit: {str(err).splitlines()[1].strip()}"
                                 if len(str(err).splitlines()) > 1 else str(err)) from None
            if missing:
                raise ModelError(f"VGG-19 weights lack {missing[0]} (need torchvision vgg19 keys)")
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always frozen, in eval mode

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        wanted = {VGG19_LAYERS.index(n): n for n in self.layers}
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


class PerceptualLoss(nn.Module):
    """Weighted distance between VGG-19 features of the output and the target image."""

    def __init__(self, vgg_weights: str | os.PathLike | None, layer_weights: Mapping[str, float],
                 criterion: str = "l1") -> None:
        super().__init__()
        if not vgg_weights:
            raise UsageError("loss.perceptual needs VGG-19 weights: set loss.perceptual.vgg_weights "
                             "to a torchvision vgg19 state dict (.pth) or .safetensors file "
                             "(e.g. vgg19-dcbb9e9d.pth), or set loss.perceptual.weight = 0")
        if criterion not in ("l1", "mse"):
            raise UsageError(f"unknown loss.perceptual.criterion {criterion!r} (l1 or mse)")
        if not layer_weights:
            raise UsageError("loss.perceptual.layers is empty (e.g. {conv5_4 = 1.0})")
        self.layer_weights = dict(layer_weights)
        self.criterion = criterion
        self.vgg = VGG19Features(list(self.layer_weights), load_vgg19_state_dict(vgg_weights))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        f_sr = self.vgg(sr)
        with torch.no_grad():
            f_hr = self.vgg(hr)
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        total = sr.new_zeros(())
        for name, w in self.layer_weights.items():
            total = total + w * dist(f_sr[name].float(), f_hr[name].float())
        return total


# ------------------------------------------------------------------ adversarial losses

ADVERSARIAL_KINDS = ("vanilla", "relativistic")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: str = "vanilla") -> torch.Tensor:
    """The discriminator's loss. "vanilla" (SRGAN): -log D(x_r) - log(1 - D(x_f)).
    "relativistic" (ESRGAN's RaGAN): -log σ(C(x_r) - E[C(x_f)]) - log(1 - σ(C(x_f) - E[C(x_r)]))."""
    if kind == "vanilla":
        return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
    if kind == "relativistic":
        return 0.5 * (_bce(real_logits - fake_logits.mean(), 1.0)
                      + _bce(fake_logits - real_logits.mean(), 0.0))
    raise UsageError(f"unknown loss.adversarial.type {kind!r} (vanilla or relativistic)")


def generator_adversarial_loss(real_logits: torch.Tensor | None, fake_logits: torch.Tensor,
                               kind: str = "vanilla") -> torch.Tensor:
    """The generator's adversarial loss. "vanilla" (SRGAN): -log D(G(z)).
    "relativistic" (ESRGAN): the symmetric RaGAN loss, which also pushes real images'
    relative score down (needs `real_logits`, computed without gradient to D)."""
    if kind == "vanilla":
        return _bce(fake_logits, 1.0)
    if kind == "relativistic":
        if real_logits is None:
            raise ValueError("relativistic generator loss needs the real images' logits")
        return 0.5 * (_bce(real_logits - fake_logits.mean(), 0.0)
                      + _bce(fake_logits - real_logits.mean(), 1.0))
    raise UsageError(f"unknown loss.adversarial.type {kind!r} (vanilla or relativistic)")


# ------------------------------------------------------------------ total generator loss


class GeneratorLoss(nn.Module):
    """The generator's total loss: pixel_weight * pixel + perceptual_weight * perceptual +
    adversarial_weight * adversarial (a term with weight 0 is not computed). Returns the total
    and each term's unweighted value for logging."""

    def __init__(self, pixel_kind: str = "l1", pixel_weight: float = 1.0,
                 perceptual: PerceptualLoss | None = None, perceptual_weight: float = 0.0,
                 adversarial_kind: str = "vanilla", adversarial_weight: float = 0.0) -> None:
        super().__init__()
        if adversarial_kind not in ADVERSARIAL_KINDS:
            raise UsageError(f"unknown loss.adversarial.type {adversarial_kind!r} "
                             "(vanilla or relativistic)")
        self.pixel_kind, self.pixel_weight = pixel_kind, float(pixel_weight)
        self.perceptual, self.perceptual_weight = perceptual, float(perceptual_weight)
        self.adversarial_kind, self.adversarial_weight = adversarial_kind, float(adversarial_weight)
        if self.perceptual_weight > 0 and perceptual is None:
            raise UsageError("loss.perceptual.weight > 0 needs loss.perceptual.vgg_weights")

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, *,
                fake_logits: torch.Tensor | None = None,
                real_logits: torch.Tensor | None = None,
                use_adversarial: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        terms: dict[str, torch.Tensor] = {}
        total = sr.new_zeros((), dtype=torch.float32)
        if self.pixel_weight > 0:
            terms["pixel"] = pixel_loss(sr.float(), hr.float(), self.pixel_kind)
            total = total + self.pixel_weight * terms["pixel"]
        if self.perceptual_weight > 0 and self.perceptual is not None:
            terms["perceptual"] = self.perceptual(sr, hr)
            total = total + self.perceptual_weight * terms["perceptual"]
        if use_adversarial and self.adversarial_weight > 0 and fake_logits is not None:
            terms["adversarial"] = generator_adversarial_loss(real_logits, fake_logits,
                                                              self.adversarial_kind)
            total = total + self.adversarial_weight * terms["adversarial"]
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(total.detach())
        return total, logged
