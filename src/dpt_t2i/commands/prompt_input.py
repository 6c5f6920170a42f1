"""Prompts from the command line: `--prompt TEXT` (repeatable), `--prompts-file FILE`, or a
benchmark set in its published format (`--benchmark NAME --benchmark-file PATH`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.benchmarks import BENCHMARKS, read_benchmark
from ..data.prompt_text import normalise_prompt


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", metavar="TEXT",
                        help="a prompt (repeat for several; one line; a trailing period is "
                             "dropped)")
    parser.add_argument("--prompts-file", type=Path, metavar="FILE",
                        help="a UTF-8 text file with one prompt a line (blank lines skipped, "
                             "trailing periods dropped)")


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", metavar="NAME",
                        help=f"take the prompts of a benchmark set, one of "
                             f"{', '.join(BENCHMARKS)}, from --benchmark-file; each image's "
                             "index record then carries the prompt's metadata under "
                             "\"benchmark\"")
    parser.add_argument("--benchmark-file", type=Path, metavar="PATH",
                        help="the set's file in its published format (CC-500.txt, ABC-6K.txt, a "
                             "COCO-NSS1K .json, a T2I-CompBench <category>_val.txt, GenEval's "
                             "evaluation_metadata.jsonl), or the folder of COCO-NSS1K or "
                             "T2I-CompBench files")


def read_prompt_set(args: argparse.Namespace) -> tuple[list[str], list[dict] | None]:
    """The run's prompts and, from `--benchmark`, each prompt's metadata (else None).

    Raises ValueError if the prompts are given more than one way or a set's file is bad.
    """
    if args.benchmark is None and args.benchmark_file is None:
        return read_prompts(args), None
    if args.prompt or args.prompts_file:
        raise ValueError("give prompts with --prompt, --prompts-file or --benchmark, not several")
    if args.benchmark is None:
        raise ValueError(f"--benchmark-file needs --benchmark NAME, one of "
                         f"{', '.join(BENCHMARKS)}")
    if args.benchmark_file is None:
        raise ValueError(f"--benchmark {args.benchmark} needs --benchmark-file PATH, the "
                         "set's file")
    prompts = read_benchmark(args.benchmark, args.benchmark_file)
    return [p.text for p in prompts], [p.metadata for p in prompts]


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts given by `--prompt` or `--prompts-file`, as `normalise_prompt` leaves them;
    raises ValueError if none, or naming one that is empty or holds a line break."""
    if args.prompt and args.prompts_file:
        raise ValueError("give prompts with --prompt or with --prompts-file, not both")
    if args.prompts_file is not None:
        return _read_file(args.prompts_file)
    if not args.prompt:
        raise ValueError("no prompt; expected --prompt TEXT (repeatable) or --prompts-file FILE")
    return [normalise_prompt(p, f"--prompt number {i + 1}") for i, p in enumerate(args.prompt)]


def _read_file(path: Path) -> list[str]:
    expected = "expected a UTF-8 text file with one prompt a line"
    if not path.exists():
        raise ValueError(f"prompts file {path} does not exist; {expected}")
    if not path.is_file():
        raise ValueError(f"prompts file {path} is not a file; {expected}")
    try:  # utf-8-sig: a byte-order mark, which some editors write first, is no prompt text
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read prompts file {path} ({err}); {expected}") from None
    prompts = [normalise_prompt(line, f"line {i + 1} of prompts file {path}")
               for i, line in enumerate(lines) if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts; {expected}")
    return prompts
