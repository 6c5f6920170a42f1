"""`dpt serve`: a local web page that puts the methods side by side on one prompt and seed.

Type a prompt, pick a seed, the denoising steps, the self-correction strength eta and the
methods (base model, DPT, DPT + SC, referee); one click generates every chosen method from
the same seed and shows the images side by side, each with the DPT adapter's matching
score and, on a Shapes model, the judge's verdict. Needs the `demo` extra
(`pip install "dpt-t2i[demo]"`, which brings gradio).

The page is served on 127.0.0.1 (this machine only) unless --host says otherwise, and
requests nothing from the internet. On the shipped Shapes model the shipped DPT weights are
used; on another model, DPT needs --dpt PATH, and without it only the base model is offered.
The referee's settings are `dpt referee`'s: Shapes' own on the shipped model, the reference
code's elsewhere; the page sets their number of iterations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..app.demo import Demo
from ..generation.methods import referee_preset, shipped_dpt
from ..io.dpt_folder import read_dpt_config
from .model_args import add_model_argument, model_folder, quiet_loading, set_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page comparing the methods side by side",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to serve on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=None, metavar="N",
                   help="the port (default 7860, or the next free one)")
    add_model_argument(p)
    p.add_argument("--dpt", type=Path, default=None, metavar="PATH",
                   help="a DPT folder (default: the shipped DPT weights on the shipped model; "
                        "none on other models)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: the page makes one image at a time, "
                        "which runs faster on one thread than on two, and does not stall when "
                        "another process holds a core)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    model = model_folder(args.model)
    dpt = args.dpt if args.dpt is not None else shipped_dpt(model)
    if dpt is not None:
        read_dpt_config(dpt)  # a one-line error before the model loads
        dpt = dpt.resolve()
    try:  # gradio is an extra: imported only by the command that needs it
        from ..app.page import build_page, check_address, launch
    except ImportError as err:
        raise ValueError(f"dpt serve needs the demo extra ({err}): pip install "
                         "\"dpt-t2i[demo]\"") from None
    check_address(args.host, args.port)  # before the model loads
    quiet_loading()
    page = build_page(Demo.load(model, dpt, referee_preset(model)))
    try:
        url = launch(page, args.host, args.port)
    except OSError as err:
        raise ValueError(f"cannot serve on {args.host} port {args.port or 'from 7860'}: "
                         f"{err}") from None
    print(f"dpt serve: the page is at {url} (Ctrl+C stops the server)", flush=True)
    page.block_thread()
    return 0
