"""Unit tests of vsr.train: losses on known inputs, the SRGAN discriminator, degradations,
metrics, data loading and config validation. Real images and clips from tests/data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vsr.errors import InputError, UsageError
from vsr.models.discriminator import SRGANDiscriminator
from vsr.train import losses
from vsr.train.config import load_config
from vsr.train.data import PatchSampler, load_hr_images, make_val_pairs, read_video_frames
from vsr.train.degradations import (SecondOrderDegradation, SecondOrderParams, bicubic_downscale,
                                    random_blur_kernel, sinc_kernel)
from vsr.train.metrics import psnr_y, ssim_y

torch.set_num_threads(2)

# torchvision vgg19().features: indices of the 16 convolutions (weight + bias each)
TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def random_vgg_file(path: Path, upto_conv: int = 4, fmt: str = "pth") -> Path:
    """A VGG-19-shaped state dict with RANDOM weights (torchvision key names) for the first
    `upto_conv` convolutions: real pretrained VGG weights are not shipped with the tests, so
    this exercises loading and the loss's response, not perceptual quality."""
    g = torch.Generator().manual_seed(0)
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512]
    sd = {}
    for n, idx in enumerate(TORCHVISION_VGG19_CONVS[:upto_conv]):
        sd[f"features.{idx}.weight"] = torch.randn(chans[n + 1], chans[n], 3, 3, generator=g) * 0.1
        sd[f"features.{idx}.bias"] = torch.randn(chans[n + 1], generator=g) * 0.01
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def images(images_dir):
    return load_hr_images(images_dir, "data.train")


# ------------------------------------------------------------------ losses


def test_pixel_losses_on_known_inputs():
    a = torch.rand(2, 3, 16, 16)
    assert losses.pixel_loss(a, a.clone(), "mse").item() == 0.0
    assert losses.pixel_loss(a, a.clone(), "l1").item() == 0.0
    b = a + 0.1
    assert losses.pixel_loss(a, b, "mse").item() == pytest.approx(0.01, rel=1e-4)
    assert losses.pixel_loss(a, b, "l1").item() == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(UsageError):
        losses.pixel_loss(a, b, "l3")


def test_vgg19_layers_use_torchvision_keys():
    vgg = losses.VGG19Features(["conv5_4"])
    convs = sorted({int(k.split(".")[1]) for k in vgg.state_dict() if k.startswith("features.")})
    assert convs == TORCHVISION_VGG19_CONVS
    assert losses.VGG19_LAYERS.index("conv5_4") == 34 and losses.VGG19_LAYERS.index("relu5_4") == 35


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_perceptual_loss_responds_to_feature_change(tmp_path, fmt):
    vgg_file = random_vgg_file(tmp_path / f"vgg.{fmt}", fmt=fmt)
    loss = losses.PerceptualLoss(vgg_file, {"conv2_2": 1.0, "relu1_2": 0.5})
    img = torch.rand(1, 3, 32, 32)
    assert loss(img, img.clone()).item() == pytest.approx(0.0, abs=1e-7)
    small = loss(img + 0.01 * torch.randn_like(img), img).item()
    large = loss(img + 0.2 * torch.randn_like(img), img).item()
    assert 0 < small < large
    # the gradient reaches the generator's output
    x = img.clone().requires_grad_(True)
    loss(x, torch.rand_like(img)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # weights really loaded from the file
    sd = torch.load(vgg_file, weights_only=True) if fmt == "pth" else None
    if sd is not None:
        assert torch.equal(loss.vgg.features[0].weight, sd["features.0.weight"])


def test_conv_layer_is_before_activation_relu_after(tmp_path):
    vgg = losses.VGG19Features(["conv1_2", "relu1_2"],
                               losses.load_vgg19_state_dict(random_vgg_file(tmp_path / "v.pth")))
    out = vgg(torch.rand(1, 3, 16, 16))
    assert out["conv1_2"].min() < 0 <= out["relu1_2"].min()
    assert torch.equal(out["relu1_2"], out["conv1_2"].clamp(min=0))


def test_perceptual_loss_needs_a_vgg_file(tmp_path):
    with pytest.raises(UsageError, match="loss.perceptual.vgg_weights"):
        losses.PerceptualLoss(None, {"conv5_4": 1.0})
    with pytest.raises(UsageError, match="not found"):
        losses.PerceptualLoss(tmp_path / "missing.pth", {"conv5_4": 1.0})
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(Exception, match="cannot read VGG-19 weights"):
        losses.PerceptualLoss(bad, {"conv5_4": 1.0})
    with pytest.raises(UsageError, match="unknown VGG-19 layer"):
        losses.VGG19Features(["conv6_1"])


@pytest.mark.parametrize("kind", ["vanilla", "relativistic"])
def test_adversarial_loss_signs(kind):
    confident_real = torch.full((4, 1), 6.0)
    confident_fake = torch.full((4, 1), -6.0)
    # A discriminator that separates real from fake has a small loss; the generator a large one.
    d_good = losses.discriminator_loss(confident_real, confident_fake, kind).item()
    g_fooled_not = losses.generator_adversarial_loss(confident_real, confident_fake, kind).item()
    # Swapped: the generator wins.
    d_bad = losses.discriminator_loss(confident_fake, confident_real, kind).item()
    g_wins = losses.generator_adversarial_loss(confident_fake, confident_real, kind).item()
    assert d_good < 0.01 and d_bad > 5
    assert g_fooled_not > 5 and g_wins < 0.01


def test_relativistic_loss_is_relative():
    real, fake = torch.randn(8, 1), torch.randn(8, 1)
    for shift in (-3.0, 5.0):
        assert losses.discriminator_loss(real + shift, fake + shift, "relativistic").item() == \
            pytest.approx(losses.discriminator_loss(real, fake, "relativistic").item(), rel=1e-5)
    # the vanilla loss is not shift invariant
    assert losses.discriminator_loss(real + 3, fake + 3, "vanilla").item() != \
        pytest.approx(losses.discriminator_loss(real, fake, "vanilla").item(), rel=1e-3)
    # at indistinguishable scores both players sit at log(2)
    same = torch.zeros(4, 1)
    assert losses.discriminator_loss(same, same, "relativistic").item() == pytest.approx(math.log(2))
    assert losses.generator_adversarial_loss(same, same, "relativistic").item() == pytest.approx(math.log(2))


def test_generator_loss_is_the_weighted_sum(tmp_path):
    perceptual = losses.PerceptualLoss(random_vgg_file(tmp_path / "v.pth"), {"conv2_2": 1.0})
    gl = losses.GeneratorLoss("mse", 1.0, perceptual, 0.5, "vanilla", 1e-3)
    sr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    fake = torch.randn(2, 1)
    total, terms = gl(sr, hr, fake_logits=fake)
    assert set(terms) == {"pixel", "perceptual", "adversarial", "total"}
    expected = terms["pixel"] + 0.5 * terms["perceptual"] + 1e-3 * terms["adversarial"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    _, pre = gl(sr, hr, fake_logits=fake, use_adversarial=False)
    assert "adversarial" not in pre


# ------------------------------------------------------------------ discriminator


def test_discriminator_shapes_and_layout():
    d = SRGANDiscriminator()
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.features) == 7
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, torch.nn.LeakyReLU))
    assert d.classifier[1].out_features == 1024 and d.classifier[-1].out_features == 1
    small = SRGANDiscriminator(num_feat=8, dense_feat=16)
    for n, size in ((2, 96), (3, 128), (1, 40), (2, 33)):
        assert small(torch.rand(n, 3, size, size)).shape == (n, 1)


# ------------------------------------------------------------------ degradations


def test_bicubic_downscale_sizes(images):
    for img in images:
        for s in (2, 4):
            h, w = img.pixels.shape[:2]
            hr = img.pixels[: h - h % s, : w - w % s]
            lr = bicubic_downscale(hr, s)
            assert lr.shape == (hr.shape[0] // s, hr.shape[1] // s, 3) and lr.dtype == np.uint8
    with pytest.raises(ValueError):
        bicubic_downscale(np.zeros((10, 10, 3), np.uint8), 4)


def test_kernels_are_normalised():
    rng = np.random.default_rng(1)
    for kind in ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"):
        k = random_blur_kernel(rng, 21, kind, (0.2, 3), (0.5, 4), (1, 2))
        assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-5
        assert np.allclose(k, k[::-1, ::-1], atol=1e-6)  # point symmetric
    s = sinc_kernel(math.pi / 2, 13)
    assert abs(s.sum() - 1) < 1e-5 and s.min() < 0  # ringing lobes


@pytest.mark.parametrize("scale", [2, 4])
def test_second_order_degradation_sizes_and_range(images, scale):
    sampler = PatchSampler(images, scale, 64, "second-order",
                           second_order=SecondOrderDegradation(scale))
    rng = np.random.default_rng(0)
    lr, hr = sampler.sample(6, rng)
    assert hr.shape == (6, 3, 64, 64) and lr.shape == (6, 3, 64 // scale, 64 // scale)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)  # quantised to 8 bits
    # not just a bicubic downscale: it adds noise / blur / JPEG
    clean = torch.nn.functional.interpolate(hr, scale_factor=1 / scale, mode="area")
    assert (lr - clean).abs().mean() > 0.005


def test_second_order_params_validation():
    p = SecondOrderParams.from_dict({"noise_range": [2, 10], "jpeg_range": [50, 90]})
    assert p.noise_range == (2, 10)
    with pytest.raises(UsageError, match="data.second_order.noise_rnage"):
        SecondOrderParams.from_dict({"noise_rnage": [1, 2]})
    with pytest.raises(UsageError, match="first value"):
        SecondOrderParams.from_dict({"blur_sigma": [3, 1]})


# ------------------------------------------------------------------ metrics


def test_psnr_and_ssim_on_known_inputs(images):
    img = images[0].pixels
    assert psnr_y(img, img.copy()) == float("inf")
    assert ssim_y(img, img.copy(), 4) == pytest.approx(1.0)
    gray = np.full((32, 32, 3), 100, np.uint8)
    # +10 on R, G, B moves Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 8.588
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(gray, gray + 10) == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2), rel=1e-6)
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim_y(img, noisy, 4) < 0.95


# ------------------------------------------------------------------ data


def test_patch_sampler_alignment(images):
    sampler = PatchSampler(images, 4, 48, "bicubic")
    lr, hr = sampler.sample(5, np.random.default_rng(3))
    assert lr.shape == (5, 3, 12, 12) and hr.shape == (5, 3, 48, 48)
    # the LR patch is the bicubic downscale of its HR patch (up to border effects)
    for i in range(5):
        hr_u8 = (hr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        own = bicubic_downscale(hr_u8, 4).astype(float)
        assert np.abs(own[2:-2, 2:-2] - lr[i].permute(1, 2, 0).numpy()[2:-2, 2:-2] * 255).mean() < 2.0


def test_video_frames_sampled_across_clip(media_dir):
    clip = media_dir / "carphone_176x144_noaudio.mp4"  # 120 frames
    every6 = read_video_frames(clip, step=6)
    assert len(every6) == 20 and every6[0].shape == (144, 176, 3)
    five = read_video_frames(clip, step=6, max_frames=5)
    assert len(five) == 5
    assert np.array_equal(five[0], every6[0]) and np.array_equal(five[-1], every6[-1])
    items = load_hr_images(clip, "data.train", video_frame_step=30)
    assert [i.name for i in items] == [f"carphone_176x144_noaudio.mp4#{k}" for k in range(4)]
    # 20 frames of 176x144x3 = 1.5 MB: refused under a 1 MB budget, before decoding
    with pytest.raises(UsageError, match="data.train: .* exceed data.max_memory_gb"):
        load_hr_images(clip, "data.train", video_frame_step=6, max_memory_gb=0.001)


def test_data_refusals(tmp_path, images):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="data.train: no images or videos"):
        load_hr_images(empty, "data.train")
    with pytest.raises(UsageError, match="data.patch_size 192 is larger than 0014.jpg"):
        PatchSampler(images, 4, 192)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(Exception, match="cannot read image"):
        load_hr_images(tmp_path / "broken.png", "data.train")
    (tmp_path / "fake.mp4").write_bytes(b"this is not a video")
    with pytest.raises(InputError):
        load_hr_images(tmp_path / "fake.mp4", "data.train")
    pairs = make_val_pairs(images, 4, max_size=64)
    assert all(p.hr.shape == (64, 64, 3) and p.lr.shape == (16, 16, 3) for p in pairs)


# ------------------------------------------------------------------ config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


def test_config_refusals_name_the_key(tmp_path, images_dir):
    data = f'[data]\ntrain = "{images_dir}"\n'
    with pytest.raises(UsageError, match="loss.perceptual.vgg_weights"):
        load_config(_write(tmp_path, data + "[loss.perceptual]\nweight = 1.0\n"))
    with pytest.raises(UsageError, match="unknown key train.max_stepz"):
        load_config(_write(tmp_path, data + "[train]\nmax_stepz = 3\n"))
    with pytest.raises(UsageError, match="train.max_steps must be a int"):
        load_config(_write(tmp_path, data + '[train]\nmax_steps = "many"\n'))
    with pytest.raises(UsageError, match="data.train is not set"):
        load_config(_write(tmp_path, "[train]\nmax_steps = 3\n"))
    with pytest.raises(UsageError, match="data.patch_size"):
        load_config(_write(tmp_path, data + "patch_size = 30\n"))
    with pytest.raises(UsageError, match="model.init: weight file not found"):
        load_config(_write(tmp_path, data + '[model]\ninit = "nope/gen.safetensors"\n'))
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(_write(tmp_path, "[data\n"))
    cfg = load_config(_write(tmp_path, data), {"train.max_steps": 7, "loss.pixel.type": "mse",
                                                "data.val": None})
    assert cfg.train.max_steps == 7 and cfg.loss.pixel.type == "mse" and cfg.data.val == ""


@pytest.mark.parametrize("name", ["train_srresnet_x4.toml", "train_srgan_x4.toml",
                                  "finetune_realesrgan.toml"])
def test_pipeline_configs_parse(tmp_path, name):
    path = Path(__file__).parent.parent / "pipelines" / name
    vgg = random_vgg_file(tmp_path / "vgg.pth")
    gen = tmp_path / "gen.safetensors"
    gen.write_bytes(b"")  # only its existence is checked by the config
    overrides = {"loss.perceptual.vgg_weights": str(vgg)}
    if name == "train_srgan_x4.toml":
        overrides["model.init"] = str(gen)
    cfg = load_config(path, overrides)
    assert cfg.model.scale == 4
    if name != "train_srresnet_x4.toml":
        assert cfg.uses_gan and cfg.loss.perceptual.weight > 0
        with pytest.raises(UsageError, match="loss.perceptual.vgg_weights"):
            load_config(path, {k: v for k, v in overrides.items() if k != "loss.perceptual.vgg_weights"})
