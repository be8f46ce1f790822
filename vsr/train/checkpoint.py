"""Training checkpoints as safetensors: generator, EMA generator, discriminator, both
optimisers' states, the step and the random states, in one file written atomically.

Tensors are stored flat under prefixes ("g.", "g_ema.", "d.", "opt_g.", "opt_d.", "rng.");
everything that is not a tensor (step, optimiser param groups, RNG state of numpy, config)
goes into the safetensors metadata as JSON under the key "vsr_checkpoint".
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vsr.errors import ModelError, OutputError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "checkpoint_path", "prune_checkpoints"]

CHECKPOINT_FORMAT = "vsr-train-checkpoint-1"
_NAME = re.compile(r"^step_(\d{8})\.safetensors$")


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of `step` lives in a run's checkpoint folder."""
    return Path(folder) / f"step_{step:08d}.safetensors"


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    found = sorted((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := _NAME.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def _flatten_optimizer(prefix: str, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    """Optimizer state_dict -> tensors under `prefix` and a JSON-safe remainder."""
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "scalars": {}}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                rest["scalars"][f"{pid}.{name}"] = value
    return rest


def _unflatten_optimizer(prefix: str, rest: dict, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in rest.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: str | os.PathLike, *, step: int, generator: torch.nn.Module,
                    generator_ema: torch.nn.Module | None = None,
                    discriminator: torch.nn.Module | None = None,
                    opt_g: torch.optim.Optimizer | None = None,
                    opt_d: torch.optim.Optimizer | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint (temp name in the same folder, then rename); returns its path."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "step": int(step), **(meta or {})}
    for prefix, module in (("g", generator), ("g_ema", generator_ema), ("d", discriminator)):
        if module is not None:
            for k, v in module.state_dict().items():
                tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    for prefix, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        if opt is not None:
            info[prefix] = _flatten_optimizer(prefix, opt.state_dict(), tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"vsr_checkpoint": json.dumps(info)})
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(f"cannot write checkpoint {path}: {err.strerror or err}") from None
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint: dict with step, meta (the JSON), and state dicts "g", "g_ema", "d",
    "opt_g", "opt_d" (absent parts are None) and "rng_torch"."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get("vsr_checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors has its own error types for truncated files
        raise ModelError(f"{path}: unreadable checkpoint: {str(err).splitlines()[0] if str(err) else err}") from None
    if raw is None:
        raise ModelError(f"{path}: not a vsr training checkpoint (no vsr_checkpoint metadata)")
    info = json.loads(raw)
    if info.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: unknown checkpoint format {info.get('format')!r}")
    out: dict[str, Any] = {"step": int(info["step"]), "meta": info, "rng_torch": tensors.get("rng.torch")}
    for prefix in ("g", "g_ema", "d"):
        part = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        out[prefix] = part or None
    for prefix in ("opt_g", "opt_d"):
        out[prefix] = _unflatten_optimizer(prefix, info[prefix], tensors) if prefix in info else None
    return out
