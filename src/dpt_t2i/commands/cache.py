"""`dpt cache`: the frozen VAE's latents and the text encoder's states of a fixed set of
training samples, computed once for stage 1 (`dpt probe --cache DIR` reads them instead of
the images; the timesteps and the noise are still drawn every step).

    dpt cache --model SD --coco-captions captions_train2014.json --coco-images train2014 \\
        [--refcoco-refs 'refs(unc).p' --refcoco-instances instances.json] \\
        --out CACHE [--dtype fp16] [--device cuda] [--workers 4]
            one epoch of COCO (each image once, in the seed's shuffled order)
    dpt cache --samples 20000 --out CACHE
            the first 20000 samples of the Shapes world's stream

Samples 0 .. S-1 are those a run of the same --seed and --negatives draws from the images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.loader import LoaderSettings
from ..data.real import RealDPTData
from ..data.shapes.world import CANVAS
from ..data.sources import ShapesSource
from ..io.bundle import DTYPES, check_device, load_bundle
from ..training.cache import write_cache
from .model_args import (add_model_argument, add_threads_argument, model_folder, quiet_loading,
                         set_threads)
from .train import read_coco_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="stage 1's encoder outputs (latents, text states), once",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new cache folder")
    p.add_argument("--coco-captions", type=Path, metavar="JSON", help="captions_*.json")
    p.add_argument("--coco-images", type=Path, metavar="DIR", help="its image folder")
    p.add_argument("--refcoco-refs", type=Path, metavar="PICKLE", help="refs(unc).p")
    p.add_argument("--refcoco-instances", type=Path, metavar="JSON", help="instances.json")
    p.add_argument("--resolution", type=int, default=None, help="image side fed to the VAE "
                   "(default: the U-Net's sample size x 8; the Shapes canvas for Shapes)")
    p.add_argument("--samples", type=int, default=None, metavar="S",
                   help="samples to cache (default for COCO: one epoch; needed for Shapes)")
    p.add_argument("--negatives", dest="n_negatives", type=int, default=3, metavar="K",
                   help="hard negatives a caption (default 3; the run must use the same)")
    p.add_argument("--seed", type=int, default=0, help="the samples' seed (default 0)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="precision of the VAE and the text encoder, and of what is stored "
                   "(default fp32; fp16 halves the folder)")
    p.add_argument("--device", default="cpu", help="where the encoders run (default cpu)")
    p.add_argument("--batch", type=int, default=16, help="samples per encoder call")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes that decode and resize the coming images (default 0)")
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = check_device(args.device)
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.samples is None and args.coco_captions is None and args.coco_images is None:
        raise ValueError("the Shapes world is endless: give --samples S")
    if args.batch < 1 or args.n_negatives < 1:
        raise ValueError(f"--batch and --negatives must be >= 1, got {args.batch} and "
                         f"{args.n_negatives}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise ValueError(f"--out {args.out} exists and is not an empty folder; give a new one")
    loader = LoaderSettings(workers=args.workers, pin_memory=device.type == "cuda")
    data = _read_data(args)  # the files are checked before the model loads
    model = model_folder(args.model)
    quiet_loading()
    bundle = load_bundle(model, device, DTYPES[args.dtype])
    source, resolution = _source(args, data, 8 * int(bundle.unet.config.sample_size))
    samples = args.samples if args.samples is not None else len(source)
    manifest = write_cache(args.out, bundle, source, samples, resolution, args.dtype,
                           batch=args.batch, loader=loader, show_progress=True)
    print(json.dumps({k: manifest[k] for k in ("samples", "resolution", "dtype",
                                               "latent_shape", "skipped_images")}))
    print(f"cache: {args.out}")
    return 0


def _read_data(args: argparse.Namespace):
    """(captioned images, refs or None) of the COCO / RefCOCO flags; None for Shapes."""
    if args.coco_captions is None and args.coco_images is None:
        if args.refcoco_refs or args.refcoco_instances:
            raise ValueError("RefCOCO files need --coco-captions and --coco-images too")
        if args.resolution not in (None, CANVAS):
            raise ValueError(f"--resolution: Shapes images are {CANVAS} px, got "
                             f"{args.resolution}")
        return None
    return read_coco_files(args)


def _source(args: argparse.Namespace, data, model_side: int):
    """The sample source and its image side (--resolution, else the model's)."""
    if data is None:
        return ShapesSource(seed=args.seed, n_negatives=args.n_negatives), CANVAS
    resolution = args.resolution or model_side
    return RealDPTData(*data, resolution, args.n_negatives, args.seed), resolution
