"""The web page of `dpt serve` (gradio): prompt, settings, and the methods' images side by side.

The page calls `Demo.generate` (demo.py) and lays out what it returns: per method the image
(enlarged to at least 256 px, nearest neighbour, so 64 px Shapes images stay sharp), the
DPT adapter's matching score and the Shapes judge's verdict. Bad input is a message in the
page's status line; the server goes on serving. Generation requests queue one at a time.

Offline by construction: no share link, no analytics or version check, no server-side
rendering, and a theme whose fonts are the system's, so the page requests nothing from
outside the server.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import gradio as gr
import numpy as np

from ..generation.guidance import DEFAULT_ETA, DEFAULT_T_RANGE, MAX_NOISE_ETA
from .demo import EXAMPLES, METHODS, SCORE_TIMESTEP, Comparison, Demo, Shown, describe

DEFAULT_METHODS = ("base", "dpt", "dpt+sc")  # the referee is slower: ticked by choice
DISPLAY_SIDE = 256  # smallest side an image is shown at
CSS = "#results img { image-rendering: pixelated; }"


def element_id(method: str) -> str:
    """The HTML id suffix of a method's column ("dpt+sc" -> "dpt-sc")."""
    return method.replace("+", "-")


def build_page(demo: Demo, title: str = "dpt-t2i: methods side by side") -> gr.Blocks:
    """The page for one loaded Demo.

    Element ids for tests and scripts: `prompt`, `generate`, `methods`, `seed`, `steps`, `eta`,
    `iterations`, `status`, and per method `result-<id>` (its column), `image-<id>` and
    `caption-<id>` (see `element_id`).
    """
    methods = demo.methods
    low, high = DEFAULT_T_RANGE
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(_intro(demo))
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="Prompt", placeholder="a red circle to the left of a blue "
                                "square", scale=4, elem_id="prompt")
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        if demo.bundle.vocabulary is not None:
            gr.Examples([[p] for family in EXAMPLES.values() for p in family], inputs=[prompt],
                        example_labels=[f"{name}: {p}" for name, family in EXAMPLES.items()
                                        for p in family],
                        label="Example prompts (attribute binding, counting, spatial)")
        with gr.Row():
            chosen = gr.CheckboxGroup([(METHODS[m], m) for m in methods],
                                      value=[m for m in DEFAULT_METHODS if m in methods],
                                      label="Methods", elem_id="methods", scale=2)
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1, elem_id="seed")
            steps = gr.Slider(1, 100, value=25, step=1, label="Denoising steps", scale=2,
                              elem_id="steps")
        with gr.Row():
            eta = gr.Slider(0.02, MAX_NOISE_ETA, value=DEFAULT_ETA, step=0.02,
                            label="Self-correction strength eta",
                            info=f"DPT + SC: z_t moves by eta x its noise level along "
                                 f"grad s(z_t, y) at {low:g} <= t <= {high:g}",
                            visible="dpt+sc" in methods, elem_id="eta")
            referee_steps = demo.referee.iterations
            iterations = gr.Slider(1, 2 * referee_steps, value=referee_steps, step=1,
                                   label="Referee iterations", info="each decodes, scores "
                                   "and denoises: slower than a sampling step",
                                   visible="referee" in methods, elem_id="iterations")
        status = gr.Markdown(elem_id="status")
        runs = gr.State(0)  # this tab's generations so far
        columns, images, captions = [], [], []
        with gr.Row(elem_id="results"):
            for m in methods:
                with gr.Column(visible=m in DEFAULT_METHODS, min_width=200,
                               elem_id=f"result-{element_id(m)}") as column:
                    images.append(gr.Image(label=METHODS[m], format="png", interactive=False,
                                           elem_id=f"image-{element_id(m)}"))
                    captions.append(gr.Markdown(elem_id=f"caption-{element_id(m)}"))
                columns.append(column)
        gr.Markdown(_legend(demo))

        chosen.change(lambda picked: _visibility(methods, picked), chosen, columns, queue=False)
        gr.on([button.click, prompt.submit], handler(demo),
              [runs, prompt, chosen, seed, steps, eta, iterations],
              [runs, status, *columns, *images, *captions], concurrency_limit=1,
              concurrency_id="generate", api_name="generate")
    return page


def handler(demo: Demo):
    """The Generate button's function: (runs so far, prompt, methods, seed, steps, eta,
    referee iterations) -> (runs, status, each method's column, image and caption, in
    `demo.methods` order). Bad input gives a status line that says what is wrong and
    leaves the images as they were."""
    methods = demo.methods

    def run(run_count, text, picked, seed, steps, eta, iterations, progress=gr.Progress()):
        start = time.perf_counter()
        try:
            comparison = demo.generate(
                text, picked or [], seed, steps, eta, iterations,
                progress=lambda done, total, what: progress((done, total), desc=what))
        except ValueError as err:  # shown where the run's status goes; the images stay
            return [run_count, f"⚠ **Cannot generate:** {err}",
                    *[gr.skip()] * (3 * len(methods))]
        shown = {s.method: s for s in comparison.shown}
        return [run_count + 1, _status(run_count + 1, comparison, time.perf_counter() - start),
                *_visibility(methods, list(shown)),
                *[enlarge(shown[m].image) if m in shown else None for m in methods],
                *[caption(shown[m], comparison) if m in shown else "" for m in methods]]

    return run


def _visibility(methods: list[str], picked: list[str]) -> list[gr.Column]:
    """Column updates: shown for the picked methods, hidden for the others."""
    return [gr.Column(visible=m in picked) for m in methods]


def check_address(host: str, port: int | None) -> None:
    """ValueError, one line, unless `host` is an address of this machine and `port` (when
    given) is free on it; checked by binding a socket as the server will, before the model
    loads. (gradio would print uvicorn's traceback for a bad host, and advice about its own
    `launch()` for a busy port.)"""
    machine = "expected an address of this machine, such as 127.0.0.1 (this machine only) " \
        "or 0.0.0.0 (every network)"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port or 0,
                                                             type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host!r} does not resolve ({err}); {machine}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as err:
            why = {errno.EADDRINUSE: "is in use", errno.EACCES: "is not open to this user "
                   "(ports below 1024 need root)"}.get(err.errno)
            if port is not None and why is not None:
                raise ValueError(f"--port {port} {why} on {host}; choose another with "
                                 "--port N, or leave --port out to take the first free one "
                                 "from 7860") from None
            raise ValueError(f"cannot serve on --host {host} ({err.strerror or err}); "
                             f"{machine}") from None


def launch(page: gr.Blocks, host: str = "127.0.0.1", port: int | None = None) -> str:
    """Start serving the page in a background thread; return its local URL.

    Args:
        host: the address to bind (127.0.0.1: this machine only).
        port: the port (None: 7860, or the next free one).

    Raises:
        OSError: when the port cannot be bound.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    page.queue(default_concurrency_limit=1)
    _, url, _ = page.launch(server_name=host, server_port=port, share=False,
                            prevent_thread_lock=True, quiet=True, show_error=True,
                            ssr_mode=False, pwa=False, mcp_server=False, theme=theme, css=CSS)
    return url


def enlarge(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """(H, W, 3) image repeated by a whole factor (nearest neighbour) to at least `side`."""
    factor = max(1, -(-side // min(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def caption(shown: Shown, comparison: Comparison) -> str:
    """Markdown under one image: the verdict, the score and the time."""
    lines = []
    if shown.verdict is not None:
        answer, seen = describe(shown.verdict).split("; ", 1)
        lines.append(f"**{'✓' if shown.verdict.satisfied else '✗'} {answer}** · {seen}")
    elif comparison.judge_note:
        lines.append(f"_{comparison.judge_note}_")
    score = "no adapter" if shown.score is None else f"{shown.score:.3f}"
    lines.append(f"score s(z, y) = {score} · {shown.seconds:.1f} s")
    return "\n\n".join(lines)


def _status(run: int, comparison: Comparison, seconds: float) -> str:
    n = len(comparison.shown)
    return (f"Run {run}: {n} image{'s' * (n != 1)} of *{comparison.prompt}*, seed "
            f"{comparison.seed}, in {seconds:.1f} s.")


def _intro(demo: Demo) -> str:
    dpt = "none (only the base model)" if demo.dpt_bundle is None else \
        f"`{_name(demo.dpt_path)}`"
    return ("## Text-to-image methods side by side\n"
            "Every chosen method starts from the same seed's noise. "
            f"Model: `{_name(demo.bundle.path)}`; DPT weights: {dpt}.")


def _legend(demo: Demo) -> str:
    judge = ("**Verdict**: the Shapes judge reads the image back into objects (size, colour, "
             "shape, centre in pixels) and checks the prompt against them. "
             if demo.bundle.vocabulary is not None else "")
    start = "DPT's own sample" if demo.referee.init == "sample" else "the seed's noise"
    return (f"{judge}**Score** s(z, y): the DPT adapter's image-text matching score of the "
            f"image (a cosine in [-1, 1], higher is a better match), read the same way for "
            f"every method: the image encoded by the VAE, noised to t = {SCORE_TIMESTEP}, "
            f"through the DPT U-Net. Sampling: {demo.scheduler}, guidance {demo.guidance:g}. "
            "DPT + SC adds self-correction (eq. 9 of arXiv 2403.04321); the referee optimises "
            f"a latent, from {start}, until the adapter judges it a match (arXiv 2402.16305). "
            "Images are shown enlarged.")


def _name(path: Path | None) -> str:
    return "" if path is None else path.name
