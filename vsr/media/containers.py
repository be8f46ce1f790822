"""What each output container is and can hold (chosen by the output file's extension)."""

from __future__ import annotations

from pathlib import Path

from vsr.errors import UsageError, VsrError
from vsr.storage import uri as store

# extension -> FFmpeg muxer name
MUXERS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".nut": "nut",
    # MPEG transport stream (broadcast, HLS); .m2ts: FFmpeg writes 192-byte Blu-ray packets by name
    ".ts": "mpegts", ".m2ts": "mpegts",
}

# Video encoders each muxer accepts (FFmpeg 8.1 behaviour; checked by tests/test_media_encode.py).
VIDEO_CODECS = {
    "mp4": {"libx264", "libx265", "libsvtav1", "libvpx-vp9", "h264_nvenc", "hevc_nvenc", "av1_nvenc"},
    # not ffv1: FFmpeg 8.1's MOV muxer refuses it (the job ran, then assemble failed)
    "mov": {"libx264", "libx265", "prores_ks", "libsvtav1", "h264_nvenc", "hevc_nvenc"},
    "matroska": {"libx264", "libx265", "ffv1", "prores_ks", "libsvtav1", "libvpx-vp9", "h264_nvenc",
                 "hevc_nvenc", "av1_nvenc"},
    "webm": {"libvpx-vp9", "libsvtav1", "av1_nvenc"},
    "nut": {"libx264", "libx265", "ffv1", "prores_ks", "libsvtav1", "libvpx-vp9", "h264_nvenc",
            "hevc_nvenc", "av1_nvenc"},
    # FFmpeg 8.1's MPEG-TS muxer writes AV1 and VP9 without a stream type any reader identifies
    "mpegts": {"libx264", "libx265", "h264_nvenc", "hevc_nvenc"},
}

# MPEG-TS: the clock reference (PCR) leads each packet's decode time by up to this much, the
# muxer's usual buffering delay (FFmpeg's command line uses the same 0.7 s); less when the source's
# timestamps start earlier, since vsr keeps them and a PCR cannot be negative; never less than
# TS_PCR_LEAD_MIN_S (more than the muxer holds audio back: half the lead plus one audio frame).
TS_PCR_LEAD_S = 0.7
TS_PCR_LEAD_MIN_S = 0.1

# Samples of priming FFmpeg's audio encoders put before the sound (AVCodecContext.initial_padding).
# MP4/MOV (edit list) and Matroska (CodecDelay) say "skip them"; MPEG-TS has no place for that, so
# the priming plays as sound before the real sound, which stays in sync.
ENCODER_PRIMING = {"aac": 1024}
NO_START_TRIM = ("mpegts",)  # muxers
# Containers (as FFmpeg's demuxers name them) with no place for chapters or a start timecode
NO_CHAPTERS_OR_TIMECODE_DEMUXERS = ("mpegts",)
# A copied stream's start trim (an MP4/MOV edit list skipping an AAC stream's priming, handed over
# as its first packet's skip_samples) is written again by the MOV/MP4 muxers on their own; these
# need vsr/media/start_trim.py (Matroska: CodecDelay) or have no place for it (NUT, MPEG-TS).
COPY_LOSES_START_TRIM = ("matroska", "webm", "nut", "mpegts")

# A container that holds every stream kind FFmpeg can copy: named in refusals.
UNIVERSAL = ".mkv"


def muxer_for(path: str | Path) -> str:
    """FFmpeg muxer name for an output path; UsageError for an unknown extension."""
    ext = Path(path).suffix.lower()
    if ext not in MUXERS:
        known = ", ".join(sorted(MUXERS))
        raise UsageError(f"{path}: unknown output container {ext or '(no extension)'!r}; use one of {known}")
    return MUXERS[ext]


# ---------------------------------------------------------------- the job tag
# vsr writes the fingerprint of the settings that made an output into the output's container
# metadata, so a batch can tell "made by vsr with these settings" from "made with other settings"
# or "not made by vsr". Each muxer keeps arbitrary tags differently:
#   MKV/WebM/NUT: any tag (Matroska stores it as VSR_JOB);
#   MP4: only the iTunes-style keys; "encoding_tool" (atom ©too, read back as "encoder") is the
#        one meant for the tool that wrote the file, so it carries the tag (the source's own
#        encoder tag is never copied);
#   MOV: QuickTime udta keeps only fixed keys (title, artist, comment, ...) and "encoder" is forced
#        to FFmpeg's name. movflags use_metadata_tags would keep any key, but then FFmpeg writes
#        every tag as an "mdta" key, title/artist/comment included, which QuickTime Player and
#        Final Cut do not show; so the tag goes into the video track's handler name (hdlr atom,
#        read back as the stream's "handler_name"), and the standard ©nam/©ART/©cmt atoms stay.
#   MPEG-TS: no free tags at all; the service description table (SDT) names each program's
#        provider (FFmpeg's "service_provider", else "FFmpeg"): the tag goes there, and is read
#        back from the file's own bytes (PyAV shows no program metadata).
JOB_TAG = "vsr_job"
TS_PROVIDER = "service_provider"
HANDLER_NAME = "handler_name"
_JOB_TAG_PREFIX = "vsr "


def job_tag_text(fingerprint: str, version: str) -> str:
    """The tag's text: 'vsr VERSION job FINGERPRINT' (also readable in a player's 'encoder' field)."""
    return f"{_JOB_TAG_PREFIX}{version} job {fingerprint}"


def job_tag_fingerprint(text: str) -> str | None:
    """The fingerprint in a tag's text (job_tag_text), or None when the text is not a vsr job tag."""
    parts = text.split()
    if text.startswith(_JOB_TAG_PREFIX) and len(parts) == 4 and parts[2] == "job":
        return parts[3]
    return None


def set_job_tag(metadata: dict, video_metadata: dict, muxer: str, text: str) -> None:
    """Put the job tag into the container's `metadata`, or for MOV the video track's `video_metadata`."""
    if muxer == "mov":
        video_metadata[HANDLER_NAME] = text
    elif muxer == "mpegts":
        metadata[TS_PROVIDER] = text
    elif muxer == "mp4":
        metadata["encoding_tool"] = text
    else:
        metadata[JOB_TAG] = text


def read_job_tag(path: str | Path) -> str | None:
    """The fingerprint vsr wrote into a file's metadata, or None (no tag: not made by vsr)."""
    import av

    if MUXERS.get(Path(path).suffix.lower()) == "mpegts":
        return next(filter(None, map(job_tag_fingerprint, ts_service_providers(path))), None)
    try:
        source = store.open_read(str(path)) if store.is_uri(path) else str(path)
        with av.open(source, metadata_errors="replace") as c:
            meta = {k.lower(): v for k, v in c.metadata.items()}
            texts = [meta.get(key, "") for key in (JOB_TAG, "encoder", "encoding_tool")]
            # MOV: the video track's handler name (a .mov made before it carried the tag as mdta
            # "vsr_job", which the keys above still find)
            if MUXERS.get(Path(path).suffix.lower()) == "mov" and c.streams.video:
                texts.append(c.streams.video[0].metadata.get(HANDLER_NAME, ""))
    except (OSError, av.error.FFmpegError, UnicodeError, ValueError, VsrError):
        return None
    for text in texts:
        fingerprint = job_tag_fingerprint(text)
        if fingerprint:
            return fingerprint
    return None


_SDT_PID, _SDT_TABLE, _SERVICE_DESCRIPTOR = 0x11, 0x42, 0x48


def ts_service_providers(path: str | Path, limit: int = 1 << 20) -> list[str]:
    """The provider names in the first service description table (SDT) of an MPEG-TS file
    (188-byte packets, or 192 with a Blu-ray arrival time), read from its first `limit` bytes."""
    try:
        with (store.open_read(str(path)) if store.is_uri(path) else open(path, "rb")) as f:
            data = f.read(limit)
    except (OSError, VsrError):
        return []
    size = 192 if data[4:5] == b"\x47" and data[:1] != b"\x47" else 188
    for at in range(size - 188, len(data) - 187, size):
        packet = data[at:at + 188]
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        if packet[0] != 0x47 or pid != _SDT_PID or not packet[1] & 0x40 or not packet[3] & 0x10:
            continue
        body = 4 + (1 + packet[4] if packet[3] & 0x20 else 0)  # after any adaptation field
        section = packet[body + 1 + packet[body]:]  # after the pointer field
        if section[:1] == bytes([_SDT_TABLE]):
            return _sdt_providers(section)
    return []


def _sdt_providers(section: bytes) -> list[str]:
    """Provider names of an SDT section's service descriptors (one packet's worth of it)."""
    end = min(len(section), 3 + (((section[1] & 0x0F) << 8) | section[2]) - 4)  # before the CRC
    names, at = [], 11
    while at + 5 <= end:
        loop_end = at + 5 + (((section[at + 3] & 0x0F) << 8) | section[at + 4])
        d = at + 5
        while d + 2 <= min(loop_end, end):
            tag, length = section[d], section[d + 1]
            if tag == _SERVICE_DESCRIPTOR and length >= 2:
                n = section[d + 3]
                names.append(section[d + 4:d + 4 + n].decode("latin-1"))
            d += 2 + length
        at = loop_end
    return names
