"""The `dpt` command: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from .errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .commands import (evaluate, evaluate_disc, generate, interchange, prompts, referee,
                           report, serve, sweep_blocks, train, world)

    generate.register(sub)
    evaluate.register(sub)
    train.register(sub)
    evaluate_disc.register(sub)
    sweep_blocks.register(sub)
    prompts.register(sub)
    world.register(sub)
    interchange.register(sub)
    report.register(sub)
    referee.register(sub)
    serve.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as err:
        print(f"dpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
