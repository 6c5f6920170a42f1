"""`dpt generate`: sample images from a text-to-image model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images from prompts")
    gen.set_defaults(run=lambda args: 0)
