"""T2I-CompBench's result files, read back into the paper's Table 1 (arXiv 2403.04321).

Each evaluator of github.com/Karine-Huang/T2I-CompBench writes a JSON list of
{"question_id", "answer"} (one entry an image) under the folder it scored (the
`--compbench-out DIR` of `dpt generate`), and its reported score is the mean answer:

- color, shape, texture: `BLIPvqa_eval/BLIP_vqa.py` writes
  `annotation_blip/vqa_result.json` (answers as "0.1234" strings);
- spatial: `UniDet_eval/2D_spatial_eval.py` writes
  `labels/annotation_obj_detection_2d/vqa_result.json` (its older version,
  `determine_position_for_eval.py`, `labels/annotation_obj_detection/vqa_result.json`);
- non_spatial: `CLIPScore_eval/CLIP_similarity.py` writes `annotation_clip/vqa_result.json`;
- complex: `3_in_1_eval/3_in_1.py` writes `annotation_3_in_1/vqa_result.json`.

Table 1 prints each mean x 100. A run is a folder holding one layout folder per category,
named as the category (`RUN/color/`, `RUN/non_spatial/`, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TABLE1 = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
RESULT_FILES = {  # category: its evaluator's result files under the layout folder, first found
    "color": ("annotation_blip/vqa_result.json",),
    "shape": ("annotation_blip/vqa_result.json",),
    "texture": ("annotation_blip/vqa_result.json",),
    "spatial": ("labels/annotation_obj_detection_2d/vqa_result.json",
                "labels/annotation_obj_detection/vqa_result.json"),
    "non_spatial": ("annotation_clip/vqa_result.json",),
    "complex": ("annotation_3_in_1/vqa_result.json",),
}
# The paper's Table 1 on SD-2.1 (arXiv 2403.04321, Qu et al., CVPR 2024), scores x 100.
# Only the colour figures (48.2 -> 60.6 -> 62.6) could be checked against the paper here;
# the other cells are None and print as "-" until someone copies them from the table.
PUBLISHED = {
    "SD-2.1 (paper)": {"color": 48.2, "shape": None, "texture": None, "spatial": None,
                       "non_spatial": None, "complex": None},
    "DPT (paper)": {"color": 60.6, "shape": None, "texture": None, "spatial": None,
                    "non_spatial": None, "complex": None},
    "DPT + SC (paper)": {"color": 62.6, "shape": None, "texture": None, "spatial": None,
                         "non_spatial": None, "complex": None},
}
EXPECTED = ('a JSON list of {"question_id", "answer"} objects, as T2I-CompBench\'s evaluators '
            "write")


def read_result(path: str | Path) -> tuple[float, int]:
    """(mean answer x 100, number of images) of one evaluator's `vqa_result.json`.

    Raises ValueError naming the file for one that is not such a list or holds an answer
    that is not a finite number.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read T2I-CompBench result {path} ({err}); expected "
                         f"{EXPECTED}") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"T2I-CompBench result {path} holds no list of results; expected "
                         f"{EXPECTED}")
    answers = []
    for i, item in enumerate(items):
        try:
            answers.append(float(item["answer"]))
        except (TypeError, KeyError, ValueError):
            answers.append(math.nan)
        if not math.isfinite(answers[-1]):
            raise ValueError(f"T2I-CompBench result {path} entry {i} has no numeric "
                             f"\"answer\"; expected {EXPECTED}")
    return 100 * sum(answers) / len(answers), len(answers)


def read_run(folder: str | Path) -> dict[str, tuple[float, int] | None]:
    """{category: (score x 100, images) or None where no result file is found} of one run.

    Args:
        folder: a folder holding `<category>/` layout folders the evaluators have scored.

    Raises:
        ValueError: `folder` is not a folder, or holds no result file of any category.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"T2I-CompBench run {folder} is not a folder; expected one holding "
                         f"<category>/ folders ({', '.join(TABLE1)}) the evaluators scored")
    scores: dict[str, tuple[float, int] | None] = {}
    for category in TABLE1:
        found = [folder / category / f for f in RESULT_FILES[category]
                 if (folder / category / f).is_file()]
        scores[category] = read_result(found[0]) if found else None
    if all(v is None for v in scores.values()):
        wanted = ", ".join(f"{c}/{RESULT_FILES[c][0]}" for c in ("color", "spatial",
                                                                   "non_spatial", "complex"))
        raise ValueError(f"T2I-CompBench run {folder} holds no evaluator result; expected "
                         f"files such as {wanted}")
    return scores
