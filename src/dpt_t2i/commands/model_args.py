"""Arguments and checks the model-reading commands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..io.bundle import check_model_folder, default_model_path


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="a Stable Diffusion diffusers folder (default: the shipped Shapes model)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice)")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def model_folder(path: Path | None) -> Path:
    """The checked model folder: `path`, or the shipped Shapes model when None."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise UsageError(f"the shipped Shapes model is not installed ({path} is missing); "
                             "pass --model PATH to a Stable Diffusion diffusers folder")
    return check_model_folder(path)


def quiet_loading() -> None:
    """No per-component loading bars from transformers: a command shows its own bar."""
    from transformers.utils import logging

    logging.disable_progress_bar()
