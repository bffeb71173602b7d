"""The ``mini-ipam`` command: parse the flags (``flags``), run a command, turn every failure into one sentence.

The commands are ``serve`` (the driver), ``ls`` and ``plan`` (``inspect``) and
``reconcile``; what they share is in ``common``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mini_ipam.commands.common import CommandError
from mini_ipam.commands.flags import SettingError, build_parser, resolve
from mini_ipam.commands.inspect import ls, plan
from mini_ipam.commands.reconcile import reconcile
from mini_ipam.commands.serve import serve
from mini_ipam.logs import setup_logging

COMMANDS = {"serve": serve, "ls": ls, "plan": plan, "reconcile": reconcile}


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names."""
    return COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mini-ipam`` command."""
    args = build_parser().parse_args(argv)  # --help and --version end here, before any setting is read
    try:
        args.sources = resolve(args, os.environ)
    except SettingError as exc:
        print(f"mini-ipam {args.command}: {exc}", file=sys.stderr)
        return exc.code
    setup_logging(args.log_level, args.log_format, args.log_stream)
    try:
        return run(args)
    except CommandError as exc:
        if args.command == "serve":  # the driver's failures go to its log, at error, like everything it says
            logging.getLogger("mini_ipam").error("mini-ipam serve: %s", exc)
        else:
            print(f"mini-ipam {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one sentence; the traceback goes to the debug log
        logging.getLogger("mini_ipam").debug("unexpected error", exc_info=True)
        print(f"mini-ipam {args.command}: unexpected error ({type(exc).__name__}: {exc}); "
              "run with --log-level debug for details", file=sys.stderr)  # fmt: skip
        return 1
