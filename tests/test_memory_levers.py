"""The memory and speed switches of training: gradient checkpointing (the same gradients,
through the feature tap's early exit and PEFT LoRA), frozen weights in the training dtype,
TF32 and channels-last."""

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from test_train import probe_config, run, settings

from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.model.features import tap, tap_with_output
from dpt_t2i.model.lora import LoraSettings, add_lora
from dpt_t2i.training.loop import train_dpt


@pytest.fixture
def shipped():
    return default_model_path()


@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one mixed precision a process: start and leave with a fresh state."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _lora_grads(model, checkpointing: bool, monkeypatch) -> tuple[dict, int]:
    """LoRA gradients of a loss read from an early-exit tap and from a full pass, and how
    many checkpointed segments ran."""
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    unet = load_bundle(model).unet
    torch.manual_seed(0)  # LoRA's A matrices start random
    add_lora(unet, LoraSettings(rank=2, alpha=2.0, targets="all"))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 700])
    states = torch.randn(2, 7, 32, generator=gen)
    early = tap(unet, "up0", z, t, states)  # stops after up0: the hook's exception unwinds
    feats, out = tap_with_output(unet, "mid", z, t, states)
    (early.square().mean() + feats.mean() + out.square().mean()).backward()
    monkeypatch.undo()
    return {n: p.grad.clone() for n, p in unet.named_parameters() if "lora_" in n}, len(calls)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_model, monkeypatch):
    plain, none = _lora_grads(tiny_model, False, monkeypatch)
    checkpointed, segments = _lora_grads(tiny_model, True, monkeypatch)
    assert none == 0 and segments >= 6  # resnets and attention blocks, recomputed
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert any(g.abs().sum() > 0 for g in plain.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-7, msg=name)


def test_checkpointed_tuning_trains_the_same_weights(shipped, tmp_path, monkeypatch):
    from shapes_model.resume import assert_identical

    calls, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    config = probe_config()
    config.lora = LoraSettings(rank=2, alpha=2.0, targets="all")
    for name, flag in (("plain", False), ("checkpointed", True)):
        run(shipped, tmp_path / name, config,
            settings(stage="tune", steps=2, mse_weight=1.0, gradient_checkpointing=flag))
        assert bool(calls) == flag
    assert_identical(tmp_path / "plain" / "final", tmp_path / "checkpointed" / "final")


def test_mixed_precision_stores_the_frozen_weights_in_it(shipped, tmp_path, fresh_accelerator):
    bundle = load_bundle(shipped)
    config = probe_config()
    config.lora = LoraSettings(rank=2, alpha=2.0)
    summary = train_dpt(tmp_path / "run", bundle, _shapes(), config,
                        settings(stage="tune", steps=1, mixed_precision="bf16"),
                        show_progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_losses"].values())
    frozen = {p.dtype for n, p in bundle.unet.named_parameters() if "lora_" not in n}
    trained = {p.dtype for n, p in bundle.unet.named_parameters() if "lora_" in n}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert bundle.vae.dtype == torch.bfloat16 and bundle.text_encoder.dtype == torch.bfloat16
    heads = load_file(tmp_path / "run" / "final" / "heads.safetensors")
    assert {v.dtype for v in heads.values()} == {torch.float32}


def test_tf32_and_channels_last_switches(shipped, tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    bundle = load_bundle(shipped)
    try:
        train_dpt(tmp_path / "run", bundle, _shapes(), probe_config(),
                  settings(steps=1, allow_tf32=True, channels_last=True), show_progress=False)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    conv = bundle.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert bundle.unet.dtype == torch.float32  # no mixed precision: nothing cast


def _shapes():
    from dpt_t2i.data.sources import ShapesSource

    return ShapesSource()
