"""The Shapes CLIP tokenizer: one token per world word, CLIP padding, and its saved forms."""

import itertools
import json

import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import CLIPTokenizer

from dpt_t2i.data.shapes.dataset import make_sample
from dpt_t2i.data.shapes.grammar import NUMBERS, vocabulary
from dpt_t2i.data.shapes.splits import benchmark_prompts
from dpt_t2i.data.shapes.world import COLOURS, SHAPES, SIZES
from dpt_t2i.shapes_model.assemble import _write_slow_tokenizer_files
from dpt_t2i.shapes_model.tokenizer import BOS, EOS, MAX_LENGTH, _bpe, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return build_tokenizer()


def _world_texts() -> list[str]:
    """Every word, every one-phrase prompt, both benchmark lists, training prompts and refexps."""
    texts = list(vocabulary())
    for det, size, colour, shape in itertools.product(("a", *NUMBERS), (None, *SIZES), COLOURS,
                                                      SHAPES):
        noun = shape if det in ("a", "one") else shape + "s"
        texts.append(" ".join(w for w in (det, size, colour, noun) if w))
    texts += [p.text for split in ("id", "ood") for p in benchmark_prompts(split, 10)]
    for i in range(150):
        sample = make_sample(0, i, with_refexp=True)
        texts.append(sample.prompt.text)
        if sample.refexp is not None:
            texts.append(sample.refexp.text)
    return texts


def test_every_world_word_is_exactly_one_token(tokenizer):
    vocab = tokenizer.get_vocab()
    for word in vocabulary():
        assert tokenizer.tokenize(word) == [word + "</w>"], word
        assert tokenizer(word).input_ids == [tokenizer.bos_token_id, vocab[word + "</w>"],
                                             tokenizer.eos_token_id]
    ids = {vocab[w + "</w>"] for w in vocabulary()}
    assert len(ids) == len(vocabulary())  # distinct words, distinct ids
    # letters stay tokens, so a word outside the world still has no unknown id
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]


def test_encoding_pads_to_sixteen_with_bos_and_eos(tokenizer):
    assert tokenizer.model_max_length == MAX_LENGTH == 16
    bos, eos = tokenizer.convert_tokens_to_ids([BOS, EOS])
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert special == (bos, eos, eos)
    assert (bos, eos) == (len(tokenizer) - 2, len(tokenizer) - 1)
    vocab = tokenizer.get_vocab()
    ids = tokenizer("a red circle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert ids == [bos, vocab["a</w>"], vocab["red</w>"], vocab["circle</w>"]] + [eos] * 12
    longest = "three large purple triangles to the right of a large yellow square"
    ids = tokenizer(longest, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    assert len(ids) == 16 and ids[:1] == [bos] and ids[13:] == [eos] * 3  # 12 words fit
    assert tokenizer.decode(ids, skip_special_tokens=True) == longest


def test_merges_reduce_every_word_to_itself_even_for_prefixes():
    words = ("a", "an", "and", "zeb", "zebra", "zebras")
    tok = build_tokenizer(words)
    for word in words:
        assert tok.tokenize(word) == [word + "</w>"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in
              json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    for word in words:  # the module's own BPE agrees with the tokenizers library
        assert _bpe([*word[:-1], word[-1] + "</w>"], merges) == [word + "</w>"]


def test_save_and_reload_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == MAX_LENGTH and len(loaded) == len(tokenizer)
    texts = _world_texts()
    kwargs = dict(padding="max_length", max_length=MAX_LENGTH, truncation=True)
    assert loaded(texts, **kwargs).input_ids == tokenizer(texts, **kwargs).input_ids


def test_slow_tokenizer_files_describe_the_same_tokenizer(tokenizer, tmp_path):
    _write_slow_tokenizer_files(tokenizer, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab == tokenizer.get_vocab()
    lines = (tmp_path / "merges.txt").read_text().splitlines()
    assert lines[0] == "#version: 0.2" and all(len(line.split(" ")) == 2 for line in lines[1:])

    model = BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                          unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix="")
    slow = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    slow.model = model  # same normalizer, pre-tokenizer and post-processor; model from the files
    slow.no_padding()
    texts = _world_texts()
    assert len(texts) > 400
    assert [e.ids for e in slow.encode_batch(texts)] == tokenizer(texts).input_ids
