"""Prompt text as every command takes it: one rule for `dpt generate`, `dpt referee` and the
`dpt serve` page, and one way to quote a prompt in a message.

A prompt is one line of text. Surrounding spaces and one trailing period are dropped
(`a red circle.` reads as `a red circle`): the Shapes grammar has no punctuation, and a
sentence's closing period is what people type. A prompt that holds a line break is refused:
a prompts file could not hold it, so the run could not be given again from one. What a
model can read (its vocabulary, the Shapes grammar, the text encoder's length) is checked
where the model is known (`generation.methods.check_vocabulary`, `check_lengths`).
"""

from __future__ import annotations

QUOTE_CHARS = 80  # how much of a prompt a message shows: a 10 kB prompt must not flood it


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` quoted for a message (as repr), clipped to `limit` characters with an ellipsis
    and its full length after it when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def normalise_prompt(text: str, where: str) -> str:
    """The prompt as the models read it: stripped, one trailing period dropped.

    Args:
        text: the prompt as given.
        where: how a message names it ("--prompt number 2", "line 3 of prompts file F").

    Raises:
        ValueError: naming `where` for a prompt that is empty or holds a line break.
    """
    prompt = text.strip()
    if prompt.endswith("."):
        prompt = prompt[:-1].rstrip()
    if not prompt:
        raise ValueError(f"{where} is empty; expected a text such as 'a red circle'")
    if len(prompt.splitlines()) > 1:  # \n, \r and the other breaks str.splitlines knows
        raise ValueError(f"{where} {quote(prompt)} holds a line break; a prompt is one line "
                         "of text")
    return prompt
