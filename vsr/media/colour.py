"""YUV <-> RGB with the stream's own matrix and range (swscale, accurate rounding)."""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import Interpolation

from vsr.errors import InputError
from vsr.media.probe import VideoInfo

# Accurate rounding and full chroma interpolation make 8-bit YUV -> RGB -> YUV bit-exact at one size.
EXACT = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
# FFmpeg 8.1's swscale garbles rgb48 output with FULL_CHR_H_INT (channel means off by ~100 levels):
# high bit depth uses bicubic chroma with accurate rounding (round trip within a few 10-bit codes).
HIGH_DEPTH = Interpolation.BICUBIC | Interpolation.ACCURATE_RND

# AVColorSpace (frame/stream tag) -> swscale matrix name.
_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020"}
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
    """'MPEG' (limited) or 'JPEG' (full); untagged means limited except for yuvj, RGB and gray formats.

    RGB samples are full range by definition, and swscale reads and writes gray samples as full
    range whatever the range tag says (its handle_jpeg), so an untagged RGB or gray source is full
    range: that is how its samples reach the network, and what its output must be tagged.
    """
    if v.color_range in _RANGE:
        return _RANGE[v.color_range]
    fmt = v.pix_fmt or ""
    if fmt in _FULL_RANGE_PIX_FMTS or is_rgb_format(fmt) or is_gray_format(fmt):
        return "JPEG"
    return "MPEG"


# AVColorSpace values swscale has no matrix for: converting with a BT.601/709 default would
# change every colour, so such a source is refused before any work (check_convertible).
_UNCONVERTIBLE_MATRIX = {
    0: "RGB/GBR (on a YUV pixel format)", 3: "reserved", 8: "YCgCo",
    10: "BT.2020 constant luminance: not the non-constant matrix swscale has", 11: "SMPTE ST 2085 (Y'D'zD'x)",
    12: "chroma-derived non-constant luminance", 13: "chroma-derived constant luminance",
    14: "ICtCp", 15: "IPT-C2", 16: "YCgCo-R (even)", 17: "YCgCo-R (odd)",
}


def check_convertible(v: VideoInfo, where: str = "") -> None:
    """InputError (one line) when the source's YUV matrix is one vsr cannot convert to RGB and back."""
    fmt = v.pix_fmt or ""
    if is_rgb_format(fmt) or is_gray_format(fmt) or v.colorspace in _MATRIX or v.colorspace in (2, None):
        return
    name = _UNCONVERTIBLE_MATRIX.get(v.colorspace, "unknown")
    raise InputError(f"{where}{v.pix_fmt} video with colour matrix {v.colorspace} ({name}): vsr cannot convert "
                     "this matrix to RGB and back (BT.601, BT.709, BT.2020 non-constant luminance, FCC and SMPTE 240M only)")


def is_gray_format(pix_fmt: str) -> bool:
    """True for integer gray (luma only) pixel formats, with or without alpha (gray*, ya8, ya16)."""
    name = pix_fmt.lower()
    return name.startswith(("gray", "ya8", "ya16")) and not name.startswith("grayf")


def has_alpha(pix_fmt: str | None) -> bool:
    """True when the pixel format has an alpha plane/component (yuva*, gbrap*, rgba, ya8, ...)."""
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt or "").components)
    except (ValueError, av.error.FFmpegError):
        return False


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
    if is_gray_format(frame.format.name):
        return gray_to_rgb(frame, high, range_of(v) == "JPEG")
    out = frame.reformat(
        format=fmt, src_colorspace=matrix_of(v), src_color_range=range_of(v),
        dst_color_range="JPEG", interpolation=flags, threads=0,
    )
    return out.to_ndarray()


def rgb_to_frame(rgb: np.ndarray, pix_fmt: str, matrix: str, color_range: str,
                 alpha: np.ndarray | None = None) -> av.VideoFrame:
    """An encoder-ready frame in pix_fmt from (H,W,3) uint8/uint16 RGB, the inverse of frame_to_rgb.

    alpha: (H,W) straight alpha of the same dtype (full scale), for a pix_fmt with an alpha plane
    (alpha_to_frame); the colour is converted exactly as without it."""
    if alpha is not None:
        return alpha_to_frame(rgb, alpha, pix_fmt, matrix, color_range)
    high = rgb.dtype == np.uint16
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=rgb_format(high))
    flags = HIGH_DEPTH if high else EXACT
    if is_rgb_format(pix_fmt):
        return src.reformat(format=pix_fmt, interpolation=flags, threads=0)
    if is_gray_format(pix_fmt):
        return rgb_to_gray(rgb, pix_fmt, matrix, color_range == "JPEG")
    return src.reformat(
        format=pix_fmt, src_color_range="JPEG", dst_colorspace=matrix, dst_color_range=color_range,
        interpolation=flags, threads=0,  # swscale slices over the cores
    )


# ---------------------------------------------------------------- alpha
# Video codecs store straight (not premultiplied) alpha, and so does vsr: the colour planes are
# converted as without alpha, and the alpha plane is moved between the frame and a full-scale
# (H,W) array (uint8, or uint16 for > 8-bit sources, as the RGB frames) on its own, scaled to the
# plane's bits with rounding. An alpha plane of its own (yuva*, gbrap*) is read and written in
# place; packed formats (argb, bgra, ya8...) go through swscale's rgba / rgba64le, a reordering.


def _alpha_component(pix_fmt: str) -> "av.video.format.VideoFormatComponent | None":
    try:
        return next((c for c in av.VideoFormat(pix_fmt).components if c.is_alpha), None)
    except (ValueError, av.error.FFmpegError):
        return None


def _own_alpha_plane(pix_fmt: str) -> bool:
    """The alpha is a plane of its own, stored native little-endian (or 8-bit)."""
    fmt = av.VideoFormat(pix_fmt)
    comp = _alpha_component(pix_fmt)
    return (comp is not None and sum(c.plane == comp.plane for c in fmt.components) == 1
            and (comp.bits <= 8 or pix_fmt.endswith("le")))


def _rescale(values: np.ndarray, from_top: int, to_top: int, dtype: type) -> np.ndarray:
    if from_top == to_top:
        return values.astype(dtype, copy=False)
    scaled = np.rint(values.astype(np.float32) * (to_top / from_top))
    return np.clip(scaled, 0, to_top).astype(dtype)


def alpha_of(frame: av.VideoFrame, high: bool) -> np.ndarray:
    """The frame's straight alpha as (H,W) uint8, or uint16 when high (full scale); opaque for a
    frame without alpha (a VP8/VP9 frame whose packet carried no alpha data)."""
    top, dtype = (65535, np.uint16) if high else (255, np.uint8)
    name = frame.format.name
    comp = _alpha_component(name)
    if comp is None:
        return np.full((frame.height, frame.width), top, dtype)
    if _own_alpha_plane(name):
        plane = frame.planes[comp.plane]
        sample = np.dtype(np.uint8 if comp.bits <= 8 else "<u2")
        rows = np.frombuffer(plane, sample).reshape(-1, plane.line_size // sample.itemsize)
        return _rescale(rows[:frame.height, :frame.width], (1 << comp.bits) - 1, top, dtype)
    wide = comp.bits > 8
    rgba = frame.to_ndarray(format="rgba64le" if wide else "rgba")
    return _rescale(rgba[..., 3], 65535 if wide else 255, top, dtype)


def alpha_to_frame(rgb: np.ndarray, alpha: np.ndarray, pix_fmt: str, matrix: str,
                   color_range: str) -> av.VideoFrame:
    """A frame in pix_fmt (one with an alpha plane) from (H,W,3) RGB and its (H,W) straight alpha,
    both uint8 or both uint16 (full scale)."""
    comp = _alpha_component(pix_fmt)
    if comp is None:
        raise ValueError(f"pix_fmt {pix_fmt} has no alpha plane")
    if alpha.shape != rgb.shape[:2] or alpha.dtype != rgb.dtype:
        raise ValueError(f"alpha {alpha.shape} {alpha.dtype} does not fit RGB {rgb.shape} {rgb.dtype}")
    top = 65535 if rgb.dtype == np.uint16 else 255
    if not _own_alpha_plane(pix_fmt):
        rgba = np.ascontiguousarray(np.dstack([rgb, alpha]))
        src = av.VideoFrame.from_ndarray(rgba, format="rgba64le" if top > 255 else "rgba")
        return src.reformat(format=pix_fmt, interpolation=HIGH_DEPTH if top > 255 else EXACT, threads=0)
    frame = rgb_to_frame(rgb, pix_fmt, matrix, color_range)  # the alpha plane comes out opaque
    plane = frame.planes[comp.plane]
    sample = np.dtype(np.uint8 if comp.bits <= 8 else "<u2")
    rows = np.frombuffer(plane, sample).reshape(-1, plane.line_size // sample.itemsize)
    rows[:frame.height, :frame.width] = _rescale(alpha, top, (1 << comp.bits) - 1, sample)
    return frame


# Gray is converted here, not by swscale: swscale reads and writes gray samples as full range
# whatever range it is given (a limited-range source would reach the network unexpanded and its
# output be mislabelled), and its > 8-bit RGB -> gray has a gain error (10-bit code 940 -> 943).
# Luma weights (Kr, Kb) by matrix for RGB -> gray; BT.601 for the others.
_LUMA = {"itu709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593), "smpte240m": (0.212, 0.087)}


def _bits(pix_fmt: str) -> int:
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def gray_to_rgb(frame: av.VideoFrame, high: bool, full: bool) -> np.ndarray:
    """(H,W,3) full-range RGB (uint16 when high, else uint8) from a gray (or gray+alpha) frame whose
    samples are full (`full`) or limited range; the alpha of ya8/ya16 is not read."""
    if not frame.format.name.startswith("gray"):
        frame = frame.reformat(format="gray" if frame.format.name == "ya8" else "gray16le")
    bits = _bits(frame.format.name)
    y = frame.to_ndarray().astype(np.float32)
    top = 65535 if high else 255
    if full:
        x = y * (top / ((1 << bits) - 1))
    else:
        x = (y - (16 << (bits - 8))) * (top / (219 << (bits - 8)))
    x = np.clip(np.rint(x), 0, top).astype(np.uint16 if high else np.uint8)
    return np.repeat(x[..., None], 3, axis=2)


def rgb_to_gray(rgb: np.ndarray, pix_fmt: str, matrix: str, full: bool) -> av.VideoFrame:
    """A gray frame in pix_fmt from (H,W,3) full-range RGB: the matrix's luma, written full or
    limited range (the inverse of gray_to_rgb for gray pictures)."""
    kr, kb = _LUMA.get(matrix, (0.299, 0.114))
    x = rgb.astype(np.float32)
    y = (kr * x[..., 0] + (1 - kr - kb) * x[..., 1] + kb * x[..., 2]) / (65535 if rgb.dtype == np.uint16 else 255)
    bits = _bits(pix_fmt)
    codes = y * ((1 << bits) - 1) if full else (16 << (bits - 8)) + y * (219 << (bits - 8))
    codes = np.clip(np.rint(codes), 0, (1 << bits) - 1).astype(np.uint8 if bits <= 8 else np.uint16)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(codes), format=pix_fmt)


def to_rgb24(frame: av.VideoFrame) -> np.ndarray:
    """(H,W,3) uint8 RGB of a decoded frame as a player shows it: swscale with the frame's own tags,
    except gray tagged limited range, which swscale would read as full (gray_to_rgb)."""
    if is_gray_format(frame.format.name) and frame.color_range == 1:
        return gray_to_rgb(frame, False, False)
    return frame.to_ndarray(format="rgb24")
