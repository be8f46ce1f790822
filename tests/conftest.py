"""Shared test settings: loopback-only Ray, a private weight cache, paths to the real test data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Ray reads these when it is imported, and tests import ray before vsr's RaySession can set them
# (vsr.cluster.runtime): loopback only (DESIGN.md, Security), token authentication (as vsr sets
# them for its embedded instance), no usage report.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DATA = Path(__file__).parent / "data"
MEDIA = DATA / "media"
IMAGES = DATA / "images"

# The project's independent checker of an upscaled video (../shared/tools/check_video.py). The
# shared copy wins when it is beside the clone (it may be newer); tests/tools holds a copy of it.
_SHARED_CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_video.py"
CHECK_VIDEO = _SHARED_CHECKER if _SHARED_CHECKER.is_file() else Path(__file__).parent / "tools" / "check_video.py"


def pytest_configure(config: pytest.Config) -> None:
    # One converted-weights cache per test session, shared by subprocesses (vsr CLI calls).
    if "VSR_CACHE" not in os.environ:
        cache = Path(config.rootpath) / ".pytest_cache" / "vsr-weights"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["VSR_CACHE"] = str(cache)


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return MEDIA


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two images (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


@pytest.fixture(scope="session")
def anime(images_dir) -> np.ndarray:
    """The real anime still 00003.png (512x256 RGB)."""
    from PIL import Image

    return np.asarray(Image.open(images_dir / "00003.png").convert("RGB"))
