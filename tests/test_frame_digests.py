"""Every output frame is verified against the digest its segment recorded when it decoded its own
file back: a wrong stretch of frames with the right count and times no longer passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from tests.test_archival import BIKES, encode, real_frames, weave
from vsr.errors import OutputError, VerifyError
from vsr.media.assemble import assemble
from vsr.media.decode import decode_segment
from vsr.media.encode import EncodeOptions, SegmentWriter, resolve_encode_options
from vsr.media.frame_digests import EncodedFrame, file_frame_digests, frame_digest
from vsr.media.picture import PictureOptions, plan_picture
from vsr.media.probe import probe
from vsr.media.segments import plan_segments

MEDIA = Path(__file__).parent / "data" / "media"
LEADER = MEDIA / "leader_320x240_h264_aac.mp4"  # 209 frames, 1/90000 time base, keyframes 0, 2.5, 4 s


# ---------------------------------------------------------------- one frame's digest
def test_a_frame_digest_sees_one_sample_and_not_the_line_padding():
    frame = av.VideoFrame(33, 17, "yuv420p10le")  # odd width: every line is padded
    for plane in frame.planes:
        np.frombuffer(plane, np.uint8)[:] = 7
    before = frame_digest(frame)
    chroma = frame.planes[2]
    lines = np.frombuffer(chroma, np.uint8).reshape(chroma.height, chroma.line_size)
    assert chroma.line_size > 17 * 2
    lines[:, 17 * 2:] = 201  # the padding after each line's 17 samples of 2 bytes
    assert frame_digest(frame) == before
    lines[16 // 2, 2 * 16 + 1] ^= 1  # the high byte of the last chroma sample of one line
    assert frame_digest(frame) != before
    assert frame_digest(av.VideoFrame(33, 17, "yuv420p10le")) != frame_digest(av.VideoFrame(33, 17, "yuv444p10le"))


def test_a_file_decodes_to_the_same_digests_every_time(tmp_path):
    base, first = file_frame_digests(LEADER)
    _, again = file_frame_digests(LEADER)
    assert len(first) == 209 and first == again
    assert [p for p, _ in first] == probe(LEADER).video.frame_pts and str(base) == "1/90000"
    assert len({d for _, d in first}) > 150  # the clip's repeated frames share one (49 of them)


# ---------------------------------------------------------------- verify, media layer
def _write_segments(src: Path, tmp: Path, seconds: float, pictures=lambda i, rgb: rgb) -> tuple:
    """The source's segments encoded as they are (x1; libx264 ultrafast: no look-ahead, so a frame
    changed later changes none before it); pictures(i, rgb) may change frame i (source order).
    Returns info, options, segment paths and every frame's EncodedFrame."""
    info = probe(src)
    options = resolve_encode_options(info, tmp / "out.mkv", EncodeOptions(preset="ultrafast"))
    paths, encoded, i = [], [], 0
    for seg in plan_segments(info, seconds):
        path = tmp / f"seg_{seg.index:05d}.nut"
        with SegmentWriter(path, info, options, info.video.width, info.video.height) as writer:
            for chunk in decode_segment(src, seg, 8, info=info):
                frames = np.stack([pictures(i + k, rgb) for k, rgb in enumerate(chunk.frames)])
                writer.write(frames, chunk.pts, chunk.side_data)
                i += len(chunk.pts)
        paths.append(path)
        encoded += _encoded(path, seg.index)
    return info, options, paths, encoded


def _encoded(path: Path, segment: int) -> list[EncodedFrame]:
    time_base, frames = file_frame_digests(path)
    return [EncodedFrame(float(p * time_base), d, segment) for p, d in frames]


def _patched(frame: int):
    """A 16x16 block of one frame 6 levels brighter: no count, time or sampled picture sees it."""
    def pictures(i: int, rgb: np.ndarray) -> np.ndarray:
        if i != frame:
            return rgb
        rgb = rgb.copy()
        rgb[100:116, 150:166] = np.minimum(rgb[100:116, 150:166].astype(np.int16) + 6, 255).astype(np.uint8)
        return rgb
    return pictures


@pytest.mark.parametrize("ext", ["mkv", "mp4"])  # Matroska rounds times to 1 ms, MP4 to its timescale
def test_verify_names_the_first_frame_that_is_not_what_its_segment_encoded(tmp_path, ext):
    info, options, paths, encoded = _write_segments(LEADER, tmp_path, 2.0)
    assert [e.segment for e in encoded].count(1) == 75  # segments of 75, 75 and 59 frames
    report = assemble(paths, LEADER, tmp_path / f"good.{ext}", info, options, scale=1, encoded=encoded)
    assert report.ok, report.problems
    assert report.facts["frames_digest_checked"] == 209 and report.facts["frames_digest_differ"] == 0

    # segment 1 made again from other pictures at the same pts (a stale or foreign segment file):
    # its frame 10 (frame 85 of the output) differs, and the frames that x264 predicted from it
    stale = tmp_path / "stale"
    stale.mkdir()
    _, _, stale_paths, _ = _write_segments(LEADER, stale, 2.0, _patched(85))
    shutil.copyfile(stale_paths[1], paths[1])
    plain = assemble(paths, LEADER, tmp_path / f"plain.{ext}", info, options, scale=1)
    assert plain.ok, plain.problems  # frame count, every time and the sampled pictures all agree
    t = info.video.frame_pts[85] * info.video.time_base
    with pytest.raises(VerifyError, match=rf"frame 85 at {float(t):.3f} s differs from what segment 1 encoded "
                                          r"\(its frame 10\); \d+ frames differ"):
        assemble(paths, LEADER, tmp_path / f"bad.{ext}", info, options, scale=1, encoded=encoded)
    assert not (tmp_path / f"bad.{ext}").exists()


def test_verify_sees_frames_in_another_order_or_missing(tmp_path):
    info, options, paths, encoded = _write_segments(LEADER, tmp_path, 2.0)
    out = tmp_path / "out.mkv"
    assemble(paths, LEADER, out, info, options, scale=1, encoded=encoded)
    from vsr.media.verify import verify

    assert encoded[160].digest != encoded[161].digest  # (the clip repeats some frames)
    swapped = encoded[:160] + [encoded[161], encoded[160]] + encoded[162:]
    report = verify(LEADER, out, 1, info=info, encoded=swapped)
    assert report.problems == [f"frame 160 at {swapped[160].time_s:.3f} s differs from what segment 2 encoded "
                               "(its frame 10); 2 frames differ"]
    report = verify(LEADER, out, 1, info=info, encoded=encoded[:-1])
    assert report.problems == ["output has 209 frames, its segments encoded 208"]
    late = [e._replace(time_s=e.time_s + 0.040) if i == 30 else e for i, e in enumerate(encoded)]
    report = verify(LEADER, out, 1, info=info, encoded=late)
    assert len(report.problems) == 1 and report.problems[0].startswith("frame 30 is shown at ")
    assert report.problems[0].endswith(f" s, segment 0 encoded it for {encoded[30].time_s + 0.040:.3f} s")


def test_field_rate_output_matches_two_digests_per_source_frame(tmp_path):
    """Deinterlaced to one frame per field: each output frame is checked against its own digest."""
    src = [f[:64, :96] for f in real_frames(BIKES, 12, start=60)]
    path = tmp_path / "woven.mp4"
    encode(path, [weave(src[2 * i], src[2 * i + 1]) for i in range(6)], field="tff")
    info = probe(path)
    plan = plan_picture(info, 2, PictureOptions(deinterlace_rate="field"))
    out_info = plan.output_info(info)
    options = resolve_encode_options(info, tmp_path / "out.mkv")
    paths, encoded = [], []
    for seg in plan_segments(info, 0.1):
        seg_path = tmp_path / f"seg{seg.index}.nut"
        with SegmentWriter(seg_path, out_info, options, *plan.out_size) as w:
            for chunk in decode_segment(path, seg, info=info, frame_filter=plan.frame_filter()):
                w.write(chunk.frames.repeat(2, axis=1).repeat(2, axis=2), chunk.pts, chunk.side_data)
        paths.append(seg_path)
        encoded += _encoded(seg_path, seg.index)
    assert len(encoded) == 12
    report = assemble(paths, path, tmp_path / "out.mkv", info, options, scale=plan.display_scale, picture=plan,
                      encoded=encoded)
    assert report.ok, report.problems
    assert report.facts["frames_digest_checked"] == 12 and report.facts["frames_per_source_frame"] == 2
    swapped = encoded[:4] + [encoded[5], encoded[4]] + encoded[6:]  # the two fields of frame 2
    with pytest.raises(VerifyError, match="frame 4 at .* differs from what segment"):
        assemble(paths, path, tmp_path / "bad.mkv", info, options, scale=plan.display_scale, picture=plan,
                 encoded=swapped)


# ---------------------------------------------------------------- a real job: stale segment on resume
def test_a_resumed_job_with_a_segment_that_is_not_what_was_encoded_fails_verify(tmp_path):
    """A segment file replaced by other pictures at the same pts, with the manifest's record made
    to match it (what a stale resume did), is caught by verify at the frame where it differs."""
    from vsr.cluster import JobOptions, run_upscale_job
    from vsr.job.finish import encoded_frames
    from vsr.job.plan import plan_job
    from vsr.job.segment import frames_sidecar, run_segment
    from vsr.storage.files import sha256_file

    work, out = tmp_path / "work", tmp_path / "out.mkv"
    options = JobOptions(model="lanczos", outscale=2.0, segment_seconds=2.0, workdir=str(work), workers=1,
                         keep_workdir=True, encode={"preset": "ultrafast"})
    first = run_upscale_job(LEADER, out, options)
    assert first["verify"]["ok"] and first["segments"] == 3
    assert first["verify"]["facts"]["frames_digest_checked"] == 209
    (manifest_path,) = work.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    record = manifest["segments"]["1"]
    segment_file = manifest_path.parent / record["file"]
    sidecar = frames_sidecar(segment_file)
    assert record["frames_file"] == sidecar.name and record["frames_sha256"] == sha256_file(sidecar)
    assert len(json.loads(sidecar.read_text())["digests"]) == record["frames"] == 75

    # segment 1 made again from nearest-neighbour pictures (close to lanczos: the sampled
    # pictures pass), its old digests kept, the record updated to the new file
    plan = plan_job(LEADER, out, options)
    assert plan.segments[1].start_pts == record["first_pts"]
    old_digests = sidecar.read_bytes()
    run_segment(plan, plan.segments[1], segment_file, lambda f, size: f.repeat(2, axis=1).repeat(2, axis=2))
    sidecar.write_bytes(old_digests)
    record.update(bytes=segment_file.stat().st_size, sha256=sha256_file(segment_file))
    manifest_path.write_text(json.dumps(manifest))
    out.unlink()
    t = float(plan.segments[1].start_pts * plan.info.video.time_base)
    with pytest.raises(VerifyError, match=rf"frame 75 at {t:.3f} s differs from what segment 1 encoded \(its frame 0\)"):
        run_upscale_job(LEADER, out, options)
    assert not out.exists()

    sidecar.unlink()  # and without its digests a segment cannot be assembled
    with pytest.raises(OutputError, match="segment 1: no frame digests in"):
        encoded_frames(plan, [manifest_path.parent / manifest["segments"][str(i)]["file"] for i in range(3)])
