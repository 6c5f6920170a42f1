"""Text-image alignment of generated Shapes images, judged by the scene parser.

Reads any folder with an `index.jsonl` as `dpt generate` writes it; each image is judged
against its prompt, and accuracy is reported per split (ID / OOD, from the prompt itself)
and per family, with an overall mean over families.

Two ways in: `read_folders` + `judge_images` judge what they can and keep, per folder, the
images they skip (a prompt the Shapes grammar cannot read, an image that cannot be decoded)
with the reason; `judge_folders` is the strict form, for folders a program has just written,
and raises ValueError on the first such image.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.shapes.grammar import FAMILIES, Prompt, PromptError, parse_prompt
from ..data.shapes.judge import judge
from ..data.shapes.splits import is_ood
from ..io.image_folder import INDEX, read_index

# what PIL raises for a file it cannot decode: truncated or corrupt data (OSError, of which
# UnidentifiedImageError is one; SyntaxError and EOFError from some decoders), or too many
# pixels (DecompressionBombError)
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
SKIP_KINDS = {"prompt": "prompts are not Shapes prompts", "image": "images cannot be read"}


@dataclass
class FolderJudgement:
    """One folder's images: those judged, those waiting to be, and those the judge skipped."""

    folder: Path
    images: int = 0  # records in its index
    pending: list[tuple[dict, Prompt]] = field(default_factory=list)  # (record, its prompt)
    verdicts: list[dict] = field(default_factory=list)  # record + folder, family, split, satisfied
    skipped: list[dict] = field(default_factory=list)  # record + folder, "skip" kind, "why"

    def skip_note(self) -> str | None:
        """'skipped N of M images: ...' with each kind's count and first reason, or None."""
        if not self.skipped:
            return None
        parts = []
        for kind, text in SKIP_KINDS.items():
            group = [s for s in self.skipped if s["skip"] == kind]
            if group:
                parts.append(f"{len(group)} whose {text} (first: {group[0]['why']})")
        return f"skipped {len(self.skipped)} of {self.images} images: {'; '.join(parts)}"


def read_folders(folders: list[Path]) -> list[FolderJudgement]:
    """Every folder's index read and its prompts parsed, before any image is judged.

    Records whose prompt is not a Shapes prompt are skipped (kind "prompt"); the others wait
    in `pending` for `judge_images`.

    Raises:
        ValueError: a folder has no readable index, or a record names a missing file or has
            a file or prompt that is not a string: the folder is not one `dpt generate` wrote.
    """
    out = []
    for folder in map(Path, folders):
        records = _records(folder)
        judgement = FolderJudgement(folder, images=len(records))
        for record in records:
            try:
                judgement.pending.append((record, parse_prompt(record["prompt"])))
            except PromptError as err:
                why = f"{folder / INDEX}: {_not_shapes(record, err)}"
                judgement.skipped.append({**record, "folder": str(folder), "skip": "prompt",
                                          "why": why})
        out.append(judgement)
    return out


def _records(folder: Path) -> list[dict]:
    """The folder's index records, each checked to name an existing file and a text prompt."""
    try:
        records = read_index(folder, ("file", "prompt"))
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(f"cannot read {folder / INDEX} ({reason}); expected the index "
                         "`dpt generate` writes (UTF-8 JSON lines)") from None
    for n, record in enumerate(records, start=1):
        for key in ("file", "prompt"):
            if not isinstance(record[key], str):
                raise ValueError(f"{folder / INDEX} record {n}: {key} is "
                                 f"{json.dumps(record[key])}; expected a string")
        _check_file(folder, record)
    return records


def judge_images(judgements: list[FolderJudgement]) -> None:
    """Judge every pending image (one progress bar over all folders).

    An image that cannot be decoded is skipped (kind "image") with PIL's reason.
    """
    jobs = [(j, record, prompt) for j in judgements for record, prompt in j.pending]
    for j in judgements:
        j.pending = []
    for j, record, prompt in tqdm(jobs, desc="judge", unit="image", dynamic_ncols=True,
                                  mininterval=1.0, disable=not jobs):
        image, why = load_rgb(j.folder / record["file"])
        if image is None:
            j.skipped.append({**record, "folder": str(j.folder), "skip": "image", "why": why})
            continue
        j.verdicts.append({**record, "folder": str(j.folder), "family": prompt.family,
                           "split": "ood" if is_ood(prompt) else "id",
                           "satisfied": bool(judge(prompt, image).satisfied)})


def load_rgb(path: Path) -> tuple[np.ndarray | None, str]:
    """((H, W, 3) uint8 image, "") or (None, why the file cannot be decoded)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")), ""
    except UNREADABLE as err:
        return None, f"{path}: {str(err) or type(err).__name__}"


def judge_folders(folders: list[Path]) -> list[dict]:
    """One verdict per indexed image of every folder: its record plus family, split, satisfied.

    The strict form, for folders a program has just written: every index is checked (prompts
    parse, files exist) before any image is judged, so a bad folder is reported at once, and
    an image that cannot be decoded is a ValueError too.
    """
    judgements = read_folders(folders)
    for j in judgements:
        if j.skipped:
            raise ValueError(j.skipped[0]["why"])
    judge_images(judgements)
    for j in judgements:
        if j.skipped:
            raise ValueError(f"{j.skipped[0]['why']}; expected a PNG as `dpt generate` "
                             "writes")
    return [v for j in judgements for v in j.verdicts]


def _not_shapes(record: dict, err: PromptError) -> str:
    return f"prompt {record['prompt']!r} of {record['file']} is not a Shapes prompt: {err}"


def _check_file(folder: Path, record: dict) -> None:
    if not (folder / record["file"]).is_file():
        raise ValueError(f"{folder / INDEX} names {record['file']}, which is missing")


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
    """A Markdown table of one folder: one row per split, one column per family, then one
    per measured column of `COLUMNS` that some row has."""
    return _markdown(["split"], [([split], row) for split, row in table.items()])


def format_folder_tables(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of several folders: one row per folder and split (`{folder: {split:
    row}}`; a split named "other" holds the images of other prompts, measured only)."""
    rows = [([folder, split], row) for folder, table in tables.items()
            for split, row in table.items()]
    return _markdown(["folder", "split"], rows)


def _markdown(labels: list[str], rows: list[tuple[list[str], dict]]) -> str:
    measured = [k for k in COLUMNS if any(k in row for _, row in rows)]
    head = [*labels, *FAMILIES, "overall", "images"] + [COLUMNS[k][0] for k in measured]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for names, row in rows:
        cells = [_cell(n) for n in names]
        cells += [f"{row[f]:.3f}" if f in row else "-" for f in (*FAMILIES, "overall")]
        cells.append(str(row["n"]))
        cells += [COLUMNS[k][1].format(row[k]) if row.get(k) is not None else "-"
                  for k in measured]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A folder name as one Markdown cell: its pipes escaped, its line breaks spaces."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
