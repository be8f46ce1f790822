"""Which video encoder a job uses: the candidates that suit a file, and the first the workers run.

NVENC needs a GPU with an encoder engine on the machine that encodes: every worker, not the
machine that plans (often a CPU-only head node, or a workstation sending work to GPUs without
NVENC such as the H100). The workers' answers come in as plain data from cluster/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, Sequence

from vsr.errors import UsageError, VsrError
from vsr.media.encode import EncodeOptions, is_nvenc, nvenc_available, resolve_encode_options
from vsr.media.probe import MediaInfo


def resolve_encoders(info: MediaInfo, output: Path, encode: dict, candidates: Sequence[str | None], *,
                     nvenc: Collection[str] | None) -> tuple[list[EncodeOptions], list[VsrError]]:
    """The candidate encoders that suit this file with these settings, resolved, in order up to
    the first that needs no GPU; and the errors of the others.

    nvenc: the NVENC encoders known to open where the frames are encoded; None checks this
    machine (the workers run here).
    """
    fits: list[EncodeOptions] = []
    errors: list[VsrError] = []
    for codec in candidates:
        try:
            resolved = resolve_encode_options(info, output, EncodeOptions.from_dict(dict(encode, codec=codec)),
                                              nvenc=nvenc)
        except VsrError as err:
            errors.append(err)
            continue
        fits.append(resolved)
        if not is_nvenc(resolved.codec):
            break  # runs on any worker: the rest of the list is never needed
    return fits, errors


def nvenc_candidates(candidates: Sequence[str | None]) -> frozenset[str]:
    """The NVENC encoders among a job's candidates (those the workers must be asked about)."""
    return frozenset(c for c in candidates if c and is_nvenc(c))


def encoders_that_open(names: Sequence[str]) -> dict[str, bool]:
    """Which of these NVENC encoders open on this machine (a worker's answer to the driver)."""
    return {name: nvenc_available(name) for name in names}


def nvenc_everywhere(candidates: Sequence[str | None], answers: Sequence[Mapping[str, bool]]) -> frozenset[str]:
    """The NVENC candidates that every worker said open on its machine (a worker that has not
    said counts as without)."""
    return frozenset(c for c in nvenc_candidates(candidates)
                     if answers and all(bool(a.get(c)) for a in answers))


def encoder_for_workers(candidates: Sequence[str | None], answers: Sequence[Mapping[str, bool]], *,
                        from_spec: bool = False, names: Sequence[str] = ()) -> tuple[str | None, frozenset[str]]:
    """The first candidate every worker can run (None: the container's default encoder) and the
    NVENC candidates that open everywhere. UsageError (one line, with the fix) when none can;
    names: the workers' names, in the order of answers, for that message."""
    everywhere = nvenc_everywhere(candidates, answers)
    usable = [c for c in candidates if c in everywhere or not is_nvenc(c)]
    if usable:
        return usable[0], everywhere
    lacking = [names[i] if i < len(names) else f"worker {i}" for i, a in enumerate(answers)
               if not any(a.get(c) for c in candidates if c)]
    where = (f"{len(lacking)} of {len(answers)} workers open none of them ({', '.join(lacking[:3])})" if lacking
             else "no one of them opens on every worker")
    fix = ("list a software encoder that suits this file in [encode] codec (e.g. libx265)" if from_spec
           else "use a software --codec (e.g. libx264 or libx265)")
    raise UsageError(f"encoder {' / '.join(map(str, candidates))}: needs an NVIDIA GPU with NVENC on every "
                     f"worker, and {where}; {fix}")
