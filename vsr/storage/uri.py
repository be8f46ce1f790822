"""Object-store locations (s3://bucket/key, and whatever else fsspec knows: gs://, az://, ...).

Every input, output, batch folder and work directory may be such a URI instead of a path. The
library is fsspec (s3fs for s3://), an optional extra: `pip install 'vsr[s3]'`. Endpoint, region
and credentials come only from the standard AWS environment variables and config files
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE and
~/.aws/*), which botocore reads itself: vsr passes no endpoint or key of its own.

Every failure of the store becomes a one-line InputError / OutputError naming the URI and the
cause (missing bucket, missing key, access denied, bad credentials).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, BinaryIO

from vsr.errors import InputError, OutputError, UsageError

EXTRA = "vsr[s3]"
# a block of an object read at a time by a worker's random-access reader: small enough that a
# node reads little more than its segments' bytes, large enough to keep requests few
# (VSR_S3_BLOCK, bytes, sets another size)
READ_BLOCK = 1 << 20
# botocore says at INFO where it found the credentials and the endpoint, on every client
for _name in ("botocore", "aiobotocore", "s3fs", "fsspec"):
    logging.getLogger(_name).setLevel(logging.WARNING)
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]+)://", re.IGNORECASE)


def is_uri(location: Any) -> bool:
    """True for `scheme://...` strings other than file:// (a local path is not a URI)."""
    if not isinstance(location, str):
        return False
    m = _SCHEME.match(location)
    return bool(m) and m.group(1).lower() != "file"


def local_path(location: str | os.PathLike) -> str | os.PathLike:
    """file:///x -> /x; anything else unchanged."""
    if isinstance(location, str) and location.lower().startswith("file://"):
        return location[len("file://"):]
    return location


def join(base: str, *names: str) -> str:
    """base/name/... for a URI (no Path: it would fold `s3://` into `s3:/`)."""
    out = base.rstrip("/")
    for n in names:
        out += "/" + n.strip("/")
    return out


def parent(uri: str) -> str:
    """The URI of the folder (prefix) holding `uri`."""
    scheme, rest = uri.split("://", 1)
    head, _, _ = rest.rstrip("/").rpartition("/")
    return f"{scheme}://{head or rest.split('/')[0]}"


def basename(uri: str) -> str:
    return uri.rstrip("/").rpartition("/")[2]


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a URI; UsageError naming the extra when the
    library is missing."""
    try:
        import fsspec.core
    except ImportError:
        raise UsageError(f"{uri}: object-store URIs need the optional extra: pip install '{EXTRA}'") from None
    try:
        # no listing cache: the driver and the workers of other nodes write the same prefixes
        return fsspec.core.url_to_fs(uri, use_listings_cache=False)
    except ImportError as err:
        raise UsageError(f"{uri}: object-store URIs need the optional extra: pip install '{EXTRA}' "
                         f"({err.name or err})") from None
    except ValueError as err:
        raise UsageError(f"{uri}: not a storage URI vsr can open: {err}") from None


_CREDENTIAL_WORDS = ("invalidaccesskeyid", "access key id", "signaturedoesnotmatch", "signature we calculated",
                     "invalidtoken", "security token", "credentials")


def why(err: BaseException) -> str:
    """The store's error in a few words (what the user must fix)."""
    text = " ".join(str(err).split()) or type(err).__name__
    lower = text.lower()
    if any(w in lower for w in _CREDENTIAL_WORDS):
        return f"bad or missing credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE): {text}"
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"access denied: {text}"
    if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
        return "no such bucket"
    if isinstance(err, FileNotFoundError):
        return "no such object"
    return text


def _with_body(fs: Any, path: str, err: BaseException) -> BaseException:
    """A HEAD's 403 has no body ("Forbidden"): a one-byte GET says whether the key is unknown
    (InvalidAccessKeyId) or the access denied."""
    if not isinstance(err, PermissionError):
        return err
    try:
        fs.cat_file(path, start=0, end=1)
    except Exception as again:  # noqa: BLE001
        return again
    return err


def stat(uri: str) -> dict[str, Any]:
    """size, etag, mtime and type of an object; InputError when it cannot be read."""
    fs, path = filesystem(uri)
    try:
        info = fs.info(path)
    except Exception as err:  # noqa: BLE001 - botocore's errors have no common base we may name
        raise InputError(f"{uri}: {why(_with_body(fs, path, err))}") from None
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated")
    return {"size": int(info.get("size") or 0), "etag": str(info.get("ETag") or info.get("etag") or ""),
            "mtime": str(mtime) if mtime is not None else None, "type": info.get("type", "file")}


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return bool(fs.exists(path))
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: {why(err)}") from None


_fetched = [0]  # bytes this process fetched through open_read (a list: updated from threads)
_fetched_lock = threading.Lock()


def read_block() -> int:
    """Bytes fetched per ranged GET (VSR_S3_BLOCK, else READ_BLOCK)."""
    return int(os.environ.get("VSR_S3_BLOCK") or READ_BLOCK)


def reader_buffer() -> int:
    """The read size a demuxer should ask of an open_read object: small (FFmpeg's 32 KiB would
    make a small segment's reads mostly buffer), never over a block."""
    return min(64 << 10, read_block())


def open_read(uri: str, block_size: int | None = None) -> BinaryIO:
    """A random-access, read-only file object of the object (ranged GETs of block_size, read
    ahead): PyAV demuxes through it, so a reader fetches only the byte ranges it reads."""
    fs, path = filesystem(uri)
    block_size = block_size or read_block()
    try:
        f = fs.open(path, "rb", block_size=block_size, cache_type="blockcache")
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{uri}: {why(err)}") from None
    cache = getattr(f, "cache", None)
    fetch = getattr(cache, "fetcher", None)
    if fetch is not None:  # count what goes over the network (bytes_fetched)
        def counted(start: int, end: int) -> bytes:
            data = fetch(start, end)
            with _fetched_lock:
                _fetched[0] += len(data)
            return data
        cache.fetcher = counted
    return f


def bytes_fetched() -> int:
    """Bytes this process has fetched from object stores through open_read so far."""
    return _fetched[0]


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{uri}: {why(err)}") from None


def write_bytes(uri: str, data: bytes) -> None:
    """One PUT: readers see the old object or the new one, never part of it."""
    fs, path = filesystem(uri)
    try:
        fs.pipe_file(path, data)
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: cannot write: {why(err)}") from None


def create_exclusive(uri: str, data: bytes) -> str | None:
    """PUT only when no object exists there (If-None-Match: *); its ETag, or None when one does."""
    fs, path = filesystem(uri)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return None
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: cannot write: {why(err)}") from None
    return stat(uri)["etag"]


def replace_if(uri: str, data: bytes, etag: str) -> str | None:
    """PUT only when the object still has `etag` (If-Match); the new ETag, or None when it changed."""
    fs, path = filesystem(uri)
    try:
        fs.pipe_file(path, data, IfMatch=etag)
    except Exception as err:  # noqa: BLE001
        text = str(err)
        if "pre-condition" in text or "Precondition" in text or isinstance(err, FileNotFoundError):
            return None
        raise OutputError(f"{uri}: cannot write: {why(err)}") from None
    return stat(uri)["etag"]


def upload(local: str | os.PathLike, uri: str) -> str:
    """Copy a local file to `uri` (a multipart upload for a large file, which the store shows
    only once complete: a reader never sees part of it); returns its ETag."""
    fs, path = filesystem(uri)
    try:
        fs.put_file(os.fspath(local), path)
        return str(fs.info(path).get("ETag") or "")
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: cannot upload: {why(err)}") from None


def download(uri: str, local: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    try:
        fs.get_file(path, os.fspath(local))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{uri}: cannot download: {why(err)}") from None


def remove(uri: str) -> None:
    """Delete an object if there (a missing one is no error)."""
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: cannot delete: {why(err)}") from None


def list_files(prefix: str, *, recursive: bool = False) -> list[str]:
    """URIs of the objects under a prefix (folder), sorted; InputError when it cannot be listed."""
    fs, path = filesystem(prefix)
    scheme = prefix.split("://", 1)[0]
    try:
        if recursive:
            found = fs.find(path.rstrip("/") + "/")
        else:
            found = [e["name"] for e in fs.ls(path.rstrip("/") + "/", detail=True) if e.get("type") == "file"]
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{prefix}: {why(err)}") from None
    return sorted(f"{scheme}://{p}" for p in found)


def check_bucket(uri: str, error: type = OutputError) -> None:
    """The bucket (or container) of a URI exists and these credentials may list it."""
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket + "/", detail=False)
    except Exception as err:  # noqa: BLE001
        raise error(f"{uri}: {why(err)}") from None


def check_writable(uri: str) -> None:
    """Write and delete a probe object beside `uri` (the only sure test of a write permission on
    an object store); OutputError naming the cause when it fails."""
    probe = join(parent(uri), f".{basename(uri)}.vsr-probe-{os.getpid()}")
    fs, path = filesystem(probe)
    try:
        fs.pipe_file(path, b"")
    except Exception as err:  # noqa: BLE001
        raise OutputError(f"{uri}: cannot write under {parent(uri)}/: {why(err)}") from None
    try:
        fs.rm_file(path)
    except Exception:  # noqa: BLE001 - written but not deletable: harmless, said nowhere
        pass


def glob(pattern: str) -> list[str]:
    """URIs of the objects a glob pattern (*, ?, **) matches, sorted."""
    fs, path = filesystem(pattern)
    scheme = pattern.split("://", 1)[0]
    try:
        found = [p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"]
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{pattern}: {why(err)}") from None
    return sorted(f"{scheme}://{p}" for p in found)
