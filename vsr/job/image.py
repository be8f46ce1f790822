"""`vsr image`: one still image upscaled with the same engine the video path uses.

Grayscale stays grayscale, an alpha channel is upscaled separately by the same network (as
Real-ESRGAN does) and 16-bit PNGs stay 16-bit (read and written through PyAV, since Pillow
reduces 16-bit RGB to 8 bits). The output is written under a temporary name in its own
directory, checked, then renamed into place.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsr.errors import InputError, OutputError, UsageError

log = logging.getLogger("vsr")

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                  ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Picture:
    """Pixels split the way the engine wants them: colour (H,W,3), optional alpha (H,W)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    gray: bool
    bit_depth: int


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24]
    return 8


def read_picture(path: str | os.PathLike) -> Picture:
    """Read an image file into a Picture (InputError with one line when it cannot)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if _png_bit_depth(path) == 16:
            return _read_png16(path)
        return _read_pillow(path)
    except InputError:
        raise
    except Exception as err:  # Pillow / PyAV raise many types for bad files
        msg = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable image ({msg})") from None


def _read_pillow(path: Path) -> Picture:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # users expect the upright picture
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale (TIFF, Pillow's PNG path)
        a = np.asarray(im, dtype=np.int64).clip(0, 65535).astype(np.uint16)
        return Picture(np.repeat(a[..., None], 3, axis=2), None, True, 16)
    if mode in ("L", "LA", "1"):
        a = np.asarray(im.convert("LA"))
        alpha = a[..., 1].copy() if mode == "LA" else None
        return Picture(np.repeat(a[..., :1], 3, axis=2), alpha, True, 8)
    if mode in ("RGBA", "PA", "La"):
        a = np.asarray(im.convert("RGBA"))
        return Picture(np.ascontiguousarray(a[..., :3]), a[..., 3].copy(), False, 8)
    return Picture(np.asarray(im.convert("RGB")), None, False, 8)


def _read_png16(path: Path) -> Picture:
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    fmt = frame.format.name
    gray = fmt.startswith(("gray", "ya"))
    has_alpha = fmt.startswith(("ya", "rgba"))
    if has_alpha:
        a = frame.to_ndarray(format="rgba64le")
        return Picture(np.ascontiguousarray(a[..., :3]), a[..., 3].copy(), gray, 16)
    a = frame.to_ndarray(format="rgb48le")
    return Picture(a, None, gray, 16)


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    # The network was given three equal channels; their mean is the gray answer.
    return np.rint(rgb.astype(np.float32).mean(axis=-1)).astype(rgb.dtype)


def write_picture(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, gray: bool) -> None:
    """Write pixels to ``path`` in the format its extension names (16-bit only as PNG)."""
    fmt = OUTPUT_FORMATS[path.suffix.lower()]
    if rgb.dtype == np.uint16 and fmt == "PNG":
        _write_png16(path, rgb, alpha, gray)
        return
    from PIL import Image

    if rgb.dtype == np.uint16:
        log.warning("%s keeps 8 bits per channel; write .png to keep 16 bits", fmt)
        rgb = (rgb.astype(np.uint32) * 255 + 32767) // 65535
        rgb = rgb.astype(np.uint8)
        alpha = None if alpha is None else ((alpha.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if alpha is not None and fmt in ("JPEG", "BMP"):
        log.warning("%s cannot store transparency; the alpha channel is dropped", fmt)
        alpha = None
    if gray:
        g = _to_gray(rgb)
        im = Image.fromarray(np.dstack([g, alpha]), "LA") if alpha is not None else Image.fromarray(g, "L")
    else:
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA") if alpha is not None else Image.fromarray(rgb, "RGB")
    opts: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    im.save(path, format=fmt, **opts)


def _write_png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, gray: bool) -> None:
    import av

    h, w = rgb.shape[:2]
    if alpha is not None:
        frame = av.VideoFrame.from_ndarray(np.dstack([rgb, alpha]), format="rgba64le")
        pix_fmt = "ya16be" if gray else "rgba64be"
    elif gray:
        frame = av.VideoFrame.from_ndarray(_to_gray(rgb), format="gray16le")
        pix_fmt = "gray16be"
    else:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le")
        pix_fmt = "rgb48be"
    if gray and alpha is not None:
        g = _to_gray(rgb)
        frame = av.VideoFrame.from_ndarray(np.dstack([g, g, g, alpha]), format="rgba64le")
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for packet in stream.encode(frame.reformat(format=pix_fmt)):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if dst.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"{dst}: unknown output image type {dst.suffix or '(none)'} "
                         f"(use {', '.join(sorted(OUTPUT_FORMATS))})")
    if dst.exists() and src.resolve() == dst.resolve():
        raise UsageError(f"{dst}: output would overwrite the input")
    parent = dst.parent if str(dst.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{dst}: {parent} is not a directory")
    if not parent.is_dir():
        raise OutputError(f"{dst}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{dst}: output directory {parent} is not writable")


def upscale_image_file(input: str | os.PathLike, output: str | os.PathLike, *,
                       model: str = "realesrgan-x4plus", outscale: float | None = None,
                       tile: int = 0, device: str = "auto", precision: str = "auto",
                       colour_fix: bool = True, upscaler: Any = None) -> dict[str, Any]:
    """Upscale one image file; returns a JSON-safe summary (output, width, height, model, ...).

    ``upscaler`` reuses an existing Upscaler (its model/device/precision then win).
    """
    from vsr.engine.upscaler import Upscaler

    start = time.perf_counter()
    src, dst = Path(input), Path(output)
    _check_paths(src, dst)
    pic = read_picture(src)
    up = upscaler or Upscaler(model, device=device, precision=precision, tile=tile, outscale=outscale,
                              colour_fix=colour_fix)
    h, w = pic.rgb.shape[:2]
    frames = [pic.rgb]
    if pic.alpha is not None:
        frames.append(np.repeat(pic.alpha[..., None], 3, axis=2))  # same network, like Real-ESRGAN
    out = up.upscale(np.stack(frames))
    rgb, alpha = out[0], (_to_gray(out[1]) if pic.alpha is not None else None)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".part{dst.suffix}", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write_picture(tmp, rgb, alpha, pic.gray)
        except OSError as err:
            raise OutputError(f"{dst}: cannot write ({err.strerror or err})") from None
        check = read_picture(tmp)  # the written file must read back at the promised size
        if check.rgb.shape[:2] != rgb.shape[:2]:
            raise OutputError(f"{dst}: written image has size {check.rgb.shape[1]}x"
                              f"{check.rgb.shape[0]}, expected {rgb.shape[1]}x{rgb.shape[0]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the output is an ordinary file
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    bit_depth = 16 if rgb.dtype == np.uint16 and dst.suffix.lower() == ".png" else 8
    return dict(input=str(src), output=str(dst), model=up.name, width=int(rgb.shape[1]),
                height=int(rgb.shape[0]), input_width=int(w), input_height=int(h), scale=up.scale,
                gray=pic.gray, alpha=pic.alpha is not None, bit_depth=bit_depth,
                device=up.device, precision=up.precision,
                seconds=round(time.perf_counter() - start, 3))
