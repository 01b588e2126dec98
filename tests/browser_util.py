"""Helpers for the browser end-to-end tests: a real ``streamlit run app.py`` server in a subprocess
and a headless Debian Chromium driven by Playwright (never ``playwright install``: no internet).

Also usable by hand to refresh the README screenshots::

    python tests/browser_util.py --data /tmp/tiny_synth --shots docs/img/screenshots
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DALA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """``streamlit run app.py`` on a free port with its own DALA_HOME / DALA_RUNS; stopped (its
    whole process group, training children included) on exit."""

    def __init__(self, *, env: dict[str, str], log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 90.0) -> "StreamlitServer":
        cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app.py"), "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"streamlit did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "StreamlitServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


TINY_LAB_ENCODER = "random_stem:tiny_cnn@64"  # the lab's encoder in tests: a bank of the tiny set in seconds


@contextlib.contextmanager
def lab_server(base: Path, data_root: Path):
    """A real server on ``data_root`` whose Imbalance Lab uses the tiny encoder, offline, with its
    home and runs under ``base``."""
    env = {"DALA_DATA_ROOT": str(data_root), "DALA_HOME": str(base / "home"), "DALA_RUNS": str(base / "runs"),
           "DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(base / "home" / "torch"),
           "DALA_LAB_ENCODER": TINY_LAB_ENCODER}
    with StreamlitServer(env=env, log_path=base / "server.log") as srv:
        yield srv


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def script_state(page) -> str | None:
    return page.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state")


def wait_idle(page, *, timeout: float = 60.0, quiet: float = 1.0) -> None:
    """Wait until Streamlit has finished running the script: the app root carries
    ``data-test-script-state="notRunning"`` for ``quiet`` seconds in a row (a rerun, e.g. the
    first visit switching to ``st.navigation`` mode, starts right after a run ends). A page with
    a timed fragment goes back to running now and then; one quiet stretch is enough."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout * 1000)
    deadline = time.time() + timeout
    since = None
    while time.time() < deadline:
        if script_state(page) == "notRunning":
            since = since or time.time()
            if time.time() - since >= quiet:
                return
        else:
            since = None
        time.sleep(0.1)
    raise TimeoutError(f"the app was still running after {timeout:.0f} s")


def goto(page, server: StreamlitServer, path: str = "", *, timeout: float = 90.0) -> None:
    page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
    wait_idle(page, timeout=timeout)


def cut_labels(page) -> list[str]:
    """Metric labels the page cuts short ("Balanced a..."): elements of a metric's label whose text
    is wider than their box while their overflow is hidden."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll(
                 "[data-testid='stMetricLabel'], [data-testid='stMetricLabel'] *"))
             .filter(el => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflow !== 'visible')
             .map(el => el.innerText.trim()).filter(t => t)""")


def screenshot(page, path: Path, *, full_page: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


if __name__ == "__main__":  # manual screenshots
    import argparse

    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="dataset folder, or 'default' for the synthetic default")
    ap.add_argument("--runs", default="/tmp/dala_shots_runs")
    ap.add_argument("--home", default="/tmp/dala_shots_home")
    ap.add_argument("--shots", default=str(REPO_ROOT / "docs" / "img" / "screenshots"))
    ap.add_argument("--pages", default="overview,explore,train,lab,compare,explain")
    args = ap.parse_args()
    env = {"DALA_RUNS": args.runs, "DALA_HOME": args.home, "DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    if args.data != "default":  # "default": the synthetic default in DALA_HOME
        env["DALA_DATA_ROOT"] = args.data
    with StreamlitServer(env=env, log_path=Path("/tmp/dala_shots_server.log")) as srv, sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": int(os.environ.get("SHOT_HEIGHT", "1800"))})
        for name in args.pages.split(","):
            goto(page, srv, "" if name == "overview" else name)
            if name == "explain":  # show a result: a dataset image (with its lesion outline if synthetic)
                page.get_by_text("From the dataset", exact=True).click()
                wait_idle(page, timeout=120)
            screenshot(page, Path(args.shots) / f"{name}.png")
            print("saved", name)
        browser.close()
