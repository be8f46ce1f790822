"""Start-up and shutdown of vsr's embedded Ray instance (vsr.cluster.runtime.RaySession).

Each run is a fresh Python process (so every run pays the same imports) that measures:

  import      `import vsr.cluster.runtime, ray` (with the environment that RaySession sets
              before it imports ray in the vsr command: loopback only, token authentication)
  enter       RaySession() __enter__: the private loopback-only instance started and this
              driver connected to it
  first task  one trivial remote task (a Ray worker process started and answering)
  exit        RaySession __exit__: the instance stopped
  process     the whole child process, interpreter start and exit included

and prints the median (with min-max) of --runs runs per tree. Several --tree arguments (other
checkouts of vsr, e.g. an older commit in a `git worktree`) are run alternately, run 1 of each
tree, then run 2 of each, ..., so that a busy shared machine affects them alike.

    python benchmarks/ray_start.py                           # this checkout, 5 runs
    python benchmarks/ray_start.py --tree /tmp/old --tree .  # before/after, alternating
    python benchmarks/ray_start.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import vsr.cluster.runtime as runtime
import ray
t1 = time.perf_counter()
session = runtime.RaySession(None)
session.__enter__()
t2 = time.perf_counter()
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
t3 = time.perf_counter()
session.__exit__(None, None, None)
t4 = time.perf_counter()
assert not ray.is_initialized()
print(json.dumps({"vsr": os.path.dirname(os.path.dirname(os.path.dirname(runtime.__file__))), "import": t1 - t0,
                  "enter": t2 - t1, "first task": t3 - t2, "exit": t4 - t3}))
"""

COLUMNS = ("import", "enter", "first task", "exit", "process")


def run_once(tree: Path) -> dict[str, float]:
    """One measurement in a fresh process that imports vsr from `tree`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # what RaySession sets before ray is imported in the vsr command (loopback, no usage report,
    # token authentication): set here because `import ray` is timed before RaySession runs
    env.update(PYTHONPATH=str(tree), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result.pop("vsr")).resolve() != tree.resolve():
        raise SystemExit(f"the run imported vsr from elsewhere than {tree}")
    result["process"] = elapsed
    return result


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """column -> median, min, max over the runs."""
    return {c: {"median": statistics.median(r[c] for r in runs), "min": min(r[c] for r in runs),
                "max": max(r[c] for r in runs)} for c in COLUMNS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path,
                        help="a vsr checkout to measure (repeatable; default: this one)")
    parser.add_argument("--runs", type=int, default=5, help="runs per tree (default 5)")
    parser.add_argument("--json", action="store_true", help="print the runs and medians as JSON")
    args = parser.parse_args()
    trees = args.tree or [ROOT]
    runs: dict[str, list[dict[str, float]]] = {str(t): [] for t in trees}
    for i in range(args.runs):
        for tree in trees:
            runs[str(tree)].append(run_once(tree))
            print(f"run {i + 1}/{args.runs} {tree}: "
                  + ", ".join(f"{c} {v:.2f}" for c, v in runs[str(tree)][-1].items()), file=sys.stderr)
    table = {t: summary(r) for t, r in runs.items()}
    if args.json:
        print(json.dumps({"runs": runs, "median": table}, indent=1))
        return 0
    print(f"median (min-max) of {args.runs} runs, seconds")
    print(f"{'tree':<28}" + "".join(f"{c:>18}" for c in COLUMNS))
    for tree, cols in table.items():
        cells = "".join(f"{c['median']:>7.2f} ({c['min']:.2f}-{c['max']:.2f})" for c in cols.values())
        print(f"{tree[-28:]:<28}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
