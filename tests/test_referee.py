"""The referee optimisation core: schedules, augmented views, the hardest-view loss, the
balance of the two gradients, and EMA restarts."""

from __future__ import annotations

import pytest
import torch

from dpt_t2i.generation.referee import (RefereeSettings, augment, border_colour, cosine, optimise,
                                        referee_loss, sds_timesteps)


def test_cosine_runs_from_start_to_end():
    assert cosine(0, 160, 1.0, 0.5) == 1.0
    assert abs(cosine(159, 160, 1.0, 0.5) - 0.5) < 1e-12
    assert abs(cosine(79.5, 160, 1.0, 0.5) - 0.75) < 1e-12  # the middle
    values = [cosine(i, 10, 800, 400) for i in range(10)]
    assert values == sorted(values, reverse=True)


def test_views_are_seeded_differentiable_and_in_range():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images.requires_grad_(True)
    a = augment(images, 5, torch.Generator().manual_seed(0))
    b = augment(images, 5, torch.Generator().manual_seed(0))
    c = augment(images, 5, torch.Generator().manual_seed(1))
    assert a.shape == (10, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    a.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # views differ from each other and from the image, but keep most of it
    flat = a.detach().view(5, 2, -1)
    assert not torch.allclose(flat[0], flat[1])
    corr = torch.corrcoef(torch.stack([flat[0, 0], images.detach().view(2, -1)[0]]))[0, 1]
    assert corr > 0.3


def test_the_loss_reads_the_hardest_views():
    settings = RefereeSettings(views=6, top_k=2)
    images = torch.zeros(1, 3, 8, 8)
    seen = []

    def scorer(x, prompts):
        scores = torch.arange(len(x), dtype=torch.float32) * 0.1  # view v scores 0.1 v
        seen.append(len(prompts))
        return scores + 0 * x.sum()

    loss = referee_loss(scorer, images, ["p"], settings, torch.Generator().manual_seed(0))
    assert seen == [6] and torch.allclose(loss, torch.tensor([-0.05]))  # mean of 0.0 and 0.1
    off = RefereeSettings(augment=False)
    assert torch.allclose(referee_loss(scorer, images, ["p"], off, torch.Generator()),
                          torch.tensor([0.0]))


def _target_scorer(target):
    def scorer(x, prompts):
        return -((x - target) ** 2).mean((1, 2, 3))
    return scorer


def test_the_referee_alone_climbs_its_score():
    target = torch.full((1, 3, 8, 8), 0.5)
    settings = RefereeSettings(iterations=30, lr=20.0, lr_end=10.0, augment=False, sds=False,
                               ema=False)
    history = []
    out = optimise(torch.tanh, _target_scorer(target), ["p"], torch.zeros(1, 3, 8, 8), settings,
                   torch.Generator().manual_seed(0), history=history)
    assert history[-1]["score"] > history[0]["score"] + 0.2
    assert torch.allclose(torch.tanh(out), target, atol=0.05)


def test_the_referee_gradient_takes_the_sds_gradients_norm():
    settings = RefereeSettings(iterations=1, lr=1.0, lr_end=1.0, augment=False, ema=False,
                               sds_weight=64.0, sds_weight_end=64.0, referee_weight=2.0)
    sds_grad = torch.zeros(1, 1, 4, 4)
    sds_grad[0, 0, 0, 0] = 3.0  # weighted: 64 * 3 / 16 = 12, norm 12

    def scorer(x, prompts):
        return x[:, 0, 3, 3] * 1e-3  # a tiny referee gradient on one other element

    start = torch.zeros(1, 1, 4, 4)
    out = optimise(lambda z: z, scorer, ["p"], start, settings, torch.Generator(),
                   sds=lambda z, i: sds_grad)
    step = start - out  # SGD: z - lr * grad
    assert abs(float(step[0, 0, 0, 0]) - 12.0) < 1e-5
    assert abs(float(step[0, 0, 3, 3]) + 24.0) < 1e-4  # ascent, 2 x the SDS norm


def test_ema_starts_and_restarts_on_schedule():
    settings = RefereeSettings(iterations=12, lr=1.0, lr_end=1.0, augment=False, sds=False,
                               ema_start=3, ema_restart=4, ema_decay=0.5)
    history = []
    optimise(lambda z: z, lambda x, p: x.mean((1, 2, 3)), ["p"], torch.zeros(1, 1, 2, 2),
             settings, torch.Generator(), history=history)
    assert [r["iteration"] for r in history if r.get("restart")] == [7, 11]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sds_of_a_model_that_knows_the_answer_is_zero_and_weighs_by_time(prediction):
    """A U-Net that returns the true noise (or velocity) of z_t = add(z_0, t, eps) leaves no
    SDS gradient at any guidance; one that is off by d gives w(t) d (1 - abar_t, or 1)."""
    from types import SimpleNamespace

    from dpt_t2i.generation.referee import sds_gradient
    from dpt_t2i.model.latents import Noiser

    noiser = Noiser({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                     "num_train_timesteps": 1000, "prediction_type": prediction})
    z0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    abar = noiser.alphas_cumprod[t].view(-1, 1, 1, 1)

    def unet(offset):
        def call(x, steps, context):
            a = torch.cat([abar, abar])
            eps = (x - a.sqrt() * torch.cat([z0, z0])) / (1 - a).sqrt()
            out = eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * \
                torch.cat([z0, z0])
            return SimpleNamespace(sample=out + offset)
        call.dtype = torch.float32
        return call

    cond, uncond = torch.zeros(2, 3, 8), torch.ones(2, 3, 8)
    exact = sds_gradient(unet(0.0), noiser, z0, cond, uncond, t, 7.5, torch.Generator())
    assert exact.abs().max() < 1e-4
    off = 0.1 if prediction == "epsilon" else 0.1 / abar.sqrt().repeat(2, 1, 1, 1)
    for weight, want in (("noise-variance", 0.1 * (1 - abar)), ("constant", 0.1),
                         ("x0", 0.1 * ((1 - abar) / abar).sqrt())):
        got = sds_gradient(unet(off), noiser, z0, cond, uncond, t, 7.5, torch.Generator(),
                           time_weight=weight)
        assert torch.allclose(got, torch.as_tensor(want).expand_as(got), atol=1e-4)


def test_the_papers_settings_are_the_authors_code_in_our_terms():
    """Pepper-lll/VLMinv generate.py: sd_weight 800 -> 400 on sum(2 (eps_hat - eps) z) / (h w)
    takes a step of 800 x 2 / (64 x 64) per element of SD's 4 x 64 x 64 latent, as our mean
    over all 4 x 64 x 64 elements does at 6400; all 10 views; blip_weight 2."""
    from dpt_t2i.generation.referee import PAPER_SETTINGS

    p = PAPER_SETTINGS
    assert p.sds_weight / (4 * 64 * 64) == 800 * 2 / (64 * 64)
    assert p.sds_weight_end / (4 * 64 * 64) == 400 * 2 / (64 * 64)
    assert (p.init, p.iterations, p.lr, p.lr_end, p.views, p.top_k, p.referee_weight,
            p.guidance, p.t_min, p.t_max, p.ema_decay, p.sds_time_weight) == \
        ("noise", 160, 1.0, 0.5, 10, 10, 2.0, 30.0, 50, 950, 0.95, "constant")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="top_k"):
        RefereeSettings(views=4, top_k=5)
    with pytest.raises(ValueError, match="t_min"):
        RefereeSettings(t_min=900, t_max=100)
    with pytest.raises(ValueError, match="init must be one of noise, sample"):
        RefereeSettings(init="canvas")
    with pytest.raises(ValueError, match="sds_time_weight must be one of noise-variance, "
                                         "constant, x0"):
        RefereeSettings(sds_time_weight="linear")
    with pytest.raises(ValueError, match="t_schedule must be one of random, anneal"):
        RefereeSettings(t_schedule="cosine")
    with pytest.raises(ValueError, match="fill must be one of grey, border"):
        RefereeSettings(fill="black")
    with pytest.raises(ValueError, match="referee_start must be in \\[0, iterations\\), got 160"):
        RefereeSettings(referee_start=160)


def test_border_fill_shows_the_background_where_grey_fill_shows_grey():
    """A shape on a flat background: with fill "border" a view holds no pixel that is neither
    (up to the view's colour jitter), with "grey" the corners the affine map uncovers are grey;
    "grey" is the fill the views always had."""
    images = torch.full((1, 3, 32, 32), 0.92)  # the Shapes world's (245, 245, 245)
    images[:, 0, 12:20, 12:20], images[:, 1:, 12:20, 12:20] = 1.0, -1.0  # a red square
    assert torch.allclose(border_colour(images), torch.full((1, 3, 1, 1), 0.92))
    grey = augment(images, 8, torch.Generator().manual_seed(0))
    assert torch.equal(grey, augment(images, 8, torch.Generator().manual_seed(0), "grey"))
    border = augment(images, 8, torch.Generator().manual_seed(0), "border")
    # per view, how far pixels are from its brightest (background) level: grey leaves many
    # mid-grey pixels, border none beyond the square's red
    def dark_greys(views):
        level = views.amax((1, 2, 3), keepdim=True)
        spread = views.amax(1) - views.amin(1)  # 0 for grey pixels, large for red
        return ((level[:, 0] - views.mean(1) > 0.5) & (spread < 0.2)).float().mean()
    assert dark_greys(grey) > 0.02 and dark_greys(border) == 0
    with pytest.raises(ValueError, match="fill must be one of grey, border"):
        augment(images, 2, torch.Generator(), "white")


def test_annealed_timesteps_step_from_t_max_to_t_min():
    settings = RefereeSettings(iterations=5, t_schedule="anneal", t_min=50, t_max=950)
    ts = [int(sds_timesteps(settings, i, 3, torch.Generator())[0]) for i in range(5)]
    assert ts == [950, 725, 500, 275, 50]
    assert sds_timesteps(settings, 2, 3, torch.Generator()).tolist() == [500] * 3
    top = RefereeSettings(iterations=2, t_schedule="anneal", t_max=1000)
    assert int(sds_timesteps(top, 0, 1, torch.Generator())[0]) == 999  # the last timestep
    drawn = sds_timesteps(RefereeSettings(t_min=100, t_max=200), 0, 500,
                          torch.Generator().manual_seed(0))
    assert drawn.min() >= 100 and drawn.max() < 200 and len(set(drawn.tolist())) > 50


def test_the_referee_joins_at_referee_start():
    settings = RefereeSettings(iterations=6, lr=1.0, lr_end=1.0, augment=False, ema=False,
                               referee_start=4)
    calls = []

    def scorer(x, prompts):
        calls.append(1)
        return x.mean((1, 2, 3))

    history = []
    out = optimise(lambda z: z, scorer, ["p"], torch.zeros(1, 1, 2, 2), settings,
                   torch.Generator(), sds=lambda z, i: torch.full_like(z, 4.0), history=history)
    assert len(calls) == 2 and [("score" in r) for r in history] == [False] * 4 + [True] * 2
    # SDS gradient w_i per element (w_i x 4 over 4 elements); from iteration 4 the referee's
    # ascent of the mean, rescaled to the SDS norm, is -w_i per element and cancels it
    moved = sum(cosine(i, 6, 800.0, 400.0) for i in range(4))
    assert torch.allclose(out, torch.full_like(out, -moved))


@pytest.mark.parametrize("kind", ["clip", "dpt"])
def test_shipped_referees_prefer_the_matching_render_and_give_gradients(kind):
    from dpt_t2i.data.samples import images_to_tensor
    from dpt_t2i.data.shapes.grammar import parse_prompt, scene_for
    from dpt_t2i.data.shapes.world import render
    from dpt_t2i.generation.referee import clip_scorer, dpt_scorer

    prompts = ["a red circle", "a blue square"]
    rng = __import__("numpy").random.default_rng(0)
    images = images_to_tensor([render(scene_for(parse_prompt(p), rng)) for p in prompts])
    if kind == "clip":
        from transformers import CLIPModel, CLIPTokenizer

        from dpt_t2i.io.clip import CLIP_FOLDER

        scorer = clip_scorer(CLIPModel.from_pretrained(CLIP_FOLDER).eval(),
                             CLIPTokenizer.from_pretrained(CLIP_FOLDER))
    else:
        from dpt_t2i.io.bundle import default_model_path, load_bundle
        from dpt_t2i.io.dpt_folder import default_dpt_path, load_for_sampling

        bundle = load_bundle(default_model_path())
        heads, config = load_for_sampling(default_dpt_path(), bundle.unet)
        scorer = dpt_scorer(bundle, heads, config)
    images.requires_grad_(True)
    right = scorer(images, prompts)
    swapped = scorer(images, prompts[::-1])
    assert (right > swapped).all()
    right.sum().backward()
    assert images.grad.abs().sum() > 0


def _dpt(*argv) -> int:
    from dpt_t2i.cli import main

    return main([str(a) for a in argv])


def test_referee_command_writes_a_generate_style_folder(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    quick = ["--prompt", "a red circle", "--prompt", "two blue squares", "--num-images", 1,
             "--iterations", 3, "--views", 2, "--top-k", 1, "--ema-start", 1, "--ema-restart", 1]
    assert _dpt("referee", *quick, "--out", tmp_path / "a") == 0
    assert _dpt("referee", *quick, "--out", tmp_path / "b") == 0
    assert _dpt("referee", *quick, "--referee", "clip", "--no-sds", "--out", tmp_path / "c") == 0
    records = [json.loads(x) for x in (tmp_path / "a" / "index.jsonl").read_text().splitlines()]
    assert [(r["file"], r["seed"], r["method"], r["referee"]) for r in records] == [
        ("00000.png", 0, "referee", "dpt"), ("00001.png", 1, "referee", "dpt")]
    assert records[0]["iterations"] == 3 and records[0]["sds"] is True
    # the Shapes preset fills what the flags leave: start from the sample, low-noise SDS
    assert (records[0]["init"], records[0]["t_max"], records[0]["sds_weight"]) == \
        ("sample", 500, 12.5)
    a = np.asarray(Image.open(tmp_path / "a" / "00000.png"))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / "00000.png")))  # seeded
    capsys.readouterr()
    assert _dpt("evaluate", tmp_path / "a", "--json") == 0
    assert json.loads(capsys.readouterr().out)["folders"][str(tmp_path / "a")]["id"]["n"] == 2


def test_init_noise_takes_the_shapes_from_noise_preset(tmp_path):
    """On the shipped model `--init noise` brings the other settings measured with it (an
    annealed x0-weighted SDS, no EMA); flags still win."""
    import json

    from dpt_t2i.generation.referee import SHAPES_NOISE_SETTINGS

    assert _dpt("referee", "--prompt", "a red circle", "--num-images", 1, "--init", "noise",
                "--iterations", 3, "--referee-start", 1, "--views", 2, "--top-k", 1,
                "--referee", "shapes-itm", "--out", tmp_path / "n") == 0
    record = json.loads((tmp_path / "n" / "index.jsonl").read_text().splitlines()[0])
    p = SHAPES_NOISE_SETTINGS
    assert (record["init"], record["t_schedule"], record["sds_time_weight"], record["ema"],
            record["fill"], record["sds_weight"], record["iterations"],
            record["referee_start"]) == \
        ("noise", "anneal", "x0", False, "border", p.sds_weight, 3, 1)
    assert (p.ema, p.iterations, p.referee_start) == (False, 160, 0)


def test_the_shapes_referee_moves_the_latent(tmp_path, capsys):
    """--referee shapes-itm: the shipped Shapes referee steers the start (no SDS, so only the
    referee moves it); that its gradient raises its score is tests/test_shipped_referee.py's."""
    import json

    import numpy as np
    from PIL import Image

    argv = ["--prompt", "two green triangles", "--num-images", 2, "--referee", "shapes-itm",
            "--no-sds", "--views", 2, "--top-k", 1, "--ema-start", 1, "--ema-restart", 1]
    assert _dpt("referee", *argv, "--iterations", 1, "--lr", 0, "--lr-end", 0,
                "--out", tmp_path / "start") == 0
    assert _dpt("referee", *argv, "--iterations", 8, "--out", tmp_path / "moved") == 0
    record = json.loads((tmp_path / "moved" / "index.jsonl").read_text().splitlines()[0])
    assert record["referee"] == "shapes-itm" and "referee_model" not in record
    for k in (0, 1):
        start, moved = (np.asarray(Image.open(tmp_path / f / f"{k:05d}.png")).astype(int)
                        for f in ("start", "moved"))
        assert np.abs(moved - start).max() > 10


def test_the_shapes_referee_needs_a_shapes_model_and_a_whole_folder(tiny_model_plain, tmp_path,
                                                                      capsys):
    (tmp_path / "broken").mkdir()
    for extra, message in ((["--model", tiny_model_plain], "is not a Shapes model"),
                           (["--referee-model", tmp_path / "broken"], "--referee-model: ")):
        assert _dpt("referee", "--prompt", "a red circle", "--referee", "shapes-itm", *extra,
                    "--out", tmp_path / "x") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "x").exists()


def test_reference_settings_and_flags_override_the_preset(tmp_path):
    import json

    argv = ["--prompt", "a red circle", "--num-images", 1, "--iterations", 2, "--views", 2,
            "--top-k", 1, "--reference-settings", "--guidance", 7.5, "--out", tmp_path / "r"]
    assert _dpt("referee", *argv) == 0
    record = json.loads((tmp_path / "r" / "index.jsonl").read_text())
    assert (record["init"], record["t_max"], record["sds_weight"], record["guidance"],
            record["iterations"]) == ("noise", 950, 800.0, 7.5, 2)


def test_a_sample_start_is_dpt_generates_image():
    """With no step taken (lr 0), init="sample" returns the DDIM sample of the seeds' noise,
    which is what `dpt generate` draws for them."""
    from dpt_t2i.generation.referee import generate
    from dpt_t2i.generation.sampling import encode_prompts, initial_latents, make_scheduler, sample
    from dpt_t2i.io.bundle import default_model_path, load_bundle

    bundle = load_bundle(default_model_path())
    prompts, seeds = ["a red circle", "three blue squares"], [5, 9]
    settings = RefereeSettings(init="sample", init_steps=4, iterations=1, lr=0, lr_end=0,
                               views=2, top_k=1, ema=False)

    def flat(images, prompts):
        return images.mean((1, 2, 3))

    got = generate(bundle, flat, prompts, seeds, settings)
    scheduler = make_scheduler("ddim", bundle.scheduler_config)
    scheduler.set_timesteps(4)
    want = sample(bundle, encode_prompts(bundle, prompts), encode_prompts(bundle, ["", ""]),
                  initial_latents(seeds, bundle.latent_shape(), scheduler), 4, 7.5, scheduler)
    assert torch.allclose(got, want, atol=1e-5)
    moved = generate(bundle, flat, prompts, seeds, RefereeSettings(
        init="sample", init_steps=4, iterations=2, views=2, top_k=1, ema=False))
    assert not torch.allclose(moved, want, atol=1e-3)


@pytest.mark.parametrize("extra,message", [
    (["--referee", "clip", "--dpt", "x"], "drop --dpt"),
    (["--init-steps", 0], "init_steps"),
    (["--views", 2, "--top-k", 3], "top_k"),
    (["--lr", "nan"], "--lr must be finite"),
    (["--num-images", 0], "--num-images"),
    (["--prompt", "a purple dog"], "not in the vocabulary"),
])
def test_referee_command_errors(tmp_path, capsys, extra, message):
    argv = ["--out", tmp_path / "x", *extra]
    if "--prompt" not in extra:
        argv = ["--prompt", "a red circle", *argv]
    assert _dpt("referee", *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


QUICK = ["--prompt", "a red circle", "--num-images", 3, "--batch-size", 1, "--iterations", 2,
         "--views", 2, "--top-k", 1, "--ema-start", 1, "--ema-restart", 1]


def test_referee_resume_makes_only_the_missing_images(tmp_path, capsys, monkeypatch):
    from dpt_t2i.generation import referee_folder

    written = []

    def interrupted_at_image_1(path, image, write=referee_folder.write_png):
        if written:
            raise KeyboardInterrupt
        write(path, image)
        written.append(path)

    monkeypatch.setattr(referee_folder, "write_png", interrupted_at_image_1)
    assert _dpt("referee", *QUICK, "--out", tmp_path / "run" / "out") == 130
    monkeypatch.undo()
    stage = tmp_path / "run" / ".out.partial"
    assert (stage / "index.jsonl").read_text().count("\n") == 1  # image 0 kept
    assert _dpt("referee", *QUICK, "--iterations", 3, "--out", tmp_path / "run" / "out",
                "--resume") == 2
    assert "planned with other settings (00000.png: iterations 2 then, 3 now)" in \
        capsys.readouterr().err
    made = []
    monkeypatch.setattr(referee_folder, "write_png",
                        lambda path, image, write=referee_folder.write_png:
                        made.append(path.name) or write(path, image))
    assert _dpt("referee", *QUICK, "--out", tmp_path / "run" / "out", "--resume") == 0
    assert made == ["00001.png", "00002.png"]
    monkeypatch.undo()
    assert _dpt("referee", *QUICK, "--out", tmp_path / "whole") == 0
    for name in ("00000.png", "00001.png", "00002.png", "index.jsonl"):
        assert (tmp_path / "run" / "out" / name).read_bytes() == \
            (tmp_path / "whole" / name).read_bytes()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["out"]


def test_referee_second_writer_is_refused(tmp_path, capsys):
    from dpt_t2i.io.folder_writer import output_lock

    with output_lock(tmp_path / "out"):
        assert _dpt("referee", *QUICK, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is being written by another run" in err
    assert list(tmp_path.iterdir()) == []
