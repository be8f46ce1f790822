"""Job specs: TOML files that `vsr run` executes, validated completely before any work starts.

```toml
[job]
inputs = ["clips/*.mp4"]        # paths or globs, relative to this file (required)
output_dir = "upscaled"         # relative to this file (required)
name = "{stem}_x2{ext}"         # {stem}, {ext}, {name}; default "{stem}{ext}"
skip_existing = true            # outputs that exist and verify are not redone
report = "report.json"          # JSON summary of every file (relative to output_dir)
on_corrupt = "fail"             # or "repeat-previous"
segment_seconds = 20.0

[model]                         # name, outscale, tile, tile_pad, batch, precision, device, colour_fix,
                                # reuse_repeats, temporal ("exact", "off" or "stable")
name = "realesr-animevideov3-x2"

[encode]                        # codec (a name, or a list: the first that works on every worker), crf, preset,
codec = "libx264"               # pix_fmt, extra (a table of codec options), drop_alpha (encode a source
                                # with an alpha channel without it; else its alpha is kept or refused)

[cluster]                       # address, workers, gpus_per_worker, segments_per_worker, workdir, resume, max_retries
address = "auto"

[picture]                       # archival options (deinterlace, crop, target, ...) for vsr.media.picture
```
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vsr.job.inputs import DEFAULT_NAME, BatchItem, output_name, without_own_outputs
from vsr.job.options import ON_CORRUPT, JobOptions, workers_are_local
from vsr.errors import InputError, UsageError
from vsr.storage import uri as store

_STR, _INT, _NUM, _BOOL = "a string", "an integer", "a number", "true or false"

# table -> key -> (expected type description, JobOptions field or None for job-level keys)
SCHEMA: dict[str, dict[str, tuple[str, str | None]]] = {
    "job": {
        "inputs": ("a list of paths or globs", None), "output_dir": (_STR, None), "name": (_STR, None),
        "skip_existing": (_BOOL, None), "report": (_STR, None),
        "on_corrupt": (_STR, "on_corrupt"), "segment_seconds": (_NUM, "segment_seconds"),
        "chunk_frames": (_INT, "chunk_frames"), "scan": (_BOOL, "scan"),
        "keep_workdir": (_BOOL, "keep_workdir"),
    },
    "model": {
        "name": (_STR, "model"), "outscale": (_NUM, "outscale"), "tile": (_INT, "tile"),
        "tile_pad": (_INT, "tile_pad"), "batch": (_INT, "batch_size"), "precision": (_STR, "precision"),
        "device": (_STR, "device"), "colour_fix": (_BOOL, "colour_fix"),
        "reuse_repeats": (_BOOL, "reuse_repeats"), "state_period": (_INT, "state_period"),
        "temporal": (_STR, "temporal"),
    },
    "encode": {
        "codec": ("a string or a list of strings", None), "crf": (_INT, None), "preset": (_STR, None),
        "pix_fmt": (_STR, None), "extra": ("a table of strings", None), "drop_alpha": (_BOOL, None),
    },
    "cluster": {
        "address": (_STR, "address"), "workers": (_INT, "workers"), "gpus_per_worker": (_NUM, "gpus_per_worker"),
        "segments_per_worker": (_INT, "segments_per_worker"),
        "workdir": (_STR, "workdir"), "resume": (_BOOL, "resume"), "max_retries": (_INT, "max_retries"),
    },
    "picture": {
        "deinterlace": (_STR, None), "deinterlace_rate": (_STR, None), "keep_sar": (_BOOL, None),
        "target": (_STR, None), "crop": (_STR, None), "deinterlacer": (_STR, None),
    },
}


@dataclass
class JobSpec:
    """A validated job: the files to make and the options for each."""

    path: Path | str  # str: a URI
    items: list[BatchItem]
    options: JobOptions
    codecs: list[str] = field(default_factory=list)  # preference list; resolved per input
    skip_existing: bool = True
    report: Path | None = None


def _type_ok(value: Any, want: str) -> bool:
    if want == _STR:
        return isinstance(value, str)
    if want == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if want == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want == _BOOL:
        return isinstance(value, bool)
    if want == "a list of paths or globs":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value) or isinstance(value, str)
    if want == "a string or a list of strings":
        return isinstance(value, str) or (isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))
    if want == "a table of strings":
        return isinstance(value, dict) and all(isinstance(v, (str, int, float)) for v in value.values())
    return False


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(choices)}"


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def load_jobspec(path: str | os.PathLike, *, inputs: list[str] | None = None, output_dir: str | None = None,
                 overrides: dict[str, Any] | None = None) -> JobSpec:
    """Parse and validate a job spec; `inputs`/`output_dir`/`overrides` (JobOptions fields) come
    from the command line and win over the file. Raises UsageError naming the key and the fix."""
    remote = store.is_uri(path)
    spec_path: Any = str(path) if remote else Path(path)
    where = store.basename(spec_path) if remote else spec_path.name
    data = _read_toml(spec_path)
    fields, job, encode, picture = _sort_keys(where, data)
    base: Any = store.parent(spec_path) if remote else spec_path.absolute().parent
    if fields.get("workdir"):
        fields["workdir"] = _under(base, fields["workdir"])
    codecs = [encode.pop("codec")] if isinstance(encode.get("codec"), str) else list(encode.pop("codec", []))
    fields["encode"] = dict(encode, extra={k: str(v) for k, v in encode.get("extra", {}).items()})
    fields["picture"] = picture or None
    _check_picture(where, picture)
    if "on_corrupt" in fields and fields["on_corrupt"] not in ON_CORRUPT:
        raise UsageError(f"{where}: [job] on_corrupt must be one of {', '.join(ON_CORRUPT)}, "
                         f"got {fields['on_corrupt']!r}")
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        options = JobOptions(**fields).validate()
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    if not remote:
        _check_model(where, options.model, base)
    patterns = inputs if inputs else job.get("inputs")
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise UsageError(f"{where}: [job] inputs is missing; add inputs = [\"videos/*.mp4\"]")
    out_dir = output_dir if output_dir is not None else job.get("output_dir")
    if not out_dir:
        raise UsageError(f"{where}: [job] output_dir is missing; add output_dir = \"upscaled\"")
    out_root: Any = (out_dir if store.is_uri(out_dir) else Path(out_dir)) if output_dir is not None \
        else _under(base, out_dir, path=True)
    items = _items(where, patterns, base, out_root, job.get("name", DEFAULT_NAME), from_cli=bool(inputs))
    report = job.get("report")
    return JobSpec(path=spec_path, items=items, options=options, codecs=codecs,
                   skip_existing=job.get("skip_existing", True),
                   report=_under(out_root, report, path=True) if report else None)


def _under(base: Any, location: str, *, path: bool = False) -> Any:
    """A spec's location: a URI or an absolute path as it is, else relative to `base` (the
    spec's folder, a path or a URI prefix). path: a local result as a Path (else a str)."""
    if store.is_uri(location) or (os.path.isabs(location) and not store.is_uri(base)):
        return Path(location) if path and not store.is_uri(location) else location
    if store.is_uri(base):
        return store.join(str(base), location)
    return Path(base) / location if path else str(Path(base) / location)


def _read_toml(spec_path: Any) -> dict[str, Any]:
    if store.is_uri(spec_path):
        try:
            return tomllib.loads(store.read_bytes(spec_path).decode("utf-8"))
        except InputError as err:
            raise UsageError(f"job spec {err}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise UsageError(f"{spec_path}: not a valid job spec: {err}") from None
    try:
        return tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{spec_path}: no such job spec") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{spec_path}: cannot read the job spec: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{spec_path.name}: not valid TOML: {err}") from None


def _sort_keys(where: str, data: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """Every key checked against SCHEMA and sorted into (JobOptions fields, [job], [encode], [picture])."""
    fields: dict[str, Any] = {}
    job: dict[str, Any] = {}
    encode: dict[str, Any] = {}
    picture: dict[str, Any] = {}
    for table, body in data.items():
        if table not in SCHEMA:
            raise UsageError(f"{where}: unknown table [{table}]; {_did_you_mean(table, list(SCHEMA))}")
        if not isinstance(body, dict):
            raise UsageError(f"{where}: {table} must be a table ([{table}] followed by key = value lines)")
        for key, value in body.items():
            if key not in SCHEMA[table]:
                raise UsageError(f"{where}: unknown key '{key}' in [{table}]; "
                                 f"{_did_you_mean(key, list(SCHEMA[table]))}")
            want, target = SCHEMA[table][key]
            if not _type_ok(value, want):
                raise UsageError(f"{where}: [{table}] {key} must be {want}, got {_show(value)}")
            if table == "encode":
                encode[key] = value
            elif table == "picture":
                picture[key] = value
            elif target is None:
                job[key] = value
            else:
                fields[target] = float(value) if want == _NUM else value
    return fields, job, encode, picture


def _check_picture(where: str, picture: dict[str, Any]) -> None:
    """[picture] checked now, so that --check finds it (not the job after Ray started)."""
    if not picture:
        return
    from vsr.media.picture import PictureOptions

    try:
        PictureOptions(**picture)
    except UsageError as err:
        # the messages name CLI flags (--deinterlace-rate): here the spec's keys
        text = re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), str(err))
        raise UsageError(f"{where}: [picture] {text}") from None


def _items(where: str, patterns: list[str], base: Path, out_root: Path, name: str, *,
           from_cli: bool) -> list[BatchItem]:
    """The inputs the patterns match (relative to the spec, or to the current folder when given on
    the command line), each with its output; a file two patterns match is one input."""
    items: list[BatchItem] = []
    taken: dict[Any, BatchItem] = {}
    for pat in patterns:
        full = pat if os.path.isabs(pat) or from_cli or store.is_uri(pat) else _under(base, pat)
        if store.is_uri(full) or store.is_uri(out_root):
            items.extend(_uri_items(where, full, out_root, name, taken))
            continue
        matches = sorted(Path(m) for m in glob.glob(full, recursive=True)) if glob.has_magic(full) else [Path(full)]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise UsageError(f"{where}: [job] inputs: {pat!r} matches no file (paths are relative to "
                             f"{base if not from_cli else 'the current folder'})")
        for src in matches:
            earlier = taken.get(src.resolve())
            if earlier is not None and earlier.not_input is None:
                continue  # already an input
            dst = out_root / output_name(src, name)
            if dst.absolute() == src.absolute() or (dst.exists() and dst.resolve() == src.resolve()):
                raise UsageError(f"{where}: output {dst} would overwrite its input; change [job] output_dir or name")
            item = BatchItem(src, dst)
            if glob.has_magic(full):  # a file named explicitly is an input, whatever made it
                without_own_outputs([item], out_root)
            items.append(item)
            taken[src.resolve()] = item
    return items


def _uri_items(where: str, full: str, out_root: Any, name: str, taken: dict[Any, BatchItem]) -> list[BatchItem]:
    """_items for one pattern where the input or the output folder is a URI (items hold str)."""
    if store.is_uri(full):
        matches = store.glob(full) if glob.has_magic(full) else [full] if store.exists(full) else []
    else:
        found = glob.glob(full, recursive=True) if glob.has_magic(full) else [full]
        matches = [str(Path(m).absolute()) for m in found if os.path.isfile(m)]
    if not matches:
        raise UsageError(f"{where}: [job] inputs: {full!r} matches no file")
    items = []
    for src in matches:
        if src in taken:
            continue
        file_name = output_name(PurePosixPath(store.basename(src) if store.is_uri(src) else Path(src).name), name)
        dst: Any = store.join(str(out_root), file_name) if store.is_uri(out_root) else Path(out_root) / file_name
        if str(dst) == src:
            raise UsageError(f"{where}: output {dst} would overwrite its input; change [job] output_dir or name")
        taken[src] = BatchItem(src, dst)
        items.append(taken[src])
    return items


def _check_model(where: str, model: str, base: Path) -> None:
    """A zoo name or an existing weight file."""
    if os.path.exists(model):
        return
    try:
        from vsr.weights.zoo import list_models
    except ImportError:
        return  # the engine validates when it loads
    names = [m["name"] for m in list_models()]
    if model in names:
        return
    if any(ch in model for ch in "/\\.") and (base / model).exists():
        return
    raise UsageError(f"{where}: [model] name: unknown model {model!r}; {_did_you_mean(model, names)} "
                     "(or give the path of a weight file)")


def resolve_codecs(spec: JobSpec, *, local: bool | None = None) -> None:
    """Check every input against the encode settings and fix each item's encoders: those of the
    preference list that the media layer accepts for it (item.codecs), up to the first that
    needs no GPU; item.encode holds the first. Which one runs is decided when the workers run
    (an NVENC encoder needs NVENC on every worker: vsr.job.encoders.encoder_for_workers), except
    that an embedded run's workers are this machine (`local`; None: from the spec's address),
    so NVENC is checked here.
    Raises the media layer's error, prefixed with the spec's name and key. An input that is not
    a readable video is marked failed (item.failure) for the batch report instead."""
    from vsr.job.remote import local_copies

    where = store.basename(str(spec.path)) if store.is_uri(spec.path) else Path(spec.path).name
    local = workers_are_local(spec.options.address) if local is None else local
    candidates = spec.codecs or [None]
    spec.options = spec.options.replace(codecs=list(spec.codecs) if spec.codecs else None)
    for item in spec.items:
        # an object: probe indexes every packet and the checks read it again: one local copy
        with local_copies(item.input) as (copy,):
            _resolve_item(item, copy, spec, where, candidates, local)


def _resolve_item(item: BatchItem, source: Any, spec: JobSpec, where: str, candidates: list[Any],
                  local: bool) -> None:
    """resolve_codecs for one item, its input read from `source`."""
    from vsr.job.encoders import nvenc_candidates, resolve_encoders
    from vsr.media.encode import EncodeOptions
    from vsr.media.probe import damage_message, probe

    try:
        info = probe(source)
    except InputError as err:
        item.failure = err  # a bad file, not a bad spec: the batch reports it and goes on
        return
    if info.damage and spec.options.on_corrupt == "fail":  # as the job would refuse it
        item.failure = InputError(damage_message(info))
        return
    fits, errors = resolve_encoders(info, item.output, spec.options.encode, candidates,
                                    nvenc=None if local else nvenc_candidates(candidates))
    if not fits and errors and all(isinstance(e, InputError) for e in errors):
        item.failure = errors[0]  # the file cannot be converted (e.g. its colour matrix): not the spec
        return
    if not fits:
        key = "[encode] codec" if spec.codecs else "[encode]"
        raise UsageError(f"{where}: {key}: " + " / ".join(map(str, errors)))
    # the first encoder, other defaults at run time
    item.encode = EncodeOptions.from_dict(dict(spec.options.encode, codec=fits[0].codec)).to_dict()
    item.codecs = [str(e.codec) for e in fits]
