"""The `vsr` command.

Each sub-command has an `_add_<name>` function that declares its arguments and a
`_cmd_<name>` handler that calls into the library. Handlers import lazily so that
`vsr --help` and `vsr probe` stay fast (no torch, no Ray). Every VsrError becomes
one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

from vsr import __version__
from vsr.errors import EXIT_INTERRUPTED, VsrError

log = logging.getLogger("vsr")


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (machine-readable output for --json)."""
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


# ---------------------------------------------------------------- models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from vsr.weights.zoo import list_models

    entries = list_models()
    if args.json:
        print_json(entries)
        return 0
    header = f"{'name':<28} {'arch':<16} {'scale':>5} {'params':>10}  weights"
    print(header)
    for e in entries:
        params = f"{e['params']:,}" if e.get("params") else "-"
        print(f"{e['name']:<28} {e['arch']:<16} {e['scale']:>5} {params:>10}  {e['source']}")
    return 0


# ---------------------------------------------------------------- image
def _add_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image", help="upscale one image (PNG/JPEG/WebP)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-m", "--model", default="realesrgan-x4plus", help="zoo name or weight file")
    p.add_argument("--outscale", type=float, default=None, help="output scale (default: the model's)")
    p.add_argument("--tile", type=int, default=0, help="tile size in input pixels (0 = no tiling)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_cmd_image)


def _cmd_image(args: argparse.Namespace) -> int:
    from vsr.engine.image import upscale_image_file

    summary = upscale_image_file(
        args.input, args.output, model=args.model, outscale=args.outscale, tile=args.tile,
        device=args.device, precision=args.precision,
    )
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {summary['output']} ({summary['width']}x{summary['height']}, "
              f"model {summary['model']}, {summary['seconds']:.2f} s)")
    return 0


# ---------------------------------------------------------------- probe
def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="describe a media file's streams, timing and colour")
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from vsr.media.probe import probe

    info = probe(args.input)
    if args.json:
        print_json(info.to_dict())
    else:
        print(info.describe())
    return 0


# ---------------------------------------------------------------- registry
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_image,
    _add_probe,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="vsr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vsr {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vsr` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    if getattr(args, "json", False) and not args.verbose:
        level = max(level, logging.WARNING)  # stdout is for the JSON; keep stderr quiet too
    logging.basicConfig(level=level, format="vsr: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except VsrError as err:
        print(f"vsr: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("vsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
