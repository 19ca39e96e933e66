"""The demo page at /ui/, in a real browser: Debian's Chromium driven by Playwright.

No browser is downloaded: Playwright launches /usr/bin/chromium (installed by `make test` with
apt when missing). The test draws real MNIST test digits onto the canvas stroke by stroke, as a
person would with a mouse, and reads the predictions the page shows; it types a prompt and
reads the suggestions; it continues the text and compares it with the API's own answer for the
same seed; and it checks that the page never asks anything of another host.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright import sync_api

from loadtest.payloads import digits
from loadtest.servers import Server
from tests.conftest import metric_value

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a sandboxed CI machine without network: no background connections, no GPU.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None:
    message = (
        "Debian's chromium is not installed and could not be (make test installs it with "
        "apt-get when run as root on Debian/Ubuntu)"
    )
    if os.environ.get("CI"):  # in CI the browser tests must run: a missing browser fails
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("chromium-home")  # its caches and config stay in here
    env: dict[str, str | float | bool] = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, env=env
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, default_server: Server) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{default_server.url}/ui/")
    sync_api.expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20_000)
    yield page
    own = (default_server.url, f"blob:{default_server.url}")  # blob: the photo shown locally
    foreign = [url for url in requested if not url.startswith(own)]
    assert not foreign, f"the page asked other hosts: {foreign}"
    page.close()


def draw_digit(page: Any, pixels: np.ndarray) -> None:
    """Draw a 28x28 digit on the pad with the mouse: one horizontal stroke per run of ink in
    each pixel row (the pad is 10 screen pixels per MNIST pixel at this viewport)."""
    box = page.locator("#pad").bounding_box()
    cell = box["width"] / 28
    for y, row in enumerate(pixels):
        ink = np.flatnonzero(row > 100)
        if ink.size == 0:
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            top = box["y"] + (y + 0.5) * cell
            page.mouse.move(box["x"] + (run[0] + 0.5) * cell, top)
            page.mouse.down()
            page.mouse.move(box["x"] + (run[-1] + 0.5) * cell, top, steps=max(2, len(run)))
            page.mouse.up()


def touch_draw_digit(page: Any, pixels: np.ndarray) -> None:
    """The same strokes with a finger: real touch events through the DevTools protocol
    (Playwright's own touchscreen API can only tap)."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    cell = box["width"] / 28

    def touch(kind: str, x: float | None = None, y: float | None = None) -> None:
        points = [] if x is None else [{"x": x, "y": y, "radiusX": 4, "radiusY": 4}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    for y, row in enumerate(pixels):
        ink = np.flatnonzero(row > 100)
        for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1) if ink.size else []:
            top = box["y"] + (y + 0.5) * cell
            touch("touchStart", box["x"] + (run[0] + 0.5) * cell, top)
            for x in np.linspace(run[0], run[-1], max(2, len(run))):
                touch("touchMove", box["x"] + (x + 0.5) * cell, top)
            touch("touchEnd")
    cdp.detach()


def shown_digits(page: Any) -> dict[str, str]:
    cards = page.locator(".model")
    return {
        cards.nth(i).get_attribute("data-model"): cards.nth(i).locator(".digit").inner_text()
        for i in range(cards.count())
    }


def test_drawn_mnist_digits_are_recognised(page: Any, tmp_path: Path) -> None:
    page.locator("#pen").fill("12")  # a pen about as thick as an MNIST stroke
    pool = digits()
    chosen = [next(d for d in pool if d.label == label) for label in (3, 7, 0)]
    for digit in chosen:
        page.click("#clear")
        draw_digit(page, np.asarray(digit.pixels))
        # the answer to the finished drawing (not to a stroke before it) is on the page
        sync_api.expect(page.locator("#models")).to_have_attribute("data-busy", "false")
        answers = shown_digits(page)
        assert answers == dict.fromkeys(answers, str(digit.label)) and len(answers) == 3
    page.screenshot(path=str(tmp_path / "ui-digits.png"), full_page=True)


def preview_ink(page: Any) -> int:
    """The summed gray levels of the 28x28 preview ('what the models see')."""
    return int(
        page.evaluate(
            """() => {
              const data = document.getElementById("preview").getContext("2d")
                .getImageData(0, 0, 28, 28).data;
              let sum = 0;
              for (let i = 0; i < data.length; i += 4) sum += data[i];
              return sum;
            }"""
        )
    )


def test_a_photo_is_uploaded_read_and_answered(page: Any, tmp_path: Path) -> None:
    """The photo button: a phone-style photo of a digit on ruled paper is shown, every model
    answers, the preview shows the 28x28 the service read; blank paper gets its 422."""
    from training.photos import pictures

    pool = digits()
    chosen = next(d for d in pool if d.label == 4)
    picture = pictures(
        np.asarray([chosen.pixels], dtype=np.uint8), np.asarray([4]), ["lines"], seed=3
    )[0]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(picture.data)
    page.set_input_files("#photo", str(photo))
    default = page.locator('.model[data-model="mnist-bigru"] .digit')
    sync_api.expect(default).to_have_text("4", timeout=10_000)
    answers = shown_digits(page)
    assert len(answers) == 3 and sum(a == "4" for a in answers.values()) >= 2, answers
    assert page.locator("#photo-view").is_visible()
    assert preview_ink(page) > 20 * 255  # the digit the service read, not an empty preview
    page.screenshot(path=str(tmp_path / "ui-photo.png"), full_page=True)

    blank = pictures(np.zeros((1, 28, 28), np.uint8), np.asarray([0]), ["blank"], seed=5)[0]
    (tmp_path / "blank.jpg").write_bytes(blank.data)
    page.set_input_files("#photo", str(tmp_path / "blank.jpg"))
    sync_api.expect(page.locator("#photo-error")).to_contain_text("no visible digit")
    assert shown_digits(page)["mnist-bigru"] == "\u2013" and preview_ink(page) == 0


def test_typing_shows_next_character_suggestions(page: Any, default_server: Server) -> None:
    prompt = page.locator("#prompt")
    prompt.fill("")
    prompt.press_sequentially("ROMEO:\nWhat light through yonder window bre", delay=5)
    items = page.locator("#candidates li")
    expected = httpx.post(
        f"{default_server.url}/next_char",
        json={"text": "ROMEO:\nWhat light through yonder window bre", "k": 5},
    ).json()["candidates"]
    glyph = {" ": "␣", "\n": "↵"}.get(expected[0]["char"], expected[0]["char"])
    # the answer to the last keystroke, however late it comes (an earlier keystroke's answer
    # may be shown first, and is then replaced: the page drops stale answers)
    sync_api.expect(items.nth(0).locator(".char")).to_have_text(glyph, timeout=10_000)
    sync_api.expect(items).to_have_count(5)
    # a character outside the vocabulary: the API's message, no suggestions
    prompt.press_sequentially("€")
    sync_api.expect(page.locator("#text-error")).to_contain_text("vocabulary", timeout=10_000)
    sync_api.expect(items).to_have_count(0)


def test_continue_generates_the_same_text_as_the_api(page: Any, default_server: Server) -> None:
    page.locator("#prompt").fill("JULIET:\n")
    page.locator("#seed").fill("7")
    page.locator("#length").fill("60")
    page.click("#continue")
    sync_api.expect(page.locator("#status")).to_contain_text("seed 7", timeout=20_000)
    expected = httpx.post(
        f"{default_server.url}/generate",
        json={"prompt": "JULIET:\n", "length": 60, "temperature": 0.8, "seed": 7},
    ).json()["text"]
    assert page.locator("#prompt").input_value() == "JULIET:\n" + expected


def test_generation_streams_and_stops(page: Any, default_server: Server) -> None:
    """Characters appear while the generation runs, and Stop ends it early. 48 long background
    generations share the decode loop, so that the page's own stream lasts a few seconds; the
    page starts once they are all in the loop (on a fast machine, a page that started first
    could finish its 1,000 characters before the test looks)."""

    async def background() -> None:
        async with httpx.AsyncClient(base_url=default_server.url, timeout=60) as client:
            await asyncio.gather(
                *(
                    client.post("/generate", json={"prompt": "KING:", "length": 1000, "seed": i})
                    for i in range(48)
                )
            )

    load = threading.Thread(target=asyncio.run, args=(background(),))
    load.start()
    try:
        deadline = time.monotonic() + 30
        while (
            metric_value(default_server.url, "rnnserve_generation_active") < 48
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        prompt = page.locator("#prompt")
        prompt.fill("JULIET:\n")
        page.locator("#length").fill("1000")
        page.click("#continue")
        sync_api.expect(page.locator("#stop")).to_be_visible()
        page.wait_for_function("document.querySelector('#prompt').value.length > 30")
        sync_api.expect(page.locator("body")).to_have_attribute("data-generating", "true")
        grown = len(prompt.input_value())
        page.wait_for_function(
            f"document.querySelector('#prompt').value.length > {grown}"
        )  # still growing: streamed, not delivered at the end
        page.click("#stop")
        sync_api.expect(page.locator("#status")).to_contain_text("stopped after", timeout=10_000)
        sync_api.expect(page.locator("#continue")).to_be_visible()
        assert grown < len(prompt.input_value()) < len("JULIET:\n") + 1000
    finally:
        load.join(timeout=60)


def test_phone_sized_screen(browser: Any, default_server: Server, tmp_path: Path) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        phone.goto(f"{default_server.url}/ui/")
        sync_api.expect(phone.locator("body")).to_have_attribute("data-ready", "true")
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways by {overflow} px on a phone"
        pad = phone.locator("#pad").bounding_box()
        assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
        touch_draw_digit(phone, np.asarray(digits()[0].pixels))
        sync_api.expect(phone.locator(".model .digit").first).to_have_text(
            str(digits()[0].label), timeout=10_000
        )
        phone.screenshot(path=str(tmp_path / "ui-phone.png"), full_page=True)
    finally:
        phone.close()


def test_the_swagger_page_is_ours_and_asks_no_other_host(
    browser: Any, default_server: Server
) -> None:
    """The API page at / renders the document with the project's title and version, every
    route (V2 included), and requests nothing from another host (BentoML's page loaded Google
    Tag Manager)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(f"{default_server.url}/")
        sync_api.expect(page.locator(".info .title")).to_contain_text("rnnserve", timeout=20_000)
        sync_api.expect(page.locator(".info .title")).to_contain_text("0.1.0")
        for route in ("/classify_pixels", "/v1/generate/stream", "/v2/models/{name}/infer"):
            sync_api.expect(page.get_by_text(route, exact=True).first).to_be_visible()
        foreign = [url for url in requested if not url.startswith(default_server.url)]
        assert not foreign, f"the API page asked other hosts: {foreign}"
    finally:
        page.close()
