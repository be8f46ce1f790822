"""Encoding options that keep bit depth and colour, and SegmentWriter: RGB frames -> a segment file."""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Collection, Sequence

import av
import numpy as np

from vsr.errors import OutputError, UsageError
from vsr.media.captions import CAPTION_CODECS, with_captions
from vsr.media.colour import (check_convertible, has_alpha, is_gray_format, is_rgb_format, matrix_of, matrix_tag_of,
                               range_of, rgb_to_frame)
from vsr.media.containers import VIDEO_CODECS, muxer_for
from vsr.media.heap import filled_heap
from vsr.media.probe import MediaInfo

# SVT-AV1 prints a banner and its whole configuration (~20 lines) at every encoder start, i.e.
# for every segment, which Ray forwards to the console; level 2 keeps its warnings and errors.
# Read when an encoder starts, so setting it here is in time. A user's own SVT_LOG wins.
os.environ.setdefault("SVT_LOG", "2")

log = logging.getLogger("vsr.media")

SEGMENT_MUXER = "nut"  # keeps any time base and B-frame pts/dts exactly
# Codecs NUT cannot hold go into QuickTime segments (any timescale; these are intra-only, dts = pts).
SEGMENT_MUXER_FALLBACK = {"prores_ks": "mov", "prores_aw": "mov"}
SEGMENT_SUFFIX = ".nut"
# VP8/VP9 alpha rides beside the picture as packet side data (Matroska BlockAdditional), which NUT
# drops: those segments are Matroska (millisecond times; assemble maps them to the frames' pts).
ALPHA_SIDE_DATA_CODECS = frozenset({"libvpx", "libvpx-vp9"})

# Encoders that carry an alpha channel, and the output muxers that keep it. VP9 stores it as WebM
# BlockAdditional data (Matroska only, not MP4; libvpx-vp9 encodes yuva420p only); ProRes 4444
# and FFV1 in their own bitstream.
ALPHA_CARRIERS = {"libvpx-vp9": frozenset({"webm", "matroska"}), "prores_ks": frozenset({"mov", "matroska", "nut"}),
                  "ffv1": frozenset({"matroska", "nut"})}
# with an alpha channel and no --codec: the carrier each container gets
_DEFAULT_ALPHA_CODEC = {"webm": "libvpx-vp9", "mov": "prores_ks", "matroska": "ffv1", "nut": "ffv1"}
_ALPHA_HELP = "use .webm (VP9 with alpha), .mov (ProRes 4444) or .mkv (FFV1)"
_ALPHA_NAMES = {"vp8 alpha": "VP8 alpha", "vp9 alpha": "VP9 alpha"}  # VideoInfo.alpha, as messages say it

_DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libsvtav1": 28, "libvpx-vp9": 28, "h264_nvenc": 19,
                "hevc_nvenc": 21, "av1_nvenc": 28}
_DEFAULT_PRESET = {"libx264": "medium", "libx265": "medium", "libsvtav1": "8", "h264_nvenc": "p5",
                   "hevc_nvenc": "p5", "av1_nvenc": "p5"}
_LOSSLESS = {"ffv1"}
# x264's preset names as libvpx-vp9's (deadline, cpu-used): realtime for the two fastest, whose
# speeds "good" does not reach; "good" 5..0 for the rest, as libvpx's own guide ranks them
VP9_SPEED_OF_PRESET = {"ultrafast": ("realtime", "8"), "superfast": ("realtime", "7"),
                       "veryfast": ("good", "5"), "faster": ("good", "4"), "fast": ("good", "3"),
                       "medium": ("good", "2"), "slow": ("good", "1"), "slower": ("good", "1"),
                       "veryslow": ("good", "0"), "placebo": ("best", "0")}
# Encoders whose stream was seen to depend on what the heap held: their calls run inside
# filled_heap() (heap.py). libx265, libsvtav1, libvpx-vp9, ffv1 and prores_ks gave the same stream
# whatever it held (tests/test_media_heap.py) and are left alone: the filling slows whatever runs
# meanwhile (libx265 alone encoded 6% slower with it on an H200's 16 cores).
NEEDS_FILLED_HEAP = frozenset({"libx264"})
# ProRes is limited range by its specification and its bitstream has no range flag: FFmpeg reads
# any ProRes (MOV or MKV) back as limited, so full-range samples would be shown stretched. A
# full-range source is converted to limited range for these (encoder and decoder names).
LIMITED_RANGE_ONLY = frozenset({"prores_ks", "prores_aw", "prores"})
# Encoders named in the advice when a codec cannot keep the source's depth, in this order.
_DEEP_ENCODERS = ("libx265", "ffv1", "prores_ks", "libsvtav1")


@dataclass
class EncodeOptions:
    """Video encoder settings; None means 'choose a default that keeps the source's depth/colour'."""

    codec: str | None = None
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # encode a source's alpha channel away (else it is kept, or the output refused if it cannot hold it)
    drop_alpha: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (drop_alpha only when set: the settings fingerprint of every other
        job, and so the job tag of outputs made before the option existed, stays the same)."""
        d = asdict(self)
        if not self.drop_alpha:
            del d["drop_alpha"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EncodeOptions":
        """Inverse of to_dict (unknown keys are a UsageError)."""
        d = dict(d or {})
        unknown = set(d) - {"codec", "crf", "preset", "pix_fmt", "extra", "drop_alpha"}
        if unknown:
            raise UsageError(f"unknown encode option(s): {', '.join(sorted(unknown))}")
        drop_alpha = d.get("drop_alpha", False)
        if not isinstance(drop_alpha, bool):
            raise UsageError(f"drop_alpha must be true or false, not {drop_alpha!r}")
        return cls(codec=d.get("codec"), crf=d.get("crf"), preset=d.get("preset"),
                   pix_fmt=d.get("pix_fmt"), extra={str(k): str(v) for k, v in (d.get("extra") or {}).items()},
                   drop_alpha=drop_alpha)


def _encoder(name: str) -> av.codec.Codec:
    try:
        return av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError, KeyError):
        raise UsageError(f"video encoder {name!r} is not available in this FFmpeg build") from None


def is_nvenc(codec: str | None) -> bool:
    """Whether this encoder is NVIDIA's hardware encoder (it needs NVENC where it runs)."""
    return bool(codec) and str(codec).endswith("_nvenc")


def nvenc_available(name: str = "h264_nvenc") -> bool:
    """True when the NVENC encoder exists and an NVIDIA GPU answers (opens a tiny encoder)."""
    try:
        cc = av.CodecContext.create(name, "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = 256, 256, "yuv420p", Fraction(1, 25)
        cc.open()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def _chroma(pix_fmt: str) -> tuple[int, int]:
    fmt = av.VideoFormat(pix_fmt, 64, 64)
    if len(fmt.components) < 3 or is_rgb_format(pix_fmt):
        return 0, 0
    c1 = fmt.components[1]
    return (1 if c1.width < 64 else 0), (1 if c1.height < 64 else 0)


def _depth(pix_fmt: str) -> int:
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def choose_pix_fmt(codec: str, source_pix_fmt: str | None, source_depth: int, alpha: bool = False) -> str:
    """The encoder's pixel format closest to the source: same depth (never lower) and chroma layout;
    with an alpha plane when `alpha` (one the encoder carries alpha in: alpha_formats), else without."""
    if alpha:
        formats = alpha_formats(codec)
    else:  # a format with an alpha plane would only get an opaque one
        formats = [f.name for f in (_encoder(codec).video_formats or [])]
        formats = [f for f in formats if not f.startswith("yuvj") and f != "cuda" and not has_alpha(f)]
    src = (source_pix_fmt or "yuv420p").replace("yuvj", "yuv")
    if src in formats:
        return src
    try:
        want_chroma = _chroma(src)
    except (ValueError, av.error.FFmpegError):
        want_chroma = (1, 1)
    src_rgb = is_rgb_format(src)

    def score(f: str) -> tuple:
        d = _depth(f)
        # Never lower the depth, keep RGB/YUV and the chroma layout, closest depth, no alpha plane.
        return (d < source_depth, is_rgb_format(f) != src_rgb, _chroma(f) != want_chroma,
                abs(d - source_depth), len(av.VideoFormat(f).components) > 3)

    usable = [f for f in formats if _safe(_depth, f) and _safe(_chroma, f)]
    if not usable:
        raise UsageError(f"encoder {codec} offers no usable pixel format")
    best = min(usable, key=score)
    return best


def alpha_formats(codec: str) -> list[str]:
    """The pixel formats this encoder carries an alpha channel in (none for most): libvpx-vp9 only
    yuva420p; gray+alpha and float formats are left out (vsr's frames are RGB)."""
    if codec not in ALPHA_CARRIERS:
        return []
    if codec == "libvpx-vp9":
        return ["yuva420p"]
    names = [f.name for f in (_encoder(codec).video_formats or [])]
    return [f for f in names if has_alpha(f) and not is_gray_format(f) and not f.startswith("ya")
            and not f.endswith(("f16le", "f32le", "f16be", "f32be"))]


def source_alpha(video: Any) -> str | None:
    """The source's alpha channel as messages name it (its pix_fmt, or "VP8 alpha" / "VP9 alpha":
    WebM BlockAdditional data, which FFmpeg's own decoders ignore), or None. Probe read it from the
    data: WebM's alpha_mode=1 tag alone is no alpha (live recorders set it on every track)."""
    if has_alpha(video.pix_fmt):
        return video.pix_fmt
    alpha = getattr(video, "alpha", "none")
    return None if alpha in (None, "none") else _ALPHA_NAMES.get(alpha, alpha)


def _safe(fn, arg) -> bool:
    try:
        fn(arg)
        return True
    except (ValueError, av.error.FFmpegError):
        return False


def resolve_encode_options(info: MediaInfo, output_path: str | os.PathLike,
                           requested: EncodeOptions | None = None, *,
                           nvenc: Collection[str] | None = None) -> EncodeOptions:
    """Fill the defaults (codec by container, depth and alpha, pix_fmt keeping depth/chroma/alpha,
    crf, preset).

    Raises UsageError for an unknown extension, a codec the container cannot hold, an output that
    cannot carry the source's alpha channel (unless drop_alpha), a default that would lower a
    >8-bit source's depth, or output == input; OutputError (from plan_streams) when a source
    stream cannot go into the container and no faithful conversion exists.

    An NVENC encoder must open on the machine that encodes: `nvenc` None checks this one; else it
    names the NVENC encoders known to open where the frames will be encoded (every worker of a
    cluster: the cluster layer asks them), and only those pass.
    """
    req = requested or EncodeOptions()
    muxer = muxer_for(output_path)
    if Path(output_path).resolve() == Path(info.path).resolve():
        raise UsageError(f"{output_path}: output would overwrite the input")
    depth = info.video.bit_depth
    alpha = source_alpha(info.video)
    keep_alpha = bool(alpha) and not req.drop_alpha
    codec = req.codec or _default_codec(muxer, depth, keep_alpha)
    enc = _check_encoder(codec, muxer, output_path, nvenc)
    where = f"{Path(info.path).name}: "
    check_convertible(info.video, where)  # a matrix swscale lacks: refused now, not by verify
    # A mirroring display matrix is no refusal: the output carries the source's matrix as it is.
    src_fmt = info.video.pix_fmt
    if keep_alpha:
        pix_fmt = _alpha_pix_fmt(codec, muxer, req, src_fmt, depth, alpha, output_path)
    else:
        pix_fmt = req.pix_fmt or choose_pix_fmt(codec, src_fmt, depth)
    names = [f.name for f in (enc.video_formats or [])]
    if names and pix_fmt not in names:
        raise UsageError(f"encoder {codec} cannot take pix_fmt {pix_fmt}; it takes {', '.join(names[:12])}")
    if has_alpha(pix_fmt) and not keep_alpha:
        raise UsageError(f"pix_fmt {pix_fmt} has an alpha plane, which vsr would fill opaque (the "
                         f"{'source has no alpha channel' if not alpha else 'alpha channel is dropped'}); "
                         "choose a pix_fmt without one")
    if _depth(pix_fmt) < depth:
        if req.pix_fmt is None:  # the defaults never lower the depth
            if keep_alpha:
                raise UsageError(f"{codec} carries alpha in {pix_fmt} ({_depth(pix_fmt)}-bit), below the source's "
                                 f"{depth}-bit depth; use {_alpha_depth_hint(codec, src_fmt, depth, muxer)}, or "
                                 f"--pix-fmt {pix_fmt} to lower it")
            raise UsageError(f"{codec} cannot keep the source's {depth}-bit depth; use "
                             f"{_deeper_hint(src_fmt, depth, muxer, codec)}")
        # an explicit pix_fmt is the user's decision (verify accepts exactly this depth)
        _warn_once(f"{where}--pix-fmt {pix_fmt} lowers the bit depth from {depth} to {_depth(pix_fmt)} bits,"
                   " as requested")
    if alpha and not keep_alpha:
        _warn_once(f"{where}dropping the alpha channel of the {alpha} video, as requested (drop_alpha):"
                   f" the output ({pix_fmt}) has none")
    crf = req.crf if req.crf is not None else _DEFAULT_CRF.get(codec)
    preset = req.preset if req.preset is not None else _DEFAULT_PRESET.get(codec)
    if codec in _LOSSLESS or codec == "prores_ks":
        crf = req.crf  # not a crf encoder: only pass what the user asked for
    from vsr.media.streams import plan_streams

    plan_streams(info, output_path)  # a stream the container cannot hold refuses the job now
    resolved = EncodeOptions(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt, extra=dict(req.extra),
                             drop_alpha=req.drop_alpha)
    if not is_nvenc(codec):  # NVENC opens only where its GPU is (the workers ask it: WorkerPool)
        check_encoder_opens(resolved)
    return resolved


def _default_codec(muxer: str, depth: int, keep_alpha: bool) -> str:
    """The encoder a container gets without --codec: one that carries alpha when it is kept (MP4
    has none: the refusal then names the default it would have used)."""
    if keep_alpha and muxer in _DEFAULT_ALPHA_CODEC:
        return _DEFAULT_ALPHA_CODEC[muxer]
    if muxer == "webm":
        return "libsvtav1" if depth > 8 else "libvpx-vp9"
    return "libx265" if depth > 8 else "libx264"


def _check_encoder(codec: str, muxer: str, output_path: str | os.PathLike,
                   nvenc: Collection[str] | None) -> av.codec.Codec:
    """The encoder, once it is known to be a video encoder the container holds (and, for NVENC,
    one that opens where the frames are encoded)."""
    enc = _encoder(codec)
    if enc.type != "video":
        raise UsageError(f"{codec} is not a video encoder")
    if codec not in VIDEO_CODECS[muxer]:
        holders = [ext for ext, m in (("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4"), ("webm", "webm"))
                   if codec in VIDEO_CODECS[m]]
        raise UsageError(f"{Path(output_path).name}: container {muxer} cannot hold {codec} video;"
                         f" use {' or '.join('.' + h for h in holders) or 'another codec'}")
    if is_nvenc(codec):
        if nvenc is None and not nvenc_available(codec):
            raise UsageError(f"encoder {codec} needs an NVIDIA GPU with NVENC, none answered")
        if nvenc is not None and codec not in nvenc:
            raise UsageError(f"encoder {codec} needs an NVIDIA GPU with NVENC on every worker, "
                             "and not every worker has one")
    return enc


def _alpha_pix_fmt(codec: str, muxer: str, req: EncodeOptions, src_fmt: str | None, depth: int, alpha: str,
                   output_path: str | os.PathLike) -> str:
    """The pix_fmt that carries the source's alpha channel in this encoder and container: the
    requested one, or the closest to the source (choose_pix_fmt). UsageError (one line, naming
    outputs that can) when this encoder or container cannot carry it, or the requested pix_fmt
    has no alpha plane."""
    out = Path(output_path)
    drop = "--drop-alpha (job spec: [encode] drop_alpha = true) to encode without it"
    if muxer not in ALPHA_CARRIERS.get(codec, ()):
        here = [c for c, muxers in ALPHA_CARRIERS.items() if muxer in muxers]
        fix = f"use --codec {' or '.join(here)}" if req.codec and here else _ALPHA_HELP
        raise UsageError(f"{out.name}: {codec} in {out.suffix.lower()} cannot carry the alpha channel of the "
                         f"source ({alpha}); {fix}, or {drop}")
    formats = alpha_formats(codec)
    if req.pix_fmt is not None and req.pix_fmt not in formats:
        why = "has no alpha plane" if not has_alpha(req.pix_fmt) else f"is not one {codec} carries alpha in"
        raise UsageError(f"pix_fmt {req.pix_fmt} {why}: the source's alpha channel ({alpha}) would be lost; use "
                         f"{' or '.join(formats[:6])}, or {drop}")
    return req.pix_fmt or choose_pix_fmt(codec, src_fmt, depth, alpha=True)


def _alpha_depth_hint(codec: str, src_fmt: str | None, depth: int, muxer: str) -> str:
    """Encoders that carry alpha at this depth: "--codec X" in this container, else "X in .mkv"
    (every alpha carrier goes into Matroska)."""
    fit = [c for c in ALPHA_CARRIERS if c != codec and _depth(choose_pix_fmt(c, src_fmt, depth, alpha=True)) >= depth]
    here = [f"--codec {c}" for c in fit if muxer in ALPHA_CARRIERS[c]]
    return " or ".join(here or [f"{c} in .mkv" for c in fit]) or "an encoder that offers it"


def segment_muxer(options: EncodeOptions) -> str:
    """The muxer of a segment file: NUT (any time base, exact pts and dts), QuickTime for ProRes
    (NUT cannot hold it), Matroska for VP8/VP9 with alpha (NUT drops its BlockAdditional data)."""
    if options.codec in ALPHA_SIDE_DATA_CODECS and has_alpha(options.pix_fmt):
        return "matroska"
    return SEGMENT_MUXER_FALLBACK.get(options.codec or "", SEGMENT_MUXER)


def check_encoder_opens(opts: EncodeOptions) -> None:
    """UsageError (one line) when the encoder refuses these options (a crf out of range, an unknown
    preset, a bad value of an option it knows): found now, on a tiny frame, not by every worker
    after start-up. (An option name it does not know is ignored by FFmpeg, here as in the workers.)"""
    cc = av.CodecContext.create(opts.codec, "w")
    cc.width, cc.height, cc.pix_fmt = 64, 64, opts.pix_fmt
    cc.time_base = Fraction(1, 25)
    cc.framerate = Fraction(25, 1)
    wanted = _encoder_options(opts)
    cc.options = dict(wanted)
    try:
        cc.open(strict=False)
    except (av.error.FFmpegError, OverflowError, ValueError) as err:
        given = ", ".join(f"{k}={v}" for k, v in wanted.items() if k in ("crf", "preset", "cq", *opts.extra))
        raise UsageError(f"encoder {opts.codec} refuses its options ({given}): "
                         f"{' '.join(str(err).split())[:160]}") from None
    finally:
        try:
            cc.close()
        except (AttributeError, av.error.FFmpegError):
            pass


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a planning warning once per process (a job resolves its options more than once)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _deeper_hint(source_pix_fmt: str | None, depth: int, muxer: str, codec: str) -> str:
    """Encoders that keep this depth, preferably in this container and with the same chroma layout
    and RGB/YUV family (only those the advice may name)."""
    src = (source_pix_fmt or "yuv420p").replace("yuvj", "yuv")
    try:
        layout = (is_rgb_format(src), _chroma(src))
    except (ValueError, av.error.FFmpegError):
        layout = (False, (1, 1))

    def keeps(name: str, same_layout: bool) -> bool:
        try:
            f = choose_pix_fmt(name, src, depth)
        except UsageError:
            return False
        return _depth(f) >= depth and (not same_layout or (is_rgb_format(f), _chroma(f)) == layout)

    exts = (("mkv", "matroska"), ("mov", "mov"), ("mp4", "mp4"), ("webm", "webm"))
    for same_layout in (True, False):
        fit = [c for c in _DEEP_ENCODERS if c != codec and keeps(c, same_layout)]
        here = [c for c in fit if c in VIDEO_CODECS[muxer]]
        if here:
            return " or ".join(here)
        there = [f"{c} in .{next(e for e, m in exts if c in VIDEO_CODECS[m])}" for c in fit]
        if there:
            return " or ".join(there)
    return "an encoder that offers it"


def output_range(v: Any, codec: str | None, pix_fmt: str) -> str:
    """The range ('MPEG'/'JPEG') the output's samples are written in and tagged with: the source's
    (colour.range_of: full for an RGB source, so its YUV output is full range too), except full for
    RGB output (RGB samples always are) and limited for encoders that cannot signal full range
    (LIMITED_RANGE_ONLY: a deliberate full -> limited conversion, which verify accepts)."""
    if is_rgb_format(pix_fmt):
        return "JPEG"
    if codec in LIMITED_RANGE_ONLY:
        return "MPEG"
    return range_of(v)


def encoded_size(pix_fmt: str, width: int, height: int) -> tuple[int, int]:
    """The frame size an encoder with this pix_fmt accepts: rounded up to the chroma block (even for 4:2:0)."""
    cw, ch = _chroma(pix_fmt)
    return width + (width % 2 if cw else 0), height + (height % 2 if ch else 0)


def _hdr_options(codec: str, hdr: dict | None) -> list[str]:
    """x265 / SVT-AV1 parameters that write the source's HDR10 mastering display and light levels."""
    if not hdr:
        return []
    md, cll = hdr.get("master_display"), hdr.get("max_cll")
    if codec == "libx265":
        return (["hdr10=1"] + ([f"master-display={md}"] if md else [])
                + ([f"max-cll={cll[0]},{cll[1]}"] if cll else []))
    if codec == "libsvtav1":
        params = []
        if md:
            nums = [int(x) for x in md.replace("WP", "").replace("L", "").translate(
                str.maketrans("GBR(),", "      ")).split()]
            g, b, r, wp = nums[0:2], nums[2:4], nums[4:6], nums[6:8]
            xy = lambda p: f"({p[0] / 50000:.5f},{p[1] / 50000:.5f})"  # noqa: E731
            lum = f"L({nums[8] / 10000:.4f},{nums[9] / 10000:.4f})" if len(nums) >= 10 else ""
            params.append(f"mastering-display=G{xy(g)}B{xy(b)}R{xy(r)}WP{xy(wp)}{lum}")
        if cll:
            params.append(f"content-light={cll[0]},{cll[1]}")
        return params
    return []


def _encoder_options(opts: EncodeOptions, hdr: dict | None = None) -> dict[str, str]:
    o: dict[str, str] = {}
    codec = opts.codec or ""
    if opts.crf is not None:
        if is_nvenc(codec):
            o.update({"rc": "vbr", "cq": str(opts.crf)})
        else:
            o["crf"] = str(opts.crf)
    if opts.preset is not None:
        o["preset"] = str(opts.preset)
    if codec == "libvpx-vp9":
        o.setdefault("b", "0")
        o.setdefault("row-mt", "1")
        if o.get("preset") in VP9_SPEED_OF_PRESET:
            # libvpx has no presets (FFmpeg would ignore the option): an x264 preset name asks
            # for the speed it names, as libvpx's deadline and cpu-used give it
            o["deadline"], o["cpu-used"] = VP9_SPEED_OF_PRESET[o.pop("preset")]
    if codec == "ffv1":
        o.update({"level": "3", "slicecrc": "1"})
    if codec == "prores_ks":
        # HQ (4:2:2) for 4:2:2; 4444 for 4:4:4, which HQ would subsample
        o.setdefault("profile", "4" if opts.pix_fmt and _chroma(opts.pix_fmt) == (0, 0) else "3")
    if codec == "libx265":
        o["x265-params"] = ":".join(["log-level=error"] + _hdr_options(codec, hdr))
    if codec == "libsvtav1" and _hdr_options(codec, hdr):
        o["svtav1-params"] = ":".join(_hdr_options(codec, hdr))
    o.update(opts.extra)  # the user's own x265-params etc. win
    return o


class SegmentWriter:
    """Encode RGB frames (and their alpha, for a pix_fmt with an alpha plane) of one segment into
    `path`, keeping each frame's input pts and time base.

    Use as a context manager; close() returns dict(path, frames, sha256). The file is a NUT
    container (exact time base, pts/dts; segment_muxer names the exceptions), written under
    `path` + '.part' and renamed on close. sizes_change: frames of other sizes than width x height
    are taken (VP9 only: vsr.job.plan.FOLLOW_CODEC), each new size starting a new encoder.
    """

    def __init__(self, path: str | os.PathLike, info: MediaInfo, options: EncodeOptions,
                 width: int, height: int, *, sizes_change: bool = False) -> None:
        if options.codec is None or options.pix_fmt is None:
            raise UsageError("SegmentWriter needs resolved options (call resolve_encode_options first)")
        self.path = Path(path)
        self.info = info
        self.options = options
        self.width, self.height = width, height
        self.enc_width, self.enc_height = encoded_size(options.pix_fmt, width, height)
        # frames of another size may come (the output follows the source's sizes): each new size
        # gets a new encoder writing on into the same stream (_resize)
        self.sizes_change = sizes_change
        self.frames = 0
        self.caption_frames = 0
        self._last_pts: int | None = None
        self._captions: dict[int, bytes] = {}  # pts -> A53 cc_data waiting for its packet
        self._hevc = options.codec in ("libx265", "hevc_nvenc")
        self.fills_heap = options.codec in NEEDS_FILLED_HEAP
        self._tmp = self.path.with_name(self.path.name + ".part")
        v = info.video
        self._matrix = matrix_of(v)
        self._range = output_range(v, options.codec, options.pix_fmt)
        self._tags = {
            "color_range": 2 if self._range == "JPEG" else 1,
            "colorspace": matrix_tag_of(v),
            "color_primaries": v.color_primaries,
            "color_trc": v.color_trc,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Negative first dts (B-frames) must not shift every pts: keep timestamps verbatim.
            self._out = av.open(str(self._tmp), "w", format=segment_muxer(options),
                                options={"avoid_negative_ts": "disabled"})
        except (OSError, av.error.FFmpegError) as err:
            raise OutputError(f"{self.path}: cannot write segment: {' '.join(str(err).split())}") from None
        try:
            rate = v.avg_rate or v.real_rate
            stream = self._out.add_stream(options.codec, rate=rate if rate else None,
                                          options=_encoder_options(options, getattr(v, "hdr", None)))
            stream.time_base = v.time_base
            self._configure(stream.codec_context)
            self._stream = stream
            # the stream's own encoder until the size changes, then one opened for each new size
            self._encoder: av.codec.context.CodecContext | None = None
        except (av.error.FFmpegError, ValueError) as err:
            self._out.close()
            self._tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot set up encoder {options.codec}: {' '.join(str(err).split())}") from None

    def _configure(self, cc: av.codec.context.CodecContext) -> None:
        """Set an encoder up for the current frame size: pix_fmt, time base, rate, SAR, colour tags."""
        v = self.info.video
        rate = v.avg_rate or v.real_rate
        cc.width, cc.height, cc.pix_fmt = self.enc_width, self.enc_height, self.options.pix_fmt
        cc.time_base = v.time_base
        if rate:
            cc.framerate = rate  # else it follows the time base (90000 fps) into container headers
        if v.sar and v.sar != 1:
            cc.sample_aspect_ratio = v.sar
        cc.color_range = self._tags["color_range"]
        # RGB samples have no YUV matrix: tagged as such (AVCOL_SPC_RGB), as the source is
        cc.colorspace = 0 if is_rgb_format(self.options.pix_fmt) else self._tags["colorspace"]
        cc.color_primaries = v.color_primaries
        cc.color_trc = v.color_trc
        cc.thread_count = 0
        # Global headers: extradata identical across segments can be reused by the final container.
        cc.flags |= av.codec.context.Flags.global_header

    def _encode(self, frame: av.VideoFrame | None) -> list[av.Packet]:
        """Packets of the current encoder for this frame (None: flush), as packets of the stream."""
        with self._filled_heap():  # what the encoder allocates is filled alike on every run
            if self._encoder is None:
                return self._stream.encode(frame)
            packets = self._encoder.encode(frame)
        for packet in packets:
            packet.stream = self._stream  # same time base as the encoder's (v.time_base)
        return packets

    def _resize(self, width: int, height: int) -> None:
        """Frames of another size follow: flush the current encoder (its frames all written) and
        open a new one at this size, with the same options and time base; its first packet, a
        keyframe of the new size, goes on in the same stream (VP9 decoders change size there)."""
        self.width, self.height = width, height
        self.enc_width, self.enc_height = encoded_size(self.options.pix_fmt, width, height)
        if self._encoder is None and not self._stream.codec_context.is_open:
            self._configure(self._stream.codec_context)  # nothing encoded yet: the stream starts at this size
            return
        self._mux(self._encode(None))
        try:
            cc = av.CodecContext.create(self.options.codec, "w")
            cc.options = _encoder_options(self.options, getattr(self.info.video, "hdr", None))
            self._configure(cc)
            cc.open()
        except (av.error.FFmpegError, ValueError) as err:
            raise OutputError(f"{self.path}: encoder {self.options.codec} does not open at {width}x{height}: "
                              f"{' '.join(str(err).split())}") from None
        self._encoder = cc

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray, pts: Sequence[int], side_data: Sequence[bytes | None] | None = None,
              alpha: np.ndarray | None = None) -> None:
        """Encode frames (N,H,W,3) or (H,W,3), uint8 or uint16 RGB, with their input pts (increasing).

        alpha: their straight alpha, (N,H,W) or (H,W) of the same dtype: required when the pix_fmt
        has an alpha plane (never filled opaque), refused when it has none."""
        if frames.ndim == 3:
            frames = frames[None]
            alpha = alpha[None] if alpha is not None and alpha.ndim == 2 else alpha
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UsageError(f"frames must be (N,H,W,3), got {frames.shape}")
        if len(pts) != frames.shape[0]:
            raise UsageError(f"{frames.shape[0]} frames but {len(pts)} pts")
        if frames.shape[1:3] != (self.height, self.width) and self.sizes_change:
            self._resize(frames.shape[2], frames.shape[1])
        if frames.shape[1:3] != (self.height, self.width):
            raise UsageError(f"frames are {frames.shape[2]}x{frames.shape[1]}, writer expects {self.width}x{self.height}")
        if frames.dtype not in (np.uint8, np.uint16):
            raise UsageError(f"frames must be uint8 or uint16, got {frames.dtype}")
        self._check_alpha(frames, alpha)
        for k, (rgb, p) in enumerate(zip(frames, pts)):
            if self._last_pts is not None and p <= self._last_pts:
                raise UsageError(f"pts must increase: {p} after {self._last_pts}")
            a = alpha[k] if alpha is not None else None
            if (self.enc_width, self.enc_height) != (self.width, self.height):
                # Chroma-subsampled formats need even sizes: repeat the last row/column.
                grow = ((0, self.enc_height - self.height), (0, self.enc_width - self.width))
                rgb = np.pad(rgb, (*grow, (0, 0)), mode="edge")
                a = np.pad(a, grow, mode="edge") if a is not None else None
            frame = rgb_to_frame(rgb, self.options.pix_fmt, self._matrix, self._range, alpha=a)
            frame.pts = int(p)
            frame.time_base = self.info.video.time_base
            for tag, value in self._tags.items():
                setattr(frame, tag, value)
            cc = side_data[k] if side_data else None
            if cc and self.options.codec in CAPTION_CODECS:
                self._captions[int(p)] = cc
            self._mux(self._encode(frame))
            self._last_pts = int(p)
            self.frames += 1

    def _check_alpha(self, frames: np.ndarray, alpha: np.ndarray | None) -> None:
        """UsageError unless alpha is given exactly when the pix_fmt has an alpha plane, one per frame."""
        wants = has_alpha(self.options.pix_fmt)
        if wants and alpha is None:
            raise UsageError(f"pix_fmt {self.options.pix_fmt} has an alpha plane: give the frames' alpha")
        if alpha is not None and not wants:
            raise UsageError(f"pix_fmt {self.options.pix_fmt} has no alpha plane to write the alpha into")
        if alpha is not None and (alpha.shape != frames.shape[:3] or alpha.dtype != frames.dtype):
            raise UsageError(f"alpha {alpha.shape} {alpha.dtype} does not match frames {frames.shape} {frames.dtype}")

    def _filled_heap(self) -> Any:
        return filled_heap() if self.fills_heap else nullcontext()

    def _mux(self, packets: list[av.Packet]) -> None:
        if self._captions:
            packets = [self._caption(p) for p in packets]
        try:
            self._out.mux(packets)
        except OSError as err:
            raise OutputError(f"{self.path}: write failed: {err.strerror or err}") from None

    def _caption(self, packet: av.Packet) -> av.Packet:
        cc = self._captions.pop(packet.pts, None) if packet.pts is not None else None
        if cc is None:
            return packet
        self.caption_frames += 1
        return with_captions(packet, cc, self._hevc)

    def close(self) -> dict[str, Any]:
        """Flush the encoder, finish the file, rename it into place; returns dict(path, frames, sha256)."""
        try:
            self._mux(self._encode(None))
            self._out.close()
        except av.error.FFmpegError as err:
            self.abort()
            raise OutputError(f"{self.path}: encoder failed: {' '.join(str(err).split())}") from None
        os.replace(self._tmp, self.path)
        return {"path": str(self.path), "frames": self.frames, "sha256": file_sha256(self.path)}

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._out.close()
        except Exception:  # noqa: BLE001 - already failing; the partial file is removed below
            pass
        self._tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_segment(chunks, path: str | os.PathLike, info: MediaInfo, options: EncodeOptions,
                   width: int, height: int) -> dict[str, Any]:
    """Write an iterable of (frames, pts[, side_data[, alpha]]) into a segment file; returns
    SegmentWriter.close()."""
    writer = SegmentWriter(path, info, options, width, height)
    try:
        for item in chunks:
            writer.write(*item)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
