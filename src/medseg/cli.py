"""The `medseg` command: parses arguments, calls the library, turns MedsegError into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from medseg.errors import MedsegError

Handler = Callable[[argparse.Namespace], int]


def _cmd_models(args: argparse.Namespace) -> int:
    from medseg.models import count_gflops, count_parameters, create_model, get_entry, list_models

    rows = []
    for name in list_models():
        model = create_model(name, in_channels=3, out_channels=1)
        entry = get_entry(name)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "gflops_256": round(count_gflops(model, 3, (256, 256)), 2),
                "summary": entry.summary,
                "source": entry.source,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<24}{'params':>13}{'GFLOPs@256':>12}  description")
    for row in rows:
        print(f"{row['name']:<24}{row['params']:>13,}{row['gflops_256']:>12.2f}  {row['summary']}")
    print("(in_channels=3, out_channels=1, default options; 1 multiply-add = 2 FLOPs)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="2D medical image segmentation with the U-Net family")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the model zoo with parameters and GFLOPs")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
