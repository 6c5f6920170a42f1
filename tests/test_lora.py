"""LoRA through PEFT: targets, trainable parameters, and the state a checkpoint stores."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from dpt_t2i.model.lora import LoraSettings, LoraWeights, add_lora, target_modules


@pytest.fixture
def unet(tiny_model):
    return UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")


def lora_layers(unet) -> set[str]:
    return {n.split(".lora_A")[0] for n, _ in unet.named_parameters() if ".lora_A" in n}


def test_cross_targets_only_cross_attention_and_all_adds_self_attention(tiny_model):
    cross = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    add_lora(cross, LoraSettings(targets="cross"))
    every = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    add_lora(every, LoraSettings(targets="all"))
    assert cross_layers_are(lora_layers(cross), "attn2")
    assert {n for n in lora_layers(every) if ".attn1." in n}
    assert lora_layers(cross) < lora_layers(every)
    # the tiny U-Net has 4 transformer blocks (down1, mid, 2 in up0) x 4 projections
    assert len(lora_layers(cross)) == 16 and len(lora_layers(every)) == 32


def cross_layers_are(names: set[str], attn: str) -> bool:
    return bool(names) and all(f".{attn}." in n for n in names)


def test_only_lora_trains_and_in_fp32(unet):
    unet.half()
    params = add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    assert len(trainable) == len(params) > 0
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.dtype == torch.float16 for n, p in unet.named_parameters() if "lora_" not in n)


def test_lora_weights_round_trip(tiny_model, unet):
    add_lora(unet, LoraSettings())
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero; make the update non-trivial
    state = LoraWeights(unet).state_dict()
    assert state and all("lora_" in k for k in state)
    other = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    add_lora(other, LoraSettings())
    LoraWeights(other).load_state_dict(state)
    x, t, ehs = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32)
    assert torch.allclose(unet(x, t, ehs).sample, other(x, t, ehs).sample, atol=1e-6)
    assert list(LoraWeights(unet).parameters()) == []  # the wrapper owns nothing


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="targets must be one of cross, all"):
        LoraSettings(targets="self")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoraSettings(rank=0)
    assert target_modules("cross") == ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
