"""The resume manifest: which segments of a job are finished, with frame count and checksum.

One JSON file in the job's work directory, rewritten atomically (temp file, fsync, os.replace)
after every finished segment, so a crash at any instant leaves either the old or the new
manifest, never a torn one. A segment is re-used on resume only when the job's fingerprint
(input identity, model, sizes, encode and picture settings, segment plan) is unchanged and the
segment file still has the recorded size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from vsr.errors import InputError, OutputError

log = logging.getLogger("vsr.cluster")

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply: absolute path, size, modification and change times,
    inode. ctime and inode too: a source replaced by another of the same size whose mtime was put
    back (rsync -t, touch -r) once resumed on the old file's segments, and the output passed."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


DIGEST_CACHE_NAME = "digests.json"
DIGEST_CACHE_ENTRIES = 65536  # ~10 MB of JSON; entries of files that are gone are dropped first
_DIGEST_MEMO: dict[tuple[str, tuple[int, ...]], str] = {}  # this process: batch check + job


def content_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, remembered in the user cache per (path, size, mtime, ctime,
    inode) so that an unchanged file is read once, not on every batch run.

    Tells a replaced, re-exported or retrained file from the one a result was made of, however
    small the change (a DV or v210 re-export keeps its size byte for byte), and, holding no path
    or time itself, stays the same when the file is copied or moved.
    """
    key = os.path.abspath(path)
    try:
        stamp = _stamp(os.stat(path))
        memo = _DIGEST_MEMO.get((key, tuple(stamp)))
        if memo is not None:
            return memo
        hit = _read_digest_cache().get(key)
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == stamp:
            _DIGEST_MEMO[(key, tuple(stamp))] = str(hit[1])
            return str(hit[1])
        if stamp[0] >= 1 << 30:
            log.info("%s: computing the SHA-256 of %.1f GB (once per version of the file)", path,
                     stamp[0] / 1e9)
        digest = sha256_file(path)
        changed = _stamp(os.stat(path)) != stamp
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    if not changed:  # a file still being written is hashed again next time
        _DIGEST_MEMO[(key, tuple(stamp))] = digest
        _remember_digest(key, stamp, digest)
    return digest


def _stamp(st: os.stat_result) -> list[int]:
    # ctime too: tools can set a file's mtime back (rsync -t, touch -d), not its ctime
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _digest_cache_path() -> Path:
    from vsr.weights.zoo import cache_dir

    return cache_dir() / DIGEST_CACHE_NAME


def _read_digest_cache() -> dict[str, Any]:
    try:
        data = json.loads(_digest_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_digest(key: str, stamp: list[int], digest: str) -> None:
    """Add one entry (newest last, the oldest dropped beyond DIGEST_CACHE_ENTRIES). Concurrent
    runs may lose each other's entries, never corrupt the file; a cache that cannot be written
    only costs a re-read next time."""
    cache = _read_digest_cache()
    cache.pop(key, None)
    cache[key] = [stamp, digest]
    if len(cache) > DIGEST_CACHE_ENTRIES:
        for old in [k for k in cache if not os.path.exists(k)]:
            del cache[old]
        for old in list(cache)[:max(0, len(cache) - DIGEST_CACHE_ENTRIES)]:
            del cache[old]
    path = _digest_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cache)
    except OSError as err:
        log.debug("cannot write the digest cache %s: %s", path, err)


def weights_identity(model: str) -> str | None:
    """content_digest of a weight file; None for a zoo name (its version is vsr's own)."""
    return content_digest(model) if os.path.isfile(model) else None


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys (dotted, two levels deep) whose values differ between two fingerprints."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or prefix.count(".") >= 2:
        return [prefix.rstrip(".")] if old != new else []
    keys = sorted(set(old) | set(new), key=str)
    return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]


class Manifest:
    """Finished segments of one job, persisted in `workdir/manifest.json`."""

    def __init__(self, workdir: str | os.PathLike, fingerprint: dict[str, Any]):
        self.workdir = Path(workdir)
        self.path = self.workdir / MANIFEST_NAME
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))  # normalise types
        self.segments: dict[int, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []  # one entry per run of the job (resume audit)

    # ------------------------------------------------------------ load / resume
    @staticmethod
    def previous_plan(workdir: str | os.PathLike, fingerprint: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The segments of the run this one would resume, when they are all that differs in the
        fingerprint and it finished some (a short video's plan depends on the worker slots,
        which may have changed since, e.g. a node lost); else None."""
        try:
            old = json.loads((Path(workdir) / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(old, dict) or old.get("version") != FORMAT_VERSION or not old.get("segments"):
            return None
        before, now = old.get("fingerprint"), json.loads(json.dumps(fingerprint, default=str))
        if not isinstance(before, dict) or not isinstance(before.get("segments"), list):
            return None
        if {k: v for k, v in before.items() if k != "segments"} != {k: v for k, v in now.items() if k != "segments"}:
            return None
        return before["segments"]

    @classmethod
    def open(cls, workdir: str | os.PathLike, fingerprint: dict[str, Any], *, resume: bool) -> "Manifest":
        """Load the manifest for resuming, or start a fresh one.

        Segments are kept only if the fingerprint matches and their files verify (size and
        SHA-256); everything else is dropped with a log line saying why.
        """
        workdir = Path(workdir)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create work directory {workdir}: {err.strerror or err}") from None
        m = cls(workdir, fingerprint)
        if not m.path.exists():
            return m
        if not resume:
            log.info("--no-resume: discarding the previous run's segments in %s", workdir)
            return m
        try:
            old = json.loads(m.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("unreadable manifest %s (%s): starting fresh", m.path, err)
            return m
        if old.get("version") != FORMAT_VERSION:
            log.info("manifest of another vsr format in %s: starting fresh", workdir)
            return m
        if old.get("fingerprint") != m.fingerprint:
            changed = changed_keys(old.get("fingerprint"), m.fingerprint)
            log.info("job settings or input changed since the last run (%s): starting fresh",
                     ", ".join(changed[:4]) or "fingerprint")
            return m
        m.history = list(old.get("history", []))
        for key, rec in old.get("segments", {}).items():
            if m._segment_file_ok(rec):
                m.segments[int(key)] = rec
            else:
                log.info("segment %s: file missing or changed, will be redone", key)
        return m

    def _segment_file_ok(self, rec: dict[str, Any]) -> bool:
        p = self.workdir / rec.get("file", "")
        try:
            return p.is_file() and p.stat().st_size == rec["bytes"] and sha256_file(p) == rec["sha256"]
        except (OSError, KeyError):
            return False

    # ------------------------------------------------------------ updates
    def is_done(self, index: int) -> bool:
        return index in self.segments

    def record(self, index: int, record: dict[str, Any]) -> None:
        """Mark segment `index` finished (record: file, frames, bytes, sha256, ...) and save."""
        self.segments[index] = dict(record)
        self.save()

    def start_run(self, info: dict[str, Any]) -> None:
        """Note the start of a run (which segments it re-used) and save."""
        self.history.append(dict(info))
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "segments": {str(k): v for k, v in sorted(self.segments.items())},
            "history": self.history,
        }

    def segment_paths(self, count: int) -> list[Path]:
        """Paths of segments 0..count-1 in order (all must be finished)."""
        missing = [i for i in range(count) if i not in self.segments]
        if missing:
            raise KeyError(f"segments not finished: {missing}")
        return [self.workdir / self.segments[i]["file"] for i in range(count)]
