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
from dataclasses import asdict, fields
from pathlib import Path

from ..data.coco import MissingImages, read_coco_captions
from ..data.real import RealDPTData
from ..data.refcoco import read_refcoco
from ..data.shapes.world import CANVAS
from ..data.sources import ShapesSource
from ..io.bundle import load_bundle
from ..io.dpt_folder import load_dpt
from ..model.adapter import MATCH_TEXTS, AdapterConfig
from ..model.config import CONDITIONS, GROUND_CONDITIONS, PROBE_CONDITION, DPTConfig
from ..model.features import block_channels, block_names
from ..model.lora import TARGETS, LoraSettings
from ..training.cache import LatentCache, read_manifest
from ..training.loop import train_dpt
from ..training.run_record import check_world_size, recorded_world_size
from ..training.settings import STAGE_DEFAULTS, TrainSettings
from .model_args import (add_model_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads, settings_from_args)
from .validation_args import (add_validation_arguments, check_validation_lengths,
                              validation_from_args)


def register(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("probe", help="DPT stage 1: train the adapter on a frozen U-Net",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(probe, "probe")
    _adapter_arguments(probe)
    probe.set_defaults(run=run, stage="probe")
    _preset_argument(probe, "probe")

    tune = sub.add_parser("tune", help="DPT stage 2: LoRA on the U-Net attention + adapter",
                          description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(tune, "tune")
    tune.add_argument("--init", type=Path, required=True, metavar="DPT",
                      help="stage 1's DPT folder (a probe run's final/): block, condition "
                           "and adapter weights to start from")
    _lora_arguments(tune)
    tune.add_argument("--mse-weight", type=float, default=TrainSettings.mse_weight,
                      help="weight of the denoising MSE term (default "
                           f"{TrainSettings.mse_weight:g}: off)")
    tune.set_defaults(run=run, stage="tune")
    _preset_argument(tune, "tune")

    hn = sub.add_parser("tune-hn-itm", help="baseline: HN-DiffusionITM LoRA tuning (denoising "
                        "error low under the caption, high under a hard negative)",
                        description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(hn, "hn-itm")
    _lora_arguments(hn)
    hn.add_argument("--hn-weight", type=float, default=TrainSettings.hn_weight,
                    help="weight of the hard negative's denoising error (default "
                         f"{TrainSettings.hn_weight:g})")
    hn.add_argument("--hn-clip", type=float, default=TrainSettings.hn_clip,
                    help=f"that error is clipped at this many times the caption's (default "
                         f"{TrainSettings.hn_clip:g}, the authors' hinge)")
    hn.set_defaults(run=run, stage="hn-itm")


def _adapter_arguments(p: argparse.ArgumentParser) -> None:
    """Stage 1's choices: the block, the texts the U-Net sees, the adapter's shape."""
    config, adapter = DPTConfig, AdapterConfig  # their fields' defaults
    p.add_argument("--block", default=config.block, metavar="NAME",
                   help=f"U-Net block to read: down0.., mid, up0.. (default {config.block})")
    p.add_argument("--condition", choices=CONDITIONS, default=PROBE_CONDITION,
                   help="text the U-Net sees when it makes the matching features: empty, "
                   "the true caption for every candidate (caption), or each candidate's own "
                   f"text (each; a U-Net pass per candidate) (default {PROBE_CONDITION}: it "
                   "measures better, docs/dpt-shapes.md)")
    p.add_argument("--ground-condition", choices=GROUND_CONDITIONS,
                   default=config.ground_condition, help="text the U-Net sees when it makes "
                   f"the grounding features (default {config.ground_condition}: the referring "
                   "expression)")
    ground_text = "tokens" if adapter.ground_text else "none"
    p.add_argument("--ground-text", choices=["tokens", "none"], default=ground_text,
                   help="whether the grounding pass of the adapter reads the expression's "
                   f"token states (default {ground_text}; none: only through the U-Net)")
    p.add_argument("--match-text", choices=MATCH_TEXTS, default=adapter.match_text,
                   help="text(y) of the matching score: the text encoder's pooled state "
                   "(default), or a learned reading of its token states")
    p.add_argument("--d-model", type=int, default=adapter.d_model,
                   help=f"adapter width (default {adapter.d_model})")
    p.add_argument("--ground-queries", type=int, default=adapter.n_ground_queries,
                   help=f"grounding queries N-M (default {adapter.n_ground_queries})")
    p.add_argument("--match-queries", type=int, default=adapter.n_match_queries,
                   help=f"matching queries M (default {adapter.n_match_queries})")
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads of the adapter (default: d-model / 32, at least 1)")
    p.add_argument("--ffn-dim", type=int, default=None,
                   help="feed-forward width of the adapter's layers (default: 4 x d-model)")
    p.add_argument("--dropout", type=float, default=adapter.dropout,
                   help=f"dropout in the adapter's layers (default {adapter.dropout:g})")


def _lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora-rank", type=int, default=LoraSettings.rank)
    p.add_argument("--lora-targets", choices=list(TARGETS), default=LoraSettings.targets,
                   help="LoRA on cross-attention only or on all attention (default "
                        f"{LoraSettings.targets})")
    p.add_argument("--lora-lr", type=float, default=TrainSettings.lora_lr)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the U-Net's activations in the backward pass: less memory, "
                   "a slower step (docs/training.md)")


def _common(p: argparse.ArgumentParser, stage: str) -> None:
    """The arguments of every stage; hn-itm trains no adapter, so has no --lr or loss weights."""
    defaults = vars(TrainSettings(stage=stage, **STAGE_DEFAULTS[stage]))
    p.set_defaults(**STAGE_DEFAULTS[stage])  # hn-itm: the adapter values it records, unflagged
    p.add_argument("--run-dir", type=Path, required=True, help="folder for checkpoints and logs")
    add_model_argument(p)
    p.add_argument("--steps", type=int, default=defaults["steps"])
    p.add_argument("--batch", type=int, default=defaults["batch"],
                   help="samples per process per micro-step")
    p.add_argument("--grad-accum", type=int, default=defaults["grad_accum"],
                   help="micro-steps per update")
    if stage != "hn-itm":
        p.add_argument("--lr", type=float, default=defaults["lr"], help="adapter learning rate")
    p.add_argument("--warmup", type=int, default=defaults["warmup"],
                   help=f"steps of linear learning-rate warm-up (default {defaults['warmup']})")
    p.add_argument("--lr-floor", type=float, default=defaults["lr_floor"],
                   help="the cosine decay ends at this fraction of each rate (default "
                   f"{defaults['lr_floor']:g}; 1: constant after the warm-up)")
    p.add_argument("--grad-clip", type=float, default=defaults["grad_clip"],
                   help="clip the gradient norm to this (default "
                   f"{defaults['grad_clip']:g}; 0: off)")
    p.add_argument("--negatives", dest="n_negatives", type=int,
                   default=defaults["n_negatives"], metavar="K",
                   help=f"hard negatives a caption (default {defaults['n_negatives']})")
    p.add_argument("--t-min", type=int, default=defaults["t_min"],
                   help="smallest training timestep")
    p.add_argument("--t-max", type=int, default=defaults["t_max"],
                   help="training timesteps are < this")
    if stage != "hn-itm":
        p.add_argument("--match-weight", type=float, default=defaults["match_weight"])
        p.add_argument("--ground-weight", type=float, default=defaults["ground_weight"])
        p.add_argument("--batch-negatives", type=int, default=defaults["batch_negatives"],
                       metavar="R", help="condition each: the captions of R other images of "
                       "the batch each image is also scored against, one U-Net pass each "
                       f"(default {defaults['batch_negatives']}); they give the text-to-image "
                       "half of the matching loss")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                   default=defaults["mixed_precision"],
                   help="autocast precision; the frozen weights (U-Net, VAE, text encoder) are "
                   "stored in it, what trains stays float32 (default no)")
    p.add_argument("--allow-tf32", action="store_true",
                   help="TF32 matrix products and convolutions (Ampere and later GPUs)")
    p.add_argument("--channels-last", action="store_true",
                   help="the U-Net in channels-last memory format (faster convolutions on "
                   "recent GPUs)")
    p.add_argument("--checkpoint-every", type=int, default=defaults["checkpoint_every"])
    p.add_argument("--keep-checkpoints", type=int, default=defaults["keep_checkpoints"],
                   metavar="N", help=f"newest checkpoints kept (default "
                   f"{defaults['keep_checkpoints']}); 0 keeps all, for `dpt report`'s curve "
                   "against training steps")
    p.add_argument("--resume", choices=["latest", "no"], default="latest",
                   help="continue from the run folder's newest intact checkpoint (default; it "
                   "says which) or start over (the old run's checkpoints go once this run has "
                   "written its first)")
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--tensorboard", action="store_true", help="log losses to <run-dir>/logs")
    if stage != "hn-itm":
        p.add_argument("--global-negatives", action="store_true",
                       help="the matching loss over every process's batch: N processes of "
                       "batch B train as one of N x B (docs/training-data.md)")
    p.add_argument("--workers", type=int, default=defaults["workers"], metavar="N",
                   help="processes that decode and collate the coming batches (default "
                   f"{defaults['workers']}: in the training process)")
    p.add_argument("--prefetch", type=int, default=defaults["prefetch"], metavar="N",
                   help=f"batches each worker keeps ready (default {defaults['prefetch']})")
    _data_arguments(p)
    add_validation_arguments(p, stage)
    add_threads_argument(p)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("real data (default: the Shapes world)")
    data.add_argument("--coco-captions", type=Path, metavar="JSON", help="captions_*.json")
    data.add_argument("--coco-images", type=Path, metavar="DIR", help="its image folder")
    data.add_argument("--refcoco-refs", type=Path, metavar="PICKLE",
                      help="refs(unc).p / refs(umd).p")
    data.add_argument("--refcoco-instances", type=Path, metavar="JSON", help="instances.json")
    data.add_argument("--resolution", type=int, default=None,
                      help="image side fed to the VAE (default: the U-Net's sample size x 8)")
    data.add_argument("--cache", type=Path, metavar="DIR",
                      help="a `dpt cache` folder: its latents and text states instead of the "
                      "images and the frozen encoders")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    _resolve_presets(args)
    _check_recipe(args)
    settings = _settings(args)
    model = model_folder(args.model)
    validation = validation_from_args(args, model)  # before the model loads
    quiet_loading()
    bundle = load_bundle(model)
    check_validation_lengths(validation, bundle)
    config, init_heads = _dpt_config(args, bundle)
    source = _source(args, bundle, settings)
    record = _check_run_folder(args.run_dir, model, config, settings, args.resume == "latest")
    record["preset"] = getattr(args, "preset", None)
    if validation is not None:  # what the images under <run-dir>/validation show
        record["validation"] = {**asdict(validation.settings), **validation.fields}
    summary = train_dpt(args.run_dir, bundle, source, config, settings, init_heads,
                        resume=args.resume == "latest", record=record, validation=validation)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one report for the run, not one a process
        print(json.dumps({k: summary[k] for k in ("stage", "steps", "wall_s", "s_per_step",
                                                  "skipped_images", "final_losses")}))
        print(f"DPT weights: {args.run_dir / 'final'}")
    return 0


# The authors' recipe for SD-2.1 (LgQu/DPT-T2I, train_stage1.py and train_stage2.py defaults;
# docs/reproduce-sd21.md): adapter width 256, 8 heads, feed-forward 2048, dropout 0.1, 10
# matching and 100 grounding queries on block up1; 512 px, batch 16 a GPU, AdamW at 1e-4 at a
# constant rate without warm-up, gradient norm clipped at 1; stage 2: LoRA rank 4 on every
# attention layer, the denoising term at weight 1 (--mse_loss_coef).
PRESETS = {"sd21-paper": {
    "probe": {"block": "up1", "d_model": 256, "n_heads": 8, "ffn_dim": 2048,
              "match_queries": 10, "ground_queries": 100, "dropout": 0.1, "batch": 16,
              "resolution": 512, "lr": 1e-4, "warmup": 0, "lr_floor": 1.0, "grad_clip": 1.0},
    "tune": {"batch": 16, "resolution": 512, "lr": 1e-4, "lora_lr": 1e-4, "lora_rank": 4,
             "lora_targets": "all", "mse_weight": 1.0, "warmup": 0, "lr_floor": 1.0,
             "grad_clip": 1.0}}}


def _preset_argument(p: argparse.ArgumentParser, stage: str) -> None:
    """--preset; the flags a preset sets parse to None when not given, so a flag given
    explicitly wins over the preset and the preset over the flag's default."""
    names = sorted(PRESETS)
    p.add_argument("--preset", choices=names, default=None,
                   help=f"a named recipe ({', '.join(names)}: the authors' SD-2.1 training, "
                   "docs/training.md); flags given beside it win")
    keys = {k for preset in PRESETS.values() for k in preset[stage]}
    defaults = {}
    for action in p._actions:
        if action.dest in keys:
            defaults[action.dest], action.default = action.default, None
    p.set_defaults(flag_defaults=defaults)


def _resolve_presets(args: argparse.Namespace) -> None:
    """Fill the flags left unset from --preset, then from their defaults."""
    preset = PRESETS[args.preset][args.stage] if getattr(args, "preset", None) else {}
    for dest, default in getattr(args, "flag_defaults", {}).items():
        if getattr(args, dest) is None:
            setattr(args, dest, preset.get(dest, default))


def _check_recipe(args: argparse.Namespace) -> None:
    """The recipe flags TrainSettings and AdapterConfig do not check, named as flags."""
    if args.n_negatives < 1:
        raise ValueError(f"--negatives must be >= 1, got {args.n_negatives}")
    if args.stage != "probe":
        return
    if args.d_model < 8 or args.ground_queries < 1 or args.match_queries < 1:
        raise ValueError("--d-model must be >= 8, --ground-queries and --match-queries >= 1")
    args.n_heads = args.n_heads if args.n_heads is not None else max(1, args.d_model // 32)
    args.ffn_dim = args.ffn_dim if args.ffn_dim is not None else 4 * args.d_model
    if args.n_heads < 1 or args.d_model % args.n_heads:
        raise ValueError(f"--n-heads must divide --d-model {args.d_model}, got {args.n_heads}")
    if args.ffn_dim < 1:
        raise ValueError(f"--ffn-dim must be >= 1, got {args.ffn_dim}")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")


def _settings(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings of the flags (it checks them); --tensorboard needs its package."""
    settings = settings_from_args(TrainSettings, args,
                                  log_with="tensorboard" if args.tensorboard else None)
    if args.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install tensorboard") from None
    return settings


def _dpt_config(args: argparse.Namespace, bundle):
    """The DPT config of the run, and the heads to start from (stage 2)."""
    if args.stage == "hn-itm":  # LoRA only; the block is never read
        return DPTConfig(adapter=None, lora=_lora(args)), None
    if args.stage == "tune":
        lora = _lora(args)
        try:
            heads, config = load_dpt(args.init)
        except ValueError as err:  # the folder's problem, named by the flag that gave it
            raise ValueError(f"--init: {err}") from None
        if config.lora is not None:
            raise ValueError(f"--init {args.init} already holds LoRA weights (a tune run's "
                             "output); give a probe run's final/ folder")
        _check_fits(config, bundle, f"--init {args.init}")
        config.lora = lora
        return config, heads
    names = block_names(bundle.unet)
    if args.block not in names:
        raise ValueError(f"unknown --block {args.block!r}; this U-Net has {', '.join(names)}")
    adapter = AdapterConfig(
        feature_dim=block_channels(bundle.unet, args.block),
        text_dim=bundle.text_encoder.config.hidden_size, d_model=args.d_model,
        n_heads=args.n_heads, ffn_dim=args.ffn_dim, n_match_queries=args.match_queries,
        n_ground_queries=args.ground_queries, dropout=args.dropout,
        max_hw=max(16, latent_side(bundle, args)), ground_text=args.ground_text == "tokens",
        match_text=args.match_text)
    return DPTConfig(block=args.block, condition=args.condition,
                     ground_condition=args.ground_condition, adapter=adapter), None


def _lora(args: argparse.Namespace) -> LoraSettings:
    """LoRA of --lora-rank and --lora-targets; alpha = rank, so the update enters at scale 1."""
    try:
        return LoraSettings(rank=args.lora_rank, alpha=float(args.lora_rank),
                            targets=args.lora_targets)
    except ValueError as err:  # argparse already limits --lora-targets to its choices
        raise ValueError(f"--lora-rank: {err}") from None


def image_side(bundle, args: argparse.Namespace) -> int:
    """Pixels per image side the run feeds the VAE: the Shapes canvas, --resolution, or the
    side a --cache was made at."""
    if getattr(args, "cache", None) is not None:
        return args.resolution or read_manifest(args.cache)["resolution"]
    if getattr(args, "coco_captions", None) is None:
        return CANVAS
    return args.resolution or 8 * int(bundle.unet.config.sample_size)


def latent_side(bundle, args: argparse.Namespace) -> int:
    """Latent side for those images: the VAE halves the side once per extra level."""
    return image_side(bundle, args) // 2 ** (len(bundle.vae.config.block_out_channels) - 1)


def _check_fits(config, bundle, what: str) -> None:
    want = block_channels(bundle.unet, config.block)
    text = bundle.text_encoder.config.hidden_size
    if config.adapter.feature_dim != want or config.adapter.text_dim != text:
        raise ValueError(f"{what} was trained for another model: it reads {config.block} with "
                         f"{config.adapter.feature_dim} channels and "
                         f"{config.adapter.text_dim}-wide text; this model has {want} and {text}")


def _source(args: argparse.Namespace, bundle, settings):
    if args.cache is not None:
        if any((args.coco_captions, args.coco_images, args.refcoco_refs, args.refcoco_instances)):
            raise ValueError("--cache replaces --coco-* and --refcoco-*; give one or the other")
        cache = LatentCache(args.cache, seed=settings.seed)
        cache.check(bundle, image_side(bundle, args), settings.n_negatives)
        return cache
    if args.coco_captions is None and args.coco_images is None:
        if args.refcoco_refs or args.refcoco_instances:
            raise ValueError("RefCOCO files need --coco-captions and --coco-images too "
                             "(captions give the matching objective its texts)")
        return ShapesSource(seed=settings.seed, n_negatives=settings.n_negatives)
    resolution = image_side(bundle, args)
    captioned, refs = read_coco_files(args)
    if refs and not {r.image_id for r in refs} & {c.image_id for c in captioned}:
        raise ValueError(f"--refcoco-refs: none of the {len(refs)} train refs is on an image "
                         f"of --coco-captions {args.coco_captions}; RefCOCO's train refs are "
                         "on COCO train2014 images (captions_train2014.json, or "
                         "captions_train2017.json, which holds them all)")
    return RealDPTData(captioned, refs, resolution, settings.n_negatives, settings.seed)


def read_coco_files(args: argparse.Namespace):
    """The captioned images of --coco-captions and the train refs of --refcoco-* (None
    without), their images found in --coco-images under 2014 or 2017 names; ValueError
    naming the flag for files given by half or a folder that holds none of the images."""
    if args.coco_captions is None or args.coco_images is None:
        raise ValueError("give both --coco-captions and --coco-images")
    if (args.refcoco_refs is None) != (args.refcoco_instances is None):
        raise ValueError("give both --refcoco-refs and --refcoco-instances, or neither")
    try:  # COCO 2014 and 2017 names are both read, by image id
        captioned = read_coco_captions(args.coco_captions, args.coco_images, require=True)
        refs = (read_refcoco(args.refcoco_refs, args.refcoco_instances, args.coco_images,
                             {"train"}) if args.refcoco_refs else None)
    except MissingImages as err:
        raise ValueError(f"--coco-images {err}") from None
    return captioned, refs


def _check_run_folder(run_dir: Path, model: Path, config, settings, resume: bool) -> dict:
    """What run_config.json records of the run; a resumed run must be the same run, on as
    many processes. `train_dpt` writes the record once its own resume checks pass."""
    from accelerate import PartialState

    record = {"model": str(model), "dpt": config.to_dict(),
              "settings": {k: v for k, v in asdict(settings).items() if k not in _UNRECORDED}}
    file = Path(run_dir) / "run_config.json"
    if resume and file.is_file():
        old = json.loads(file.read_text())
        check_world_size(run_dir, recorded_world_size(old), PartialState().num_processes)
        keys = _differing(old, record)
        if keys:
            raise ValueError(f"{run_dir} holds a different run ({', '.join(keys)} differ); "
                             "use another --run-dir or --resume no to start over")
    return record


# settings run_config.json leaves out, and those a resume may change: `steps` moves the end
# of the learning-rate schedule (training/schedule.py: extended_lr); the memory and speed
# switches leave the maths as it was
_UNRECORDED = ("checkpoint_every", "keep_checkpoints", "log_with")
_RESUMABLE = _UNRECORDED + ("workers", "prefetch", "steps", "gradient_checkpointing",
                             "allow_tf32", "channels_last")


def _differing(old: dict, record: dict) -> list[str]:
    """The keys of `record` whose values differ in `old` (`settings.batch`, `model`).

    A setting an older record lacks counts as its default: the code that wrote the record
    had it fixed at that value (gradient clipping at 1.0, say).
    """
    keys = ["model"] if old.get("model") != record["model"] else []
    old_dpt = old.get("dpt") or {}
    keys += [f"dpt.{k}" for k, v in record["dpt"].items() if old_dpt.get(k) != v]
    defaults = {f.name: f.default for f in fields(TrainSettings)}
    old_settings = old.get("settings", {})
    return keys + [f"settings.{k}" for k, v in record["settings"].items()
                   if k not in _RESUMABLE and old_settings.get(k, defaults[k]) != v]
