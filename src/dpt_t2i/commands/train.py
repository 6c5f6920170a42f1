"""`dpt probe` (stage 1: U-Net frozen, adapter trains) and `dpt tune` (stage 2: LoRA too);
`dpt tune-hn-itm`, the HN-DiffusionITM baseline (LoRA only, no adapter).

All three train on the Shapes world by default (an endless stream of scenes with captions, hard
negatives and referring expressions) or on COCO captions (+ RefCOCO boxes) from local files.
A run folder holds checkpoints (`step-*`, `latest`), `log.jsonl`, `run_config.json`,
`summary.json` and, at the end, `final/`: the DPT folder that `dpt evaluate-disc`,
`dpt tune --init` and `dpt generate --dpt` read. Run under `accelerate launch` to train on
several GPUs or nodes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import UsageError
from .model_args import (add_model_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads)


def register(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("probe", help="DPT stage 1: train the adapter on a frozen U-Net",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(probe, steps=2000, lr=1e-3)
    probe.add_argument("--block", default="up1", metavar="NAME",
                       help="U-Net block to read: down0.., mid, up0.. (default up1)")
    probe.add_argument("--condition", choices=["empty", "caption"], default="empty",
                       help="text the U-Net sees when it makes the matching features "
                       "(default empty)")
    probe.add_argument("--ground-condition", choices=["expression", "empty"],
                       default="expression", help="text the U-Net sees when it makes the "
                       "grounding features (default expression: the referring expression)")
    probe.add_argument("--ground-text", choices=["tokens", "none"], default="tokens",
                       help="whether the grounding pass of the adapter reads the expression's "
                       "token states (default tokens; none: only through the U-Net)")
    probe.add_argument("--match-text", choices=["pooled", "tokens"], default="pooled",
                       help="text(y) of the matching score: the text encoder's pooled state "
                       "(default), or a learned reading of its token states")
    probe.add_argument("--d-model", type=int, default=128, help="adapter width (default 128)")
    probe.add_argument("--ground-queries", type=int, default=16,
                       help="grounding queries N-M (default 16)")
    probe.set_defaults(run=run, stage="probe")

    tune = sub.add_parser("tune", help="DPT stage 2: LoRA on the U-Net attention + adapter",
                          description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(tune, steps=2000, lr=1e-4)
    tune.add_argument("--init", type=Path, required=True, metavar="DPT",
                      help="stage 1's DPT folder (a probe run's final/): block, condition "
                           "and adapter weights to start from")
    _lora_arguments(tune)
    tune.add_argument("--mse-weight", type=float, default=0.0,
                      help="weight of the denoising MSE term (default 0: off)")
    tune.set_defaults(run=run, stage="tune")

    hn = sub.add_parser("tune-hn-itm", help="baseline: HN-DiffusionITM LoRA tuning (denoising "
                        "error low under the caption, high under a hard negative)",
                        description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(hn, steps=400, lr=None)
    _lora_arguments(hn)
    hn.add_argument("--hn-weight", type=float, default=1.0,
                    help="weight of the hard negative's denoising error (default 1)")
    hn.add_argument("--hn-clip", type=float, default=1.0,
                    help="that error is clipped at this many times the caption's (default 1, "
                         "the authors' hinge)")
    hn.set_defaults(run=run, stage="hn-itm")


def _lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-targets", choices=["cross", "all"], default="cross",
                   help="LoRA on cross-attention only or on all attention (default cross)")
    p.add_argument("--lora-lr", type=float, default=1e-4)


def _common(p: argparse.ArgumentParser, steps: int, lr: float | None) -> None:
    """The arguments of every stage; with `lr` None, no adapter ones (--lr, loss weights)."""
    p.add_argument("--run-dir", type=Path, required=True, help="folder for checkpoints and logs")
    add_model_argument(p)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=64, help="samples per process per micro-step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per update")
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr, help="adapter learning rate")
    p.add_argument("--t-min", type=int, default=0, help="smallest training timestep")
    p.add_argument("--t-max", type=int, default=1000, help="training timesteps are < this")
    if lr is not None:
        p.add_argument("--match-weight", type=float, default=1.0)
        p.add_argument("--ground-weight", type=float, default=1.0)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                   help="newest checkpoints kept (default 2); 0 keeps all, for `dpt report`'s "
                        "curve against training steps")
    p.add_argument("--resume", choices=["latest", "no"], default="latest",
                   help="continue from the run folder's latest checkpoint (default) or start over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensorboard", action="store_true", help="log losses to <run-dir>/logs")
    data = p.add_argument_group("real data (default: the Shapes world)")
    data.add_argument("--coco-captions", type=Path, metavar="JSON", help="captions_*.json")
    data.add_argument("--coco-images", type=Path, metavar="DIR", help="its image folder")
    data.add_argument("--refcoco-refs", type=Path, metavar="PICKLE", help="refs(unc).p / refs(umd).p")
    data.add_argument("--refcoco-instances", type=Path, metavar="JSON", help="instances.json")
    data.add_argument("--resolution", type=int, default=None,
                      help="image side fed to the VAE (default: the U-Net's sample size x 8)")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    settings = _settings(args)
    model = model_folder(args.model)
    quiet_loading()
    from ..io.bundle import load_bundle
    from ..training.loop import train_dpt

    bundle = load_bundle(model)
    config, init_heads = _dpt_config(args, bundle)
    source = _source(args, bundle, settings)
    _check_run_folder(args.run_dir, model, config, settings, args.resume == "latest")
    summary = train_dpt(args.run_dir, bundle, source, config, settings, init_heads,
                        resume=args.resume == "latest")
    print(json.dumps({k: summary[k] for k in ("stage", "steps", "wall_s", "s_per_step",
                                              "skipped_images", "final_losses")}))
    print(f"DPT weights: {args.run_dir / 'final'}")
    return 0


def _settings(args: argparse.Namespace):
    from ..training.settings import TrainSettings

    for name in ("steps", "batch", "grad_accum", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.keep_checkpoints < 0:
        raise UsageError(f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
    for name in ("lr", "match_weight", "ground_weight", "lora_lr", "mse_weight", "hn_weight",
                 "hn_clip"):
        value = getattr(args, name, 0.0)
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if not 0 <= args.t_min < args.t_max <= 1000:
        raise UsageError(f"need 0 <= --t-min < --t-max <= 1000, got {args.t_min} and {args.t_max}")
    if args.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package: "
                             "pip install tensorboard") from None
    return TrainSettings(
        stage=args.stage, steps=args.steps, batch=args.batch, grad_accum=args.grad_accum,
        lr=getattr(args, "lr", 0.0), lora_lr=getattr(args, "lora_lr", 1e-4), t_min=args.t_min,
        t_max=args.t_max, match_weight=getattr(args, "match_weight", 0.0),
        ground_weight=getattr(args, "ground_weight", 0.0),
        mse_weight=getattr(args, "mse_weight", 0.0), hn_weight=getattr(args, "hn_weight", 1.0),
        hn_clip=getattr(args, "hn_clip", 1.0), mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        log_with="tensorboard" if args.tensorboard else None)


def _dpt_config(args: argparse.Namespace, bundle):
    """The DPT config of the run, and the heads to start from (stage 2)."""
    from ..io.dpt_folder import load_dpt
    from ..model.adapter import AdapterConfig
    from ..model.config import DPTConfig
    from ..model.features import block_channels, block_names
    from ..model.lora import LoraSettings

    if args.stage != "probe" and args.lora_rank < 1:
        raise UsageError(f"--lora-rank must be >= 1, got {args.lora_rank}")
    if args.stage == "hn-itm":  # LoRA only; the block is never read
        return DPTConfig(adapter=None, lora=LoraSettings(
            rank=args.lora_rank, alpha=float(args.lora_rank), targets=args.lora_targets)), None
    if args.stage == "tune":
        try:
            heads, config = load_dpt(args.init)
        except ValueError as err:
            raise UsageError(f"--init: {err}") from None
        if config.lora is not None:
            raise UsageError(f"--init {args.init} already holds LoRA weights (a tune run's "
                             "output); give a probe run's final/ folder")
        _check_fits(config, bundle, f"--init {args.init}")
        config.lora = LoraSettings(rank=args.lora_rank, alpha=float(args.lora_rank),
                                   targets=args.lora_targets)
        return config, heads
    names = block_names(bundle.unet)
    if args.block not in names:
        raise UsageError(f"unknown --block {args.block!r}; this U-Net has {', '.join(names)}")
    if args.d_model < 8 or args.ground_queries < 1:
        raise UsageError("--d-model must be >= 8 and --ground-queries >= 1")
    adapter = AdapterConfig(
        feature_dim=block_channels(bundle.unet, args.block),
        text_dim=bundle.text_encoder.config.hidden_size, d_model=args.d_model,
        n_heads=max(1, args.d_model // 32), ffn_dim=4 * args.d_model,
        n_ground_queries=args.ground_queries,
        max_hw=max(16, latent_side(bundle, args)), ground_text=args.ground_text == "tokens",
        match_text=args.match_text)
    return DPTConfig(block=args.block, condition=args.condition,
                     ground_condition=args.ground_condition, adapter=adapter), None


def image_side(bundle, args: argparse.Namespace) -> int:
    """Pixels per image side the run feeds the VAE: the Shapes canvas or --resolution."""
    from ..data.shapes.world import CANVAS

    if getattr(args, "coco_captions", None) is None:
        return CANVAS
    return args.resolution or 8 * int(bundle.unet.config.sample_size)


def latent_side(bundle, args: argparse.Namespace) -> int:
    """Latent side for those images: the VAE halves the side once per extra level."""
    return image_side(bundle, args) // 2 ** (len(bundle.vae.config.block_out_channels) - 1)


def _check_fits(config, bundle, what: str) -> None:
    from ..model.features import block_channels

    want = block_channels(bundle.unet, config.block)
    text = bundle.text_encoder.config.hidden_size
    if config.adapter.feature_dim != want or config.adapter.text_dim != text:
        raise UsageError(f"{what} was trained for another model: it reads {config.block} with "
                         f"{config.adapter.feature_dim} channels and {config.adapter.text_dim}-wide "
                         f"text; this model has {want} and {text}")


def _source(args: argparse.Namespace, bundle, settings):
    from ..data.sources import ShapesSource

    if args.coco_captions is None and args.coco_images is None:
        if args.refcoco_refs or args.refcoco_instances:
            raise UsageError("RefCOCO files need --coco-captions and --coco-images too "
                             "(captions give the matching objective its texts)")
        return ShapesSource(seed=settings.seed, n_negatives=settings.n_negatives)
    if args.coco_captions is None or args.coco_images is None:
        raise UsageError("give both --coco-captions and --coco-images")
    if (args.refcoco_refs is None) != (args.refcoco_instances is None):
        raise UsageError("give both --refcoco-refs and --refcoco-instances, or neither")
    from ..data.coco import read_coco_captions
    from ..data.real import RealDPTData
    from ..data.refcoco import read_refcoco

    resolution = image_side(bundle, args)
    captioned = read_coco_captions(args.coco_captions, args.coco_images)
    refs = (read_refcoco(args.refcoco_refs, args.refcoco_instances, args.coco_images, {"train"})
            if args.refcoco_refs else None)
    return RealDPTData(captioned, refs, resolution, settings.n_negatives, settings.seed)


def _check_run_folder(run_dir: Path, model: Path, config, settings, resume: bool) -> None:
    """Record what the run is; a resumed run must be the same run."""
    from dataclasses import asdict

    record = {"model": str(model), "dpt": config.to_dict(),
              "settings": {k: v for k, v in asdict(settings).items()
                           if k not in ("checkpoint_every", "keep_checkpoints", "log_with")}}
    file = Path(run_dir) / "run_config.json"
    if resume and file.is_file():
        old = json.loads(file.read_text())
        diff = [k for k in ("model", "dpt", "settings") if old.get(k) != record[k]]
        if diff:
            keys = [f"{k}.{kk}" for k in diff for kk in (record[k] if isinstance(record[k], dict) else [""])
                    if not isinstance(record[k], dict) or old.get(k, {}).get(kk) != record[k][kk]]
            raise UsageError(f"{run_dir} holds a different run ({', '.join(keys)} differ); "
                             "use another --run-dir or --resume no to start over")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(record, indent=1))
