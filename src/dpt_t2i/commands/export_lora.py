"""`dpt export-lora`: a DPT folder's LoRA in diffusers' LoRA format.

    dpt export-lora --dpt DIR --out LORA_DIR
        writes LORA_DIR/pytorch_lora_weights.safetensors, which plain diffusers loads with
        StableDiffusionPipeline.from_pretrained(model).load_lora_weights(LORA_DIR)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.interchange import export_diffusers_lora


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export-lora", help="a DPT folder's LoRA in diffusers' LoRA format",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("--dpt", type=Path, required=True, metavar="DIR",
                        help="a stage-2 DPT folder (a tune run's final/)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for pytorch_lora_weights.safetensors")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        path = export_diffusers_lora(args.dpt, args.out)
    except OSError as err:  # an unwritable --out: the command line reports ValueErrors only
        raise ValueError(str(err)) from None
    print(f"wrote {path}")
    return 0
