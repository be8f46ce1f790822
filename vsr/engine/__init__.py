"""Running generators on frames: batching, tiling, precision (``Upscaler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsr.engine.upscaler import Upscaler

__all__ = ["Upscaler"]


def __getattr__(name: str):
    # Lazy: importing vsr.engine for a type or constant should not pull in torch.
    if name == "Upscaler":
        from vsr.engine.upscaler import Upscaler

        return Upscaler
    raise AttributeError(name)
