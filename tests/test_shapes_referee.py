"""The Shapes referee: shapes, its word reading, differentiability, the fp16 folder and the
one-line errors of a broken one, and the referee-generation scorer."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dpt_t2i.data.samples import images_to_tensor
from dpt_t2i.data.shapes.grammar import parse_prompt, scene_for, vocabulary
from dpt_t2i.data.shapes.world import render
from dpt_t2i.eval.zero_shot import ShapesRefereeScorer
from dpt_t2i.generation.shapes_referee import shapes_referee_scorer
from dpt_t2i.io.shapes_referee import (CONFIG_FILE, WEIGHTS_FILE, load_shapes_referee,
                                       read_shapes_referee_config, save_shapes_referee)
from dpt_t2i.model.shapes_referee import CLS, PAD, UNK, RefereeConfig, ShapesReferee, token_ids

TINY = dict(width=16, heads=2, stem_channels=4, image_layers=1, text_layers=1, registers=2,
            ffn_mult=1)
TEXTS = ["a red circle", "two blue squares to the left of a small green triangle",
         "three yellow triangles"]


def tiny(seed: int = 0) -> ShapesReferee:
    torch.manual_seed(seed)
    return ShapesReferee(RefereeConfig(vocabulary=vocabulary(), **TINY)).eval()


def renders(texts: list[str], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return images_to_tensor([render(scene_for(parse_prompt(t), rng)) for t in texts])


def test_token_ids_read_words_over_the_vocabulary():
    config = RefereeConfig(vocabulary=("a", "red", "circle"), max_words=4)
    ids = token_ids(config, ["A red circle", "a blue circle", ""])
    assert ids.tolist() == [[CLS, 3, 4, 5, PAD], [CLS, 3, UNK, 5, PAD], [CLS] + [PAD] * 4]
    with pytest.raises(ValueError, match="has 5 words; the referee reads at most 4"):
        token_ids(config, ["a red circle a red"])


def test_shapes_and_pairs():
    model = tiny()
    images = renders(TEXTS)
    memory = model.encode_images(images)
    assert memory.shape == (3, 8 * 8 + 2, 16)
    pairs = torch.tensor([[0, 0], [0, 1], [2, 1], [1, 2]])
    with torch.no_grad():
        logits = model(images, TEXTS, pairs)
        # each pair alone: the same logit (padding trimmed and masked, nothing shared)
        alone = [model(images[i:i + 1], [TEXTS[j]]) for i, j in pairs.tolist()]
        diagonal = model(images, TEXTS)
    assert logits.shape == (4,) and diagonal.shape == (3,)
    assert torch.allclose(logits, torch.cat(alone), atol=1e-5)
    assert torch.allclose(diagonal[0], logits[0], atol=1e-5)
    # an image of another size is resized to the world's 64 pixels first
    small = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear",
                                            antialias=True)
    assert model.encode_images(small).shape == memory.shape
    with pytest.raises(ValueError, match="got 3 images and 2 texts"):
        model(images, TEXTS[:2])


def test_scorer_is_differentiable_in_the_image():
    model = tiny().double()
    score = shapes_referee_scorer(model)
    images = renders(TEXTS[:2]).double().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(images, TEXTS[:2]).sum(), images)
    assert grad.shape == images.shape and grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())  # frozen weights
    # the gradient is the score's: a central difference along a random direction agrees
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
    eps = 1e-4
    with torch.no_grad():
        up = score(images + eps * direction, TEXTS[:2]).sum()
        down = score(images - eps * direction, TEXTS[:2]).sum()
    numeric = float(up - down) / (2 * eps)
    assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-4)


def test_eval_scorer_gives_the_models_logits():
    model = tiny()
    rng = np.random.default_rng(0)
    images = [render(scene_for(parse_prompt(t), rng)) for t in TEXTS]
    scorer = ShapesRefereeScorer(model)
    pairs = [(0, 1), (2, 0), (1, 1)]
    got = scorer.pair_scores(scorer.encode(images), TEXTS, pairs)
    with torch.no_grad():
        want = model(images_to_tensor(images), TEXTS, torch.tensor(pairs))
    assert torch.allclose(got, want, atol=1e-5)


def test_folder_round_trip_in_fp16(tmp_path):
    model = tiny()
    folder = save_shapes_referee(tmp_path / "ref", model, extra={"step": 3})
    state = load_file(folder / WEIGHTS_FILE)
    assert state and all(v.dtype == torch.float16 for v in state.values())
    data = json.loads((folder / CONFIG_FILE).read_text())
    assert data["training"] == {"step": 3} and data["vocabulary"] == list(vocabulary())
    loaded = load_shapes_referee(folder)
    assert loaded.config == model.config
    for name, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[name].half().float()), name
    images = renders(TEXTS)
    with torch.no_grad():
        assert torch.allclose(loaded(images, TEXTS), model(images, TEXTS), atol=2e-3)


def _broken(folder, kind):
    if kind == "no folder":
        return folder / "nowhere", "is not a folder"
    if kind == "no config":
        (folder / CONFIG_FILE).unlink()
        return folder, f"has no {CONFIG_FILE}"
    data = json.loads((folder / CONFIG_FILE).read_text())
    if kind == "bad json":
        (folder / CONFIG_FILE).write_text("{")
        return folder, "is not valid JSON"
    if kind == "no vocabulary":
        del data["vocabulary"]
        (folder / CONFIG_FILE).write_text(json.dumps(data))
        return folder, "lacks the key 'vocabulary'"
    if kind == "unknown key":
        (folder / CONFIG_FILE).write_text(json.dumps({**data, "depth": 3}))
        return folder, "unknown key(s) depth"
    if kind == "other width":
        (folder / CONFIG_FILE).write_text(json.dumps({**data, "width": 32}))
        return folder, f"cannot load {folder / WEIGHTS_FILE}"
    if kind == "no weights":
        (folder / WEIGHTS_FILE).unlink()
        return folder, f"{WEIGHTS_FILE} is missing"
    file = folder / WEIGHTS_FILE  # truncated
    file.write_bytes(file.read_bytes()[:100])
    return folder, f"cannot read {file}"


@pytest.mark.parametrize("kind", ["no folder", "no config", "bad json", "no vocabulary",
                                  "unknown key", "other width", "no weights", "truncated"])
def test_broken_folders_are_named_in_one_line(tmp_path, kind):
    folder = save_shapes_referee(tmp_path / "ref", tiny())
    path, message = _broken(folder, kind)
    with pytest.raises(ValueError) as err:
        load_shapes_referee(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_checks_its_fields(tmp_path):
    with pytest.raises(ValueError, match="multiple of heads"):
        RefereeConfig(vocabulary=("a",), width=10, heads=4)
    with pytest.raises(ValueError, match="vocabulary"):
        RefereeConfig(vocabulary=())
    folder = save_shapes_referee(tmp_path / "ref", tiny())
    assert read_shapes_referee_config(folder) == tiny().config
