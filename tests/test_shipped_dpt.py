"""The shipped DPT weights of the Shapes model: fp16, recorded, discriminative, and used."""

import json

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from dpt_t2i.cli import main
from dpt_t2i.eval.discriminative import DiscriminativeScorer, evaluate_itm, shapes_itm_item
from dpt_t2i.generation.guidance import SelfCorrection
from dpt_t2i.generation.sampling import initial_latents, make_scheduler, unet_model_fn
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling
from dpt_t2i.model.score import MatchScore

DPT = default_dpt_path()
ITM_FLOOR = 0.6  # OOD overall measured 0.71 on 200 items (RECIPE.md); chance 0.25
PROMPTS = ["a red circle and a blue square", "two green triangles", "a yellow square",
           "three cyan circles"]


def test_fp16_weights_and_recipe():
    """Stage 1's adapter on per-candidate features, and no LoRA (stage 2 gave no gain)."""
    with safe_open(DPT / "heads.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert not (DPT / "lora.safetensors").exists()
    recipe = (DPT / "RECIPE.md").read_text()
    for command in ("dpt probe --run-dir runs/probe-each --condition each --steps 1500",
                    "dpt world ship-dpt", "dpt evaluate-disc", "dpt evaluate"):
        assert command in recipe
    config = json.loads((DPT / "dpt_config.json").read_text())
    assert config["training"]["stage"] == "probe" and config["lora"] is None
    assert config["condition"] == "each" and config["training"]["steps"] == 1500


def test_matching_is_well_above_chance():
    bundle = load_bundle(default_model_path())
    heads, config = load_for_sampling(DPT, bundle.unet)
    scorer = DiscriminativeScorer(bundle, heads, config, timestep=100, seed=1)
    result = evaluate_itm(scorer, [shapes_itm_item(1, i, "ood") for i in range(40)])
    assert result["overall"] >= ITM_FLOOR, result


def test_a_correction_step_raises_the_score_where_it_is_taken():
    """On the shipped model and weights: s(z + eta grad s(z)) > s(z) at t in the default range,
    for each of four prompts on noisy latents of the sampler's start (a first-order check of
    the gradient's sign and scale; the effect on finished images is in docs/dpt-shapes.md)."""
    bundle = load_bundle(default_model_path())
    heads, config = load_for_sampling(DPT, bundle.unet)
    score = MatchScore(bundle, heads, config)
    texts = score.texts(PROMPTS)
    wrapper = SelfCorrection(unet_model_fn(bundle), score, texts, eta=10.0, mode="carry")
    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    scheduler.set_timesteps(25)
    z = initial_latents(list(range(4)), bundle.latent_shape(), scheduler)
    for t in (torch.tensor(601), torch.tensor(401)):
        before = score(z, t, texts).detach()
        moved = z + wrapper.eta * wrapper.gradient(z, t)
        after = score(moved, t, texts).detach()
        assert (after > before).all(), (int(t), before, after)


def test_generate_uses_the_shipped_dpt_by_default(tmp_path):
    """With --model left out or naming the shipped model: DPT + self-correction at the
    defaults; --no-self-correct leaves the adapter-only DPT folder (the base model's image);
    --base turns DPT off."""
    runs = {"default": [], "named": ["--model", str(default_model_path())], "base": ["--base"],
            "plain": ["--no-self-correct"]}
    for name, extra in runs.items():
        assert main(["generate", "--prompt", "a red circle", "--num-images", "1", "--steps",
                     "5", "--out", str(tmp_path / name), *extra]) == 0
    records = {name: json.loads((tmp_path / name / "index.jsonl").read_text()) for name in runs}
    assert records["default"]["method"] == records["named"]["method"] == "dpt+sc"
    assert records["default"]["dpt"] == str(DPT)
    assert {k: records["default"][k] for k in ("eta", "sc_range", "sc_mode", "sc_unit")} == \
        {"eta": 0.1, "sc_range": [400.0, 600.0], "sc_mode": "shared", "sc_unit": "noise"}
    assert records["base"]["method"] == "base" and records["plain"]["method"] == "dpt"
    pixels = {name: np.asarray(Image.open(tmp_path / name / "00000.png")).astype(int)
              for name in runs}
    assert np.array_equal(pixels["plain"], pixels["base"])  # no LoRA: the U-Net is the base's
    assert np.array_equal(pixels["default"], pixels["named"])
    assert np.abs(pixels["default"] - pixels["base"]).max() > 3  # the correction moved it
