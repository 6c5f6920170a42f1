"""Prompt text as the commands take it (data/prompt_text.py, commands/prompt_input.py) and the
model checks that quote prompts (generation/methods.py)."""

import argparse
from pathlib import Path

import pytest

from dpt_t2i.commands.prompt_input import read_prompts
from dpt_t2i.data.prompt_text import normalise_prompt, quote
from dpt_t2i.data.shapes.grammar import PromptError, parse_prompt, vocabulary
from dpt_t2i.generation.methods import check_vocabulary


@pytest.mark.parametrize("text, expected", [
    ("a red circle", "a red circle"),
    ("  a red circle \t", "a red circle"),
    ("a red circle.", "a red circle"),
    ("a red circle .", "a red circle"),
    ("a red circle..", "a red circle."),  # one period only: the second is the prompt's
    ("A Red Circle", "A Red Circle"),      # case is the tokenizer's business
    ("a photo of a cat, 4k", "a photo of a cat, 4k"),
])
def test_normalise_strips_and_drops_one_trailing_period(text, expected):
    assert normalise_prompt(text, "the prompt") == expected


@pytest.mark.parametrize("text, message", [
    ("", "the prompt is empty; expected a text such as 'a red circle'"),
    ("  .  ", "the prompt is empty"),
    ("a red circle\nand a blue square", r"the prompt 'a red circle\\nand a blue square' holds a "
                                        "line break; a prompt is one line of text"),
    ("a red circle\r", None),  # a break at the end is surrounding space
    ("a red\u2028circle", "holds a line break"),
])
def test_normalise_refuses_empty_and_multi_line_prompts(text, message):
    if message is None:
        assert normalise_prompt(text, "the prompt") == "a red circle"
        return
    with pytest.raises(ValueError, match=message):
        normalise_prompt(text, "the prompt")


def test_quote_clips_long_text_and_says_how_long():
    assert quote("a red circle") == "'a red circle'"
    assert quote("x" * 80) == repr("x" * 80)
    assert quote("x" * 10_000) == f"'{'x' * 80}'... (10000 characters)"
    assert quote("abcdef", limit=3) == "'abc'... (6 characters)"


def _args(prompt=None, prompts_file=None):
    return argparse.Namespace(prompt=prompt, prompts_file=prompts_file)


def test_prompts_file_drops_a_byte_order_mark_and_periods(tmp_path: Path):
    file = tmp_path / "p.txt"
    file.write_bytes(b"\xef\xbb\xbfa red circle.\r\n\r\n  two blue squares  \n")
    assert read_prompts(_args(prompts_file=file)) == ["a red circle", "two blue squares"]


def test_prompts_file_names_the_line_of_an_empty_prompt(tmp_path: Path):
    file = tmp_path / "p.txt"
    file.write_text("a red circle\n\n.\n")
    with pytest.raises(ValueError, match=rf"line 3 of prompts file {file} is empty"):
        read_prompts(_args(prompts_file=file))


def test_prompt_flags_are_normalised_and_named():
    assert read_prompts(_args(prompt=["a red circle.", " two blue squares"])) == \
        ["a red circle", "two blue squares"]
    with pytest.raises(ValueError, match="--prompt number 2 'b\\\\nc' holds a line break"):
        read_prompts(_args(prompt=["a", "b\nc"]))
    with pytest.raises(ValueError, match="--prompt number 1 is empty"):
        read_prompts(_args(prompt=["."]))


def test_grammar_reads_words_in_lower_case_as_the_tokenizer_does():
    assert parse_prompt("A Red circle to the LEFT of a blue square") == \
        parse_prompt("a red circle to the left of a blue square")


def test_grammar_messages_clip_what_they_quote():
    with pytest.raises(PromptError) as err:
        parse_prompt("a red circle and a blue square " + "above " * 2000)
    assert len(str(err.value)) < 200 and "(11999 characters)" in str(err.value)


def test_shapes_models_refuse_prompts_their_judge_cannot_read():
    words = vocabulary()
    check_vocabulary(["a red circle", "Three small green triangles"], words, Path("m"))
    with pytest.raises(ValueError, match=r"word 'pink' in prompt 'a pink circle' is not in the "
                                         r"vocabulary of the Shapes model m; known words: a an"):
        check_vocabulary(["a pink circle"], words, Path("m"))
    with pytest.raises(ValueError, match=r"prompt 'the red circle' is not one the Shapes grammar "
                                         r"reads, so `dpt evaluate` could not judge its images: "
                                         r"expected 'a' or a number word at word 1, got 'the'"):
        check_vocabulary(["a red circle", "the red circle"], words, Path("m"))
