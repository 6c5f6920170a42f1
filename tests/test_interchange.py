"""DPT LoRA out to diffusers' LoRA format and in from the authors' release layout."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_official_adapter import official_adapter_state, official_lora_state

from dpt_t2i.cli import main
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.io.dpt_folder import LORA_FILE
from dpt_t2i.io.interchange import (DIFFUSERS_LORA_FILE, export_diffusers_lora, official_lora,
                                    read_official_checkpoint)


def test_plain_diffusers_with_the_export_draws_what_dpt_generate_draws(tiny_model, tiny_dpt,
                                                                      tmp_path):
    """rank 2, alpha 4: the export must carry the scale 2 for the images to agree."""
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_model), "--dpt", str(tiny_dpt), "--out",
                 str(out), "--prompt", "two blue squares", "--num-images", "2", "--seed", "11",
                 "--steps", "3", "--guidance", "4.0"]) == 0
    exported = export_diffusers_lora(tiny_dpt, tmp_path / "lora")
    assert exported.name == DIFFUSERS_LORA_FILE

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(tmp_path / "lora")
    base = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    for k, seed in enumerate((11, 12)):
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))
        kwargs = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np")
        theirs = pipe("two blue squares", latents=noise, **kwargs).images[0]
        plain = base("two blue squares", latents=noise, **kwargs).images[0]
        theirs, plain = ((a * 255).round().astype(int) for a in (theirs, plain))
        ours = np.asarray(Image.open(out / f"{k:05d}.png")).astype(int)
        assert np.abs(ours - theirs).max() <= 2
        assert np.abs(ours - plain).max() > 10  # the LoRA matters, so agreement means something


def test_stage_one_folders_have_nothing_to_export(tmp_path):
    from dpt_t2i.io.dpt_folder import save_dpt
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads

    save_dpt(tmp_path / "probe", DPTHeads(AdapterConfig()), DPTConfig())
    with pytest.raises(ValueError, match="stage-1 DPT folder: it has no LoRA"):
        export_diffusers_lora(tmp_path / "probe", tmp_path / "out")


def _official_state(unet, rank=3, seed=0):
    """A state dict in the authors' layout for `unet`: LoRA on every attention layer + adapter."""
    # the tiny U-Net's up1 has 32 channels and its text encoder is 32 wide
    return {**official_lora_state(unet, rank, seed),
            **official_adapter_state(seed, feature_dim=32, clip_dim=32)}


def test_official_layout_becomes_peft_lora_with_the_same_effect(tiny_model, tmp_path):
    unet = load_bundle(tiny_model).unet
    state = _official_state(unet)
    torch.save(state, tmp_path / "pytorch_model.bin")
    lora, rank = official_lora(read_official_checkpoint(tmp_path / "pytorch_model.bin"), unet)
    assert rank == 3
    n_attention = sum(1 for n, _ in unet.named_modules() if n.endswith(("attn1", "attn2")))
    assert len(lora) == n_attention * 4 * 2
    key = next(k for k in state if k.endswith("attn2.processor.to_out_lora.up.weight"))
    ours = key.removeprefix("unet.").replace("processor.to_out_lora.up", "to_out.0.lora_B")
    assert torch.equal(lora[ours], state[key])
    # the legacy processor computes W x + up(down(x)); the imported LoRA must give the same
    attn = key.removeprefix("unet.").split(".processor")[0]
    module = unet.get_submodule(attn).to_out[0]
    x = torch.randn(5, module.in_features)
    down = state[key.replace(".up.", ".down.")]
    expected = module(x) + x @ down.T @ state[key].T
    a, b = lora[ours.replace("lora_B", "lora_A")], lora[ours]
    torch.testing.assert_close(module(x) + x @ a.T @ b.T, expected)


def test_unknown_and_missing_keys_are_named(tiny_model, tmp_path):
    unet = load_bundle(tiny_model).unet
    state = _official_state(unet)
    state["unet.up_blocks.0.attentions.0.transformer_blocks.0.attn3.processor.to_q_lora."
          "down.weight"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"1 keys are neither LoRA .*attn3\.processor"):
        official_lora(state, unet)
    state = _official_state(unet)
    gone = next(k for k in state if "attn1.processor.to_v_lora.up" in k)
    del state[gone]
    with pytest.raises(ValueError, match=rf"1 LoRA keys of this U-Net are missing: {gone}"):
        official_lora(state, unet)


class _Payload:
    pass


def test_bad_checkpoint_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_official_checkpoint(tmp_path / "nope.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"junk.bin with torch.load\(weights_only=True\)"):
        read_official_checkpoint(tmp_path / "junk.bin")
    torch.save({"x": _Payload()}, tmp_path / "object.bin")  # weights_only refuses objects
    with pytest.raises(ValueError, match="object.bin with torch.load"):
        read_official_checkpoint(tmp_path / "object.bin")


@pytest.mark.parametrize("content", ["empty", "random bytes", "pickled object"])
def test_unreadable_checkpoint_is_one_line_naming_the_file(content, tiny_model, tmp_path, capsys,
                                                            monkeypatch):
    """Our own line, not torch's advice to retry with weights_only=False; before the U-Net
    loads, and nothing written."""
    import diffusers

    def not_loaded(*args, **kwargs):
        raise AssertionError("the U-Net loaded before the checkpoint was read")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", not_loaded)
    file = tmp_path / "pytorch_model.bin"
    if content == "pickled object":
        torch.save({"x": _Payload()}, file)
    else:
        file.write_bytes(b"" if content == "empty" else
                         np.random.default_rng(0).bytes(5000))
    code = main(["import-official", str(file), "--model", str(tiny_model), "--out",
                 str(tmp_path / "imported")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    expected = "expected the authors' pytorch_model.bin (a PyTorch checkpoint of tensors only)"
    what = ": the file is empty; " if content == "empty" else \
        " with torch.load(weights_only=True); "
    assert err.startswith("dpt import-official: error: ") and f"{file}{what}{expected}" in err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_model.bin"]


def test_imported_folder_samples_with_the_legacy_lora(tiny_model, tmp_path, capsys):
    """`dpt import-official` then `dpt generate --dpt`: the image of the LoRA'd U-Net, and
    self-correction with the authors' adapter."""
    from dpt_t2i.io.dpt_folder import OFFICIAL_ADAPTER_FILE, load_for_sampling
    from dpt_t2i.model.official_adapter import OfficialHeads

    unet = load_bundle(tiny_model).unet
    state = {k: v * 0.05 if ".processor." in k else v for k, v in _official_state(unet).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    out = tmp_path / "imported"
    assert main(["import-official", str(tmp_path / "pytorch_model.bin"), "--model",
                 str(tiny_model), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dpt_config.json", LORA_FILE, OFFICIAL_ADAPTER_FILE])
    assert set(load_file(out / OFFICIAL_ADAPTER_FILE)) == set(official_adapter_state())
    # the fused import predicts what W x + up(down(x)) on every projection predicts
    fused = load_bundle(tiny_model).unet
    heads, config = load_for_sampling(out, fused)
    assert isinstance(heads, OfficialHeads)
    assert config.lora.rank == 3 and config.lora.targets == "all" and config.condition == "caption"
    legacy = load_bundle(tiny_model).unet
    with torch.no_grad():
        for key, up in state.items():
            m = key.removeprefix("unet.").split(".processor.")
            if len(m) != 2 or not key.endswith("up.weight"):
                continue
            proj = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v",
                    "to_out_lora": "to_out.0"}[m[1].split(".")[0]]
            linear = legacy.get_submodule(f"{m[0]}.{proj}")
            linear.weight += up @ state[key.replace(".up.", ".down.")]
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, 50, encoder_hidden_states=c).sample,
                                   legacy(x, 50, encoder_hidden_states=c).sample,
                                   rtol=1e-4, atol=1e-5)
    gen = ["generate", "--model", str(tiny_model), "--dpt", str(out), "--prompt", "a red circle",
           "--num-images", "1", "--steps", "2"]
    assert main([*gen, "--out", str(tmp_path / "gen")]) == 0
    assert main([*gen, "--out", str(tmp_path / "sc"), "--self-correct", "50",
                 "--self-correct-unit", "raw", "--self-correct-mode", "carry",
                 "--self-correct-range", "0", "1000"]) == 0
    plain = np.asarray(Image.open(tmp_path / "gen" / "00000.png")).astype(int)
    corrected = np.asarray(Image.open(tmp_path / "sc" / "00000.png")).astype(int)
    assert np.abs(plain - corrected).max() > 3
    capsys.readouterr()
    assert main(["evaluate-disc", "--model", str(tiny_model), "--dpt", str(out)]) == 2
    assert "the authors' adapter" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tiny_model, tiny_dpt, tmp_path, capsys):
    assert main(["export-lora", "--dpt", str(tiny_dpt), "--out", str(tmp_path / "lora")]) == 0
    assert (tmp_path / "lora" / DIFFUSERS_LORA_FILE).is_file()
    capsys.readouterr()
    assert main(["export-lora", "--dpt", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a DPT folder" in capsys.readouterr().err
    assert main(["import-official", str(tmp_path / "none.bin"), "--model", str(tiny_model),
                 "--out", str(tmp_path / "imp")]) == 2
    assert "none.bin: " in capsys.readouterr().err and not (tmp_path / "imp").exists()
    assert main(["import-official", str(tmp_path / "none.bin"), "--model", str(tiny_model),
                 "--out", str(tmp_path / "lora")]) == 2
    assert "lora exists" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(["import-official", str(tmp_path / "none.bin"), "--model", str(tiny_model),
                 "--out", str(tmp_path / "a-file" / "below")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and \
        f"--out {tmp_path / 'a-file' / 'below'} lies below {tmp_path / 'a-file'}, a file" in err


def test_imported_adapter_of_another_model_is_refused(tiny_model, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from dpt_t2i.io.dpt_folder import load_for_sampling

    unet = load_bundle(tiny_model).unet
    state = _official_state(unet)
    torch.save({**state, **official_adapter_state(feature_dim=64)}, tmp_path / "wrong.bin")
    assert main(["import-official", str(tmp_path / "wrong.bin"), "--model", str(tiny_model),
                 "--out", str(tmp_path / "wrong")]) == 2
    assert "reads 64 channels; this U-Net's up1 block has 32" in capsys.readouterr().err
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert main(["import-official", str(tmp_path / "pytorch_model.bin"), "--model",
                 str(tiny_model), "--out", str(tmp_path / "imported")]) == 0
    wider = UNet2DConditionModel(  # the tiny U-Net with 64-channel up1
        sample_size=8, block_out_channels=(64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    with pytest.raises(ValueError, match="block of 32 channels; this U-Net's up1 has 64"):
        load_for_sampling(tmp_path / "imported", wider)
