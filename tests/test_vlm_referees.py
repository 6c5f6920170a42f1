"""BLIP-2 and CLIP referees from local folders (io/vlm_referees.py, generation/vlm_scorers.py),
on tiny random models the tests build and save: the score is the model's own forward on the
processor's inputs, differentiable in the image and deterministic, and a wrong or incomplete
folder is refused in one line naming it and what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpt_t2i.generation.referee import RefereeSettings, optimise
from dpt_t2i.generation.vlm_scorers import preprocess, vlm_scorer
from dpt_t2i.io.vlm_referees import check_vlm_folder, load_vlm_referee

PROMPTS = ["a red circle", "two blue squares to the left of a green triangle"]


def build_blip2_folder(folder: Path) -> Path:
    """A tiny random Blip2ForImageTextRetrieval folder: 30 px images (patches of 6), a 2-layer
    ViT and Q-Former 32 wide (initialised wider than BLIP-2's defaults so that the image
    moves the scores), 4 queries, a BERT word-piece tokenizer over the Shapes words and
    single letters, and a BlipImageProcessor (resize to 30 x 30, bicubic, CLIP's mean/std)."""
    from transformers import (BertTokenizer, Blip2Config, Blip2ForImageTextRetrieval,
                              BlipImageProcessor)

    from dpt_t2i.data.shapes.grammar import vocabulary

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocabulary(), *letters,
              *("##" + c for c in letters)]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))})
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=30, patch_size=6,
                           initializer_range=0.02),  # BLIP-2's 1e-10 leaves it blind
        qformer_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=37,
                            max_position_embeddings=64, cross_attention_frequency=1,
                            use_qformer_text_input=True,
                            initializer_range=0.2),  # at 0.02 ITM barely reads the image
        num_query_tokens=4, image_text_hidden_size=16)
    torch.manual_seed(0)
    Blip2ForImageTextRetrieval(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(folder)
    return folder


def build_clip_folder(folder: Path) -> Path:
    """A tiny random CLIPModel folder: 2-layer towers 32 wide, 30 px images (patches of 6),
    the Shapes tokenizer, and a CLIPImageProcessor (shortest edge 32, centre crop 30)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=30, patch_size=6),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 30, "width": 30}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vlm_folders(tmp_path_factory) -> dict[str, Path]:
    """{"blip-2": a tiny BLIP-2 retrieval folder, "clip": a tiny CLIP folder}."""
    root = tmp_path_factory.mktemp("vlm")
    return {"blip-2": build_blip2_folder(root / "blip2"), "clip": build_clip_folder(root / "clip")}


def folder_of(referee: str, folders: dict[str, Path]) -> Path:
    return folders["clip" if referee == "clip" else "blip-2"]


def _load(referee, folders):
    return load_vlm_referee(check_vlm_folder(folder_of(referee, folders), referee, PROMPTS))


def _levels(size: int, seed: int) -> np.ndarray:
    """(2, size, size, 3) uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def _as_input(arrays: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1], as a decoded image reads."""
    return torch.from_numpy(arrays.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1


def _processor_scores(referee: str, folder: Path, arrays: np.ndarray, prompts: list[str]):
    """(N,) the model's own forward on the processor's inputs of image k and prompts[k]."""
    from transformers import (BertTokenizer, Blip2ForImageTextRetrieval, Blip2Processor,
                              BlipImageProcessor, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    images = [Image.fromarray(a) for a in arrays]
    if referee == "clip":
        model = CLIPModel.from_pretrained(folder).eval()
        processor = CLIPProcessor(CLIPImageProcessor.from_pretrained(folder),
                                  CLIPTokenizer.from_pretrained(folder))
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image / model.logit_scale.exp()
        return logits.diagonal()
    model = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
    processor = Blip2Processor(BlipImageProcessor.from_pretrained(folder),
                               BertTokenizer.from_pretrained(folder))
    with torch.no_grad():
        if referee == "blip2-itm":
            inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
            return model(**inputs, use_image_text_matching_head=True) \
                .logits_per_image.log_softmax(-1)[:, 1]
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
        return model(**inputs, use_image_text_matching_head=False).logits_per_image.diagonal()


REFEREES = ["blip2-itm", "blip2-itc", "clip"]


@pytest.mark.parametrize("referee", REFEREES)
def test_the_score_is_the_models_own_forward_on_the_processors_inputs(vlm_folders, referee):
    folder = folder_of(referee, vlm_folders)
    size = 30 if referee != "clip" else 32  # the processor's resize is then the identity
    arrays = _levels(size, 0)
    want = _processor_scores(referee, folder, arrays, PROMPTS)
    scorer = vlm_scorer(_load(referee, vlm_folders))
    with torch.no_grad():
        got = scorer(_as_input(arrays), PROMPTS)
        swapped = scorer(_as_input(arrays), PROMPTS[::-1])
    assert got.shape == (2,) and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(swapped, _processor_scores(referee, folder, arrays, PROMPTS[::-1]),
                          atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, swapped, atol=1e-4)  # the text matters
    with torch.no_grad():
        one_text = scorer(_as_input(arrays), PROMPTS[:1] * 2)
    assert abs(float(one_text[0] - one_text[1])) > 1e-3  # and so does the image
    if referee == "blip2-itm":
        assert (got < 0).all()  # a log-probability


@pytest.mark.parametrize("referee", REFEREES)
def test_the_score_is_differentiable_in_the_image_and_deterministic(vlm_folders, referee):
    scorer = vlm_scorer(_load(referee, vlm_folders))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images.requires_grad_(True)  # a decoded 16 px image: resized up to the model's size
    first = scorer(images, PROMPTS)
    first.sum().backward()
    grad = images.grad.clone()
    images.grad = None
    second = scorer(images, PROMPTS)
    second.sum().backward()
    assert torch.equal(first, second) and torch.equal(grad, images.grad)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 1e-6).all()  # each image gets a gradient


def test_preprocessing_follows_the_processor_when_it_resizes(vlm_folders):
    """Downsampling a smooth 64 px image: within about one 8-bit level of the processor's
    PIL resize (std 0.27: one level is 0.015 after normalising)."""
    from transformers import BlipImageProcessor, CLIPImageProcessor

    small = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((64, 64), Image.BILINEAR))
    for referee, cls in (("blip2-itm", BlipImageProcessor), ("clip", CLIPImageProcessor)):
        folder = folder_of(referee, vlm_folders)
        want = cls.from_pretrained(folder)(images=Image.fromarray(smooth),
                                           return_tensors="pt")["pixel_values"]
        got = preprocess(_as_input(smooth[None]), check_vlm_folder(folder, referee).prep)
        assert got.shape == want.shape == (1, 3, 30, 30)
        assert float((got - want).abs().max()) < 0.03
        assert float((got - want).abs().mean()) < 0.006


@pytest.mark.parametrize("referee", REFEREES)
def test_the_referee_alone_raises_its_score_through_the_sd_decoder(vlm_folders, tiny_model_plain,
                                                                   referee):
    """Latents of the tiny SD model, decoded and scored: the referee's gradient climbs."""
    from dpt_t2i.io.bundle import load_bundle
    from dpt_t2i.model.latents import decode_latents

    bundle = load_bundle(tiny_model_plain)
    scorer = vlm_scorer(_load(referee, vlm_folders))
    settings = RefereeSettings(iterations=8, lr=20.0, lr_end=20.0, augment=False, sds=False,
                               ema=False)
    history = []
    start = torch.randn(2, *bundle.latent_shape(), generator=torch.Generator().manual_seed(0))
    optimise(lambda z: decode_latents(bundle.vae, z).float().clamp(-1, 1), scorer, PROMPTS,
             start, settings, torch.Generator().manual_seed(0), history=history)
    assert history[-1]["score"] > history[0]["score"] + 0.1  # measured +0.17 to +0.45


def _broken(tmp_path: Path, folders: dict[str, Path], case: str) -> tuple[Path, str]:
    """(a BLIP-2 folder broken as `case` says, the referee read with it)."""
    if case == "wrong model type":
        return folders["clip"], "blip2-itm"
    folder = tmp_path / case.replace(" ", "-")
    shutil.copytree(folders["blip-2"], folder)
    if case == "no config.json":
        (folder / "config.json").unlink()
    elif case == "no weights":
        (folder / "model.safetensors").unlink()
    elif case == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif case == "no image processor":
        (folder / "preprocessor_config.json").unlink()
    elif case == "a Q-Former without text":
        config = json.loads((folder / "config.json").read_text())
        config["qformer_config"]["use_qformer_text_input"] = False
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "another model's tokenizer":
        shutil.copy(folders["clip"] / "tokenizer.json", folder / "tokenizer.json")
        shutil.copy(folders["clip"] / "tokenizer_config.json", folder / "tokenizer_config.json")
    elif case == "torn config.json":
        (folder / "config.json").write_text('{"model_type": "blip-2", ')
    return folder, "blip2-itm"


CHECKS = {  # case -> what the message says
    "no config.json": "has no config.json",
    "wrong model type": "holds a 'clip' model (config.json model_type) where --referee "
                        "blip2-itm reads 'blip-2'",
    "no weights": "has no weights (none of model.safetensors",
    "no tokenizer": "has no tokenizer files (tokenizer.json or vocab.txt)",
    "no image processor": "has no preprocessor_config.json",
    "a Q-Former without text": "its Q-Former takes no text",
    "another model's tokenizer": "past the model's",
    "torn config.json": "cannot read",
}


@pytest.mark.parametrize("case", CHECKS)
def test_a_wrong_or_incomplete_folder_is_named_in_one_line(tmp_path, vlm_folders, case):
    folder, referee = _broken(tmp_path, vlm_folders, case)
    with pytest.raises(ValueError) as err:
        check_vlm_folder(folder, referee, PROMPTS)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and CHECKS[case] in message
    assert "expected a " in message


def _rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    save_file(edit(tensors), folder / "model.safetensors", metadata={"format": "pt"})


def test_weights_without_the_itm_head_or_torn_are_refused_on_loading(tmp_path, vlm_folders):
    lacking = tmp_path / "lacking"
    shutil.copytree(vlm_folders["blip-2"], lacking)
    _rewrite_weights(lacking, lambda t: {k: v for k, v in t.items()
                                         if not k.startswith("itm_head")})
    checked = check_vlm_folder(lacking, "blip2-itm", PROMPTS)  # the files are all there
    with pytest.raises(ValueError) as err:
        load_vlm_referee(checked)
    assert str(err.value).startswith(f"--referee-model {lacking}: its weights lack 2 of "
                                     f"Blip2ForImageTextRetrieval's tensors (itm_head.bias, "
                                     f"itm_head.weight)")
    torn = tmp_path / "torn"
    shutil.copytree(vlm_folders["blip-2"], torn)
    (torn / "model.safetensors").write_bytes((torn / "model.safetensors").read_bytes()[:200])
    with pytest.raises(ValueError, match=f"cannot load the weights of --referee-model {torn}"):
        load_vlm_referee(check_vlm_folder(torn, "blip2-itm"))


def test_a_folder_reads_its_image_processor(vlm_folders):
    blip = check_vlm_folder(vlm_folders["blip-2"], "blip2-itc").prep
    clip = check_vlm_folder(vlm_folders["clip"], "clip").prep
    assert (blip.size, blip.shortest_edge, blip.crop, blip.mode) == ((30, 30), None, None,
                                                                     "bicubic")
    assert (clip.size, clip.shortest_edge, clip.crop) == (None, 32, (30, 30))
    assert blip.mean == clip.mean == (0.48145466, 0.4578275, 0.40821073)
    assert abs(blip.scale - 1.0) < 1e-9
    # a wide image keeps its aspect: shortest edge 32, then the centre 30 x 30
    wide = torch.zeros(1, 3, 16, 48)
    wide[..., 24:] = 1  # right half white
    out = preprocess(wide, clip)
    assert out.shape == (1, 3, 30, 30)
    assert out[0, 0, 0, 0] < out[0, 0, 0, -1]  # both halves inside the crop
