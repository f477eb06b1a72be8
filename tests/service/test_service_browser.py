"""The search page in a real browser: Debian's Chromium, headless, driven by Playwright against a live server."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn

from aladin.search import Searcher
from aladin.service.app import create_app


def chromium_or_skip() -> str:
    """The Chromium binary; without one the test skips, except under CI=true where it fails."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path, why = None, "Playwright for Python is not installed (pip install -e '.[dev]')"
    else:
        why = "no chromium on PATH (run scripts/install-browser.sh)"
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run: {why}")
        pytest.skip(why)
    return path


@pytest.fixture
def server(searcher: Searcher) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; stopped after the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(searcher), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_search_and_explain_with_the_keyboard(server: str, tmp_path: Path) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(server)
            expect(page.locator("#stats")).to_have_text("12 images, 24 captions")

            page.locator("#query").fill("red circle on the left")
            page.keyboard.press("Enter")
            results = page.locator("#results .result")
            expect(results).to_have_count(12)
            expect(page.locator("#status")).to_contain_text(
                "12 results for “red circle on the left” (re-ranked"
            )
            scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
            assert scores == sorted(scores, reverse=True)

            results.nth(1).focus()
            page.keyboard.press("Enter")
            dialog = page.locator("#detail")
            expect(dialog).to_be_visible()
            words = page.locator("#words .word")
            expect(words).to_have_text(["whole text", "red", "circle", "left"])  # stop words folded out
            expect(page.locator("#explain-status")).to_contain_text("alignment score")
            expect(page.locator('#words .word[aria-pressed="true"]')).to_have_count(1)

            words.nth(1).focus()  # words are buttons: Enter chooses one
            page.keyboard.press("Enter")
            expect(words.nth(1)).to_have_attribute("aria-pressed", "true")
            colours = page.evaluate(
                """() => {
                const canvas = document.querySelector('#heatmap');
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                return new Set(Array.from({length: data.length / 4}, (_, i) => data[4 * i])).size;
            }"""
            )
            assert colours > 8  # the picture under a heatmap, not a blank canvas

            screenshot = tmp_path / "explanation.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")

            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            assert page.evaluate("document.activeElement.classList.contains('result')")

            page.locator("#rerank").uncheck()
            page.locator("#query").fill("   blue square ")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("(kNN only")
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert not errors, errors


def test_a_search_link_runs_its_search_and_hits_link_to_the_full_photo(server: str, dataset: Path) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    long_query = "red circle " * 80  # within the character limit, far over the token limit
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server}/?q=red%20circle%20on%20the%20left")
            expect(page.locator("#query")).to_have_value("red circle on the left")
            expect(page.locator("#results .result")).to_have_count(12)
            expect(page.locator("#status")).to_contain_text("12 results for “red circle on the left”")
            assert page.locator("#query").get_attribute("placeholder") == "a man riding a wave on a surfboard"

            link = page.locator("#results .full-size").first
            href = link.get_attribute("href")
            first_id = page.locator("#results .result").first.get_attribute("data-id")
            assert href == f"/api/items/{first_id}/image"
            with page.expect_popup() as popup:
                link.click()
            photo = page.request.get(server + href)
            assert photo.ok and photo.headers["content-type"] == "image/png"
            name = page.request.get(f"{server}/api/items/{first_id}").json()["name"]
            assert photo.body() == (dataset / "images" / name).read_bytes()
            popup.value.close()

            page.locator("#query").fill(long_query)
            page.keyboard.press("Enter")
            status = page.locator("#status")
            expect(status).to_contain_text("tokens long")  # the API's warning is shown
            assert long_query not in status.inner_text() and "…”" in status.inner_text()
            assert len(status.inner_text()) < 400
        finally:
            browser.close()
    assert not errors, errors


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium here
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="chromium"):
        chromium_or_skip()


def test_the_filter_box_narrows_the_hits_and_names_a_bad_filter(server: str) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server)
            page.locator("#query").fill("red circle on the left")
            page.locator("#where").fill("id>=9 or path~img002")
            page.keyboard.press("Enter")
            results = page.locator("#results .result")
            expect(results).to_have_count(4)
            assert sorted(int(r.get_attribute("data-id")) for r in results.all()) == [2, 9, 10, 11]
            assert "where=id%3E%3D9" in page.url  # the address names the filtered search, to share it

            page.locator("#where").fill("taken>=2020-01-01")  # these pictures record no date
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("0 results")
            expect(results).to_have_count(0)

            page.locator("#where").fill("camera~")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_have_class("error")
            expect(page.locator("#status")).to_contain_text("400: filter 'camera~': column 8: expected text")

            page.goto(f"{server}/?q=red%20circle&where=id%3C2")  # a shared link brings its filter along
            expect(page.locator("#where")).to_have_value("id<2")
            expect(results).to_have_count(2)
        finally:
            browser.close()
    assert not errors, errors


def test_the_page_collapses_near_duplicates_with_a_badge(
    server: str, searcher: Searcher, dataset: Path
) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    for n in range(2):  # two byte-identical copies of one picture join the index: one group of 3
        shutil.copyfile(dataset / "images" / "img000.png", dataset / "images" / f"img000-copy{n}.png")
    searcher.index.add(sorted((dataset / "images").glob("img000-copy*.png")), searcher.image_encoder)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server}/?q=red%20circle")
            expect(page.locator("#results .result")).to_have_count(12)  # 14 images, 12 distinct
            badge = page.locator("#results .result .similar")
            expect(badge).to_have_count(1)
            expect(badge).to_have_text("2 similar")
            label = badge.locator("xpath=..").locator(".label").inner_text()
            assert label.startswith("img000")
        finally:
            browser.close()
    assert not errors, errors


def test_the_page_shows_each_hit_s_confidence_and_says_when_none_is_confident(
    server: str, searcher: Searcher
) -> None:
    executable = chromium_or_skip()
    from calibration_fixtures import calibrate
    from playwright.sync_api import expect, sync_playwright

    calibration = calibrate(searcher.model)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server}/?q=red%20circle%20on%20the%20left")
            expect(page.locator("#results .result")).to_have_count(12)
            hits = page.request.get(f"{server}/api/search?q=red%20circle%20on%20the%20left&k=24").json()[
                "hits"
            ]
            shown = page.locator("#results .confidence").all_inner_texts()
            assert shown == [f"{int(h['confidence'] * 100 + 0.5)}% match" for h in hits]

            # every curve far below 25%: nothing passes the page's min score once one is chosen
            searcher.model.calibration = type(calibration)(
                {key: replace(curve, intercept=-40.0) for key, curve in calibration.curves.items()},
                calibration.fusion,
                calibration.rerank_depth,
                calibration.top_k,
                calibration.model_fingerprint,
            )
            page.locator("#min-score").select_option("0.25")
            expect(page.locator("#status")).to_contain_text("no confident match for “red circle on the left”")
            expect(page.locator("#results .result")).to_have_count(0)
            page.locator("#min-score").select_option("0")
            expect(page.locator("#results .result")).to_have_count(12)
            expect(page.locator("#results .confidence").first).to_have_text("0% match")
        finally:
            browser.close()
    assert not errors, errors
