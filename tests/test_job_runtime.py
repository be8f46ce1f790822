"""How vsr runs Ray: the embedded instance's token authentication (on, and quiet), and jobs sent
with `ray job submit` to an existing cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "data" / "media"
TINY = MEDIA / "bbb_176x144_mpeg4part2.mp4"  # 15 frames, no audio
LANCZOS = ["-m", "lanczos", "--outscale", "2", "--preset", "ultrafast"]


def test_embedded_run_has_no_token_notice_and_keeps_token_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    out = tmp_path / "tiny_x2.mp4"
    code = ("import sys\nfrom vsr.cli import main\nfrom ray._raylet import get_authentication_mode, AuthenticationMode\n"
            "import vsr.cluster.runtime as rt\nseen = []\norig = rt.RaySession.__enter__\n"
            "def enter(self):\n    r = orig(self)\n    seen.append(get_authentication_mode() == AuthenticationMode.TOKEN)\n"
            "    return r\nrt.RaySession.__enter__ = enter\n"
            "rc = main(sys.argv[1:])\nprint('token auth on:', seen)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, "upscale", str(TINY), str(out), *LANCZOS],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "token authentication" not in r.stderr.lower(), r.stderr
    assert "token auth on: [True]" in r.stdout  # quiet, not weaker: the embedded cluster still needs the token
