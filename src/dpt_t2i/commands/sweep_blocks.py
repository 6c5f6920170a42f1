"""`dpt sweep-blocks`: probe every U-Net block and compare them (the paper's Fig. 3).

For each block, a stage-1 probe run goes to RUN_DIR/<block>/ (resumable: a finished block
is not trained again) and is evaluated with `dpt evaluate-disc`'s Shapes protocol (cached
in RUN_DIR/<block>/eval.json). RUN_DIR/sweep.md holds the table, RUN_DIR/sweep.png the plot
of OOD ITM overall and REC accuracy per block.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.sources import ShapesSource
from ..eval.disc_run import DiscSettings
from ..eval.discriminative import DiscriminativeScorer, evaluate_shapes
from ..eval.plots import bar_chart
from ..io.bundle import load_bundle
from ..io.dpt_folder import load_dpt
from ..model.adapter import AdapterConfig
from ..model.config import CONDITIONS, DPTConfig
from ..model.features import block_channels, block_names
from ..training.loop import train_dpt
from ..training.settings import TrainSettings
from .model_args import (add_model_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads, settings_from_args)
from .train import latent_side


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep-blocks", help="probe every U-Net block; table and plot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True)
    add_model_argument(p)
    p.add_argument("--blocks", default=None, help="comma-separated (default: all blocks)")
    # a short probe per block (TrainSettings.steps is a full run's): the blocks are compared
    p.add_argument("--steps", type=int, default=500, help="probe steps per block (default 500)")
    p.add_argument("--batch", type=int, default=TrainSettings.batch)
    p.add_argument("--t-max", type=int, default=TrainSettings.t_max,
                   help="training timesteps are < this")
    p.add_argument("--condition", choices=CONDITIONS, default=DPTConfig.condition)
    p.add_argument("--timestep", type=int, default=DiscSettings.timestep)
    p.add_argument("--n-itm", type=int, default=DiscSettings.n_itm)
    p.add_argument("--n-rec", type=int, default=DiscSettings.n_rec)
    p.add_argument("--seed", type=int, default=TrainSettings.seed)
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    settings = settings_from_args(TrainSettings, args, stage="probe")
    model = model_folder(args.model)
    quiet_loading()
    names = block_names(load_bundle(model).unet)
    blocks = args.blocks.split(",") if args.blocks else names
    unknown = [b for b in blocks if b not in names]
    if unknown:
        raise ValueError(f"unknown block(s) {', '.join(unknown)}; this U-Net has "
                         f"{', '.join(names)}")
    rows = {block: _probe_and_evaluate(args, model, block, settings) for block in blocks}
    write_sweep(args.run_dir, rows, args)
    print((args.run_dir / "sweep.md").read_text())
    return 0


def _probe_and_evaluate(args: argparse.Namespace, model: Path, block: str,
                        settings: TrainSettings) -> dict:
    run_dir = args.run_dir / block
    cached = run_dir / "eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    bundle = load_bundle(model)  # fresh: a run must not see another's state
    if not (run_dir / "final").is_dir():
        config = DPTConfig(block=block, condition=args.condition, adapter=AdapterConfig(
            feature_dim=block_channels(bundle.unet, block),
            text_dim=bundle.text_encoder.config.hidden_size,
            max_hw=max(16, latent_side(bundle, args))))
        print(f"probing {block}")
        train_dpt(run_dir, bundle, ShapesSource(seed=args.seed), config, settings)
    heads, config = load_dpt(run_dir / "final", bundle.unet)
    scorer = DiscriminativeScorer(bundle, heads, config, args.timestep)
    result = evaluate_shapes(scorer, n_itm=args.n_itm, n_rec=args.n_rec)
    summary = json.loads((run_dir / "summary.json").read_text())
    result["s_per_step"] = summary["s_per_step"]
    cached.write_text(json.dumps(result, indent=1))
    return result


def write_sweep(run_dir: Path, rows: dict[str, dict], args: argparse.Namespace) -> None:
    """sweep.md (table) and sweep.png (OOD ITM overall and REC per block)."""
    lines = [f"Probe of each block: {args.steps} steps x {args.batch}, condition "
             f"{args.condition}; evaluated at t={args.timestep}.", "",
             "| block | ITM ID | ITM OOD | REC ID | REC OOD | s/step |",
             "|---|---|---|---|---|---|"]
    for block, r in rows.items():
        lines.append(f"| {block} | {r['itm']['id']['overall']:.3f}"
                     f" | {r['itm']['ood']['overall']:.3f} | {r['rec']['id']['acc']:.3f}"
                     f" | {r['rec']['ood']['acc']:.3f}"
                     f" | {r.get('s_per_step') or float('nan'):.3f} |")
    (run_dir / "sweep.md").write_text("\n".join(lines) + "\n")
    blocks = list(rows)
    bar_chart(run_dir / "sweep.png", "DPT probe per U-Net block (Shapes, OOD split)", blocks,
              {"ITM overall": [rows[b]["itm"]["ood"]["overall"] for b in blocks],
               "REC acc@0.5": [rows[b]["rec"]["ood"]["acc"] for b in blocks]}, chance=0.25)
