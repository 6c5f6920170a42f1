"""The `dpt` command: one entry point, one sub-command per job.

The library raises ValueError, with a message naming the file, key or value and what is
expected, for input it cannot use; here, and only here, that becomes one line on stderr and
exit status 2. So does an OSError (a path the user gave that the file system refuses: a file
where a folder must go, no permission, a full disk): no traceback for either.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from .commands import (cache, compbench_table, evaluate, evaluate_disc, export_lora, generate,
                       import_official, prompts, referee, report, score, serve, sweep_blocks,
                       train, world)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dpt {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.register(sub)
    evaluate.register(sub)
    train.register(sub)
    cache.register(sub)
    evaluate_disc.register(sub)
    score.register(sub)
    sweep_blocks.register(sub)
    prompts.register(sub)
    world.register(sub)
    export_lora.register(sub)
    import_official.register(sub)
    report.register(sub)
    referee.register(sub)
    serve.register(sub)
    compbench_table.register(sub)
    return parser


def _version() -> str:
    """The installed package's version (a source tree that is not installed has none)."""
    try:
        return metadata.version("dpt-t2i")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command they were given to, as its other errors are
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as err:
        print(f"dpt {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpt {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(err: BaseException) -> str:
    """The message with line breaks written as escapes, so a value that holds one (a prompt,
    a path) cannot spread the error over several lines."""
    return str(err).replace("\r", "\\r").replace("\n", "\\n")


if __name__ == "__main__":
    sys.exit(main())
