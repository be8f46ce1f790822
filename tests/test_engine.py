"""The frame engine: precision, batching, tiling, OOM recovery, outscale, odd sizes, uint16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import psnr
from vsr.engine import Upscaler
from vsr.engine.device import cpu_has_native_bf16, resolve_device, resolve_precision
from vsr.errors import ModelError, UsageError

torch.set_num_threads(2)
FAST = "realesr-animevideov3-x4"


@pytest.fixture(scope="module")
def photo(images_dir) -> np.ndarray:
    return np.asarray(Image.open(images_dir / "0014.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def fast_fp32() -> Upscaler:
    return Upscaler(FAST, device="cpu", precision="fp32", batch_size=2)


def test_auto_precision_and_device():
    up = Upscaler(FAST)
    assert up.device == "cpu"  # no GPU in CI
    assert up.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert up.scale == 4.0 and up.model_scale == 4 and up.name == FAST
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp16"
    assert up.net.body[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_device_and_precision():
    with pytest.raises(UsageError, match="cuda:99"):
        resolve_device("cuda:99")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu:0")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        Upscaler(FAST, precision="fp8")
    with pytest.raises(UsageError, match="tile 4 is too small"):
        Upscaler(FAST, tile=4)


def test_default_precision_close_to_fp32(anime, fast_fp32):
    crop = anime[:64, 100:196]
    ref = fast_fp32.upscale(crop)
    fast = Upscaler(FAST, precision="bf16").upscale(crop)
    assert psnr(fast, ref) >= 40


def test_batch_matches_single_frames(anime, fast_fp32):
    frames = np.stack([anime[:40, :56], anime[40:80, 56:112], anime[100:140, 300:356]])
    batched = fast_fp32.upscale(frames)  # batch_size=2: one batch of 2, one of 1
    assert batched.shape == (3, 160, 224, 3) and batched.dtype == np.uint8
    for i in range(3):
        single = fast_fp32.upscale(frames[i])
        assert single.shape == (160, 224, 3)
        assert psnr(single, batched[i]) >= 60  # oneDNN may pick another kernel per batch size


@pytest.mark.parametrize("name,size,tile", [(FAST, (96, 128), 40), ("realesrgan-x4plus-anime", (48, 48), 28)])
def test_tiling_matches_whole_frame(anime, name, size, tile):
    crop = np.ascontiguousarray(anime[60:60 + size[0], 150:150 + size[1]])
    whole = Upscaler(name, precision="fp32").upscale(crop)
    tiled = Upscaler(name, precision="fp32", tile=tile, tile_pad=10).upscale(crop)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) >= 45


def test_default_tile_pad_hides_rrdb_seams(anime):
    """Real-ESRGAN's usual 10-px tile overlap leaves visible seams with an RRDBNet; vsr's default
    overlap (the architecture's tile_context) keeps tiled output within the 45 dB bar. fp32: the
    overlap, not the precision, is under test (bf16 is emulated, 7x slower, on CPUs without it)."""
    crop = np.ascontiguousarray(anime[40:104, 150:342])  # 64 x 192: a row of three 64-px tiles
    name = "realesrgan-x4plus-anime"
    whole = Upscaler(name, precision="fp32").upscale(crop)
    default = Upscaler(name, precision="fp32", tile=64)
    assert default.tile_pad == 48 and Upscaler(FAST).tile_pad == 18  # SRVGG: its exact reach
    from vsr.models import describe_architecture

    assert describe_architecture("srvggnet_compact", {"num_conv": 32}).tile_context == 34  # general-x4v3
    assert describe_architecture("rrdbnet", {"scale": 2}).tile_context == 96  # x2plus: a finer grid
    assert psnr(default.upscale(crop), whole) >= 50
    assert psnr(Upscaler(name, precision="fp32", tile=64, tile_pad=10).upscale(crop), whole) < 45


def test_tiling_rrdb_x2_pixel_unshuffle_odd_size(tmp_path, photo):
    # An RRDBNet x2 needs even input sizes (pixel-unshuffle); odd frames and tiles must work.
    torch.manual_seed(0)
    from vsr.models import build_generator
    from vsr.weights.loader import save_safetensors

    hp = dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    path = tmp_path / "x2.safetensors"
    save_safetensors(path, "rrdbnet", hp, build_generator("rrdbnet", **hp).state_dict())
    crop = np.ascontiguousarray(photo[:41, :57])
    whole = Upscaler(str(path), precision="fp32").upscale(crop)
    tiled = Upscaler(str(path), precision="fp32", tile=17, tile_pad=3).upscale(crop)
    assert whole.shape == tiled.shape == (82, 114, 3)
    assert psnr(tiled, whole) >= 45


def test_out_of_memory_lowers_batch_then_tile(anime):
    up = Upscaler(FAST, precision="fp32", batch_size=2)
    real = up.net

    class PixelBudget(torch.nn.Module):
        """The real network behind a memory budget: larger inputs fail like an allocator does."""

        def forward(self, x):
            if x.numel() > 3 * 52 * 52:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(x)

    crop = np.stack([anime[:64, :64], anime[64:128, :64]])
    ref = Upscaler(FAST, precision="fp32").upscale(crop)
    up.net = PixelBudget()
    out = up.upscale(crop)
    assert up.batch_size == 1 and up.tile == 32
    assert psnr(out, ref) >= 45

    class NoMemory(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory.")

    up.net = NoMemory()
    with pytest.raises(ModelError, match="out of memory on cpu even with tile"):
        up.upscale(crop)


def test_frames_in_parallel_match_one_at_a_time(anime):
    """bf16 on the CPU runs batches two at a time by default, each on half of the threads; every
    frame comes back in its own place, as one-at-a-time computes it, and the caller's torch thread
    count is untouched."""
    auto = Upscaler(FAST, precision="bf16", batch_size=1)
    assert auto.frame_threads == 2  # torch has 2 threads here (set above)
    with pytest.raises(UsageError, match="frame_threads"):
        Upscaler(FAST, frame_threads=0)
    serial = Upscaler(FAST, precision="bf16", batch_size=1, frame_threads=1)
    frames = np.stack([anime[y:y + 40, x:x + 48] for y, x in [(0, 0), (40, 60), (100, 300), (60, 200), (10, 400)]])
    parallel_out = auto.upscale(frames)
    assert torch.get_num_threads() == 2
    assert auto._frame_pool is not None and auto._frame_pool.intra_threads == 1
    serial_out = serial.upscale(frames)
    for i in range(len(frames)):
        assert psnr(parallel_out[i], serial_out[i]) >= 50, i
    # two 1080p passes at once would hold ~2 GB more: one at a time, unless tiled
    assert auto.parallel_fits(720, 1280) and not auto.parallel_fits(1080, 1920)
    assert not auto.parallel_fits(720, 1280, batch=2)
    assert Upscaler(FAST, precision="bf16", tile=256).parallel_fits(1080, 1920)


_NNPACK_FRAMES = r"""
import json, sys
import numpy as np, torch
import vsr
from vsr.engine import nnpack
from vsr.engine.upscaler import Upscaler
torch.set_num_threads(int(sys.argv[4]))
frames = np.load(sys.argv[1])
report = {}
if sys.argv[2] == "lone frame first":  # a single frame makes torch's NNPACK pool on both threads
    Upscaler(sys.argv[3], precision="fp32").upscale(frames[0])
report["pool_before"] = nnpack.pool_threads()
auto = Upscaler(sys.argv[3], precision="fp32")  # small frames: one per pass (batch_size 1)
report["auto_threads"] = auto.frame_threads
two = Upscaler(sys.argv[3], precision="fp32", frame_threads=2, batch_size=1)
out = two.upscale(frames)
report["pool_after"] = nnpack.pool_threads()
report["ran_in_parallel"] = two._frame_pool is not None
report["same_as_serial"] = bool(np.array_equal(out, Upscaler(sys.argv[3], precision="fp32", frame_threads=1).upscale(frames)))
print(json.dumps(report))
"""


@pytest.mark.parametrize("first, threads, expected", [
    ("frames", 2, dict(pool_before=None, auto_threads=2, pool_after=1, ran_in_parallel=True, same_as_serial=True)),
    ("lone frame first", 2, dict(pool_before=2, auto_threads=1, pool_after=2, ran_in_parallel=False,
                                 same_as_serial=True)),
    # two frame threads would get two torch threads each: NNPACK's pool would be two threads wide
    ("frames", 4, dict(pool_before=None, auto_threads=1, pool_after=4, ran_in_parallel=False, same_as_serial=True)),
], ids=["frames", "lone-frame-first", "four-threads"])
def test_fp32_nnpack_frames_side_by_side_only_on_a_one_thread_pool(anime, tmp_path, first, threads, expected):
    """fp32 frames on NNPACK run two at a time when torch's NNPACK pool (one per process, sized
    by its first call) is made by a frame thread with one torch thread: a one-thread pool runs
    each call on its caller. Where a lone frame made it on both threads first, or the frame
    threads would have several torch threads each, frames take turns instead (side by side they
    would only queue). Either way the output is one-at-a-time's, exactly. In a fresh process
    each: the pool lives as long as the process."""
    import json
    import subprocess
    import sys

    frames = np.stack([anime[y:y + 40, x:x + 48] for y, x in [(0, 0), (40, 60), (100, 300), (60, 200)]])
    np.save(tmp_path / "frames.npy", frames)
    r = subprocess.run([sys.executable, "-c", _NNPACK_FRAMES, str(tmp_path / "frames.npy"), first, FAST, str(threads)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.splitlines()[-1]) == expected


_NNPACK_LONE_TILED = r"""
import json, sys
import numpy as np, torch
import vsr
from vsr.engine import nnpack
from vsr.engine.upscaler import Upscaler
torch.set_num_threads(2)
frame = np.load(sys.argv[1])
up = Upscaler(sys.argv[2], precision="fp32")
tiles, _ = up._cache_tiles(*frame.shape[:2], 4)
out = up.upscale(frame)
report = {"tiles": len(tiles), "pool": nnpack.pool_threads(), "ran_in_parallel": up._frame_pool is not None,
          "same_as_serial": bool(np.array_equal(out, Upscaler(sys.argv[2], precision="fp32", frame_threads=1).upscale(frame)))}
print(json.dumps(report))
"""


def test_fp32_lone_frame_in_cache_tiles_convolves_on_both_cores(anime, tmp_path):
    """One fp32 frame too large for the cache runs its tiles on the frame threads, each on a
    one-thread NNPACK pool (1080x720 on 2 cores: 3.5 s against 4.05 s on a two-thread pool),
    with the output of the tiles one after another."""
    import json
    import subprocess
    import sys

    # the real still and its mirror image side by side, 1024x256: 67 MB of fp32 activations
    frame = np.ascontiguousarray(np.concatenate([anime, anime[:, ::-1]], axis=1))
    np.save(tmp_path / "frame.npy", frame)
    r = subprocess.run([sys.executable, "-c", _NNPACK_LONE_TILED, str(tmp_path / "frame.npy"), FAST],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["tiles"] > 1 and report == dict(report, pool=1, ran_in_parallel=True, same_as_serial=True)


def test_out_of_memory_with_frames_in_parallel_goes_one_at_a_time_first(anime):
    up = Upscaler(FAST, precision="bf16", batch_size=2, frame_threads=2)
    real = up.net

    class PixelBudget(torch.nn.Module):
        def forward(self, x):
            if x.numel() > 3 * 52 * 52:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(x)

    crop = np.stack([anime[:64, :64], anime[64:128, :64], anime[:64, 64:128], anime[64:128, 64:128]])
    ref = Upscaler(FAST, precision="bf16", frame_threads=1).upscale(crop)
    up.net = PixelBudget()
    out = up.upscale(crop)  # two batches of two, failing at once on two threads: each step taken once
    assert (up.frame_threads, up.batch_size, up.tile) == (1, 1, 32)
    for i in range(len(crop)):
        assert psnr(out[i], ref[i]) >= 40, i


@pytest.mark.parametrize("outscale,size", [(2.0, (77, 101)), (1.5, (77, 101)), (3.3, (31, 45)), (0.5, (40, 40))])
def test_outscale_and_odd_sizes(anime, fast_fp32, outscale, size):
    up = Upscaler(FAST, precision="fp32", outscale=outscale)
    crop = np.ascontiguousarray(anime[:size[0], :size[1]])
    out = up.upscale(crop)
    w, h = up.output_size(size[1], size[0])
    assert (w, h) == (round(size[1] * outscale), round(size[0] * outscale))
    assert out.shape == (h, w, 3)
    # The resize after the network is close to resizing the x4 output with Pillow's Lanczos.
    x4 = Image.fromarray(fast_fp32.upscale(crop))
    assert psnr(out, np.asarray(x4.resize((w, h), Image.BICUBIC))) >= 35


def test_out_size_override(anime, fast_fp32):
    out = fast_fp32.upscale(anime[:30, :40], out_size=(123, 77))
    assert out.shape == (77, 123, 3)


def test_zoo_x2_is_x4_network_plus_resize(anime, fast_fp32):
    crop = np.ascontiguousarray(anime[:50, :70])
    x2 = Upscaler("realesr-animevideov3-x2", precision="fp32")
    assert x2.model_scale == 2 and x2.output_size(70, 50) == (140, 100)
    out = x2.upscale(crop)
    x4 = fast_fp32.upscale(crop)
    down = torch.nn.functional.interpolate(torch.from_numpy(x4).permute(2, 0, 1)[None].float(),
                                           size=(100, 140), mode="bicubic", align_corners=False)
    assert psnr(out, down.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()) >= 45


def test_uint16_frames(anime, fast_fp32):
    crop8 = np.ascontiguousarray(anime[:32, :48])
    crop16 = crop8.astype(np.uint16) * 257
    out16 = fast_fp32.upscale(crop16[None])
    assert out16.dtype == np.uint16 and out16.shape == (1, 128, 192, 3)
    out8 = fast_fp32.upscale(crop8)
    assert psnr(out16[0], out8.astype(np.uint16) * 257, peak=65535.0) >= 45
    assert out16.max() > 255  # really full-scale 16-bit, not 8-bit values in a uint16 array


@pytest.mark.parametrize("name,pil", [("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)])
def test_resampler_models(photo, name, pil):
    up = Upscaler(name, outscale=2.5)
    assert up.precision == "fp32" and up.scale == 2.5
    out = up.upscale(photo)
    w, h = up.output_size(179, 179)
    ref = np.asarray(Image.fromarray(photo).resize((w, h), pil))
    assert out.shape == ref.shape == (448, 448, 3)
    assert psnr(out, ref) >= 45
    assert Upscaler(name).upscale(photo[:10, :10]).shape == (40, 40, 3)  # default x4


def test_bad_frames(fast_fp32):
    with pytest.raises(UsageError, match="uint8 or uint16"):
        fast_fp32.upscale(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(UsageError, match="RGB"):
        fast_fp32.upscale(np.zeros((2, 4, 4, 4), np.uint8))


def _leader_frames(media_dir, count: int = 2) -> np.ndarray:
    import av

    frames = []
    with av.open(str(media_dir / "leader_320x240_h264_aac.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 60 == 0:
                frames.append(f.to_ndarray(format="rgb24")[40:136, 80:208])  # 128x96 crop
            if len(frames) == count:
                break
    return np.stack(frames)


def test_colour_fix_removes_the_network_tone_shift_and_keeps_detail(media_dir):
    """realesr-animevideov3 brightens the film-leader clip by ~4 levels (ncnn does the same);
    the colour fix pins the output's channel means to the source's, keeping the network's detail."""
    x = _leader_frames(media_dir)
    raw = Upscaler("realesr-animevideov3-x2", precision="fp32").upscale(x)
    fixed = Upscaler("realesr-animevideov3-x2", precision="fp32", colour_fix=True).upscale(x)
    bicubic = Upscaler("bicubic", outscale=2).upscale(x)

    def shift(y: np.ndarray) -> float:
        return float(np.abs(y.reshape(-1, 3).mean(0) - x.reshape(-1, 3).mean(0)).max())

    def gradient_energy(y: np.ndarray) -> float:
        return float(np.abs(np.diff(y.astype(np.float64), axis=2)).mean())

    assert shift(raw) > 2.0  # the network's own shift: what the fix is for
    assert shift(fixed) < 0.5
    # the network's sharpening survives the fix (bicubic is much softer)
    assert gradient_energy(fixed) > 1.1 * gradient_energy(bicubic)
    assert abs(gradient_energy(fixed) - gradient_energy(raw)) < 0.05 * gradient_energy(raw)
    assert psnr(raw, fixed) > 30  # only low frequencies moved


def test_colour_fix_is_a_no_op_for_resamplers(photo):
    crop = photo[:40, :40]
    plain = Upscaler("lanczos", outscale=2).upscale(crop)
    assert np.array_equal(plain, Upscaler("lanczos", outscale=2, colour_fix=True).upscale(crop))


def test_colour_fix_blur_is_the_box_mean(photo):
    """match_colour's separable blur equals the plain (2r+1)^2 box mean of the difference."""
    import torch.nn.functional as F

    from vsr.engine.colour import match_colour

    x = torch.from_numpy(photo[:48, :64].copy()).permute(2, 0, 1)[None].float() / 255
    y = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + 0.03  # a tone shift
    r = 4
    delta = x - F.adaptive_avg_pool2d(y, x.shape[-2:])
    box = F.avg_pool2d(F.pad(delta, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
    expected = y + F.interpolate(box, size=y.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(match_colour(y, x, r), expected, atol=1e-6)
    assert torch.allclose(match_colour(y.contiguous(memory_format=torch.channels_last), x, r), expected, atol=1e-6)


def _onednn_copy(up: Upscaler) -> Upscaler:
    """The same Upscaler with every NNPACK convolution turned back into torch's own."""
    import copy

    from vsr.engine.nnpack import NnpackConv2d

    ref = copy.copy(up)
    ref.net = copy.deepcopy(up.net)
    for m in ref.net.modules():
        if isinstance(m, NnpackConv2d):
            m.__class__ = torch.nn.Conv2d
    return ref


@pytest.mark.parametrize("name,crop", [(FAST, (slice(0, 64), slice(100, 164))),
                                       ("realesrgan-x4plus-anime", (slice(0, 32), slice(0, 48)))])
def test_cpu_fp32_convs_run_on_nnpack_and_match_onednn(anime, name, crop):
    from vsr.engine.nnpack import NnpackConv2d, nnpack_available

    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(f"torch builds NNPACK for x86-64 and ARM only, not {platform.machine()}")
    # torch's x86-64 and ARM wheels build NNPACK in; vsr's fp32 CPU speed comes from it
    assert nnpack_available()
    up = Upscaler(name, device="cpu", precision="fp32", batch_size=2)
    convs = [m for m in up.net.modules() if isinstance(m, torch.nn.Conv2d)]
    on_nnpack = [m for m in convs if isinstance(m, NnpackConv2d)]
    # every 3x3 conv but the first (3 input channels: oneDNN is faster there)
    assert up.nnpack_convs == len(on_nnpack) == len(convs) - 1
    assert convs[0].in_channels == 3 and not isinstance(convs[0], NnpackConv2d)
    a = np.ascontiguousarray(anime[crop])
    frames = np.stack([a, a[::-1, ::-1]])  # a batch of two: NNPACK runs them one by one
    out = up.upscale(frames)
    assert not any(m.nnpack_failed for m in on_nnpack)  # no silent fall-back
    ref = _onednn_copy(up).upscale(frames)
    # Winograd rounds differently from direct convolution: at most one level here and there
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert psnr(out, ref) >= 70
    assert Upscaler(name, precision="bf16").nnpack_convs == 0  # bf16 stays on oneDNN


def test_nnpack_only_up_to_its_pixel_budget(anime, monkeypatch):
    """Large inputs go to oneDNN (NNPACK's workspace grows with the input and is never freed)."""
    from torch.profiler import profile

    import vsr.engine.nnpack as nnpack_module

    up = Upscaler(FAST, device="cpu", precision="fp32")

    def nnpack_calls(frame: np.ndarray) -> tuple[int, np.ndarray]:
        with profile() as prof:
            out = up.upscale(frame)
        return sum(e.count for e in prof.key_averages()
                   if e.key == "aten::_nnpack_spatial_convolution"), out

    monkeypatch.setattr(nnpack_module, "MAX_PIXELS", 40 * 40)
    small, big = np.ascontiguousarray(anime[:32, :40]), np.ascontiguousarray(anime[:48, :64])
    assert nnpack_calls(small)[0] == up.nnpack_convs > 0
    calls, out = nnpack_calls(big)
    assert calls == 0
    ref = _onednn_copy(up).upscale(big)
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_vsr_import_makes_idle_openmp_threads_sleep():
    import os
    import subprocess
    import sys

    code = "import os, vsr, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own choice is kept
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "ACTIVE", run.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cpu_cache_tiles_compute_what_whole_frames_do(anime, monkeypatch, precision):
    """Frames too large for the CPU caches run in even tiles overlapping by SRVGG's exact reach
    (num_conv + 2 px): the output is the whole frame's (bf16: bit for bit; fp32 within one level,
    as NNPACK then takes the tiles). Shrunk cache budget so that a small real crop tiles."""
    import vsr.engine.tiles as tiles_module

    crop = np.ascontiguousarray(anime[:150, :200])
    monkeypatch.setattr(tiles_module, "CPU_CACHE_BYTES", 1 << 40)
    up = Upscaler(FAST, precision=precision, batch_size=1)
    whole = up.upscale(crop)
    bytes_per_value = 2 if precision == "bf16" else 4
    assert up._cache_tiles(150, 200, bytes_per_value) is None
    monkeypatch.setattr(tiles_module, "CPU_CACHE_BYTES", 120 * 120 * 64 * bytes_per_value)
    tiles, pad = up._cache_tiles(150, 200, bytes_per_value)
    # 2 x 2 even tiles of 75 x 100 (93 x 118 with their overlap, within the 120 x 120 budget)
    assert pad == 18 and [(y1 - y0, x1 - x0) for y0, y1, x0, x1 in tiles] == [(75, 100)] * 4
    tiled = up.upscale(crop)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= (0 if precision == "bf16" else 1), diff.max()
    # an out-of-memory error halves the largest cache tile (not the whole frame), and the
    # explicit tiles it then uses overlap by the same exact reach
    x = torch.zeros(1, 3, 150, 200, dtype=up.dtype).contiguous(memory_format=torch.channels_last)
    while up.frame_threads > 1 or up.batch_size > 1:  # what goes first: parallel frames, batch
        up._shrink_after_oom(x, RuntimeError("out of memory"))
    up._shrink_after_oom(x, RuntimeError("out of memory"))
    assert up.tile == 100 // 2 and up.tile_pad == 18
    # networks whose reach is not known exactly (RRDBNet) keep whole frames
    assert Upscaler("realesrgan-x4plus-anime", precision="fp32")._cache_tiles(1080, 1920, 4) is None


def test_an_explicit_tile_size_is_not_replaced_by_cache_tiles(anime, monkeypatch):
    """--tile N: frames up to N x N run whole, larger ones in N x N tiles, whatever the cache."""
    import vsr.engine.tiles as tiles_module

    monkeypatch.setattr(tiles_module, "CPU_CACHE_BYTES", 60 * 60 * 64 * 4)  # any crop would tile
    up = Upscaler(FAST, precision="fp32", tile=128, batch_size=1)
    shapes: list[tuple[int, int]] = []
    hook = up.net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        up.upscale(np.ascontiguousarray(anime[:100, :120]))
        assert shapes == [(100, 120)]  # within the tile: one whole pass
        shapes.clear()
        up.upscale(np.ascontiguousarray(anime[:100, :200]))
        assert shapes == [(100, 128 + 18), (100, 72 + 18)]  # two 128-wide tiles with their overlap
    finally:
        hook.remove()


def test_repeated_frames_are_computed_once_with_the_same_output(anime):
    # Held drawings: A A A B | B C D D | D E E E (chunks of 4). Only A B C D E reach the network;
    # every frame's output equals the network's output for it, across chunk boundaries too.
    from vsr.engine.repeats import RepeatedFrames

    up = Upscaler("realesr-animevideov3-x2", precision="bf16", batch_size=4)
    crops = {k: np.ascontiguousarray(anime[20 * i:20 * i + 32, 40 * i:40 * i + 48]) for i, k in enumerate("ABCDE")}
    near = crops["E"].copy()
    near[5, 7, 1] ^= 1  # one level apart: not a repeat
    order = "AAABBCDDDEEE"
    frames = np.stack([crops[k] for k in order[:-1]] + [near])
    seen: list[np.ndarray] = []

    def upscale(batch: np.ndarray) -> np.ndarray:
        seen.extend(batch)
        return up.upscale(batch)

    reuse = RepeatedFrames(upscale)
    out = np.concatenate([reuse(frames[i:i + 4]) for i in range(0, len(frames), 4)])
    assert reuse.computed == 6 and reuse.reused == 6
    assert len(seen) == 6
    assert [next(k for k in "ABCDE" if np.array_equal(f, crops[k])) if not np.array_equal(f, near) else "E'"
            for f in seen] == ["A", "B", "C", "D", "E", "E'"]
    expected = np.stack([up.upscale(f) for f in frames])  # each frame on its own
    assert np.array_equal(out, expected)
    # a chunk of nothing but repeats of the previous chunk's last frame computes nothing
    again = reuse(np.stack([near, near]))
    assert np.array_equal(again, expected[[-1, -1]]) and reuse.computed == 6
