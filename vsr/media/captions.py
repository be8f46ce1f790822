"""A53 closed captions (CEA-608/708 cc_data) written back into H.264/HEVC packets as SEI NAL units.

Decoders export captions as frame side data (A53_CC: cc_count x 3 bytes of cc_data); PyAV cannot
attach side data to frames it encodes, so the writer puts the same bytes into the bitstream as
FFmpeg's encoders do: a user_data_registered_itu_t_t35 SEI ('GA94', user_data_type_code 3).
"""

from __future__ import annotations

import av

CAPTION_CODECS = {"h264", "libx264", "h264_nvenc", "hevc", "libx265", "hevc_nvenc"}


def _escape(rbsp: bytes) -> bytes:
    """Add emulation-prevention bytes (00 00 0x -> 00 00 03 0x for x <= 3)."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


# cc_count is a 5-bit field: one user_data_registered_itu_t_t35 message holds at most 31 triplets
MAX_CC_COUNT = 31


def _a53_message(cc_data: bytes) -> bytes:
    """One sei_message (payloadType 4, user_data_registered_itu_t_t35, 'GA94' cc_data) of at most
    MAX_CC_COUNT triplets."""
    cc_count = len(cc_data) // 3
    user_data = (bytes([0xB5, 0x00, 0x31]) + b"GA94" + bytes([0x03, 0x40 | cc_count, 0xFF])
                 + cc_data + bytes([0xFF]))
    payload = bytearray([4])
    size = len(user_data)
    while size >= 255:
        payload.append(255)
        size -= 255
    payload.append(size)
    return bytes(payload) + user_data


def a53_sei(cc_data: bytes, hevc: bool) -> bytes:
    """One Annex-B SEI NAL unit (with start code) carrying every triplet of cc_data (a multiple of
    3 bytes): one message per MAX_CC_COUNT triplets, in order. A source can carry more than one
    message per picture (an encoder writing each caption channel or field in its own SEI); the
    decoder joins them into one A53 side data, which must be written back whole."""
    cc_data = cc_data[: len(cc_data) - len(cc_data) % 3]
    step = MAX_CC_COUNT * 3
    messages = b"".join(_a53_message(cc_data[i:i + step]) for i in range(0, max(len(cc_data), 1), step))
    rbsp = messages + bytes([0x80])  # rbsp_stop_one_bit + alignment
    header = bytes([0x4E, 0x01]) if hevc else bytes([0x06])  # HEVC prefix SEI (39) / H.264 SEI (6)
    return b"\x00\x00\x00\x01" + header + _escape(rbsp)


def _nal_starts(data: bytes) -> list[tuple[int, int]]:
    """(start-code offset, NAL header offset) of each Annex-B NAL unit."""
    out = []
    i = 0
    n = len(data)
    while i + 3 <= n:
        if data[i] == 0 and data[i + 1] == 0:
            if data[i + 2] == 1:
                out.append((i, i + 3))
                i += 3
                continue
            if i + 4 <= n and data[i + 2] == 0 and data[i + 3] == 1:
                out.append((i, i + 4))
                i += 4
                continue
        i += 1
    return out


def insert_sei(data: bytes, sei: bytes, hevc: bool) -> bytes:
    """The access unit with sei placed before its first picture slice (after AUD/parameter sets)."""
    if not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        # Length-prefixed (AVCC/HVCC, 4-byte lengths): prepend the SEI as its own NAL.
        body = sei[4:]
        return len(body).to_bytes(4, "big") + body + data
    for start, hdr in _nal_starts(data):
        kind = (data[hdr] >> 1) & 0x3F if hevc else data[hdr] & 0x1F
        is_vcl = kind < 32 if hevc else 1 <= kind <= 5
        if is_vcl:
            return data[:start] + sei + data[start:]
    return data + sei


def with_captions(packet: av.Packet, cc_data: bytes, hevc: bool) -> av.Packet:
    """A copy of packet (same timing and flags) whose access unit carries cc_data."""
    q = av.Packet(insert_sei(bytes(packet), a53_sei(cc_data, hevc), hevc))
    q.pts, q.dts, q.duration = packet.pts, packet.dts, packet.duration
    q.time_base = packet.time_base
    q.is_keyframe = packet.is_keyframe
    q.stream = packet.stream
    return q
