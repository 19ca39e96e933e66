"""The demo page at /ui/, in a real browser: Debian's Chromium driven by Playwright.

No browser is downloaded: Playwright launches /usr/bin/chromium (installed by `make test` with
apt when missing). The test draws real MNIST test digits onto the canvas stroke by stroke, as a
person would with a mouse, and reads the predictions the page shows; it types a prompt and
reads the suggestions; it continues the text and compares it with the API's own answer for the
same seed; and it checks that the page never asks anything of another host. With the server's
carried text state, it checks that typing at the end of a long text sends only the new
characters with a state (the requests the page really sends, read as they leave), that a
backspace or an edit near the end resumes from a checkpoint, and that the suggestions are the
server's answer for the whole text.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
    # each card names the version that answered
    title = page.locator('.model[data-model="mnist-bigru"] h3')
    sync_api.expect(title).to_have_text("mnist-bigru v1")
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
        # BentoML's stylesheet hides the title (visibility: hidden): ours shows it
        sync_api.expect(page.locator(".info .main .title").first).to_be_visible()
        for route in ("/classify_pixels", "/v1/generate/stream", "/v2/models/{name}/infer"):
            sync_api.expect(page.get_by_text(route, exact=True).first).to_be_visible()
        foreign = [url for url in requested if not url.startswith(default_server.url)]
        assert not foreign, f"the API page asked other hosts: {foreign}"
    finally:
        page.close()


# ---------------------------------------------------------------- carried text state
# POST /next_char and the stream's end event answer an opaque `state` that has read the text; a
# request with `state` sends only the characters that follow. Until a server answers one, these
# tests skip (the page then sends whole texts, which the tests above cover).


@pytest.fixture
def carried_state(default_server: Server) -> int:
    """The server's max_text_chars, or a skip when its next_char answers carry no `state`."""
    answer = httpx.post(f"{default_server.url}/next_char", json={"text": "ROMEO:\n"}, timeout=30)
    answer.raise_for_status()
    if "state" not in answer.json():
        pytest.skip("the server's /next_char answers no `state` yet (carried text state)")
    meta = httpx.get(f"{default_server.url}/v1/metadata", timeout=30).json()
    return int(meta["limits"]["max_text_chars"])


def stream_end(url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The text and the `event: end` data of one POST /v1/generate/stream."""
    text, end = "", {}
    with httpx.stream("POST", f"{url}/v1/generate/stream", json=body, timeout=60) as response:
        response.raise_for_status()
        raw = response.read().decode()
    for block in raw.split("\n\n"):
        lines = block.splitlines()
        data = "".join(line[6:] for line in lines if line.startswith("data: "))
        if "event: end" in lines:
            end = json.loads(data)
        elif data:
            text += json.loads(data).get("text", "")
    return text, end


def passage(corpus_path: Path, chars: int) -> str:
    """`chars` characters of Tiny Shakespeare from the start of a speech (a real text, in the
    model's vocabulary)."""
    corpus = corpus_path.read_text(encoding="utf-8")
    start = corpus.index("\n\n", 5_000) + 2
    text = corpus[start : start + chars]
    assert len(text) == chars
    return text


class NextCharRequests:
    """The bodies of the POST /next_char requests the page sends, read as they leave it."""

    def __init__(self, page: Any) -> None:
        self.bodies: list[dict[str, Any]] = []
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/next_char"):
            self.bodies.append(request.post_data_json)


def settled(page: Any) -> None:
    """Wait until the suggestions on the page answer its latest text."""
    sync_api.expect(page.locator("#candidates")).to_have_attribute(
        "data-busy", "false", timeout=20_000
    )


def answered(page: Any, action: Any) -> None:
    """Do `action` (a keystroke, a paste, a click) and wait until the page asked /next_char
    and shows the answer to its text then."""
    with page.expect_request(lambda r: r.url.endswith("/next_char"), timeout=20_000):
        action()
    settled(page)


def keystroke(page: Any, key: str) -> None:
    """Press one key (a character or a key name) and wait for the page to show its answer."""
    answered(page, lambda: page.keyboard.type(key) if len(key) == 1 else page.keyboard.press(key))


def assert_shows_answer_for(page: Any, url: str, body: dict[str, Any]) -> None:
    """The suggestions shown are the server's answer to `body` (a whole text, or a state and
    what follows): the same characters in the same order, the same percentages."""
    expected = httpx.post(f"{url}/next_char", json=body, timeout=30).json()["candidates"]
    glyphs = [{" ": "␣", "\n": "↵"}.get(c["char"], c["char"]) for c in expected]
    sync_api.expect(page.locator("#candidates li .char")).to_have_text(glyphs)
    shown = page.locator("#candidates li > span:last-child").all_inner_texts()
    for text, candidate in zip(shown, expected, strict=True):  # 0.1% + the state path's noise
        assert abs(float(text.rstrip("%")) - candidate["probability"] * 100) <= 0.11, shown


def test_typing_at_the_end_of_a_long_text_sends_only_the_new_characters(
    page: Any, default_server: Server, corpus_path: Path, carried_state: int
) -> None:
    """A 1,500-character Shakespeare passage pasted, then 20 characters typed one by one: each
    keystroke sends its one character with the last state, the latency line says so, and the
    suggestions are the server's whole-text answer (the text is within max_text_chars, so the
    whole text is the same context as the state). A backspace resumes from the checkpoint of
    the shorter text (nothing to send), and an edit 5 characters from the end sends those 6."""
    text = passage(corpus_path, 1_500)
    assert len(text) <= carried_state
    pasted, typed = text[:-20], text[-20:]
    prompt = page.locator("#prompt")
    settled(page)  # the page's first answer (to its example text) is in
    requests = NextCharRequests(page)
    answered(page, lambda: prompt.fill(pasted))
    assert requests.bodies == [{"text": pasted}]  # no checkpoint is a prefix: the whole text
    line = page.locator("#keystroke")
    sync_api.expect(line).to_have_text(
        re.compile(r"^\d+ ms · 1,480 new characters sent · 1,480 in context$")
    )

    prompt.press("Control+End")  # the caret after the text
    for index, char in enumerate(typed):
        keystroke(page, char)
        sync_api.expect(line).to_have_text(
            re.compile(rf"^\d+ ms · 1 new character sent · {len(pasted) + index + 1:,} in context$")
        )
    after_paste = requests.bodies[1:]
    assert [body["text"] for body in after_paste] == list(typed)
    assert all(isinstance(body.get("state"), str) and body["state"] for body in after_paste)
    assert prompt.input_value() == text
    assert_shows_answer_for(page, default_server.url, {"text": text})

    # a backspace: the checkpoint of exactly the shorter text, so nothing new to send
    keystroke(page, "Backspace")
    assert requests.bodies[-1]["text"] == "" and requests.bodies[-1]["state"]
    sync_api.expect(line).to_have_text(
        re.compile(r"^\d+ ms · 0 new characters sent · 1,499 in context$")
    )
    assert_shows_answer_for(page, default_server.url, {"text": text[:-1]})

    # an edit 5 characters before the end: from the checkpoint before it, the 6 that follow
    for _ in range(5):
        prompt.press("ArrowLeft")  # moves the caret, asks nothing
    keystroke(page, "x")
    edited = text[:-6] + "x" + text[-6:-1]
    assert prompt.input_value() == edited
    assert requests.bodies[-1]["text"] == edited[-6:] and requests.bodies[-1]["state"]
    sync_api.expect(line).to_have_text(
        re.compile(rf"^\d+ ms · 6 new characters sent · {len(edited):,} in context$")
    )
    assert_shows_answer_for(page, default_server.url, {"text": edited})

    # a click on a suggestion appends it and sends just it
    first = page.locator("#candidates li").first
    answered(page, first.click)
    assert len(requests.bodies[-1]["text"]) == 1 and requests.bodies[-1]["state"]
    assert len(prompt.input_value()) == len(edited) + 1


def test_a_text_longer_than_the_limit_is_read_in_pieces(
    page: Any, default_server: Server, corpus_path: Path, carried_state: int
) -> None:
    """A paste longer than max_text_chars is read in pieces chained through states (the whole
    text is the context, not its last max_text_chars characters); typing on then sends one
    character a keystroke. The suggestions equal the server's answer for the same chain."""
    limit = carried_state
    text = passage(corpus_path, limit + 600)
    prompt = page.locator("#prompt")
    settled(page)
    requests = NextCharRequests(page)
    answered(page, lambda: prompt.fill(text))
    first, second = requests.bodies
    assert first == {"text": text[:limit]}
    assert second["text"] == text[limit:] and second["state"]
    line = page.locator("#keystroke")
    sync_api.expect(line).to_have_text(
        re.compile(rf"^\d+ ms · {len(text):,} new characters sent in 2 pieces · {len(text):,} in")
    )
    prompt.press("Control+End")  # the caret after the text
    for char in "\nKING":
        keystroke(page, char)
    typed = requests.bodies[2:]
    assert [body["text"] for body in typed] == list("\nKING")
    assert all(body["state"] for body in typed)
    final = text + "\nKING"
    sync_api.expect(line).to_have_text(
        re.compile(rf"^\d+ ms · 1 new character sent · {len(final):,} in context$")
    )
    head = httpx.post(f"{default_server.url}/next_char", json={"text": text[:limit]}).json()
    assert_shows_answer_for(
        page, default_server.url, {"text": final[limit:], "state": head["state"]}
    )


def test_a_refused_state_is_dropped_and_the_whole_text_resent(
    page: Any, default_server: Server, corpus_path: Path, carried_state: int
) -> None:
    """A state the server refuses (here one the test spoils on its way out; the server itself
    answers) makes the page forget its states and send the whole text again, without an
    error shown; the next keystroke carries a fresh state."""
    text = passage(corpus_path, 800)
    prompt = page.locator("#prompt")
    answered(page, lambda: prompt.fill(text))
    forwarded: list[dict[str, Any]] = []

    def spoil_once(route: Any) -> None:
        body = route.request.post_data_json
        if body.get("state") and not any(b.get("state") == "not-a-state" for b in forwarded):
            body["state"] = "not-a-state"
        forwarded.append(body)
        route.continue_(post_data=json.dumps(body))

    page.route("**/next_char", spoil_once)
    prompt.press("Control+End")  # the caret after the text
    keystroke(page, "!")
    refused = httpx.post(
        f"{default_server.url}/next_char", json={"text": "", "state": "not-a-state"}, timeout=30
    )
    assert refused.status_code == 400 and "state" in refused.json()["error"]
    assert forwarded[0] == {"text": "!", "state": "not-a-state"}
    assert forwarded[1] == {"text": text + "!"}  # no state: the whole text again
    sync_api.expect(page.locator("#text-error")).to_have_text("")
    assert_shows_answer_for(page, default_server.url, {"text": text + "!"})
    keystroke(page, "\n")
    assert forwarded[-1]["text"] == "\n" and forwarded[-1]["state"] not in ("", "not-a-state")


def test_a_generation_leaves_a_checkpoint_for_the_text_it_shows(
    page: Any, default_server: Server, carried_state: int
) -> None:
    """Continue sends the state of the typed text (and nothing to read again); the end event's
    state is the checkpoint of the text shown after it, so the next answer sends nothing new
    and a keystroke after sends one character. The text is the API's for the same seed."""
    _, end = stream_end(default_server.url, {"prompt": "ROMEO:\n", "length": 5, "seed": 1})
    if "state" not in end:
        pytest.skip("the stream's end event carries no `state` yet (carried text state)")
    streams: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: streams.append(r.post_data_json) if r.url.endswith("/generate/stream") else None,
    )
    prompt = page.locator("#prompt")
    answered(page, lambda: prompt.fill("JULIET:\n"))  # its answer: a checkpoint
    requests = NextCharRequests(page)
    page.locator("#seed").fill("7")
    page.locator("#length").fill("60")
    answered(page, lambda: page.click("#continue"))  # the answer after the generation
    sync_api.expect(page.locator("#status")).to_contain_text("seed 7")
    assert streams[-1]["prompt"] == "" and streams[-1]["state"]
    expected = httpx.post(
        f"{default_server.url}/generate",
        json={"prompt": "JULIET:\n", "length": 60, "temperature": 0.8, "seed": 7},
    ).json()["text"]
    shown = prompt.input_value()
    assert shown == "JULIET:\n" + expected
    assert requests.bodies[-1]["text"] == "" and requests.bodies[-1]["state"]
    line = page.locator("#keystroke")
    sync_api.expect(line).to_have_text(
        re.compile(rf"^\d+ ms · 0 new characters sent · {len(shown):,} in context$")
    )
    assert_shows_answer_for(page, default_server.url, {"text": shown})
    prompt.press("Control+End")  # the caret after the text
    keystroke(page, "e")
    assert requests.bodies[-1]["text"] == "e" and requests.bodies[-1]["state"]
