"""Paths: a job's input and output checked before any work, its work directory, the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vsr.errors import InputError, OutputError, UsageError


def cache_dir() -> Path:
    """Directory of converted weights and digests: $VSR_CACHE, else $XDG_CACHE_HOME/vsr, else
    ~/.cache/vsr."""
    if os.environ.get("VSR_CACHE"):
        return Path(os.environ["VSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vsr"


def default_workdir(output: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """The work directory of a job: a hidden folder beside the output (same filesystem, and the
    same command finds it again to resume), or one folder per output inside `base` (--workdir,
    e.g. shared storage of a cluster; several jobs can share it).

    The folder is resolved (symlinks, `..`, relative paths), so every path to the same output
    shares one work directory and one lock. Not the file name: os.replace writes the output
    over a symlink there, not through it. Paths without symlinks hash as before (absolute path).
    """
    out = Path(output).absolute()
    out = out.parent.resolve() / out.name
    if base is None:
        return out.parent / f".{out.name}.vsr-work"
    tag = hashlib.sha1(str(out).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return Path(base).absolute() / f"{out.name}.{tag}"


def check_paths(input: str | os.PathLike, output: str | os.PathLike) -> tuple[Path, Path]:
    """Input exists and is a file; output is not the input and its folder is writable."""
    src, dst = Path(input), Path(output)
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if not src.is_file():
        raise InputError(f"{src}: not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: not readable")
    if dst.exists() and dst.resolve() == src.resolve() or dst.absolute() == src.absolute():
        raise UsageError(f"output {dst} is the input; choose another output path")
    if dst.is_dir():
        raise UsageError(f"output {dst} is a directory; give a file name such as {dst / src.name}")
    parent = dst.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)  # like `-o out/x.mp4` in most tools
    except OSError as err:
        raise OutputError(f"{dst}: cannot create the output folder {parent}: {err.strerror or err}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: output folder {parent} is not writable")
    return src, dst
