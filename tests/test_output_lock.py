"""The one-job-per-output lock: release and clean-up never take another job's lock away."""

from __future__ import annotations

import pytest

from vsr.storage.lock import LOCK_NAME, OutputLock, clear_workdir
from vsr.errors import BusyError


def test_release_leaves_a_lock_another_job_took_after_ours_went(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    first = OutputLock(work, out).acquire()
    (work / LOCK_NAME).unlink()  # our lock file gone (a clean-up) while we still run
    second = OutputLock(work, out).acquire()  # a new job locks the new file: allowed
    first.release()  # must not remove the second job's lock file
    assert (work / LOCK_NAME).is_file()
    with pytest.raises(BusyError, match="another vsr job"):
        OutputLock(work, out).acquire()  # a third job is still kept out
    second.release()
    assert not work.exists()


def test_finished_job_clears_its_work_directory_but_the_lock_last(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    lock = OutputLock(work, out).acquire()
    (work / "segments").mkdir()
    (work / "segments" / "000000.nut").write_bytes(b"x")
    (work / "manifest.json").write_text("{}")
    clear_workdir(work)
    assert [p.name for p in work.iterdir()] == [LOCK_NAME]
    with pytest.raises(BusyError):
        OutputLock(work, out).acquire()  # still held until release
    lock.release()
    assert not work.exists()
