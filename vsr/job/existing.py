"""What to do with an output that already exists: skip it, make it again, or leave it alone."""

from __future__ import annotations

import logging
from typing import Callable

from vsr.errors import VsrError
from vsr.job.plan import JobPlan, stale_tag_reason
from vsr.media.containers import read_job_tag
from vsr.media.verify import verify
from vsr.storage.digests import content_digest

log = logging.getLogger("vsr")


def existing_output_action(output: str, make_plan: Callable[[], JobPlan]) -> tuple[str, str]:
    """("skip" | "redo" | "foreign", why) for an existing output and the plan that would make it.

    skip: it verifies against its input and its job tag says it was made with these settings
        from this very source (content digest, so a re-exported source is made again); or it
        has no job tag (made by something else, or by a vsr from before job tags) and verifies:
        kept as it is, said in the reason (--redo remakes it);
    redo: vsr made it, but with other settings, or it does not verify (replaced atomically);
    foreign: no vsr job tag and it does not verify: never overwritten without --redo.
    make_plan is called once (planning reads the source); its refusal is a redo or foreign.
    """
    tag = read_job_tag(output)
    try:
        plan = make_plan()
        stale = _stale_reason(tag, plan) if tag is not None else None
    except VsrError as err:
        return ("foreign" if tag is None else "redo"), str(err)
    if tag is not None and stale:
        return "redo", stale
    problems = _verify_problems(plan)
    if tag is None:
        if problems:
            return "foreign", "has no vsr job tag (vsr did not make it) and does not verify against its input"
        log.warning("%s has no vsr job tag but verifies against its input: kept (--redo remakes it)", output)
        return "skip", "output exists and verifies; it has no vsr job tag, so its settings are unknown"
    if problems:
        return "redo", "does not verify: " + "; ".join(problems[:3])
    return "skip", "output exists, verifies and was made with the same settings"


def _stale_reason(tag: str, plan: JobPlan) -> str | None:
    """stale_tag_reason against the plan's settings, or against those of another encoder the
    plan would accept (an output made with NVENC on workers that had it is as good as this
    run's libx265 one)."""
    digest = content_digest(plan.source)
    stale = stale_tag_reason(tag, plan.settings, digest)
    for other in plan.encoders:
        if stale != "settings changed" or other == plan.encode:
            continue
        stale = stale_tag_reason(tag, dict(plan.settings, encode=other.to_dict()), digest)
    return stale


def _verify_problems(plan: JobPlan) -> list[str]:
    try:
        report = verify(plan.source, plan.output, plan.display_scale, info=plan.info, plans=list(plan.streams),
                        picture=plan.picture, encode=plan.encode)
    except VsrError as err:
        return [str(err)]
    return [] if report.ok else list(report.problems)
