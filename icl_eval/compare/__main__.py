"""`python -m icl_eval.compare RESULTS...`: the compare command on its own, before or without the main CLI."""

from __future__ import annotations

import argparse
import sys

from icl_eval.compare.cli import register, run_command
from icl_eval.errors import IclEvalError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="icl-eval")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_command(args)
    except IclEvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
