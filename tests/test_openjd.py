"""Render farms: the Open Job Description templates in pipelines/openjd/, `--progress openjd`,
`--shard`, and the cloud Ray example spec.

The templates are validated with openjd-model's public API and one runs end to end under
openjd-cli (`openjd run`): real processes, a real vsr job on a bundled clip.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vsr.cli import build_parser, main
from vsr.job.events import (
    Assemble, BatchDone, BatchStart, FileDone, FileFailed, FileStart, JobDone, JobStart,
)
from vsr.job.inputs import VIDEO_SUFFIXES, BatchItem, parse_shard, take_shard
from vsr.job.openjd import SESSION_ENV, OpenJDProgress
from vsr.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "pipelines" / "openjd"
MEDIA = ROOT / "tests" / "data" / "media"
BEAR = MEDIA / "bear_161x121_vp9_odd.webm"  # 30 frames, odd size
# what openjd-sessions takes from a line of stdout (its ActionMonitoringFilter): the whole line
OPENJD_LINE = re.compile(r"^openjd_(progress|status|fail): (.+)$")
PLACEHOLDER = re.compile(r"\{\{\s*(Task\.)?Param\.(\w+)\s*\}\}")


def load_template(name: str):
    from openjd.model import DocumentType, decode_job_template, document_string_to_object

    text = (TEMPLATES / name).read_text(encoding="utf-8")
    return decode_job_template(template=document_string_to_object(document=text, document_type=DocumentType.YAML))


def instantiate(name: str, values: dict[str, str], tmp_path: Path):
    from openjd.model import create_job, preprocess_job_parameters

    template = load_template(name)
    params = preprocess_job_parameters(job_template=template, job_parameter_values=values,
                                       job_template_dir=TEMPLATES, current_working_dir=tmp_path)
    return template, create_job(job_template=template, job_parameter_values=params)


FILE_PARAMS = {"InputFile": str(BEAR), "OutputFile": "out/bear_x2.webm", "Model": "lanczos", "Scale": "2"}


@pytest.mark.parametrize("name, values, tasks", [
    ("upscale_file.yaml", FILE_PARAMS, [{}]),
    ("upscale_folder.yaml", {"InputDir": str(MEDIA), "OutputDir": "out", "Tasks": "3"},
     [{"Shard": 1}, {"Shard": 2}, {"Shard": 3}]),
])
def test_templates_validate_and_make_the_tasks_they_promise(tmp_path, name, values, tasks):
    from openjd.model import StepParameterSpaceIterator

    template, job = instantiate(name, values, tmp_path)
    params = {p.name for p in template.parameterDefinitions}
    assert {"Model", "Scale", "Encoder"} <= params
    assert params & {"InputFile", "InputDir"} and params & {"OutputFile", "OutputDir"}
    step = job.steps[0]
    space = [{k: int(v.value) for k, v in t.items()} for t in StepParameterSpaceIterator(space=step.parameterSpace)]
    assert space == tasks
    with pytest.raises(Exception, match="Scale"):  # the template's own limits are enforced
        instantiate(name, dict(values, Scale="0"), tmp_path)


@pytest.mark.parametrize("name", ["upscale_file.yaml", "upscale_folder.yaml"])
def test_template_command_lines_are_vsr_command_lines(name):
    """Each template's command, its parameters filled in, parses as the vsr command it means: a
    renamed or removed option fails here, not on the farm."""
    template = load_template(name)
    action = template.steps[0].script.actions.onRun
    sample = {"InputFile": "in.mp4", "OutputFile": "out.mkv", "InputDir": "in", "OutputDir": "out",
              "NamePattern": "{stem}_x2{ext}", "Tasks": "4", "Shard": "3", "Model": "lanczos",
              "Scale": "1.5", "Encoder": "auto"}
    args = [PLACEHOLDER.sub(lambda m: sample[m.group(2)], str(a)) for a in action.args]
    assert str(action.command) == "vsr"
    parsed = build_parser().parse_args(args)
    assert parsed.progress == "openjd" and parsed.model == "lanczos" and parsed.outscale == 1.5
    assert parsed.codec == "auto"
    if name == "upscale_folder.yaml":
        assert parsed.command == "batch" and parsed.shard == (3, 4) and parsed.name == "{stem}_x2{ext}"
    else:
        assert parsed.command == "upscale" and (parsed.input, parsed.output) == ("in.mp4", "out.mkv")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_openjd_lines_are_well_formed_and_few_however_many_frames():
    out, clock = io.StringIO(), _Clock()
    view = OpenJDProgress(out, clock=clock)
    written_at: list[float] = []
    real_write = out.write
    out.write = lambda text: (written_at.append(clock.now), real_write(text))[1]  # type: ignore[method-assign]
    view.event(BatchStart(files=2))
    for n, frames in ((1, 100_000), (2, 1_000)):
        names = dict(file=n, of=2, input=f"/in/reel{n}.mp4", output=f"/out/reel{n}.mkv")
        view.event(FileStart(**names))
        view.event(JobStart(input=names["input"], output=names["output"], frames=frames, segments=4, model="m"))
        view.open(frames, f"reel{n}.mp4")
        for done in range(0, frames + 1, 10):
            clock.now += 0.1
            view.set(done)
        view.close()
        if n == 1:
            view.event(Assemble(segments=4, output=names["output"]))
            view.event(FileDone(**names, status="done", frames=frames, fps=1.0, width=2, height=2,
                                segments_reused=0))
            after_first = out.getvalue()
        else:
            view.event(FileFailed(**names, status="failed", error="bad\ninput", exit_code=3))
    view.event(BatchDone(files=2, done=1, skipped=0, failed=1, not_run=0, seconds=1.0))

    lines = out.getvalue().splitlines()
    parsed = [OPENJD_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    progress = [(float(m.group(2)), t) for m, t in zip(parsed, written_at) if m.group(1) == "progress"]
    values = [p for p, _ in progress]
    assert values == sorted(set(values)) and values[0] == 0 and values[-1] == 100
    assert 0 <= min(values) and max(values) <= 100 and all(v == int(v) for v in values)
    # throttled: 10,102 frame updates over 1,010 s give one line per 5 s at most (the end forced)
    gaps = [b - a for (_, a), (_, b) in zip(progress, progress[1:])]
    assert sum(g < 5.0 for g in gaps) <= 1 and len(values) <= 101
    assert "openjd_progress: 50" in after_first.splitlines()  # file 1 of 2 done: half the batch
    assert len(lines) <= len(values) + 12  # a few status lines per file, never one per frame
    statuses = [m.group(2) for m in parsed if m.group(1) == "status"]
    assert "file 2 of 2 failed: reel2.mkv (bad input)" in statuses
    assert [m.group(2) for m in parsed if m.group(1) == "fail"] == ["1 of 2 file(s) failed"]


def test_progress_is_openjd_inside_an_openjd_session(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing.mp4")
    monkeypatch.setenv(SESSION_ENV, str(tmp_path))
    assert main(["upscale", missing, str(tmp_path / "out.mp4"), "-m", "lanczos"]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out and all(OPENJD_LINE.match(line) for line in out), out
    assert out[-2].startswith("openjd_status: failed (exit code 3): ") and out[-1].startswith("openjd_fail: ")
    assert main(["upscale", missing, str(tmp_path / "out.mp4"), "--json"]) == 3  # --json: events only
    assert [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()] == ["job_failed"]
    monkeypatch.delenv(SESSION_ENV)
    assert main(["-q", "upscale", missing, str(tmp_path / "out.mp4")]) == 3
    assert capsys.readouterr().out == ""
    assert main(["upscale", missing, str(tmp_path / "out.mp4"), "--progress", "openjd", "--json"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_shards_cover_every_input_once_and_skip_own_outputs():
    items = [BatchItem(Path(f"in/{n}.mp4"), Path(f"out/{n}.mp4")) for n in "abcdefg"]
    items[2].not_input = "made by vsr"  # an output another task finished: no shard counts it
    shards = [take_shard(items, (k, 3)) for k in (1, 2, 3)]
    assert [[i.input.stem for i in s] for s in shards] == [["a", "e"], ["b", "f"], ["d", "g"]]
    assert take_shard(items, (7, 7)) == []  # more tasks than files: nothing to do
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(UsageError, match="K/N"):
            parse_shard(bad)


def test_batch_shard_plans_only_its_files(tmp_path, capsys):
    assert main(["batch", str(MEDIA), str(tmp_path / "out"), "--shard", "2/3", "-m", "lanczos",
                 "--dry-run", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    every = sorted(p for p in MEDIA.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    assert [Path(p["source"]).name for p in plans] == [p.name for p in every[1::3]]


def test_cloud_ray_example_is_a_valid_spec_on_s3(tmp_path):
    """The example names s3:// URIs for inputs, outputs and work directory, and is otherwise a
    valid job spec (its S3 paths replaced by local ones, as `vsr run --input/--output-dir` do)."""
    from vsr.job.spec import load_jobspec

    path = ROOT / "pipelines" / "cloud_ray.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    uris = [*raw["job"]["inputs"], raw["job"]["output_dir"], raw["cluster"]["workdir"]]
    assert all(u.startswith("s3://") for u in uris), uris
    spec = load_jobspec(path, inputs=[str(BEAR)], output_dir=str(tmp_path),
                        overrides={"workdir": str(tmp_path / "work")})
    assert [i.output.name for i in spec.items] == ["bear_161x121_vp9_odd_x2.mkv"]
    assert spec.codecs == ["hevc_nvenc", "libx265"] and spec.options.address == "auto"
    assert "ray job submit" in path.read_text(encoding="utf-8")


def test_openjd_run_upscales_a_clip_end_to_end(tmp_path):
    """`openjd run` of upscale_file.yaml: OpenJD starts `vsr` (this checkout's) as a real task
    process; the output verifies and the task's progress lines reached OpenJD's log intact."""
    from vsr.media.verify import verify

    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "vsr"  # the `vsr` on the farm's PATH, running this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vsr.cli "$@"\n')
    shim.chmod(0o755)
    import os

    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop(SESSION_ENV, None)
    out = tmp_path / "out" / "bear_x2.webm"
    params = [f"-p{k}={v}" for k, v in dict(FILE_PARAMS, OutputFile=str(out)).items()]
    r = subprocess.run([sys.executable, "-m", "openjd", "run", str(TEMPLATES / "upscale_file.yaml"), *params,
                        "--output", "json"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    result = json.loads(r.stdout)
    assert result["status"] == "success", result.get("message")
    log = [e.get("message", "") for e in result["logs"]]
    assert verify(BEAR, out, 2.0).ok
    assert any(m.startswith(f"wrote {out} (322x242, 30 frames, model lanczos") and m.endswith("verified)")
               for m in log), log[-20:]
    ours = [m for m in log if m.startswith("openjd_")]
    assert all(OPENJD_LINE.match(m) and "-- ERROR" not in m for m in ours), ours  # OpenJD accepted each
    assert "openjd_progress: 100" in ours and "openjd_status: verified bear_x2.webm: 322x242, 30 frames" in ours
    assert not any("frame/s" in m for m in log)  # no progress bar in a farm's log
