"""Job specs are validated before any work: every mistake names the key and the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vsr.job.inputs import find_videos, output_name, plan_folder
from vsr.job.encoders import encoder_for_workers
from vsr.job.spec import load_jobspec, resolve_codecs
from vsr.job.options import JobOptions
from vsr.media.encode import nvenc_available
from vsr.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "media" / "bbb_176x144_mpeg4part2.mp4"


@pytest.fixture()
def spec_dir(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    shutil.copy(CLIP, tmp_path / "in" / "a.mp4")
    return tmp_path


def _write(d: Path, text: str) -> Path:
    p = d / "job.toml"
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """
[job]
inputs = ["in/*.mp4"]
output_dir = "out"
name = "{stem}_x2.mkv"
[model]
name = "lanczos"
outscale = 2
[encode]
codec = "libx264"
crf = 18
[cluster]
workers = 1
"""


def test_good_spec_resolves_paths_relative_to_the_spec(spec_dir):
    spec = load_jobspec(_write(spec_dir, GOOD))
    assert [(i.input.name, i.output) for i in spec.items] == [("a.mp4", spec_dir / "out" / "a_x2.mkv")]
    assert spec.options.model == "lanczos" and spec.options.outscale == 2.0
    assert spec.options.encode["crf"] == 18 and spec.codecs == ["libx264"] and spec.options.workers == 1
    resolve_codecs(spec)
    assert spec.items[0].encode["codec"] == "libx264"
    assert spec.options.segments_per_worker is None  # the pool's default: 2 on a GPU, 1 on the CPU
    two = load_jobspec(_write(spec_dir, GOOD.replace("workers = 1", "workers = 1\nsegments_per_worker = 2")))
    assert two.options.segments_per_worker == 2


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("crf = 18", "crf = 18\ncfr = 3"), "unknown key 'cfr' in [encode]; did you mean 'crf'?"),
    (GOOD.replace("[cluster]", "[clutser]"), "unknown table [clutser]; did you mean 'cluster'?"),
    (GOOD.replace("crf = 18", 'crf = "18"'), "[encode] crf must be an integer, got str '18'"),
    (GOOD.replace("workers = 1", "workers = 1.5"), "[cluster] workers must be an integer"),
    (GOOD.replace("workers = 1", "workers = 1\nsegments_per_worker = 0"), "segments_per_worker 0: use 1 to 8"),
    (GOOD.replace('"in/*.mp4"', '"nowhere/*.mp4"'), "inputs: 'nowhere/*.mp4' matches no file"),
    (GOOD.replace('"in/*.mp4"', '"in/missing.mp4"'), "inputs: 'in/missing.mp4' matches no file"),
    (GOOD.replace('output_dir = "out"', 'output_dir = "in"').replace('"{stem}_x2.mkv"', '"{name}"'),
     "would overwrite its input; change [job] output_dir or name"),
    (GOOD.replace('name = "lanczos"', 'name = "realesr-animevideov3-x5"'),
     "[model] name: unknown model 'realesr-animevideov3-x5'; did you mean"),
    (GOOD.replace("outscale = 2", "outscale = 0"), "outscale 0.0: use a factor between 0.1 and 16"),
    (GOOD.replace('output_dir = "out"\n', ""), "[job] output_dir is missing"),
    (GOOD.replace('inputs = ["in/*.mp4"]\n', ""), "[job] inputs is missing"),
    (GOOD + '\n[picture]\ndeinterlace = true\n', "[picture] deinterlace must be a string, got bool True"),
    # values, not only types: `vsr run --check` once called these valid and the run failed per file
    (GOOD + '\n[picture]\ndeinterlace = "maybe"\n', "[picture] deinterlace must be one of auto, on, off"),
    (GOOD + '\n[picture]\ncrop = "abc"\n', "[picture] crop must be 'auto' or W:H:X:Y"),
    (GOOD.replace("[job]", "[job]\non_corrupt = \"ignore\""), "on_corrupt must be one of fail, repeat-previous"),
    (GOOD.replace("[job]", "[job\n"), "not valid TOML"),
])
def test_bad_specs_name_the_key_and_the_fix(spec_dir, text, expected):
    with pytest.raises(UsageError) as err:
        load_jobspec(_write(spec_dir, text))
    msg = str(err.value)
    assert expected in msg and msg.startswith("job.toml: ") and "\n" not in msg


def test_unknown_codec_is_named(spec_dir):
    spec = load_jobspec(_write(spec_dir, GOOD.replace('codec = "libx264"', 'codec = "libx999"')))
    with pytest.raises(UsageError) as err:
        resolve_codecs(spec)
    assert "job.toml: [encode] codec" in str(err.value) and "libx999" in str(err.value)


def test_codec_preference_list_takes_the_first_that_works(spec_dir):
    spec = load_jobspec(_write(spec_dir, GOOD.replace('codec = "libx264"', 'codec = ["libx999", "libx264"]')))
    resolve_codecs(spec)
    assert spec.items[0].encode["codec"] == "libx264"


NVENC_FIRST = GOOD.replace('codec = "libx264"', 'codec = ["hevc_nvenc", "libx265", "libx264"]')


def test_nvenc_is_asked_of_this_machine_for_an_embedded_run(spec_dir, monkeypatch):
    """Embedded: the workers are this machine, so NVENC is checked here, before Ray starts."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = load_jobspec(_write(spec_dir, NVENC_FIRST))
    resolve_codecs(spec)
    here = ["hevc_nvenc"] if nvenc_available("hevc_nvenc") else []
    assert spec.items[0].codecs == here + ["libx265"]  # libx264 is never needed after libx265
    assert spec.items[0].encode["codec"] == (here + ["libx265"])[0]
    assert spec.options.codecs == ["hevc_nvenc", "libx265", "libx264"]  # what the workers are asked


def test_nvenc_waits_for_the_workers_on_a_cluster(spec_dir):
    """On a cluster the driver's own GPU (or its lack) says nothing: the choice waits for the
    workers' answer (job.encoder_for_workers), with the software fallback kept."""
    spec = load_jobspec(_write(spec_dir, NVENC_FIRST + 'address = "10.0.0.1:6379"\n'))
    resolve_codecs(spec)
    assert spec.items[0].codecs == ["hevc_nvenc", "libx265"]
    assert spec.items[0].encode["codec"] == "hevc_nvenc"


def _answers(*nvenc: dict[str, bool] | None) -> list[dict[str, bool]]:
    """Each worker's answer to "which NVENC encoders open here" ({} for one never asked)."""
    return [dict(n or {}) for n in nvenc]


NAMES = ["w0@gpu0:100", "w1@gpu1:101", "w2@gpu2:102"]


def test_the_encoder_is_the_first_that_every_worker_runs():
    both = ["hevc_nvenc", "libx265"]
    yes, no = {"hevc_nvenc": True}, {"hevc_nvenc": False}
    assert encoder_for_workers(both, _answers(yes, yes)) == ("hevc_nvenc", {"hevc_nvenc"})
    for answers in (_answers(yes, no), _answers(yes, None)):  # one without NVENC, or one never asked
        assert encoder_for_workers(both, answers) == ("libx265", set())
    assert encoder_for_workers(["libx264"], _answers(None)) == ("libx264", set())
    assert encoder_for_workers([None], _answers(None)) == (None, set())  # the container's default
    # two NVENC encoders, neither on every worker: the error counts only workers with neither
    with pytest.raises(UsageError) as err:
        encoder_for_workers(["hevc_nvenc", "h264_nvenc"], _answers({"hevc_nvenc": True, "h264_nvenc": False},
                                                                   {"hevc_nvenc": False, "h264_nvenc": True}),
                            from_spec=True, names=NAMES)
    assert "no one of them opens on every worker; list a software encoder" in str(err.value)
    with pytest.raises(UsageError) as err:  # vsr upscale --codec h264_nvenc
        encoder_for_workers(["h264_nvenc"], _answers({"h264_nvenc": True}, {"h264_nvenc": False}), names=NAMES)
    msg = str(err.value)
    assert "NVENC on every worker, and 1 of 2 workers open none of them (w1@gpu1:101)" in msg
    assert "use a software --codec" in msg and "\n" not in msg


def test_cli_run_bad_spec_is_one_line_exit_2(spec_dir):
    bad = _write(spec_dir, GOOD.replace("crf = 18", "crf = 18\ncfr = 3"))
    r = subprocess.run([sys.executable, "-m", "vsr.cli", "run", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown key 'cfr'" in r.stderr
    assert not (spec_dir / "out").exists()


@pytest.mark.parametrize("name", ["archive_restore.toml", "renderfarm.toml", "nightly_batch.toml"])
def test_pipelines_validate_with_overrides(tmp_path, name):
    spec = load_jobspec(ROOT / "pipelines" / name, inputs=[str(CLIP)], output_dir=str(tmp_path))
    assert len(spec.items) == 1 and spec.items[0].output.parent == tmp_path
    resolve_codecs(spec)
    assert spec.items[0].encode["codec"]


def test_options_validation_messages():
    with pytest.raises(UsageError, match="gpus_per_worker"):
        JobOptions(gpus_per_worker=0).validate()
    with pytest.raises(UsageError, match="on_corrupt"):
        JobOptions(on_corrupt="skip").validate()


def test_batch_folder_planning(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for n in ("b.mp4", "a.MKV", "notes.txt", ".hidden.mp4", "sub/c.webm"):
        (tmp_path / "in" / n).write_bytes(b"x")
    assert [p.name for p in find_videos(tmp_path / "in")] == ["a.MKV", "b.mp4"]
    items = plan_folder(tmp_path / "in", tmp_path / "out", pattern="{stem}_x2.mkv", recursive=True)
    assert [str(i.output.relative_to(tmp_path / "out")) for i in items] == ["a_x2.mkv", "b_x2.mkv", "sub/c_x2.mkv"]
    assert output_name(Path("x y.mp4"), "{name}") == "x y.mp4"
    with pytest.raises(UsageError):
        output_name(Path("a.mp4"), "{nope}.mkv")


def test_json_early_failures_of_run_and_batch_are_events(tmp_path, capsys):
    """A render farm reading --json got an empty stdout when `vsr run` met a bad spec or `vsr batch`
    a missing folder: such failures are job_failed events too, with the exit code."""
    import json

    from vsr.cli import main
    from vsr.errors import InputError, UsageError

    spec = tmp_path / "bad.toml"
    spec.write_text("[job]\nnosuch = 1\n")
    cases = [(["run", str(spec), "--json"], UsageError.exit_code, "unknown key 'nosuch'"),
             (["run", str(spec), "--check", "--json"], UsageError.exit_code, "unknown key 'nosuch'"),
             (["batch", str(tmp_path / "missing"), str(tmp_path / "out"), "--json"], InputError.exit_code,
              "not a folder")]
    for argv, code, words in cases:
        assert main(argv) == code
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1, lines
        event = json.loads(lines[0])
        assert event["event"] == "job_failed" and event["exit_code"] == code and words in event["error"]


def test_argument_mistakes_are_one_line(capsys):
    """argparse printed its ~19-line usage block before the error; vsr's rule is one line."""
    import pytest

    from vsr.cli import main

    for argv, words in ((["upscale", "a.mp4", "b.mp4", "--crf", "abc"], "upscale: argument --crf: invalid int"),
                        (["nosuch"], "invalid choice: 'nosuch'")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vsr: error: ") and words in err[0], err


def test_check_finds_bad_encoder_values_and_a_file_two_patterns_match_is_one_input(spec_dir):
    spec = load_jobspec(_write(spec_dir, GOOD.replace("crf = 18", "crf = -5")))
    with pytest.raises(UsageError, match=r"job.toml: \[encode\] codec: encoder libx264 refuses its options \(crf=-5"):
        resolve_codecs(spec)
    spec = load_jobspec(_write(spec_dir, GOOD.replace('inputs = ["in/*.mp4"]', 'inputs = ["in/*.mp4", "in/a.*"]')))
    assert [i.input.name for i in spec.items] == ["a.mp4"]


def test_check_marks_a_damaged_input_as_the_run_would(tmp_path):
    """`vsr run --check` called a spec valid whose input the run then refused (a damaged cluster)."""
    data = bytearray((ROOT / "tests" / "data" / "media" / "bbb_320x180_vp9_opus.webm").read_bytes())
    clusters = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x1f\x43\xb6\x75"]
    data[clusters[len(clusters) // 2]:clusters[len(clusters) // 2] + 40] = bytes(40)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "hole.webm").write_bytes(bytes(data))
    text = GOOD.replace('"in/*.mp4"', '"in/*.webm"')
    spec = load_jobspec(_write(tmp_path, text))
    resolve_codecs(spec)
    assert "container damaged" in str(spec.items[0].failure)
    spec = load_jobspec(_write(tmp_path, text.replace("[job]", '[job]\non_corrupt = "repeat-previous"')))
    resolve_codecs(spec)
    assert spec.items[0].failure is None


def test_json_stdout_holds_only_events_while_a_job_runs(capsys):
    """Ray reports a dead worker with print() on stdout ('(raylet) A worker died ...'), which broke
    --json readers: during the job anything printed goes to stderr, the events stay on stdout."""
    import argparse
    import json

    from vsr.cli import _job_events, _run_job
    from vsr.job.events import SegmentRetry

    args = argparse.Namespace(json=True, quiet=False)
    events = _job_events(args)

    def work():
        print("(raylet) A worker died or was killed while executing a task")
        events.emit(SegmentRetry(index=1, worker="w0@host:1", reason="RayActorError: died", worker_died=True,
                                 attempt=1))
        return 7

    assert _run_job(args, events, work) == 7
    out, err = capsys.readouterr()
    assert [json.loads(x)["event"] for x in out.splitlines()] == ["segment_retry"]
    assert "(raylet) A worker died" in err
    print("after")  # stdout is back once the job is over
    assert capsys.readouterr().out == "after\n"
