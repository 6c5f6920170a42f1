"""A CLIP byte-pair tokenizer whose vocabulary is the Shapes world's words.

Each world word becomes one token, as CLIP's tokenizer makes common English words one
token. The merges are built so every word reduces to itself: after each pass the words
that still split get one merge of their first two pieces, appended at the lowest priority
(a new lowest-priority merge never changes how an already whole word reduces).
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer

from ..data.shapes.grammar import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # the longest world text has 11 words; CLIP pads every text to a fixed length


def build_tokenizer(words: tuple[str, ...] | None = None) -> CLIPTokenizer:
    """Build the tokenizer (letters stay tokens too, so no text maps to an unknown id)."""
    words = words or vocabulary()
    letters = list(string.ascii_lowercase)
    pieces = letters + [c + "</w>" for c in letters]
    merges: list[tuple[str, str]] = []
    while True:
        stuck = []
        for word in words:
            parts = _bpe([*word[:-1], word[-1] + "</w>"], merges)
            if len(parts) > 1:
                stuck.append(parts)
        if not stuck:
            break
        for parts in stuck:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                pieces.append(pair[0] + pair[1])
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges),
                        unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                        model_max_length=MAX_LENGTH)
    return tok


def _bpe(parts: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Reduce a word's pieces with `merges` by rank, as CLIP's BPE does."""
    ranks = {m: r for r, m in enumerate(merges)}
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        out, j = [], 0
        while j < len(parts):
            if j < len(parts) - 1 and parts[j] == a and parts[j + 1] == b:
                out.append(a + b)
                j += 2
            else:
                out.append(parts[j])
                j += 1
        parts = out
    return parts
