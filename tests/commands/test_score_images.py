"""`dpt score`: the matching score of image files against texts, on the shipped model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dpt_t2i.cli import main
from dpt_t2i.data.shapes.grammar import parse_prompt, scene_for
from dpt_t2i.data.shapes.world import render
from dpt_t2i.eval.discriminative import DiscriminativeScorer
from dpt_t2i.eval.image_scores import ScoreSettings, score_images
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling

TEXTS = ["a red circle", "three green triangles", "a blue circle"]


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Clean renders of the first two texts."""
    folder = tmp_path_factory.mktemp("renders")
    paths = []
    for i, text in enumerate(TEXTS[:2]):
        paths.append(folder / f"{i}.png")
        Image.fromarray(render(scene_for(parse_prompt(text), np.random.default_rng(i)))).save(
            paths[-1])
    return paths


def _json(capsys, *argv):
    code = main(["score", *map(str, argv), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_every_image_against_every_text_and_the_true_text_wins(renders, capsys):
    result = _json(capsys, *renders, *[a for t in TEXTS for a in ("--prompt", t)])
    assert result["images"] == [str(p) for p in renders] and result["texts"] == TEXTS
    scores = np.array(result["scores"])
    assert scores.shape == (2, 3) and np.all(np.abs(scores) <= 1)
    assert result["best"] == [0, 1]  # a clean render scores its own text highest
    assert scores[0, 0] > scores[0, 2]  # the colour swap scores lower than the true colour
    assert result["settings"]["timestep"] == 100 and result["settings"]["seed"] == 0
    assert result["settings"]["dpt"] == str(default_dpt_path().resolve())


def test_scores_are_evaluate_discs_reading_and_the_seed_decides_the_noise(renders, capsys):
    settings = ScoreSettings(model=default_model_path(), timestep=300, seed=5)
    result = score_images(settings, renders, TEXTS)
    bundle = load_bundle(default_model_path())
    heads, config = load_for_sampling(default_dpt_path(), bundle.unet)
    scorer = DiscriminativeScorer(bundle, heads, config, timestep=300, seed=5)
    images = [np.array(Image.open(p).convert("RGB")) for p in renders]
    expected = scorer.score.matrix(scorer.encode(images), 300, TEXTS)
    assert torch.equal(torch.tensor(result["scores"]), expected)
    again = _json(capsys, *renders, "--prompt", TEXTS[0], "--timestep", 300, "--seed", 5)
    # the same noise: the same scores, up to the float rounding of another batch of texts (a
    # per-candidate DPT makes each text's features in a U-Net batch of its own size)
    np.testing.assert_allclose([row[0] for row in again["scores"]],
                               [row[0] for row in result["scores"]], rtol=0, atol=1e-6)
    other = _json(capsys, *renders, "--prompt", TEXTS[0], "--timestep", 300, "--seed", 6)
    assert other["scores"] != again["scores"]


@pytest.mark.parametrize("args,message", [
    (["{tmp}/missing.png", "--prompt", "a red circle"], "missing.png does not exist"),
    (["{tmp}/junk.png", "--prompt", "a red circle"], "junk.png cannot be read as an image"),
    (["{img}"], "no prompt"),
    (["{img}", "--prompt", "a red circle", "--timestep", "1000"], "--timestep must be in"),
    (["{img}", "--prompt", "a red circle", "--seed", "-1"], "--seed must be from 0"),
    (["{img}", "--prompt", "a pink dog"], "not in the vocabulary"),
    (["{img}", "--prompt", "a red circle", "--dpt", "{tmp}"], "is not a DPT folder"),
    (["{img}", "--prompt", "a red circle", "--model", "{tiny}"], "needs --dpt PATH"),
    (["{img}", "--prompt", "a red circle", "--device", "cuda:99"], "--device cuda:99: this "
                                                                   "machine has"),
])
def test_bad_input_is_one_line(renders, tiny_model, tmp_path, capsys, args, message):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    argv = [a.format(tmp=tmp_path, img=renders[0], tiny=tiny_model) for a in args]
    assert main(["score", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dpt score: error: ") and message in err, err
