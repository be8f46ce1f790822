"""YUV <-> RGB with the stream's own matrix and range (swscale, accurate rounding)."""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import Interpolation

from vsr.media.probe import VideoInfo

# Accurate rounding and full chroma interpolation make 8-bit YUV -> RGB -> YUV bit-exact at one size.
EXACT = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
# FFmpeg 8.1's swscale garbles rgb48 output with FULL_CHR_H_INT (channel means off by ~100 levels):
# high bit depth uses bicubic chroma with accurate rounding (round trip within a few 10-bit codes).
HIGH_DEPTH = Interpolation.BICUBIC | Interpolation.ACCURATE_RND

# AVColorSpace (frame/stream tag) -> swscale matrix name.
_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
# AVColorRange: 1 = MPEG (limited), 2 = JPEG (full).
_RANGE = {1: "MPEG", 2: "JPEG"}
_FULL_RANGE_PIX_FMTS = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p"}


def matrix_of(v: VideoInfo) -> str:
    """The YUV matrix: the stream's tag, else BT.709 for HD (>= 720 lines or >= 1280 wide), BT.601 for SD."""
    if v.colorspace in _MATRIX:
        return _MATRIX[v.colorspace]
    return "itu709" if v.height >= 720 or v.width >= 1280 else "itu601"


def matrix_tag_of(v: VideoInfo) -> int:
    """The AVColorSpace value that names matrix_of(v) (written on the output when the source is untagged)."""
    if v.colorspace in _MATRIX:
        return v.colorspace
    return 1 if matrix_of(v) == "itu709" else 6


def range_of(v: VideoInfo) -> str:
    """'MPEG' (limited) or 'JPEG' (full); untagged means limited except for yuvj formats."""
    if v.color_range in _RANGE:
        return _RANGE[v.color_range]
    return "JPEG" if (v.pix_fmt or "") in _FULL_RANGE_PIX_FMTS else "MPEG"


def is_rgb_format(pix_fmt: str) -> bool:
    """True for packed or planar RGB pixel formats (no matrix applies)."""
    name = pix_fmt.lower()
    return name.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr", "x2rgb", "x2bgr"))


def rgb_format(high_depth: bool) -> str:
    """The RGB pixel format of frames handed to the network: rgb24 (uint8) or rgb48le (uint16)."""
    return "rgb48le" if high_depth else "rgb24"


def frame_to_rgb(frame: av.VideoFrame, v: VideoInfo) -> np.ndarray:
    """(H,W,3) uint8, or uint16 for > 8-bit sources, converted with the stream's matrix and range."""
    high = v.bit_depth > 8
    fmt = rgb_format(high)
    flags = HIGH_DEPTH if high else EXACT
    if is_rgb_format(frame.format.name):
        return frame.reformat(format=fmt, interpolation=flags, threads=0).to_ndarray()
    out = frame.reformat(
        format=fmt, src_colorspace=matrix_of(v), src_color_range=range_of(v),
        dst_color_range="JPEG", interpolation=flags, threads=0,
    )
    return out.to_ndarray()


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, matrix: str, color_range: str) -> av.VideoFrame:
    """An encoder-ready frame in pix_fmt from (H,W,3) uint8/uint16 RGB, the inverse of frame_to_rgb."""
    high = rgb.dtype == np.uint16
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=rgb_format(high))
    flags = HIGH_DEPTH if high else EXACT
    if is_rgb_format(pix_fmt):
        return src.reformat(format=pix_fmt, interpolation=flags, threads=0)
    return src.reformat(
        format=pix_fmt, src_color_range="JPEG", dst_colorspace=matrix, dst_color_range=color_range,
        interpolation=flags, threads=0,  # swscale slices over the cores
    )
