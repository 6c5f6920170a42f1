"""Arguments and checks the model-reading commands share."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from ..io.bundle import check_model_folder, default_model_path


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="a Stable Diffusion diffusers folder (default: the shipped Shapes "
                             "model)")


# torch takes any count below 2**31 and starts that many threads at its first parallel op;
# 2**31 and above overflow inside torch with a message that names no flag
MAX_THREADS = 1024


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice; two jobs sharing "
                             "the cores run much faster with fewer each)")


def add_device_argument(parser, runs: str = "the model runs", noise: str = "the noise") -> None:
    """--device (default cpu) on a parser or argument group; `runs` and `noise` say what moves
    there and what is still drawn on the CPU."""
    parser.add_argument("--device", default="cpu",
                        help=f"where {runs}: cpu (default), cuda, cuda:N or mps; {noise} is "
                             "drawn on the CPU, so a seed gives the same noise on every device")


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this process; None leaves torch's choice."""
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
        import torch

        torch.set_num_threads(threads)


def model_folder(path: Path | None) -> Path:
    """The checked model folder: `path`, or the shipped Shapes model when None."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise ValueError(f"the shipped Shapes model is not installed ({path} is missing); "
                             "pass --model PATH to a Stable Diffusion diffusers folder")
    return check_model_folder(path)


def quiet_loading() -> None:
    """No per-component loading bars from transformers: a command shows its own bar."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def settings_from_args(cls: type, args: argparse.Namespace, **given):
    """The dataclass `cls` of `given` and the same-named attributes of `args`.

    The dataclass checks its fields and names them (`t_min`); a message about one that came
    from the command line names its flag instead (`--t-min`).

    Args:
        cls: a dataclass whose fields with a flag are named as the flag's dest.
        args: the parsed command line.
        given: fields that do not come from a same-named flag.
    """
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if f.name not in given and hasattr(args, f.name)}
    try:
        return cls(**flags, **given)
    except ValueError as err:
        if not flags:
            raise
        names = "|".join(flags)
        message = re.sub(rf"\b({names})\b", lambda m: "--" + m[1].replace("_", "-"), str(err))
        raise ValueError(message) from None
