"""What each output container is and can hold (chosen by the output file's extension)."""

from __future__ import annotations

from pathlib import Path

from vsr.errors import UsageError

# extension -> FFmpeg muxer name
MUXERS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".nut": "nut",
}

# Video encoders each muxer accepts (FFmpeg 8.1 behaviour; checked by tests/test_media_encode.py).
VIDEO_CODECS = {
    "mp4": {"libx264", "libx265", "libsvtav1", "libvpx-vp9", "h264_nvenc", "hevc_nvenc", "av1_nvenc"},
    "mov": {"libx264", "libx265", "prores_ks", "libsvtav1", "h264_nvenc", "hevc_nvenc", "ffv1"},
    "matroska": {"libx264", "libx265", "ffv1", "prores_ks", "libsvtav1", "libvpx-vp9", "h264_nvenc",
                 "hevc_nvenc", "av1_nvenc"},
    "webm": {"libvpx-vp9", "libsvtav1", "av1_nvenc"},
    "nut": {"libx264", "libx265", "ffv1", "prores_ks", "libsvtav1", "libvpx-vp9", "h264_nvenc",
            "hevc_nvenc", "av1_nvenc"},
}

# A container that holds every stream kind FFmpeg can copy: named in refusals.
UNIVERSAL = ".mkv"


def muxer_for(path: str | Path) -> str:
    """FFmpeg muxer name for an output path; UsageError for an unknown extension."""
    ext = Path(path).suffix.lower()
    if ext not in MUXERS:
        known = ", ".join(sorted(MUXERS))
        raise UsageError(f"{path}: unknown output container {ext or '(no extension)'!r}; use one of {known}")
    return MUXERS[ext]
