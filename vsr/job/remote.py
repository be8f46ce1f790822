"""Jobs whose input, output or work directory is on an object store (s3://...).

Nodes share nothing but the store. A worker decodes its segment straight from the input object
(ranged reads through vsr.storage.uri.open_read, only the bytes its segment needs), encodes it
into its own node's temporary folder and uploads the segment and its frame digests to the
work-directory URI. The driver, which reads the whole input anyway (probe indexes every packet,
the scan decodes every frame, the other streams are remuxed from it), keeps one local copy of it
for the job in its own temporary folder; it downloads the finished segments, assembles and
verifies locally, and only then uploads the output (one PUT, or a multipart upload that the
store shows only once complete): a reader never sees half an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vsr.errors import OutputError
from vsr.job.handover import StateHandover
from vsr.job.plan import JobPlan, Segment, plan_job
from vsr.job.segment import FRAMES_SUFFIX, Upscale, frames_sidecar, run_segment
from vsr.storage import uri as store
from vsr.storage.files import sha256_file
from vsr.storage.paths import check_paths, default_workdir

log = logging.getLogger("vsr")


def run_segment_at(plan: JobPlan, segment: Segment, location: str, upscale: Upscale, *,
                   carry_in: StateHandover | None = None,
                   carry_out: Callable[[StateHandover], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """run_segment into `location`, a path or a URI. For a URI the file is made in this node's
    temporary folder and uploaded with its frame digests (the digests first, so a segment
    object always has its sidecar); the record gains their ETags and source_bytes, what this
    process fetched from the store meanwhile (the input's byte ranges it read). carry_in and
    carry_out as run_segment's (a temporal model's state from the segment before, and this
    one's for the segment after); carry_out is called only once the segment is where it goes."""
    final: list[StateHandover] = []
    kwargs.update(carry_in=carry_in, carry_out=final.append if carry_out is not None else None)
    if not store.is_uri(location):
        record = run_segment(plan, segment, location, upscale, **kwargs)
    else:
        before = store.bytes_fetched()
        with tempfile.TemporaryDirectory(prefix="vsr-seg-") as tmp:
            local = Path(tmp) / store.basename(location)
            record = run_segment(plan, segment, local, upscale, **kwargs)
            sidecar = frames_sidecar(local)
            if sidecar.exists():
                record["frames_etag"] = store.upload(sidecar, location + FRAMES_SUFFIX)
            record["etag"] = store.upload(local, location)
        record["source_bytes"] = store.bytes_fetched() - before
    if carry_out is not None:
        for state in final:
            carry_out(state)
    return record


def plan_at(input: str | os.PathLike, output: str | os.PathLike, options: Any, facts: Any) -> JobPlan:
    """plan_job where the input or output may be URIs (vsr upscale --dry-run): planned on a
    local copy of the input, the plan naming the URIs and the work directory as the run would."""
    if not (store.is_uri(input) or store.is_uri(output) or store.is_uri(options.workdir)):
        return plan_job(input, output, options, facts=facts)
    src, dst = check_paths(input, output)
    with StagedJob(src, dst) as staged:
        plan = plan_job(staged.source, staged.output, options, facts=facts)
        return staged.for_workers(plan, default_workdir(dst, options.workdir))


@contextlib.contextmanager
def local_copies(*locations: str | os.PathLike) -> Iterator[list[str | os.PathLike]]:
    """The locations with every URI downloaded into a temporary folder (gone afterwards)."""
    with tempfile.TemporaryDirectory(prefix="vsr-copy-") as tmp:
        out: list[str | os.PathLike] = []
        for n, loc in enumerate(locations):
            if store.is_uri(loc):
                local = Path(tmp) / str(n) / store.basename(str(loc))
                local.parent.mkdir()
                store.download(str(loc), local)
                loc = local
            out.append(loc)
        yield out


class StagedJob:
    """The driver's local side of a job with URIs: a local copy of an input object, a local name
    to assemble an output object under, and local copies of the segments. Local paths pass
    through unchanged. A context manager: its temporary folder goes at the end."""

    def __init__(self, source: str | os.PathLike, output: str | os.PathLike) -> None:
        self.remote_source, self.remote_output = source, output
        self.tmp = Path(tempfile.mkdtemp(prefix="vsr-driver-"))
        self.source: str | os.PathLike = source
        self.output: str | os.PathLike = output
        if store.is_uri(source):
            self.source = self.tmp / "input" / store.basename(str(source))
            self.source.parent.mkdir()
            log.info("%s: reading the input once into this driver's temporary folder", source)
            store.download(str(source), self.source)
        if store.is_uri(output):
            self.output = self.tmp / "output" / store.basename(str(output))
            self.output.parent.mkdir()

    @property
    def remote(self) -> bool:
        return self.source != self.remote_source or self.output != self.remote_output

    def digest(self) -> str | None:
        """SHA-256 of the local copy of an input object (None: the input is a local file)."""
        return sha256_file(self.source) if store.is_uri(self.remote_source) else None

    def for_workers(self, plan: JobPlan, workdir: str | os.PathLike) -> JobPlan:
        """The plan the workers run: the input and output as the user gave them, and the work
        directory (a URI when it is one: no local path goes to another node)."""
        pick = lambda remote, local: str(remote) if store.is_uri(remote) else local  # noqa: E731
        return dataclasses.replace(plan, source=pick(self.remote_source, plan.source),
                                   output=pick(self.remote_output, plan.output), workdir=str(workdir))

    def for_assembly(self, plan: JobPlan) -> JobPlan:
        """The plan the driver assembles: its local copy of the input, the local output name."""
        return dataclasses.replace(plan, source=str(Path(self.source).absolute()),
                                   output=str(Path(self.output).absolute()))

    def segments(self, locations: Sequence[str | os.PathLike],
                 sha256: Sequence[str | None]) -> list[str | os.PathLike]:
        """Local paths of the segments (and their frame digests beside them): objects downloaded
        and checked against the SHA-256 their workers recorded (OutputError when one changed)."""
        out: list[str | os.PathLike] = []
        folder = self.tmp / "segments"
        folder.mkdir(exist_ok=True)
        for loc, digest in zip(locations, sha256):
            if not store.is_uri(loc):
                out.append(loc)
                continue
            local = folder / store.basename(str(loc))
            store.download(str(loc), local)
            if digest is not None and sha256_file(local) != digest:
                raise OutputError(f"{loc}: the segment changed on the store since its worker wrote it; "
                                  "run the job again with --no-resume")
            store.download(str(loc) + FRAMES_SUFFIX, frames_sidecar(local))
            out.append(local)
        return out

    def publish(self) -> None:
        """Upload the verified output to its object (nothing when the output is a local path)."""
        if store.is_uri(self.remote_output):
            store.upload(self.output, str(self.remote_output))
            Path(self.output).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StagedJob":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
