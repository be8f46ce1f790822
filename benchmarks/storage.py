"""Local disk against an S3 store (moto's server on loopback) for the same job, and the bytes
each node reads of the input object.

A Ray cluster of a head (no worker CPUs) and --nodes 1-CPU nodes (ray.cluster_utils.Cluster,
each node with its own TMPDIR) runs the same `vsr upscale -m lanczos --outscale 2` twice, in
alternating order over --rounds rounds:

  local   input, output and work directory on this machine's disk
  s3      input, output and work directory under s3://bench/ (moto's standalone server, started
          here on 127.0.0.1; AWS_ENDPOINT_URL and test keys set for the vsr process)

For the S3 run the manifest (kept with --keep-workdir) gives each segment's node and
source_bytes, the bytes its worker fetched from the input object; their sum per node is set
against the object's size (one node reading the whole file would show 100 %).

The default input is the bundled bikes clip re-encoded nearly losslessly (CRF 8, a keyframe
every second, 2.5 MB), so that a segment's bytes are a realistic share of the file; the
bundled 0.5 MB clip is smaller than a few of vsr's 1 MiB read blocks. Set VSR_S3_BLOCK (bytes)
to try other block sizes.

    VSR_S3_BLOCK=16384 python benchmarks/storage.py            # 2 nodes, one round
    python benchmarks/storage.py --input clip.mp4 --nodes 3 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIKES = ROOT / "tests" / "data" / "media" / "bikes_640x272_noaudio.mp4"


def _make_input(folder: Path) -> Path:
    """The bikes clip at CRF 8 with a keyframe every second (1 s segments possible)."""
    import av

    path = folder / "bikes_crf8.mp4"
    with av.open(str(BIKES)) as src, av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25, options={"crf": "8", "g": "25", "keyint_min": "25",
                                                         "sc_threshold": "0", "preset": "veryfast"})
        v.width, v.height, v.pix_fmt = 640, 272, "yuv420p"
        for frame in src.decode(video=0):
            for p in v.encode(frame.reformat(format="yuv420p")):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return path


def _moto() -> tuple[object, dict[str, str]]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    return server, env


def _job(args: argparse.Namespace, address: str, src: str, dst: str, work: str, env: dict) -> float:
    cmd = [sys.executable, "-m", "vsr.cli", "-q", "upscale", src, dst, "-m", "lanczos", "--outscale", "2",
           "--address", address, "--workers", str(args.nodes), "--segment-seconds", str(args.segment_seconds),
           "--workdir", work, "--keep-workdir", "--no-resume"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return seconds


def _per_node(fs, work: str) -> tuple[dict[str, int], int]:
    """Bytes of the input each node fetched (from the kept manifest), and the segment count."""
    (key,) = [k for k in fs.find(work.removeprefix("s3://")) if k.endswith("/manifest.json")]
    manifest = json.loads(fs.cat_file(key))
    per_node: dict[str, int] = defaultdict(int)
    for rec in manifest["segments"].values():
        per_node[rec["node_id"][:8]] += int(rec["source_bytes"])
    return dict(per_node), len(manifest["segments"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=None, help="default: the bikes clip at CRF 8")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--segment-seconds", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    server, aws = _moto()
    import fsspec
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="vsr-bench-storage-"))
    args.input = args.input or _make_input(tmp)
    fs = fsspec.filesystem("s3", use_listings_cache=False)
    fs.mkdir("bench")
    fs.put_file(str(args.input), f"bench/in/{args.input.name}")
    size = fs.info(f"bench/in/{args.input.name}")["size"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    times: dict[str, list[float]] = {"local": [], "s3": []}
    per_node: dict[str, int] = {}
    segments = 0
    try:
        for n in range(args.nodes):
            (tmp / f"node{n}").mkdir()
            cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(tmp / f"node{n}")})
        cluster.wait_for_nodes()
        env = dict(os.environ, **aws)
        for r in range(args.rounds):
            order = ["local", "s3"] if r % 2 == 0 else ["s3", "local"]
            for kind in order:
                if kind == "local":
                    out = tmp / f"out{r}"
                    times["local"].append(_job(args, cluster.address, str(args.input), str(out / args.input.name),
                                               str(tmp / f"work{r}"), env))
                else:
                    work = f"s3://bench/work{r}"
                    times["s3"].append(_job(args, cluster.address, f"s3://bench/in/{args.input.name}",
                                            f"s3://bench/out{r}/{args.input.name}", work, env))
                    per_node, segments = _per_node(fs, work)
    finally:
        cluster.shutdown()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"input": args.input.name, "input_bytes": size, "nodes": args.nodes,
              "block": int(os.environ.get("VSR_S3_BLOCK") or 1 << 20), "segments": segments,
              "local_s": [round(t, 2) for t in times["local"]], "s3_s": [round(t, 2) for t in times["s3"]],
              "bytes_read_per_node": per_node}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.input.name}: {size} bytes, {args.nodes} nodes, {segments} segments, lanczos x2, "
          f"read blocks of {result['block']} bytes")
    print(f"local disk  {min(times['local']):.1f} s (best of {len(times['local'])})")
    print(f"S3 (moto)   {min(times['s3']):.1f} s (best of {len(times['s3'])})")
    for node, n in sorted(per_node.items()):
        print(f"node {node}  read {n} bytes of the input ({100 * n / size:.0f} %)")


if __name__ == "__main__":
    main()
