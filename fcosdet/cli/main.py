"""fcosdet command line: train | eval | predict | export | demo | check-data | show-targets |
import-weights. Each sub-command's module adds its parser and sets `func`, its handler.

User errors (bad paths, corrupt data, wrong flags) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from fcosdet import __version__, distributed
from fcosdet.cli import data, demo, evaluate, export, import_weights, predict, train
from fcosdet.cli import serve as serve_cli
from fcosdet.errors import Interrupted, UserError


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, where it has one worth saying (not None / off / [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _SubcommandParser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_DefaultsFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcosdet", description="FCOS object detection: train, evaluate, predict.")
    p.add_argument("--version", action="version", version=f"fcosdet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    for module in (train, evaluate, predict, export, demo):
        module.add_parser(sub)
    data.add_parsers(sub)
    import_weights.add_parser(sub)
    serve_cli.add_parser(sub)
    p.set_defaults(subcommands=sub.choices)  # name -> parser, for errors in the sub-command's usage
    return p


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the sub-command's usage, not the top-level one
        args.subcommands[args.command].error(
            f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv  # what was typed (an interrupted run prints the command that continues it)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as exc:
        print(f"fcosdet: error: {exc}", file=sys.stderr)
        code = 2
    except Interrupted as exc:
        print(f"fcosdet: {exc}", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("fcosdet: interrupted", file=sys.stderr)
        code = 130
    finally:
        distributed.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
