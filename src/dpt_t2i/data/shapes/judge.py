"""The alignment judge: does an image of the Shapes world show what its prompt says?

The image is read back into objects by the scene parser and the prompt is checked against
them with the grammar's own truth rule, `grammar.satisfied`, so a clean render of
`scene_for(prompt)` is always judged aligned. Parsed objects take part in `satisfied` as they
are: they carry colour, shape, size and the centre of their real box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import Prompt, parse_prompt, satisfied
from .parse import ParsedObject, parse_image


@dataclass(frozen=True)
class Verdict:
    """The judge's answer: whether the prompt holds, what was seen and what was asked."""

    satisfied: bool
    objects: tuple[ParsedObject, ...]
    prompt: Prompt


def judge(prompt: str | Prompt, image: np.ndarray) -> Verdict:
    """Judge whether an image satisfies a prompt.

    Args:
        prompt: prompt text of the Shapes grammar (parsed with `parse_prompt`, which raises
            PromptError on text outside it) or a parsed Prompt.
        image: (64, 64, 3) uint8 RGB image, a render or a generated sample.

    Returns:
        The Verdict, with the parsed objects in the parser's order.
    """
    parsed = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if not isinstance(parsed, Prompt):
        raise TypeError(f"prompt must be a str or a Prompt, got {type(prompt).__name__}")
    objects = tuple(parse_image(image))
    return Verdict(satisfied(parsed, list(objects)), objects, parsed)
