"""Feature taps: the tapped map equals the block's output in a full forward pass."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from dpt_t2i.io.bundle import default_model_path
from dpt_t2i.model.features import block_names, get_block, tap


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)


def test_block_names_follow_the_unet(unet):
    assert block_names(unet) == ["down0", "down1", "mid", "up0", "up1"]
    assert get_block(unet, "down1") is unet.down_blocks[1]
    assert get_block(unet, "up0") is unet.up_blocks[0]
    with pytest.raises(ValueError, match="expected one of down0, down1, mid, up0, up1"):
        get_block(unet, "up7")


@pytest.mark.parametrize("name", ["down0", "down1", "mid", "up0", "up1"])
def test_tap_equals_the_block_output_of_a_full_forward(unet, name):
    x, t, c = _inputs()
    seen = {}
    handle = get_block(unet, name).register_forward_hook(
        lambda m, i, o: seen.__setitem__("out", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=c)
    handle.remove()
    with torch.no_grad():
        early = tap(unet, name, x, t, c)
        full = tap(unet, name, x, t, c, early_exit=False)
    assert torch.equal(early, seen["out"]) and torch.equal(full, seen["out"])
    assert not get_block(unet, name)._forward_hooks  # the tap removed its hook


def test_early_exit_skips_the_rest_of_the_network(unet):
    x, t, c = _inputs()
    calls = []
    handle = unet.conv_out.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        tap(unet, "down1", x, t, c)
        assert calls == []
        tap(unet, "down1", x, t, c, early_exit=False)
        assert calls == [1]
    handle.remove()


def test_features_carry_gradients_to_the_latent(unet):
    x, t, c = _inputs()
    x.requires_grad_(True)
    tap(unet, "mid", x, t, c).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_shipped_unet_blocks_and_shapes():
    unet = UNet2DConditionModel.from_pretrained(default_model_path(), subfolder="unet").eval()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 16, 128)
    shapes = {}
    with torch.no_grad():
        for name in block_names(unet):
            shapes[name] = tuple(tap(unet, name, x, t, c).shape)
    assert shapes == {"down0": (1, 64, 4, 4), "down1": (1, 128, 2, 2), "down2": (1, 128, 2, 2),
                      "mid": (1, 128, 2, 2), "up0": (1, 128, 4, 4), "up1": (1, 128, 8, 8),
                      "up2": (1, 64, 8, 8)}
