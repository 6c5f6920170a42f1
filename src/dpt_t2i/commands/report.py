"""`dpt report`: the paper's Tables 1-4 and Figs. 3-5 on the Shapes model, in one folder.

Generates the Shapes benchmark prompts of both splits with every method (base model,
Attend-and-Excite, HN-DiffusionITM LoRA, DPT, DPT + self-correction, stage 1 + self-
correction when --probe is another folder, referee generation from the model's sample and
from noise, and the stage-2 ablations) from the same seeds,
judges them, measures image quality and cost, evaluates every discriminative method on the
same image-text matching and REC items, and writes README.md (all tables), report.json,
fig3-blocks.png, fig4a-steps.png, fig4b-eta.png and fig5-grid.png into --out. Every run is
cached in --work, so a stopped report continues and a second one only rewrites the folder.
Rows whose trained folders are not given are left out; the README names them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..eval.report import ReportInputs, ReportSettings, Work, build_report, check_inputs
from ..eval.report_rows import SHAPES_REFEREES, referee_rows
from ..io.dpt_folder import default_dpt_path
from .model_args import add_threads_argument, quiet_loading, set_threads


def register(sub: argparse._SubParsersAction) -> None:
    D = ReportSettings  # the defaults
    p = sub.add_parser("report", help="the paper's tables and figures on the Shapes model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the tables, plots and grid go")
    p.add_argument("--work", type=Path, required=True, metavar="DIR",
                   help="cache of generated images and evaluations (reused when it matches)")
    trained = p.add_argument_group("trained folders (rows without theirs are left out)")
    trained.add_argument("--dpt", type=Path, default=None, metavar="DIR",
                         help="stage-2 DPT folder (default: the shipped Shapes DPT weights)")
    trained.add_argument("--probe", type=Path, default=None, metavar="DIR",
                         help="the stage-1 DPT folder it was tuned from (Table 1's stage 1 + SC "
                         "row, Table 3, Fig. 4a's step 0)")
    trained.add_argument("--hn-itm", type=Path, default=None, metavar="DIR",
                         help="`dpt tune-hn-itm`'s final/ (the HN-DiffusionITM baseline)")
    trained.add_argument("--match-only", type=Path, default=None, metavar="DIR",
                         help="stage 2 trained with --ground-weight 0 (Table 4)")
    trained.add_argument("--ground-only", type=Path, default=None, metavar="DIR",
                         help="stage 2 trained with --match-weight 0 (Table 4)")
    trained.add_argument("--curve", type=Path, default=None, metavar="RUN_DIR",
                         help="a `dpt tune` run folder trained with --keep-checkpoints 0 "
                              "(Fig. 4a)")
    trained.add_argument("--sweep", type=Path, default=None, metavar="RUN_DIR",
                         help="a `dpt sweep-blocks` run folder (Fig. 3)")
    p.add_argument("--seed", type=int, default=D.seed,
                   help=f"generation seed (default {D.seed})")
    p.add_argument("--num-images", type=int, default=D.num_images,
                   help=f"images per prompt (default {D.num_images})")
    p.add_argument("--eta", type=float, default=D.eta,
                   help=f"self-correction strength of DPT + SC (default {D.eta:g})")
    etas = ",".join(f"{e:g}" for e in D.etas)
    p.add_argument("--etas", default=etas, help=f"Fig. 4b's etas (default {etas})")
    p.add_argument("--n-itm", type=int, default=D.n_itm,
                   help=f"ITM items per split (default {D.n_itm})")
    p.add_argument("--n-itm-diffusion", type=int, default=D.n_itm_diffusion,
                   help="ITM items per split for DiffusionITM, 10 U-Net passes a pair "
                        f"(default {D.n_itm_diffusion})")
    p.add_argument("--n-rec", type=int, default=D.n_rec,
                   help=f"REC items per split (default {D.n_rec})")
    p.add_argument("--per-family", type=int, default=D.per_family,
                   help=f"benchmark prompts per family (default {D.per_family}, "
                        "`dpt prompts`'s lists; fewer makes a quick, noisier report)")
    p.add_argument("--no-attend-excite", action="store_true",
                   help="leave Attend-and-Excite out (the slowest sampler)")
    p.add_argument("--referees", default=",".join(D.referees), metavar="REFEREE:INIT,...",
                   help="Table 1's referee rows, `dpt referee --referee REFEREE --init INIT` "
                        f"with REFEREE one of {', '.join(SHAPES_REFEREES)} and INIT sample or "
                        f"noise; empty for none (default {','.join(D.referees)})")
    p.add_argument("--referee-images", type=int, default=None, metavar="N",
                   help="images per prompt of the referee rows (default: --num-images); "
                        "their paired differences are then against the base model drawn at N "
                        "a prompt from the same seeds")
    p.add_argument("--attend-excite-images", type=int, default=None, metavar="N",
                   help="images per prompt of Attend-and-Excite's row (default: --num-images), "
                        "paired likewise")
    add_threads_argument(p)
    p.set_defaults(run=run)


def command_line(args: argparse.Namespace) -> list[str]:
    """The report's arguments as a command line (defaults left out), for its README."""
    defaults = vars(build_defaults())
    argv = ["report"]
    for key, value in vars(args).items():
        if key in ("run", "command") or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def build_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    return parser.parse_args(["report", "--out", "", "--work", ""])


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    quiet_loading()
    try:
        etas = tuple(float(e) for e in args.etas.split(",") if e.strip())
    except ValueError:
        raise ValueError(f"--etas must be comma-separated numbers >= 0, "
                         f"got {args.etas!r}") from None
    settings = ReportSettings(seed=args.seed, num_images=args.num_images, eta=args.eta, etas=etas,
                              n_itm=args.n_itm, n_itm_diffusion=args.n_itm_diffusion,
                              n_rec=args.n_rec, attend_excite=not args.no_attend_excite,
                              per_family=args.per_family, threads=args.threads,
                              referees=referee_rows(args.referees),
                              referee_images=args.referee_images,
                              attend_excite_images=args.attend_excite_images)
    if args.out.resolve() == args.work.resolve():
        raise ValueError("--out and --work must be different folders")
    inputs = ReportInputs(dpt=args.dpt or default_dpt_path(), probe=args.probe,
                          hn_itm=args.hn_itm, match_only=args.match_only,
                          ground_only=args.ground_only, curve=args.curve, sweep=args.sweep)
    check_inputs(inputs)
    build_report(Work(args.work, settings), inputs, args.out, command_line(args))
    print(f"wrote {args.out / 'README.md'}")
    return 0
