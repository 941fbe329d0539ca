"""The draw-a-digit page in a real browser: Playwright drives the system's chromium, headless.

A real server (uvicorn, 127.0.0.1) serves the shipped Deep MNIST; the test draws digits on the
canvas with mouse and touch events and uploads an image, and checks the class the page shows.
Set CNNRT_SERVE_SCREENSHOT=docs/serve.png to save a screenshot of the page with a drawn digit.
Playwright cannot download its browsers here: CNNRT_CHROMIUM (default /usr/bin/chromium) is used.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

from conftest import ROOT, SHIPPED  # noqa: E402
from serve_support import running_server  # noqa: E402

CHROMIUM = os.environ.get("CNNRT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server():
    import cnnrt
    from cnnrt.serve.app import create_app

    session = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")
    with running_server(create_app({"deep_mnist": session})) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM} (apt-get install chromium, or set CNNRT_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 760, "height": 580}, has_touch=True)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


# strokes in canvas coordinates (the canvas is 280x280 CSS pixels)
def one() -> list[list[tuple[float, float]]]:
    return [[(140, 40 + 10 * i) for i in range(21)]]


def zero() -> list[list[tuple[float, float]]]:
    return [[(140 + 65 * math.sin(t), 140 - 95 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 48)]]


def seven() -> list[list[tuple[float, float]]]:
    top = [(70 + 10 * i, 55) for i in range(15)]
    down = [(210 - 5 * i, 55 + 9.5 * i) for i in range(1, 21)]
    return [top + down]


def draw_with_mouse(page, strokes) -> None:
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
        page.mouse.up()


def draw_with_finger(page, strokes) -> None:
    """Touch events through the DevTools protocol, as a phone's finger sends them."""
    box = page.locator("#canvas").bounding_box()
    cdp = page.context.new_cdp_session(page)
    for stroke in strokes:
        pts = [{"x": box["x"] + x, "y": box["y"] + y} for x, y in stroke]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [pts[0]]})
        for p in pts[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [p]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def shown(page) -> str:
    """The class the page shows once it has answered for the whole drawing."""
    page.wait_for_function("document.body.dataset.busy === '0' && "
                           "document.getElementById('prediction').textContent !== '–'", timeout=30_000)
    return page.inner_text("#prediction")


def bars(page) -> list[float]:
    return [float(t.rstrip("%")) for t in page.locator(".bars .pct").all_inner_texts()]


@pytest.mark.parametrize("digit,strokes", [("1", one), ("0", zero)])
def test_drawing_a_digit_with_the_mouse_shows_its_class(page, digit, strokes):
    draw_with_mouse(page, strokes())
    assert shown(page) == digit
    p = bars(page)
    assert len(p) == 10 and max(p) == p[int(digit)] and abs(sum(p) - 100) < 1.0
    assert "deep_mnist on numpy fp32, batch of 1 image" in page.inner_text("#status")


def test_the_page_answers_before_the_stroke_ends(page):
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + 140, box["y"] + 40)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(box["x"] + 140, box["y"] + 40 + 10 * i)
        page.wait_for_timeout(25)  # a person's pace: the stroke takes half a second
    page.wait_for_function("document.getElementById('prediction').textContent !== '–'", timeout=30_000)
    requests_so_far = page.evaluate("performance.getEntriesByType('resource').filter(e => e.name.endsWith('/classify')).length")
    page.mouse.up()
    assert requests_so_far >= 1
    assert shown(page) == "1"


def test_drawing_with_a_finger(page):
    draw_with_finger(page, one())
    assert shown(page) == "1"


def test_clear_then_draw_again(page):
    draw_with_mouse(page, one())
    assert shown(page) == "1"
    page.click("#clear")
    assert page.inner_text("#prediction") == "–"
    assert page.locator(".bars .pct").all_inner_texts() == [""] * 10
    draw_with_mouse(page, zero())
    assert shown(page) == "0"


def test_uploading_an_image(page, mnist_test, tmp_path):
    from PIL import Image

    x, y = mnist_test
    i = next(k for k in range(100) if y[k] == 3)  # an MNIST "3", photographed dark on light
    f = tmp_path / "three.png"
    Image.fromarray(255 - np.kron(x[i], np.ones((8, 8), dtype=np.uint8))).save(f)
    page.set_input_files("#file", str(f))
    assert shown(page) == "3"


def test_screenshot_of_the_page(page):
    """A digit drawn by 'hand'; saved when CNNRT_SERVE_SCREENSHOT names a file (docs/serve.png)."""
    draw_with_mouse(page, seven())
    assert shown(page) == "7"
    out = os.environ.get("CNNRT_SERVE_SCREENSHOT")
    if out:
        path = Path(out) if Path(out).is_absolute() else ROOT / out
        page.wait_for_timeout(400)  # the bars' width transition
        tmp = path.with_name(path.name + ".tmp.png")
        page.screenshot(path=str(tmp))
        os.replace(tmp, path)
