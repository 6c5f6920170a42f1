"""Assembling the Shapes parts into one fp16 diffusers folder that plain diffusers loads."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dpt_t2i.data.shapes.grammar import vocabulary
from dpt_t2i.shapes_model.assemble import assemble


@pytest.fixture(scope="module")
def assembled(shapes_parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("assembled")
    out = assemble(shapes_parts["vae"], shapes_parts["clip"], shapes_parts["unet"],
                   root / "pipeline", clip_out=root / "clip")
    assert out == root / "pipeline"
    return out, root / "clip"


def test_every_weight_file_is_fp16_safetensors(assembled):
    pipeline, clip = assembled
    for folder in (pipeline, clip):
        files = sorted(folder.rglob("*.safetensors"))
        assert files and not list(folder.rglob("*.bin"))
        for file in files:
            with safe_open(file, framework="pt") as f:
                dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
            assert dtypes == {"F16"}, (file, dtypes)
    assert sorted(p.parent.name for p in pipeline.rglob("*.safetensors")) == [
        "text_encoder", "unet", "vae"]


def test_weights_are_the_parts_rounded_to_fp16(assembled, shapes_parts):
    pipeline, _ = assembled
    unet = load_file(shapes_parts["unet"] / "diffusion_pytorch_model.safetensors")
    saved = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert saved.keys() == unet.keys()
    assert all(torch.equal(saved[k], unet[k].half()) for k in unet)
    clip = load_file(shapes_parts["clip"] / "model.safetensors")
    text = load_file(pipeline / "text_encoder" / "model.safetensors")
    assert all(k.startswith("text_model.") for k in text)
    assert all(torch.equal(text[k], clip[k].half()) for k in text)


def test_folder_marks_a_shapes_model_and_keeps_the_slow_tokenizer_files(assembled, shapes_parts):
    pipeline, clip = assembled
    marker = json.loads((pipeline / "shapes_world.json").read_text())
    assert marker == {"world": "shapes", "image_size": 64, "vocabulary": list(vocabulary())}
    for folder in (pipeline / "tokenizer", clip):
        assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    assert json.loads((pipeline / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    scheduler = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert (scheduler["beta_schedule"], scheduler["steps_offset"], scheduler["set_alpha_to_one"],
            scheduler["clip_sample"]) == ("scaled_linear", 1, False, False)
    vae = json.loads((pipeline / "vae" / "config.json").read_text())
    original = json.loads((shapes_parts["vae"] / "config.json").read_text())
    assert vae["scaling_factor"] == original["scaling_factor"]


def test_plain_diffusers_loads_it_in_float32_and_samples_64px_images(assembled):
    from diffusers import StableDiffusionPipeline

    pipeline, _ = assembled
    pipe = StableDiffusionPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name).dtype == torch.float32, name
    assert pipe.tokenizer.model_max_length == 16
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1


def test_full_clip_loads_in_float32_with_its_tokenizer(assembled, shapes_parts):
    from transformers import CLIPModel, CLIPTokenizer

    _, clip = assembled
    model = CLIPModel.from_pretrained(clip)
    assert model.dtype == torch.float32
    assert model.config.vision_config.image_size == 64
    tokenizer = CLIPTokenizer.from_pretrained(clip)
    reference = CLIPTokenizer.from_pretrained(shapes_parts["clip"])
    assert tokenizer("two blue squares").input_ids == reference("two blue squares").input_ids
