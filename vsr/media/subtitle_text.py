"""Text subtitle events between SRT, WebVTT and mov_text (3GPP timed text), styling included.

An event is its plain text plus style runs (bold, italic, underline over character ranges).
SRT and WebVTT write styling as <b>/<i>/<u> tags (SRT files also carry <font ...> and ASS
override blocks such as {\\an8} or {\\i1}); mov_text keeps the text bare and puts the runs in a
'styl' box after it (3GPP TS 26.245, 5.17). Re-wrapping the bytes alone would show an SRT
source's tags as literal text in an MP4, and drop an MP4's italics in an MKV.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

BOLD, ITALIC, UNDERLINE = 1, 2, 4
_TAG_FLAGS = {"b": BOLD, "i": ITALIC, "u": UNDERLINE}
_ASS_FLAGS = {"b": BOLD, "i": ITALIC, "u": UNDERLINE}

# style records carry a font, size and colour too: FFmpeg's and most players' defaults
FONT_ID = 1
FONT_SIZE = 18
TEXT_RGBA = 0xFFFFFFFF

# SRT: only the tags SubRip players know (anything else in angle brackets is text, "x<3 and
# y>2" too) and ASS override blocks, which start with a backslash ("{laughs}" is text).
# WebVTT: every <...> is markup (a literal "<" is written &lt;), braces are text.
_SRT_MARKUP = re.compile(r"<(/?)(b|i|u|s|font(?=[\s>])[^<>]*)>|\{(\\[^}]*)\}", re.IGNORECASE)
_VTT_MARKUP = re.compile(r"<(/?)([A-Za-z]+|\d[\d:.]*)(?:[ .][^<>]*)?>()?")
_ASS_TOGGLE = re.compile(r"\\([biu])(\d+)")


@dataclass
class TextEvent:
    """One subtitle event: its text and (start_char, end_char, flags) style runs (end exclusive,
    counted in characters)."""

    text: str
    runs: list[tuple[int, int, int]] = field(default_factory=list)


def parse(data: bytes, codec: str) -> TextEvent:
    """An event from one packet's payload of `codec` (mov_text, subrip/srt/text or webvtt)."""
    if codec == "mov_text":
        return _parse_mov_text(data)
    return parse_markup(data.decode("utf-8", "replace"), webvtt=(codec == "webvtt"))


def render(event: TextEvent, codec: str) -> bytes:
    """One packet's payload of `codec` for an event."""
    if codec == "mov_text":
        return _render_mov_text(event)
    return render_markup(event, webvtt=(codec == "webvtt")).encode("utf-8")


def parse_markup(text: str, webvtt: bool = False) -> TextEvent:
    """SRT/WebVTT text with tags: <b>, <i>, <u> and ASS toggles ({\\i1}...{\\i0}) become style
    runs; other markup (SRT's <s> and <font>, its override blocks such as {\\an8}; WebVTT's
    classes, voices, ruby, cue timestamps) is dropped, its text kept; anything else is text."""
    out: list[str] = []
    runs: list[tuple[int, int, int]] = []
    active = 0
    run_start = 0
    n = 0  # characters written

    def switch(flags: int) -> None:
        nonlocal active, run_start
        if flags == active:
            return
        if active and n > run_start:
            runs.append((run_start, n, active))
        active, run_start = flags, n

    pos = 0
    for m in (_VTT_MARKUP if webvtt else _SRT_MARKUP).finditer(text):
        plain = text[pos:m.start()]
        if webvtt:
            plain = html.unescape(plain)
        out.append(plain)
        n += len(plain)
        pos = m.end()
        closing, tag, block = m.group(1), m.group(2), m.group(3) or None
        if block is not None:
            flags = active
            for name, value in _ASS_TOGGLE.findall(block):
                bit = _ASS_FLAGS[name]
                # {\b1} or a weight ({\b700}) turns bold on, 0 turns it off
                flags = flags | bit if int(value) else flags & ~bit
            switch(flags)
        elif tag is not None and tag.lower() in _TAG_FLAGS:  # (a <font ...> tag is only dropped)
            bit = _TAG_FLAGS[tag.lower()]
            switch(active & ~bit if closing else active | bit)
    tail = text[pos:]
    if webvtt:
        tail = html.unescape(tail)
    out.append(tail)
    n += len(tail)
    switch(0)
    return TextEvent("".join(out), _merge(runs))


def render_markup(event: TextEvent, webvtt: bool = False) -> str:
    """SRT/WebVTT text: style runs as nested <b>/<i>/<u> tags (closed at every run boundary)."""
    text = event.text
    flags_at = [0] * len(text)
    for a, b, f in event.runs:
        for i in range(max(0, a), min(len(text), b)):
            flags_at[i] |= f
    parts: list[str] = []
    current = 0
    for ch, f in zip(text, flags_at):
        if f != current:
            parts.append(_close(current) + _open(f))
            current = f
        parts.append(html.escape(ch, quote=False) if webvtt else ch)
    parts.append(_close(current))
    return "".join(parts)


def _open(flags: int) -> str:
    return "".join(f"<{t}>" for t, bit in _TAG_FLAGS.items() if flags & bit)


def _close(flags: int) -> str:
    return "".join(f"</{t}>" for t, bit in reversed(_TAG_FLAGS.items()) if flags & bit)


def _merge(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for a, b, f in runs:
        if merged and merged[-1][1] == a and merged[-1][2] == f:
            merged[-1] = (merged[-1][0], b, f)
        else:
            merged.append((a, b, f))
    return merged


def _parse_mov_text(data: bytes) -> TextEvent:
    n = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
    raw = data[2:2 + n]
    text = raw.decode("utf-8", "replace")
    runs: list[tuple[int, int, int]] = []
    pos = 2 + n
    while pos + 8 <= len(data):  # the boxes after the text: only 'styl' carries what we keep
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if size < 8 or pos + size > len(data):
            break
        if kind == b"styl" and size >= 10:
            count = int.from_bytes(data[pos + 8:pos + 10], "big")
            rec = pos + 10
            for _ in range(count):
                if rec + 12 > pos + size:
                    break
                start = int.from_bytes(data[rec:rec + 2], "big")
                end = int.from_bytes(data[rec + 2:rec + 4], "big")
                flags = data[rec + 6] & (BOLD | ITALIC | UNDERLINE)
                if flags and end > start:
                    runs.append((start, min(end, len(text)), flags))
                rec += 12
        pos += size
    return TextEvent(text, _merge(sorted(runs)))


def _render_mov_text(event: TextEvent) -> bytes:
    raw = event.text.encode("utf-8")
    payload = len(raw).to_bytes(2, "big") + raw
    runs = [(a, b, f) for a, b, f in event.runs if b > a and f]
    if runs:
        records = b"".join(
            a.to_bytes(2, "big") + b.to_bytes(2, "big") + FONT_ID.to_bytes(2, "big")
            + bytes([f, FONT_SIZE]) + TEXT_RGBA.to_bytes(4, "big") for a, b, f in runs)
        payload += (10 + len(records)).to_bytes(4, "big") + b"styl" + len(runs).to_bytes(2, "big") + records
    return payload

