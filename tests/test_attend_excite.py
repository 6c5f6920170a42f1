"""Attend-and-Excite as a `dpt generate` method: subject tokens, and the images it draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dpt_t2i.cli import main
from dpt_t2i.generation.attend_excite import subject_words, token_indices


def dpt(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tokenizer():
    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    return build_tokenizer()


def test_subject_words_from_nouns_or_phrases():
    nouns = ["circle", "square", "circles"]
    assert subject_words("two red circles left of a blue square", nouns) == ["circles", "square"]
    assert subject_words("a red circle above a red circle", nouns) == ["circle", "circle"]
    assert subject_words("a green bench and a red car") == ["bench", "car"]
    assert subject_words("a dog with a hat, a cat.") == ["dog", "hat", "cat"]


def test_token_indices_count_the_start_token_and_skip_used_positions(tokenizer):
    prompt = "a red circle to the left of a red circle"
    assert token_indices(tokenizer, prompt, ["circle", "circle"]) == [3, 10]
    ids = tokenizer(prompt).input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[3] == "circle</w>"
    with pytest.raises(ValueError, match="'square' is not a word of the prompt"):
        token_indices(tokenizer, prompt, ["square"])


def test_token_indices_take_a_long_words_last_piece():
    from transformers import CLIPTokenizer

    from dpt_t2i.io.bundle import default_model_path

    # the Shapes tokenizer splits words it does not know into pieces
    tok = CLIPTokenizer.from_pretrained(default_model_path() / "tokenizer")
    pieces = tok("circlesquare", add_special_tokens=False).input_ids
    assert len(pieces) >= 2
    assert token_indices(tok, "a circlesquare and a square", ["circlesquare", "square"]) == [
        1 + len(pieces), 1 + len(pieces) + 3]


def test_generate_with_attend_excite(tiny_model, tmp_path):
    common = ["--model", tiny_model, "--prompt", "a red circle to the left of a blue square",
              "--num-images", 2, "--steps", 4]
    assert dpt("generate", *common, "--attend-excite", "--out", tmp_path / "ae") == 0
    assert dpt("generate", *common, "--base", "--out", tmp_path / "base") == 0
    records = [json.loads(x) for x in (tmp_path / "ae" / "index.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["attend-excite"] * 2
    assert records[0]["subject_tokens"] == [3, 10]
    ae = [np.asarray(Image.open(tmp_path / "ae" / r["file"])) for r in records]
    base = [np.asarray(Image.open(tmp_path / "base" / r["file"])) for r in records]
    assert ae[0].shape == base[0].shape
    assert not np.array_equal(ae[0], ae[1])  # seeds differ
    assert any(np.abs(a.astype(int) - b).max() > 0 for a, b in zip(ae, base))  # it moved


@pytest.mark.parametrize("extra,message", [
    (["--attend-excite", "--base"], "cannot go with --base"),
    (["--subject-words", "circle"], "--subject-words is read by --attend-excite only"),
    (["--attend-excite", "--subject-words", "triangle"], "has no subject word"),
])
def test_attend_excite_input_errors(tiny_model, tmp_path, capsys, extra, message):
    assert dpt("generate", "--model", tiny_model, "--prompt", "a red circle", "--steps", 2,
               "--out", tmp_path / "x", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_attention_resolution_follows_the_unet(tiny_model):
    from types import SimpleNamespace

    from dpt_t2i.generation.attend_excite import attention_resolution

    def bundle(side, down, up, mid="UNetMidBlock2DCrossAttn"):
        config = SimpleNamespace(sample_size=side, down_block_types=down, up_block_types=up,
                                 mid_block_type=mid)
        return SimpleNamespace(unet=SimpleNamespace(config=config))

    sd = bundle(64, ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    assert attention_resolution(sd) == (16, 16)
    shapes = bundle(8, ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    assert attention_resolution(shapes) == (8, 8)
    tiny = bundle(8, ["DownBlock2D", "CrossAttnDownBlock2D"],
                  ["CrossAttnUpBlock2D", "UpBlock2D"])
    assert attention_resolution(tiny) == (4, 4)
    with pytest.raises(ValueError, match="no cross-attention"):
        attention_resolution(bundle(8, ["DownBlock2D"], ["UpBlock2D"], mid=None))
