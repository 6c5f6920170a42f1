"""`dpt report`'s output folder: Markdown tables, PNG plots, the image grid and a README.

Every number comes from `report.build_report`'s data (also written as `report.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.shapes.grammar import FAMILIES, parse_prompt
from ..generation.methods import METHODS
from ..io.dpt_folder import CONFIG_FILE
from ..io.image_folder import read_index
from .plots import bar_chart, line_chart

CHANCE = 0.25  # ITM: 1 positive vs 3 negatives


def write_report(out: Path, data: dict, work, inputs, argv: list[str]) -> None:
    out = Path(out)
    (out / "report.json").write_text(json.dumps(data, indent=1))
    sections = [_header(data, argv), _table1(data), _table2(data), _table3(data),
                _table4(data)]
    figures = []
    if data["blocks"]:
        figures.append(_fig3(out, data["blocks"]))
    if data["curve"]:
        figures.append(_fig4a(out, data["curve"]))
    figures.append(_fig4b(out, data["eta_sweep"]))
    figures.append(_fig5(out, data, work))
    sections += figures
    sections.append(_inputs(data))
    (out / "README.md").write_text("\n\n".join(sections) + "\n")


# the report's rows that are not generation methods of their own
ROW_LABELS = {"hn-itm": "HN-DiffusionITM (LoRA)", "probe+sc": "DPT stage 1 + SC (no LoRA)",
              "match-only": "matching only",
              "ground-only": "grounding only", "both": "matching + grounding",
              "both+sc": "matching + grounding + SC"}


REFEREE_LABELS = {"shapes-itm": "Shapes referee", "dpt": "DPT", "clip": "Shapes CLIP"}
INIT_LABELS = {"sample": "from the model's sample", "noise": "from noise"}


def _label(name: str) -> str:
    if name.startswith("referee-"):  # referee-<referee>-<init>
        referee, init = name[len("referee-"):].rsplit("-", 1)
        return f"referee: {REFEREE_LABELS.get(referee, referee)}, {INIT_LABELS.get(init, init)}"
    return METHODS[name].label if name in METHODS else ROW_LABELS.get(name, name)


def _header(data: dict, argv: list[str]) -> str:
    s = data["settings"]
    n = next(iter(data["generation"].values()))["ood"]["n"]
    return "\n".join([
        "# DPT on the Shapes world: the paper's tables and figures",
        "",
        "Written by `dpt report`; every number below was measured by this run of it:",
        "",
        "```bash",
        "dpt " + " ".join(argv),
        "```",
        "",
        f"Generation: the Shapes benchmark prompts of each split (`dpt prompts --split ood|id`),"
        f" {s['num_images']} images per prompt, seeds {s['seed']} + k, {s['steps']} DDIM steps, "
        "guidance 7.5; the same prompts and seeds for every method. Alignment is the Shapes "
        "judge's accuracy per family (overall: the mean over families); FD is the Fréchet "
        "distance to clean renders of the same prompts in the Shapes CLIP image space (lower "
        f"is better). With {n} images (OOD), one standard error of an accuracy is at most "
        f"{0.5 / n ** 0.5:.3f}.",
    ])


def _gen_cells(row: dict) -> list[str]:
    return [f"{row[f]:.3f}" if f in row else "-" for f in (*FAMILIES, "overall")] + \
        [f"{row['fd']:.2f}", str(row["n"])]


def _table1(data: dict) -> str:
    lines = ["## Table 1: text-image alignment per family (Shapes judge)", "",
             "The last column is each method's paired difference from the base model in overall "
             "alignment (the same prompts and seeds, so the same starting noise), with a 95% "
             "cluster bootstrap interval over prompts (`eval/paired.py`). Referee rows are "
             "`dpt referee` (arXiv 2402.16305) with the Shapes model's preset for each start "
             "(`referee.SHAPES_SETTINGS` from the model's sample, `SHAPES_NOISE_SETTINGS` "
             "from noise)."]
    st = data["settings"]
    n = st["num_images"]
    fewer = [f"{what} {k}" for what, k in (("Attend-and-Excite", st.get("attend_excite_images")),
                                           ("the referee rows", st.get("referee_images")))
             if k and k != n]
    if fewer:
        lines[-1] += (f" Images a prompt: {n}, but {' and '.join(fewer)}; image k of a run "
                      f"has seed {st['seed']} + k over all prompts, so a row drawn at another "
                      "count is paired with the base model's images drawn at that count from "
                      "the same seeds, and its FD is over fewer images.")
    paired = data.get("paired") or {}
    for split in data["settings"]["splits"]:
        lines += ["", f"{split.upper()} prompts:", "",
                  "| method | " + " | ".join(FAMILIES) + " | overall | FD | images | "
                  "vs base [95% CI] |",
                  "|---|" + "---|" * (len(FAMILIES) + 4)]
        for name, rows in data["generation"].items():
            diff = paired.get(name, {}).get(split, {}).get("overall")
            cell = "-" if diff is None else \
                f"{diff['diff']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
            lines.append(f"| {_label(name)} | " + " | ".join(_gen_cells(rows[split]))
                         + f" | {cell} |")
    return "\n".join(lines)


def _table2(data: dict) -> str:
    splits = data["settings"]["splits"]
    lines = ["## Table 2: image quality and cost", "",
             "FD per split (lower is better) and seconds per image on this machine's CPU: each "
             f"method generated the first {data['settings']['cost_images']} OOD prompts and a "
             "quarter of them (one image each), in two interleaved rounds in one process; the "
             "cost is the difference of the faster times over the difference in images, so "
             "model loading cancels out.", "",
             "| method | " + " | ".join(f"FD {s.upper()}" for s in splits) + " | s / image |"
             " relative to base |",
             "|---|" + "---|" * (len(splits) + 2)]
    base = data["cost"].get("base")
    for name, rows in data["generation"].items():
        cost = data["cost"].get(name)
        cells = [f"{rows[s]['fd']:.2f}" for s in splits]
        cells += [f"{cost:.2f}" if cost else "-",
                  f"{cost / base:.2f}" if cost and base else "-"]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DISC_LABELS = {"chance": "random chance", "clip": "Shapes CLIP (zero-shot)",
               "diffusion-itm": "DiffusionITM (zero-shot)",
               "hn-diffusion-itm": "HN-DiffusionITM", "stage1": "DPT stage 1 (probe)",
               "stage2": "DPT stage 2 (tune)",
               "shapes-referee": "Shapes referee (the referee rows' referee)"}


def _table3(data: dict) -> str:
    rows = data["discriminative"]
    lines = ["## Table 3: discriminative ability", "",
             "Image-text matching: 1 positive against 3 hard negatives (image-to-text: the "
             "image picks its caption; text-to-image: the caption picks its image); REC: "
             "accuracy at IoU >= 0.5. DPT reads latents noised to t = 100. The last column is "
             "the U-Net evaluations one image-text pair costs, each stopping after DPT's block "
             "(a DPT folder trained with `--condition each` makes one such pass per pair, one "
             "with `--condition empty` one per image).", "",
             "| method | ITM ID i2t | t2i | overall | ITM OOD i2t | t2i | overall | REC ID | "
             "REC OOD | items | U-Net evals / pair |", "|---|" + "---|" * 10,
             f"| {DISC_LABELS['chance']} | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | - | - "
             "| - | 0 |"]
    for name, r in rows.items():
        cells = []
        for split in ("id", "ood"):
            itm = r["itm"].get(split)
            cells += [f"{itm[k]:.3f}" for k in ("i2t", "t2i", "overall")] if itm else ["-"] * 3
        cells += [f"{r['rec'][s]['acc']:.3f}" if s in r["rec"] else "-" for s in ("id", "ood")]
        n = r["itm"]["ood"]["n"] if "ood" in r["itm"] else "-"
        cells += [str(n), str(r["settings"]["unet_evals_per_pair"])]
        lines.append(f"| {DISC_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table4(data: dict) -> str:
    lines = ["## Table 4: ablation of the stage-2 objectives", "",
             "Each row is a stage-2 run from the same stage-1 adapter with the same settings "
             "but the objectives named (+ SC: self-correction at generation).", "",
             "| objectives | OOD overall | ID overall | FD OOD | ITM OOD | REC OOD |",
             "|---|---|---|---|---|---|"]
    for name, r in data["ablations"].items():
        gen, disc = r["generation"], r["disc"]
        cells = [f"{gen['ood']['overall']:.3f}",
                 f"{gen['id']['overall']:.3f}" if "id" in gen else "-",
                 f"{gen['ood']['fd']:.2f}", f"{disc['itm']['ood']['overall']:.3f}",
                 f"{disc['rec']['ood']['acc']:.3f}"]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fig3(out: Path, blocks: dict) -> str:
    names = list(blocks)
    bar_chart(out / "fig3-blocks.png", "Stage-1 probe per U-Net block (OOD)", names,
              {"ITM overall": [blocks[b]["itm"]["ood"]["overall"] for b in names],
               "REC acc@0.5": [blocks[b]["rec"]["ood"]["acc"] for b in names]}, chance=CHANCE)
    lines = ["## Fig. 3: which U-Net block to probe", "", "![blocks](fig3-blocks.png)", "",
             "| block | ITM ID | ITM OOD | REC ID | REC OOD |", "|---|---|---|---|---|"]
    lines += [f"| {b} | {r['itm']['id']['overall']:.3f} | {r['itm']['ood']['overall']:.3f} | "
              f"{r['rec']['id']['acc']:.3f} | {r['rec']['ood']['acc']:.3f} |"
              for b, r in blocks.items()]
    return "\n".join(lines)


def _fig4a(out: Path, curve: dict) -> str:
    steps = sorted(curve, key=int)
    series = {"generation OOD overall": [curve[k]["generation"]["overall"] for k in steps],
              "ITM OOD overall": [curve[k]["disc"]["itm"]["ood"]["overall"] for k in steps],
              "REC OOD acc": [curve[k]["disc"]["rec"]["ood"]["acc"] for k in steps]}
    line_chart(out / "fig4a-steps.png", "Stage 2: alignment and discrimination vs tuning steps",
               [int(k) for k in steps], series, x_label="tuning step")
    lines = ["## Fig. 4a: generation and discrimination against tuning steps", "",
             "![steps](fig4a-steps.png)", "",
             "Step 0 is the base model's images and the stage-1 adapter (LoRA starts at zero).",
             "", "| step | " + " | ".join(series) + " | FD OOD |", "|---|" + "---|" * 4]
    lines += [f"| {k} | " + " | ".join(f"{series[n][i]:.3f}" for n in series) +
              f" | {curve[k]['generation']['fd']:.2f} |" for i, k in enumerate(steps)]
    return "\n".join(lines)


def _fig4b(out: Path, sweep: dict) -> str:
    etas = list(sweep)
    series = {f: [sweep[e][f] for e in etas] for f in (*FAMILIES, "overall")}
    line_chart(out / "fig4b-eta.png", "Self-correction strength (OOD prompts)",
               [float(e) for e in etas], series, x_label="eta")
    lines = ["## Fig. 4b: self-correction strength", "", "![eta](fig4b-eta.png)", "",
             "| eta | " + " | ".join(FAMILIES) + " | overall | FD |",
             "|---|" + "---|" * (len(FAMILIES) + 2)]
    lines += [f"| {e} | " + " | ".join(f"{sweep[e][f]:.3f}" for f in (*FAMILIES, "overall")) +
              f" | {sweep[e]['fd']:.2f} |" for e in etas]
    return "\n".join(lines)


def _fig5(out: Path, data: dict, work) -> str:
    """Prompts (rows: the first OOD prompt of each family) by methods (columns), image 0."""
    prompts, seen = [], set()
    for line in work.prompts("ood").read_text().splitlines():
        family = parse_prompt(line).family
        if family not in seen:
            seen.add(family)
            prompts.append(line)
    prompts = prompts[:data["settings"]["grid_prompts"]]
    names = list(data["generation"])
    scale, label_w, head_h = 2, 230, 28
    cell = 64 * scale + 6
    grid = Image.new("RGB", (label_w + cell * len(names), head_h + cell * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((label_w + j * cell + 2, 8), _label(name)[:22], fill="black")
    folders = [work.folder / "gen" / f"{name.replace('+', '-')}-ood" for name in names]
    firsts = [{} for _ in names]  # per method: prompt -> its first record
    for first, folder in zip(firsts, folders):
        for record in read_index(folder):
            first.setdefault(record["prompt"], record)
    for i, prompt in enumerate(prompts):
        _wrapped(draw, prompt, (6, head_h + i * cell + 8), width=34)
        for j, (folder, first) in enumerate(zip(folders, firsts)):
            image = Image.open(folder / first[prompt]["file"]).convert("RGB")
            image = image.resize((64 * scale, 64 * scale), Image.NEAREST)
            grid.paste(image, (label_w + j * cell, head_h + i * cell))
    grid.save(out / "fig5-grid.png")
    st = data["settings"]
    other = " (columns drawn at another count a prompt start from other seeds)" \
        if any(st.get(k) not in (None, st["num_images"])
               for k in ("referee_images", "attend_excite_images")) else ""
    return "\n".join(["## Fig. 5: the same prompts and seeds across methods", "",
                      "Image 0 (seed " + str(st["seed"]) + " + its index) of the first OOD "
                      f"prompt of each family{other}.", "", "![grid](fig5-grid.png)"])


def _wrapped(draw: ImageDraw.ImageDraw, text: str, xy: tuple[int, int], width: int) -> None:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for k, part in enumerate(lines):
        draw.text((xy[0], xy[1] + 14 * k), part, fill="black")


def _inputs(data: dict) -> str:
    """How each compared folder was trained: a DPT folder's dpt_config.json "training" record,
    or a run folder's run_config.json."""
    lines = ["## The trained folders compared", "",
             "| input | folder | stage | steps | settings |", "|---|---|---|---|---|"]
    keys = {"probe": ("lr", "t_max", "match_weight", "ground_weight", "seed"),
            "tune": ("lr", "lora_lr", "t_max", "match_weight", "ground_weight", "mse_weight",
                     "seed"),
            "hn-itm": ("lora_lr", "t_max", "hn_weight", "hn_clip", "seed")}
    for name, folder in data["inputs"].items():
        if folder is None:
            lines.append(f"| {name} | not given | - | - | - |")
            continue
        config, run = Path(folder) / CONFIG_FILE, Path(folder) / "run_config.json"
        if config.is_file():
            st = json.loads(config.read_text()).get("training", {}).get("settings", {})
        elif run.is_file():
            st = json.loads(run.read_text()).get("settings", {})
        else:
            st = {}
        shown = keys.get(st.get("stage"), ())
        settings = ", ".join(f"{k} {st[k]}" for k in shown if k in st) or "-"
        lines.append(f"| {name} | `{_short(folder)}` | {st.get('stage', '-')} | "
                     f"{st.get('steps', '-')} | {settings} |")
    return "\n".join(lines)


def _short(folder: str) -> str:
    parts = Path(folder).parts
    return "/".join(parts[-3:]) if len(parts) > 3 else folder

