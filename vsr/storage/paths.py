"""Paths: a job's input and output checked before any work, its work directory, the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vsr.errors import InputError, OutputError, UsageError
from vsr.storage import uri as store


def cache_dir() -> Path:
    """Directory of converted weights and digests: $VSR_CACHE, else $XDG_CACHE_HOME/vsr, else
    ~/.cache/vsr."""
    if os.environ.get("VSR_CACHE"):
        return Path(os.environ["VSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vsr"


def default_workdir(output: str | os.PathLike, base: str | os.PathLike | None = None) -> Path | str:
    """The work directory of a job: a hidden folder beside the output (same filesystem, and the
    same command finds it again to resume), or one folder per output inside `base` (--workdir,
    e.g. shared storage of a cluster; several jobs can share it).

    The folder is resolved (symlinks, `..`, relative paths), so every path to the same output
    shares one work directory and one lock. Not the file name: os.replace writes the output
    over a symlink there, not through it. Paths without symlinks hash as before (absolute path).
    An output or base that is a URI (s3://...) gives a URI (a str).
    """
    if store.is_uri(output) or store.is_uri(base):
        return _uri_workdir(output, base)
    out = Path(output).absolute()
    out = out.parent.resolve() / out.name
    if base is None:
        return out.parent / f".{out.name}.vsr-work"
    tag = hashlib.sha1(str(out).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return Path(base).absolute() / f"{out.name}.{tag}"


def _uri_workdir(output: str | os.PathLike, base: str | os.PathLike | None) -> Path | str:
    if store.is_uri(output):
        out, name = str(output), store.basename(str(output))
    else:
        path = Path(output).absolute()
        out, name = str(path.parent.resolve() / path.name), path.name
    if base is None:
        return store.join(store.parent(out), f".{name}.vsr-work")
    tag = hashlib.sha1(out.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    if store.is_uri(base):
        return store.join(str(base), f"{name}.{tag}")
    return Path(base).absolute() / f"{name}.{tag}"


def check_locations(input: str | os.PathLike, output: str | os.PathLike) -> tuple[Path | str, Path | str]:
    """check_paths where the input, the output or both are URIs: the object exists and is not
    empty; the output's bucket exists and its prefix takes a write (a probe object, deleted);
    the output is not the input. Every check answers before any work, in one line."""
    if store.is_uri(input):
        info = store.stat(str(input))
        if info["type"] != "file":
            raise InputError(f"{input}: not an object (a prefix? give the key of a file)")
        if info["size"] == 0:
            raise InputError(f"{input}: empty object")
        src: Path | str = str(input)
    else:
        src = _check_input_path(Path(input))
    if store.is_uri(output):
        if str(output) == str(input):
            raise UsageError(f"output {output} is the input; choose another output key")
        if str(output).endswith("/"):
            raise UsageError(f"output {output} is a prefix; give a key such as {output}{store.basename(str(input))}")
        store.check_bucket(str(output))
        store.check_writable(str(output))
        return src, str(output)
    return src, _check_output_path(Path(output), Path(input))


def _check_input_path(src: Path) -> Path:
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if not src.is_file():
        raise InputError(f"{src}: not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: not readable")
    return src


def _check_output_path(dst: Path, src: Path) -> Path:
    if dst.is_dir():
        raise UsageError(f"output {dst} is a directory; give a file name such as {dst / src.name}")
    parent = dst.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{dst}: cannot create the output folder {parent}: {err.strerror or err}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: output folder {parent} is not writable")
    return dst


def check_paths(input: str | os.PathLike, output: str | os.PathLike) -> tuple[Path, Path]:
    """Input exists and is a file; output is not the input and its folder is writable.
    (URIs: check_locations.)"""
    if store.is_uri(input) or store.is_uri(output):
        return check_locations(input, output)  # type: ignore[return-value]
    src, dst = Path(store.local_path(input)), Path(store.local_path(output))
    _check_input_path(src)
    if dst.exists() and dst.resolve() == src.resolve() or dst.absolute() == src.absolute():
        raise UsageError(f"output {dst} is the input; choose another output path")
    return src, _check_output_path(dst, src)  # its folder made, like `-o out/x.mp4` in most tools
