"""Paired differences between two methods judged on the same prompts and seeds.

Two methods that generate the same prompt with the same seed start from the same noise, so
their verdicts on that image pair are correlated; the difference of the two accuracies is
measured far more precisely from the pairs than from two unpaired means. The confidence
interval is a cluster bootstrap over prompts (the images of one prompt share it, so they are
resampled together), within each family, and the overall difference is the mean over the
families present, as `alignment.summarize`'s overall accuracy is.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..data.shapes.grammar import FAMILIES

RESAMPLES = 2000
LEVEL = 0.95


def pair_verdicts(first: list[dict], second: list[dict]) -> list[tuple[dict, dict]]:
    """The verdicts of the two lists that share prompt and seed, in `first`'s order.

    Raises:
        ValueError: when no image pairs up (the folders were made from other prompts or
            seeds).
    """
    by_key = {(v["prompt"], v["seed"]): v for v in second}
    pairs = [(v, by_key[(v["prompt"], v["seed"])]) for v in first
             if (v["prompt"], v["seed"]) in by_key]
    if not pairs:
        raise ValueError("no image pairs up: the folders share no (prompt, seed); a paired "
                         "comparison needs the same prompts and seeds")
    return pairs


def paired_difference(first: list[dict], second: list[dict], resamples: int = RESAMPLES,
                      seed: int = 0, level: float = LEVEL) -> dict[str, dict]:
    """second minus first, per split: each family's and the overall accuracy difference with a
    bootstrap confidence interval.

    Args:
        first, second: verdicts (`alignment.judge_images`): prompt, seed, split, family,
            satisfied. Only the images both have (same prompt and seed) count.
        resamples: bootstrap resamples.
        seed: the bootstrap's random seed.
        level: the interval's coverage.

    Returns:
        {split: {family or "overall": {"diff", "low", "high"}, "pairs": n, "prompts": n}}.
    """
    groups: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for a, b in pair_verdicts(first, second):
        groups[a["split"]][a["family"]][a["prompt"]].append(
            float(b["satisfied"]) - float(a["satisfied"]))
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    out = {}
    for split in sorted(groups):
        families = [f for f in FAMILIES if f in groups[split]]
        row, draws = {}, []
        for family in families:
            per_prompt = list(groups[split][family].values())
            sums = np.array([sum(d) for d in per_prompt])
            counts = np.array([len(d) for d in per_prompt])
            picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
            boot = sums[picks].sum(1) / counts[picks].sum(1)  # (resamples,)
            draws.append(boot)
            row[family] = _cell(sums.sum() / counts.sum(), boot, tail)
        overall = np.mean([row[f]["diff"] for f in families])
        row["overall"] = _cell(overall, np.mean(draws, axis=0), tail)
        row["pairs"] = sum(len(d) for fam in groups[split].values() for d in fam.values())
        row["prompts"] = sum(len(fam) for fam in groups[split].values())
        out[split] = row
    return out


def _cell(diff: float, boot: np.ndarray, tail: float) -> dict[str, float]:
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {"diff": float(diff), "low": float(low), "high": float(high)}


def format_paired(tables: dict[str, dict[str, dict]], against: str) -> str:
    """A Markdown table: one row per folder and split, each family's difference against
    `against` with its interval."""
    families = [f for f in FAMILIES if any(f in row for t in tables.values()
                                           for row in t.values())]
    columns = [*families, "overall"]
    lines = [f"Paired differences against {against} (same prompts and seeds; "
             f"{LEVEL:.0%} bootstrap intervals over prompts):", "",
             "| folder | split | " + " | ".join(columns) + " | pairs |",
             "|---" * (len(columns) + 3) + "|"]
    for folder, table in tables.items():
        for split, row in table.items():
            cells = [_format_cell(row[c]) if c in row else "-" for c in columns]
            lines.append(f"| {folder} | {split} | " + " | ".join(cells) + f" | {row['pairs']} |")
    return "\n".join(lines)


def _format_cell(cell: dict[str, float]) -> str:
    return f"{cell['diff']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"
