"""A new architecture plugs in through the registry alone: the engine runs it from its descriptor.

The toy network here is built in the test, registered with its descriptor, saved with vsr's
own save_safetensors and run by path through the Upscaler, whole and tiled (explicit tiles and
the CPU's exact cache tiles), with no change to the engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vsr.engine import Upscaler
from vsr.errors import ModelError
from vsr.models import ARCHITECTURES, ModelDescriptor, register_architecture
from vsr.weights.loader import save_safetensors
from vsr.weights.zoo import describe_model

torch.set_num_threads(2)
TOY = "toy_unshuffle_test"


class ToyUnshuffle(nn.Module):
    """Pixel-unshuffle by 2, two 3x3 convs at half resolution, pixel-shuffle up, plus the
    nearest-upsampled input. Samples in 0..255. Needs even sizes; reaches 2 half-resolution
    pixels, i.e. 4 input pixels."""

    def __init__(self, num_feat: int = 8, upscale: int = 2) -> None:
        super().__init__()
        self.upscale = upscale
        self.conv1 = nn.Conv2d(12, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, 3 * (2 * upscale) ** 2, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv2(F.relu(self.conv1(F.pixel_unshuffle(x, 2))))
        return F.pixel_shuffle(feat, 2 * self.upscale) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def describe_toy(hparams: Mapping[str, Any]) -> ModelDescriptor:
    return ModelDescriptor(scale=int(hparams.get("upscale", 2)), input_range=(0.0, 255.0), pad_multiple=2,
                           tile_context=4, exact_tiles=True, feature_channels=int(hparams.get("num_feat", 8)))


@pytest.fixture
def toy_file(tmp_path) -> Iterator[tuple[str, nn.Module]]:
    register_architecture(TOY, ToyUnshuffle, describe_toy)
    try:
        torch.manual_seed(3)
        hp = dict(num_feat=8, upscale=2)
        net = ToyUnshuffle(**hp).eval()
        path = tmp_path / "toy.safetensors"
        save_safetensors(path, TOY, hp, net.state_dict())
        yield str(path), net
    finally:
        ARCHITECTURES.pop(TOY, None)


def _reference(net: nn.Module, frame: np.ndarray) -> np.ndarray:
    """The toy network on the whole frame, straight in torch (padded to even sizes by hand)."""
    h, w = frame.shape[:2]
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect")
    with torch.inference_mode():
        y = net(x)[..., : 2 * h, : 2 * w]
    return y.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()


def _passes(up: Upscaler, frame: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The Upscaler's output and the (height, width) of every forward pass it ran."""
    shapes: list[tuple[int, int]] = []
    hook = up.net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        return up.upscale(frame), shapes
    finally:
        hook.remove()


def test_registered_architecture_runs_whole_and_tiled(toy_file, anime, monkeypatch):
    import vsr.engine.tiles as tiles_module

    path, net = toy_file
    frame = np.ascontiguousarray(anime[30:75, 100:161])  # 45 x 61: odd, padded to 46 x 62
    expected = _reference(net, frame)
    whole_up = Upscaler(path, precision="fp32")
    assert (whole_up.arch, whole_up.model_scale, whole_up.tile_pad) == (TOY, 2, 4)
    whole, shapes = _passes(whole_up, frame)
    assert shapes == [(46, 62)] and whole.shape == (90, 122, 3)
    assert np.abs(whole.astype(int) - expected).max() <= 1  # within a rounding of the plain network

    tiled, shapes = _passes(Upscaler(path, precision="fp32", tile=17), frame)
    # tiles of 16 (17 rounded down to the size multiple) with 4 px of overlap, every one even
    assert len(shapes) == 12 and all(h % 2 == 0 and w % 2 == 0 for h, w in shapes)
    assert np.array_equal(tiled, whole)

    # the CPU's own cache tiles: a budget of 30 x 30 padded pixels of 8 fp32 channels
    monkeypatch.setattr(tiles_module, "CPU_CACHE_BYTES", 30 * 30 * 8 * 4)
    cached_up = Upscaler(path, precision="fp32", batch_size=1)
    tiles, pad = cached_up._cache_tiles(46, 62, 4)
    assert len(tiles) > 1 and pad == 4
    assert all(v % 2 == 0 for t in tiles for v in t[::2])  # tiles start on the size grid
    cached, shapes = _passes(cached_up, frame)
    assert len(shapes) == len(tiles) and max(h * w for h, w in shapes) <= 30 * 30
    assert np.array_equal(cached, whole)


def test_registered_architecture_is_described_for_planning(toy_file):
    path, _ = toy_file
    card = describe_model(path, outscale=3)
    assert (card.arch, card.model_scale, card.scale, card.any_scale) == (TOY, 2, 3.0, False)
    assert card.descriptor == describe_toy({"num_feat": 8, "upscale": 2})


@pytest.mark.parametrize("facts, message", [
    (dict(temporal=True), "temporal model"),
    (dict(in_channels=1, out_channels=1), "takes 1 channel"),
])
def test_models_the_frame_engine_cannot_run_are_refused(toy_file, facts, message):
    path, _ = toy_file
    register_architecture(TOY, ToyUnshuffle, lambda hp: ModelDescriptor(scale=2, **facts), replace=True)
    with pytest.raises(ModelError, match=message):
        Upscaler(path)
