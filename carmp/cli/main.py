"""`carmp`: the command line. Each command family lives in its own module with a
`register(subcommands)` that adds its parsers; a parser's `run` default is the function
that carries the command out and returns the exit code.

Exit codes: 0 success, 1 the run failed, 2 bad usage (argparse's own, and UsageError).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from carmp.errors import CarmpError

# Command families, in the order `carmp --help` lists them.
FAMILIES: tuple[str, ...] = ("carmp.cli.demo", "carmp.cli.inspect", "carmp.cli.run",
                              "carmp.cli.top", "carmp.cli.report")

OK, FAILED, BAD_USAGE = 0, 1, 2


class UsageError(CarmpError):
    """The command line asks for something that cannot be done as asked (exit code 2)."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="carmp", description="A CAR-style multi-agent farm on local worker processes.")
    subcommands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for family in FAMILIES:
        importlib.import_module(family).register(subcommands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # inside the try: a reader that left early is not an error
    except UsageError as bad:
        print(f"carmp {args.command}: {bad}", file=sys.stderr)
        return BAD_USAGE
    except CarmpError as failed:
        print(f"carmp {args.command}: {failed}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`carmp log dump RUN | head`): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    return code


if __name__ == "__main__":
    sys.exit(main())
