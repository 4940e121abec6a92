"""``lars-npu`` / ``python -m lars_npu``: info, check, bench and demo.

Each subcommand's module owns its options and its run: :mod:`lars_npu.info`,
:mod:`lars_npu._tools.check_cli`, :mod:`lars_npu.bench`, :mod:`lars_npu.demo` (``HELP``,
``DESCRIPTION``, ``add_arguments(parser)``, ``run_cli(args)``). ``--json`` prints JSON on
every subcommand; only ``--out`` writes files. With no subcommand: ``info``, then a quick
``check`` of every available backend. Options are spelled out in full (no prefixes); an
unknown one is reported by its subcommand's parser, with the closest option it has.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from . import __version__
from ._backends import available_backends
from ._usage import UsageError


def _modules() -> dict[str, ModuleType]:
    from . import bench, demo, info
    from ._tools import check_cli

    return {"info": info, "check": check_cli, "bench": bench, "demo": demo}


def cmd_default(args: argparse.Namespace) -> int:
    from ._tools.check_cli import print_rows
    from ._tools.check_cli import with_progress as check_with_progress
    from .info import info_dict, print_info

    print_info(info_dict())
    print()
    print(
        "quick check of every available backend against the NumPy reference "
        "(lars-npu check --verbose for every row):"
    )
    rows = check_with_progress(available_backends(), quick=True, dtypes=None)
    print_rows(rows, verbose=False)
    return 1 if any(not r.ok for r in rows) else 0


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(
        prog="lars-npu",
        description=(
            "LARS for PyTorch with MindSpore nn.LARS semantics: prove it is right on this "
            "machine (check), measure it (bench), see what it is for (demo). "
            "With no command: info, then a quick check."
        ),
        epilog="Run 'lars-npu COMMAND --help' for a command's options.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"lars_npu {__version__}")
    sub = p.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    commands = {}
    for name, mod in _modules().items():
        sp = sub.add_parser(name, help=mod.HELP, description=mod.DESCRIPTION, allow_abbrev=False)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run_cli)
        commands[name] = sp
    return p, commands


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for arguments nobody took, with the closest option ``parser`` has."""
    options = [s for a in parser._actions for s in a.option_strings]
    msg = f"unrecognized arguments: {' '.join(extras)}"
    for arg in extras:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.partition("=")[0], options, n=1)
            if close:
                return f"{msg} (did you mean {close[0]}?)"
    return msg


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line. What a subcommand does not know is that subcommand's error (its
    usage, exit status 2), not the top-level parser's."""
    parser, commands = _build()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = getattr(args, "command", None)
        tokens = list(sys.argv[1:] if argv is None else argv)
        before = tokens[: tokens.index(command)] if command is not None else tokens
        owner = parser if command is None or extras[0] in before else commands[command]
        owner.error(_unrecognized(owner, extras))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if getattr(args, "func", None) is None:
            return cmd_default(args)
        return int(args.func(args))
    except UsageError as exc:
        print(f"lars-npu: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lars-npu check -v | head`: the reader left before the end
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush is quiet
        return 1  # the output was cut short: do not claim success


if __name__ == "__main__":
    raise SystemExit(main())
