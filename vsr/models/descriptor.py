"""What the engine needs to know about a generator, without knowing which architecture it is.

Every architecture turns its hyper-parameters into a ``ModelDescriptor`` (see
vsr.models.registry); the engine decides padding, tiling, precision and batching from these
fields alone, never from an architecture's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDescriptor:
    """Facts about one generator that running it on frames depends on.

    Attributes:
        scale: the network's own upscale factor (output pixels per input pixel, per axis).
        in_channels / out_channels: image channels in and out (the engine feeds RGB: 3).
        input_range: the sample values the network takes for black and full white; its output
            is read on the same scale.
        pad_multiple: input height and width must be multiples of this (pixel-unshuffle);
            the engine pads frames and keeps tiles on this grid.
        tile_context: overlap, in input pixels per side, that tiles need for tiled output to
            match whole frames.
        exact_tiles: tiles overlapping by tile_context compute exactly what the whole frame
            does (the reach is known exactly), so the engine may tile on its own to fit caches.
        feature_channels: channels of the widest activation per input pixel (sizes the tiles
            that fit a CPU cache).
        tile_multiple: tiles start on a grid of this many input pixels (the network
            downsamples inside), without the frame being padded to it.
        frame_stats: the output of every pixel depends on statistics of the whole frame
            (squeeze-and-excitation means): a tile's output is not a function of the tile and
            its tile_context alone, so a tile computed for one frame must never be reused for
            another. The network has ``frame_stats_count``, ``tile_stats(piece, known, rows,
            cols)`` (a tile's share of the next statistic) and ``forward(x, stats)``; tiles
            gather the whole frame's statistics first and all run with them.
        temporal: the output of a frame depends on other frames (recurrent or multi-frame);
            the frame engine runs frames independently and refuses these.
        any_scale: a classical resampler without a network: it reaches any output scale.
    """

    scale: int
    in_channels: int = 3
    out_channels: int = 3
    input_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 1
    tile_context: int = 32
    exact_tiles: bool = False
    feature_channels: int = 64
    tile_multiple: int = 1
    frame_stats: bool = False
    temporal: bool = False
    any_scale: bool = False

    def __post_init__(self) -> None:
        if self.scale < 1 or self.pad_multiple < 1 or self.tile_multiple < 1 or self.tile_context < 0:
            raise ValueError(f"bad model descriptor: scale {self.scale}, pad_multiple "
                             f"{self.pad_multiple}, tile_context {self.tile_context}")
        low, high = self.input_range
        if not high > low:
            raise ValueError(f"bad model descriptor: input_range {self.input_range} is empty")
