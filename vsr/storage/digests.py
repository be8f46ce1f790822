"""What identifies a file: cheaply (path, size, times, inode) or by content (SHA-256, cached)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vsr.errors import InputError
from vsr.storage.files import sha256_file, write_json_atomic
from vsr.storage import uri as store
from vsr.storage.paths import cache_dir

log = logging.getLogger("vsr")


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply: absolute path, size, modification and change times,
    inode. ctime and inode too: a source replaced by another of the same size whose mtime was put
    back (rsync -t, touch -r) once resumed on the old file's segments, and the output passed.
    An object (URI): its URI, size, ETag (the store's content hash) and modification time."""
    if store.is_uri(path):
        info = store.stat(str(path))
        return {"path": str(path), "size": info["size"], "etag": info["etag"], "mtime": info["mtime"]}
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


