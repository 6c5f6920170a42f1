"""DPT folders (save / load / errors) and the REC query choice."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from dpt_t2i.io.dpt_folder import CONFIG_FILE, load_dpt, read_dpt_config, save_dpt
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.heads import DPTHeads, rec_choice
from dpt_t2i.model.lora import LoraSettings, LoraWeights, add_lora

SMALL = AdapterConfig(feature_dim=64, text_dim=32, d_model=32, n_heads=2, ffn_dim=64,
                      n_ground_queries=4, n_match_queries=2, max_hw=8)


def test_probe_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    heads = DPTHeads(SMALL)
    config = DPTConfig(block="up0", condition="caption", adapter=SMALL)
    save_dpt(tmp_path / "dpt", heads, config, extra={"steps": 3})
    loaded, config2 = load_dpt(tmp_path / "dpt")
    assert config2 == config and not loaded.training
    for (k, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert json.loads((tmp_path / "dpt" / CONFIG_FILE).read_text())["training"] == {"steps": 3}
    assert not (tmp_path / "dpt" / "lora.safetensors").exists()


def test_tune_folder_carries_lora_into_a_fresh_unet(tiny_model, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    add_lora(unet, LoraSettings(targets="all"))
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_()
    config = DPTConfig(block="up0", adapter=SMALL, lora=LoraSettings(targets="all"))
    save_dpt(tmp_path / "dpt", DPTHeads(SMALL), config, unet)
    fresh = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    _, loaded_config = load_dpt(tmp_path / "dpt", fresh)
    assert loaded_config.lora == LoraSettings(targets="all")
    a, b = LoraWeights(unet).state_dict(), LoraWeights(fresh).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in fresh.parameters())


def test_save_is_atomic_and_replaces(tmp_path):
    folder = tmp_path / "dpt"
    save_dpt(folder, DPTHeads(SMALL), DPTConfig(adapter=SMALL))
    with pytest.raises(ValueError, match="no U-Net"):
        save_dpt(folder, DPTHeads(SMALL), DPTConfig(adapter=SMALL, lora=LoraSettings()))
    assert read_dpt_config(folder).lora is None  # the failed write left the old folder intact
    assert [p.name for p in tmp_path.iterdir()] == ["dpt"]  # no temporary folder left behind


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a DPT folder: it has no dpt_config.json"):
        read_dpt_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"block": "up1"}))
    with pytest.raises(ValueError, match="not a valid DPT config"):
        read_dpt_config(tmp_path)
    with pytest.raises(ValueError, match="condition must be one of empty, caption"):
        DPTConfig(condition="prompt")
    with pytest.raises(ValueError, match="ground_condition must be one of expression, empty"):
        DPTConfig(ground_condition="caption")


def test_rec_choice_uses_probability_and_semantics():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two expressions
    embeds = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]] * 2)  # (2, 3, 2)
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0]])
    # query 2 matches expression 0 semantically but its probability is low
    assert rec_choice({"ground_logits": logits, "ground_embeds": embeds}, y).tolist() == [0, 1]
    logits = torch.tensor([[-5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])
    assert rec_choice({"ground_logits": logits, "ground_embeds": embeds}, y).tolist() == [2, 1]


def test_half_copy_stores_fp16_and_loads_back(tiny_model, tiny_dpt, tmp_path):
    from safetensors.torch import load_file

    from dpt_t2i.cli import main
    from dpt_t2i.io.dpt_folder import HEADS_FILE, LORA_FILE

    assert main(["world", "ship-dpt", "--dpt", str(tiny_dpt), "--out",
                 str(tmp_path / "ship")]) == 0
    for name in (HEADS_FILE, LORA_FILE):
        full, half = load_file(tiny_dpt / name), load_file(tmp_path / "ship" / name)
        assert full.keys() == half.keys()
        assert all(half[k].dtype == torch.float16 for k in half if half[k].is_floating_point())
        assert all(torch.allclose(full[k], half[k].float(), rtol=1e-3, atol=1e-4) for k in full)
    heads, config = load_dpt(tmp_path / "ship", UNet2DConditionModel.from_pretrained(
        tiny_model, subfolder="unet"))
    assert config == read_dpt_config(tiny_dpt)
    assert all(p.dtype == torch.float32 for p in heads.parameters())
    assert main(["world", "ship-dpt", "--dpt", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
