import json
import shutil
from pathlib import Path

import pytest
import torch

import dpt_t2i
from dpt_t2i.data.shapes.grammar import vocabulary
from dpt_t2i.io.bundle import check_model_folder, default_model_path, load_bundle, read_vocabulary


def test_load_bundle_reads_every_component(tiny_model):
    bundle = load_bundle(tiny_model)
    assert bundle.path == tiny_model.resolve()
    assert bundle.vocabulary == vocabulary()
    assert bundle.scheduler_config["_class_name"] == "DDIMScheduler"
    assert bundle.latent_shape() == (4, 8, 8)
    assert bundle.tokenizer.model_max_length == 16
    for module in (bundle.unet, bundle.vae, bundle.text_encoder):
        assert not module.training
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in module.parameters())


def test_plain_model_has_no_vocabulary(tiny_model_plain):
    assert load_bundle(tiny_model_plain).vocabulary is None


def test_fp16_weights_load_as_fp32(tiny_model_plain, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_plain, local_files_only=True)
    pipe.to(torch.float16).save_pretrained(tmp_path / "fp16")  # as the shipped model is stored
    bundle = load_bundle(tmp_path / "fp16")
    for name in ("unet", "vae", "text_encoder"):
        loaded, stored = getattr(bundle, name), getattr(pipe, name)
        assert loaded.dtype == torch.float32
        for (key, a), b in zip(loaded.state_dict().items(), stored.state_dict().values()):
            assert torch.equal(a, b.float()), key


def test_default_model_path_is_inside_the_package():
    path = default_model_path()
    assert path.parts[-2:] == ("weights", "shapes-t2i")
    assert path.is_relative_to(Path(dpt_t2i.__file__).resolve().parent)


def _without(folder, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    target = copy / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return copy


@pytest.mark.parametrize("missing, named", [
    ("model_index.json", "model_index.json"), ("unet", "unet/"), ("tokenizer", "tokenizer/"),
    ("vae/config.json", "vae/config.json"),
])
def test_check_model_folder_names_the_missing_piece(tiny_model, tmp_path, missing, named):
    with pytest.raises(ValueError) as err:
        check_model_folder(_without(tiny_model, tmp_path, missing))
    message = str(err.value)
    assert named in message and "Stable Diffusion" in message and "\n" not in message


def test_check_model_folder_rejects_missing_path_and_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_model_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_model_folder(tmp_path / "file")


def test_unloadable_weights_give_a_usage_error(tiny_model_plain, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_plain, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="cannot load .*unet"):
        load_bundle(copy)


def test_read_vocabulary_variants(tmp_path):
    assert read_vocabulary(tmp_path) is None
    marker = tmp_path / "shapes_world.json"
    marker.write_text(json.dumps({"world": "shapes", "vocabulary": ["a", "red", "circle"]}))
    assert read_vocabulary(tmp_path) == ("a", "red", "circle")
    marker.write_text(json.dumps({"world": "shapes"}))
    assert read_vocabulary(tmp_path) == vocabulary()
    marker.write_text(json.dumps({"world": "shapes", "vocabulary": "a red"}))
    with pytest.raises(ValueError, match="no list of words"):
        read_vocabulary(tmp_path)
    marker.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        read_vocabulary(tmp_path)
