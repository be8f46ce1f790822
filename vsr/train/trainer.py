"""The training loop: PSNR-oriented pre-training with the content loss, then GAN training
with a discriminator (SRGAN / ESRGAN), EMA of the generator, validation PSNR/SSIM,
safetensors checkpoints with resume, and the final `generator.safetensors` that
`vsr upscale -m` and `vsr image -m` load directly.

Outputs in the run folder (`train.out`): checkpoints/step_XXXXXXXX.safetensors,
log.jsonl (one JSON object per logged step or validation), config.json (the resolved
config), generator.safetensors (the EMA generator at the end).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vsr.errors import ModelError, OutputError, UsageError
from vsr.train.checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint,
                                  prune_checkpoints, save_checkpoint)
from vsr.train.config import TrainConfig
from vsr.train.data import PatchSampler, ValPair, load_hr_images, make_val_pairs
from vsr.train.degradations import SecondOrderDegradation, SecondOrderParams, bicubic_resize
from vsr.train.losses import GeneratorLoss, PerceptualLoss, discriminator_loss
from vsr.train.metrics import psnr_y, ssim_y

log = logging.getLogger("vsr")

__all__ = ["Trainer", "train", "evaluate", "upscale_array", "resolve_device", "resolve_precision"]


def resolve_device(name: str) -> torch.device:
    """"auto" -> first CUDA device if there is one, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"train.device = {name!r} but CUDA is not available")
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    """"auto" -> bf16 where the hardware computes it natively (CUDA with bf16, CPUs with
    AVX-512 BF16 / AMX), fp16 on older CUDA GPUs, fp32 otherwise."""
    if name != "auto":
        if name == "fp16" and device.type != "cuda":
            raise UsageError("train.precision = 'fp16' needs CUDA; use bf16 or fp32 on CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (t.float().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy())


@torch.no_grad()
def upscale_array(model: nn.Module, lr: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Run a generator on one (H, W, 3) uint8 image in fp32; returns (H*s, W*s, 3) uint8."""
    x = torch.from_numpy(np.array(lr, copy=True)).permute(2, 0, 1)[None].float().div(255.0)
    was_training = model.training
    model.eval()
    try:
        return _to_uint8(model(x.to(device))[0])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module | None, pairs: list[ValPair], scale: int,
             device: torch.device | str = "cpu", shave: int | None = None) -> dict[str, float]:
    """Mean Y-PSNR/SSIM of the model (or of bicubic upscaling when model is None) over
    validation pairs, `shave` border pixels removed (default: the scale)."""
    shave = scale if shave is None else shave
    psnrs, ssims = [], []
    for p in pairs:
        if model is None:
            sr = bicubic_resize(p.lr, (p.hr.shape[1], p.hr.shape[0]))
        else:
            sr = upscale_array(model, p.lr, device)
        psnrs.append(psnr_y(sr, p.hr, shave))
        ssims.append(ssim_y(sr, p.hr, shave))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "images": len(pairs)}


class _EMA:
    """Exponential moving average of a model's parameters and buffers. The decay ramps up
    as (1 + step) / (10 + step) so that short runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, m in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(m.detach(), 1.0 - d)
            else:
                e.copy_(m)


class Trainer:
    """One training run of a generator (and, for GAN objectives, a discriminator)."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        t = cfg.train
        self.out = Path(cfg.train.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.rng = np.random.default_rng(t.seed)
        self._prepare_data()
        self._prepare_models()
        self._prepare_losses()
        self.step = 0
        self.elapsed_before = 0.0  # seconds trained before a resume (time budget continues)
        self._log_file = None

    # ------------------------------------------------------------------ setup

    def _prepare_data(self) -> None:
        d, scale = self.cfg.data, self.cfg.model.scale
        hr = load_hr_images(d.train, "data.train", video_frame_step=d.video_frame_step,
                            max_frames_per_video=d.max_frames_per_video, max_memory_gb=d.max_memory_gb)
        lr_images = None
        if d.degradation == "paired":
            lr_images = {i.name: i.pixels for i in load_hr_images(
                d.lr, "data.lr", video_frame_step=d.video_frame_step,
                max_frames_per_video=d.max_frames_per_video)}
        second = (SecondOrderDegradation(scale, SecondOrderParams.from_dict(d.second_order, "data.second_order"))
                  if d.degradation == "second-order" else None)
        self.sampler = PatchSampler(hr, scale, d.patch_size, d.degradation, second_order=second,
                                    lr_images=lr_images)
        self.val_pairs: list[ValPair] = []
        if d.val:
            val = load_hr_images(d.val, "data.val", video_frame_step=d.video_frame_step,
                                 max_frames_per_video=d.max_frames_per_video)
            self.val_pairs = make_val_pairs(val, scale, d.val_max_size)
            if not self.val_pairs:
                raise UsageError(f"data.val: no image in {d.val} is large enough for scale {scale}")
        log.info("training data: %d images (%s LR), %d validation images",
                 len(self.sampler), d.degradation, len(self.val_pairs))

    def _prepare_models(self) -> None:
        from vsr.models import build_generator, generator_scale

        m = self.cfg.model
        if m.init:
            from vsr.weights.zoo import load_model

            loaded = load_model(m.init)
            if loaded.network is None or loaded.arch.startswith("spandrel:"):
                raise UsageError(f"model.init: {m.init} is not a trainable vsr generator "
                                 f"(arch {loaded.arch})")
            self.arch, self.hparams = loaded.arch, dict(loaded.hparams)
            self.generator = loaded.network
            self.generator.requires_grad_(True)
            if m.scale != loaded.net_scale:
                raise UsageError(f"model.scale = {m.scale} but model.init {m.init} is a "
                                 f"x{loaded.net_scale} network")
            log.info("generator: %s from %s", self.arch, m.init)
        else:
            self.arch = m.arch
            self.hparams = dict(m.hparams)
            scale_key = "scale" if self.arch == "rrdbnet" else "upscale"
            self.hparams.setdefault(scale_key, m.scale)
            try:
                self.generator = build_generator(self.arch, **self.hparams)
            except (TypeError, ValueError) as err:
                raise UsageError(f"model: cannot build {self.arch!r} with model.hparams "
                                 f"{self.hparams}: {err}") from None
            if generator_scale(self.generator) != m.scale:
                raise UsageError(f"model.hparams {scale_key} = {self.hparams[scale_key]} "
                                 f"disagrees with model.scale = {m.scale}")
        self.generator.to(self.device).train()
        self.discriminator: nn.Module | None = None
        if self.cfg.uses_gan:
            from vsr.models.discriminator import build_discriminator

            try:
                self.discriminator = build_discriminator(self.cfg.discriminator.arch,
                                                         **self.cfg.discriminator.hparams)
            except TypeError as err:
                raise UsageError(f"discriminator.hparams: {err}") from None
            self.discriminator.to(self.device).train()
        if self.cfg.train.channels_last:
            for net in (self.generator, self.discriminator):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        t = self.cfg.train
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr_g, betas=tuple(t.betas))
        self.opt_d = (torch.optim.Adam(self.discriminator.parameters(), lr=t.lr_d, betas=tuple(t.betas))
                      if self.discriminator is not None else None)
        self.ema = _EMA(self.generator, t.ema_decay) if t.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _prepare_losses(self) -> None:
        lo = self.cfg.loss
        perceptual = None
        if lo.perceptual.weight > 0:
            perceptual = PerceptualLoss(lo.perceptual.vgg_weights, lo.perceptual.layers,
                                        lo.perceptual.criterion).to(self.device)
            if self.cfg.train.channels_last:
                perceptual.to(memory_format=torch.channels_last)
        self.gen_loss = GeneratorLoss(lo.pixel.type, lo.pixel.weight, perceptual, lo.perceptual.weight,
                                      lo.adversarial.type, lo.adversarial.weight)

    # ------------------------------------------------------------------ schedule, resume

    def _progress_fraction(self, elapsed: float) -> float:
        """How far through the run we are: by steps, or by time when a time limit ends it sooner."""
        t = self.cfg.train
        frac = self.step / t.max_steps
        if t.max_minutes > 0:
            frac = max(frac, elapsed / (t.max_minutes * 60.0))
        return min(frac, 1.0)

    def _lr_factor(self, elapsed: float) -> float:
        t = self.cfg.train
        if t.warmup_steps and self.step < t.warmup_steps:
            return (self.step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        if t.lr_schedule == "multistep":
            return t.lr_gamma ** sum(self.step >= m for m in t.lr_milestones)
        frac = self._progress_fraction(elapsed)
        floor = t.lr_min / t.lr_g
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

    def resume(self) -> bool:
        """Load the newest checkpoint of the run folder, if any; True when one was loaded."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        ck = load_checkpoint(path)
        meta = ck["meta"]
        if meta.get("arch") != self.arch:
            raise UsageError(f"--resume: {path} holds a {meta.get('arch')} generator, the config "
                             f"builds {self.arch}")
        try:
            self.generator.load_state_dict(ck["g"])
            if self.ema is not None and ck["g_ema"] is not None:
                self.ema.model.load_state_dict(ck["g_ema"])
            if self.discriminator is not None and ck["d"] is not None:
                self.discriminator.load_state_dict(ck["d"])
            if ck["opt_g"] is not None:
                self.opt_g.load_state_dict(ck["opt_g"])
            if self.opt_d is not None and ck["opt_d"] is not None:
                self.opt_d.load_state_dict(ck["opt_d"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ModelError(f"--resume: {path} does not fit this config: "
                             f"{str(err).splitlines()[0]}") from None
        self.step = ck["step"]
        self.elapsed_before = float(meta.get("elapsed", 0.0))
        if ck["rng_torch"] is not None:
            torch.set_rng_state(ck["rng_torch"])
        if "rng_numpy" in meta:
            self.rng.bit_generator.state = meta["rng_numpy"]
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self, elapsed: float) -> Path:
        """Write a checkpoint of the current step and prune old ones."""
        path = save_checkpoint(
            checkpoint_path(self.ckpt_dir, self.step), step=self.step, generator=self.generator,
            generator_ema=self.ema.model if self.ema else None, discriminator=self.discriminator,
            opt_g=self.opt_g, opt_d=self.opt_d,
            meta={"arch": self.arch, "hparams": self.hparams, "scale": self.cfg.model.scale,
                  "elapsed": elapsed, "rng_numpy": self.rng.bit_generator.state,
                  "config": self.cfg.to_dict()})
        prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
        return path

    def export_generator(self, path: str | os.PathLike | None = None) -> Path:
        """Write the EMA generator (or the plain one without EMA) as vsr safetensors."""
        from vsr.weights.loader import save_safetensors

        path = Path(path or self.out / "generator.safetensors")
        model = self.ema.model if self.ema else self.generator
        sd = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu().contiguous()
              for k, v in model.state_dict().items()}
        try:
            save_safetensors(path, self.arch, self.hparams, sd,
                             vsr_model_scale=str(self.cfg.model.scale), vsr_trained_steps=str(self.step),
                             vsr_source=f"vsr train {self.cfg.source}".strip())
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
        return path

    # ------------------------------------------------------------------ the loop

    def _log(self, record: dict[str, Any]) -> None:
        assert self._log_file is not None
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()

    def _train_step(self, lr: torch.Tensor, hr: torch.Tensor, gan_phase: bool) -> dict[str, float]:
        g, d, dev = self.generator, self.discriminator, self.device
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        lr = lr.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        hr = hr.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        clip = self.cfg.train.grad_clip
        # generator
        if d is not None:
            d.requires_grad_(False)
        with _autocast(dev, self.precision):
            sr = g(lr)
            fake_logits = real_logits = None
            if gan_phase and d is not None:
                fake_logits = d(sr)
                if self.cfg.loss.adversarial.type == "relativistic":
                    real_logits = d(hr).detach()
            loss, terms = self.gen_loss(sr, hr, fake_logits=fake_logits, real_logits=real_logits,
                                        use_adversarial=gan_phase)
        if not math.isfinite(terms["total"]):
            raise UsageError(f"training diverged at step {self.step} (loss {terms['total']}); "
                             "lower train.lr_g or use train.precision = 'fp32'")
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip > 0:
            self.scaler.unscale_(self.opt_g)
            nn.utils.clip_grad_norm_(g.parameters(), clip)
        self.scaler.step(self.opt_g)
        # discriminator
        if gan_phase and d is not None and self.opt_d is not None:
            d.requires_grad_(True)
            with _autocast(dev, self.precision):
                real = d(hr)
                fake = d(sr.detach())
                d_loss = discriminator_loss(real, fake, self.cfg.loss.adversarial.type)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.opt_d)
            terms["d_loss"] = float(d_loss.detach())
            terms["d_real"] = float(torch.sigmoid(real.detach().float()).mean())
            terms["d_fake"] = float(torch.sigmoid(fake.detach().float()).mean())
        self.scaler.update()
        return terms

    def run(self, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train until train.max_steps or train.max_minutes; returns a summary (JSON-safe)."""
        from tqdm import tqdm

        cfg, t = self.cfg, self.cfg.train
        self._open_run_folder()
        start_step = self.step
        bicubic = evaluate(None, self.val_pairs, cfg.model.scale) if self.val_pairs else None
        if bicubic:
            self._log({"step": self.step, "val_bicubic_psnr": bicubic["psnr"],
                       "val_bicubic_ssim": bicubic["ssim"]})
        budget = t.max_minutes * 60.0 if t.max_minutes > 0 else math.inf
        t0 = time.monotonic()
        elapsed = self.elapsed_before
        last_val: dict[str, float] | None = None
        first_terms: dict[str, float] | None = None
        recent: list[float] = []
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc="train")
        try:
            while self.step < t.max_steps and elapsed < budget:
                factor = self._set_learning_rates(elapsed)
                gan_phase = self.discriminator is not None and self.step >= t.pretrain_steps
                lr, hr = self.sampler.sample(cfg.data.batch_size, self.rng)
                terms = self._train_step(lr, hr, gan_phase)
                if self.ema is not None:
                    self.ema.update(self.generator, self.step)
                self.step += 1
                elapsed = self.elapsed_before + time.monotonic() - t0
                first_terms = first_terms or terms
                recent = (recent + [terms["total"]])[-50:]
                if on_step is not None:
                    on_step(self.step, terms)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    self._log({"step": self.step, "phase": "gan" if gan_phase else "psnr",
                               "lr_g": t.lr_g * factor, "seconds": round(elapsed, 2),
                               **{f"loss_{k}": v for k, v in terms.items()}})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
                bar.update(1)
                if self.val_pairs and self.step % t.val_every == 0:
                    last_val = self._validate(elapsed)
                if self.step % t.checkpoint_every == 0:
                    self.save(elapsed)
        except KeyboardInterrupt:
            # keep what was learned: the next `--resume` continues from here
            bar.close()
            self.save(elapsed)
            self._log_file.close()
            log.info("interrupted at step %d; checkpoint written, continue with --resume", self.step)
            raise
        finally:
            bar.close()
        if self.step > start_step or latest_checkpoint(self.ckpt_dir) is None:
            self.save(elapsed)
        if self.val_pairs and (last_val is None or self.step % t.val_every != 0):
            last_val = self._validate(elapsed)
        generator_path = self.export_generator()
        self._log_file.close()
        summary = {
            "out": str(self.out), "generator": str(generator_path), "arch": self.arch,
            "hparams": self.hparams, "scale": cfg.model.scale, "steps": self.step,
            "steps_this_run": self.step - start_step, "seconds": round(elapsed, 2),
            "device": str(self.device), "precision": self.precision,
            "first_loss": first_terms["total"] if first_terms else None,
            "last_loss_mean50": float(np.mean(recent)) if recent else None,
            "checkpoint": str(latest_checkpoint(self.ckpt_dir)),
        }
        if last_val is not None:
            summary.update(val_psnr=last_val["psnr"], val_ssim=last_val["ssim"])
        if bicubic is not None:
            summary.update(val_bicubic_psnr=bicubic["psnr"], val_bicubic_ssim=bicubic["ssim"])
        return summary

    def _open_run_folder(self) -> None:
        """The run folder with the config as run and the JSON Lines log (appended on resume)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            self._log_file = open(self.out / "log.jsonl", "a", encoding="utf-8")
        except OSError as err:
            raise OutputError(f"train.out: cannot write to {self.out}: {err.strerror or err}") from None

    def _set_learning_rates(self, elapsed: float) -> float:
        """Both optimisers' learning rates for this point of the schedule; returns the factor."""
        t = self.cfg.train
        factor = self._lr_factor(elapsed)
        for group in self.opt_g.param_groups:
            group["lr"] = t.lr_g * factor
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = t.lr_d * factor
        return factor

    def _validate(self, elapsed: float) -> dict[str, float]:
        model = self.ema.model if self.ema else self.generator
        res = evaluate(model, self.val_pairs, self.cfg.model.scale, self.device)
        self._log({"step": self.step, "seconds": round(elapsed, 2), "val_psnr": res["psnr"],
                   "val_ssim": res["ssim"]})
        log.info("step %d: validation PSNR %.3f dB, SSIM %.4f", self.step, res["psnr"], res["ssim"])
        return res


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run a whole training job from a validated config; returns the run summary."""
    trainer = Trainer(cfg, progress=progress)
    existing = latest_checkpoint(trainer.ckpt_dir)
    if existing is not None and not resume:
        raise UsageError(f"train.out {trainer.out} already holds a run (last checkpoint {existing.name}); "
                         "pass --resume to continue it or choose another --out")
    resumed = trainer.resume() if resume else False
    summary = trainer.run()
    summary["resumed"] = resumed
    return summary
