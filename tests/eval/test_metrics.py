"""CLIPScore, FID and IS through torchmetrics in `dpt evaluate`, from tiny local weights.

The weights are made here: a tiny random transformers CLIP (hand-built BPE tokenizer) saved
with save_pretrained, and a random Inception-v3 state dict saved as torch-fidelity's weights
file is. Every number is checked against the same quantity computed by hand from the same
networks. Sockets are closed for every test: a download attempt fails loudly.
"""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchmetrics")

from dpt_t2i.cli import main  # noqa: E402
from dpt_t2i.eval.inception import InceptionV3, load_inception  # noqa: E402
from dpt_t2i.eval.metrics import reference_images  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel + CLIPProcessor folder; the tokenizer knows letters and "dog".

    Both towers' last layer norms are pushed towards one shared direction, so every
    image-prompt cosine is positive (CLIPScore's clamp at 0 never hides the value) yet differs.
    """
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = [("o", "g</w>"), ("d", "og</w>")]
    pieces = letters + [c + "</w>" for c in letters] + ["og</w>", "dog</w>"]
    vocab = {p: i for i, p in enumerate(pieces)}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=eos, bos_token=bos,
                              eos_token=eos, pad_token=eos, model_max_length=128)
    images = CLIPImageProcessor(size={"shortest_edge": 32},
                                crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                         bos_token_id=vocab[bos], eos_token_id=vocab[eos],
                         pad_token_id=vocab[eos]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16))
    with torch.no_grad():  # both towers end near one shared direction: every cosine is > 0
        for norm in (model.text_model.final_layer_norm, model.vision_model.post_layernorm):
            norm.weight.fill_(0.3)
            norm.bias.fill_(1.0)
        model.visual_projection.weight.copy_(model.text_projection.weight)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A random Inception-v3 saved as torch-fidelity's file is (a plain dict of tensors without
    batch norm counters), scaled so features and logits differ between images."""
    torch.manual_seed(0)
    net = InceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):  # keeps activations O(1) through the 94 layers
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.nn.init.normal_(net.fc.weight, std=3.0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in net.state_dict().items()
                if not k.endswith("num_batches_tracked")}, path)
    return path


def _image(kind: int) -> np.ndarray:
    """A 32x32 RGB test image: colour blocks and stripes that differ with `kind`."""
    rng = np.random.default_rng(kind)
    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    image[:, rng.integers(0, 16):rng.integers(16, 32)] = rng.integers(0, 256, 3)
    image[::rng.integers(2, 6)] = rng.integers(0, 256, 3)
    return image


def _folder(path, kinds, prompts):
    """A `dpt generate`-like folder: PNGs of `_image(kind)` and index.jsonl with the prompts."""
    path.mkdir()
    records = []
    for i, (kind, prompt) in enumerate(zip(kinds, prompts)):
        Image.fromarray(_image(kind)).save(path / f"{i:05d}.png")
        records.append({"file": f"{i:05d}.png", "prompt": prompt, "seed": i})
    (path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


PHOTO_PROMPTS = ["a photo of a dog", "a dog on grass", "a red dog", "two dogs", "a cat"]


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """Two folders of non-Shapes prompts ("photos", "others") and the FID reference: copies of
    the "photos" images."""
    root = tmp_path_factory.mktemp("photos")
    photos = _folder(root / "photos", range(5), PHOTO_PROMPTS)
    others = _folder(root / "others", range(100, 104), PHOTO_PROMPTS[:4])
    reference = root / "reference"
    reference.mkdir()
    for png in sorted(photos.glob("*.png")):
        (reference / f"ref-{png.name}").write_bytes(png.read_bytes())
    return {"photos": photos, "others": others, "reference": reference}


def _evaluate(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _clip_by_hand(clip_folder, folder):
    """max(100 * mean cos(image embed, text embed), 0), one image and prompt at a time through
    CLIPModel.forward (its normalised image_embeds / text_embeds)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(clip_folder, local_files_only=True)
    cosines = []
    for line in (folder / "index.jsonl").read_text().splitlines():
        record = json.loads(line)
        inputs = processor(text=[record["prompt"]], images=[Image.open(folder / record["file"])],
                           return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
        cosines.append(float((out.image_embeds * out.text_embeds).sum()))
    return max(100 * float(np.mean(cosines)), 0.0), cosines


def _pool_by_hand(weights, folder, pattern="*.png"):
    net = load_inception(weights)
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
              for p in sorted(folder.glob(pattern))]
    return net(torch.stack(images)).double().numpy(), net


def _fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """FID of feature sets (N, D), (M, D) with N, M << D: Tr (S_a S_b)^1/2 is the nuclear norm of
    A B^T / sqrt((N - 1)(M - 1)) for the centred sets A, B (S_a = A^T A / (N - 1))."""
    a_c, b_c = a - a.mean(0), b - b.mean(0)
    nuclear = np.linalg.svd(a_c @ b_c.T, compute_uv=False).sum()
    cross = nuclear / np.sqrt((len(a) - 1) * (len(b) - 1))
    trace = (a_c ** 2).sum() / (len(a) - 1) + (b_c ** 2).sum() / (len(b) - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + trace - 2 * cross)


def _is_by_hand(logits: np.ndarray) -> float:
    """exp(mean_i KL(p_i || mean p)) in one split."""
    log_p = torch.from_numpy(logits).log_softmax(1)
    log_mean = log_p.exp().mean(0).log()
    return float((log_p.exp() * (log_p - log_mean)).sum(1).mean().exp())


def test_clipscore_fid_and_is_equal_hand_computations(clip_folder, inception_weights,
                                                      photo_folders, capsys):
    photos, others = photo_folders["photos"], photo_folders["others"]
    code, out, err = _evaluate(capsys, photos, others, "--json", "--clip-model", clip_folder,
                               "--inception-weights", inception_weights,
                               "--fid-reference", photo_folders["reference"])
    assert code == 0, err
    result = json.loads(out)
    assert result["skipped"] == {}
    table = {folder: rows["other"] for folder, rows in result["folders"].items()}
    assert list(table) == [str(photos), str(others)]
    assert f"{photos}/index.jsonl: prompt 'a photo of a dog' of 00000.png is not a Shapes " \
           "prompt" in err
    assert f"{photos}: 5 images have prompts that are not Shapes prompts" in err
    assert "the Shapes judge skips them, the standard metrics measure them in the row " \
           "'other'" in err
    pools = {}
    for folder, n in ((photos, 5), (others, 4)):
        row = table[str(folder)]
        assert set(row) == {"n", "clip_score", "is", "is_std", "fid"} and row["n"] == n
        expected, cosines = _clip_by_hand(clip_folder, folder)
        assert row["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert 0 < min(cosines) and max(cosines) < 1 and len(set(np.round(cosines, 6))) == n
        pools[folder], net = _pool_by_hand(inception_weights, folder)
        logits = pools[folder] @ net.fc.weight.double().numpy().T
        assert row["is"] == pytest.approx(_is_by_hand(logits), rel=1e-6)
        assert row["is"] > 1.05 and row["is_std"] is None  # < 100 images: one split
    reference = pools[photos]  # the reference folder holds the same PNGs
    scale = 2 * reference.var(0, ddof=1).sum()  # Tr S + Tr S', about 100 here
    assert abs(table[str(photos)]["fid"]) < 1e-5 * scale  # itself: 0 up to eigvals round-off
    far = _fid_by_hand(pools[others], reference)
    assert _fid_by_hand(reference, reference) == pytest.approx(0, abs=1e-9)
    assert far > 1.0 and table[str(others)]["fid"] == pytest.approx(far, rel=1e-4)


def test_identical_images_score_is_one(inception_weights, tmp_path, capsys):
    folder = _folder(tmp_path / "same", [7] * 4, ["a dog"] * 4)
    code, out, err = _evaluate(capsys, folder, "--json", "--inception-weights", inception_weights)
    assert code == 0, err
    assert json.loads(out) == {"folders": {str(folder): {"other": {
        "n": 4, "is": pytest.approx(1.0, abs=1e-6), "is_std": None}}}, "skipped": {}}


def test_shapes_folders_keep_their_judge_and_gain_a_column(clip_folder, judged_folders,
                                                           photo_folders, capsys):
    clean, photos = judged_folders["clean"], photo_folders["photos"]
    code, out, err = _evaluate(capsys, clean, "--json", "--clip-model", clip_folder)
    assert code == 0 and "note" not in err
    table = json.loads(out)["folders"][str(clean)]
    assert list(table) == ["id", "ood"]
    for row in table.values():  # the judge's numbers are unchanged (test_evaluate.py)
        assert row["overall"] == 1.0 and row["n"] == 20 and 0 <= row["clip_score"] <= 100
    code, out, err = _evaluate(capsys, clean, photos, "--clip-model", clip_folder)
    assert code == 0 and err.count("dpt evaluate: note:") == 1
    lines = out.splitlines()
    assert lines[0] == ("| folder | split | object | pair | spatial | counting | mixed | "
                        "overall | images | CLIPScore |")
    assert lines[2].startswith(f"| {clean} | id | 1.000 |")
    assert lines[3].startswith(f"| {clean} | ood | 1.000 |")
    assert lines[4].startswith(f"| {photos} | other | - | - | - | - | - | - | 5 | ")


def test_without_the_flags_other_prompts_are_still_an_error(photo_folders, capsys):
    code, out, err = _evaluate(capsys, photo_folders["photos"])
    assert code == 2 and out == ""
    assert "is not a Shapes prompt" in err


def test_reference_images_are_png_and_jpg_files(tmp_path):
    for name in ("b.png", "a.JPG", "c.jpeg"):
        Image.fromarray(_image(1)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in reference_images(tmp_path)] == ["a.JPG", "b.png", "c.jpeg"]
    (tmp_path / "d.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"d\.png is not a readable image"):
        reference_images(tmp_path)


def _bad_inputs(tmp, photos, clip, weights):
    """case: (extra arguments, the expected error message after 'dpt evaluate: error: ')."""
    from transformers import CLIPModel, CLIPTextModel

    (tmp / "empty").mkdir()
    model = CLIPModel.from_pretrained(clip, local_files_only=True)
    model.save_pretrained(tmp / "no-processor")
    CLIPTextModel(model.config.text_config).save_pretrained(tmp / "text-only")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "preprocessor_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json"):
        if (clip / name).exists():
            (tmp / "text-only" / name).write_bytes((clip / name).read_bytes())
    (tmp / "junk.pth").write_bytes(b"not a state dict")
    torch.save({"fc.weight": torch.zeros(3)}, tmp / "wrong.pth")
    clip_hint = "expected a local transformers CLIP folder as CLIPModel.save_pretrained"
    weights_hint = ("expected torch-fidelity's Inception-v3 FID weights "
                    "(weights-inception-2015-12-05-6726825d.pth, a PyTorch state dict)")
    ref_hint = "expected a folder of reference images (PNG or JPG files) for FID"
    return {
        "missing clip": (["--clip-model", tmp / "nope"],
                         f"CLIP model folder {tmp / 'nope'} does not exist; {clip_hint}"),
        "empty clip folder": (["--clip-model", tmp / "empty"],
                              f"cannot load a CLIP model from {tmp / 'empty'} ("),
        "no processor files": (["--clip-model", tmp / "no-processor"],
                               f"cannot load a CLIP model from {tmp / 'no-processor'} (Can't "
                               f"load image processor for '{tmp / 'no-processor'}'); {clip_hint}"),
        "text encoder only": (["--clip-model", tmp / "text-only"],
                              f"{tmp / 'text-only'} lacks "),
        "missing weights": (["--inception-weights", tmp / "gone.pth"],
                            f"Inception weights {tmp / 'gone.pth'} do not exist; {weights_hint}"),
        "junk weights": (["--inception-weights", tmp / "junk.pth"],
                         f"cannot read Inception weights {tmp / 'junk.pth'} ("),
        "wrong weights": (["--inception-weights", tmp / "wrong.pth"],
                          f"Inception weights {tmp / 'wrong.pth'} do not fit the FID "
                          "Inception-v3 (471 key(s) missing, such as Conv2d_1a_3x3.bn.bias; 1 "
                          f"key(s) of another shape, such as fc.weight); {weights_hint}"),
        "reference without weights": (["--fid-reference", photos],
                                      f"FID against {photos} needs the Inception weights too "
                                      "(--inception-weights PATH to torch-fidelity's "
                                      "weights-inception-2015-12-05-6726825d.pth); nothing is "
                                      "downloaded"),
        "missing reference": (["--inception-weights", weights, "--fid-reference", tmp / "nope"],
                              f"FID reference folder {tmp / 'nope'} does not exist; {ref_hint}"),
        "empty reference": (["--inception-weights", weights, "--fid-reference", tmp / "empty"],
                            f"FID reference folder {tmp / 'empty'} has 0 PNG/JPG images; "
                            f"{ref_hint}, at least 2"),
    }


def test_bad_metric_paths_exit_2_naming_path_and_expectation(clip_folder, inception_weights,
                                                             photo_folders, tmp_path, capsys):
    photos = photo_folders["photos"]
    cases = _bad_inputs(tmp_path, photos, clip_folder, inception_weights)
    capsys.readouterr()
    for case, (extra, message) in cases.items():
        code, out, err = _evaluate(capsys, photos, *extra)
        assert code == 2 and out == "", case
        assert len(err.splitlines()) == 1 and err.startswith(f"dpt evaluate: error: {message}"), \
            (case, err)
        if message.endswith("("):  # the reason, then what is expected
            assert "expected" in err, (case, err)


def test_missing_torchmetrics_names_the_extra(photo_folders, clip_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # `import torchmetrics` fails
    code, out, err = _evaluate(capsys, photo_folders["photos"], "--clip-model", clip_folder)
    assert code == 2 and out == ""
    assert err == ("dpt evaluate: error: CLIPScore, FID and IS need torchmetrics, which is not "
                   "installed: pip install 'dpt-t2i[metrics]'\n")


def test_torchmetrics_is_imported_only_when_a_metric_is_asked_for():
    code = ("import argparse, sys, dpt_t2i.commands.evaluate as e, dpt_t2i.eval.metrics; "
            "e.register(argparse.ArgumentParser().add_subparsers()); "
            "sys.exit('torchmetrics' in sys.modules or 'torch_fidelity' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_inception_matches_torchmetrics_own_network(inception_weights):
    """Where torch-fidelity (and a working torchvision) is installed, torchmetrics' own
    NoTrainInceptionV3 on the same weights file gives the same features and logits."""
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except Exception as err:  # not installed, or torchvision fails to load on this torch
        pytest.skip(f"torch-fidelity unavailable ({type(err).__name__})")
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    ours = load_inception(inception_weights)
    pool = ours(images)
    theirs = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(inception_weights))
    logits = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                str(inception_weights))
    torch.testing.assert_close(pool, theirs(images))
    torch.testing.assert_close(ours.unbiased_logits(pool), logits(images))
