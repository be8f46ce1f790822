"""Text subtitles between SRT, WebVTT and mov_text keep their words and their styling: an SRT
source's <i> must not show as literal "<i>" in an MP4, and an MP4's italics must not vanish in an
MKV. FFmpeg's own mov_text decoder is the independent judge of what vsr writes."""

from __future__ import annotations

import av

from test_media_cases import _remux, _with_payload, make_video, run
from vsr.media import subtitle_text as st
from vsr.media.subtitle_text import BOLD, ITALIC, UNDERLINE, TextEvent
from vsr.media.verify import verify


def test_markup_becomes_style_runs_and_back():
    e = st.parse_markup("<i>Off screen</i> and <b><u>loud</u></b>")
    assert e.text == "Off screen and loud"
    assert e.runs == [(0, 10, ITALIC), (15, 19, BOLD | UNDERLINE)]
    assert st.render_markup(e) == "<i>Off screen</i> and <b><u>loud</u></b>"
    # <font>, positioning overrides and WebVTT voices/classes go; their text stays
    assert st.parse_markup('{\\an8}<font color="#ffff00">Top</font> line').text == "Top line"
    assert st.parse_markup("<v Bob><c.loud>Hey</c></v> &amp; you", webvtt=True).text == "Hey & you"
    # ASS toggles as SRT files carry them; a bold weight counts as bold
    assert st.parse_markup("{\\i1}tilted{\\i0} {\\b700}heavy").runs == [(0, 6, ITALIC), (7, 12, BOLD)]
    # no markup, and things that only look like it: text SubRip players show as it is
    for text in ("a < b, I <3 you", "{laughs} Hello", "Press {Enter} now", "if x<3 and y>2", "a<b then c>d",
                 "<Narrator> Hi"):
        assert st.parse_markup(text) == TextEvent(text), text
    assert st.parse_markup("{laughs} &amp;", webvtt=True).text == "{laughs} &"  # WebVTT braces are text
    assert st.render_markup(TextEvent("x < y"), webvtt=True) == "x &lt; y"


def test_mov_text_style_box_round_trip_counts_characters():
    e = TextEvent("Grüße <ok>", [(0, 5, ITALIC), (6, 10, BOLD)])
    data = st.render(e, "mov_text")
    assert data[:2] == len("Grüße <ok>".encode()).to_bytes(2, "big") and b"styl" in data
    back = st.parse(data, "mov_text")
    assert back == e
    assert st.parse(b"\x00\x00", "mov_text").text == ""


def _decoded_ass(path) -> list[str]:
    out = []
    with av.open(str(path)) as c:
        s = c.streams.subtitles[0]
        for p in c.demux(s):
            if p.size:
                for sub in p.decode():
                    out.append(sub.ass.decode() if isinstance(sub.ass, bytes) else str(sub.ass))
    return out


def test_srt_styling_survives_mp4_and_comes_back_in_mkv(tmp_path):
    events = [(100, 400, "plain words"), (600, 300, "<i>Second line</i>"),
              (1000, 300, '{\\an8}<font color="#ff0000"><b>Loud</b></font> end')]
    src = make_video(tmp_path / "styled.mkv", n=36, subs=[dict(codec="subrip", events=events)])
    mp4 = tmp_path / "out.mp4"
    run(src, mp4)
    shown = _decoded_ass(mp4)  # FFmpeg's mov_text decoder, as players read it
    assert len(shown) == 3 and not any("<" in t for t in shown), shown
    assert shown[0].endswith("plain words") and "{\\i1}" in shown[1] and shown[1].endswith("Second line")
    assert "{\\b1}" in shown[2] and shown[2].split("Loud")[1] in ("{\\b0} end", "{\\r} end")  # bold ends
    # and back: the MP4's style boxes become SRT tags again
    mkv = tmp_path / "back.mkv"
    run(mp4, mkv)
    with av.open(str(mkv)) as c:
        texts = [bytes(p).decode() for p in c.demux(c.streams.subtitles[0]) if p.size]
    assert texts == ["plain words", "<i>Second line</i>", "<b>Loud</b> end"]


def test_verify_catches_a_conversion_that_loses_styling_or_words(tmp_path):
    events = [(100, 400, "plain words"), (600, 300, "<i>Second line</i>")]
    src = make_video(tmp_path / "styled.mkv", n=36, subs=[dict(codec="subrip", events=events)])
    good = tmp_path / "good.mp4"
    run(src, good)

    def bare(p):  # the italic cue written without its style box, as vsr once did
        data = bytes(p)
        return _with_payload(p, data[:2 + int.from_bytes(data[:2], "big")]) if p.stream.type == "subtitle" else p

    report = verify(src, _remux(good, tmp_path / "bare.mp4", bare), 2)
    assert any("1 event(s) changed" in x and "Second line" in x for x in report.problems), report.problems

    def reworded(p):
        if p.stream.type == "subtitle" and b"plain" in bytes(p):
            return _with_payload(p, st.render(TextEvent("plain wordz"), "mov_text"))
        return p

    report = verify(src, _remux(good, tmp_path / "reworded.mp4", reworded), 2)
    assert any("event(s) changed" in x and "wordz" in x for x in report.problems), report.problems
