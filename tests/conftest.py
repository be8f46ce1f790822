"""Shared test settings: loopback-only Ray, a private weight cache, paths to the real test data,
and every --json event checked against docs/events.schema.json."""

from __future__ import annotations

import functools
import json
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



def _find_shared() -> Path | None:
    """The project's shared folder (../shared: the real-media corpus, the independent checker):
    $VSR_SHARED, else a shared/ beside this checkout or one of its parents, else, for a clone,
    the shared/ beside the repository it was cloned from (git clone /work/main /tmp/fresh)."""
    import subprocess

    candidates = [Path(os.environ["VSR_SHARED"])] if os.environ.get("VSR_SHARED") else []
    candidates += [parent / "shared" for parent in Path(__file__).resolve().parents]
    try:
        origin = subprocess.run(["git", "-C", str(Path(__file__).parent), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():  # a local path, not a URL
        candidates.append(Path(origin).resolve().parent / "shared")
    return next((c for c in candidates if (c / "media" / "corpus").is_dir()), None)


# Real files from public test suites (shared/media/corpus) and the everyday clips (shared/media),
# read in place: never copied into the repository (several carry no licence or a copyleft one).
SHARED = _find_shared()
SHARED_MEDIA = SHARED / "media" if SHARED else None
CORPUS = SHARED / "media" / "corpus" if SHARED else None
SHARED_IMAGES = SHARED / "images" if SHARED else None
NO_SHARED = "the shared folder (shared/media/corpus) is not beside this checkout; set VSR_SHARED"
# The project's independent checker of an upscaled video (shared/tools/check_video.py). The shared
# copy wins when it is there (it may be newer); tests/tools holds a copy of it.
_SHARED_CHECKER = SHARED / "tools" / "check_video.py" if SHARED else None
CHECK_VIDEO = (_SHARED_CHECKER if _SHARED_CHECKER is not None and _SHARED_CHECKER.is_file()
               else Path(__file__).parent / "tools" / "check_video.py")


def pytest_configure(config: pytest.Config) -> None:
    # One converted-weights cache per test session, shared by subprocesses (vsr CLI calls).
    if "VSR_CACHE" not in os.environ:
        cache = Path(config.rootpath) / ".pytest_cache" / "vsr-weights"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["VSR_CACHE"] = str(cache)


# ---------------------------------------------------------------- events follow their schema
EVENTS_SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "events.schema.json"
_invalid_events: list[str] = []


@functools.lru_cache(maxsize=1)
def _event_validator():
    import jsonschema

    schema = json.loads(EVENTS_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def event_problems(record: dict) -> list[str]:
    """What is wrong with one event's JSON object by docs/events.schema.json (empty: valid)."""
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
                for e in _event_validator().iter_errors(record)]
    keys = list(record)[:2]
    if keys != ["event", "time"]:
        problems.append(f"the object starts with {keys}, not ['event', 'time']")
    return problems


def validated_events(stdout: str) -> list[dict]:
    """The JSON Lines events of a `vsr ... --json` run's stdout, each checked against the schema."""
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    for record in records:
        problems = event_problems(record)
        assert not problems, f"event {record.get('event')!r} does not follow the schema: {problems}: {record}"
    return records


@pytest.fixture(scope="session", autouse=True)
def _events_are_checked_against_their_schema():
    """Every event any test emits in this process goes through its JSON and the schema."""
    from vsr.job.events import Events

    emit = Events.emit

    def checked_emit(self, event):
        record = json.loads(json.dumps(event.record(), default=str, ensure_ascii=False))
        problems = event_problems(record)
        if problems:  # recorded, not raised: the job's own error handling must not swallow it
            _invalid_events.append(f"{record.get('event')}: {problems}")
        return emit(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Events, "emit", checked_emit)
        yield


@pytest.fixture(autouse=True)
def _no_invalid_event():
    """Fails the test during which an event that does not follow the schema was emitted."""
    _invalid_events.clear()
    yield
    invalid, _invalid_events[:] = list(_invalid_events), []
    assert not invalid, f"events that do not follow docs/events.schema.json: {invalid}"


@pytest.fixture(scope="session")
def media_dir() -> Path:
    return MEDIA


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if CORPUS is None:
        pytest.skip(NO_SHARED)
    return CORPUS


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
