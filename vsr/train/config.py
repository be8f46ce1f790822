"""The training config (TOML): schema, defaults, validation and command-line overrides.

Every problem is reported before training starts as a UsageError naming the key. Relative
paths (in the file and on the command line) are relative to the current directory, so the
configs in pipelines/ are run from the repository root.
"""

from __future__ import annotations

import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from vsr.errors import UsageError
from vsr.train.degradations import SecondOrderParams

__all__ = ["ModelConfig", "DiscriminatorConfig", "DataConfig", "PixelLossConfig",
           "PerceptualLossConfig", "AdversarialLossConfig", "LossConfig", "TrainLoopConfig",
           "TrainConfig", "load_config"]


@dataclass
class ModelConfig:
    """[model]: the generator. `init` starts from a zoo name or weight file (fine-tuning); its
    architecture then comes from the weights and `arch`/`hparams` may be left out."""

    arch: str = "srresnet"
    scale: int = 4
    hparams: dict[str, Any] = field(default_factory=dict)
    init: str = ""


@dataclass
class DiscriminatorConfig:
    """[discriminator]: used only when loss.adversarial.weight > 0."""

    arch: str = "srgan"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """[data]: where HR images come from and how LR inputs are made."""

    train: str = ""
    val: str = ""
    lr: str = ""  # paired LR folder (degradation = "paired")
    degradation: str = "bicubic"  # bicubic | second-order | paired
    patch_size: int = 96  # HR patch side
    batch_size: int = 16
    video_frame_step: int = 6
    max_frames_per_video: int = 0
    val_max_size: int = 256  # centre crop of validation images (HR px); 0 = whole image
    max_memory_gb: float = 8.0  # refuse data sets whose decoded frames exceed this; 0 = no limit
    second_order: dict[str, Any] = field(default_factory=dict)


@dataclass
class PixelLossConfig:
    type: str = "l1"  # l1 | mse
    weight: float = 1.0


@dataclass
class PerceptualLossConfig:
    weight: float = 0.0
    vgg_weights: str = ""
    layers: dict[str, float] = field(default_factory=lambda: {"conv5_4": 1.0})
    criterion: str = "l1"


@dataclass
class AdversarialLossConfig:
    type: str = "vanilla"  # vanilla (SRGAN) | relativistic (ESRGAN)
    weight: float = 0.0


@dataclass
class LossConfig:
    """[loss]: the generator's total loss is the weighted sum of these terms."""

    pixel: PixelLossConfig = field(default_factory=PixelLossConfig)
    perceptual: PerceptualLossConfig = field(default_factory=PerceptualLossConfig)
    adversarial: AdversarialLossConfig = field(default_factory=AdversarialLossConfig)


@dataclass
class TrainLoopConfig:
    """[train]: optimisation, schedule, checkpoints, validation, device."""

    max_steps: int = 100_000
    max_minutes: float = 0.0  # 0 = no time limit
    pretrain_steps: int = 0  # PSNR-oriented steps (content loss only) before GAN training
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    lr_schedule: str = "cosine"  # cosine | constant | multistep
    lr_min: float = 1e-6
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    ema_decay: float = 0.999  # 0 = no EMA
    grad_clip: float = 0.0
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    threads: int = 0  # torch CPU threads; 0 = torch's default
    out: str = "runs/train"


@dataclass
class TrainConfig:
    """A whole training config; `source` is the file it was read from (for messages)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    source: str = ""

    @property
    def uses_gan(self) -> bool:
        return self.loss.adversarial.weight > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    def validate(self) -> None:
        """Checks that need no files: ranges and choices. Raises UsageError naming the key."""
        m, d, lo, t = self.model, self.data, self.loss, self.train
        if m.scale not in (1, 2, 3, 4, 8):
            raise UsageError(f"model.scale must be 1, 2, 3, 4 or 8, not {m.scale}")
        if not d.train:
            raise UsageError("data.train is not set (a folder of images or videos; or pass --data)")
        if d.degradation not in ("bicubic", "second-order", "paired"):
            raise UsageError(f"data.degradation must be bicubic, second-order or paired, not {d.degradation!r}")
        if d.degradation == "paired" and not d.lr:
            raise UsageError("data.degradation = 'paired' needs data.lr (the low-resolution folder)")
        if d.patch_size < 8 or d.patch_size % m.scale:
            raise UsageError(f"data.patch_size must be >= 8 and a multiple of model.scale ({m.scale})")
        for key in ("batch_size", "video_frame_step"):
            if getattr(d, key) < 1:
                raise UsageError(f"data.{key} must be >= 1")
        SecondOrderParams.from_dict(d.second_order, "data.second_order")
        if lo.pixel.type not in ("l1", "mse"):
            raise UsageError(f"loss.pixel.type must be l1 or mse, not {lo.pixel.type!r}")
        if lo.perceptual.criterion not in ("l1", "mse"):
            raise UsageError(f"loss.perceptual.criterion must be l1 or mse, not {lo.perceptual.criterion!r}")
        if lo.adversarial.type not in ("vanilla", "relativistic"):
            raise UsageError(f"loss.adversarial.type must be vanilla or relativistic, not {lo.adversarial.type!r}")
        for key, w in (("pixel", lo.pixel.weight), ("perceptual", lo.perceptual.weight),
                       ("adversarial", lo.adversarial.weight)):
            if w < 0:
                raise UsageError(f"loss.{key}.weight must be >= 0")
        if lo.pixel.weight == 0 and lo.perceptual.weight == 0:
            raise UsageError("loss: pixel and perceptual weights are both 0; nothing to learn from")
        if lo.perceptual.vgg_weights and not Path(lo.perceptual.vgg_weights).is_file():
            raise UsageError(f"loss.perceptual.vgg_weights: file not found: {lo.perceptual.vgg_weights}")
        if lo.perceptual.weight > 0:
            if not lo.perceptual.vgg_weights:
                raise UsageError("loss.perceptual.vgg_weights is not set: the perceptual loss needs "
                                 "a VGG-19 weight file (torchvision vgg19 state dict .pth or "
                                 ".safetensors; nothing is downloaded), or set loss.perceptual.weight = 0")
            if not Path(lo.perceptual.vgg_weights).is_file():
                raise UsageError(f"loss.perceptual.vgg_weights: file not found: {lo.perceptual.vgg_weights}")
        if m.init and _looks_like_path(m.init) and not Path(m.init).is_file():
            raise UsageError(f"model.init: weight file not found: {m.init} (a zoo name like "
                             "realesrgan-x4plus or an existing .safetensors/.pth file)")
        if t.max_steps < 1:
            raise UsageError("train.max_steps must be >= 1")
        if t.max_minutes < 0:
            raise UsageError("train.max_minutes must be >= 0")
        if t.lr_schedule not in ("cosine", "constant", "multistep"):
            raise UsageError(f"train.lr_schedule must be cosine, constant or multistep, not {t.lr_schedule!r}")
        if t.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"train.precision must be auto, fp32, bf16 or fp16, not {t.precision!r}")
        if not 0 <= t.ema_decay < 1:
            raise UsageError("train.ema_decay must be in [0, 1)")
        if len(t.betas) != 2:
            raise UsageError("train.betas must be two numbers, e.g. [0.9, 0.99]")
        for key in ("val_every", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(t, key) < 1:
                raise UsageError(f"train.{key} must be >= 1")
        if t.lr_g <= 0 or t.lr_d <= 0:
            raise UsageError("train.lr_g and train.lr_d must be > 0")


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or Path(text).suffix.lower() in (".pth", ".pt", ".safetensors", ".ckpt")


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a TOML value against the default's type (ints are accepted for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise UsageError(f"{key} must be a {type(default).__name__}, not {type(value).__name__} ({value!r})")
    return value


def _build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    """A config dataclass from a TOML table; unknown keys are refused with their full name."""
    if not isinstance(table, Mapping):
        raise UsageError(f"[{prefix}] must be a table")
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in known:
            raise UsageError(f"unknown key {key} (known here: {', '.join(known)})")
        default = getattr(defaults, k)
        if hasattr(default, "__dataclass_fields__"):
            kwargs[k] = _build(type(default), v, key)
        else:
            kwargs[k] = _coerce(v, default, key)
    return cls(**kwargs)


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read and validate a training config. `overrides` maps dotted keys ("data.train",
    "train.max_steps", "loss.perceptual.vgg_weights", ...) to values from the command line;
    None values are ignored."""
    table: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file not found: {p}")
        try:
            table = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{p}: not valid TOML: {err}") from None
    cfg: TrainConfig = _build(TrainConfig, table, "")
    cfg.source = str(path or "")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        target: Any = cfg
        for section in sections:
            target = getattr(target, section)
        setattr(target, key, _coerce(value, getattr(target, key), dotted))
    cfg.validate()
    return cfg
