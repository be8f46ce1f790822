"""Generator architectures: shapes, scales and BasicSR-compatible state-dict keys; resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import psnr
from vsr.models import MSRRESNET_HPARAMS, build_generator, generator_scale
from vsr.models.resample import resize, resize_channels_last

torch.set_num_threads(2)


@pytest.mark.parametrize("arch,hparams,scale", [
    ("srresnet", dict(num_block=2, upscale=2), 2),
    ("srresnet", dict(num_block=2, upscale=3), 3),
    ("srresnet", dict(num_block=2, upscale=4), 4),
    ("srresnet", dict(num_block=1, num_feat=16, upscale=8), 8),
    ("srresnet", dict(num_block=2, upscale=4, **MSRRESNET_HPARAMS), 4),
    ("rrdbnet", dict(num_block=1, num_feat=16, num_grow_ch=8, scale=4), 4),
    ("rrdbnet", dict(num_block=1, num_feat=16, num_grow_ch=8, scale=2), 2),
    ("rrdbnet", dict(num_block=1, num_feat=16, num_grow_ch=8, scale=1), 1),
    ("srvggnet_compact", dict(num_conv=2, num_feat=16, upscale=4), 4),
    ("srvggnet_compact", dict(num_conv=2, num_feat=16, upscale=2, act_type="lrelu"), 2),
])
def test_generator_output_shape(arch, hparams, scale):
    net = build_generator(arch, **hparams).eval()
    assert generator_scale(net) == scale
    with torch.inference_mode():
        y = net(torch.rand(2, 3, 12, 20))
    assert y.shape == (2, 3, 12 * scale, 20 * scale)
    assert torch.isfinite(y).all()


def test_srresnet_paper_layout():
    net = build_generator("srresnet")
    keys = set(net.state_dict())
    assert net.conv_first.kernel_size == (9, 9) and net.conv_last.kernel_size == (9, 9)
    assert len(net.body) == 16
    assert {"body.0.bn1.weight", "body.0.act.weight", "conv_body.weight", "bn_body.weight",
            "upconv1.weight", "upconv2.weight", "up_act1.weight"} <= keys
    assert isinstance(net.body[0].act, torch.nn.PReLU)


def test_msrresnet_keys_match_basicsr():
    net = build_generator("srresnet", num_feat=64, num_block=16, upscale=4, **MSRRESNET_HPARAMS)
    expected = {"conv_first.weight", "conv_first.bias", "upconv1.weight", "upconv1.bias",
                "upconv2.weight", "upconv2.bias", "conv_hr.weight", "conv_hr.bias",
                "conv_last.weight", "conv_last.bias"}
    for i in range(16):
        expected |= {f"body.{i}.conv{j}.{p}" for j in (1, 2) for p in ("weight", "bias")}
    assert set(net.state_dict()) == expected
    assert sum(p.numel() for p in net.parameters()) == 1517571  # BasicSR MSRResNet x4


def test_rrdbnet_keys_match_basicsr():
    net = build_generator("rrdbnet", num_block=2)
    keys = set(net.state_dict())
    expected = {f"{m}.{p}" for m in ("conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr",
                                      "conv_last") for p in ("weight", "bias")}
    expected |= {f"body.{b}.rdb{r}.conv{c}.{p}" for b in range(2) for r in (1, 2, 3)
                 for c in range(1, 6) for p in ("weight", "bias")}
    assert keys == expected
    full = build_generator("rrdbnet", num_block=23)
    assert sum(p.numel() for p in full.parameters()) == 16697987  # RealESRGAN_x4plus


def test_srvgg_keys_match_realesrgan():
    net = build_generator("srvggnet_compact", num_conv=16)
    keys = list(net.state_dict())
    assert keys[:4] == ["body.0.weight", "body.0.bias", "body.1.weight", "body.2.weight"]
    assert keys[-2:] == ["body.34.weight", "body.34.bias"]
    assert sum(p.numel() for p in net.parameters()) == 621424  # realesr-animevideov3


def test_unknown_arch():
    with pytest.raises(ValueError, match="known: srresnet, rrdbnet, srvggnet_compact"):
        build_generator("edsr")


@pytest.mark.parametrize("kernel,pil", [("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)])
@pytest.mark.parametrize("size", [(301, 203), (61, 45), (179, 180)])
def test_resize_matches_pillow(images_dir, kernel, pil, size):
    im = Image.open(images_dir / "0014.jpg").convert("RGB")
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
    y = resize(x, (size[1], size[0]), kernel)
    ours = (y.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    ref = np.asarray(im.resize(size, pil))
    assert ours.shape == ref.shape
    assert psnr(ours, ref) >= 45  # Pillow rounds to uint8 between passes; we do not


@pytest.mark.parametrize("size", [(96, 160), (24, 40), (48, 160), (96, 30)])
def test_resize_of_a_batch_is_the_same_on_both_cpu_paths(size):
    """float32 on the CPU takes sparse products (the last axis in place), other dtypes the taps'
    gathers: the same sums, frame by frame of a batch, up, down and one axis only."""
    x = torch.rand(3, 3, 48, 80)
    for kernel in ("bicubic", "lanczos"):
        fast = resize(x, size, kernel)
        assert fast.shape == (3, 3, *size) and fast.is_contiguous()
        assert torch.allclose(fast, resize(x.double(), size, kernel).float(), atol=1e-5)
        assert torch.allclose(fast[1:2], resize(x[1:2], size, kernel), atol=1e-6)


@pytest.mark.parametrize("size", [(96, 160), (24, 40), (48, 160), (96, 30), (48, 80)])
def test_resize_channels_last_gives_resize_output(size):
    """Frames as they lie (N,H,W,C), each axis a sparse product with that axis leading: the same
    pictures as resize() on the channels-first view, up, down and one axis only; float rounding
    only where a downscale's taps are added in another order."""
    x = torch.rand(3, 48, 80, 3)
    for kernel in ("bicubic", "lanczos"):
        ours = resize_channels_last(x, size, kernel)
        ref = resize(x.permute(0, 3, 1, 2), size, kernel).permute(0, 2, 3, 1)
        assert ours.shape == (3, *size, 3)
        if size[0] >= 48 and size[1] >= 80:
            assert torch.equal(ours, ref)
        assert torch.allclose(ours, ref, atol=1e-6)
    # other dtypes and kernels take resize() itself
    assert torch.equal(resize_channels_last(x.double(), size, "lanczos"),
                       resize(x.double().permute(0, 3, 1, 2), size, "lanczos").permute(0, 2, 3, 1))


def test_resize_noaa_is_torch_bicubic():
    x = torch.rand(1, 3, 16, 16)
    y = resize(x, (8, 8), "bicubic-noaa")
    assert torch.equal(y, torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic",
                                                          align_corners=False))
    with pytest.raises(ValueError, match="unknown resampling kernel"):
        resize(x, (8, 8), "nearest-ish")


@pytest.mark.parametrize("in_ch,out_ch,scale", [(3, 3, 4), (3, 3, 2), (1, 3, 4), (1, 1, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_srvgg_residual_at_input_resolution_is_exact(in_ch, out_ch, scale, dtype):
    """SRVGGNetCompact adds its input before PixelShuffle (cheaper); the result must be bit-identical
    to Real-ESRGAN's formula: PixelShuffle(body(x)) + nearest-upsampled x."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = build_generator("srvggnet_compact", num_in_ch=in_ch, num_out_ch=out_ch, num_feat=16, num_conv=2,
                          upscale=scale).to(dtype).eval()
    x = torch.rand(2, in_ch, 11, 14).to(dtype)
    with torch.inference_mode():
        for fmt in (torch.contiguous_format, torch.channels_last):  # the conv kernels differ by layout
            net, xf = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            feat = xf
            for layer in net.body:
                feat = layer(feat)
            base = xf if out_ch == in_ch else xf[:, :1]
            expected = F.pixel_shuffle(feat, scale) + F.interpolate(base, scale_factor=scale, mode="nearest")
            assert torch.equal(net(xf), expected)
