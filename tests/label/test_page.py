"""The labelling page in headless Chromium, as a person uses it: strokes drawn with the mouse and saved as partial
(scribble) or dense (fill) labels, undo and redo, the keyboard, a lasso, a training round started from the page
whose predictions replace the old ones, an accepted prediction, a reload, two tabs saving one image, and an
unreadable image among the rest."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from medseg.label.app import Labelling, create_label_app  # noqa: E402
from medseg.label.workspace import Workspace  # noqa: E402
from medseg.serve.app import ServeSettings  # noqa: E402
from tests.data import fixtures  # noqa: E402
from tests.serve.test_server import ThreadServer, free_port  # noqa: E402
from tests.study.browser import CHROMIUM_FLAGS, find_chromium  # noqa: E402

SIZE = 64
TRAINING = ["model.widths=[4,8,16]", "data.patch_size=64", "train.batch_size=2"]


def folder(root):
    """8 images 64x64 (a bright disc on a dark ground): 3 with full masks, the rest without; and a broken file."""
    rng = np.random.default_rng(1)
    for k in range(8):
        centre = rng.integers(20, 44, 2)
        disc = np.hypot(*(np.mgrid[:SIZE, :SIZE] - centre[:, None, None])) < rng.integers(9, 14)
        noise = rng.integers(0, 40, disc.shape)
        fixtures._png(root / "images" / f"img{k}.png", (np.where(disc, 170, 40) + noise).astype(np.uint8))
        if k < 3:
            fixtures._png(root / "masks" / f"img{k}.png", (disc * 255).astype(np.uint8))
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


@pytest.fixture
def label_server(tmp_path):
    root = folder(tmp_path / "data")
    workspace = Workspace(root)
    workspace.update(iterations=20, budget_minutes=None)
    labelling = Labelling(workspace, TRAINING)
    port = free_port()
    server = ThreadServer(uvicorn.Config(create_label_app(labelling, ServeSettings()), host="127.0.0.1", port=port,
                                         log_level="warning"))
    import threading

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(timeout=60)
    yield f"http://127.0.0.1:{port}/", root, labelling
    server.should_exit = True
    thread.join(timeout=60)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def opened(browser, url, errors: list[str]):
    """A tab on the page, once it shows an image; console and page errors go to ``errors``."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent.includes('pixels')")
    return page


def screen(page, x: float, y: float) -> tuple[float, float]:
    """Where image pixel (x, y) is on the screen."""
    view = page.evaluate("() => ({zoom: S.zoom, panX: S.panX, panY: S.panY})")
    box = page.locator("#canvas").bounding_box()
    return box["x"] + view["panX"] + x * view["zoom"], box["y"] + view["panY"] + y * view["zoom"]


def stroke(page, points: list[tuple[float, float]]) -> None:
    """A mouse drag through image pixels ``points``."""
    page.mouse.move(*screen(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*screen(page, *point), steps=8)
    page.mouse.up()


def mask(root, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "masks" / f"{name}.png"))


def wait_status(page, text: str) -> None:
    page.wait_for_function("text => document.getElementById('status').textContent.includes(text)", arg=text)


def test_strokes_saved_as_partial_and_dense_labels_with_undo_redo_lasso_and_keys(label_server, browser):
    url, root, _ = label_server
    errors: list[str] = []
    page = opened(browser, url, errors)
    page.uncheck("#advance")
    first = page.evaluate("S.current")
    stroke(page, [(10, 10), (40, 10)])  # foreground (class 1, the default)
    page.keyboard.press("0")  # background
    page.keyboard.press("]")
    stroke(page, [(10, 50), (40, 50)])
    assert page.evaluate("S.cls") == 0 and page.evaluate("S.size") == 9
    painted = "() => S.edits.filter(v => v !== 255).length"
    both = page.evaluate(painted)
    page.keyboard.press("Control+z")
    assert 0 < page.evaluate(painted) < both
    page.keyboard.press("Control+y")
    assert page.evaluate(painted) == both
    page.keyboard.press("s")
    wait_status(page, "saved the painted pixels")
    saved = mask(root, first)
    assert saved[10, 15:35].tolist() == [255] * 20 and saved[50, 15:35].tolist() == [0] * 20
    assert (saved[25:35] == 128).all()  # a scribble leaves the rest unlabelled
    page.keyboard.press("n")
    page.wait_for_function("name => S.current !== name && S.meta !== null", arg=first)
    second = page.evaluate("S.current")
    page.keyboard.press("m")  # fill mode: every pixel saved
    page.keyboard.press("1")
    page.keyboard.press("l")  # lasso: a closed drag fills its inside
    stroke(page, [(20, 20), (44, 20), (44, 44), (20, 44), (20, 21)])
    page.keyboard.press("b")
    for key, expected in (("e", "eraser"), ("h", "pan"), ("b", "brush")):
        page.keyboard.press(key)
        assert page.evaluate("S.tool") == expected
    page.keyboard.press("s")
    wait_status(page, "saved every pixel")
    dense = mask(root, second)
    assert set(np.unique(dense)) == {0, 255} and (dense[25:40, 25:40] == 255).all() and (dense[5:15] == 0).all()
    assert not errors, errors


def test_a_round_from_the_page_replaces_the_predictions_and_a_prediction_is_accepted(label_server, browser,
                                                                                     tmp_path):
    url, root, labelling = label_server
    errors: list[str] = []
    page = opened(browser, url, errors)
    page.uncheck("#advance")
    assert page.evaluate("S.proposal") is None  # no model yet: nothing proposed
    page.click("#train")
    page.wait_for_function("document.getElementById('training-status').textContent.includes('done')",
                           timeout=300_000)
    page.wait_for_function("S.proposal !== null && !document.getElementById('order').textContent.includes('updating')",
                           timeout=120_000)
    assert "round_001 done" in page.locator("#training-status").text_content()
    assert page.locator("#queue li.predicted").count() >= 1
    page.fill("#opacity", "100")
    page.locator("#opacity").dispatch_event("input")
    box = page.locator("#canvas").bounding_box()
    page.screenshot(path=str(tmp_path / "page.png"))  # the page as a person sees it, the prediction over the image
    with_overlay = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(int)
    page.keyboard.press("o")  # the overlay off
    page.screenshot(path=str(tmp_path / "bare.png"))
    bare = np.asarray(Image.open(tmp_path / "bare.png").convert("RGB")).astype(int)
    window = (slice(int(box["y"]), int(box["y"] + box["height"])), slice(int(box["x"]), int(box["x"] + box["width"])))
    changed = np.abs(with_overlay[window] - bare[window]).sum(axis=2) > 60
    tint = (with_overlay[window] - bare[window])[changed]
    assert changed.sum() > 500 and tint[:, 2].mean() > tint[:, 0].mean() + 40  # a blue (cyan) overlay is shown
    assert "foreground" in page.locator("#legend").text_content()
    page.keyboard.press("o")
    name = page.evaluate("S.current")
    proposal = np.array(page.evaluate("Array.from(S.proposal)"), np.uint8).reshape(SIZE, SIZE)
    page.keyboard.press("a")
    wait_status(page, "accepted the prediction")
    assert np.array_equal(mask(root, name) // 255, proposal)
    assert not errors, errors


def test_a_reload_keeps_what_was_saved_and_a_second_tab_is_told(label_server, browser):
    url, root, _ = label_server
    errors: list[str] = []
    first, second = opened(browser, url, errors), opened(browser, url, errors)
    for page in (first, second):
        page.uncheck("#advance")
    name = first.evaluate("S.current")
    assert second.evaluate("S.current") == name  # both tabs opened the same image, before either saved
    stroke(first, [(5, 5), (30, 5)])
    first.keyboard.press("s")
    wait_status(first, "saved")
    stroke(second, [(5, 30), (30, 30)])
    second.keyboard.press("s")
    second.wait_for_function("document.getElementById('status').className === 'error'")
    assert "another tab" in second.locator("#status").text_content()
    assert (mask(root, name)[30, 10:25] == 128).all()  # the second tab's stroke was not written
    first.reload()
    first.wait_for_function("document.getElementById('status').textContent.includes('pixels')")
    first.click(f"#queue li[data-id='{name}']")
    first.wait_for_function("name => S.current === name && S.meta !== null && S.meta.status === 'partial'", arg=name)
    assert first.evaluate("S.saved.filter(v => v === 1).length") > 0  # the saved stroke is back
    assert first.locator(f"#queue li.partial[data-id='{name}']").count() == 1
    assert all("409" in error for error in errors), errors  # the refused save's answer, nothing else


def test_an_unreadable_image_gets_a_message_and_the_rest_still_loads(label_server, browser):
    url, _, _ = label_server
    errors: list[str] = []
    page = opened(browser, url, errors)
    page.wait_for_function("document.querySelector(\"#queue li[data-id='broken']\").className.includes('error')")
    page.click("#queue li[data-id='broken']")
    page.wait_for_function("document.getElementById('status').className === 'error'")
    message = page.locator("#status").text_content()
    assert message.startswith("Could not open broken: ") and "cannot decode image" in message
    page.click("#queue li[data-id='img5']")
    page.wait_for_function("S.current === 'img5' && S.meta !== null")
    assert page.locator("#status").get_attribute("class") == ""
    assert all("422" in error for error in errors), errors
