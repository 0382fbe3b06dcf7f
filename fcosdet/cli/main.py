"""fcosdet command line: train | eval | predict | export | demo | check-data | show-targets |
import-weights. Each sub-command's module adds its parser and sets `func`, its handler.

User errors (bad paths, corrupt data, wrong flags) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

from fcosdet import __version__, distributed
from fcosdet.cli import data, demo, evaluate, export, import_weights, predict, train
from fcosdet.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcosdet", description="FCOS object detection: train, evaluate, predict.")
    p.add_argument("--version", action="version", version=f"fcosdet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, predict, export, demo):
        module.add_parser(sub)
    data.add_parsers(sub)
    import_weights.add_parser(sub)
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as exc:
        print(f"fcosdet: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("fcosdet: interrupted; checkpoints written so far are intact", file=sys.stderr)
        code = 130
    finally:
        distributed.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
