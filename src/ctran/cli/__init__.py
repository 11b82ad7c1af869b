"""The ``ctran`` command line: a thin layer over the Python API.

Each command group lives in its own module with a ``register(commands)`` function; every command has
``--help``; user mistakes end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ctran.cli import (
    annotate,
    compare,
    convert,
    data,
    demo,
    evaluate,
    explain,
    export,
    predict,
    serve,
    tag,
    train,
)
from ctran.errors import CTranError

COMMAND_MODULES = (
    demo,
    train,
    evaluate,
    compare,
    predict,
    tag,
    explain,
    export,
    convert,
    serve,
    annotate,
    data,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per task."""
    parser = argparse.ArgumentParser(
        prog="ctran", description="C-Tran multi-label image classification, conditioned on known labels."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def _version() -> str:
    from ctran import __version__

    return __version__


def _is_override(token: str) -> bool:
    """``section.key=value``: a config override, not a stray option or file name."""
    return "=" in token and not token.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctran`` script and ``python -m ctran``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and all(_is_override(token) for token in rest):
        args.overrides += rest  # KEY=VALUE after an option: argparse takes one run of positionals only
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except CTranError as err:
        print(f"ctran {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctran {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
