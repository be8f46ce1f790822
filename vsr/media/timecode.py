"""SMPTE start timecodes ("HH:MM:SS:FF", ";" before FF when drop-frame): read, compare, and moved
to the output's first frame.

The output's first frame is not always the source's: frames before the first decodable keyframe
are skipped (a recording cut mid-GOP), and deinterlacing to one frame per field doubles the
frame rate. The start timecode follows, so every frame keeps the time code it had on tape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_PATTERN = re.compile(r"(\d+):(\d\d):(\d\d)([:;.,])(\d+)")


@dataclass(frozen=True)
class Timecode:
    """One timecode label; `drop_frame` labels skip numbers to follow 29.97/59.94 fps clocks."""

    hours: int
    minutes: int
    seconds: int
    frames: int
    drop_frame: bool

    def __str__(self) -> str:
        sep = ";" if self.drop_frame else ":"
        return f"{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}{sep}{self.frames:02d}"

    def frame_number(self, fps: int) -> int:
        """Frames since 00:00:00:00 at `fps` timecode frames per second."""
        n = ((self.hours * 60 + self.minutes) * 60 + self.seconds) * fps + self.frames
        drop = _dropped_per_minute(fps) if self.drop_frame else 0
        if drop:
            minutes = self.hours * 60 + self.minutes
            n -= drop * (minutes - minutes // 10)
        return n

    @classmethod
    def from_frame_number(cls, n: int, fps: int, drop_frame: bool) -> "Timecode":
        drop = _dropped_per_minute(fps) if drop_frame else 0
        if drop:  # back to labels: the numbers skipped at every minute but each tenth
            per_10min, per_min = fps * 600 - drop * 9, fps * 60 - drop
            tens, rest = divmod(n, per_10min)
            n += drop * 9 * tens + (drop * ((rest - drop) // per_min) if rest > drop else 0)
        total_s, f = divmod(n, fps)
        total_min, s = divmod(total_s, 60)
        h, m = divmod(total_min, 60)
        return cls(h % 24, m, s, f, drop_frame and bool(drop))


def _dropped_per_minute(fps: int) -> int:
    # 29.97 drops 2 labels a minute, 59.94 four; drop-frame exists only for multiples of 30
    return fps // 15 if fps % 30 == 0 else 0


def parse(text: str | None) -> Timecode | None:
    """A timecode tag's value, or None when it is not a frame timecode."""
    m = _PATTERN.fullmatch((text or "").strip())
    if m is None:
        return None
    h, mi, s, sep, f = m.groups()
    return Timecode(int(h), int(mi), int(s), int(f), sep in ";,")


def same(a: str | None, b: str | None) -> bool:
    """Whether two timecode tags name the same frame ("1:00:00:02" is "01:00:00:02")."""
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return (a or "").strip() == (b or "").strip()
    return pa == pb


def for_output(text: str, rate: Fraction | None, skipped: int = 0, field_rate: bool = False) -> str:
    """The timecode of the output's first frame: the source's start `text` (at frame `rate`)
    moved past `skipped` source frames, then counted in fields when the output has one frame
    per field (01:02:03:12 at 25i -> 01:02:03:24 at 50p). Text that is not a frame timecode,
    or an unknown rate, is returned as it is."""
    tc = parse(text)
    if tc is None or not rate or rate <= 0:
        return text
    fps = max(1, round(float(rate)))
    n = tc.frame_number(fps) + skipped
    if field_rate:
        n, fps = n * 2, fps * 2
    return str(Timecode.from_frame_number(n, fps, tc.drop_frame))
