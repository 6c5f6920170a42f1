"""Prompts of the Shapes world: structure, text, parsing, sampling and truth in a scene.

A prompt is one noun phrase ("a red circle", "three small green triangles") or two joined
by "and" or a relation. Its family follows from its structure:

| structure                                   | family   |
|---------------------------------------------|----------|
| one phrase with "a"                         | object   |
| one phrase with a number word               | counting |
| two singular phrases joined by "and"        | pair     |
| two singular phrases joined by a relation   | spatial  |
| two phrases, any with a number word         | mixed    |

Truth (`satisfied`): for each phrase, the number of objects of its colour and shape (and
size, when named) equals its count; a counting prompt also forbids any other object; with a
relation, every object matching the first phrase stands in it to some object matching the
second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..prompt_text import quote
from .world import COLOURS, MAX_OBJECTS, RELATIONS, SHAPES, SIZES, ShapeObject, holds, place

FAMILIES = ("object", "pair", "spatial", "counting", "mixed")
NUMBERS = ("one", "two", "three", "four")
REFEXP_WORDS = ("the", "shape", "on", "at", "left", "right", "top", "bottom", "larger",
                "smaller", "second", "from")


def vocabulary() -> tuple[str, ...]:
    """Every word a Shapes prompt or referring expression may use."""
    words = ["a", "an", "and", *NUMBERS, *SIZES, *COLOURS, *SHAPES, *(s + "s" for s in SHAPES)]
    for relation in RELATIONS:
        words += relation.split()
    words += REFEXP_WORDS
    return tuple(dict.fromkeys(words))


class PromptError(ValueError):
    """A prompt the Shapes grammar cannot read; the message says where and what was expected."""


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: `count` objects of one colour and shape, optionally of one size."""

    count: int
    colour: str
    shape: str
    size: str | None = None
    numeric: bool = False  # spelled with a number word rather than "a"

    @property
    def text(self) -> str:
        det = NUMBERS[self.count - 1] if self.numeric or self.count > 1 else "a"
        noun = self.shape + ("s" if self.count > 1 else "")
        return " ".join(w for w in (det, self.size, self.colour, noun) if w)

    def matches(self, obj: ShapeObject) -> bool:
        return (obj.colour == self.colour and obj.shape == self.shape
                and (self.size is None or obj.size == self.size))


@dataclass(frozen=True)
class Prompt:
    """One or two phrases; `link` is "and", a relation from RELATIONS, or None."""

    first: Phrase
    link: str | None = None
    second: Phrase | None = None

    @property
    def phrases(self) -> tuple[Phrase, ...]:
        return (self.first,) if self.second is None else (self.first, self.second)

    @property
    def family(self) -> str:
        if self.second is None:
            return "counting" if self.first.numeric or self.first.count > 1 else "object"
        if any(p.numeric or p.count > 1 for p in self.phrases):
            return "mixed"
        return "pair" if self.link == "and" else "spatial"

    @property
    def text(self) -> str:
        if self.second is None:
            return self.first.text
        return f"{self.first.text} {self.link} {self.second.text}"

    def __str__(self) -> str:
        return self.text


def satisfied(prompt: Prompt, objects: list[ShapeObject]) -> bool:
    """Whether a scene (as objects) makes the prompt true; see the module docstring."""
    groups = [[o for o in objects if p.matches(o)] for p in prompt.phrases]
    if any(len(g) != p.count for g, p in zip(groups, prompt.phrases)):
        return False
    if prompt.family == "counting" and len(objects) != prompt.first.count:
        return False
    if prompt.link not in (None, "and"):
        return all(any(holds(s, prompt.link, a) for a in groups[1]) for s in groups[0])
    return True


def scene_for(prompt: Prompt, rng: np.random.Generator) -> list[ShapeObject]:
    """A random scene holding exactly what the prompt names (subjects first)."""
    kinds = [(p.shape, p.colour, p.size) for p in prompt.phrases for _ in range(p.count)]
    relation = prompt.link if prompt.link not in (None, "and") else None
    return place(rng, kinds, relation=relation, n_subjects=prompt.first.count)


# ----------------------------------------------------------------------------- parsing

def parse_prompt(text: str) -> Prompt:
    """Read a prompt of the Shapes grammar; raises PromptError naming the offending word.

    Words are read in lower case, as the models' CLIP tokenizer reads them ("A red circle" is
    the prompt "a red circle").
    """
    words = text.lower().split()
    if not words:
        raise PromptError("empty prompt; expected e.g. 'a red circle to the left of a blue square'")
    vocab = set(vocabulary())
    for w in words:
        if w not in vocab:
            raise PromptError(f"word {quote(w)} is not in the Shapes vocabulary; known words: "
                              f"{' '.join(vocabulary())}")
    first, pos = _parse_phrase(words, 0)
    if pos == len(words):
        return Prompt(first)
    link, pos = _parse_link(words, pos)
    second, pos = _parse_phrase(words, pos)
    if pos != len(words):
        raise PromptError(f"unexpected {quote(' '.join(words[pos:]))} after the second object")
    prompt = Prompt(first, link, second)
    if sum(p.count for p in prompt.phrases) > MAX_OBJECTS:
        raise PromptError(f"{quote(prompt.text)} names more than {MAX_OBJECTS} objects")
    return prompt


def _parse_phrase(words: list[str], pos: int) -> tuple[Phrase, int]:
    def expect(what: str, options) -> str:
        if pos + 0 >= len(words) or words[pos] not in options:
            got = quote(words[pos]) if pos < len(words) else "the end of the prompt"
            raise PromptError(f"expected {what} at word {pos + 1}, got {got}")
        return words[pos]

    det = expect("'a' or a number word", ("a", "an", *NUMBERS))
    count, numeric = (1, False) if det in ("a", "an") else (NUMBERS.index(det) + 1, True)
    pos += 1
    size = None
    if pos < len(words) and words[pos] in SIZES:
        size, pos = words[pos], pos + 1
    colour = expect("a colour", COLOURS)
    pos += 1
    nouns = SHAPES if count == 1 else tuple(s + "s" for s in SHAPES)
    noun = expect("a singular shape" if count == 1 else "a plural shape", nouns)
    return Phrase(count, colour, noun.rstrip("s") if count > 1 else noun, size, numeric), pos + 1


def _parse_link(words: list[str], pos: int) -> tuple[str, int]:
    for link in ("and", *RELATIONS):
        n = len(link.split())
        if " ".join(words[pos:pos + n]) == link:
            return link, pos + n
    raise PromptError(f"expected 'and' or a relation ({', '.join(RELATIONS)}) at word {pos + 1}, "
                      f"got {quote(words[pos])}")


# ---------------------------------------------------------------------------- sampling

def random_phrase(rng: np.random.Generator, count: int = 1, numeric: bool = False,
                  sized: bool = False) -> Phrase:
    size = SIZES[rng.integers(len(SIZES))] if sized else None
    return Phrase(count, COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                  size, numeric)


def random_prompt(rng: np.random.Generator, family: str) -> Prompt:
    """A uniformly drawn prompt of one family, with distinct kinds in two-phrase prompts."""
    if family == "object":
        return Prompt(random_phrase(rng, sized=bool(rng.random() < 0.5)))
    if family == "counting":
        return Prompt(random_phrase(rng, count=int(rng.integers(2, MAX_OBJECTS + 1)), numeric=True))
    if family in ("pair", "spatial"):
        link = "and" if family == "pair" else RELATIONS[rng.integers(len(RELATIONS))]
        while True:
            a, b = random_phrase(rng), random_phrase(rng)
            if (a.colour, a.shape) != (b.colour, b.shape):
                return Prompt(a, link, b)
    if family == "mixed":
        while True:
            n1 = int(rng.integers(1, MAX_OBJECTS))
            n2 = int(rng.integers(1, MAX_OBJECTS - n1 + 1))
            if n1 == n2 == 1:
                continue
            sized = bool(rng.random() < 0.3)
            a = random_phrase(rng, n1, numeric=n1 > 1, sized=sized)
            b = random_phrase(rng, n2, numeric=n2 > 1, sized=sized)
            link = "and" if rng.random() < 0.5 else RELATIONS[rng.integers(len(RELATIONS))]
            if link != "and" and (n1 > 2 or n2 > 1):
                continue  # three objects all beside one anchor rarely fit the canvas
            if (a.colour, a.shape) != (b.colour, b.shape):
                return Prompt(a, link, b)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
