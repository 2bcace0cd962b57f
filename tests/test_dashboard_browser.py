"""optuna-dashboard, served on a real SQLite storage, shows the QuickTune figure and note in Chromium.

The browser is Debian's ``chromium`` (CI installs it: ``apt-get install -y --no-install-recommends
chromium``), driven by Playwright's Python package; Playwright's own browser download is not used.
The screenshots are kept at ``test-artifacts/dashboard.png`` (the study page with the QuickTune
figures) and ``test-artifacts/dashboard-note.png`` (the note tab with the portfolio).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not found: install Debian's browser with `apt-get install -y --no-install-recommends chromium`.",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"quicktune dashboard exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"optuna-dashboard did not answer {url} within {timeout} s")


def test_dashboard_page_shows_quicktune_views(family, surrogate, tmp_path):
    pytest.importorskip("optuna_dashboard", reason="needs the [dashboard] extra")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package ([dev] extra)")
    from tests.test_dashboard import build_study

    db = tmp_path / "study.db"
    study, _ = build_study(family, surrogate, f"sqlite:///{db}", n_trials=6)
    port = _free_port()
    # `quicktune dashboard` is the command users run; it serves optuna-dashboard's own server.
    # Its request log goes to a file: an unread pipe would fill up and block the server.
    log = tmp_path / "dashboard.log"
    log_file = log.open("w")
    server = subprocess.Popen([sys.executable, "-m", "optuna_quicktune.cli", "dashboard", f"sqlite:///{db}",
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log_file, stderr=subprocess.STDOUT)
    profile = tempfile.mkdtemp(prefix="quicktune-chromium-")
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/studies", server, log)
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_api.sync_playwright() as p:
            # A fresh profile per run (Playwright takes it as user_data_dir, not as an argument).
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                viewport={"width": 1400, "height": 2400},
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )
            try:
                page = browser.new_page()
                study_url = f"{base}/dashboard/studies/{study._study_id}"  # noqa: SLF001
                # The figures are on the study's first page: plotly SVGs whose titles are text nodes.
                page.goto(study_url, wait_until="networkidle")
                try:
                    page.get_by_text("QuickTune: predicted vs observed score", exact=False).first.wait_for(timeout=60_000)
                    page.get_by_text("QuickTune: learning curves", exact=False).first.wait_for(timeout=30_000)
                    assert page.get_by_text("observed = predicted").count() >= 1  # the figure's legend
                    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                    # The note has its own tab; it is rendered Markdown.
                    page.goto(f"{study_url}/note", wait_until="networkidle")
                    page.get_by_role("heading", name="QuickTune portfolio").wait_for(timeout=60_000)
                    assert page.get_by_text("My own notes about this study.").count() >= 1
                    assert page.get_by_text("Best unused by predicted final score").count() >= 1
                    assert page.get_by_text("quicktune:begin").count() == 0  # the markers render as nothing
                    page.screenshot(path=str(ARTIFACTS / "dashboard-note.png"), full_page=True)
                except Exception:
                    page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
                    raise
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log_file.close()
        shutil.rmtree(profile, ignore_errors=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
