"""`dpt evaluate-disc`: how well a DPT model discriminates, as in the paper's Table 3.

Image-text matching: one positive and three hard negatives (chance 0.25), image-to-text,
text-to-image and overall (their mean). Referring expressions: accuracy at IoU >= 0.5 per
split. On the Shapes world (default) both run on fresh ID and OOD scenes; with COCO captions
and/or RefCOCO files they run on those (`--refcoco-splits`, default val,testA,testB).
Every image is noised once to `--timestep` with seeded noise before the U-Net reads it.

`--method` picks the scorer: `dpt` (default; the DPT folder's adapter), `clip` (the Shapes
CLIP zero-shot, or `--clip-model PATH`: cosine of image and text embeddings) or
`diffusion-itm` (the U-Net's denoising error over `--itm-timesteps`, zero-shot; with `--dpt`
a LoRA folder such as `dpt tune-hn-itm`'s final/, which gives HN-DiffusionITM). The two
baselines score ITM only. The result names how many U-Net evaluations one pair costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ..eval.zero_shot import DEFAULT_TIMESTEPS
from .model_args import (add_model_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-disc", help="image-text matching and referring-expression "
                       "accuracy of a DPT model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="dpt",
                   help="scorer (default dpt; see above)")
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="a DPT folder (a probe or tune run's final/); needed by --method dpt, "
                        "optional LoRA for diffusion-itm")
    p.add_argument("--clip-model", type=Path, default=None, metavar="PATH",
                   help="--method clip: a transformers CLIP folder (default: the Shapes CLIP)")
    p.add_argument("--itm-timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)),
                   metavar="T,T,...", help="--method diffusion-itm: the timesteps whose "
                   "denoising errors are averaged (default 50,150,...,950)")
    add_model_argument(p)
    p.add_argument("--timestep", type=int, default=100, help="noise level t the U-Net sees "
                   "(default 100)")
    p.add_argument("--n-itm", type=int, default=200, help="ITM items per split (default 200)")
    p.add_argument("--n-rec", type=int, default=400, help="REC items per split (default 400)")
    p.add_argument("--seed", type=int, default=1,
                   help="evaluation stream and noise seed (default 1; training uses 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys itm, rec)")
    data = p.add_argument_group("real data (default: the Shapes world)")
    data.add_argument("--coco-captions", type=Path, metavar="JSON")
    data.add_argument("--coco-images", type=Path, metavar="DIR")
    data.add_argument("--refcoco-refs", type=Path, metavar="PICKLE")
    data.add_argument("--refcoco-instances", type=Path, metavar="JSON")
    data.add_argument("--refcoco-images", type=Path, metavar="DIR",
                      help="image folder of the refs (default --coco-images)")
    data.add_argument("--refcoco-splits", default="val,testA,testB")
    data.add_argument("--resolution", type=int, default=None,
                      help="image side fed to the VAE (default: the U-Net's sample size x 8)")
    add_threads_argument(p)
    p.set_defaults(run=run)


METHODS = ("dpt", "clip", "diffusion-itm")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.method == "dpt" and args.dpt is None:
        raise UsageError("--method dpt needs --dpt PATH (a probe or tune run's final/)")
    if args.method == "clip" and args.dpt is not None:
        raise UsageError("--method clip reads no DPT folder; drop --dpt")
    timesteps = _timesteps(args.itm_timesteps)
    if not 0 <= args.timestep < 1000:
        raise UsageError(f"--timestep must be in [0, 1000), got {args.timestep}")
    if args.n_itm < 0 or args.n_rec < 0 or args.n_itm + args.n_rec == 0:
        raise UsageError("--n-itm and --n-rec must be >= 0 and not both 0")
    if args.method != "dpt":
        if args.n_itm == 0:
            raise UsageError(f"--method {args.method} scores image-text matching only; "
                             "--n-itm must be > 0")
        args.n_rec = 0  # the baselines draw no boxes
    model = model_folder(args.model)
    quiet_loading()
    from ..io.bundle import load_bundle

    bundle = load_bundle(model)
    settings = {"method": args.method, "dpt": str(args.dpt) if args.dpt else None,
                "model": str(model), "seed": args.seed}
    scorer = _scorer(args, bundle, timesteps, settings)
    real = any(getattr(args, k) for k in ("coco_captions", "coco_images", "refcoco_refs"))
    result = _real(args, scorer, bundle) if real else _shapes(args, scorer)
    settings["unet_evals_per_pair"] = scorer.unet_evals_per_pair
    result["settings"] = settings
    print(json.dumps(result) if args.json else format_tables(result))
    return 0


def _timesteps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        steps = ()
    if not steps or not all(0 <= t < 1000 for t in steps):
        raise UsageError(f"--itm-timesteps must be comma-separated whole numbers in [0, 1000), "
                         f"got {text!r}")
    return steps


def _scorer(args, bundle, timesteps: tuple[int, ...], settings: dict):
    """The scorer of --method; records its settings."""
    from ..io.dpt_folder import load_dpt

    if args.method == "clip":
        from ..eval.quality import CLIP_FOLDER, load_clip_and_tokenizer
        from ..eval.zero_shot import CLIPScorer

        folder = args.clip_model or CLIP_FOLDER
        try:
            clip, tokenizer = load_clip_and_tokenizer(folder)
        except (OSError, ValueError) as err:
            raise UsageError(f"--clip-model {folder}: not a transformers CLIP folder with its "
                             f"tokenizer ({str(err).splitlines()[0]})") from None
        settings["clip_model"] = str(folder)
        return CLIPScorer(clip, tokenizer)
    try:
        heads, config = (load_dpt(args.dpt, bundle.unet, lora_only_ok=args.method != "dpt")
                         if args.dpt is not None else (None, None))
    except ValueError as err:
        raise UsageError(f"--dpt: {err}") from None
    if args.method == "diffusion-itm":
        from ..eval.zero_shot import DiffusionITMScorer

        settings["itm_timesteps"] = list(timesteps)
        return DiffusionITMScorer(bundle, timesteps, args.seed)
    from ..eval.discriminative import DiscriminativeScorer

    settings.update(timestep=args.timestep, condition=config.condition, block=config.block)
    return DiscriminativeScorer(bundle, heads, config, args.timestep, args.seed)


def _shapes(args, scorer) -> dict:
    from ..eval.discriminative import evaluate_itm, evaluate_rec, shapes_itm_item, shapes_rec_items

    out: dict = {"itm": {}, "rec": {}}
    for split in ("id", "ood"):
        if args.n_itm:
            items = [shapes_itm_item(args.seed, i, split) for i in range(args.n_itm)]
            out["itm"][split] = evaluate_itm(scorer, items, progress=True)
        if args.n_rec:
            out["rec"][split] = evaluate_rec(scorer, shapes_rec_items(args.seed, split, args.n_rec),
                                             progress=True)
    return out


def _real(args, scorer, bundle) -> dict:
    from ..data.coco import read_coco_captions
    from ..data.real import RecEvalSet
    from ..data.refcoco import read_refcoco
    from ..eval.discriminative import RECItem, coco_itm_items, evaluate_itm, evaluate_rec

    resolution = args.resolution or 8 * int(bundle.unet.config.sample_size)
    out: dict = {"itm": {}, "rec": {}, "skipped_images": 0}
    if (args.coco_captions is None) != (args.coco_images is None):
        raise UsageError("give both --coco-captions and --coco-images")
    if args.coco_captions and args.n_itm:
        captioned = read_coco_captions(args.coco_captions, args.coco_images)
        if len(captioned) < 4:
            raise UsageError(f"{args.coco_captions} has {len(captioned)} captioned images; "
                             "ITM needs at least 4 (one positive, three negative images)")
        items, skipped = coco_itm_items(captioned, resolution, args.n_itm, args.seed)
        out["skipped_images"] += skipped
        if items:
            out["itm"]["coco"] = evaluate_itm(scorer, items, progress=True)
    if args.refcoco_refs and args.n_rec:
        if args.refcoco_instances is None:
            raise UsageError("--refcoco-refs needs --refcoco-instances")
        images = args.refcoco_images or args.coco_images
        if images is None:
            raise UsageError("give --refcoco-images (or --coco-images) for the RefCOCO images")
        splits = [s for s in args.refcoco_splits.split(",") if s]
        refs = read_refcoco(args.refcoco_refs, args.refcoco_instances, images, set(splits))
        for split in splits:
            evalset = RecEvalSet([r for r in refs if r.split == split], resolution)
            items = [RECItem(ex.image, ex.sentence, ex.box, split) for ex in evalset][:args.n_rec]
            out["skipped_images"] += evalset.skipped
            if items:
                out["rec"][split] = evaluate_rec(scorer, items, progress=True)
    return out


def format_tables(result: dict) -> str:
    lines = []
    if result["itm"]:
        lines += ["image-text matching (1 positive vs 3 hard negatives; chance 0.25)",
                  f"{'split':<8}{'i2t':>8}{'t2i':>8}{'overall':>9}{'n':>6}"]
        lines += [f"{s:<8}{r['i2t']:>8.3f}{r['t2i']:>8.3f}{r['overall']:>9.3f}{r['n']:>6}"
                  for s, r in result["itm"].items()]
    if result["rec"]:
        lines += ["", "referring expressions (accuracy at IoU >= 0.5)",
                  f"{'split':<8}{'acc':>8}{'mIoU':>8}{'n':>6}"]
        lines += [f"{s:<8}{r['acc']:>8.3f}{r['mean_iou']:>8.3f}{r['n']:>6}"
                  for s, r in result["rec"].items()]
    if result.get("skipped_images"):
        lines += ["", f"skipped {result['skipped_images']} missing or unreadable images"]
    settings = result.get("settings", {})
    if "unet_evals_per_pair" in settings:
        lines += ["", f"{settings['method']}: {settings['unet_evals_per_pair']} U-Net "
                  "evaluation(s) per image-text pair"]
    return "\n".join(lines).strip()
