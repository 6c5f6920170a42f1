"""`dpt serve`'s page in a real browser: Debian's Chromium, headless, driven by Playwright.

    python tools/demo_screenshot.py --out docs/demo.png

starts `dpt serve` on a free port, types a prompt, generates the base model and DPT + SC
(25 steps; `--runs N` repeats with seeds 0..N-1), prints the time from the click to the
images and saves a screenshot of the page (the README's). The browser test
(tests/test_demo_browser.py) drives the page with the same helpers. Needs the `playwright`
package (it brings its own driver; no browser is downloaded: the browser is
/usr/bin/chromium, from `apt-get install chromium`). A tool of the repository, not of the
installed package.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from dpt_t2i.app.page import element_id

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# headless in a container: no sandbox, no GPU; and no traffic of the browser's own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
URL_LINE = "dpt serve: the page is at "  # what `dpt serve` prints before the URL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(*args: str, timeout: float = 180.0) -> Iterator[str]:
    """Run `dpt serve --port P ARGS...` in a subprocess; yield the page's URL; stop it after.

    Raises:
        RuntimeError: with the server's output, when it exits or prints no URL in `timeout` s.
    """
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "dpt_t2i.cli", "serve", "--port", str(free_port()),
                 *args], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield _wait_for_url(server, log, timeout)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_for_url(server: subprocess.Popen, log: Path, timeout: float) -> str:
    """The URL in the line `dpt serve` prints once it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(URL_LINE):
                return line.removeprefix(URL_LINE).split()[0]
        if server.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"dpt serve printed no URL (exit status {server.poll()}):\n"
                       f"{log.read_text()}")


@contextmanager
def browser_page(requested: list[str] | None = None, width: int = 1280, height: int = 1000
                 ) -> Iterator[Page]:
    """A page of headless Chromium (CHROMIUM, CHROMIUM_ARGS); `requested`, when given, gets
    the URL of every request of its context's pages (`page.context.new_page()` opens a tab)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            if requested is not None:
                context.on("request", lambda request: requested.append(request.url))
            yield context.new_page()
        finally:
            browser.close()


def click_generate(page: Page, prompt: str, methods: Sequence[str], steps: int | None = None,
                   seed: int | None = None, iterations: int | None = None) -> tuple:
    """Fill the form (settings left None stay as they are), tick exactly `methods` and click
    Generate; return what `wait_for_images` waits for and the click's `time.perf_counter()`."""
    page.fill("#prompt textarea", prompt)
    for box in page.locator("#methods input[type=checkbox]").all():
        box.set_checked(box.get_attribute("name") in methods)
    for selector, value in (("#steps", steps), ("#seed", seed), ("#iterations", iterations)):
        if value is not None:
            page.fill(f"{selector} input[type=number]", str(value))
            page.press(f"{selector} input[type=number]", "Tab")
    before = page.inner_text("#status")
    clicked_at = time.perf_counter()
    page.click("#generate")
    return before, [element_id(m) for m in methods], clicked_at


def wait_for_images(page: Page, clicked: tuple, timeout: float = 300.0) -> None:
    """Wait until the status line names the next run and every chosen method's image has
    loaded and has its caption."""
    page.wait_for_function(
        """([before, ids]) => {
            const status = document.querySelector('#status').innerText.trim();
            if (!status.startsWith('Run') || status === before.trim()) return false;
            return ids.every(id => {
                const img = document.querySelector(`#image-${id} img`);
                const caption = document.querySelector(`#caption-${id}`).innerText.trim();
                return img && img.complete && img.naturalWidth > 0 && caption.length > 0;
            });
        }""", arg=list(clicked[:2]), timeout=timeout * 1000, polling=100)


def generate(page: Page, prompt: str, methods: Sequence[str], timeout: float = 300.0,
             **settings) -> float:
    """`click_generate` then `wait_for_images`; the seconds from the click to the images."""
    clicked = click_generate(page, prompt, methods, **settings)
    wait_for_images(page, clicked, timeout)
    return time.perf_counter() - clicked[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"),
                        help="the screenshot (default docs/demo.png)")
    parser.add_argument("--prompt", default="a red circle and a blue square")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--methods", default="base,dpt+sc",
                        help="comma-separated method keys (default base,dpt+sc; dpt where the "
                             "DPT folder holds LoRA)")
    parser.add_argument("--runs", type=int, default=1,
                        help="generate this many times (seeds 0, 1, ...); the screenshot shows "
                             "the last (default 1)")
    parser.add_argument("--serve-args", default="",
                        help="more `dpt serve` arguments, space-separated (e.g. '--threads 1')")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    with served(*args.serve_args.split()) as url, browser_page() as page:
        page.goto(url)
        for seed in range(args.runs):
            seconds = generate(page, args.prompt, methods, steps=args.steps, seed=seed)
            print(f"seed {seed}: {', '.join(methods)} at {args.steps} steps, {seconds:.1f} s "
                  "from the click to the images", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
