"""Load a generator from a weight file: vsr safetensors, Real-ESRGAN/BasicSR .pth, or spandrel.

Never unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)``.
The architecture comes from the metadata vsr writes into its safetensors files, or is inferred
from the state dict's keys and shapes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr.errors import ModelError
from vsr.models import ModelDescriptor, build_generator, describe_architecture

log = logging.getLogger("vsr")

METADATA_FORMAT = "vsr-generator-1"


@dataclass
class LoadedModel:
    """A generator ready for inference plus what the engine needs to know about it.

    network is None for the classical resamplers. descriptor holds the network's facts
    (its own scale, size multiple, tile overlap, ...: vsr.models.descriptor); model_scale is
    the model's nominal output scale (differs from the network's when the model ends in a
    fixed resize, like realesr-animevideov3-x2); resize_kernel is the kernel used to reach any
    other output size.
    """

    name: str
    arch: str
    network: nn.Module | None
    descriptor: ModelDescriptor
    model_scale: int
    resize_kernel: str = "bicubic"
    source: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def net_scale(self) -> int:
        """The network's own factor (1 for resamplers)."""
        return self.descriptor.scale

    @property
    def pad_multiple(self) -> int:
        """Input size multiple the network needs."""
        return self.descriptor.pad_multiple

    @property
    def tile_context(self) -> int:
        """Overlap (input pixels per side) tiles need to match whole frames."""
        return self.descriptor.tile_context

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.network.parameters()) if self.network is not None else 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a .safetensors / .pth / .pt / .ckpt file (ModelError if bad)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weight file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers/sizes
            raise ModelError(f"{path}: not a readable safetensors file (truncated or corrupt): "
                             f"{_first_line(err)}") from None
        return tensors, meta
    if suffix in (".pth", ".pt", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # zip, pickle and EOF errors all mean the same to a user
            raise ModelError(f"{path}: not a readable PyTorch weight file (truncated, corrupt, or "
                             f"not weights-only): {_first_line(err)}") from None
        return _unwrap_state_dict(obj, path), {}
    raise ModelError(f"{path}: unknown weight file type {suffix or '(none)'} "
                     "(expected .safetensors or .pth)")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Real-ESRGAN / BasicSR keep the EMA weights under params_ema and the plain ones under params.
    for key in ("params_ema", "params", "state_dict", "model", "generator", "net_g"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: does not hold a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):  # saved from DataParallel / DDP
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def infer_arch(sd: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(arch, hparams) of one of our generators from state-dict keys and shapes, or None."""
    if "body.0.rdb1.conv1.weight" in sd and "conv_first.weight" in sd:
        out_ch = sd["conv_last.weight"].shape[0]
        in_ch = sd["conv_first.weight"].shape[1]
        scale = {1: 4, 4: 2, 16: 1}.get(in_ch // out_ch, 4)
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.", k))}
        return "rrdbnet", dict(num_in_ch=in_ch // {4: 1, 2: 4, 1: 16}[scale], num_out_ch=out_ch,
                               scale=scale, num_feat=sd["conv_first.weight"].shape[0],
                               num_block=len(blocks),
                               num_grow_ch=sd["body.0.rdb1.conv1.weight"].shape[0])
    if "conv_first.weight" in sd and "body.0.conv1.weight" in sd:
        feat = sd["conv_first.weight"].shape[0]
        ups = sorted(int(m.group(1)) for k in sd if (m := re.match(r"upconv(\d+)\.weight$", k)))
        if len(ups) == 1:
            upscale = 3 if sd["upconv1.weight"].shape[0] == feat * 9 else 2
        else:
            upscale = {2: 4, 3: 8}.get(len(ups), 4)
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.conv1\.", k))}
        norm = "body.0.bn1.weight" in sd
        prelu = "body.0.act.weight" in sd
        hp: dict[str, Any] = dict(num_in_ch=sd["conv_first.weight"].shape[1],
                                  num_out_ch=sd["conv_last.weight"].shape[0], num_feat=feat,
                                  num_block=len(blocks), upscale=upscale, norm=norm,
                                  act="prelu" if prelu else "lrelu",
                                  head_kernel=sd["conv_first.weight"].shape[-1],
                                  tail_kernel=sd["conv_last.weight"].shape[-1],
                                  body_conv="conv_body.weight" in sd,
                                  hr_conv="conv_hr.weight" in sd)
        if not norm and not prelu and hp["hr_conv"]:  # BasicSR MSRResNet
            hp.update(image_residual=True, block_act="relu")
        return "srresnet", hp
    if "body.0.weight" in sd and sd["body.0.weight"].dim() == 4 and "conv_first.weight" not in sd:
        convs = sorted(int(m.group(1)) for k, v in sd.items()
                       if (m := re.match(r"body\.(\d+)\.weight$", k)) and v.dim() == 4)
        last = sd[f"body.{convs[-1]}.weight"]
        in_ch = sd["body.0.weight"].shape[1]
        up2 = last.shape[0] // in_ch
        upscale = int(round(up2 ** 0.5))
        if upscale * upscale * in_ch != last.shape[0]:
            return None
        return "srvggnet_compact", dict(num_in_ch=in_ch, num_out_ch=in_ch,
                                        num_feat=sd["body.0.weight"].shape[0],
                                        num_conv=len(convs) - 2, upscale=upscale,
                                        act_type="prelu" if "body.1.weight" in sd else "lrelu")
    return None


def load_state_dict_checked(network: nn.Module, sd: dict[str, torch.Tensor], path: str) -> None:
    """load_state_dict(strict) with a one-line ModelError naming the file and the misfit."""
    own = network.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        raise ModelError(f"{path}: state dict does not fit the architecture: {'; '.join(parts)}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ModelError(f"{path}: state dict does not fit the architecture: shape mismatch "
                             f"for {k}: file {tuple(sd[k].shape)}, architecture {tuple(v.shape)}")
    network.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in sd.items()})


def describe_checked(arch: str, hparams: dict[str, Any], path: str) -> ModelDescriptor:
    """The registry's descriptor of (arch, hparams), or a one-line ModelError naming the file."""
    try:
        return describe_architecture(arch, hparams)
    except (TypeError, ValueError, KeyError) as err:
        raise ModelError(f"{path}: bad architecture parameters for {arch}: {_first_line(err)}") from None


def build_loaded(name: str, arch: str, hparams: dict[str, Any], sd: dict[str, torch.Tensor],
                 path: str, source: str) -> LoadedModel:
    """Build the generator, load the weights (checked) and wrap it as a LoadedModel."""
    descriptor = describe_checked(arch, hparams, path)
    try:
        network = build_generator(arch, **hparams)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path}: bad architecture parameters for {arch}: {_first_line(err)}") from None
    load_state_dict_checked(network, sd, path)
    network.eval().requires_grad_(False)
    return LoadedModel(name=name, arch=arch, network=network, descriptor=descriptor,
                       model_scale=descriptor.scale, source=source, hparams=hparams)


def _arch_of(sd: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> tuple[str, dict[str, Any]] | None:
    """(arch, hparams) from vsr's metadata, else from the state dict's keys; None if neither."""
    if meta.get("vsr_format") == METADATA_FORMAT:
        try:
            return meta["vsr_arch"], json.loads(meta["vsr_hparams"])
        except (KeyError, ValueError) as err:
            raise ModelError(f"{path}: bad vsr metadata ({_first_line(err)})") from None
    return infer_arch(sd)


def _with_nominal_scale(loaded: LoadedModel, meta: dict[str, str]) -> LoadedModel:
    """The model's nominal scale and resize from vsr's metadata (a network plus a fixed resize)."""
    if meta.get("vsr_model_scale"):
        loaded.model_scale = int(meta["vsr_model_scale"])
        loaded.resize_kernel = meta.get("vsr_resize_kernel", loaded.resize_kernel)
    return loaded


def load_weight_file(path: str | os.PathLike) -> LoadedModel:
    """Load a user's weight file (.safetensors or .pth) into one of our generators or spandrel's."""
    path = Path(path)
    sd, meta = read_state_dict(path)
    found = _arch_of(sd, meta, path)
    if found is None:
        return _load_with_spandrel(sd, path)
    arch, hparams = found
    return _with_nominal_scale(build_loaded(path.stem, arch, hparams, sd, str(path), source=str(path)), meta)


def describe_weight_file(path: str | os.PathLike) -> LoadedModel:
    """What load_weight_file gives, but without the network (network None): reads and checks
    the file and describes its architecture, building nothing (except for architectures only
    spandrel knows, which spandrel describes by building them)."""
    path = Path(path)
    sd, meta = read_state_dict(path)
    found = _arch_of(sd, meta, path)
    if found is None:
        loaded = _load_with_spandrel(sd, path)
        loaded.network = None
        return loaded
    arch, hparams = found
    descriptor = describe_checked(arch, hparams, str(path))
    loaded = LoadedModel(name=path.stem, arch=arch, network=None, descriptor=descriptor,
                         model_scale=descriptor.scale, source=str(path), hparams=hparams)
    return _with_nominal_scale(loaded, meta)


def _load_with_spandrel(sd: dict[str, torch.Tensor], path: Path) -> LoadedModel:
    try:
        import spandrel
    except Exception as err:  # ImportError, or a torchvision built for another torch
        raise ModelError(f"{path}: architecture not recognised from its keys "
                         f"({', '.join(list(sd)[:3])}, ...) and spandrel is not importable "
                         f"({_first_line(err)}); install vsr[spandrel]") from None
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except Exception as err:
        raise ModelError(f"{path}: spandrel cannot load this state dict: {_first_line(err)}") from None
    network = desc.model.eval().requires_grad_(False)
    size_req = getattr(desc, "size_requirements", None)
    descriptor = ModelDescriptor(scale=int(desc.scale), in_channels=int(getattr(desc, "input_channels", 3)),
                                 out_channels=int(getattr(desc, "output_channels", 3)),
                                 pad_multiple=int(getattr(size_req, "multiple_of", 1) or 1))
    return LoadedModel(name=path.stem, arch=f"spandrel:{desc.architecture.name}", network=network,
                       descriptor=descriptor, model_scale=descriptor.scale, source=str(path))


def save_safetensors(path: str | os.PathLike, arch: str, hparams: dict[str, Any],
                     sd: dict[str, torch.Tensor], **extra_meta: str) -> None:
    """Write a generator's weights with vsr metadata, atomically (temp name, then rename)."""
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    meta = {"vsr_format": METADATA_FORMAT, "vsr_arch": arch, "vsr_hparams": json.dumps(hparams)}
    meta.update({k: str(v) for k, v in extra_meta.items()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a cache is shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
