"""Rule-based hard negatives for free-form English captions, after NegCLIP (Yuksekgonul et
al., ICLR 2023): each negative changes one thing of the caption.

Kinds of change (KINDS):
- "colour":   one colour word becomes another colour ("a red bus" -> "a blue bus")
- "number":   one number word or digit becomes another ("two dogs" -> "five dogs"); only
              two..ten and 2..10, so the noun after it stays plural ("one"/"1" are left
              alone: "one dog" -> "three dog" would give itself away by its grammar)
- "relation": a relation or size word becomes its opposite (left <-> right, above <-> below,
              on top of <-> under, in front of <-> behind, inside <-> outside, big/large <->
              small, tall <-> short, before <-> after)
- "swap":     two known adjectives of one kind (two colours, or two sizes) exchange places
              ("a red car next to a white van" -> "a white car next to a red van"); not
              neighbours ("black and white", "red white"), whose swap means the same
When none applies, the caption's words are shuffled within one span of 2-3 words
(NegCLIP's "shuffle" perturbation).

These texts are plausible but NOT verified false: nothing here looks at the image, so "a
red bus" -> "a blue bus" can still describe a red-and-blue bus, and "left" may have been a
verb. The Shapes world's negatives (`data/shapes/negatives.py`) are checked against the
scene; these are not. A changed word keeps the case of its first letter, the text around it
(punctuation, spacing) is kept, and an "a"/"an" before it is fixed to fit the new word.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

KINDS = ("colour", "number", "relation", "swap")

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
           "white", "gray", "grey", "silver")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
DIGITS = tuple(str(n) for n in range(2, 11))
# phrase -> its opposites; a phrase is matched as whole words, longest first
RELATIONS = {"left": ("right",), "right": ("left",), "above": ("below",), "below": ("above",),
             "on top of": ("under",), "under": ("on top of",), "in front of": ("behind",),
             "behind": ("in front of",), "inside": ("outside",), "outside": ("inside",),
             "big": ("small",), "large": ("small",), "small": ("big", "large"),
             "tall": ("short",), "short": ("tall",), "before": ("after",), "after": ("before",)}
SIZES = ("big", "large", "small", "little", "tall", "short")
# words of one class mean the same: swapping or replacing one by another changes nothing
SAME = {"grey": "gray", "large": "big", "little": "small"}

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)*")


def _split(caption: str) -> tuple[list[str], list[str]]:
    """Words and the separators around them: caption == seps[0] + words[0] + seps[1] + ..."""
    words, seps, end = [], [], 0
    for match in _TOKEN.finditer(caption):
        seps.append(caption[end:match.start()])
        words.append(match.group())
        end = match.end()
    seps.append(caption[end:])
    return words, seps


def _join(words: list[str], seps: list[str]) -> str:
    return seps[0] + "".join(w + s for w, s in zip(words, seps[1:]))


def _cased(new: str, like: str) -> str:
    """`new` with the case of `like`: all capitals, a capital first letter, or as given."""
    if len(like) > 1 and like.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if like[:1].isupper() else new


def _replace(words: list[str], seps: list[str], changes: dict[tuple[int, int], str]) -> str:
    """Replace word spans [start, stop) by phrases, fixing an "a"/"an" just before each."""
    words, seps = list(words), list(seps)
    for (start, stop), phrase in sorted(changes.items(), reverse=True):
        new = _cased(phrase, words[start])
        if start > 0 and words[start - 1].lower() in ("a", "an") and seps[start].isspace():
            article = "an" if new[0].lower() in "aeiou" else "a"
            words[start - 1] = _cased(article, words[start - 1])
        words[start:stop] = [new]
        seps[start + 1:stop] = []
    return _join(words, seps)


def _same(a: str, b: str) -> bool:
    return SAME.get(a, a) == SAME.get(b, b)


def _relation_spans(lower: list[str]) -> list[tuple[int, int, str]]:
    """(start, stop, phrase) of every relation phrase, longest match first, not overlapping."""
    phrases = sorted(RELATIONS, key=lambda p: -len(p.split()))
    spans, i = [], 0
    while i < len(lower):
        for phrase in phrases:
            n = len(phrase.split())
            if " ".join(lower[i:i + n]) == phrase:
                spans.append((i, i + n, phrase))
                i += n
                break
        else:
            i += 1
    return spans


def _candidates(words: list[str], seps: list[str]) -> dict[str, list[str]]:
    """Every one-change negative of the caption, by kind."""
    lower = [w.lower() for w in words]
    out: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for i, word in enumerate(lower):
        if word in COLOURS:
            out["colour"] += [_replace(words, seps, {(i, i + 1): c}) for c in COLOURS
                              if not _same(c, word)]
        for group in (NUMBER_WORDS, DIGITS):
            if word in group:
                out["number"] += [_replace(words, seps, {(i, i + 1): n}) for n in group
                                  if n != word]
    for start, stop, phrase in _relation_spans(lower):
        out["relation"] += [_replace(words, seps, {(start, stop): p}) for p in RELATIONS[phrase]]
    for group in (COLOURS, SIZES):
        places = [i for i, w in enumerate(lower) if w in group]
        for i, j in itertools.combinations(places, 2):
            # "black and white" and "white and black" say the same: no swap of neighbours
            coordinated = j == i + 1 or (j == i + 2 and lower[i + 1] in ("and", "or"))
            if not _same(lower[i], lower[j]) and not coordinated:
                out["swap"].append(_replace(words, seps, {(i, i + 1): lower[j],
                                                          (j, j + 1): lower[i]}))
    return out


def _shuffles(words: list[str], seps: list[str]) -> list[str]:
    """Every text made by reordering the words of one span of 2 or 3 consecutive words."""
    out = []
    capital = words[0][:1].isupper() and not (len(words[0]) > 1 and words[0].isupper())
    for n in (2, 3):
        for start in range(len(words) - n + 1):
            for order in itertools.permutations(range(n)):
                if order == tuple(range(n)):
                    continue
                places = list(range(len(words)))
                places[start:start + n] = [start + k for k in order]
                new = [words[p] for p in places]
                if capital and places[0] != 0:  # the first word moved: its capital moves too
                    moved = places.index(0)
                    new[moved] = words[0][:1].lower() + words[0][1:]
                    new[0] = new[0][:1].upper() + new[0][1:]
                out.append(_join(new, seps))
    return out


def _interleave(groups: list[list[str]], rng: np.random.Generator) -> list[str]:
    """Shuffle each group and the groups' order, then take one from each group in turn."""
    shuffled = [[g[i] for i in rng.permutation(len(g))] for g in groups if g]
    shuffled = [shuffled[i] for i in rng.permutation(len(shuffled))]
    return [text for round_ in itertools.zip_longest(*shuffled) for text in round_
            if text is not None]


def caption_negatives(caption: str, k: int, rng: np.random.Generator) -> list[str]:
    """Up to `k` distinct plausible-but-false texts for a caption, each changing one thing.

    Kinds are drawn in turn (a colour change, then a relation flip, then a number change,
    ...; the order drawn from `rng`) so that a few negatives cover different kinds. Only if
    no rule applies are 2-3 neighbouring words shuffled instead.

    Args:
        caption: a free-form English caption.
        k: the most negatives wanted (>= 0).
        rng: the only source of randomness; the same state gives the same negatives.

    Returns:
        At most `k` texts, all distinct and each different from `caption` ignoring case;
        [] when the caption has fewer than 2 words (or every shuffle leaves it unchanged).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    words, seps = _split(caption)
    if len(words) < 2 or k == 0:
        return []
    by_kind = _candidates(words, seps)
    groups = [by_kind[kind] for kind in KINDS]
    if not any(groups):
        groups = [_shuffles(words, seps)]
    seen, out = {caption.lower()}, []
    for text in _interleave(groups, rng):
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
            if len(out) == k:
                break
    return out
