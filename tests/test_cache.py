"""The stage-1 latent cache: what it reads back is what the frozen encoders give, a broken
folder is one line naming what is missing, another model or resolution is refused; the
training feed reads images or the cache, inline or with workers, slot by slot."""

import argparse
import json
import shutil

import pytest
import torch

from dpt_t2i.data.loader import LoaderSettings, process_slots
from dpt_t2i.data.shapes.world import CANVAS
from dpt_t2i.data.sources import ShapesSource, draw_samples
from dpt_t2i.io.bundle import load_bundle
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.training.cache import LatentCache, write_cache
from dpt_t2i.training.feed import open_feed
from dpt_t2i.training.inputs import frozen_parts, prepare_inputs

SAMPLES, BATCH = 6, 3
# condition caption + expression grounding + caption states: every key prepare_inputs makes
CONFIG = DPTConfig(condition="caption", ground_condition="expression", adapter=None)


@pytest.fixture(scope="module")
def bundle(tiny_model):
    return load_bundle(tiny_model)


@pytest.fixture(scope="module")
def cache_dir(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    # 4-row shards: the second batch spans two shards, the last shard is short
    write_cache(out, bundle, ShapesSource(seed=1), SAMPLES, CANVAS, batch=4, shard_rows=4)
    return out


def _assert_same(got, want):
    (latents, inputs), (want_latents, want_inputs) = got, want
    assert torch.allclose(latents, want_latents, atol=1e-5)
    assert set(inputs) == set(want_inputs)
    for key, value in want_inputs.items():
        assert inputs[key].dtype == value.dtype and inputs[key].shape == value.shape, key
        assert torch.allclose(inputs[key].float(), value.float(), atol=1e-5), key


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_from_the_cache_is_what_the_encoders_give(bundle, cache_dir, workers):
    parts = frozen_parts(bundle, torch.device("cpu"))
    slots = process_slots(0, 2, 1, 1, 0)
    cache = LatentCache(cache_dir, seed=7)
    cache.check(bundle, CANVAS, n_negatives=3)
    feed = open_feed(cache, parts, CONFIG, BATCH, slots, True, LoaderSettings(workers=workers))
    for slot in slots:
        want = prepare_inputs(parts, draw_samples(ShapesSource(seed=1), slot * BATCH, BATCH),
                              CONFIG, need_caption_states=True)
        _assert_same(feed.inputs(slot), want)
    feed.close()
    assert json.loads((cache_dir / "manifest.json").read_text())["shards"] == [
        {"file": "shard-00000.safetensors", "rows": 4}, {"file": "shard-00001.safetensors",
                                                         "rows": 2}]


def test_the_image_feed_with_workers_is_prepare_inputs(bundle):
    parts = frozen_parts(bundle, torch.device("cpu"))
    slots = process_slots(1, 3, 1, 2, 1)  # process 1 of 2 from step 1: slots 3 and 5
    feed = open_feed(ShapesSource(seed=2), parts, CONFIG, 2, slots, False,
                     LoaderSettings(workers=2))
    for slot in slots:
        want = prepare_inputs(parts, draw_samples(ShapesSource(seed=2), slot * 2, 2), CONFIG,
                              need_caption_states=False)
        _assert_same(feed.inputs(slot), want)
    feed.close()


def test_later_passes_read_every_row_once_in_a_new_order(cache_dir):
    cache = LatentCache(cache_dir, seed=7)
    first = [cache.row_of(i) for i in range(SAMPLES)]
    passes = [[cache.row_of(i) for i in range(p * SAMPLES, (p + 1) * SAMPLES)] for p in (1, 2)]
    assert first == list(range(SAMPLES))
    assert all(sorted(rows) == first for rows in passes) and passes[0] != passes[1]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda d: (d / "shard-00001.safetensors").unlink(), "shard-00001.safetensors is missing"),
    (lambda d: (d / "empty.safetensors").unlink(), "empty.safetensors is missing"),
    (lambda d: _edit(d, lambda m: m.pop("encoders")), r"lacks the key\(s\) encoders"),
    (lambda d: _edit(d, lambda m: m.update(samples=9)), "shards hold 6 rows, the manifest says 9"),
    (lambda d: (d / "shard-00000.safetensors").write_bytes(b"nope"),
     "shard-00000.safetensors is not a readable safetensors file"),
    (lambda d: _drop_key(d, "ref_mask"), r"shard-00001.safetensors lacks the key\(s\) ref_mask"),
])
def test_a_broken_cache_is_one_line_naming_what_is_missing(cache_dir, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(cache_dir, broken)
    damage(broken)
    with pytest.raises(ValueError, match=message) as err:
        LatentCache(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="is not a folder"):
        LatentCache(tmp_path / "nowhere")


def _edit(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _drop_key(folder, key):
    from safetensors.torch import load_file, save_file

    path = folder / "shard-00001.safetensors"
    tensors = load_file(path)
    del tensors[key]
    save_file(tensors, path)


def test_a_cache_of_another_model_resolution_or_k_is_refused(bundle, cache_dir, tiny_model,
                                                              tmp_path):
    cache = LatentCache(cache_dir)
    with pytest.raises(ValueError, match=f"holds {CANVAS} px images; this run feeds 128 px"):
        cache.check(bundle, 128)
    with pytest.raises(ValueError, match="holds 3 hard negatives a sample; this run asks for 2"):
        cache.check(bundle, CANVAS, n_negatives=2)
    other = tmp_path / "other"  # the same model but for one VAE weight
    shutil.copytree(tiny_model, other)
    weight = bundle.vae.encoder.conv_in.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)
        bundle.vae.save_pretrained(other / "vae")
        weight.copy_(kept)
    with pytest.raises(ValueError, match="was made with the encoders of .*tiny-shapes .*/other "
                                         "has others"):
        cache.check(load_bundle(other), CANVAS)


def test_write_refuses_a_folder_with_files(bundle, cache_dir):
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        write_cache(cache_dir, bundle, ShapesSource(), 2, CANVAS)


def _cache_command(argv):
    from dpt_t2i.commands import cache

    parser = argparse.ArgumentParser()
    cache.register(parser.add_subparsers())
    args = parser.parse_args(["cache", *argv])
    return args.run(args)


def test_the_cache_command_on_shapes_in_half_precision(tiny_model, tmp_path, capsys):
    assert _cache_command(["--model", str(tiny_model), "--samples", "3", "--dtype", "bf16",
                           "--batch", "2", "--out", str(tmp_path / "c")]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["dtype"] == "bf16" and manifest["samples"] == 3
    assert manifest["data"] == {"kind": "shapes", "seed": 0, "split": "train", "n_negatives": 3}
    cache = LatentCache(tmp_path / "c")
    cache.check(load_bundle(tiny_model), CANVAS)  # a bf16 load names the same weights
    assert cache.rows([2])["latents"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="endless: give --samples"):
        _cache_command(["--model", str(tiny_model), "--out", str(tmp_path / "d")])


def test_the_cache_command_on_coco(tiny_model, tmp_path, capsys):
    from data.test_coco import write_coco_captions
    from data.test_real import write_images

    write_images(tmp_path / "images")
    captions = write_coco_captions(tmp_path)
    assert _cache_command(["--model", str(tiny_model), "--coco-captions", str(captions),
                           "--coco-images", str(tmp_path / "images"), "--workers", "2",
                           "--out", str(tmp_path / "c")]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["samples"] == 3 and manifest["resolution"] == 64  # one epoch, 8 x 8 px
    assert manifest["data"]["kind"] == "coco" and manifest["data"]["images"] == 3
    (tmp_path / "empty").mkdir()  # a folder of none of the captioned images: refused by name
    with pytest.raises(ValueError, match=r"^--coco-images .*empty: 0 of the 3 images"):
        _cache_command(["--model", str(tiny_model), "--coco-captions", str(captions),
                        "--coco-images", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


def test_probe_reads_a_cache_and_workers_change_nothing(tiny_model, tmp_path):
    """Through the command line: 2 steps from images inline, with 2 workers, and from a
    cache of 8 samples (the same samples: the first pass reads rows in order)."""
    from safetensors.torch import load_file

    from dpt_t2i.cli import main

    def dpt(*argv):
        return main([str(a) for a in argv])

    assert dpt("cache", "--model", tiny_model, "--samples", 8, "--out", tmp_path / "c") == 0
    common = ("probe", "--model", tiny_model, "--block", "up0", "--d-model", 32,
              "--ground-queries", 4, "--steps", 2, "--batch", 2, "--condition", "empty")
    assert dpt(*common, "--run-dir", tmp_path / "images") == 0
    assert dpt(*common, "--run-dir", tmp_path / "workers", "--workers", 2) == 0
    assert dpt(*common, "--run-dir", tmp_path / "cached", "--cache", tmp_path / "c") == 0
    heads = {name: load_file(tmp_path / name / "final" / "heads.safetensors")
             for name in ("images", "workers", "cached")}
    for key, value in heads["images"].items():
        assert torch.equal(heads["workers"][key], value), key  # workers change nothing
        assert torch.allclose(heads["cached"][key], value, atol=1e-5), key  # nor the cache
    assert dpt(*common, "--run-dir", tmp_path / "x", "--cache", tmp_path / "c",
               "--negatives", 2) == 2  # the cache holds 3 a sample
