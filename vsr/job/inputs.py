"""The files of a batch: videos found in a folder, paired with their outputs; vsr's own outputs
are not inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vsr.errors import InputError, UsageError, VsrError
from vsr.storage import uri as store

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .vob .wmv .asf .flv .3gp .ogv .ogg .dv .mxf .y4m"
    " .nut .ivf .obu .m2v .h264 .h265 .hevc .264 .265".split())
DEFAULT_NAME = "{stem}{ext}"


@dataclass
class BatchItem:
    """One input file and the output it should become."""

    input: Path | str  # str: a URI (s3://...)
    output: Path | str
    encode: dict[str, Any] | None = None  # per-file encode options (job specs), else the job's
    codecs: list[str] | None = None  # encoders that suit this file, preferred first (job specs)
    failure: VsrError | None = None  # found bad while validating: reported, not run
    not_input: str | None = None  # why this match is no input (a vsr output): reported as skipped

    def options_for(self, options: Any) -> Any:
        """The job options of this file: the batch's, with this file's encoders (job specs)."""
        return options if self.encode is None else options.replace(encode=self.encode, codecs=self.codecs)


def find_videos(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Video files (by extension) in a folder, sorted by name; hidden files are left out."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    walk = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def find_objects(prefix: str, *, recursive: bool = False) -> list[tuple[str, PurePosixPath]]:
    """(URI, path relative to the prefix) of the video objects under a URI prefix, sorted."""
    root = prefix.rstrip("/")
    found = []
    for uri in store.list_files(root, recursive=recursive):
        rel = PurePosixPath(uri[len(root) + 1:])
        if rel.suffix.lower() in VIDEO_SUFFIXES and not any(part.startswith(".") for part in rel.parts):
            found.append((uri, rel))
    return found


def output_name(src: PurePosixPath | Path, pattern: str) -> str:
    """Fill the output name pattern: {stem} (name without extension), {ext} (with the dot),
    {name} (full name)."""
    try:
        name = pattern.format(stem=src.stem, ext=src.suffix, name=src.name)
    except (KeyError, IndexError, ValueError) as err:
        raise UsageError(f"name pattern {pattern!r}: {err}; use {{stem}}, {{ext}} and {{name}}") from None
    if not name or os.sep in name or name in (".", ".."):
        raise UsageError(f"name pattern {pattern!r} gives {name!r} for {src.name}; it must be a plain file name")
    return name


def plan_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, pattern: str = DEFAULT_NAME,
                recursive: bool = False) -> list[BatchItem]:
    """Pair every video of in_dir with its output in out_dir (sub-folders mirrored); vsr's own
    outputs, when out_dir is or lies in in_dir, are not inputs (without_own_outputs)."""
    if store.is_uri(str(in_dir)) or store.is_uri(str(out_dir)):
        return _plan_uri_folder(str(in_dir), str(out_dir), pattern, recursive)
    src_root, dst_root = Path(in_dir), Path(out_dir)
    items = []
    for src in find_videos(src_root, recursive=recursive):
        dst = dst_root / src.parent.relative_to(src_root) / output_name(src, pattern)
        item = BatchItem(src, dst)
        if dst.absolute() == src.absolute() or (dst.exists() and os.path.samefile(dst, src)):
            # reported per file before any worker starts (check_paths would say it only then)
            item.failure = UsageError(f"output {dst} is the input; choose another output folder, "
                                      "or a --name pattern such as \"{stem}_x2{ext}\"")
        items.append(item)
    return without_own_outputs(items, dst_root)


def _plan_uri_folder(in_dir: str, out_dir: str, pattern: str, recursive: bool) -> list[BatchItem]:
    """plan_folder where either folder is a URI prefix (items then hold URIs as str)."""
    if store.is_uri(in_dir):
        found: list[tuple[Any, PurePosixPath]] = find_objects(in_dir, recursive=recursive)
    else:
        found = [(p, PurePosixPath(p.relative_to(in_dir).as_posix())) for p in find_videos(in_dir, recursive=recursive)]
    items = []
    for src, rel in found:
        name = output_name(rel, pattern)
        parts = [*rel.parent.parts, name]
        dst: Path | str = store.join(out_dir, *parts) if store.is_uri(out_dir) else Path(out_dir).joinpath(*parts)
        item = BatchItem(src, dst)
        if str(dst) == str(src):
            item.failure = UsageError(f"output {dst} is the input; choose another output prefix, "
                                      "or a --name pattern such as \"{stem}_x2{ext}\"")
        items.append(item)
    if store.is_uri(out_dir):
        inside = out_dir.rstrip("/") + "/"
        for item in items:  # vsr's own outputs among the inputs (see without_own_outputs)
            if str(item.input).startswith(inside) and read_job_tag_of(item.input) is not None:
                item.not_input = "made by vsr (it carries a job tag) and in the output folder: not an input"
        return items
    return without_own_outputs(items, out_dir)


def read_job_tag_of(location: Path | str) -> str | None:
    from vsr.media.containers import read_job_tag

    return read_job_tag(location)


def without_own_outputs(items: list[BatchItem], out_root: str | os.PathLike) -> list[BatchItem]:
    """Mark (item.not_input) the inputs that lie in the output folder and carry a vsr job tag.

    With the outputs beside their sources (`vsr batch in in --name "{stem}_x2{ext}"`, or a job
    spec's glob over its own output_dir) every nightly run would otherwise upscale the last run's
    outputs again (a_x2, a_x2_x2, ...). Files there without a tag, or whose tag cannot be read,
    are inputs as usual. Returns the same list.
    """
    from vsr.media.containers import read_job_tag

    root = Path(out_root)
    if not root.is_dir():
        return items  # nothing there yet
    for item in items:
        try:
            inside = any(os.path.samefile(folder, root) for folder in Path(item.input).absolute().parents)
            if inside and read_job_tag(item.input) is not None:
                item.not_input = "made by vsr (it carries a job tag) and in the output folder: not an input"
        except Exception:  # noqa: BLE001 - an unreadable file is judged (and reported) as an input
            continue
    return items


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N) as (K, N); UsageError naming the form otherwise."""
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n)) if sep else None
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard[0] <= shard[1]:
        raise UsageError(f"shard {text!r}: give K/N with 1 <= K <= N, e.g. 2/8")
    return shard


def take_shard(items: list[BatchItem], shard: tuple[int, int]) -> list[BatchItem]:
    """Shard K of N of a batch: its inputs K, K+N, K+2N, ... (1-based) in the batch's order.

    N tasks of a render farm, each given its K, make every input exactly once with no list passed
    between them: each lists the same folder, sorted. vsr's own outputs in the folder (not_input)
    are left out before counting, so that outputs another task has finished meanwhile do not shift
    the inputs between shards."""
    k, n = shard
    return [item for item in items if item.not_input is None][k - 1::n]
