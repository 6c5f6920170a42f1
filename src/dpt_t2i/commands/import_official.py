"""`dpt import-official`: the authors' DPT checkpoint as a DPT folder.

    dpt import-official pytorch_model.bin --model SD_FOLDER --out DPT_DIR
        turns the authors' released checkpoint (attention-processor LoRA on every attention
        layer, plus their adapter) into a DPT folder that `dpt generate --dpt DPT_DIR`
        samples and self-corrects with (their adapter's matching path runs); it cannot be
        evaluated with `dpt evaluate-disc` or tuned further.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.interchange import import_official, read_official_checkpoint
from .model_args import add_model_argument, model_folder, quiet_loading


def register(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import-official", help="the authors' DPT checkpoint as a DPT folder",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("checkpoint", type=Path, metavar="BIN", help="their pytorch_model.bin")
    add_model_argument(imp)
    imp.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="the DPT folder to write")
    imp.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = model_folder(args.model)
    if args.out.exists():
        raise ValueError(f"{args.out} exists; choose a new folder for the imported DPT weights")
    above = next(p for p in args.out.parents if p.exists())  # "." or "/" at the latest
    if not above.is_dir():
        raise ValueError(f"--out {args.out} lies below {above}, a file; choose a new folder")
    state = read_official_checkpoint(args.checkpoint)  # a bad file is named before the U-Net loads
    quiet_loading()
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", local_files_only=True)
    try:
        import_official(args.checkpoint, unet, args.out, state)  # its errors name the checkpoint
    except OSError as err:  # the folder's write (atomic: nothing is left behind)
        raise ValueError(f"cannot write {args.out} ({err.strerror or err})") from None
    print(f"wrote {args.out}: sample with `dpt generate --model {model} --dpt {args.out}`")
    return 0
