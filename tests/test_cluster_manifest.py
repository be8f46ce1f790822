"""The resume manifest: atomic writes, fingerprint and checksum validation (no Ray needed)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from vsr.cluster.manifest import Manifest, changed_keys
from vsr.storage.files import sha256_file, write_json_atomic


def _fingerprint(**changes):
    fp = {"input": {"path": "/x/in.mp4", "size": 10, "mtime_ns": 1}, "model": "m", "out_size": [640, 480],
          "segments": [{"index": 0}, {"index": 1}]}
    fp.update(changes)
    return fp


def _finish(m: Manifest, index: int, payload: bytes) -> None:
    path = m.workdir / f"seg_{index:05d}.mkv"
    path.write_bytes(payload)
    frames = path.with_name(path.name + ".frames.json")  # what run_segment writes beside it
    write_json_atomic(frames, {"version": 1, "time_base": "1/25", "pts": [0, 1, 2], "digests": ["a", "b", "c"]})
    m.record(index, {"file": path.name, "frames": 3, "bytes": len(payload), "sha256": sha256_file(path),
                     "frames_file": frames.name, "frames_sha256": sha256_file(frames)})


def test_atomic_write_leaves_no_temp_and_valid_json(tmp_path):
    target = tmp_path / "m.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "ü": "ß"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2, "ü": "ß"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "m.json"
    write_json_atomic(target, {"a": 1})
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"a": 2, "bad": Unprintable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_resume_keeps_verified_segments(tmp_path):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    _finish(m, 0, b"zero")
    _finish(m, 1, b"one")
    again = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    assert sorted(again.segments) == [0, 1]
    assert again.segment_paths(2)[1].read_bytes() == b"one"


def test_resume_drops_changed_or_missing_segment_files(tmp_path):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    _finish(m, 0, b"zero")
    _finish(m, 1, b"one")
    (m.workdir / "seg_00000.mkv").write_bytes(b"ZERO")  # same size, other bytes
    os.unlink(m.workdir / "seg_00001.mkv")
    again = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    assert again.segments == {}


def test_resume_drops_segments_whose_frame_digests_changed_or_are_missing(tmp_path, caplog):
    """verify matches the output against each segment's frame digests: a segment is re-used only
    with the digests recorded with it (a record of an older vsr, without them, is redone)."""
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    for i in range(3):
        _finish(m, i, b"seg%d" % i)
    frames = m.workdir / "seg_00000.mkv.frames.json"
    frames.write_text(frames.read_text().replace('"a"', '"x"'))
    m.segments[1].pop("frames_sha256")
    m.save()
    with caplog.at_level("INFO", logger="vsr"):
        again = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    assert sorted(again.segments) == [2]
    assert "segment 0: its frame digests are missing or changed, will be redone" in caplog.text
    (m.workdir / "seg_00002.mkv.frames.json").unlink()
    assert Manifest.open(tmp_path / "w", _fingerprint(), resume=True).segments == {}


def test_changed_settings_or_no_resume_start_fresh(tmp_path, caplog):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    _finish(m, 0, b"zero")
    with caplog.at_level("INFO", logger="vsr"):
        assert Manifest.open(tmp_path / "w", _fingerprint(model="other"), resume=True).segments == {}
    assert "changed since the last run (model): starting fresh" in caplog.text  # says what changed
    assert Manifest.open(tmp_path / "w", _fingerprint(), resume=False).segments == {}
    assert sorted(Manifest.open(tmp_path / "w", _fingerprint(), resume=True).segments) == [0]


def test_torn_manifest_is_not_trusted(tmp_path):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    _finish(m, 0, b"zero")
    m.path.write_text(m.path.read_text()[:20])
    assert Manifest.open(tmp_path / "w", _fingerprint(), resume=True).segments == {}


def test_segment_paths_requires_every_segment(tmp_path):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    _finish(m, 1, b"one")
    with pytest.raises(KeyError):
        m.segment_paths(2)


def test_weight_file_identity_changes_when_the_file_is_replaced(tmp_path):
    """A weight file retrained in place must change the job fingerprint (no stale segments)."""
    from vsr.storage.digests import weights_identity

    w = tmp_path / "generator.safetensors"
    w.write_bytes(b"a" * 100)
    first = weights_identity(str(w))
    moved = tmp_path / "copied.safetensors"
    w.rename(moved)
    assert weights_identity(str(moved)) == first  # the same weights under another path or time
    moved.rename(w)
    w.write_bytes(b"b" * 100)  # retrained in place: same size
    assert weights_identity(str(w)) != first
    assert weights_identity("realesr-animevideov3-x2") is None  # zoo names: versioned with vsr
    m = Manifest.open(tmp_path / "work", _fingerprint(weights=first), resume=True)
    _finish(m, 0, b"segment")
    again = Manifest.open(tmp_path / "work", _fingerprint(weights=weights_identity(str(w))), resume=True)
    assert again.segments == {}


def test_content_digest_sees_any_change_ignores_path_and_time_and_caches(tmp_path, monkeypatch):
    from vsr.storage import digests as manifest_module
    from vsr.storage.digests import content_digest
    from vsr.errors import InputError

    monkeypatch.setenv("VSR_CACHE", str(tmp_path / "cache"))
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    a = tmp_path / "a.mkv"
    a.write_bytes(data)
    first = content_digest(a)
    assert first == hashlib.sha256(data).hexdigest()
    b = tmp_path / "sub" / "b.mkv"
    b.parent.mkdir()
    b.write_bytes(data)
    os.utime(b, ns=(1, 1))
    assert content_digest(b) == first  # another path and time, the same content
    changed = bytearray(data)
    changed[len(data) // 2 + 12345] ^= 1  # one bit, same size (a DV re-export keeps its size)
    b.write_bytes(changed)
    os.utime(b, ns=(1, 1))  # and the old mtime put back
    assert content_digest(b) != first

    reads = []
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: reads.append(p) or "x" * 64)
    monkeypatch.setattr(manifest_module, "_DIGEST_MEMO", {})  # a new process: the cache file only
    assert content_digest(a) == first and reads == []  # unchanged: from the cache, not read again
    a.write_bytes(data[:-1] + b"!")
    assert content_digest(a) == "x" * 64 and reads == [a]  # changed: read again
    with pytest.raises(InputError, match="cannot read"):
        content_digest(tmp_path / "missing.mkv")


def test_output_settings_know_a_weight_file_by_its_content_not_its_path(tmp_path):
    """The settings fingerprint (resume manifest, output tag) of a job with a weight file does not
    change when the same file lies elsewhere under another name, and does when its content
    changes."""
    from vsr.job.plan import output_settings, settings_fingerprint
    from vsr.job.options import JobOptions

    def fingerprint(weights) -> str:
        options = JobOptions(model=str(weights)).validate()
        # the worker names a weight file's model after the file (its stem)
        return settings_fingerprint(output_settings(options, weights.stem, {"codec": "libx264"}, {}, (640, 480)))

    here, there = tmp_path / "a" / "generator.safetensors", tmp_path / "b" / "other.safetensors"
    for path in (here, there):
        path.parent.mkdir()
        path.write_bytes(b"a" * 100)
    assert fingerprint(here) == fingerprint(there)
    there.write_bytes(b"b" * 100)
    assert fingerprint(here) != fingerprint(there)
    zoo = JobOptions(model="realesr-animevideov3-x2").validate()
    assert output_settings(zoo, "realesr-animevideov3-x2", {}, {}, (640, 480))["upscaler"]["model"] == \
        "realesr-animevideov3-x2"  # zoo names as before


def test_changed_keys_name_what_changed_two_levels_deep():
    old = _fingerprint(encode={"codec": "hevc_nvenc", "crf": 20}, upscaler={"tile": {"size": 0}})
    new = _fingerprint(encode={"codec": "libx265", "crf": 20}, upscaler={"tile": {"size": 256}},
                       segments=[{"index": 0}], on_corrupt="fail")
    assert changed_keys(old, new) == ["encode.codec", "on_corrupt", "segments", "upscaler.tile"]
    assert changed_keys(old, dict(old)) == []


def test_previous_plan_only_when_the_segments_are_all_that_changed(tmp_path):
    m = Manifest.open(tmp_path / "w", _fingerprint(), resume=True)
    finer = [{"index": 0}, {"index": 1}, {"index": 2}]
    assert Manifest.previous_plan(tmp_path / "w", _fingerprint(segments=finer)) is None  # nothing finished
    _finish(m, 0, b"zero")
    assert Manifest.previous_plan(tmp_path / "w", _fingerprint(segments=finer)) == _fingerprint()["segments"]
    assert Manifest.previous_plan(tmp_path / "w", _fingerprint(segments=finer, model="other")) is None
    assert Manifest.previous_plan(tmp_path / "elsewhere", _fingerprint()) is None


def test_input_replaced_with_its_mtime_put_back_is_another_input(tmp_path):
    """A source overwritten by a same-size file whose mtime was set back (rsync -t, touch -r) was
    the same input to resume, which then re-used the old file's segments."""
    import os

    from vsr.storage.digests import input_identity

    src = tmp_path / "src.mp4"
    src.write_bytes(b"a" * 1000)
    st = os.stat(src)
    before = input_identity(src)
    assert input_identity(src) == before  # untouched: the same input
    replacement = tmp_path / "b.tmp"
    replacement.write_bytes(b"b" * 1000)
    os.replace(replacement, src)  # how tools replace files
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = input_identity(src)
    assert (after["size"], after["mtime_ns"]) == (before["size"], before["mtime_ns"]) and after != before
    with open(src, "r+b") as f:  # edited in place, mtime put back: ctime still moves
        f.write(b"c")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert input_identity(src) != after
