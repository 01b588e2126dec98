"""End to end in a real browser: ``streamlit run app.py`` in a subprocess, headless Debian Chromium
driven by Playwright. Skipped cleanly where Chromium or Playwright is missing.

One server serves the whole module (its own DALA_HOME, DALA_RUNS and a tiny generated dataset).
The tests visit every page, walk every page and tab the navigation lists (toggles, checkboxes
and expanders clicked) asserting no exception element and no traceback, start a real short
training run and watch its curve grow, stop it, reload and find it again, and upload a real
BreakHis image and a non-image on Explain. Separate fresh servers check that ten visitors
arriving together on a just-started server all get the dataset, and that each browser keeps its
own secret identity (a cookie, never the URL).
Screenshots land in ``test-artifacts/screenshots/`` (and in ``docs/img/screenshots/`` with
``DALA_UPDATE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from browser_util import CHROMIUM, REPO_ROOT, StreamlitServer, cut_labels, goto, launch_browser, screenshot, wait_idle

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


# ----------------------------------------------------------------------------- the walk (issue 14)
def no_traceback(page, where: str) -> None:
    boxes = page.locator("[data-testid='stException']")
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()[:500]}"
    body = page.locator("[data-testid='stApp']").first.inner_text()
    assert "Traceback" not in body and "Something went wrong on this page" not in body, f"{where}: {body[:800]}"


def nav_links(page) -> list[tuple[str, str]]:
    """(label, href) of every page st.navigation lists in the sidebar."""
    links = page.locator("[data-testid='stSidebarNavLink']")
    return [(links.nth(i).inner_text().strip(), links.nth(i).get_attribute("href")) for i in range(links.count())]


def _click_all(page, selector: str, where: str, *, limit: int = 6) -> int:
    """Click each visible element matching ``selector`` in the main area (twice for a toggle: on,
    then off again), waiting for the app after each click."""
    n = 0
    items = page.locator(f"[data-testid='stMain'] {selector}")
    for i in range(min(items.count(), limit)):
        item = items.nth(i)
        if not item.is_visible():
            continue
        item.click()
        wait_idle(page, timeout=120, quiet=0.5)
        no_traceback(page, f"{where}, {selector} #{i}")
        n += 1
    return n


def test_walk_every_page_tab_toggle_and_expander(page, server):
    """As a class does: every page the navigation lists (the Imbalance Lab included), every tab,
    each toggle/checkbox and expander with the default data; no exception element, no traceback."""
    t0 = time.time()
    goto(page, server, "")
    links = nav_links(page)
    assert len(links) >= 5, links
    clicked = 0
    for label, href in links:
        page.goto(href, wait_until="domcontentloaded")
        wait_idle(page, timeout=120)
        no_traceback(page, label)
        assert not cut_labels(page), f"{label}: metric labels cut short: {cut_labels(page)}"
        tabs = page.locator("[data-testid='stMain'] [role='tab']")
        for i in range(max(tabs.count(), 1)):
            where = label
            if tabs.count():
                tab = tabs.nth(i)
                where = f"{label} / {tab.inner_text().strip()}"
                tab.click()
                wait_idle(page, timeout=60, quiet=0.3)
                no_traceback(page, where)
            panel = "[role='tabpanel']:not([hidden]) " if tabs.count() else ""
            clicked += _click_all(page, panel + "[data-testid='stExpander'] summary", where)
            clicked += _click_all(page, panel + "[data-testid='stCheckbox'] label", where, limit=3)
        if label in {"Explore", "Overview"}:
            assert page.get_by_text("SYNTHETIC").first.is_visible()
    assert clicked > 0
    assert time.time() - t0 < 240, f"the walk took {time.time() - t0:.0f} s"


# ----------------------------------------------------------------------------- fresh servers (issue 15)
@pytest.fixture
def fresh_server(tmp_path, tiny_synth_root):
    env = {"DALA_DATA_ROOT": str(tiny_synth_root), "DALA_HOME": str(tmp_path / "home"), "DALA_RUNS": str(tmp_path / "runs"),
           "DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "home" / "torch")}
    srv = StreamlitServer(env=env, log_path=tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def test_ten_visitors_arriving_together_on_a_fresh_server_all_get_the_dataset(browser, fresh_server, tiny_index):
    """issue 15: 9 of 10 got "No dataset chosen" (a one-time, process-wide switch). Deep links,
    all at once, as the first requests this server process ever sees."""
    paths = ["train", "compare", "explore", "train", "compare"] * 2
    contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in paths]
    try:
        pages = [c.new_page() for c in contexts]
        for pg, path in zip(pages, paths):
            pg.goto(f"{fresh_server.url}/{path}", wait_until="commit")
        want = f"{len(tiny_index)} images"
        for pg, path in zip(pages, paths):
            wait_idle(pg, timeout=180)
            no_traceback(pg, path)
            body = pg.locator("[data-testid='stApp']").first.inner_text()
            assert "No dataset chosen" not in body, (path, body[:500])
            assert want in pg.locator("[data-testid='stSidebar']").first.inner_text(), path
            title = {"explore": "Explore the data", "train": "Train a model", "compare": "Compare runs"}[path]
            assert pg.get_by_role("heading", name=title).count() >= 1, path
    finally:
        for c in contexts:
            c.close()


def _student(page) -> str:
    import re

    text = page.locator("[data-testid='stSidebar']").first.inner_text()
    m = re.search(r"student ([0-9a-f]{6})", text)
    assert m, text[:600]
    return m.group(1)


def test_each_browser_keeps_a_secret_identity_not_in_the_url(browser, server):
    a, b = browser.new_context(), browser.new_context()
    try:
        pa, pb = a.new_page(), b.new_page()
        goto(pa, server, "")
        goto(pb, server, "")
        sa, sb = _student(pa), _student(pb)
        assert sa != sb
        cookie = {c["name"]: c for c in a.cookies()}.get("dala_token")
        assert cookie and len(cookie["value"]) >= 32
        assert cookie["value"] not in pa.url and "visitor" not in pa.url
        pa.reload()
        wait_idle(pa)
        assert _student(pa) == sa  # a refresh is the same student (the cookie came back)
        goto(pa, server, "compare")
        assert _student(pa) == sa and "dala_token" not in pa.url
    finally:
        a.close()
        b.close()
