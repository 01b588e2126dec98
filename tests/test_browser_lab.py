"""The Imbalance Lab in a real Chromium against a real ``streamlit run app.py``: a slider moved
with the keyboard changes the numbers on the page (and how long that took is printed)."""

from __future__ import annotations

import contextlib
import time

import pytest

from browser_util import CHROMIUM, cut_labels, goto, lab_server, launch_browser, wait_idle

pytestmark = [pytest.mark.browser]

if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_synth_root):
    with lab_server(tmp_path_factory.mktemp("browser_lab"), tiny_synth_root) as srv:
        yield srv


@contextlib.contextmanager
def lab_page(server, *, width: int, height: int):
    """The Imbalance Lab in a fresh Chromium page, its numbers drawn and no exception box."""
    with sync_api.sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": width, "height": height})
        goto(page, server, "lab", timeout=180)
        page.wait_for_selector("[data-testid='stMetricValue']", timeout=180_000)
        assert page.locator("[data-testid='stException']").count() == 0
        yield page
        browser.close()


def numbers(page) -> str:
    """The metric values and the sizes line, as the student sees them."""
    values = page.locator("[data-testid='stMetricValue']").all_inner_texts()
    sizes = page.get_by_text("Training:", exact=False).first.inner_text()
    return " | ".join(values) + " || " + sizes


def wait_change(page, before: str, *, timeout: float = 60.0) -> tuple[str, float]:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            now = numbers(page)
        except Exception:  # the element is being replaced by the rerun
            now = before
        if now != before:
            return now, time.perf_counter() - t0
        time.sleep(0.02)
    raise AssertionError(f"the numbers did not change within {timeout} s: {before}")


def test_moving_the_ratio_slider_updates_the_numbers(server):
    with lab_page(server, width=1400, height=1400) as page:
        assert "SYNTHETIC" in page.content()
        before = numbers(page)
        thumb = page.get_by_role("slider").first  # the training ratio
        thumb.focus()
        thumb.press("ArrowLeft")
        after, seconds = wait_change(page, before)
        wait_idle(page, timeout=60)
        assert "Training:" in after and after != before
        print(f"slider move -> updated numbers: {seconds * 1000:.0f} ms")
        # and the threshold: switch it to manual, move it, the confusion numbers move
        page.get_by_text("Move the decision threshold by hand").click()
        wait_idle(page, timeout=60)
        before = numbers(page)
        thumb = page.get_by_role("slider").nth(1)
        thumb.focus()
        for _ in range(30):
            thumb.press("ArrowRight")
        after, seconds = wait_change(page, before)
        wait_idle(page, timeout=60)
        assert after != before
        assert page.locator("[data-testid='stException']").count() == 0


def test_no_metric_label_is_cut_short_on_a_laptop_screen(server):
    """Nine metrics in one row read "Balanced a..." and "Patient a..." at 1280 px (issue 14)."""
    with lab_page(server, width=1280, height=900) as page:
        wait_idle(page, timeout=60)
        assert page.locator("[data-testid='stMetricLabel']").count() >= 9
        assert cut_labels(page) == []
