"""An archival tape transfer through `vsr upscale` (real Ray local cluster, real PyAV files).

The source: a 720x576 PAL 16:9 anamorphic (SAR 64:45) interlaced tff stream, woven from real frames
with letterbox/pillarbox borders, with AAC audio. The job deinterlaces at field rate, crops the
borders it detects and writes square pixels; its own verify must accept the doubled frame count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.test_archival import BIKES, encode, luma, real_frames, weave
from vsr.media.deinterlace import comb_energy
from vsr.media.probe import probe

N = 8  # interlaced frames (16 source pictures, 0.32 s at 25 fps)
TOP, LEFT, CW, CH = 72, 8, 704, 432  # the picture inside the 720x576 raster


def _add_audio(video: Path, out: Path, seconds: float) -> None:
    """Remux the video and add an AAC tone of the same length."""
    with av.open(str(video)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("aac", rate=48000, layout="stereo")
        for pkt in src.demux(vin):
            if pkt.size:
                pkt.stream = vout
                dst.mux(pkt)
        t = np.arange(int(48000 * seconds)) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, len(tone), 1024):
            block = tone[i:i + 1024]
            frame = av.AudioFrame.from_ndarray(np.stack([block, block]).reshape(1, -1), format="flt",
                                               layout="stereo")
            frame.sample_rate, frame.pts = 48000, i
            for p in aout.encode(frame):
                dst.mux(p)
        for p in aout.encode(None):
            dst.mux(p)


@pytest.fixture(scope="module")
def tape(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tape")
    src = [np.asarray(av.VideoFrame.from_ndarray(p, format="rgb24").reformat(CW, CH).to_ndarray())
           for p in real_frames(BIKES, 2 * N, start=60)]
    frames = []
    for i in range(N):
        canvas = np.zeros((576, 720, 3), np.uint8)
        canvas[TOP:TOP + CH, LEFT:LEFT + CW] = weave(src[2 * i], src[2 * i + 1], "tff")
        frames.append(canvas)
    video = d / "video.mkv"
    encode(video, frames, field="tff", sar=Fraction(64, 45))
    out = d / "tape 576i.mkv"
    _add_audio(video, out, N / 25)
    return out


def test_tape_transfer_field_rate_crop_square_pixels(tape, tmp_path):
    out = tmp_path / "restored.mkv"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "upscale", str(tape), str(out), "-m", "bicubic",
                        "--outscale", "1", "--deinterlace-rate", "field", "--crop", "auto", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e.get("event") == "job_done")
    borders = done["picture"]["detected"]["borders"]
    crop = [int(x) for x in borders["crop"].split(":")]
    assert abs(crop[0] - CW) <= 2 and abs(crop[1] - CH) <= 2 and abs(crop[2] - LEFT) <= 2 and abs(crop[3] - TOP) <= 2

    src, res = probe(tape), probe(out)
    assert res.video.sar == 1  # square pixels...
    w, h = res.video.width, res.video.height
    display_aspect = Fraction(crop[0] * 64, crop[1] * 45)
    assert abs(w / h - float(display_aspect)) < 0.01  # ...at the picture's display aspect
    assert h == crop[1]
    # Field rate: two frames per interlaced frame, the second halfway to the next.
    assert res.video.frame_count == 2 * src.video.frame_count == 2 * N
    st = src.video.frame_times
    ot = res.video.frame_times
    step = st[1] - st[0]
    assert max(abs(a - b) for a, b in zip(ot[0::2], st)) < 1e-3
    assert max(abs(a - (b + step / 2)) for a, b in zip(ot[1::2], st)) < 1e-3
    # Audio copied bit for bit and in place.
    assert len(res.audio) == 1 and res.audio[0].packets == src.audio[0].packets
    # No combing left: same line scale (outscale 1), the source's picture area vs the output.
    comb_src = np.mean([comb_energy(y[TOP:TOP + CH, LEFT:LEFT + CW]) for y in luma(_decode(tape))])
    comb_out = np.mean([comb_energy(y) for y in luma(_decode(out))])
    assert comb_src >= 5 * comb_out, (comb_src, comb_out)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
