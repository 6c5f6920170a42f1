"""The Shapes CLIP: its contrastive loss and a killed training run resuming to the same weights."""

import math

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from dpt_t2i.model.text import tokenize
from dpt_t2i.shapes_model import clip as clip_module
from dpt_t2i.shapes_model.clip import build_clip, contrastive_loss, train_clip
from dpt_t2i.shapes_model.tokenizer import MAX_LENGTH, build_tokenizer

from .resume import assert_changed, assert_identical, watch_steps

RUN = dict(steps=4, batch=8, checkpoint_every=2)


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    taken = watch_steps(monkeypatch, clip_module)
    train_clip(tmp_path / "reference", **RUN)
    assert taken == [0, 1, 2, 3]

    run_dir = tmp_path / "run"
    taken = watch_steps(monkeypatch, clip_module, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train_clip(run_dir, **RUN)
    assert taken == [0, 1] and (run_dir / "latest").read_text() == "step-00000002"
    taken = watch_steps(monkeypatch, clip_module)
    assert train_clip(run_dir, **RUN, resume=True)["step"] == 4
    assert taken == [2, 3]

    reference = tmp_path / "reference"
    assert_identical(reference / "final", run_dir / "final")
    assert_identical(reference / "step-00000004", run_dir / "step-00000004")
    assert_changed(reference / "step-00000002", reference / "step-00000004", "clip.safetensors")
    # final/ loads as a CLIP with its tokenizer
    model = CLIPModel.from_pretrained(run_dir / "final")
    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "final")
    assert tokenizer.model_max_length == MAX_LENGTH
    assert model.config.text_config.vocab_size == len(tokenizer)


def test_contrastive_loss_counts_repeated_texts_as_positives():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_clip(tokenizer).eval()
    texts = ["a red circle", "a blue square", "a red circle"]
    ids = tokenize(tokenizer, texts).input_ids
    assert ids.shape == (3, MAX_LENGTH)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = contrastive_loss(model, ids, pixels, texts)
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image  # (3, 3)
    targets = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    by_hand = 0.5 * (-(targets * logits.log_softmax(1)).sum(1).mean()
                     - (targets * logits.t().log_softmax(1)).sum(1).mean())
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    # with every text distinct, the loss of random encoders is near log(B)
    distinct = ["a red circle", "a blue square", "a green triangle"]
    with torch.no_grad():
        loss = contrastive_loss(model, tokenize(tokenizer, distinct).input_ids, pixels, distinct)
    assert abs(float(loss) - math.log(3)) < 0.5
