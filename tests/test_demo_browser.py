"""`dpt serve` in a real browser: headless Debian Chromium driven by Playwright.

Skipped where gradio, playwright or /usr/bin/chromium are missing; CI has all three
(`.ci/run` installs Chromium with apt-get, as the README says).
"""

import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright.sync_api")

from playwright.sync_api import expect  # noqa: E402

from dpt_t2i.app.page import element_id  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from demo_screenshot import (CHROMIUM, browser_page, click_generate, generate,  # noqa: E402
                             served, wait_for_images)

if not CHROMIUM.is_file():
    pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)

METHODS = ["base", "dpt+sc", "referee"]  # the shipped DPT folder has no LoRA: no DPT column


def test_the_page_compares_methods_reports_bad_input_and_serves_two_tabs(tmp_path):
    requested = []
    with served("--threads", "1") as url, browser_page(requested) as page:
        page.goto(url)
        # bad input: a message in the page, and the server goes on serving
        for prompt, message in (("", "the prompt is empty"), ("a red pentagon", "'pentagon'")):
            click_generate(page, prompt, ["base"])
            expect(page.locator("#status")).to_contain_text(message, timeout=30_000)

        # every method side by side, the referee's progress shown while it runs
        clicked = click_generate(page, "a red circle and a blue square", METHODS, steps=4,
                                 seed=1, iterations=15)
        page.wait_for_function("() => document.body.innerText.includes('Referee: ')",
                               polling="raf", timeout=60_000)  # "Referee: 3/15" while it runs
        wait_for_images(page, clicked, timeout=120)
        for method in METHODS:
            column = page.locator(f"#result-{element_id(method)}")
            expect(column).to_be_visible()
            expect(column.locator("img")).to_have_count(1)
            expect(column).to_contain_text("satisfied · saw ")
            expect(column).to_contain_text("score s(z, y) = ")
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        assert (tmp_path / "demo.png").stat().st_size > 10_000

        # two tabs at once: each gets its own images, the ones it gets alone
        other = page.context.new_page()
        other.goto(url)
        jobs = {page: ("three green triangles", 2), other: ("a yellow square above a purple "
                                                              "circle", 3)}
        clicks = {tab: click_generate(tab, prompt, ["base", "dpt+sc"], steps=4, seed=seed)
                  for tab, (prompt, seed) in jobs.items()}
        for tab, clicked in clicks.items():
            wait_for_images(tab, clicked, timeout=120)
            expect(tab.locator("#status")).to_contain_text(jobs[tab][0])
            for method in ("referee",):  # unticked: hidden
                expect(tab.locator(f"#result-{element_id(method)}")).to_be_hidden()
        together = {tab: _image_bytes(tab) for tab in jobs}
        generate(other, *jobs[page][0:1], ["base", "dpt+sc"], steps=4, seed=jobs[page][1])
        assert _image_bytes(other) == together[page] != together[other]

    hosts = {urlparse(u).hostname for u in requested if u.startswith("http")}
    assert hosts == {"127.0.0.1"}  # the page asks nothing of the internet


def _image_bytes(page) -> list[bytes]:
    """The PNG bytes of the base and DPT + SC images shown in a tab."""
    return [page.request.get(page.locator(f"#image-{element_id(m)} img").get_attribute("src"))
            .body() for m in ("base", "dpt+sc")]
