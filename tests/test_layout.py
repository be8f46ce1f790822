"""DESIGN.md's layout holds in the code: each folder imports only downward, and only public APIs.

cli -> cluster -> job -> engine and media -> models/weights, storage at the bottom; media/ knows
nothing of torch, engine/ nothing of codecs, job/ nothing of Ray, cluster/ neither codecs nor
tensors. Checked on the source text (ast), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VSR = Path(__file__).resolve().parents[1] / "vsr"

# what each folder may import of vsr (besides itself, vsr.errors, vsr.faults and the vsr package's version)
ALLOWED = {
    "storage": set(),
    "models": set(),
    "weights": {"models", "storage"},
    "media": {"storage"},
    "engine": {"models", "weights", "storage"},
    "train": {"models", "weights", "engine", "media", "storage"},
    "job": {"media", "engine", "models", "weights", "storage"},
    "cluster": {"job", "storage"},
    "quality": set(),
}
# third-party packages a folder must not import
FORBIDDEN = {
    "media": {"torch", "ray"},
    "engine": {"av", "ray"},
    "models": {"av", "ray"},
    "weights": {"av", "ray"},
    "storage": {"av", "ray", "torch"},
    "job": {"ray"},
    "cluster": {"av", "torch"},
    "quality": {"av", "torch", "ray"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((VSR / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_downward(folder):
    wrong = []
    for path in _modules(folder):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "vsr" and len(parts) > 1 and parts[1] not in ("errors", "faults", folder):
                if parts[1] not in ALLOWED[folder]:
                    wrong.append(f"{path.relative_to(VSR)} imports {name}")
            elif parts[0] in FORBIDDEN.get(folder, ()):
                wrong.append(f"{path.relative_to(VSR)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_private_modules_of_libraries():
    roots = [VSR, VSR.parent / "benchmarks", VSR.parent / "tests"]
    wrong = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for name in _imports(path):
                top, *rest = name.split(".")
                if top in ("ray", "torch", "av") and any(p.startswith("_") for p in rest):
                    wrong.append(f"{path.name} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_one_frame_path():
    """decode -> upscale -> encode lives in vsr/job/segment.py only: nothing else both decodes
    segments and writes them."""
    users = [p.relative_to(VSR) for p in VSR.rglob("*.py")
             if "decode_segment" in p.read_text(encoding="utf-8") and "SegmentWriter" in p.read_text(encoding="utf-8")
             and p.parent.name != "media"]
    assert [str(p) for p in users] == ["job/segment.py"]


def test_importing_the_cli_and_cluster_does_not_import_ray():
    """vsr sets Ray's environment (loopback only, token auth) before Ray is imported
    (vsr/cluster/runtime.py): no module may import ray when it is loaded."""
    import subprocess
    import sys

    code = ("import sys, vsr.cli, vsr.cluster, vsr.cluster.job, vsr.cluster.batch, vsr.cluster.pool, "
            "vsr.cluster.schedule, vsr.job, vsr.job.segment; print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
