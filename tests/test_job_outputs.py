"""Existing outputs in batch runs: the job tag in the container, skip only with the same settings,
never overwrite a file vsr did not make."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import validated_events
from vsr.media.containers import MUXERS, job_tag_text, read_job_tag, set_job_tag, ts_service_providers
from vsr.media.verify import verify

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
TINY = MEDIA / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
LANCZOS = ["-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"]


def run_vsr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def events(stdout: str) -> list[dict]:
    """The run's events, each checked against docs/events.schema.json."""
    return validated_events(stdout)


@pytest.mark.parametrize("ext", sorted(MUXERS))
def test_job_tag_round_trips_in_every_container(tmp_path, ext):
    muxer = MUXERS[ext]
    path = tmp_path / f"x{ext}"
    meta: dict[str, str] = {"title": "kept"}
    video_meta: dict[str, str] = {}
    set_job_tag(meta, video_meta, muxer, job_tag_text("0123abcd" * 4, "9.9"))
    opts = {"movflags": "+faststart"} if muxer in ("mp4", "mov") else {}
    with av.open(str(path), "w", format=muxer, options=opts) as c:
        s = c.add_stream("libvpx-vp9" if muxer == "webm" else "libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.metadata.update(meta)
        s.metadata.update(video_meta)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            f.pts = i
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode(None):
            c.mux(pk)
    assert read_job_tag(path) == "0123abcd" * 4
    if muxer == "mpegts":  # its SDT names the service (the title) and its provider (the tag)
        assert "vsr 9.9 job " + "0123abcd" * 4 in ts_service_providers(path)
        return
    with av.open(str(path)) as c:
        assert c.metadata.get("title") == "kept"  # the user's metadata stays beside the tag


def test_untagged_and_unreadable_files_have_no_tag(tmp_path):
    assert read_job_tag(TINY) is None  # encoder "Lavf..." is not a vsr tag
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert read_job_tag(junk) is None


def test_mov_output_keeps_quicktime_title_and_comment_and_carries_the_job_tag(tmp_path):
    src = tmp_path / "reel.mov"  # itself a vsr output: its video handler name is an older job's tag
    with av.open(str(TINY)) as i, av.open(str(src), "w", format="mov") as o:
        v = o.add_stream_from_template(i.streams.video[0])
        v.metadata["handler_name"] = job_tag_text("f" * 32, "0.1")
        o.metadata.update({"title": "Reel 7", "comment": "scanned 1998", "artist": "City Archive"})
        for pk in i.demux(i.streams.video[0]):
            if pk.size:
                pk.stream = v
                o.mux(pk)
    assert read_job_tag(src) == "f" * 32
    for ext in (".mov", ".mkv"):
        out = tmp_path / f"reel_x2{ext}"
        r = run_vsr("upscale", str(src), str(out), *LANCZOS, "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        done = next(e for e in events(r.stdout) if e["event"] == "job_done")
        assert read_job_tag(out) == done["output_tag"] != "f" * 32  # its own tag, not the source's
        with av.open(str(out)) as c:
            meta = {k.lower(): v for k, v in c.metadata.items()}  # Matroska reads back ARTIST, COMMENT
            assert {k: meta.get(k) for k in ("title", "comment", "artist")} == {
                "title": "Reel 7", "comment": "scanned 1998", "artist": "City Archive"}
            assert "f" * 32 not in str(dict(c.streams.video[0].metadata))
    data = (tmp_path / "reel_x2.mov").read_bytes()
    # standard QuickTime atoms (what Apple tools show), no mdta keys (movflags use_metadata_tags)
    assert b"\xa9nam" in data and b"\xa9cmt" in data and b"\xa9ART" in data and b"mdta" not in data


def test_batch_skips_same_settings_redoes_changed_ones_and_keeps_foreign_files(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(TINY, src / "tiny.mp4")
    shutil.copy(TINY, src / "other.mp4")
    out.mkdir()
    foreign = out / "other_x2.mov"
    shutil.copy(MEDIA / "iphone_568x320_rot90.mov", foreign)  # made by something else
    foreign_bytes = foreign.read_bytes()
    args = ["batch", str(src), str(out), "--name", "{stem}_x2.mov", *LANCZOS, "--json"]

    def statuses(r: subprocess.CompletedProcess) -> dict[str, dict]:
        return {Path(e["input"]).name: e for e in events(r.stdout) if e["event"].startswith("file_")
                and e["event"] != "file_start"}

    first = run_vsr(*args, "--crf", "20")
    assert first.returncode == 7, first.stderr[-3000:]  # the foreign file fails, the other is done
    st = statuses(first)
    assert st["tiny.mp4"]["event"] == "file_done"
    assert st["other.mp4"]["event"] == "file_failed" and st["other.mp4"]["exit_code"] == 4
    assert "no vsr job tag" in st["other.mp4"]["error"] and "--redo" in st["other.mp4"]["error"]
    assert foreign.read_bytes() == foreign_bytes  # not overwritten
    made = out / "tiny_x2.mov"
    tag, mtime = read_job_tag(made), made.stat().st_mtime_ns
    assert tag and verify(TINY, made, 2.0).ok

    same = run_vsr(*args, "--crf", "20")
    assert statuses(same)["tiny.mp4"]["event"] == "file_skipped"
    assert made.stat().st_mtime_ns == mtime and read_job_tag(made) == tag

    changed = run_vsr(*args, "--crf", "30")
    starts = [e for e in events(changed.stdout) if e["event"] == "file_start"]
    assert statuses(changed)["tiny.mp4"]["event"] == "file_done"
    assert starts[0]["redo_reason"] == "settings changed"
    assert read_job_tag(made) not in (None, tag) and verify(TINY, made, 2.0).ok
    assert foreign.read_bytes() == foreign_bytes
    assert sorted(p.name for p in out.iterdir()) == ["other_x2.mov", "tiny_x2.mov"]  # no temp files left

    redo = run_vsr(*args, "--crf", "30", "--redo")  # the user's explicit choice: replace everything
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert {e["event"] for e in statuses(redo).values()} == {"file_done"}
    assert read_job_tag(foreign) == read_job_tag(made) and verify(TINY, foreign, 2.0).ok


def brighter_copy(src: Path, dst: Path, levels: int) -> None:
    """`src` re-exported with its luma raised by `levels`: same codec, frames and times."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream(vin.codec_context.name, rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.time_base = vin.time_base
        vout.codec_context.max_b_frames = 0
        vout.codec_context.qmax = 3  # near-lossless: only the brightness differs
        for frame in inp.decode(vin):
            planes = frame.to_ndarray(format="yuv420p")
            luma = planes[: vin.height].astype(np.int16) + levels
            planes[: vin.height] = np.clip(luma, 16, 235).astype(np.uint8)
            new = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            new.pts, new.time_base = frame.pts, frame.time_base
            out.mux(vout.encode(new))
        out.mux(vout.encode())


def test_batch_remakes_an_output_whose_source_was_re_exported(tmp_path):
    """A source replaced under the same name (here: brighter by 2 levels) is made again, even
    though the old output still verifies against it: the tag holds the source's content digest."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(TINY, src / "reel.mp4")
    args = ["batch", str(src), str(out), *LANCZOS, "--json"]
    first = run_vsr(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    made = out / "reel.mp4"
    old_tag, old_bytes = read_job_tag(made), made.read_bytes()

    moved = tmp_path / "moved"
    shutil.move(str(src), moved)  # moving the sources keeps their outputs
    again = run_vsr("batch", str(moved), str(out), *LANCZOS, "--json")
    assert [e["event"] for e in events(again.stdout) if e["event"].startswith("file_")] == ["file_skipped"]
    shutil.move(str(moved), src)

    brighter_copy(TINY, tmp_path / "v2.mp4", levels=2)
    os.replace(tmp_path / "v2.mp4", src / "reel.mp4")
    # the gap this closes: the stale output passes every check against the new source
    assert verify(src / "reel.mp4", made, 2.0).ok
    second = run_vsr(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    start = next(e for e in events(second.stdout) if e["event"] == "file_start")
    assert start["redo_reason"].startswith("source changed"), start
    assert made.read_bytes() != old_bytes
    new_tag = read_job_tag(made)
    assert new_tag.split(".")[0] == old_tag.split(".")[0] and new_tag != old_tag  # same settings
    assert verify(src / "reel.mp4", made, 2.0).ok


def test_outputs_beside_their_sources_are_never_taken_as_inputs(tmp_path):
    """`vsr batch reels reels --name {stem}_x2{ext}` run every night must not upscale the last
    night's outputs (a_x2 -> a_x2_x2 -> ...); neither must a job spec whose glob covers them."""
    from vsr.job.spec import load_jobspec

    reels = tmp_path / "reels"
    reels.mkdir()
    shutil.copy(TINY, reels / "a.mp4")
    args = ["batch", str(reels), str(reels), "--name", "{stem}_x2{ext}", *LANCZOS, "--json"]
    for night in (1, 2):
        r = run_vsr(*args)
        assert r.returncode == 0, r.stderr[-3000:]
        done = {Path(e["input"]).name: (e["event"], e.get("reason", "")) for e in events(r.stdout)
                if e["event"] in ("file_done", "file_skipped", "file_failed")}
        if night == 1:
            assert {k: v[0] for k, v in done.items()} == {"a.mp4": "file_done"}, done
        else:  # last night's output is listed, as skipped and why, never upscaled again
            assert {k: v[0] for k, v in done.items()} == {"a.mp4": "file_skipped", "a_x2.mp4": "file_skipped"}
            assert "made by vsr" in done["a_x2.mp4"][1]
        assert sorted(p.name for p in reels.iterdir()) == ["a.mp4", "a_x2.mp4"]
    shutil.copy(TINY, reels / "b_x2.mp4")  # not made by vsr (no tag): an input like any other
    spec = tmp_path / "nightly.toml"
    spec.write_text('[job]\ninputs = ["reels/*.mp4", "reels/a_x2.mp4"]\noutput_dir = "reels"\n'
                    'name = "{stem}_up{ext}"\n[model]\nname = "lanczos"\noutscale = 2\n')
    got = [(i.input.name, i.not_input is None) for i in load_jobspec(spec).items]
    # the glob's match of a vsr output is no input; the same file named explicitly is one
    assert got == [("a.mp4", True), ("a_x2.mp4", False), ("b_x2.mp4", True), ("a_x2.mp4", True)]


def test_second_job_on_a_locked_output_fails_fast_and_touches_nothing(tmp_path):
    import signal
    import time

    out = tmp_path / "tiny_x2.mp4"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from vsr.storage.paths import default_workdir\nfrom vsr.storage.lock import OutputLock\n"
         "lock = OutputLock(default_workdir(sys.argv[1]), sys.argv[1]).acquire()\n"
         "(lock.workdir / 'seg_00000.nut').write_bytes(b'in progress')\nprint('locked', flush=True)\n"
         "time.sleep(120)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        workdir = tmp_path / ".tiny_x2.mp4.vsr-work"
        before = {p.name: p.read_bytes() for p in workdir.iterdir()}
        t0 = time.monotonic()
        r = run_vsr("upscale", str(TINY), str(out), *LANCZOS)
        assert r.returncode == 8, r.stderr[-2000:]
        assert time.monotonic() - t0 < 20, "fails fast, before Ray or any decoding"
        line = r.stderr.strip()
        assert "\n" not in line and line.startswith("vsr: error: ")
        assert f"pid {holder.pid} on " in line and "is writing this output" in line
        assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before  # the holder's files untouched
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [workdir.name]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel dropped the dead holder's lock: the same command now runs (and resumes nothing stale)
    r = run_vsr("upscale", str(TINY), str(out), *LANCZOS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert verify(TINY, out, 2.0).ok


def test_stale_part_file_of_a_dead_job_is_removed_and_others_are_kept(tmp_path):
    from vsr.media.assemble import host_name, stale_part_files, temp_output_path

    out = tmp_path / "tiny_x2.mp4"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, alive, host = gone.pid, os.getpid(), host_name()  # a finished process; this test's own one
    own = temp_output_path(out)
    assert own.name == f".tiny_x2.vsr-part-{host}-{alive}.mp4"
    half = TINY.read_bytes()[:3000]  # what a SIGKILL during assemble leaves: a truncated MP4
    stale = [tmp_path / f".tiny_x2.vsr-part-{host}-{dead}.mp4",
             tmp_path / f".tiny_x2.vsr-part-{dead}.mp4"]  # an older vsr's name (no host): this host's
    keep = [own,  # its process still runs
            tmp_path / f".tiny_x2.vsr-part-{alive}.mp4",  # the same, older name
            tmp_path / f".tiny_x2.vsr-part-other-node.example-{dead}.mp4",  # another host's: PID means nothing here
            tmp_path / f".tiny_x2.vsr-part-{host}-{dead}.mkv",  # another output's (other extension)
            tmp_path / f".tiny_x2_b.vsr-part-{host}-{dead}.mp4",  # another output's (other name)
            tmp_path / f".tiny_x2.vsr-part-{host}-{dead}.mp4.bak"]  # not our pattern
    for p in [*stale, *keep]:
        p.write_bytes(half)
    assert sorted(p for p, _ in stale_part_files(out)) == sorted(stale)
    r = run_vsr("upscale", str(TINY), str(out), *LANCZOS)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in stale:
        assert f"removed stale partial output {p} (its process {dead} is gone)" in r.stderr
        assert not p.exists()
    assert all(p.read_bytes() == half for p in keep)
    assert verify(TINY, out, 2.0).ok


def test_paths_to_the_same_output_share_one_work_directory_and_lock(tmp_path, monkeypatch):
    from vsr.storage.paths import default_workdir
    from vsr.storage.lock import OutputLock
    from vsr.errors import BusyError

    real = tmp_path / "archive"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    paths = [real / "a.mp4", tmp_path / "link" / "a.mp4", Path("link/a.mp4"), Path("archive/../link/a.mp4")]
    for base in (None, tmp_path / "work"):
        dirs = {default_workdir(p, base) for p in paths}
        assert len(dirs) == 1, dirs
        assert default_workdir(real / "b.mp4", base) not in dirs
    assert default_workdir(paths[0]) == real / ".a.mp4.vsr-work"  # the folder an unresolved path gave
    with OutputLock(default_workdir(paths[0]), paths[0]):
        with pytest.raises(BusyError):
            OutputLock(default_workdir(paths[2]), paths[2]).acquire()


def test_source_digest_is_computed_while_the_job_runs(tmp_path, monkeypatch):
    """A multi-GB master on slow storage must not hold the job back while it is hashed: the
    digest (needed only for the output's tag) runs beside Ray's start and the workers."""
    import threading

    from vsr.cluster import Events, JobOptions, run_upscale_job
    from vsr.cluster import job as job_module
    from vsr.storage.digests import content_digest

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    working = threading.Event()

    def on_event(name: str, fields: dict) -> None:
        if name == "segment_start":
            working.set()

    def slow_digest(path):
        assert working.wait(60), "the job waited for the source digest before any segment"
        return content_digest(path)

    monkeypatch.setattr(job_module, "content_digest", slow_digest)
    out = tmp_path / "tiny_x2.mkv"
    options = JobOptions(model="lanczos", outscale=2.0, encode={"preset": "ultrafast"})
    summary = run_upscale_job(TINY, out, options, events=Events(callback=on_event))
    assert summary["verify"]["ok"]
    assert summary["output_tag"] == f"{summary['settings_fingerprint']}.{content_digest(TINY)[:16]}"
    assert read_job_tag(out) == summary["output_tag"]


def test_batch_into_its_own_folder_with_the_same_names_fails_before_starting_workers(tmp_path):
    folder = tmp_path / "reels"
    folder.mkdir()
    shutil.copy(TINY, folder / "a.mp4")
    before = (folder / "a.mp4").read_bytes()
    r = run_vsr("batch", str(folder), str(folder), *LANCZOS, "--json")
    assert r.returncode != 0
    evs = events(r.stdout)
    failed = [e for e in evs if e["event"] == "file_failed"]
    assert len(failed) == 1 and "is the input" in failed[0]["error"] and "{stem}_x2{ext}" in failed[0]["error"]
    assert not [e for e in evs if e["event"] == "worker_ready"]  # no Ray, no workers for nothing
    assert (folder / "a.mp4").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.mp4"]
