"""vsr: video super-resolution batch pipeline (PyAV decode, Ray actors, GAN generators)."""

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning, so they
# do not take the cores from NNPACK's own thread pool (fp32 CPU inference, vsr/engine/nnpack.py:
# 2.7 -> 3.6 frames/s on 2 cores with it, no gain without it). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
