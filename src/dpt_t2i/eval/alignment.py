"""Text-image alignment of generated Shapes images, judged by the scene parser.

Reads any folder with an `index.jsonl` as `dpt generate` writes it; each image is judged
against its prompt, and accuracy is reported per split (ID / OOD, from the prompt itself)
and per family, with an overall mean over families.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.shapes.grammar import FAMILIES, Prompt, PromptError, parse_prompt
from ..data.shapes.judge import judge
from ..data.shapes.splits import is_ood
from ..io.image_folder import read_index


def judge_folders(folders: list[Path]) -> list[dict]:
    """One verdict per indexed image of every folder: its record plus family, split, satisfied.

    Every index is checked (prompts parse, files exist) before any image is judged, so a
    bad folder is reported at once.
    """
    jobs = [(Path(folder), record, _checked_prompt(Path(folder), record))
            for folder in folders for record in read_index(folder, ("file", "prompt"))]
    verdicts = []
    for folder, record, prompt in tqdm(jobs, desc="judge", unit="image", dynamic_ncols=True,
                                       mininterval=1.0):
        image = np.asarray(Image.open(folder / record["file"]).convert("RGB"))
        verdicts.append({**record, "folder": str(folder), "family": prompt.family,
                         "split": "ood" if is_ood(prompt) else "id",
                         "satisfied": bool(judge(prompt, image).satisfied)})
    return verdicts


def _checked_prompt(folder: Path, record: dict) -> Prompt:
    try:
        prompt = parse_prompt(record["prompt"])
    except PromptError as err:
        raise ValueError(f"{folder / 'index.jsonl'}: {_not_shapes(record, err)}") from None
    _check_file(folder, record)
    return prompt


def _not_shapes(record: dict, err: PromptError) -> str:
    return f"prompt {record['prompt']!r} of {record['file']} is not a Shapes prompt: {err}"


def _check_file(folder: Path, record: dict) -> None:
    if not (folder / record["file"]).is_file():
        raise ValueError(f"{folder / 'index.jsonl'} names {record['file']}, which is missing")


def unjudged_folders(folders: list[Path]) -> dict[Path, tuple[str, list[dict]]]:
    """{folder: (why not, records)} for the folders the Shapes judge cannot read.

    A folder is left unjudged when one of its prompts is not a Shapes prompt (`why not`
    names the first); its records (file, prompt, folder) are checked to name existing files,
    as `judge_folders` checks them.
    """
    out = {}
    for folder in map(Path, folders):
        records = read_index(folder, ("file", "prompt"))
        why = None
        for record in records:
            try:
                parse_prompt(record["prompt"])
            except PromptError as err:
                why = _not_shapes(record, err)
                break
        if why is not None:
            for record in records:
                _check_file(folder, record)
            out[folder] = (why, [{**r, "folder": str(folder)} for r in records])
    return out


def summarize(verdicts: list[dict]) -> dict[str, dict[str, float]]:
    """{split: {family: accuracy, ..., "overall": mean over the families present, "n": images}}."""
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for v in verdicts:
        groups[v["split"]][v["family"]].append(v["satisfied"])
    table = {}
    for split in sorted(groups):
        row = {f: float(np.mean(groups[split][f])) for f in FAMILIES if groups[split][f]}
        row["overall"] = float(np.mean(list(row.values())))
        row["n"] = sum(len(x) for x in groups[split].values())
        table[split] = row
    return table


# measured columns a table may carry: key -> (heading, format); "-" where a row lacks the key
COLUMNS = {"fd": ("FD to renders", "{:.2f}"), "clip_score": ("CLIPScore", "{:.2f}"),
           "fid": ("FID", "{:.2f}"), "is": ("IS", "{:.2f}")}


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per split (or unjudged folder), one column per family, then
    one per measured column of `COLUMNS` that some row has."""
    measured = [k for k in COLUMNS if any(k in row for row in table.values())]
    first = "split" if set(table) <= {"id", "ood"} else "split / folder"
    head = [first, *FAMILIES, "overall", "images"] + [COLUMNS[k][0] for k in measured]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, row in table.items():
        cells = [split] + [f"{row[f]:.3f}" if f in row else "-" for f in (*FAMILIES, "overall")]
        cells.append(str(row["n"]))
        cells += [COLUMNS[k][1].format(row[k]) if row.get(k) is not None else "-"
                  for k in measured]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
