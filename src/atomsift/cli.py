"""The ``atomsift`` command line.

Each concept package contributes its verbs through a ``register(subparsers)`` function in its
``cli`` module; handlers import heavy dependencies (torch, h5py, ...) lazily so that ``atomsift
--help`` and light verbs start fast. Any :class:`~atomsift.errors.InputError` (and a missing file)
becomes one line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from atomsift import __version__
from atomsift.errors import InputError

# Modules that add verbs, in the order their verbs appear in --help.
VERB_MODULES = (
    "atomsift.data.cli",
    "atomsift.models.cli",
    "atomsift.csi.cli",
    "atomsift.train.cli",
    "atomsift.report.cli",
    "atomsift.workflow.cli",
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), as every other error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="atomsift",
        description="CSI dataset selection, budgeted pretraining and finetuning for atomistic models.",
    )
    parser.add_argument("--version", action="version", version=f"atomsift {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_OneLineParser)
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except InputError as exc:
        if debug:
            raise
        print(f"atomsift {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        if debug:
            raise
        name = exc.filename or str(exc)
        print(f"atomsift {args.verb}: error: {name}: no such file or directory", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # output piped into e.g. `head`: not an error of ours; silence the flush at exit
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:
        if debug:
            raise
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"atomsift {args.verb}: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atomsift {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
