"""End to end in a real browser: ``streamlit run app.py`` in a subprocess, headless Debian Chromium
driven by Playwright. Skipped cleanly where Chromium or Playwright is missing.

One server serves the whole module (its own DALA_HOME, DALA_RUNS and a tiny generated dataset).
The tests visit every page, start a real short training run and watch its curve grow, stop it,
reload and find it again, and upload a real BreakHis image and a non-image on Explain.
Screenshots land in ``test-artifacts/screenshots/`` (and in ``docs/img/screenshots/`` with
``DALA_UPDATE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.browser_util import CHROMIUM, REPO_ROOT, StreamlitServer, goto, launch_browser, screenshot, wait_idle

pytestmark = [pytest.mark.browser]

if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = REPO_ROOT / "test-artifacts" / "screenshots"
DOCS_SHOTS = REPO_ROOT / "docs" / "img" / "screenshots"
PAGES = {"overview": ("", "DALA Lab"), "explore": ("explore", "Explore the data"), "train": ("train", "Train a model"),
         "compare": ("compare", "Compare runs"), "explain": ("explain", "Explain a prediction")}


def shot(page, name: str) -> None:
    path = screenshot(page, ARTIFACTS / f"{name}.png")
    if os.environ.get("DALA_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / f"{name}.png")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_synth_root):
    base = tmp_path_factory.mktemp("browser")
    env = {"DALA_DATA_ROOT": str(tiny_synth_root), "DALA_HOME": str(base / "home"), "DALA_RUNS": str(base / "runs"),
           "DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(base / "home" / "torch")}
    srv = StreamlitServer(env=env, log_path=base / "server.log")
    srv.start()
    srv.runs = base / "runs"
    yield srv
    srv.stop()
    _stop_leftover_runs(srv.runs)


def _stop_leftover_runs(runs: Path) -> None:
    """Training processes run in their own session (they outlive the page by design), so a test
    that failed half-way may leave one: ask it to stop, then end it."""
    import json
    import signal

    from dala.train.runs import pid_alive, send_control

    if not runs.is_dir():
        return
    for run in runs.iterdir():
        try:
            status = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            continue
        pid = status.get("pid")
        if pid and pid_alive(pid):
            send_control(run, "stop")
            deadline = time.time() + 10
            while pid_alive(pid) and time.time() < deadline:
                time.sleep(0.2)
            if pid_alive(pid):
                os.kill(int(pid), signal.SIGTERM)


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1800})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def no_exception(page) -> None:
    boxes = page.locator("[data-testid='stException']")
    assert boxes.count() == 0, boxes.first.inner_text()


def curve_points(page, trace: str) -> int:
    """Points of the named trace in the training-curve chart (read from Plotly's own data)."""
    return page.evaluate(
        """(name) => { let n = 0; for (const el of document.querySelectorAll('.js-plotly-plot')) {
               for (const t of (el.data || [])) { if (t.name === name && t.x) n = Math.max(n, t.x.length); } }
             return n; }""", trace)


def test_every_page_renders(page, server):
    """Deep links too: the first visit of this server is straight to /explore (no app.py yet)."""
    for name in ("explore", "overview", "train", "compare", "explain"):
        path, title = PAGES[name]
        goto(page, server, path)
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        no_exception(page)
        assert page.get_by_text("Dataset", exact=True).first.is_visible()  # the shared sidebar is there
        if name in ("overview", "explore"):
            assert page.get_by_text("SYNTHETIC").first.is_visible()
        shot(page, name)


def test_train_live_stop_and_reattach(page, server):
    goto(page, server, "train")
    page.get_by_role("heading", name="Train a model").wait_for()
    # full mode, batch 8, 50 epochs: several points per epoch, and the run is surely still going
    # when Stop is pressed (a run that has already finished cannot show "stopped")
    page.locator("[data-testid='stRadio']").filter(has_text="Mode").get_by_text("full", exact=True).click()
    wait_idle(page)
    for label, keys, want in (("Epochs", ["End"], "50"), ("Batch size", ["ArrowLeft"] * 2, "8")):
        slider = page.locator("[data-testid='stSlider']").filter(has_text=label).locator("input[type='range']")
        slider.focus()
        for key in keys:
            slider.press(key)
        wait_idle(page)
        assert slider.get_attribute("aria-valuetext") == want
    page.get_by_role("button", name="Start", exact=True).click()
    # the run appears, queued or running, and its curve gains points as steps come in
    page.get_by_text("running").first.wait_for(timeout=90_000)
    def points() -> int:
        return curve_points(page, "train loss (steps)") + curve_points(page, "train loss")

    deadline = time.time() + 120
    first = 0
    while time.time() < deadline and not first:
        first = points()
        time.sleep(0.3)
    assert first > 0, "no training step reached the chart"
    deadline = time.time() + 120
    later = first
    while time.time() < deadline and later <= first:
        later = points()
        time.sleep(0.3)
    assert later > first, "the curve did not grow"
    no_exception(page)
    shot(page, "train_live")
    # Stop, then the page and the run folder both say so
    page.get_by_role("button", name="Stop", exact=True).first.click()
    page.get_by_text("stopped").first.wait_for(timeout=60_000)
    run_name = next(p.name for p in Path(server.runs).iterdir() if p.is_dir())
    from dala.train import read_run

    assert read_run(Path(server.runs) / run_name).state == "stopped"
    # a refresh is a new session: the page finds the run again
    page.reload()
    wait_idle(page)
    page.get_by_text(run_name).first.wait_for(timeout=30_000)
    no_exception(page)


def test_explain_upload_image_and_non_image(page, server, real_samples, tmp_path):
    goto(page, server, "explain")
    page.get_by_role("heading", name="Explain a prediction").wait_for()
    if page.get_by_text("No trained checkpoint yet").count():
        page.get_by_text("Untrained model", exact=True).click()
        wait_idle(page)
    uploader = page.locator("[data-testid='stFileUploader'] input[type='file']")
    uploader.set_input_files(str(real_samples[0]))
    page.get_by_text("Prediction", exact=True).first.wait_for(timeout=90_000)
    wait_idle(page, timeout=90)
    no_exception(page)
    # the image and one overlay per method (gradcam, dt-gradcam) are drawn
    assert page.locator("[data-testid='stImage']").count() >= 3
    assert page.get_by_role("button", name="Download PNG").count() >= 2
    shot(page, "explain_result")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"plain text, not a PNG")
    uploader.set_input_files([str(real_samples[0]), str(bad)])
    page.get_by_text("notes.png is not an image").first.wait_for(timeout=60_000)
    wait_idle(page, timeout=90)
    no_exception(page)
    assert page.get_by_text("Prediction", exact=True).count() >= 1  # the good image still explained
