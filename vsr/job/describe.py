"""A JobPlan as text for people (vsr upscale --dry-run): one line per decision."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsr.job.plan import JobPlan


def describe_plan(plan: "JobPlan") -> str:
    """Input, model, picture, encoder, streams, segments and notes, in that order."""
    v = plan.info.video
    lines = [
        f"input   {plan.source}",
        f"        {v.codec} {v.width}x{v.height} {v.pix_fmt} ({v.bit_depth}-bit), {v.frame_count} frames, "
        f"{'variable' if v.vfr else 'constant'} frame rate, time base {v.time_base}",
        f"output  {plan.output}",
        f"model   {plan.model.name} ({plan.model.arch}), x{plan.model.scale:g}, precision {plan.model.precision}"
        + (f", tiles {plan.model.tile}" if plan.model.tile else "")
        + (f", recurrent: each segment warms up {plan.model.warmup_frames} frame(s) at most"
           + (f", state restarted every {plan.model.state_period} frames" if plan.model.state_period else "")
           if plan.model.recurrent else "")
        + (", every frame whole (--temporal off)" if plan.model.temporal == "off" else "")
        + (", steady where the source is still (--temporal stable)" if plan.model.temporal == "stable" else ""),
    ]
    lines += [f"picture {line}" for line in plan.picture.describe().splitlines()]
    e = plan.encode
    lines.append(f"video   {e.codec} {e.pix_fmt}" + (f" crf {e.crf:g}" if e.crf is not None else "")
                 + (f" preset {e.preset}" if e.preset else "")
                 + (f" (else {', '.join(str(x.codec) for x in plan.encoders[1:])})" if len(plan.encoders) > 1 else ""))
    for s in plan.streams:
        what = s.action + (f" as {s.target_codec}" if s.target_codec and s.action != "copy" else "")
        lines.append(f"stream  #{s.index} {s.kind} {s.codec or '?'}: {what}" + (f" ({s.note})" if s.note else ""))
    frames = plan.output_frames
    lines.append(f"frames  {plan.source_frames} in, {frames} out, in {len(plan.segments)} segment(s) at keyframes")
    if plan.corrupt_pts:
        lines.append(f"corrupt {len(plan.corrupt_pts)} frame(s) repeat the previous good one "
                     f"(first at pts {plan.corrupt_pts[0]})")
    lines += [f"note    {n}" for n in plan.notes if n]
    return "\n".join(lines)
