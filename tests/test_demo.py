"""The demo's generate function, which `dpt serve`'s page calls, on the shipped model."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from dpt_t2i.app.demo import METHODS, Demo, describe
from dpt_t2i.cli import main
from dpt_t2i.data.shapes.judge import Verdict
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import default_dpt_path

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def demo():
    return Demo.load(default_model_path(), default_dpt_path())


def test_every_method_gives_an_image_a_score_and_a_verdict(demo):
    ticks = []
    # the shipped DPT folder holds no LoRA, so DPT alone would repeat the base model's image
    assert demo.methods == [m for m in METHODS if m != "dpt"]
    comparison = demo.generate(PROMPT, demo.methods, seed=3, steps=3,
                               referee_iterations=2, progress=lambda *t: ticks.append(t))
    assert [s.method for s in comparison.shown] == demo.methods
    for shown in comparison.shown:
        assert shown.image.shape == (64, 64, 3) and shown.image.dtype == np.uint8
        assert -1.0 <= shown.score <= 1.0
        assert isinstance(shown.verdict, Verdict) and str(shown.verdict.prompt) == PROMPT
        assert describe(shown.verdict).startswith(("satisfied; saw ", "not satisfied; saw "))
    assert comparison.judge_note is None
    total = 2 * 3 + 2  # two samplers' steps and the referee's iterations
    assert [t[0] for t in ticks] == list(range(1, total + 1))
    assert {t[1] for t in ticks} == {total} and ticks[-1][2] == "Referee: 2/2"


def test_images_are_those_of_dpt_generate(demo, tmp_path):
    """DPT + SC on the page is `dpt generate`'s default image (self-correction at eta 0.2
    here, so the 3-step sampler's one corrected step moves it)."""
    (shown,) = demo.generate(PROMPT, ["dpt+sc"], seed=4, steps=3, eta=0.2).shown
    assert main(["generate", "--prompt", PROMPT, "--num-images", "1", "--seed", "4",
                 "--steps", "3", "--self-correct", "0.2", "--out", str(tmp_path / "sc")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sc" / "00000.png")), shown.image)


@pytest.mark.parametrize("prompt, methods, settings, message", [
    ("   ", ["base"], {}, "the prompt is empty"),
    ("a red pentagon", ["base"], {}, "word 'pentagon'"),
    ("circle red a", ["base"], {}, r"prompt 'circle red a' is not one the Shapes grammar reads"),
    ("a red circle\nand a blue square", ["base"], {}, "the prompt .* holds a line break"),
    ("a red " + "x" * 10_000, ["base"], {}, r"word 'x{80}'\.\.\. \(10000 characters\)"),
    (PROMPT, ["base"], {"steps": 1001}, "the number of steps must be a whole number from 1 to "
                                        "1000, got 1001"),
    (PROMPT, [], {}, "no method chosen"),
    (PROMPT, ["attend-excite"], {}, "not available"),
    (PROMPT, ["base"], {"seed": -1}, "the seed must be a whole number from 0 to"),
    (PROMPT, ["base"], {"seed": None}, "the seed must be a whole number"),
    (PROMPT, ["base"], {"seed": 2**64}, "the seed must be a whole number from 0 to"),
    (PROMPT, ["base"], {"steps": 0}, "the number of steps must be a whole number from 1"),
    (PROMPT, ["base"], {"steps": 2.5}, "the number of steps must be a whole number"),
    (PROMPT, ["dpt+sc"], {"eta": 0.0}, "eta must be a number > 0"),
    (PROMPT, ["dpt+sc"], {"eta": None}, "eta must be a number > 0"),
    (PROMPT, ["dpt+sc"], {"eta": 10.0}, r"<= 1 \(a fraction of the noise level\), got 10"),
    (PROMPT, ["referee"], {"referee_iterations": -3}, "iterations must be a whole number"),
])
def test_bad_input_is_a_usage_error(demo, prompt, methods, settings, message):
    with pytest.raises(ValueError, match=message):
        demo.generate(prompt, methods, **settings)


def test_prompt_is_read_as_dpt_generate_reads_it(demo):
    comparison = demo.generate("  a red circle. ", ["base"], seed=1, steps=2)
    assert comparison.prompt == "a red circle" and comparison.shown[0].verdict is not None
    again = demo.generate("a red circle", ["base"], seed=1, steps=2)
    assert np.array_equal(comparison.shown[0].image, again.shown[0].image)


def test_page_shows_bad_input_in_its_status_line_and_goes_on(demo):
    pytest.importorskip("gradio")
    from dpt_t2i.app.page import handler

    run = handler(demo)
    n = len(demo.methods)
    for prompt, picked, message in (("", ["base"], "the prompt is empty"),
                                    ("a red pentagon", ["base"], "word 'pentagon'"),
                                    (PROMPT, None, "no method chosen")):
        out = run(0, prompt, picked, 0, 2, 0.1, 2)
        assert out[0] == 0 and out[1].startswith("⚠ **Cannot generate:** ") and message in out[1]
        assert len(out) == 2 + 3 * n and all(o == {"__type__": "update"} for o in out[2:])
    out = run(0, PROMPT, ["base", "dpt+sc"], 0, 2, 0.1, 2)
    runs, status, images = out[0], out[1], out[2 + n:2 + 2 * n]
    assert runs == 1 and status.startswith("Run 1: 2 images of *" + PROMPT)
    assert [None if i is None else i.shape for i in images] == \
        [(256, 256, 3), (256, 256, 3), None]  # enlarged 4x, in METHODS order


def test_concurrent_calls_get_what_they_would_get_alone(demo):
    calls = [("three green triangles", 1), ("a yellow square above a purple circle", 2)]
    methods = ["base", "dpt+sc"]
    alone = [demo.generate(p, methods, seed=s, steps=3) for p, s in calls]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(demo.generate, p, methods, seed=s, steps=3) for p, s in calls]
        together = [f.result() for f in futures]
    for a, b in zip(alone, together):
        assert b.prompt == a.prompt
        for x, y in zip(a.shown, b.shown):
            assert np.array_equal(x.image, y.image) and x.score == y.score


def test_a_model_without_dpt_offers_the_base_model_alone(tiny_model_plain):
    demo = Demo(load_bundle(tiny_model_plain))
    assert demo.methods == ["base"]
    comparison = demo.generate("any words at all", ["base"], steps=2)
    (shown,) = comparison.shown
    assert shown.image.shape == (16, 16, 3) and shown.score is None and shown.verdict is None
    assert comparison.judge_note == "no judge: this is not a Shapes model"
    with pytest.raises(ValueError, match="method 'dpt' is not available"):
        demo.generate("words", ["dpt"])
