"""The resume manifest: which segments of a job are finished, with frame count and checksum.

One JSON file in the job's work directory, rewritten atomically (temp file, fsync, os.replace)
after every finished segment, so a crash at any instant leaves either the old or the new
manifest, never a torn one. A segment is re-used on resume only when the job's fingerprint
(input identity, model, sizes, encode and picture settings, segment plan) is unchanged, the
segment file still has the recorded size and SHA-256, and its frame digests file (what its
frames decoded to, which verify matches the output against) still has the recorded SHA-256.

A work directory on an object store (a URI) holds the same manifest object, written with one PUT
(readers see the old or the new one); there a segment is re-used when its object and its frame
digests object still have the size and ETags recorded when the worker uploaded them (the driver
checks the SHA-256 when it downloads them to assemble).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vsr.errors import OutputError, VsrError
from vsr.storage import uri as store
from vsr.storage.files import sha256_file, write_json_atomic

log = logging.getLogger("vsr.cluster")

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys (dotted, two levels deep) whose values differ between two fingerprints."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or prefix.count(".") >= 2:
        return [prefix.rstrip(".")] if old != new else []
    keys = sorted(set(old) | set(new), key=str)
    return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]


class Manifest:
    """Finished segments of one job, persisted in `workdir/manifest.json`."""

    def __init__(self, workdir: str | os.PathLike, fingerprint: dict[str, Any]):
        self.remote = store.is_uri(workdir)
        self.workdir: Any = str(workdir) if self.remote else Path(workdir)
        self.path: Any = self._at(MANIFEST_NAME)
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
            old = json.loads(_read_text(_join(workdir, MANIFEST_NAME)))
        except (OSError, ValueError, VsrError):
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
        m = cls(workdir, fingerprint)
        if not m.remote:
            try:
                m.workdir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create work directory {workdir}: {err.strerror or err}") from None
        if not (store.exists(m.path) if m.remote else m.path.exists()):
            return m
        if not resume:
            log.info("--no-resume: discarding the previous run's segments in %s", workdir)
            return m
        try:
            old = json.loads(_read_text(m.path))
        except (OSError, ValueError, VsrError) as err:
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
            if not m._segment_file_ok(rec):
                log.info("segment %s: file missing or changed, will be redone", key)
            elif not m._frames_file_ok(rec):
                log.info("segment %s: its frame digests are missing or changed, will be redone", key)
            else:
                m.segments[int(key)] = rec
        return m

    def _at(self, name: str) -> Any:
        return _join(self.workdir, name)

    def _object_ok(self, name: Any, size: Any, etag: Any) -> bool:
        """An object of the work directory URI still has the recorded ETag (and size)."""
        if not isinstance(name, str) or not name or "/" in name or not etag:
            return False
        try:
            info = store.stat(self._at(name))
        except VsrError:
            return False
        return info["etag"] == etag and (size is None or info["size"] == size)

    def _segment_file_ok(self, rec: dict[str, Any]) -> bool:
        if self.remote:
            return self._object_ok(rec.get("file"), rec.get("bytes"), rec.get("etag"))
        p = self.workdir / rec.get("file", "")
        try:
            return p.is_file() and p.stat().st_size == rec["bytes"] and sha256_file(p) == rec["sha256"]
        except (OSError, KeyError, TypeError):
            return False

    def _frames_file_ok(self, rec: dict[str, Any]) -> bool:
        """The segment's frame digests (vsr.job.segment.frames_sidecar), which verify matches the
        output against, are the ones recorded with it: a record without them (an older vsr's) or
        with another file there is not re-used."""
        name = rec.get("frames_file")
        if not isinstance(name, str) or not name or Path(name).name != name:
            return False
        if self.remote:
            return self._object_ok(name, None, rec.get("frames_etag"))
        try:
            return sha256_file(self.workdir / name) == rec.get("frames_sha256")
        except OSError:
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
        if self.remote:
            store.write_bytes(self.path, json.dumps(self.to_dict(), indent=1, default=str).encode())
        else:
            write_json_atomic(self.path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "segments": {str(k): v for k, v in sorted(self.segments.items())},
            "history": self.history,
        }

    def segment_paths(self, count: int) -> list[Any]:
        """Paths (URIs) of segments 0..count-1 in order (all must be finished)."""
        missing = [i for i in range(count) if i not in self.segments]
        if missing:
            raise KeyError(f"segments not finished: {missing}")
        return [self._at(self.segments[i]["file"]) for i in range(count)]


def _join(workdir: Any, name: str) -> Any:
    return store.join(str(workdir), name) if store.is_uri(workdir) else Path(workdir) / name


def _read_text(location: Any) -> str:
    if store.is_uri(location):
        return store.read_bytes(str(location)).decode("utf-8")
    return Path(location).read_text(encoding="utf-8")
