"""Image quality as a Fréchet distance in the Shapes CLIP image space."""

import json

import numpy as np
import pytest

from dpt_t2i.cli import main
from dpt_t2i.eval.quality import (clip_image_features, frechet_distance, quality_by_split,
                                  reference_renders)


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # same covariance, mean shifted by (1, 2, 0): the distance is the squared shift
    assert frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, abs=1e-6)
    # spread doubled about the same mean: Tr(S + 4S - 2 (4 S^2)^1/2) = Tr(S)
    assert frechet_distance(a, 2 * a - a.mean(0)) == pytest.approx(
        np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    with pytest.raises(ValueError, match="two \\(N, D\\) feature sets"):
        frechet_distance(a, a[:, :2])


def test_renders_are_close_to_renders_and_noise_is_far():
    prompts = ["a red circle", "two blue squares", "a green triangle above a red circle"] * 20
    renders = clip_image_features(reference_renders(prompts, seed=0))
    others = clip_image_features(reference_renders(prompts, seed=1))
    noise = clip_image_features(list(np.random.default_rng(0).integers(
        0, 256, size=(60, 64, 64, 3), dtype=np.uint8)))
    assert renders.shape == (60, 128)
    close, far = frechet_distance(renders, others), frechet_distance(renders, noise)
    assert far > 10 * close, (close, far)


def test_evaluate_quality_adds_a_column(judged_folders, capsys):
    assert main(["evaluate", str(judged_folders["clean"]), "--quality", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["folders"][str(judged_folders["clean"])]
    assert set(table) == {"id", "ood"} and all(row["fd"] >= 0 for row in table.values())
    assert main(["evaluate", str(judged_folders["clean"]), "--quality"]) == 0
    assert "FD to renders" in capsys.readouterr().out


def test_quality_groups_by_split(judged_folders):
    from dpt_t2i.eval.alignment import judge_folders

    verdicts = judge_folders([judged_folders["clean"], judged_folders["mixed"]])
    fd = quality_by_split(verdicts)
    assert set(fd) == {"id", "ood"} and all(np.isfinite(v) for v in fd.values())
