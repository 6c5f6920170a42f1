"""Training the Shapes referee: its items and exact labels, the augmentation, and a killed
run resuming to the same weights."""

import json

import pytest
import torch

from dpt_t2i.data.shapes.grammar import parse_prompt, satisfied
from dpt_t2i.io.shapes_referee import load_shapes_referee
from dpt_t2i.shapes_model import referee as referee_module
from dpt_t2i.shapes_model.referee import augment, item_pairs, train_referee, training_item

from .resume import assert_changed, assert_identical, watch_steps

TINY = dict(width=16, heads=2, stem_channels=4, image_layers=1, text_layers=1, registers=2,
            ffn_mult=1)
RUN = dict(steps=5, batch=2, checkpoint_every=2)


def test_items_hold_four_images_and_texts_with_exact_labels():
    items = [training_item(0, i) for i in range(6)]
    for item in items:
        assert len(item.images) == len(item.texts) == len(item.scenes) == 4
        assert item.images[0].shape == (64, 64, 3)
        caption = parse_prompt(item.texts[0])
        # each image shows its own text; the negative images leave the caption false
        assert all(satisfied(parse_prompt(t), s) for t, s in zip(item.texts, item.scenes))
        assert not any(satisfied(caption, s) for s in item.scenes[1:])
        assert not any(satisfied(parse_prompt(t), item.scenes[0]) for t in item.texts[1:])
    pairs, labels, grid = item_pairs(items)
    assert pairs.shape == (6 * 20, 2) and labels.shape == (6 * 20,)
    # every (image k, text k) pair of an item is a positive, caption-vs-negative ones are not
    rows = {tuple(p): float(y) for p, y in zip(pairs.tolist(), labels)}
    assert all(rows[(k, k)] == 1.0 for k in range(24))
    assert all(rows[(4 * i, 4 * i + j)] == 0.0 for i in range(6) for j in (1, 2, 3))
    assert (4 * 5, 0) in rows  # the last item's images meet the first item's caption
    # the same index gives the same item
    assert training_item(0, 3).texts == items[3].texts


def test_augment_is_seeded_and_stays_in_range():
    images = torch.rand(40, 3, 16, 16) * 2 - 1
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert a.min() >= -1 and a.max() <= 1
    same = (a == images).flatten(1).all(1)
    assert 2 <= int(same.sum()) <= 16  # about a fifth left as they are
    assert augment(images, torch.Generator().manual_seed(0), strength=0.0) is images


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    config = referee_module.referee_config(**TINY)
    taken = watch_steps(monkeypatch, referee_module)
    train_referee(tmp_path / "reference", config=config, **RUN)
    assert taken == [0, 1, 2, 3, 4]

    run_dir = tmp_path / "run"
    taken = watch_steps(monkeypatch, referee_module, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        train_referee(run_dir, config=config, **RUN)
    assert taken == [0, 1, 2] and (run_dir / "latest").read_text() == "step-00000002"
    taken = watch_steps(monkeypatch, referee_module)
    summary = train_referee(run_dir, config=config, **RUN, out=tmp_path / "shipped")
    assert summary["step"] == 5 and taken == [2, 3, 4]

    reference = tmp_path / "reference"
    assert_identical(reference / "final", run_dir / "final")
    assert_identical(reference / "step-00000005", run_dir / "step-00000005")
    assert_changed(reference / "step-00000004", reference / "step-00000005",
                   "referee.safetensors")
    assert_identical(run_dir / "final", tmp_path / "shipped")
    model = load_shapes_referee(run_dir / "final")
    assert model.config == config
    assert json.loads((run_dir / "final" / "config.json").read_text())["training"]["step"] == 5


def test_a_resume_with_other_settings_is_refused(tmp_path):
    config = referee_module.referee_config(**TINY)
    train_referee(tmp_path, config=config, steps=1, batch=1, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"other settings \(lr\); resume with the same flags"):
        train_referee(tmp_path, config=config, steps=2, batch=1, lr=1e-4)
    other = referee_module.referee_config(**{**TINY, "width": 32})
    with pytest.raises(ValueError, match=r"other settings \(width\)"):
        train_referee(tmp_path, config=other, steps=2, batch=1)
    # more steps with the same settings continue; --resume no starts over with new ones
    assert train_referee(tmp_path, config=config, steps=2, batch=1)["step"] == 2
    assert train_referee(tmp_path, config=other, steps=1, batch=1, resume=False)["step"] == 1


def test_patch_targets_mark_each_centre_with_its_kind_and_offset():
    from dpt_t2i.data.shapes.world import ShapeObject
    from dpt_t2i.shapes_model.referee_losses import IGNORE, patch_targets

    scene = [ShapeObject("triangle", "blue", "small", 10, 3, 40),  # centre (8, 45): cell 5*8+1
             ShapeObject("circle", "red", "large", 20, 40, 0)]  # centre (50, 10): cell 1*8+6
    target = patch_targets([scene, []], grid=8)
    assert target["centre"][0].nonzero().flatten().tolist() == [14, 41]
    assert target["centre"][1].sum() == 0
    assert target["colour"][0, 41] == 2 and target["shape"][0, 41] == 2  # blue, triangle
    assert target["size"][0, 14] == 1 and target["colour"][0, 14] == 0  # large, red
    assert target["colour"][0, 0] == IGNORE
    assert target["offset"][0, 41].tolist() == [0.0, 5 / 8]
    assert target["offset"][0, 14].tolist() == [2 / 8, 2 / 8]


def test_rank_loss_is_the_one_of_four_choice():
    import math

    from dpt_t2i.shapes_model.referee_losses import loss_rank

    grid = torch.arange(16).view(1, 4, 4)
    labels = torch.eye(4).flatten()
    assert float(loss_rank(torch.zeros(16), labels, grid)) == pytest.approx(math.log(4))
    assert float(loss_rank(10 * labels, labels, grid)) < 1e-3
    # an image with two true texts: the target is half on each, so equal winners cost log 2
    # in that row (and nothing elsewhere when the columns agree)
    both = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]).flatten()
    loss = float(loss_rank(20 * both, both, grid))
    assert loss == pytest.approx((2 * math.log(2) + 2 * math.log(2)) / 8, abs=1e-4)
