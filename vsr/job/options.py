"""The settings of one video job, as plain JSON-able data (they go into plans and manifests)."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from vsr.errors import UsageError

DEFAULT_MODEL = "realesr-animevideov3-x2"
"""The fastest real network of the zoo: a compact VGG-style generator, good on CPU and GPU."""

ON_CORRUPT = ("fail", "repeat-previous")
TEMPORAL = ("exact", "off", "stable")
"""--temporal: exact reuses the output of the parts of a frame that did not change (vsr.engine.reuse),
stable also of the parts that changed only within the source's noise (vsr.engine.stable),
off runs every frame whole (whole repeated frames still follow reuse_repeats)."""
LOCAL_ADDRESSES = ("", "local", "embedded")


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS, else None (embedded local instance)."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is not None and address.strip().lower() in LOCAL_ADDRESSES:
        return None
    return address


def workers_are_local(address: str | None) -> bool:
    """Whether a job's workers run on this machine: an embedded instance (no address, no
    RAY_ADDRESS), unless this process is already connected to Ray (which is then used)."""
    ray = sys.modules.get("ray")
    return resolve_address(address) is None and not (ray is not None and ray.is_initialized())


@dataclass
class JobOptions:
    """Everything `vsr upscale` / `vsr run` / `vsr batch` can set for one input file.

    `encode` is an opaque dict for the media layer (EncodeOptions.to_dict()) and `picture` one
    for the archival picture plan (PictureOptions.to_dict()); the cluster passes them through.
    """

    model: str = DEFAULT_MODEL
    outscale: float | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int = 0
    tile_pad: int | None = None  # None: the architecture's own (Upscaler)
    batch_size: int = 4
    colour_fix: bool = True  # keep the source's low-frequency colour (Upscaler.colour_fix)
    # a frame identical to the one before it gets that frame's output (vsr.engine.repeats), not
    # computed again; not in the output settings: the pictures are the same (on a GPU, up to the
    # last bits that batching moves anyway)
    reuse_repeats: bool = True
    # recurrent models: restart the state every state_period frames (0: never; vsr.job.temporal)
    state_period: int = 0
    # the unchanged parts of a frame keep the previous frame's output (vsr.engine.reuse); not in
    # the output settings either: "exact" gives the pictures "off" does (up to the last bit of
    # a kernel's order, measured in docs/benchmarks.md)
    temporal: str = "exact"
    encode: dict[str, Any] = field(default_factory=dict)
    # encoder preference (job specs): the first that every worker can run is used (an NVENC
    # encoder needs a GPU with an encoder engine on each worker); None: encode["codec"] alone
    codecs: list[str] | None = None
    picture: dict[str, Any] | None = None
    segment_seconds: float = 20.0
    chunk_frames: int = 8
    workers: int | None = None  # None: one per GPU (by gpus_per_worker), else one CPU actor
    gpus_per_worker: float = 1.0
    # segments one worker runs at once: None = 2 on a GPU (one upscales while the other's frames
    # are decoded and encoded: a GPU outruns one software encoder), 1 on the CPU (inference
    # already takes every core)
    segments_per_worker: int | None = None
    address: str | None = None  # None: embedded loopback Ray; "auto"/"host:port"/"ray://": join
    workdir: str | None = None  # None: a hidden folder beside the output
    resume: bool = True
    keep_workdir: bool = False
    on_corrupt: str = "fail"
    scan: bool = True  # fast decode-only pass over the input before any inference
    max_retries: int = 2  # per segment, after an actor died or a transient worker error

    def validate(self) -> "JobOptions":
        """Raise UsageError naming the option and the fix for any impossible value."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UsageError(msg)

        need(isinstance(self.model, str) and self.model.strip() != "", "model: give a zoo name or a weight file")
        need(self.outscale is None or (0.1 <= float(self.outscale) <= 16),
             f"outscale {self.outscale}: use a factor between 0.1 and 16")
        need(self.tile >= 0, f"tile {self.tile}: use 0 (no tiling) or a positive tile size")
        need(self.tile_pad is None or self.tile_pad >= 0, f"tile_pad {self.tile_pad}: use 0 or more")
        need(self.batch_size >= 1, f"batch {self.batch_size}: use 1 or more frames per batch")
        need(self.segment_seconds > 0, f"segment_seconds {self.segment_seconds}: use a positive number")
        need(isinstance(self.state_period, int) and self.state_period >= 0,
             f"state_period {self.state_period}: use 0 (never restart) or a number of frames")
        need(self.chunk_frames >= 1, f"chunk_frames {self.chunk_frames}: use 1 or more")
        need(self.workers is None or self.workers >= 1, f"workers {self.workers}: use 1 or more")
        need(0 < self.gpus_per_worker <= 8 and (self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer()),
             f"gpus_per_worker {self.gpus_per_worker}: use a fraction of one GPU (e.g. 0.5, 0.25) "
             "or a whole number of GPUs")
        need(self.segments_per_worker is None or 1 <= self.segments_per_worker <= 8,
             f"segments_per_worker {self.segments_per_worker}: use 1 to 8")
        need(self.temporal in TEMPORAL, f"temporal {self.temporal!r}: use one of {', '.join(TEMPORAL)}")
        need(self.on_corrupt in ON_CORRUPT, f"on_corrupt {self.on_corrupt!r}: use one of {', '.join(ON_CORRUPT)}")
        need(self.codecs is None or (isinstance(self.codecs, list) and len(self.codecs) > 0
                                     and all(isinstance(c, str) for c in self.codecs)),
             f"codecs {self.codecs!r}: give a list of encoder names")
        need(self.max_retries >= 0, f"max_retries {self.max_retries}: use 0 or more")
        for name in ("colour_fix", "reuse_repeats", "resume", "scan", "keep_workdir"):
            need(isinstance(getattr(self, name), bool), f"{name} {getattr(self, name)!r}: use true or false")
        need(self.precision in ("auto", "fp32", "fp16", "bf16"),
             f"precision {self.precision!r}: use auto, fp32, fp16 or bf16")
        return self

    def encoders(self) -> list[str | None]:
        """The encoders this job may use, preferred first (None: the container's default)."""
        return list(self.codecs) if self.codecs else [self.encode.get("codec")]

    def upscaler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of vsr.engine.Upscaler for these options."""
        model = self.model
        if os.path.sep in model or os.path.exists(model):
            model = os.path.abspath(model)  # actors may run in another working directory
        return dict(model=model, device=self.device, precision=self.precision, tile=self.tile,
                    tile_pad=self.tile_pad, outscale=self.outscale, batch_size=self.batch_size,
                    colour_fix=self.colour_fix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobOptions":
        return cls(**d)

    def replace(self, **changes: Any) -> "JobOptions":
        return dataclasses.replace(self, **changes)
