"""File-level metadata: a phone's QuickTime keys (GPS position, make, model, date) survive into
.mov/.mp4 outputs under the names those containers write, and what a container cannot hold is
said in a note, never dropped silently."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from test_media_cases import run

PHONE_KEYS = {
    "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 12",
    "com.apple.quicktime.software": "17.1",
    "com.apple.quicktime.creationdate": "2024-05-01T12:00:00+0200",
}


def phone_mov(path):
    """A MOV as phones write it: metadata as 'mdta' keys (FFmpeg's use_metadata_tags)."""
    with av.open(str(path), "w", format="mov", options={"movflags": "use_metadata_tags"}) as o:
        v = o.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.codec_context.time_base = v.time_base = Fraction(1, 600)
        o.metadata.update(PHONE_KEYS)
        for i in range(6):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = i * 25, Fraction(1, 600)
            for p in v.encode(f):
                o.mux(p)
        for p in v.encode(None):
            o.mux(p)
    with av.open(str(path)) as c:
        assert PHONE_KEYS.items() <= dict(c.metadata).items()  # the source really holds them
    return path


def test_phone_quicktime_keys_kept_in_mov_and_mp4_and_the_rest_noted(tmp_path):
    src = phone_mov(tmp_path / "phone.mov")
    report = run(src, tmp_path / "out.mov")
    with av.open(str(tmp_path / "out.mov")) as c:
        meta = dict(c.metadata)
    assert meta["location"] == PHONE_KEYS["com.apple.quicktime.location.ISO6709"]
    assert (meta["make"], meta["model"]) == ("Apple", "iPhone 12")
    assert meta["date"] == PHONE_KEYS["com.apple.quicktime.creationdate"]
    notes = [n for n in report.facts["notes"] if n.startswith("metadata")]
    assert notes == ["metadata com.apple.quicktime.software: mov cannot hold it; not copied (use .mkv to keep it)"]
    # MP4 has a place for the position and date, none for make and model: said, not dropped silently
    report = run(src, tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        meta = dict(c.metadata)
    assert meta["location"].startswith("+48.8584+002.2945") and "make" not in meta
    notes = [n for n in report.facts["notes"] if n.startswith("metadata")]
    assert len(notes) == 1 and "com.apple.quicktime.make, com.apple.quicktime.model" in notes[0]
    # Matroska keeps every key as it is
    report = run(src, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as c:
        meta = {k.lower(): v for k, v in c.metadata.items()}
    assert all(meta.get(k.lower()) == v for k, v in PHONE_KEYS.items())
    assert not [n for n in report.facts["notes"] if n.startswith("metadata")]


def test_mp4_chapter_track_is_chapters_not_a_dropped_stream(tmp_path):
    """FFmpeg writes an MP4's chapters as a text track too; read back it is a discarded data
    stream. It once drew 'not copied (no container vsr writes can hold it)' although the chapters
    were kept."""
    from test_media_cases import make_video
    from vsr.media.probe import probe
    from vsr.media.streams import plan_streams

    chapters = [dict(id=1, start=0, end=500, time_base=Fraction(1, 1000), metadata={"title": "one"}),
                dict(id=2, start=500, end=1000, time_base=Fraction(1, 1000), metadata={"title": "two"})]
    src = make_video(tmp_path / "ch.mp4", chapters=chapters, audio=[dict(codec="aac")])
    info = probe(src)
    track = [s for s in info.streams if s.kind == "data"]
    assert len(track) == 1  # the chapter track, as FFmpeg reads it back
    for ext in ("mp4", "mkv"):
        plans = {p.index: p for p in plan_streams(info, tmp_path / f"x.{ext}")}
        assert plans[track[0].index].action == "chapters" and not plans[track[0].index].note
        report = run(src, tmp_path / f"out.{ext}")
        assert not [n for n in report.facts["notes"] if "not copied" in n]
        assert [c["metadata"]["title"] for c in probe(tmp_path / f"out.{ext}").chapters] == ["one", "two"]


def test_mov_track_titles_reach_every_container(tmp_path):
    """MOV/MP4 track names read back as "name" but are written from "title": every track title
    ("Director commentary") was lost from .mov/.mp4 outputs and was a NAME tag in .mkv."""
    from test_media_cases import make_video

    src = make_video(tmp_path / "in.mov", audio=[dict(codec="aac", language="eng")])
    titled = tmp_path / "titled.mov"
    with av.open(str(src)) as i, av.open(str(titled), "w") as o:
        outs = {s.index: o.add_stream_from_template(s) for s in i.streams}
        outs[1].metadata["title"] = "Director commentary"
        for p in i.demux():
            if p.dts is not None:
                p.stream = outs[p.stream.index]
                o.mux(p)
    with av.open(str(titled)) as c:
        assert c.streams.audio[0].metadata.get("name") == "Director commentary"
    for ext in ("mov", "mp4", "mkv"):
        run(titled, tmp_path / f"out.{ext}")
        with av.open(str(tmp_path / f"out.{ext}")) as c:
            meta = {k.lower(): v for k, v in c.streams.audio[0].metadata.items()}
        assert (meta.get("title") or meta.get("name")) == "Director commentary", (ext, meta)
        assert ext != "mkv" or meta.get("title") == "Director commentary"
